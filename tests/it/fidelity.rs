//! Measurement fidelity end to end: overlong training targets are refused or dropped and
//! counted, rollouts get a token budget from the data and keep their token ids and
//! log-probabilities, and the evaluation summary reports truncation and format errors.

use crate::common::*;
use arrow::array::Array;
use asymm::store::Store;
use asymm::table::Table;
use std::path::Path;

/// The artifact `output` of stage instance `instance` in the last run of pipeline `name`.
fn artifact(store: &Path, name: &str, instance: &str, output: &str) -> String {
    let s = Store::open(store).unwrap();
    let key = s
        .head(name, instance)
        .unwrap()
        .unwrap_or_else(|| panic!("no run of {instance}"));
    s.record(&key).unwrap().unwrap().outputs[output].clone()
}

fn read(store: &Path, id: &str, kind: &str) -> Table {
    Table::read(&Store::open(store).unwrap(), id, kind).unwrap()
}

const DATA: &str = r#"
[pipeline]
name = "f"
seed = 11

[stages.synthesize]
splits = { test = 4, sft = 24, rl = 0 }
graph = { min_nodes = 3, max_nodes = 6, edge_prob = 0.5 }

[stages.render]
inputs = { puzzles = "synthesize" }
size = 32

[stages.distill_format]
inputs = { puzzles = "synthesize", images = "render" }
verbosity = 1
"#;

fn sft(max_seq_len: usize, extra: &str) -> String {
    format!(
        r#"
[stages.sft]
stage = "sft-train"
inputs = {{ data = "distill_format" }}
size = {{ image_size = 32, patch_size = 16, vit_dim = 16, vit_layers = 1, vit_heads = 2, d_model = 32, layers = 1, heads = 2, max_seq_len = {max_seq_len} }}
steps = 2
batch_size = 4
eval_items = 2
diagnostics_every = 0
snapshot_every = 0
{extra}
"#
    )
}

#[test]
fn overlong_targets_are_refused_or_dropped_and_counted() {
    let d = asymm::util::fsx::TempDir::new("asymm-fid").unwrap();
    let store = d.path().join("s");
    let p = d.path().join("f.toml");
    std::fs::write(&p, DATA).unwrap();
    ok(asymm(&store, &["run", p.to_str().unwrap()]));
    // Text lengths (prompt + target) of the training split.
    let t = read(
        &store,
        &artifact(&store, "f", "distill_format", "main"),
        "sft_targets",
    );
    let splits = t.required_strings("split").unwrap();
    let (prompts, targets) = (
        t.int_lists("prompt_ids").unwrap(),
        t.int_lists("target_ids").unwrap(),
    );
    let mut lens: Vec<usize> = (0..t.rows())
        .filter(|&i| splits[i] == "sft")
        .map(|i| prompts[i].len() + targets[i].len())
        .collect();
    lens.sort();
    let (shortest, longest) = (lens[0], lens[lens.len() - 1]);
    assert!(shortest < longest, "{lens:?}");
    // A context that holds the median example: the model reads max_seq_len − 4 image patches
    // of text, and a text of n tokens needs n − 1 inputs.
    let limit = lens[lens.len() / 2];
    let max_seq_len = limit - 1 + 4;
    let too_long = lens.iter().filter(|&&n| n > limit).count();
    assert!(too_long > 0);

    std::fs::write(&p, format!("{DATA}{}", sft(max_seq_len, ""))).unwrap();
    let o = asymm(&store, &["run", p.to_str().unwrap()]);
    assert!(!o.status.success(), "overlong examples must be refused");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{too_long} of 24 training examples"))
            && err.contains(&format!("has {longest} prompt + target tokens"))
            && err.contains(&format!("reads {limit}")),
        "{err}"
    );

    std::fs::write(
        &p,
        format!("{DATA}{}", sft(max_seq_len, "overlong = \"drop\"")),
    )
    .unwrap();
    let o = asymm(&store, &["run", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("dropped {too_long} of 24")));
    let log = read(&store, &artifact(&store, "f", "sft", "log"), "train_log");
    let dropped = log.i32("overlong_dropped").unwrap();
    assert!((0..log.rows()).all(|i| dropped.value(i) as usize == too_long));
}

#[test]
fn rollouts_budget_from_the_data_and_keep_token_log_probabilities() {
    let d = asymm::util::fsx::TempDir::new("asymm-fid").unwrap();
    let store = d.path().join("s");
    let p = d.path().join("f.toml");
    std::fs::write(
        &p,
        format!(
            "{DATA}{}{}",
            sft(512, "eval_every = 1"),
            r#"
[stages.rollout]
inputs = { checkpoint = "sft", data = "distill_format" }
samples = 2

[stages.rollout_cf]
stage = "rollout"
inputs = { checkpoint = "sft", data = "distill_format" }
mode = "counterfactual"
samples = 2

[stages.evaluate]
inputs = { data = "distill_format", standard = "rollout", counterfactual = "rollout_cf" }
"#
        ),
    )
    .unwrap();
    ok(asymm(&store, &["run", p.to_str().unwrap()]));
    let data = read(
        &store,
        &artifact(&store, "f", "distill_format", "main"),
        "sft_targets",
    );
    let splits = data.required_strings("split").unwrap();
    let longest = data
        .int_lists("target_ids")
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(i, _)| splits[*i] == "test")
        .map(|(_, t)| t.len())
        .max()
        .unwrap();
    let r = read(
        &store,
        &artifact(&store, "f", "rollout", "main"),
        "rollouts",
    );
    let (toks, lps) = (
        r.int_lists("token_ids").unwrap(),
        r.f32_lists("logprobs").unwrap(),
    );
    let (new, truncated) = (r.i32("new_tokens").unwrap(), r.bool("truncated").unwrap());
    let mut cut = 0;
    for i in 0..r.rows() {
        assert_eq!(toks[i].len(), lps[i].len());
        assert!(lps[i].iter().all(|&l| l <= 0.0 && l.is_finite()));
        assert_eq!(
            toks[i].len(),
            new.value(i) as usize + usize::from(!truncated.value(i))
        );
        // The budget is the longest test target plus a quarter (at least 16): no output is
        // longer, and one cut by it has exactly that length.
        let budget = longest + (longest / 4).max(16);
        assert!(new.value(i) as usize <= budget);
        if truncated.value(i) {
            cut += 1;
            assert_eq!(new.value(i) as usize, budget);
        }
    }
    // An untrained model rarely stops: the summary must say how many outputs were cut.
    let s = read(
        &store,
        &artifact(&store, "f", "evaluate", "main"),
        "eval_summary",
    );
    let metrics = s.required_strings("metric").unwrap();
    let mean = s.f64("mean").unwrap();
    let at = |m: &str| {
        metrics
            .iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("no {m} row in {metrics:?}"))
    };
    assert_eq!(mean.value(at("truncated")), cut as f64 / r.rows() as f64);
    for m in [
        "a_p",
        "a",
        "a_tilde_r",
        "a_r",
        "a_p_lenient",
        "counterfactual_truncated",
    ] {
        at(m);
    }
    // Two samples per item: intervals are clustered by item.
    let interval = s.required_strings("interval").unwrap();
    assert_eq!(interval[at("a_p")], "cluster-bootstrap");
    // The held-out columns of the training log are filled on evaluation steps.
    let log = read(&store, &artifact(&store, "f", "sft", "log"), "train_log");
    assert_eq!(log.f64("eval_a_tilde_r").unwrap().null_count(), 0);
    assert_eq!(log.f64("eval_truncated").unwrap().null_count(), 0);
}
