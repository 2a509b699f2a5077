//! The kernels against the composed operations on the software Vulkan device (lavapipe).

use super::*;
use crate::model::gpu::{KernelCounts, software_gpu};
use crate::model::host_f32;
use crate::model::layers::{MASKED, Rope, attention_bias, attention_reference};
use burn::backend::Wgpu;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;

type Ad = Autodiff<Wgpu>;
type Dev = burn::backend::wgpu::WgpuDevice;

/// Deterministic values in [−2, 2) (no random stream shared with other tests).
fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + salt * 104_729) % 1000) as f32 / 250.0 - 2.0)
        .collect()
}

/// The causal bias of `t` queries over `tk` keys (the last query sees every key), [1, 1, T, Tk].
fn causal_bias(t: usize, tk: usize, dev: &Dev) -> Tensor<Ad, 4> {
    let v: Vec<f32> = (0..t * tk)
        .map(|k| {
            if k % tk > k / tk + tk - t {
                MASKED
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 1, t, tk]), dev)
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (diff, bad) = crate::model::max_abs_diff(got, want);
    assert!(
        diff < tol && bad == 0,
        "{what}: max |Δ| {diff} ({bad} non-finite)"
    );
}

/// The launches of the tests' loss `Σ y ∘ w` and its backward pass to the leaf `y`.
fn loss_launches<const D: usize>(y: Tensor<Ad, D>, w: Tensor<Ad, D>, dev: &Dev) -> u64 {
    let y = y.require_grad();
    let _ = <Wgpu as Backend>::sync(dev);
    let before = KernelCounts::now();
    let grads = (y.clone() * w).sum().backward();
    let g = y.grad(&grads).expect("a gradient");
    let _ = <Wgpu as Backend>::sync(dev);
    let launches = KernelCounts::now().since(before).launches;
    assert!(host_f32(g).is_ok());
    launches
}

/// Probabilities and the scores' gradient under `Σ P ∘ W`, by the kernels and composed.
#[test]
fn the_row_softmax_kernels_equal_the_composed_softmax() {
    let (_gpu, dev) = software_gpu();
    // Odd sizes; fewer queries than keys (a cache's tail); rows longer than one cube's units.
    for (i, &([b, h, t, tk], causal)) in [
        ([1, 2, 5, 5], false),
        ([2, 3, 7, 7], true),
        ([1, 2, 3, 9], true),
        ([1, 1, 150, 150], true),
        ([2, 1, 3, 300], false),
    ]
    .iter()
    .enumerate()
    {
        let n = b * h * t * tk;
        let scale = 0.37;
        let leaf = || {
            Tensor::<Ad, 4>::from_data(TensorData::new(values(n, i), [b, h, t, tk]), &dev)
                .require_grad()
        };
        let w = Tensor::<Ad, 4>::from_data(TensorData::new(values(n, i + 10), [b, h, t, tk]), &dev);
        let op = RowSoftmax { scale, causal };

        let s = leaf();
        let p = row_softmax(s.clone(), op).expect("the kernel runs on wgpu");
        let grads = (p.clone() * w.clone()).sum().backward();
        let (p_got, g_got) = (
            host_f32(p).unwrap(),
            host_f32(s.grad(&grads).expect("a gradient")).unwrap(),
        );

        let s = leaf();
        let mut z = s.clone() * scale;
        if causal {
            z = z + causal_bias(t, tk, &dev);
        }
        let p = softmax(z, 3);
        let grads = (p.clone() * w).sum().backward();
        let (p_want, g_want) = (
            host_f32(p).unwrap(),
            host_f32(s.grad(&grads).expect("a gradient")).unwrap(),
        );
        let what = format!("[{b}, {h}, {t}, {tk}] causal {causal}");
        assert_close(&p_got, &p_want, 1e-6, &format!("{what} probabilities"));
        assert_close(&g_got, &g_want, 1e-5, &format!("{what} gradient"));
        if causal {
            assert!(p_got.iter().enumerate().all(|(k, &x)| {
                let (row, j) = (k / tk % t, k % tk);
                j <= row + tk - t || x == 0.0
            }));
        }
    }
}

/// Attention forward and backward, as one node: the split, two products, the softmax and the
/// merge forward; the split of the context's gradient, four products, the softmax gradient and
/// the interleave backward.
const ATTENTION_LAUNCHES: u64 = 12;

