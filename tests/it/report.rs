//! The report stage end to end on a very small grid (SFT λ sweep, a swept RL loop, a pool of
//! rollouts): every table cell is checked against the artifact it names, and the HTML page is
//! loaded in a real headless browser (Chromium, installed by `make test`), which must decode
//! every figure and find every table.

use crate::common::*;
use arrow::array::Array;
use asymm::store::Store;
use asymm::table::Table;
use std::path::Path;
use std::process::Command;

const GRID: &str = r#"
[pipeline]
name = "grid"
seed = 3

[stages.synthesize]
splits = { test = 8, sft = 16, rl = 4, val = 4 }
graph = { min_nodes = 3, max_nodes = 4, edge_prob = 0.5 }

[stages.render]
inputs = { puzzles = "synthesize" }
size = 32

[stages.distill_format]
inputs = { puzzles = "synthesize", images = "render" }
verbosity = 0

[stages.sft]
stage = "sft-train"
inputs = { data = "distill_format" }
size = { image_size = 32, patch_size = 16, vit_dim = 16, vit_layers = 1, vit_heads = 2, d_model = 48, layers = 2, heads = 2, max_seq_len = 256 }
steps = 600
batch_size = 4
eval_every = 200
eval_items = 1
eval_max_new_tokens = 4
diagnostics_every = 1
snapshot_every = 0

[stages.sft_lambda]
stage = "sft-train"
inputs = { data = "distill_format", init = "sft" }
objective = "reweight"
steps = 2
batch_size = 4
eval_every = 1
eval_items = 1
eval_max_new_tokens = 4
diagnostics_every = 1
snapshot_every = 0
sweep = { lambda = [0.2, 0.8], seed = [3, 4] }

[stages.roll]
stage = "rollout"
inputs = { checkpoint = "sft", data = "distill_format" }
[stages.cf]
stage = "rollout"
inputs = { checkpoint = "sft", data = "distill_format" }
mode = "counterfactual"
[stages.eval]
stage = "evaluate"
inputs = { data = "distill_format", standard = "roll", counterfactual = "cf" }

[stages.roll_lambda]
stage = "rollout"
inputs = { checkpoint = "sft_lambda", data = "distill_format" }
[stages.cf_lambda]
stage = "rollout"
inputs = { checkpoint = "sft_lambda", data = "distill_format" }
mode = "counterfactual"
[stages.eval_lambda]
stage = "evaluate"
inputs = { data = "distill_format", standard = "roll_lambda", counterfactual = "cf_lambda" }

[stages.val_roll_lambda]
stage = "rollout"
inputs = { checkpoint = "sft_lambda", data = "distill_format" }
split = "val"
[stages.val_eval_lambda]
stage = "evaluate"
inputs = { data = "distill_format", standard = "val_roll_lambda" }

[stages.rl]
stage = "grpo"
inputs = { checkpoint = "sft", data = "distill_format", reference = "sft" }
steps = 2
rollout = { prompts_per_step = 2, samples = 2 }
reward = { perception = "ground_truth" }
update = { lr = 1e-3, kl_coef = 0.01, mini_batch = 2 }
eval = { every = 1, items = 8 }
keep_every = 2
sweep = { "reward.alpha" = [0.0, 0.2, 0.5, 1.0] }

[stages.eval_rl_start]
stage = "evaluate"
inputs = { data = "distill_format", standard = "roll", counterfactual = "cf" }

[stages.roll_rl]
stage = "rollout"
inputs = { checkpoint = "rl", data = "distill_format" }
[stages.cf_rl]
stage = "rollout"
inputs = { checkpoint = "rl", data = "distill_format" }
mode = "counterfactual"
[stages.eval_rl]
stage = "evaluate"
inputs = { data = "distill_format", standard = "roll_rl", counterfactual = "cf_rl" }

[stages.pool]
stage = "rollout"
inputs = { checkpoint = "sft", data = "distill_format" }
split = "rl"
samples = 4
sampling = { temperature = 1.0 }

[stages.scores]
stage = "reward-score"
inputs = { rollouts = "pool", data = "distill_format" }

[stages.correlate]
inputs = { rewards = "scores" }
reps = 50
mixtures = [
  { alpha = 0.0, perception = "ground_truth" },
  { alpha = 0.2, perception = "ground_truth" },
  { alpha = 0.5, perception = "ground_truth" },
  { alpha = 1.0, perception = "ground_truth" },
]

