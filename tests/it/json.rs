//! `--format json`: one parseable document on stdout with the fields scripts rely on.

use crate::common::*;
use serde_json::json as j;
use std::path::Path;

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn is_key(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(asymm::store::is_hex64)
}

#[test]
fn status_of_the_default_pipeline_is_json() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("s");
    let ps = repo_file("pipelines/default.toml");
    let out = ok(asymm(&store, &["status", &ps, "--format", "json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(doc["pipeline"], "default");
    assert_eq!(doc["device"], "cpu");
    let names: Vec<&str> = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "digits",
            "synthesize",
            "render",
            "distill_format",
            "sft",
            "rollout",
            "rollout_cf",
            "evaluate"
        ]
    );
    // Nothing ran in an empty store: the two root stages have keys and were never run, the
    // others wait for them.
    for root in ["digits", "synthesize"] {
        let r = stage(&doc, root);
        assert_eq!(r["state"], "missing");
        assert_eq!(r["stage"], root);
        assert!(is_key(&r["key"]), "{r}");
        assert_eq!(why_kinds(r), ["never_run"]);
        assert_eq!(r["why"][0]["message"], "never run");
    }
    for s in &names[2..] {
        let e = stage(&doc, s);
        assert_eq!(e["state"], "missing", "{s}");
        assert!(e["key"].is_null(), "{s}");
        assert_eq!(why_kinds(e), ["upstream_pending"], "{s}");
    }
    // The same document for the model stages' device.
    let doc = json(&store, &["status", &ps, "--device", "cuda:0"]);
    assert_eq!(doc["device"], "cuda:0");
}

#[test]
fn run_status_dag_and_show_as_json() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("s");
    let p = data_pipeline(d.path(), 96);
    let ps = p.to_str().unwrap();

    let run = json(&store, &["run", ps]);
    assert_eq!(
        (run["pipeline"].clone(), run["dry_run"].clone()),
        (j!("t"), j!(false))
    );
    for s in ["synthesize", "render", "distill_format"] {
        let e = stage(&run, s);
        assert_eq!(e["result"], "ran", "{e}");
        assert!(is_key(&e["key"]) && is_key(&e["outputs"]["main"]), "{e}");
        assert!(e["seconds"].as_f64().is_some_and(|x| x >= 0.0), "{e}");
    }
    assert_eq!(run["evaluations"], j!([]));
    assert_eq!(run["perception_shares"], j!([]));
    let status = json(&store, &["status", ps]);
    for s in ["synthesize", "render", "distill_format"] {
        let (a, b) = (stage(&status, s), stage(&run, s));
        assert_eq!(a["state"], "cached");
        assert_eq!(
            (&a["key"], &a["outputs"]),
            (&b["key"], &b["outputs"]),
            "{s}"
        );
        assert_eq!(a["why"], j!([]));
    }

    // A config change: the field, old and new values; downstream waits on it.
    let p = data_pipeline(d.path(), 80);
    let status = json(&store, &["status", ps]);
    assert_eq!(stage(&status, "synthesize")["state"], "cached");
    let render = stage(&status, "render");
    assert_eq!(render["state"], "stale");
    assert_eq!(
        render["why"],
        j!([{"kind": "config", "field": "size", "old": 96, "new": 80,
             "message": "config `size` 96 → 80"}])
    );
    let distill = stage(&status, "distill_format");
    assert_eq!(distill["state"], "stale", "ran before");
    assert_eq!(
        distill["why"][0],
        j!({"kind": "upstream_pending", "input": "images", "upstream": "render",
            "message": "input `images`: upstream `render` runs first"})
    );
    let dry = json(&store, &["run", p.to_str().unwrap(), "--dry-run"]);
    assert_eq!(stage(&dry, "synthesize")["result"], "cached");
    assert_eq!(stage(&dry, "render")["result"], "would_run");
    assert_eq!(why_kinds(stage(&dry, "render")), ["config"]);

    // The graph: instances in run order and every edge.
    let dag = json(&store, &["dag", ps]);
    let names: Vec<&str> = dag["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["synthesize", "render", "distill_format"]);
    assert_eq!(dag["instances"][1]["config"]["size"], 80);
    assert_eq!(
        dag["edges"],
        j!([
            {"from": "synthesize", "output": "main", "to": "render", "input": "puzzles"},
            {"from": "render", "output": "main", "to": "distill_format", "input": "images"},
            {"from": "synthesize", "output": "main", "to": "distill_format", "input": "puzzles"},
        ])
    );
    assert!(
        !asymm(&store, &["dag", ps, "--dot", "--format", "json"])
            .status
            .success()
    );

    // An artifact: the manifest and every row, every column.
    let show = json(&store, &["show", &format!("{ps}:synthesize")]);
    assert_eq!(show["manifest"]["kind"], "puzzles");
    assert_eq!(
        show["artifact"],
        stage(&run, "synthesize")["outputs"]["main"]
    );
    assert_eq!(show["table"]["total_rows"], 36);
    let all = rows(&show);
    assert_eq!(all.len(), 36, "all rows by default");
    let columns = show["table"]["columns"].as_array().unwrap().len();
    assert_eq!(columns, 9);
    assert!(
        all.iter()
            .all(|r| r.as_object().is_some_and(|o| o.len() == columns))
    );
    assert_eq!(all[0]["id"], "gc-000000");
    let splits = |v: &str| all.iter().filter(|r| r["split"] == v).count();
    assert_eq!((splits("test"), splits("sft"), splits("rl")), (8, 24, 4));
    for r in all {
        let (n, k) = (
            r["nodes"].as_i64().unwrap(),
            r["chromatic"].as_i64().unwrap(),
        );
        assert!((1..=n).contains(&k), "{r}");
        assert!(r["givens"].is_null());
    }
    // --rows, --columns and --where-set.
    let some = json(
        &store,
        &[
            "show",
            &format!("{ps}:synthesize"),
            "--rows",
            "2",
            "--columns",
            "id,chromatic",
        ],
    );
    assert_eq!(
        rows(&some)
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>(),
        [j!("gc-000000"), j!("gc-000001")]
    );
    assert_eq!(some["table"]["columns"], j!(["id", "chromatic"]));
    assert_eq!(rows(&some)[0].as_object().unwrap().len(), 2);
    let none = json(
        &store,
        &["show", &format!("{ps}:synthesize"), "--where-set", "givens"],
    );
    assert_eq!(
        (none["table"]["total_rows"].clone(), rows(&none).len()),
        (j!(0), 0)
    );
    let bad = asymm(
        &store,
        &[
            "show",
            &format!("{ps}:synthesize"),
            "--columns",
            "nope",
            "--format",
            "json",
        ],
    );
    assert!(!bad.status.success() && stderr(&bad).contains("no column `nope`"));
    assert!(bad.stdout.is_empty(), "nothing on stdout on error");
}