/// The attention of the model on the kernel path equals its composed reference, values and the
/// projection's gradient, on odd shapes (rows longer than a cube's units, one head, causal and
/// not; rotary tables broadcast over heads, per head, or none), and launches no more kernels
/// than the node's own plus the loss's: the rotation adds none.
#[test]
fn kernel_attention_equals_the_composed_attention_with_fewer_launches() {
    let (_gpu, dev) = software_gpu();
    for (i, &(dims, causal, table_heads)) in [
        ([2, 9, 3, 2, 4], true, Some(1)),
        ([1, 7, 3, 3, 5], false, None),
        ([1, 150, 3, 1, 8], true, None),
        ([2, 6, 3, 2, 6], false, Some(2)),
    ]
    .iter()
    .enumerate()
    {
        let [b, t, _, h, d] = dims;
        let x = values(dims.iter().product(), 3 + i);
        // Positions that differ between rows.
        let positions: Vec<i64> = (0..b * t).map(|k| (k % t + 3 * (k / t)) as i64).collect();
        let rope = table_heads
            .map(|th| Rope::<Ad>::with_table_heads(&positions, [b, t], th, d, 1e4, &dev));
        let w = Tensor::<Ad, 3>::from_data(
            TensorData::new(values(b * t * h * d, 20 + i), [b, t, h * d]),
            &dev,
        );
        // The context by the kernel or composed, its value and the projection's gradient under
        // Σ ctx ∘ w, and the launches from the projection to its gradient.
        let run = |kernel: bool| {
            let qkv =
                Tensor::<Ad, 5>::from_data(TensorData::new(x.clone(), dims), &dev).require_grad();
            let _ = <Wgpu as Backend>::sync(&dev);
            let before = KernelCounts::now();
            let ctx = if kernel {
                attention(qkv.clone(), causal, rope.as_ref()).expect("the kernel runs on wgpu")
            } else {
                let bias = causal.then(|| attention_bias(&vec![Vec::new(); b], h, t, &dev));
                let rotated = match &rope {
                    Some(r) => r.apply_qkv(qkv.clone()),
                    None => qkv.clone(),
                };
                attention_reference(rotated, bias)
            };
            let grads = (ctx.clone() * w.clone()).sum().backward();
            let g = qkv.grad(&grads).expect("a gradient");
            let _ = <Wgpu as Backend>::sync(&dev);
            let launches = KernelCounts::now().since(before).launches;
            ((host_f32(ctx).unwrap(), host_f32(g).unwrap()), launches)
        };
        // The loss's own launches: on a leaf of the context's shape.
        let loss_alone = || {
            let ctx = Tensor::<Ad, 3>::from_data(
                TensorData::new(x[..b * t * h * d].to_vec(), [b, t, h * d]),
                &dev,
            );
            loss_launches(ctx, w.clone(), &dev)
        };
        // The second run of each: the first includes the autotuner's trial launches.
        let _ = (run(true), run(false), loss_alone());
        let ((got, kernel), (want, composed)) = (run(true), run(false));
        let what = format!("{dims:?} causal {causal} rotary tables' heads {table_heads:?}");
        assert_close(&got.0, &want.0, 1e-5, &format!("{what} context"));
        assert_close(
            &got.1,
            &want.1,
            1e-5,
            &format!("{what} projection gradient"),
        );
        let loss = loss_alone();
        eprintln!(
            "{what}: launches forward + backward: kernel {kernel}, composed {composed}, loss alone {loss}"
        );
        assert!(
            kernel <= ATTENTION_LAUNCHES + loss && kernel < composed,
            "{what}: launches: kernel {kernel}, composed {composed}, the loss alone {loss}"
        );

        // Without autodiff: the fusion stream runs the forward alone.
        let qkv = Tensor::<Wgpu, 5>::from_data(TensorData::new(x.clone(), dims), &dev);
        let rope = table_heads
            .map(|th| Rope::<Wgpu>::with_table_heads(&positions, [b, t], th, d, 1e4, &dev));
        let ctx = attention(qkv, causal, rope.as_ref()).expect("the kernel runs on wgpu");
        let plain = host_f32(ctx).unwrap();
        assert_close(
            &plain,
            &want.0,
            1e-5,
            &format!("{what} context without autodiff"),
        );
    }
}

/// The normalization's launches forward and backward: its kernel forward; backward the `dx`
/// kernel (which also writes the rows of `dγ`'s sum) and the sum.
const NORM_LAUNCHES: u64 = 3;