[stages.report]
inputs = { evals = ["eval", "eval_lambda", "eval_rl_start", "eval_rl"], eval_items = ["eval.items", "eval_lambda.items", "eval_rl_start.items", "eval_rl.items"], sft_logs = ["sft.log", "sft_lambda.log"], rl_evals = ["rl.eval"], rl_logs = ["rl.log"], pools = ["correlate"], pool_differences = ["correlate.differences"], val_evals = ["val_eval_lambda"] }
title = "grid"
roles = { eval = "standard", sft = "standard", eval_lambda = "lambda", sft_lambda = "lambda", rl = "alpha", eval_rl_start = "rl-start", eval_rl = "alpha", val_eval_lambda = "lambda" }
"#;

fn report_id(store: &Store) -> String {
    let key = store.head("grid", "report").unwrap().unwrap();
    store.record(&key).unwrap().unwrap().outputs["main"].clone()
}

/// One run of the grid, shared by the tests of this file.
fn grid() -> &'static (asymm::util::fsx::TempDir, std::path::PathBuf) {
    static GRID_RUN: std::sync::OnceLock<(asymm::util::fsx::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    GRID_RUN.get_or_init(|| {
        let d = asymm::util::fsx::TempDir::new("asymm-report").unwrap();
        let p = d.path().join("grid.toml");
        std::fs::write(&p, GRID).unwrap();
        let s = d.path().join("s");
        let out = ok(asymm(&s, &["run", p.to_str().unwrap()]));
        assert!(out.contains("report.html"), "{out}");
        (d, s)
    })
}

fn f64_at(t: &Table, col: &str, i: usize) -> Option<f64> {
    let a = t.f64(col).unwrap();
    (!a.is_null(i)).then(|| a.value(i))
}

