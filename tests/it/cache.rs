//! Caching, staleness, determinism, verification, gc and concurrency.

use crate::common::*;

#[test]
fn rerun_is_a_noop_and_config_change_recomputes_only_descendants() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("store");
    let p = data_pipeline(d.path(), 96);
    let ps = p.to_str().unwrap();
    let first = table(&ok(asymm(&store, &["run", ps])));
    assert!(first.iter().all(|r| r.1 == "ran"), "{first:?}");
    let second = table(&ok(asymm(&store, &["run", ps])));
    assert!(second.iter().all(|r| r.1 == "cached"), "{second:?}");
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.2, b.2, "same artifacts on a no-op rerun");
    }
    // Change the render config: status explains, run recomputes render and distill only.
    let p = data_pipeline(d.path(), 80);
    let ps = p.to_str().unwrap();
    let status = ok(asymm(&store, &["status", ps]));
    assert!(status.contains("config `size` 96 → 80"), "{status}");
    assert!(
        status.contains("input `images`: upstream `render` runs first"),
        "{status}"
    );
    let dry = table(&ok(asymm(&store, &["run", ps, "--dry-run"])));
    assert_eq!(result_of(&dry, "synthesize"), "cached");
    assert_eq!(result_of(&dry, "render"), "would run");
    let third = table(&ok(asymm(&store, &["run", ps])));
    assert_eq!(result_of(&third, "synthesize"), "cached");
    assert_eq!(result_of(&third, "render"), "ran");
    assert_eq!(result_of(&third, "distill_format"), "ran");
    // The superseded render output is garbage now; gc removes it and keeps the heads.
    let gc = ok(asymm(&store, &["gc"]));
    assert!(gc.contains("removed 2 artifacts"), "{gc}");
    let again = table(&ok(asymm(&store, &["run", ps])));
    assert!(again.iter().all(|r| r.1 == "cached"), "{again:?}");
}

#[test]
fn same_seed_same_hashes_across_stores() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    let a = table(&ok(asymm(&d.path().join("a"), &["run", ps])));
    let b = table(&ok(asymm(&d.path().join("b"), &["run", ps])));
    assert_eq!(a, b);
    // A different seed changes every artifact.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("seed = 3", "seed = 4");
    std::fs::write(&p, text).unwrap();
    let c = table(&ok(asymm(&d.path().join("c"), &["run", ps])));
    for (x, y) in a.iter().zip(&c) {
        assert_ne!(x.2, y.2, "{} should change with the seed", x.0);
    }
}

#[test]
fn corruption_is_detected_by_verify_and_on_read() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("store");
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    ok(asymm(&store, &["run", ps]));
    ok(asymm(&store, &["verify"]));
    // Flip one byte in the puzzles' Parquet file.
    let files = object_files(&store);
    let target = files
        .iter()
        .find(|f| {
            let m = std::fs::read_to_string(f.parent().unwrap().join("manifest.json")).unwrap();
            m.contains("\"kind\": \"puzzles\"")
        })
        .unwrap();
    let mut bytes = std::fs::read(target).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(target, bytes).unwrap();
    let v = asymm(&store, &["verify"]);
    assert_eq!(v.status.code(), Some(3), "{}", stdout(&v));
    assert!(stdout(&v).contains("CORRUPT"), "{}", stdout(&v));
    let id = target
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let show = asymm(&store, &["show", &id]);
    assert!(!show.status.success());
    assert!(
        stderr(&show).contains("does not match its hash"),
        "{}",
        stderr(&show)
    );
    // A stage reading it fails loudly instead of using bad data.
    let forced = asymm(&store, &["run", ps, "--force", "render"]);
    assert!(!forced.status.success());
    assert!(stderr(&forced).contains("corrupt"), "{}", stderr(&forced));
}

#[test]
fn show_prints_schema_and_rows() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("store");
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    ok(asymm(&store, &["run", ps]));
    let out = ok(asymm(
        &store,
        &["show", &format!("{ps}:synthesize"), "--rows", "3"],
    ));
    assert!(out.contains("kind     puzzles"), "{out}");
    assert!(out.contains("chromatic"), "{out}");
    assert!(out.contains("gc-000000"), "{out}");
    let dag = ok(asymm(&store, &["dag", ps]));
    assert!(dag.contains("images←render"), "{dag}");
}

#[test]
fn concurrent_runs_compute_each_key_once() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("store");
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap().to_string();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (store, ps) = (store.clone(), ps.clone());
            std::thread::spawn(move || ok(asymm(&store, &["run", &ps])))
        })
        .collect();
    let outs: Vec<_> = handles
        .into_iter()
        .map(|h| table(&h.join().unwrap()))
        .collect();
    for stage in ["synthesize", "render", "distill_format"] {
        let ran = outs.iter().filter(|t| result_of(t, stage) == "ran").count();
        assert_eq!(ran, 1, "{stage} computed {ran} times: {outs:?}");
        assert_eq!(
            outs[0].iter().find(|r| r.0 == stage).unwrap().2,
            outs[1].iter().find(|r| r.0 == stage).unwrap().2
        );
    }
    ok(asymm(&store, &["verify"]));
}

#[test]
fn only_and_until_select_stages() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("store");
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    let only = asymm(&store, &["run", ps, "--only", "render"]);
    assert!(!only.status.success());
    assert!(
        stderr(&only).contains("has not been computed"),
        "{}",
        stderr(&only)
    );
    let out = ok(asymm(&store, &["run", ps, "--until", "render"]));
    let until = table(&out);
    assert_eq!(result_of(&until, "render"), "ran");
    // Stages not selected are counted, not listed.
    assert!(until.iter().all(|r| r.0 != "distill_format"), "{out}");
    assert!(out.contains("(1 stage not selected)"), "{out}");
    let only = table(&ok(asymm(&store, &["run", ps, "--only", "distill_format"])));
    assert_eq!(result_of(&only, "distill_format"), "ran");
    let forced = table(&ok(asymm(&store, &["run", ps, "--force", "render"])));
    assert_eq!(result_of(&forced, "render"), "ran");
    // Deterministic: the forced rerun produced the same bytes, so distill stays cached.
    assert_eq!(result_of(&forced, "distill_format"), "cached");
}
