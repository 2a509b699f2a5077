//! The model stages end to end on a very small model: train, roll out, evaluate; resume after a
//! kill; a λ change reruns only training and what follows.

use crate::common::*;
use std::path::{Path, PathBuf};

fn model_pipeline(dir: &Path, objective: &str) -> PathBuf {
    let p = dir.join("m.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[pipeline]
name = "m"
seed = 5

[stages.synthesize]
splits = {{ test = 4, sft = 16, rl = 0 }}
graph = {{ min_nodes = 3, max_nodes = 4, edge_prob = 0.5 }}

[stages.render]
inputs = {{ puzzles = "synthesize" }}
size = 64

[stages.distill_format]
inputs = {{ puzzles = "synthesize", images = "render" }}
verbosity = 0

[stages.sft]
stage = "sft-train"
inputs = {{ data = "distill_format" }}
{objective}
size = {{ image_size = 32, patch_size = 16, vit_dim = 16, vit_layers = 1, vit_heads = 2, d_model = 32, layers = 1, heads = 2, max_seq_len = 256 }}
steps = 6
batch_size = 4
snapshot_every = 2
diagnostics_every = 3
eval_every = 3
eval_items = 2
eval_max_new_tokens = 16

[stages.rollout]
inputs = {{ checkpoint = "sft", data = "distill_format" }}
max_new_tokens = 16
samples = 2

[stages.rollout_cf]
stage = "rollout"
inputs = {{ checkpoint = "sft", data = "distill_format" }}
mode = "counterfactual"
max_new_tokens = 16
samples = 2

[stages.evaluate]
inputs = {{ data = "distill_format", standard = "rollout", counterfactual = "rollout_cf" }}
"#
        ),
    )
    .unwrap();
    p
}

fn ids(t: &[(String, String, String)]) -> Vec<(String, String)> {
    t.iter().map(|r| (r.0.clone(), r.2.clone())).collect()
}

#[test]
fn train_rollout_evaluate_resume_and_rerun_scope() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = model_pipeline(d.path(), "objective = \"reweight\"\nlambda = 0.5");
    let ps = p.to_str().unwrap();
    let out = ok(asymm(&d.path().join("a"), &["run", ps]));
    assert!(
        out.contains("a_p") && out.contains("a_r") && out.contains("a_tilde_r"),
        "{out}"
    );
    let clean = table(&out);
    assert!(clean.iter().all(|r| r.1 == "ran"), "{clean:?}");

    // Kill training after step 5 (last snapshot at step 4), then resume.
    let b = d.path().join("b");
    let crashed = asymm_env(&b, &["run", ps], &[("ASYMM_FAULT", "sft:after-step-5")]);
    assert!(!crashed.status.success());
    assert!(
        b.join("scratch").read_dir().unwrap().count() == 1,
        "snapshot kept for resume"
    );
    let resumed = table(&ok(asymm(&b, &["run", ps])));
    assert_eq!(
        ids(&resumed),
        ids(&clean),
        "resumed training ends where the uninterrupted run did"
    );
    assert_eq!(
        b.join("scratch").read_dir().unwrap().count(),
        0,
        "scratch removed after success"
    );

    // The log has the diagnostics and the periodic evaluation.
    let log = ok(asymm(
        &b,
        &["show", &format!("{ps}:sft.log"), "--rows", "6"],
    ));
    assert!(
        log.contains("perception_grad_share") && log.contains("eval_a_p"),
        "{log}"
    );
    // The curve alone: held-out evaluations at steps 3 and 6 (eval_every = 3).
    let curve = ok(asymm(
        &b,
        &[
            "show",
            &format!("{ps}:sft.log"),
            "--where-set",
            "eval_a_p",
            "--columns",
            "step,eval_a_p,eval_a_r",
        ],
    ));
    assert!(curve.contains("shape: (2, 3)"), "{curve}");
    let bad = asymm(&b, &["show", &format!("{ps}:sft.log"), "--columns", "nope"]);
    assert!(!bad.status.success() && stderr(&bad).contains("no column `nope`"));

    // Changing λ recomputes training and everything after it, nothing before.
    let p = model_pipeline(d.path(), "objective = \"reweight\"\nlambda = 0.8");
    let status = ok(asymm(&b, &["status", p.to_str().unwrap()]));
    assert!(status.contains("config `lambda` 0.5 → 0.8"), "{status}");
    let rerun = table(&ok(asymm(&b, &["run", p.to_str().unwrap()])));
    for s in ["synthesize", "render", "distill_format"] {
        assert_eq!(result_of(&rerun, s), "cached");
    }
    for s in ["sft", "rollout", "rollout_cf", "evaluate"] {
        assert_eq!(result_of(&rerun, s), "ran", "{s}");
    }
}

#[test]
fn ngdiff_and_perception_only_train() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    for objective in ["objective = \"ngdiff\"", "objective = \"perception-only\""] {
        let p = model_pipeline(d.path(), objective);
        let out = ok(asymm(
            &d.path().join("s"),
            &["run", p.to_str().unwrap(), "--until", "sft"],
        ));
        assert_eq!(result_of(&table(&out), "sft"), "ran");
        let log = ok(asymm(
            &d.path().join("s"),
            &["show", &format!("{}:sft.log", p.display()), "--rows", "3"],
        ));
        if objective.contains("ngdiff") {
            // λ is chosen per batch and reported.
            assert!(!log.contains("│ null     ┆ 0.001"), "{log}");
        }
    }
}

#[test]
fn perception_only_checkpoint_seeds_a_later_sft() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = model_pipeline(d.path(), "objective = \"perception-only\"");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(
        r#"
[stages.sft2]
stage = "sft-train"
inputs = { data = "distill_format", init = "sft" }
steps = 2
batch_size = 4
"#,
    );
    std::fs::write(&p, text).unwrap();
    let store = d.path().join("s");
    let out = table(&ok(asymm(&store, &["run", p.to_str().unwrap()])));
    assert_eq!(result_of(&out, "sft2"), "ran");
    let ckpt = ok(asymm(
        &store,
        &["show", &format!("{}:sft2", p.display()), "--rows", "1"],
    ));
    // The second stage continues the first one's model (its size, not the preset's).
    assert!(ckpt.contains("init = "), "{ckpt}");
    let bytes: u64 = ckpt
        .lines()
        .find_map(|l| l.split("model.safetensors (").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(bytes < 1_000_000, "the tiny preset would be ~5 MB: {ckpt}");
}
