//! Every model stage on a checkpoint folder of either family: the fixture folder's
//! `pipeline.toml` run end to end and its artifacts checked.

use crate::common::{json, rows, stage};
use asymm::model::codec::HfCodec;
use asymm::model::qwen3_vl::chat::ChatTokenizer;
use asymm::model::{Cpu, HfVlm};
use std::path::Path;

/// Every model stage on the checkpoint `fixtures/tied`: its `pipeline.toml` fine-tunes the tiny
/// checkpoint (`model = { hf = ... }`), samples it standard and counterfactual and scores the
/// samples, samples the checkpoint as it is, and runs two GRPO steps with the self perception
/// reward. The fine-tuned and the RL checkpoints are Hugging Face folders that load again, with
/// moved weights and the source's tokenizer; each rollout's tokens are its text in the
/// checkpoint tokenizer's ids; the targets were re-tokenized with that tokenizer; the training
/// loss fell; and the update's teacher-forced log-probabilities are the sampler's.
pub fn run(fixtures: &Path) {
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
