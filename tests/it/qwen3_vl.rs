//! Qwen3-VL against transformers: the fixtures in `tests/fixtures/qwen3_vl/` (made by
//! `make_fixture.py` there) hold tiny random checkpoints, their inputs and transformers' outputs.

use asymm::model::Cpu;
use asymm::model::qwen3_vl::{ImageInput, Qwen3Vl, rope_index};
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen3_vl")
        .join(name)
}

/// The reference tensors of one fixture: shape and values (f32 or i64).
struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn read(name: &str) -> Reference {
        let path = fixture(name).join("reference.safetensors");
        Reference {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }
    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("reference.safetensors parses")
    }
    fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.tensors();
        let v = t.tensor(key).unwrap_or_else(|_| panic!("no `{key}`"));
        assert_eq!(v.dtype(), Dtype::F32, "{key}");
        let vals = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v.shape().to_vec(), vals)
    }
    fn i64(&self, key: &str) -> (Vec<usize>, Vec<i64>) {
        let t = self.tensors();
        let v = t.tensor(key).unwrap_or_else(|_| panic!("no `{key}`"));
        assert_eq!(v.dtype(), Dtype::I64, "{key}");
        let vals = v
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        (v.shape().to_vec(), vals)
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn inputs(r: &Reference) -> (Vec<u32>, [usize; 3], ImageInput<Cpu>) {
    let dev = Default::default();
    let (_, ids) = r.i64("input_ids");
    let (_, grid) = r.i64("image_grid_thw");
    let grid = [grid[0] as usize, grid[1] as usize, grid[2] as usize];
    let (shape, pv) = r.f32("pixel_values");
    let image = ImageInput {
        pixel_values: Tensor::<Cpu, 2>::from_data(TensorData::new(pv, [shape[0], shape[1]]), &dev),
        grid,
    };
    (ids.iter().map(|&x| x as u32).collect(), grid, image)
}

/// Logits within 1e-4 of transformers' for each fixture config (tied and untied heads,
/// attention with and without biases, square and non-square image grids), and the 3-axis
/// positions equal to `get_rope_index`'s.
#[test]
fn logits_and_positions_match_transformers() {
    for name in ["tied", "untied-bias"] {
        let dev = Default::default();
        let model = Qwen3Vl::<Cpu>::from_pretrained(&fixture(name), &dev)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = Reference::read(name);
        let (ids, grid, image) = inputs(&r);
        let (_, want_pos) = r.i64("position_ids");
        let pos = rope_index(&model.cfg, &ids, &[grid]).expect("positions");
        let got_pos: Vec<i64> = pos.concat();
        assert_eq!(got_pos, want_pos, "{name}: position ids");
        let logits = model.forward(&ids, &[image]).expect("forward");
        let (shape, want) = r.f32("logits");
        assert_eq!(logits.dims().to_vec(), shape, "{name}: logits shape");
        let got = logits.into_data().to_vec::<f32>().expect("f32 logits");
        let d = max_diff(&got, &want);
        eprintln!("{name}: max |Δlogit| = {d}");
        assert!(d <= 1e-4, "{name}: max |Δlogit| = {d}");
    }
}

/// The vision tower's outputs (before the merger, after it, and each DeepStack feature) match
/// transformers' within 1e-4.
#[test]
fn vision_features_match_transformers() {
    let dev = Default::default();
    let model = Qwen3Vl::<Cpu>::from_pretrained(&fixture("tied"), &dev).expect("loads");
    let r = Reference::read("tied");
    let (_, grid, image) = inputs(&r);
    let out = model.model.visual.forward(image.pixel_values, &[grid]);
    let v = |t: Tensor<Cpu, 2>| t.into_data().to_vec::<f32>().expect("f32");
    for (key, got) in [
        ("vision_hidden", v(out.hidden)),
        ("image_embeds", v(out.embeds)),
        ("deepstack_0", v(out.deepstack[0].clone())),
        ("deepstack_1", v(out.deepstack[1].clone())),
    ] {
        let d = max_diff(&got, &r.f32(key).1);
        assert!(d <= 1e-4, "{key}: max |Δ| = {d}");
    }
}