/// RMS normalization on the kernel path equals burn's `RmsNorm`, values and both gradients, on
/// odd shapes (rows wider than a cube's units, one row, many), and launches no more than
/// its own kernels plus the loss's.
#[test]
fn the_norm_kernels_equal_burns_rms_norm_with_fewer_launches() {
    use burn::module::Param;
    use burn::nn::RmsNormConfig;
    let (_gpu, dev) = software_gpu();
    for (i, shape) in [[1, 1, 3, 5], [2, 3, 7, 300], [1, 1, 130, 96], [1, 1, 1, 9]]
        .into_iter()
        .enumerate()
    {
        let d = shape[3];
        let n: usize = shape.iter().product();
        let x = values(n, 40 + i);
        let w = values(n, 50 + i);
        let gamma = values(d, 60 + i);
        let run = |kernel: bool| {
            let mut layer = RmsNormConfig::new(d).init::<Ad>(&dev);
            layer.gamma =
                Param::from_tensor(Tensor::from_data(TensorData::new(gamma.clone(), [d]), &dev));
            let xs =
                Tensor::<Ad, 4>::from_data(TensorData::new(x.clone(), shape), &dev).require_grad();
            let ws = Tensor::<Ad, 4>::from_data(TensorData::new(w.clone(), shape), &dev);
            let _ = <Wgpu as Backend>::sync(&dev);
            let before = KernelCounts::now();
            let y = if kernel {
                rms_norm(xs.clone(), layer.gamma.val(), layer.epsilon)
                    .expect("the kernel runs on wgpu")
            } else {
                layer.forward(xs.clone())
            };
            let grads = (y.clone() * ws).sum().backward();
            let gx = xs.grad(&grads).expect("a gradient of x");
            let gg = layer.gamma.grad(&grads).expect("a gradient of gamma");
            let _ = <Wgpu as Backend>::sync(&dev);
            let launches = KernelCounts::now().since(before).launches;
            let out = [host_f32(y), host_f32(gx), host_f32(gg)].map(|v| v.unwrap());
            (out, launches)
        };
        let loss_alone = || {
            let y = Tensor::<Ad, 4>::from_data(TensorData::new(x.clone(), shape), &dev);
            let ws = Tensor::<Ad, 4>::from_data(TensorData::new(w.clone(), shape), &dev);
            loss_launches(y, ws, &dev)
        };
        let _ = (run(true), run(false), loss_alone());
        let ((got, kernel), (want, composed)) = (run(true), run(false));
        let what = format!("{shape:?}");
        for (k, name) in ["values", "x gradient", "gamma gradient"]
            .iter()
            .enumerate()
        {
            assert_close(&got[k], &want[k], 2e-5, &format!("{what} {name}"));
        }
        let loss = loss_alone();
        eprintln!(
            "rms norm {what}: launches forward + backward: kernel {kernel}, composed {composed}, loss alone {loss}"
        );
        assert!(
            kernel <= NORM_LAUNCHES + loss && kernel < composed,
            "{what}: launches: kernel {kernel}, composed {composed}, the loss alone {loss}"
        );
    }
}

/// Seventeen parts of odd sizes (some longer than a cube's units, some as strided views) with
/// gaps between them land at their offsets with zeros elsewhere, in one launch per
/// [`pack::PER_LAUNCH`] parts plus one fill; without gaps, without the fill. Broken by a wrong
/// offset or a part left out, it fails.
#[test]
fn the_pack_kernel_places_every_part_in_a_few_launches() {
    let (_gpu, dev) = software_gpu();
    let sizes: Vec<usize> = (0..17).map(|i| 1 + (i * 97) % 700).collect();
    let parts = |gap: usize| {
        let mut at = 0;
        let mut out = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            at += gap * (i % 3);
            let v = values(n, i);
            let t = if n % 2 == 0 {
                // A transposed view: the kernel reads it made contiguous.
                Tensor::<Wgpu, 2>::from_data(TensorData::new(v, [2, n / 2]), &dev)
                    .transpose()
                    .transpose()
                    .reshape([n])
            } else {
                Tensor::<Wgpu, 1>::from_data(TensorData::new(v, [n]), &dev)
            };
            out.push((at, t));
            at += n;
        }
        (out, at + gap)
    };
    for gap in [3, 0] {
        let (ps, len) = parts(gap);
        let mut want = vec![0.0f32; len];
        for (at, t) in &ps {
            let v = host_f32(t.clone()).unwrap();
            want[*at..*at + v.len()].copy_from_slice(&v);
        }
        let run = || {
            let _ = <Wgpu as Backend>::sync(&dev);
            let before = KernelCounts::now();
            let flat = pack::pack(ps.clone(), len, &dev).expect("the kernel runs on wgpu");
            let _ = <Wgpu as Backend>::sync(&dev);
            let launches = KernelCounts::now().since(before).launches;
            (host_f32(flat).unwrap(), launches)
        };
        let _ = run();
        let (got, launches) = run();
        let wrong = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && wrong.is_none(),
            "gap {gap}: {} of {} elements, first wrong at {wrong:?}",
            got.len(),
            want.len()
        );
        let packs = sizes.len().div_ceil(pack::PER_LAUNCH) as u64;
        let fill = u64::from(gap > 0);
        assert_eq!(launches, packs + fill, "gap {gap}");
    }
    assert!(pack::pack::<Wgpu>(Vec::new(), 4, &dev).is_none());
}
