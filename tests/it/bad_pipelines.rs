//! Bad pipeline files give errors that name the problem.

use crate::common::*;

fn err_of(body: &str) -> String {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(&p, body).unwrap();
    let o = asymm(&d.path().join("s"), &["run", p.to_str().unwrap()]);
    assert!(!o.status.success(), "should fail: {body}");
    stderr(&o)
}

#[test]
fn unknown_stage_type() {
    let e = err_of("[stages.x]\nstage = \"sythesize\"\n");
    assert!(
        e.contains("unknown stage type `sythesize`") && e.contains("synthesize"),
        "{e}"
    );
}

#[test]
fn cycle() {
    // `a` and `b` feed each other; `synthesize` and `c` (downstream of the cycle) are not in it.
    let e = err_of(
        "[stages.synthesize]\n\
         [stages.a]\nstage = \"render\"\ninputs = { puzzles = \"b\" }\n\
         [stages.b]\nstage = \"render\"\ninputs = { puzzles = \"a\" }\n\
         [stages.c]\nstage = \"distill-format\"\ninputs = { puzzles = \"synthesize\", images = \"a\" }\n",
    );
    assert_eq!(e.trim(), "error: cycle through stages: a → b → a", "{e}");
}

#[test]
fn missing_input() {
    let e = err_of("[stages.synthesize]\n[stages.render]\n");
    assert!(e.contains("required input `puzzles`"), "{e}");
}

#[test]
fn input_from_nowhere() {
    let e = err_of("[stages.render]\ninputs = { puzzles = \"synth\" }\n");
    assert!(e.contains("`synth`, which is not a stage"), "{e}");
}

#[test]
fn wrong_input_kind() {
    let e = err_of(
        "[stages.synthesize]\n[stages.render]\ninputs = { puzzles = \"synthesize\" }\n[stages.r2]\nstage = \"render\"\ninputs = { puzzles = \"render\" }\n",
    );
    assert!(
        e.contains("expects kind `puzzles`") && e.contains("produces `images`"),
        "{e}"
    );
}

#[test]
fn wrong_config_type_and_unknown_key() {
    // The key is named by its dotted path and placed at its line and column in the user's file.
    let e = err_of("# a comment\n\n[stages.synthesize]\nsplits = { test = \"many\" }\n");
    assert!(
        e.contains("bad.toml:4:12: stage `synthesize`: bad config: at `splits.test`"),
        "{e}"
    );
    let e = err_of("[stages.synthesize]\ntsak = \"sudoku\"\n");
    assert!(
        e.contains("bad.toml:2:1: stage `synthesize`: bad config: at `tsak`: unknown field `tsak`"),
        "{e}"
    );
    // Said once, not once more as its own cause.
    assert_eq!(e.matches("unknown field").count(), 1, "{e}");
    let e = err_of("[stages.synthesize]\ntask = \"chess\"\n");
    assert!(e.contains("chess") && e.contains("bad.toml:2:1"), "{e}");
}

/// The runner's own keys and the `[pipeline]` table are typed: a wrong one is shown where it is
/// written.
#[test]
fn runner_keys_are_checked_where_written() {
    let e = err_of("[pipeline]\nnmae = \"x\"\n[stages.synthesize]\n");
    assert!(
        e.contains("line 2, column 1")
            && e.contains("unknown field `nmae`, expected one of `name`, `seed`"),
        "{e}"
    );
    let e = err_of("[stages.synthesize]\nseed = -1\n");
    assert!(
        e.contains("line 2, column 8") && e.contains("expected u64"),
        "{e}"
    );
    let e = err_of("[stages.synthesize]\n[stages.render]\ninputs = { puzzles = 3 }\n");
    assert!(
        e.contains("line 3, column 22") && e.contains("an input names a stage"),
        "{e}"
    );
    let e = err_of("[stages.synthesize]\nsweep = { discard = [[]] }\n");
    assert!(e.contains("cannot sweep a reserved key"), "{e}");
    // `seed` is the one runner key a sweep sets (replicates), to integers only.
    let e = err_of("[stages.synthesize]\nsweep = { seed = [1, \"two\"] }\n");
    assert!(
        e.contains("lists `\"two\"`; seeds are non-negative integers"),
        "{e}"
    );
    let e = err_of("[stages.synthesize]\nsweep = { task = [] }\n");
    assert!(
        e.contains("`stages.synthesize.sweep.task` must be a non-empty list"),
        "{e}"
    );
}

#[test]
fn toml_syntax_error() {
    let e = err_of("[stages.synthesize\n");
    assert!(e.contains("bad.toml"), "{e}");
}

