use super::*;
use crate::model::Cpu;
use burn::module::Param;

fn vec(t: Tensor<Cpu, 1>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Peer i's tensor: values whose sum depends on the order of addition in f32.
fn values(i: usize) -> Vec<f32> {
    (0..64)
        .map(|j| ((i * 64 + j) as f32 * 0.731).sin() * 10f32.powi((j % 7) as i32 - 3))
        .collect()
}

#[test]
fn peers_sum_in_peer_order() {
    let device = Default::default();
    for count in [2, 3, 4] {
        let want: Vec<f32> = (0..64)
            .map(|j| (1..count).fold(values(0)[j], |acc, i| acc + values(i)[j]))
            .collect();
        for _ in 0..3 {
            let got = run::<Cpu, _, PeerError>(count, &device, |peer| {
                let t = Tensor::<Cpu, 1>::from_data(
                    TensorData::new(values(peer.index()), [64]),
                    &device,
                );
                let sum = vec(peer.sum(t)?);
                // Every peer gets the same sum.
                assert_eq!(sum, want, "peer {} of {count}", peer.index());
                Ok(sum)
            })
            .unwrap();
            assert_eq!(got, want, "{count} peers");
        }
    }
}

#[test]
fn counts_and_flags_reach_every_peer() {
    let device = Default::default();
    let got = run::<Cpu, _, PeerError>(3, &device, |peer| {
        let counts = peer.sum_counts(&[peer.index(), 1000 + peer.index()])?;
        let stop = peer.any(peer.is_leader())?;
        let none = peer.any(false)?;
        Ok((counts, stop, none))
    })
    .unwrap();
    assert_eq!(got, (vec![3, 3003], true, false));
}

#[test]
fn parts_are_contiguous_and_cover_the_batch() {
    let device = Default::default();
    let items: Vec<u32> = (0..7).collect();
    let parts: Vec<Vec<u32>> = (0..3)
        .map(|index| {
            let peer = Peer::<Cpu> {
                index,
                count: 3,
                device,
            };
            peer.part(&items).to_vec()
        })
        .collect();
    assert_eq!(parts, vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
    let peer = Peer::<Cpu> {
        index: 2,
        count: 3,
        device,
    };
    assert!(peer.part(&items[..2]).is_empty());
    assert_eq!(Peer::<Cpu>::solo(&device).part(&items), &items[..]);
}

/// A peer that fails while another waits in an all-reduce ends the run with its own error,
/// instead of leaving the other waiting; a later run starts afresh.
#[test]
fn a_failing_peer_ends_the_run() {
    let device = Default::default();
    let err = run::<Cpu, (), PeerError>(2, &device, |peer| {
        if peer.index() == 1 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            return Err(PeerError::Read {
                peer: 1,
                detail: "injected".into(),
            });
        }
        peer.sum(Tensor::<Cpu, 1>::ones([4], &device))?;
        Ok(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    let again = run::<Cpu, _, PeerError>(2, &device, |peer| {
        Ok(vec(peer.sum(Tensor::<Cpu, 1>::ones([2], &device))?))
    })
    .unwrap();
    assert_eq!(again, vec![2.0, 2.0]);
}

#[derive(burn::module::Module, Debug)]
struct Two<B: Backend> {
    w: Param<Tensor<B, 2>>,
    v: Param<Tensor<B, 1>>,
    /// Used only when the input asks for it: some peers' gradients lack it.
    u: Param<Tensor<B, 1>>,
}

type Ad = burn::backend::Autodiff<Cpu>;

/// The gradient of `Σ (w·x)² + Σ v·x₀ (+ Σ u when `use_u`)` for peer input `x`.
fn peer_grads(model: &Two<Ad>, x: &[f32], use_u: bool) -> GradientsParams {
    let device = Default::default();
    let (g, ()) = super::super::parallel::gradients(model, |m: &Two<Ad>| {
        let x = Tensor::<Ad, 2>::from_data(TensorData::new(x.to_vec(), [2, 2]), &device);
        let y = m.w.val() * x.clone();
        let mut loss =
            (y.clone() * y).sum() + (m.v.val() * x.slice([0..1, 0..2]).reshape([2])).sum();
        if use_u {
            loss = loss + m.u.val().sum();
        }
        Ok::<_, std::convert::Infallible>((loss, ()))
    })
    .unwrap();
    g
}

/// Peers' gradients in both forms sum to the sum of the gradients, a parameter that only some
/// peers have a gradient for included (the flat form's presence flags), for two and three
/// peers; burn's map with different parameter sets on different peers is refused.
#[test]
fn gradients_sum_over_peers_in_both_forms() {
    use crate::train::flat::FlatLayout;
    use std::sync::Arc;
    let device = Default::default();
    let param1 = |v: Vec<f32>| {
        Param::from_tensor(Tensor::<Ad, 1>::from_data(TensorData::new(v, [2]), &device))
    };
    let model = Two {
        w: Param::from_tensor(Tensor::<Ad, 2>::from_data(
            TensorData::new(vec![0.3f32, -1.2, 0.7, 2.0], [2, 2]),
            &device,
        )),
        v: param1(vec![0.5, -0.25]),
        u: param1(vec![1.0, 1.0]),
    };
    let input =
        |i: usize| -> Vec<f32> { (0..4).map(|j| ((i * 4 + j) as f32 * 0.9).cos()).collect() };
    let layout = Arc::new(FlatLayout::of::<Ad, _>(&model));
    for count in [2, 3] {
        // Only the last peer's loss uses `u`.
        let uses_u = |i: usize| i + 1 == count;
        let want = (0..count)
            .map(|i| {
                layout.gather::<Ad, _>(&model, peer_grads(&model, &input(i), uses_u(i)), &device)
            })
            .reduce(|a, b| a.plus(b))
            .unwrap()
            .into_params::<Ad, _>(&model)
            .unwrap();
        let host = |g: &GradientsParams| -> Vec<Option<Vec<f32>>> {
            vec![
                g.get::<Cpu, 2>(model.w.id)
                    .map(|t| t.into_data().to_vec().unwrap()),
                g.get::<Cpu, 1>(model.v.id)
                    .map(|t| t.into_data().to_vec().unwrap()),
                g.get::<Cpu, 1>(model.u.id)
                    .map(|t| t.into_data().to_vec().unwrap()),
            ]
        };
        let want = host(&want);
        assert!(want.iter().all(Option::is_some), "{want:?}");
        let flat = run::<Cpu, _, PeerError>(count, &device, |peer| {
            let g = layout.gather::<Ad, _>(
                &model,
                peer_grads(&model, &input(peer.index()), uses_u(peer.index())),
                &device,
            );
            let g = peer.sum_gradient::<Ad, _>(&model, Gradient::Flat(g))?;
            Ok(host(&g.into_params(&model)?))
        })
        .unwrap();
        assert_eq!(flat, want, "flat form, {count} peers");
        // burn's map: the same parameters on every peer.
        let per_tensor = run::<Cpu, _, PeerError>(count, &device, |peer| {
            let g = peer_grads(&model, &input(peer.index()), true);
            let g = peer.sum_gradient::<Ad, _>(&model, Gradient::PerTensor(g))?;
            Ok(host(&g.into_params(&model)?))
        })
        .unwrap();
        let all_u = (0..count)
            .map(|i| layout.gather::<Ad, _>(&model, peer_grads(&model, &input(i), true), &device))
            .reduce(|a, b| a.plus(b))
            .unwrap()
            .into_params::<Ad, _>(&model)
            .unwrap();
        assert_eq!(per_tensor, host(&all_u), "burn's map, {count} peers");
        let err = run::<Cpu, (), PeerError>(count, &device, |peer| {
            let g = peer_grads(&model, &input(peer.index()), uses_u(peer.index()));
            peer.sum_gradient::<Ad, _>(&model, Gradient::PerTensor(g))?;
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("parameter tensors"), "{err}");
    }
}