/// The number a report cell names, read afresh from the artifact the cell cites.
fn expected(store: &Store, table: &str, row: &str, column: &str, source: &str) -> Option<f64> {
    let kind = store.manifest(source).unwrap().kind;
    let t = Table::read(store, source, &kind).unwrap();
    match kind.as_str() {
        "eval_summary" => {
            let metrics = t.required_strings("metric").unwrap();
            let i = metrics
                .iter()
                .position(|m| m == if column == "items" { "a" } else { column })
                .unwrap();
            if column == "items" {
                Some(t.i64("n").unwrap().value(i) as f64)
            } else {
                f64_at(&t, "mean", i)
            }
        }
        "rl_eval" => {
            let steps = t.i32("step").unwrap();
            let i = if row == "initialization" {
                (0..t.rows()).find(|&i| steps.value(i) == -1).unwrap()
            } else {
                t.rows() - 1
            };
            if column == "items" {
                Some(t.i32("items").unwrap().value(i) as f64)
            } else {
                f64_at(&t, column, i)
            }
        }
        "rl_log" => {
            let col = match column {
                "r(R, a_p)" => "running_r_reward_a_p",
                _ => "running_r_reward_a_tilde_r",
            };
            f64_at(&t, col, t.rows() - 1)
        }
        "correlations" => {
            let (rewards, against) = (
                t.required_strings("reward").unwrap(),
                t.required_strings("against").unwrap(),
            );
            let want = if column.ends_with("a_tilde_r") || column.ends_with("ã_r") {
                "a_tilde_r"
            } else {
                "a_p"
            };
            // Table 3's coupling before training: the run's reward composed on the pool.
            let reward = match (column, row) {
                ("r(R, a_p) before training", "outcome only (α = 0)") => "alpha=0:ground_truth",
                ("r(R, a_p) before training", "ground truth (α = 0.5)") => {
                    "alpha=0.5:ground_truth"
                }
                _ => row,
            };
            let i = (0..t.rows())
                .find(|&i| rewards[i] == reward && against[i] == want)
                .unwrap();
            f64_at(&t, "r", i)
        }
        "train_log" => {
            let col = match column {
                "token share" => "perception_token_share",
                "loss share" => "perception_loss_share",
                _ => "perception_grad_share",
            };
            let v: Vec<f64> = (0..t.rows()).filter_map(|i| f64_at(&t, col, i)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        }
        k => panic!("{table}/{row}/{column}: unexpected source kind {k}"),
    }
}

/// Every cell of every table equals the number in the artifact it cites; the tables, the
/// documents and the figures are all there.
#[test]
fn report_tables_match_their_artifacts() {
    let (_d, s) = grid();
    let store = Store::open(s).unwrap();
    let id = report_id(&store);
    let t = Table::read(&store, &id, "report").unwrap();
    let (tables, rows, columns, sources) = (
        t.required_strings("table").unwrap(),
        t.required_strings("row").unwrap(),
        t.required_strings("column").unwrap(),
        t.required_strings("source").unwrap(),
    );
    for want in [
        "table1_sft",
        "table2_rl",
        "table3_perception_rewards",
        "table4_reward_correlations",
        "table5_shares",
    ] {
        assert!(tables.iter().any(|x| x == want), "{want} missing");
    }
    for i in 0..t.rows() {
        let want = expected(&store, &tables[i], &rows[i], &columns[i], &sources[i]);
        let got = f64_at(&t, "value", i);
        assert_eq!(
            got, want,
            "{} / {} / {} from {}",
            tables[i], rows[i], columns[i], sources[i]
        );
    }
    // Table 1 holds the standard run and both λ values, one row per seed (each citing that
    // seed's evaluation); Table 2 the start and the three α.
    let rows_of = |table: &str| -> Vec<&str> {
        let mut v: Vec<&str> = (0..t.rows())
            .filter(|&i| tables[i] == table)
            .map(|i| rows[i].as_str())
            .collect();
        v.dedup();
        v
    };
    assert_eq!(
        rows_of("table1_sft"),
        [
            "standard",
            "λ = 0.2 (seed 3)",
            "λ = 0.2 (seed 4)",
            "λ = 0.8 (seed 3)",
            "λ = 0.8 (seed 4)"
        ]
    );
    assert_eq!(
        rows_of("table2_rl"),
        ["initialization", "α = 0", "α = 0.2", "α = 0.5", "α = 1"]
    );
    let files: Vec<String> = store
        .manifest(&id)
        .unwrap()
        .files
        .iter()
        .map(|f| f.name.clone())
        .collect();
    for f in [
        "report.html",
        "report.md",
        "rl_curves.png",
        "correlations.png",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} not in {files:?}");
    }
    // The SFT variants' per-item scores are wired: their comparison is paired over the items.
    let md = String::from_utf8(store.read_file(&id, "report.md").unwrap()).unwrap();
    let line = md
        .lines()
        .find(|l| l.contains("Reweighting perception in SFT"))
        .unwrap_or_else(|| panic!("no reweighting finding in\n{md}"));
    assert!(line.contains("(paired") && line.contains("n = "), "{line}");
    // The λ runs are replicated over two seeds: merged per item, and compared seed by seed.
    assert!(
        line.contains("seed by seed") && line.contains("(seed 3)") && line.contains("(seed 4)"),
        "{line}"
    );
    // The best λ is chosen on the validation split (its evaluation wired as `val_evals`).
    assert!(line.contains("chosen on the validation split"), "{line}");
    // So are the RL runs' and their start's: RL gains and the α comparisons are paired.
    for claim in [
        "RL with the outcome reward improves reasoning",
        "Augmenting the outcome reward",
        "Along the α frontier",
    ] {
        let line = md
            .lines()
            .find(|l| l.contains(claim))
            .unwrap_or_else(|| panic!("no `{claim}` finding in\n{md}"));
        assert!(line.contains("(paired)"), "{line}");
    }
    // Each RL run's reward composed on the pool (correlate's `mixtures`): its mean is
    // α·mean(ground truth) + (1 − α)·mean(outcome) over the same rollouts.
    let key = store.head("grid", "correlate").unwrap().unwrap();
    let cid = store.record(&key).unwrap().unwrap().outputs["main"].clone();
    let c = Table::read(&store, &cid, "correlations").unwrap();
    let (rewards, against) = (
        c.required_strings("reward").unwrap(),
        c.required_strings("against").unwrap(),
    );
    let mean = |name: &str| {
        let i = (0..c.rows())
            .find(|&i| rewards[i] == name && against[i] == "a_p")
            .unwrap_or_else(|| panic!("no `{name}` row"));
        c.f64("mean_reward").unwrap().value(i)
    };
    for alpha in [0.0, 0.2, 0.5, 1.0] {
        let want = alpha * mean("ground_truth") + (1.0 - alpha) * mean("outcome");
        let got = mean(&asymm::rl::coupling::mixture_name(alpha, "ground_truth"));
        assert!(
            (got - want).abs() < 1e-12,
            "α = {alpha}: {got} against {want}"
        );
    }
    // The departures from the paper's setup read the grid's own configs from the manifests.
    let section = md
        .split("## Where this grid departs from the paper")
        .nth(1)
        .unwrap_or_else(|| panic!("no departures section in\n{md}"));
    for want in [
        "data (graph coloring, 3–4 nodes): 16 SFT training puzzles (the paper: 2000), 4 RL \
         prompts (the paper: 16000), 8 test puzzles (the paper: 500)",
        "`sft` starts from a freshly initialised `tiny`",
        "4 runs (`sft_lambda[lambda=0.2,seed=3]`, `sft_lambda[lambda=0.2,seed=4]`, \
         `sft_lambda[lambda=0.8,seed=3]`, `sft_lambda[lambda=0.8,seed=4]`) start from a freshly \
         initialised `tiny` trained on the task itself (`sft` 600 steps at verbosity 0)",
        "traces: the solver's own steps at verbosity 0",
        "RL start: 4 runs (`rl[alpha=0.0]`, `rl[alpha=0.2]`, `rl[alpha=0.5]`, `rl[alpha=1.0]`) \
         start from the SFT variant `sft`",
        "4 runs (`rl[alpha=0.0]`, `rl[alpha=0.2]`, `rl[alpha=0.5]`, `rl[alpha=1.0]`) run 2 \
         steps of 2 prompts × 2 samples at T = 0.7, lr 1e-3, KL 0.01, mini-batch 2",
    ] {
        assert!(section.contains(want), "`{want}` not in\n{section}");
    }
    // Every evaluation samples as the paper's do (T = 0.7): no evaluation line.
    assert!(!section.contains("evaluation:"), "{section}");
}

