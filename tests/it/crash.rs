//! Crash safety: a run killed mid-stage leaves nothing that looks valid, and a rerun ends with
//! exactly the artifacts of an uninterrupted run.

use crate::common::*;

fn killed_then_rerun(point: &str) {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    let clean = json(&d.path().join("clean"), &["run", ps]);

    let store = d.path().join("crashy");
    let fault = format!("render:{point}");
    let crashed = asymm_env(&store, &["run", ps], &[("ASYMM_FAULT", &fault)]);
    assert!(
        !crashed.status.success(),
        "the fault hook should kill the run"
    );
    // Nothing half-written is visible: verify passes; the finished stage is cached with the
    // clean run's key and artifact, the crashed one and the one after it were never completed.
    ok(asymm(&store, &["verify"]));
    let status = json(&store, &["status", ps]);
    let synth = stage(&status, "synthesize");
    assert_eq!(synth["state"], "cached", "{status:#}");
    assert_eq!(synth["key"], stage(&clean, "synthesize")["key"]);
    assert_eq!(synth["outputs"], stage(&clean, "synthesize")["outputs"]);
    let render = stage(&status, "render");
    assert_eq!(render["state"], "missing", "{status:#}");
    assert_eq!(why_kinds(render), ["never_run"]);
    assert_eq!(
        render["key"],
        stage(&clean, "render")["key"],
        "same inputs, same key"
    );
    assert_eq!(render["outputs"], serde_json::json!({}));
    let distill = stage(&status, "distill_format");
    assert_eq!(distill["state"], "missing", "{status:#}");
    assert_eq!(why_kinds(distill), ["upstream_pending"]);
    assert_eq!(distill["why"][0]["upstream"], "render");
    assert!(
        distill["key"].is_null(),
        "no key without the upstream result"
    );

    let rerun = json(&store, &["run", ps]);
    let results: Vec<(&str, &str)> = ["synthesize", "render", "distill_format"]
        .iter()
        .map(|s| (*s, stage(&rerun, s)["result"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(
        results,
        [
            ("synthesize", "cached"),
            ("render", "ran"),
            ("distill_format", "ran")
        ],
        "completed stage survives the crash"
    );
    for s in ["synthesize", "render", "distill_format"] {
        assert_eq!(
            stage(&rerun, s)["outputs"],
            stage(&clean, s)["outputs"],
            "{s}"
        );
        assert_eq!(stage(&rerun, s)["key"], stage(&clean, s)["key"], "{s}");
    }
    let after = json(&store, &["status", ps]);
    assert!(
        after["stages"]
            .as_array()
            .is_some_and(|a| a.iter().all(|s| s["state"] == "cached")),
        "{after:#}"
    );
}

#[test]
fn crash_before_artifact_commit() {
    killed_then_rerun("before-commit");
}

#[test]
fn crash_after_commit_before_record() {
    killed_then_rerun("before-record");
}
