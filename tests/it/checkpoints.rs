//! Checkpoint folders of either family: every model stage on a fixture folder's
//! `pipeline.toml`, a saved folder compared with its source, weights rewritten (sharded,
//! renamed, with tensors added).

use crate::common::{json, rows, stage};
use asymm::data::codec::HfCodec;
use asymm::model::Checkpoint;
use asymm::model::{Cpu, HfVlm};
use asymm::text::chat::ChatTokenizer;
use std::path::{Path, PathBuf};

/// A parity fixture folder: `tests/fixtures/<family>/<name>`.
pub fn fixture(family: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
        .join(name)
}

/// The reference tensors of the fixture folder `dir`.
pub fn reference(dir: &Path) -> asymm::model::hf::reference::Reference {
    asymm::model::hf::reference::Reference::read(&dir.join("reference.safetensors"))
        .expect("reference.safetensors")
}

/// The largest |a − b|; every value must be a number.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let (d, non_finite) = asymm::model::max_abs_diff(a, b);
    assert_eq!(non_finite, 0, "values that are not numbers");
    d
}

/// Every model stage on the checkpoint `fixtures/tied`: its `pipeline.toml` fine-tunes the tiny
/// checkpoint (`model = { hf = ... }`), samples it standard and counterfactual and scores the
/// samples, samples the checkpoint as it is, and runs two GRPO steps with the self perception
/// reward. The fine-tuned and the RL checkpoints are Hugging Face folders that load again, with
/// moved weights and the source's tokenizer; each rollout's tokens are its text in the
/// checkpoint tokenizer's ids; the targets were re-tokenized with that tokenizer; the training
/// loss fell; and the update's teacher-forced log-probabilities are the sampler's.
pub fn run_pipeline(fixtures: &Path) {
    let dir = asymm::util::fsx::TempDir::new("asymm-it-hf").unwrap();
    let store = dir.path().join("store");
    let source = fixtures.join("tied");
    let rel = source
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .expect("a fixture of the project")
        .display()
        .to_string();
    let text = std::fs::read_to_string(fixtures.join("pipeline.toml"))
        .unwrap()
        .replace(
            &format!("{rel:?}"),
            &format!("{:?}", source.display().to_string()),
        );
    let ps = dir.path().join("pipeline.toml");
    std::fs::write(&ps, text).unwrap();
    let ps = ps.to_str().unwrap();
    let run = json(&store, &["run", ps]);
    let ckpt = stage(&run, "sft")["outputs"]["main"]
        .as_str()
        .unwrap()
        .to_string();
    let folder = store.join("objects").join(&ckpt);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "asymm_model.json",
    ] {
        assert!(folder.join(f).is_file(), "{f} in the checkpoint artifact");
    }
    let load = |dir: &Path| {
        HfVlm::<Cpu>::from_pretrained(dir, 64, &Default::default()).expect("the checkpoint loads")
    };
    let (tuned, base) = (load(&folder), load(&source));
    assert_eq!(tuned.net.family(), base.net.family());
    let weights = |m: &HfVlm<Cpu>| {
        m.net
            .text_model()
            .embed_tokens
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    assert!(
        asymm::model::max_abs_diff(&weights(&tuned), &weights(&base)).0 > 1e-5,
        "SFT moved the weights"
    );

    let tok = HfCodec::new(ChatTokenizer::from_dir(&folder).unwrap()).unwrap();
    for name in ["rollout", "rollout_base"] {
        let id = stage(&run, name)["outputs"]["main"]
            .as_str()
            .unwrap()
            .to_string();
        let show = json(&store, &["show", &id]);
        let all = rows(&show);
        assert_eq!(all.len(), if name == "rollout" { 8 } else { 4 }, "{name}");
        for r in all {
            let ids: Vec<u32> = r["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let truncated = r["truncated"].as_bool().unwrap();
            let body = if truncated {
                &ids[..]
            } else {
                &ids[..ids.len() - 1]
            };
            if !truncated {
                assert_eq!(ids.last(), Some(&tok.eos), "{name}: ends with <|im_end|>");
            }
            assert_eq!(
                tok.tok.decode(body, false).unwrap(),
                r["text"].as_str().unwrap()
            );
            // The model's vocabulary (128) is padded past the tokenizer's ids (103): those are
            // never sampled, so the text shows every sampled token.
            assert!(
                ids.iter().all(|&t| (t as usize) < tok.tok.known_ids()),
                "{name}: an id the tokenizer does not know was sampled: {ids:?}"
            );
        }
    }
    let eval = stage(&run, "evaluate")["outputs"]["main"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = json(&store, &["show", &eval]);
    let names: Vec<&str> = rows(&metrics)
        .iter()
        .filter_map(|r| r["metric"].as_str())
        .collect();
    for m in ["a", "a_p", "a_r"] {
        assert!(names.contains(&m), "metric {m} in {names:?}");
    }

    let log = stage(&run, "sft")["outputs"]["log"]
        .as_str()
        .unwrap()
        .to_string();
    let log = json(&store, &["show", &log]);
    let loss: Vec<f64> = rows(&log)
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(loss.len(), 4);
    assert!(loss[3] < loss[0], "SFT loss {loss:?}");
    // Perception's share of the target is counted in the checkpoint tokenizer's tokens.
    let share = rows(&log)[0]["perception_token_share"].as_f64().unwrap();
    assert!(share > 0.05 && share < 0.95, "{share}");

    let rl = stage(&run, "rl")["outputs"]["main"]
        .as_str()
        .unwrap()
        .to_string();
    load(&store.join("objects").join(&rl));
    let rl_log = stage(&run, "rl")["outputs"]["log"]
        .as_str()
        .unwrap()
        .to_string();
    let rl_log = json(&store, &["show", &rl_log]);
    assert_eq!(rows(&rl_log).len(), 2, "one mini-batch per step");
    for r in rows(&rl_log) {
        let gap = r["logprob_gap"].as_f64().unwrap();
        assert!(gap < 1e-4, "policy vs sampler log-probabilities: {gap}");
    }
    let reward = stage(&run, "rl_0_reward")["outputs"]["main"]
        .as_str()
        .unwrap()
        .to_string();
    let reward = json(&store, &["show", &reward]);
    assert!(
        rows(&reward)
            .iter()
            .all(|r| r["self_samples"].as_i64() == Some(1)),
        "one self re-rollout per rollout"
    );
}

/// A folder `saved` from the checkpoint `original` holds the same weights (keys, shapes and
/// bytes) and the same `config.json`.
pub fn assert_same_checkpoint(original: &Path, saved: &Path) {
    use safetensors::SafeTensors;
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (a, b) = (
        read(original.join("model.safetensors")),
        read(saved.join("model.safetensors")),
    );
    let (a, b) = (
        SafeTensors::deserialize(&a).expect("original"),
        SafeTensors::deserialize(&b).expect("saved"),
    );
    let mut ka: Vec<String> = a.names().into_iter().map(str::to_string).collect();
    let mut kb: Vec<String> = b.names().into_iter().map(str::to_string).collect();
    ka.sort();
    kb.sort();
    let at = original.display();
    assert_eq!(ka, kb, "{at}: key sets");
    for k in &ka {
        let (x, y) = (a.tensor(k).expect("tensor"), b.tensor(k).expect("tensor"));
        assert_eq!(x.shape(), y.shape(), "{at}: {k}");
        assert!(x.data() == y.data(), "{at}: {k} differs");
    }
    assert_eq!(
        read(original.join("config.json")),
        read(saved.join("config.json")),
        "{at}: config.json"
    );
}

/// Copies the checkpoint folder `src` to `dst` with its weights rewritten: each key renamed by
/// `rename`, the f32 tensors `extra` added, all split over `shards` files listed by
/// `model.safetensors.index.json` (one: a plain `model.safetensors`).
pub fn rewrite_weights(
    src: &Path,
    dst: &Path,
    shards: usize,
    rename: &dyn Fn(&str) -> String,
    extra: &[(&str, Vec<usize>, Vec<f32>)],
) {
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};
    for f in std::fs::read_dir(src).unwrap().flatten() {
        if f.file_name() != "model.safetensors" {
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let extra_bytes: Vec<Vec<u8>> = extra
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut names = st.names();
    names.sort();
    let mut views: Vec<(String, TensorView)> = names
        .into_iter()
        .map(|n| {
            let t = st.tensor(n).unwrap();
            let view = TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap();
            (rename(n), view)
        })
        .collect();
    for ((n, shape, _), b) in extra.iter().zip(&extra_bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), b).unwrap();
        views.push((n.to_string(), view));
    }
    if shards <= 1 {
        safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
        return;
    }
    let per = views.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    let mut rest = views;
    for i in 0..shards {
        let part: Vec<(String, TensorView)> = rest.drain(..per.min(rest.len())).collect();
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        for (n, _) in &part {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        safetensors::serialize_to_file(part, None, &dst.join(&file)).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        dst.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}
