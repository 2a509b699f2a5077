//! The data suite: puzzle generation, rendering and target-length statistics on one core.

use super::*;
use asymm::tasks::sudoku::{Side, SudokuGen};

pub(super) fn data_suite(a: &BenchArgs, rows_out: &mut Vec<Row>) -> String {
    let n = a.items.max(10);
    let mut rows = Vec::new();
    let gc = SynthesizeConfig::default();
    let sd = SynthesizeConfig {
        task: TaskKind::Sudoku,
        ..SynthesizeConfig::default()
    };
    rows.push(Row {
        what: "graph coloring generation (exact chromatic number)".into(),
        rate: per_sec(n, |i| {
            std::hint::black_box(generate(&gc, 1, i as u64));
        }),
        unit: "puzzles/s",
        target: "",
    });
    let sd_n = (n / 2).max(10);
    rows.push(Row {
        what: "sudoku generation (unique solution, 30 givens)".into(),
        rate: per_sec(sd_n, |i| {
            std::hint::black_box(generate(&sd, 1, i as u64));
        }),
        unit: "puzzles/s",
        target: "≥ 1,000",
    });
    let gcs: Vec<String> = (0..n)
        .map(|i| generate(&gc, 2, i as u64).perception)
        .collect();
    let sds: Vec<String> = (0..sd_n)
        .map(|i| generate(&sd, 2, i as u64).perception)
        .collect();
    let bank = DigitBank::strokes(50, 0);
    for size in [128u32, 224] {
        let cfg = RenderConfig {
            size,
            ..RenderConfig::default()
        };
        rows.push(Row {
            what: format!("graph coloring render + PNG, {size}×{size}"),
            rate: per_sec(n, |i| {
                let img = render_one(TaskKind::GraphColoring, "x", &gcs[i], &cfg, None, 1);
                std::hint::black_box(img.map(|g| g.to_png()).ok());
            }),
            unit: "images/s",
            target: if size == 224 { "≥ 2,000" } else { "" },
        });
    }
    let cfg = RenderConfig {
        size: 252,
        ..RenderConfig::default()
    };
    rows.push(Row {
        what: "sudoku render + PNG, 252×252".into(),
        rate: per_sec(sd_n, |i| {
            let img = render_one(TaskKind::Sudoku, "x", &sds[i], &cfg, Some(&bank), 1);
            std::hint::black_box(img.map(|g| g.to_png()).ok());
        }),
        unit: "images/s",
        target: "",
    });
    // The two halves of the row above, to show where the time goes.
    let drawn: Vec<_> = (0..sd_n.min(200))
        .filter_map(|i| render_one(TaskKind::Sudoku, "x", &sds[i], &cfg, Some(&bank), 1).ok())
        .collect();
    rows.push(Row {
        what: "sudoku render only (no PNG), 252×252".into(),
        rate: per_sec(sd_n, |i| {
            let img = render_one(TaskKind::Sudoku, "x", &sds[i], &cfg, Some(&bank), 1);
            std::hint::black_box(img.ok());
        }),
        unit: "images/s",
        target: "",
    });
    if !drawn.is_empty() {
        rows.push(Row {
            what: "grayscale PNG encoding only, 252×252".into(),
            rate: per_sec(sd_n, |i| {
                std::hint::black_box(drawn[i % drawn.len()].to_png());
            }),
            unit: "images/s",
            target: "",
        });
    }
    let mut out = String::from("| measurement (one core) | rate | target |\n|---|---:|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.0} {} | {} |\n",
            r.what, r.rate, r.unit, r.target
        ));
    }
    out.push_str(&perception_share(&[
        (
            "graph coloring, 7–9 nodes",
            TaskKind::GraphColoring,
            &gcs[..200.min(gcs.len())],
        ),
        (
            "sudoku, 30 givens",
            TaskKind::Sudoku,
            &sds[..200.min(sds.len())],
        ),
    ]));
    *rows_out = rows;
    out
}

/// Perception's share of SFT target tokens per set of puzzles (a label, its task, the
/// puzzles' p*) and teacher verbosity: the mean target length, the mean perception length
/// (through `</perception>`) and the share, tokens summed over the puzzles.
pub(super) fn perception_share(sets: &[(&str, TaskKind, &[String])]) -> String {
    use asymm::text::format::encode;
    let tok = asymm::text::Tokenizer::task_vocabulary();
    let mut out = String::from(
        "\n| puzzles | verbosity | mean target tokens | mean perception tokens | perception share of target tokens |\n|---|---:|---:|---:|---:|\n",
    );
    for (label, task, items) in sets {
        // Verbosity 4 (the grid after every placement) is Sudoku's.
        let top = if *task == TaskKind::Sudoku { 4 } else { 3 };
        for v in 0..=top {
            let (mut p, mut total, mut n) = (0usize, 0usize, 0usize);
            for perception in *items {
                let Some(r) = task.task().trace(perception, v) else {
                    continue;
                };
                let e = encode(&tok, task.prompt(), perception, &r);
                p += (e.spans[0].2 - e.spans[0].1) as usize;
                total += e.target_ids.len();
                n += 1;
            }
            let n = n.max(1);
            out.push_str(&format!(
                "| {label} | {v} | {} | {} | {:.1} % |\n",
                total / n,
                p / n,
                100.0 * p as f64 / total.max(1) as f64
            ));
        }
    }
    out
}

/// The `shares` suite: perception's share of SFT target tokens for graph coloring and for
/// Sudoku from 30 to 75 givens (fewer givens, longer traces) and 4×4 Sudoku, at every verbosity — where a
/// regime with the paper's imbalance (2–3 % of tokens) can be found, and at what length.
pub(super) fn share_suite(a: &BenchArgs) -> String {
    let n = a.items.clamp(10, 200) as u64;
    let gc = SynthesizeConfig::default();
    let gcs: Vec<String> = (0..n).map(|i| generate(&gc, 2, i).perception).collect();
    let mut sets: Vec<(String, TaskKind, Vec<String>)> = vec![(
        "graph coloring, 7–9 nodes".into(),
        TaskKind::GraphColoring,
        gcs,
    )];
    let (nine, four) = (Side::NINE, Side::FOUR);
    for (size, givens) in [30, 40, 50, 55, 60, 75]
        .map(|g| (nine, g))
        .into_iter()
        .chain([4, 6, 8].map(|g| (four, g)))
    {
        let cfg = SynthesizeConfig {
            task: TaskKind::Sudoku,
            sudoku: SudokuGen { givens, size },
            ..SynthesizeConfig::default()
        };
        let sds = (0..n).map(|i| generate(&cfg, 2, i).perception).collect();
        let label = if size == four {
            format!("sudoku 4×4, {givens} givens")
        } else {
            format!("sudoku, {givens} givens")
        };
        sets.push((label, TaskKind::Sudoku, sds));
    }
    let refs: Vec<(&str, TaskKind, &[String])> = sets
        .iter()
        .map(|(l, t, v)| (l.as_str(), *t, v.as_slice()))
        .collect();
    format!(
        "Perception's share of SFT target tokens ({n} puzzles a row, the task vocabulary)\n{}",
        perception_share(&refs)
    )
}