#[test]
fn sweeps_expand_downstream() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let p = d.path().join("sweep.toml");
    std::fs::write(
        &p,
        r#"
[stages.synthesize]
splits = { test = 4, sft = 4, rl = 0 }
[stages.render]
inputs = { puzzles = "synthesize" }
sweep = { size = [64, 72] }
[stages.distill_format]
inputs = { puzzles = "synthesize", images = "render" }
"#,
    )
    .unwrap();
    let out = ok(asymm(&d.path().join("s"), &["dag", p.to_str().unwrap()]));
    for inst in [
        "render[size=64]",
        "render[size=72]",
        "distill_format[size=64]",
        "distill_format[size=72]",
    ] {
        assert!(out.contains(inst), "{inst} missing in\n{out}");
    }
    let run = table(&ok(asymm(
        &d.path().join("s"),
        &["run", p.to_str().unwrap()],
    )));
    assert_eq!(run.len(), 5);
    assert_ne!(run[1].2, run[2].2, "the two sizes give different images");
}

#[test]
fn follow_without_an_upstream_sweep_and_bad_discard() {
    let e = err_of(
        "[stages.synthesize]\n[stages.render]\ninputs = { puzzles = \"synthesize\" }\nfollow = { size = \"size\" }\n",
    );
    assert!(
        e.contains("follows `size`, which no stage upstream sweeps"),
        "{e}"
    );
    let e = err_of("[stages.synthesize]\ndiscard = [\"mian\"]\n");
    assert!(
        e.contains("`discard` names `mian`, which is not an output of synthesize"),
        "{e}"
    );
    let e = err_of("[stages.synthesize]\nfollow = [\"size\"]\n");
    assert!(
        e.contains("line 2, column 10")
            && e.contains("follow = [\"size\"]")
            && e.contains("expected a map"),
        "{e}"
    );
}

/// A training stage's `model` is a preset name or a checkpoint table; a bad table names the
/// field, anything else names both forms.
#[test]
fn bad_model_choice() {
    let stage = |model: &str| {
        format!(
            "[stages.synthesize]\n[stages.render]\ninputs = {{ puzzles = \"synthesize\" }}\n\
             [stages.distill_format]\ninputs = {{ puzzles = \"synthesize\", images = \"render\" }}\n\
             [stages.sft]\nstage = \"sft-train\"\ninputs = {{ data = \"distill_format\" }}\n\
             model = {model}\n"
        )
    };
    let e = err_of(&stage("{ hff = \"x\" }"));
    assert!(e.contains("unknown field `hff`, expected `hf`"), "{e}");
    let e = err_of(&stage("{ hf = 3 }"));
    assert!(
        e.contains("invalid type: integer `3`, expected path string"),
        "{e}"
    );
    let e = err_of(&stage("5"));
    assert!(
        e.contains("a model preset (\"tiny\", \"small\") or { hf = "),
        "{e}"
    );
}

/// Settings only one task has are refused for the other, naming both; a Sudoku size other than
/// 4 or 9 is refused when the pipeline is read.
#[test]
fn task_specific_settings_name_the_task() {
    let data = |synth: &str, verbosity: u8| {
        format!(
            "[stages.synthesize]\nsplits = {{ test = 2, sft = 2, rl = 0 }}\n{synth}\n\
             [stages.digits]\nsource = \"strokes\"\n\
             [stages.render]\ninputs = {{ puzzles = \"synthesize\", digits = \"digits\" }}\n\
             size = 64\n\
             [stages.distill_format]\ninputs = {{ puzzles = \"synthesize\", images = \"render\" }}\n\
             verbosity = {verbosity}\n"
        )
    };
    let e = err_of(&data("task = \"graph_coloring\"", 4));
    assert!(
        e.contains("verbosity 4") && e.contains("graph_coloring traces go up to 3"),
        "{e}"
    );
    let e = err_of(&data("task = \"sudoku\"", 5));
    assert!(e.contains("verbosity must be 0..=4"), "{e}");
    // The default 30 givens fill a 4×4 grid: said, not a grid of solved "puzzles".
    let e = err_of(&data("task = \"sudoku\"\nsudoku = { size = 4 }", 3));
    assert!(
        e.contains("sudoku.givens = 30 leaves no cell to fill on a 4×4 grid: use at most 15"),
        "{e}"
    );
    let e = err_of(&data("task = \"sudoku\"\nsudoku = { size = 5 }", 3));
    assert!(
        e.contains("sudoku size 5 is not supported: use 9 (3×3 boxes) or 4 (2×2 boxes)"),
        "{e}"
    );
}
