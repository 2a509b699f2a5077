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

    // The log, read as data: the loss on every step, λ fixed by the config, the gradient
    // diagnostics on steps 1 and 4 (diagnostics_every = 3, counted from step 0) and the held-out
    // evaluation on steps 3 and 6 (eval_every = 3), null elsewhere.
    let log = json(&b, &["show", &format!("{ps}:sft.log")]);
    let log = rows(&log);
    let steps: Vec<i64> = log.iter().filter_map(|r| r["step"].as_i64()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    let unit = |v: &serde_json::Value, lo_open: bool| {
        v.as_f64().is_some_and(|x| {
            if lo_open {
                x > 0.0 && x < 1.0
            } else {
                (0.0..=1.0).contains(&x)
            }
        })
    };
    for r in log {
        let step = r["step"].as_i64().unwrap_or(0);
        assert!(
            r["loss"].as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
            "{r}"
        );
        assert!(r["lr"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert_eq!(r["lambda"], 0.5, "{r}");
        assert!(unit(&r["perception_token_share"], true), "{r}");
        if step == 1 || step == 4 {
            assert!(unit(&r["perception_grad_share"], true), "{r}");
            assert!(
                r["loss_perception_blank"]
                    .as_f64()
                    .is_some_and(|x| x.is_finite() && x > 0.0),
                "{r}"
            );
        } else {
            assert!(r["perception_grad_share"].is_null(), "{r}");
            assert!(r["loss_perception_blank"].is_null(), "{r}");
        }
        for col in ["eval_a_p", "eval_a_r", "eval_a"] {
            if step % 3 == 0 {
                assert!(unit(&r[col], false), "{col} at step {step}: {r}");
            } else {
                assert!(r[col].is_null(), "{col} at step {step}: {r}");
            }
        }
    }
    // The curve alone: held-out evaluations at steps 3 and 6.
    let curve = json(
        &b,
        &[
            "show",
            &format!("{ps}:sft.log"),
            "--where-set",
            "eval_a_p",
            "--columns",
            "step,eval_a_p,eval_a_r",
        ],
    );
    assert_eq!(
        curve["table"]["columns"],
        serde_json::json!(["step", "eval_a_p", "eval_a_r"])
    );
    let curve_steps: Vec<&serde_json::Value> = rows(&curve).iter().map(|r| &r["step"]).collect();
    assert_eq!(curve_steps, [3, 6]);
    assert!(
        rows(&curve)
            .iter()
            .all(|r| r.as_object().is_some_and(|o| o.len() == 3))
    );
    let bad = asymm(&b, &["show", &format!("{ps}:sft.log"), "--columns", "nope"]);
    assert!(!bad.status.success() && stderr(&bad).contains("no column `nope`"));

    // Changing λ recomputes training and everything after it, nothing before.
    let p = model_pipeline(d.path(), "objective = \"reweight\"\nlambda = 0.8");
    let status = ok(asymm(&b, &["status", p.to_str().unwrap()]));
    assert!(status.contains("config `lambda` 0.5 → 0.8"), "{status}");
    let rerun = json(&b, &["run", p.to_str().unwrap()]);
    for s in ["synthesize", "render", "distill_format"] {
        assert_eq!(stage(&rerun, s)["result"], "cached", "{s}");
    }
    for s in ["sft", "rollout", "rollout_cf", "evaluate"] {
        assert_eq!(stage(&rerun, s)["result"], "ran", "{s}");
    }
    // Perception's share of the SFT target tokens, loss and gradient, from the training log.
    let shares = rerun["perception_shares"].as_array().unwrap();
    assert_eq!(shares.len(), 1, "{rerun:#}");
    assert_eq!(shares[0]["stage"], "sft");
    for k in ["tokens", "loss"] {
        let v = shares[0][k].as_f64().unwrap();
        assert!(v > 0.0 && v < 1.0, "{k}: {v}");
    }
    // The evaluation summary it prints, as data: every metric over 4 test items × 2 samples.
    let evals = rerun["evaluations"].as_array().unwrap();
    assert_eq!(evals.len(), 1, "{rerun:#}");
    assert_eq!(evals[0]["stage"], "evaluate");
    assert_eq!(
        evals[0]["artifact"],
        stage(&rerun, "evaluate")["outputs"]["main"]
    );
    let summary = evals[0]["rows"].as_array().unwrap();
    let metrics: Vec<&str> = summary
        .iter()
        .filter_map(|r| r["metric"].as_str())
        .collect();
    assert_eq!(
        metrics[..4],
        ["a_p", "a", "a_tilde_r", "a_r"],
        "{summary:?}"
    );
    // The budget of 16 tokens cuts this untrained model's outputs: the summary says so.
    assert!(metrics.contains(&"truncated"), "{metrics:?}");
    for r in summary {
        assert_eq!(r["task"], "graph_coloring", "{r}");
        assert_eq!(r["items"], 4, "{r}");
        assert_eq!(r["interval"], "cluster-bootstrap", "{r}");
        if r["metric"] != "a_given_p" {
            assert_eq!(r["n"], 8, "{r}");
        }
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let eps = 1e-12;
        assert!(
            -eps <= f("ci_low")
                && f("ci_low") <= f("mean") + eps
                && f("mean") <= f("ci_high") + eps
                && f("ci_high") <= 1.0 + eps,
            "{r}"
        );
    }
}

/// The per-step λ of each objective's training log, read as data.
#[test]
fn ngdiff_and_perception_only_train() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("s");
    let mut lambdas: Vec<Vec<Option<f64>>> = Vec::new();
    for objective in [
        "objective = \"reweight\"\nlambda = 0.5",
        "objective = \"ngdiff\"",
        "objective = \"perception-only\"",
    ] {
        let p = model_pipeline(d.path(), objective);
        let run = json(&store, &["run", p.to_str().unwrap(), "--until", "sft"]);
        assert_eq!(stage(&run, "sft")["result"], "ran", "{objective}");
        let log = json(&store, &["show", &format!("{}:sft.log", p.display())]);
        let log = rows(&log);
        assert_eq!(log.len(), 6, "{objective}");
        if objective.contains("ngdiff") {
            // NGDiff's λ is chosen per batch and weighs the two mean losses in the objective.
            for r in log {
                let l = r["lambda"].as_f64().unwrap_or(f64::NAN);
                assert!(l > 0.0 && l < 1.0, "λ outside (0, 1): {r}");
                let (lp, lr) = (
                    r["loss_perception"].as_f64().unwrap_or(f64::NAN),
                    r["loss_reasoning"].as_f64().unwrap_or(f64::NAN),
                );
                let want = l * lp + (1.0 - l) * lr;
                let loss = r["loss"].as_f64().unwrap_or(f64::NAN);
                assert!((loss - want).abs() <= 1e-9 * want.abs().max(1.0), "{r}");
            }
        }
        lambdas.push(log.iter().map(|r| r["lambda"].as_f64()).collect());
    }
    let (fixed, ngdiff, perception_only) = (&lambdas[0], &lambdas[1], &lambdas[2]);
    assert!(fixed.iter().all(|l| *l == Some(0.5)), "{fixed:?}");
    assert!(
        perception_only.iter().all(Option::is_none),
        "{perception_only:?}"
    );
    let ng: Vec<f64> = ngdiff.iter().flatten().copied().collect();
    assert_eq!(ng.len(), 6, "λ on every step: {ngdiff:?}");
    let (lo, hi) = ng
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(
        hi - lo > 1e-6,
        "λ should change from batch to batch: {ng:?}"
    );
    assert_ne!(ngdiff, fixed, "NGDiff's λ is not the fixed one");
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

/// `PIPELINE.toml:STAGE` finds a device-sensitive stage's result whatever device computed it.
/// A `--device cuda:0` run is simulated by re-keying the CPU run's training record for cuda:0.
#[test]
fn stage_references_find_results_from_another_device() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = model_pipeline(d.path(), "objective = \"standard\"");
    let ps = p.to_str().unwrap();
    let s = d.path().join("s");
    ok(asymm(&s, &["run", ps, "--until", "sft"]));
    let status = json(&s, &["status", ps]);
    let (cpu_key, log_id) = (
        stage(&status, "sft")["key"].as_str().unwrap().to_string(),
        stage(&status, "sft")["outputs"]["log"].clone(),
    );
    let store = asymm::store::Store::open(&s).unwrap();
    let mut rec = store.record(&cpu_key).unwrap().expect("record");
    let mut parts: asymm::dag::KeyParts = serde_json::from_value(rec.key_parts.clone()).unwrap();
    assert_eq!(parts.device.as_deref(), Some("cpu"));
    parts.device = Some("cuda:0".into());
    rec.key = parts.key();
    rec.key_parts = serde_json::to_value(&parts).unwrap();
    store.put_record(&rec).unwrap();
    store.set_head("m", "sft", &rec.key).unwrap();
    std::fs::remove_file(s.join("records").join(format!("{cpu_key}.json"))).unwrap();

    // Keyed for the CPU, training is stale (it ran on cuda:0); for cuda:0 it is cached.
    let cpu = json(&s, &["status", ps]);
    assert_eq!(stage(&cpu, "sft")["state"], "stale");
    assert_eq!(why_kinds(stage(&cpu, "sft")), ["device"]);
    let gpu = json(&s, &["status", ps, "--device", "cuda:0"]);
    assert_eq!(stage(&gpu, "sft")["state"], "cached");
    assert_eq!(stage(&gpu, "sft")["key"], rec.key.as_str());
    // References find the cuda:0 result unless a device is named.
    let show = json(&s, &["show", &format!("{ps}:sft.log"), "--rows", "1"]);
    assert_eq!(show["artifact"], log_id);
    let pinned = json(
        &s,
        &[
            "show",
            &format!("{ps}:sft.log"),
            "--rows",
            "1",
            "--device",
            "cuda:0",
        ],
    );
    assert_eq!(pinned["artifact"], log_id);
    let on_cpu = asymm(&s, &["show", &format!("{ps}:sft.log"), "--device", "cpu"]);
    assert!(!on_cpu.status.success());
    assert!(
        stderr(&on_cpu).contains("`sft` has no cached output `log` (state: stale)"),
        "{}",
        stderr(&on_cpu)
    );
    let bundle = d.path().join("x.bundle");
    let out = ok(asymm(
        &s,
        &[
            "bundle",
            "export",
            "-o",
            bundle.to_str().unwrap(),
            &format!("{ps}:sft"),
        ],
    ));
    assert!(out.contains("exported"), "{out}");
}

/// Early stopping on the validation split: at learning rate 0 the validation loss never falls,
/// so the run stops at its first check plus `patience` and logs the loss at each check; without
/// a validation split the stage says so instead of training blind.
#[test]
fn early_stopping_reads_the_validation_split() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = model_pipeline(d.path(), "objective = \"standard\"");
    let stop = r#"
[stages.sft_stop]
stage = "sft-train"
inputs = { data = "distill_format", init = "sft" }
steps = 50
batch_size = 4
lr = 0.0
min_lr = 0.0
diagnostics_every = 0
snapshot_every = 0
early_stop = { every = 2, patience = 1 }
"#;
    let base = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{base}{stop}")).unwrap();
    let e = stderr(&asymm(&d.path().join("s0"), &["run", p.to_str().unwrap()]));
    assert!(e.contains("no items in split `val`"), "{e}");
    let with_val = base.replace(
        "splits = { test = 4, sft = 16, rl = 0 }",
        "splits = { test = 4, sft = 16, rl = 0, val = 4 }",
    );
    assert_ne!(with_val, base);
    std::fs::write(&p, format!("{with_val}{stop}")).unwrap();
    let s = d.path().join("s");
    ok(asymm(&s, &["run", p.to_str().unwrap()]));
    let store = asymm::store::Store::open(&s).unwrap();
    let key = store.head("m", "sft_stop").unwrap().unwrap();
    let log = store.record(&key).unwrap().unwrap().outputs["log"].clone();
    let t = asymm::table::Table::read(&store, &log, "train_log").unwrap();
    let rows = asymm::train::sft::LogRow::read_all(&t).unwrap();
    let checks: Vec<(usize, f64)> = rows
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (r.step, v)))
        .collect();
    assert_eq!(rows.len(), 4, "stops at step 2 + 1·2 of 50");
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert_eq!((checks[0].0, checks[1].0), (2, 4));
    assert_eq!(checks[0].1, checks[1].1, "the weights do not move at lr 0");
    assert!(checks[0].1 > 0.0 && checks[0].1.is_finite());
}
