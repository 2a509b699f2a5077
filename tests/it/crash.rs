//! Crash safety: a run killed mid-stage leaves nothing that looks valid, and a rerun ends with
//! exactly the artifacts of an uninterrupted run.

use crate::common::*;

fn killed_then_rerun(point: &str) {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    let clean = table(&ok(asymm(&d.path().join("clean"), &["run", ps])));

    let store = d.path().join("crashy");
    let fault = format!("render:{point}");
    let crashed = asymm_env(&store, &["run", ps], &[("ASYMM_FAULT", &fault)]);
    assert!(
        !crashed.status.success(),
        "the fault hook should kill the run"
    );
    // Nothing half-written is visible: verify passes, render has no record.
    ok(asymm(&store, &["verify"]));
    let status = ok(asymm(&store, &["status", ps]));
    assert!(status.contains("synthesize"), "{status}");
    assert!(
        !status
            .lines()
            .any(|l| l.starts_with("render") && l.contains("cached")),
        "{status}"
    );
    let rerun = table(&ok(asymm(&store, &["run", ps])));
    assert_eq!(
        result_of(&rerun, "synthesize"),
        "cached",
        "completed stage survives the crash"
    );
    assert_eq!(result_of(&rerun, "render"), "ran");
    let ids = |t: &Vec<(String, String, String)>| {
        t.iter()
            .map(|r| (r.0.clone(), r.2.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&rerun), ids(&clean));
}

#[test]
fn crash_before_artifact_commit() {
    killed_then_rerun("before-commit");
}

#[test]
fn crash_after_commit_before_record() {
    killed_then_rerun("before-record");
}