/// Chromium, as `make test` installs it (Debian's package), or `ASYMM_CHROMIUM`.
fn chromium() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ASYMM_CHROMIUM") {
        return p.into();
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "no Chromium found for the report's browser test: `make test` installs Debian's \
         `chromium` package; or set ASYMM_CHROMIUM to a Chromium binary"
    );
}

/// The page in a real browser: every figure decodes (naturalWidth > 0) and every table is
/// there with its rows.
#[test]
fn report_renders_in_a_browser() {
    let (d, s) = grid();
    let store = Store::open(s).unwrap();
    let id = report_id(&store);
    let html = String::from_utf8(store.read_file(&id, "report.html").unwrap()).unwrap();
    let probe = r#"<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: [...document.querySelectorAll('table[data-table]')]
      .map(t => [t.dataset.table, t.tBodies[0].rows.length]),
  };
  const pre = document.createElement('pre');
  pre.id = 'asymm-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script></body>"#;
    let page = d.path().join("probe.html");
    std::fs::write(&page, html.replace("</body>", probe)).unwrap();
    let profile = d.path().join("chromium-profile");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let Some(json) = dom
        .split("<pre id=\"asymm-check\">")
        .nth(1)
        .and_then(|x| x.split("</pre>").next())
    else {
        panic!(
            "the probe did not run: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            &dom[..dom.len().min(500)]
        );
    };
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let figures = store
        .manifest(&id)
        .unwrap()
        .files
        .iter()
        .filter(|f| f.name.ends_with(".png"))
        .count();
    assert!(figures >= 4, "{figures} figures");
    assert_eq!(v["images"], figures, "{v}");
    assert_eq!(v["decoded"], figures, "{v}");
    let tables: Vec<(String, u64)> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t[0].as_str().unwrap().to_string(), t[1].as_u64().unwrap()))
        .collect();
    assert_eq!(tables.len(), 5, "{tables:?}");
    assert!(tables.iter().all(|t| t.1 > 0), "{tables:?}");
}

/// `make bundle`'s round trip: the report and its whole lineage exported as one bundle and
/// imported into an empty store; running the grid there reuses every artifact (nothing runs,
/// not even the RL steps whose checkpoints were discarded: their tombstones travel too) and
/// names the identical report.
#[test]
fn report_bundle_round_trip() {
    let (d, s) = grid();
    let p = d.path().join("grid.toml");
    let ps = p.to_str().unwrap();
    let store = Store::open(s).unwrap();
    let id = report_id(&store);
    let bundle = d.path().join("report.bundle");
    ok(asymm(
        s,
        &[
            "bundle",
            "export",
            "-o",
            bundle.to_str().unwrap(),
            &format!("{ps}:report"),
        ],
    ));
    let fresh = d.path().join("fresh");
    ok(asymm(
        &fresh,
        &["bundle", "import", bundle.to_str().unwrap()],
    ));
    assert!(
        std::fs::read_dir(fresh.join("discarded")).unwrap().count() > 0,
        "no tombstones travelled"
    );
    let rows = table(&ok(asymm(&fresh, &["run", ps])));
    assert!(rows.iter().all(|r| r.1 == "cached"), "{rows:?}");
    let again = Store::open(&fresh).unwrap();
    assert_eq!(report_id(&again), id);
    assert_eq!(
        again.read_file(&id, "report.html").unwrap(),
        store.read_file(&id, "report.html").unwrap()
    );
}
