//! Paired comparisons over test items: per-item runs, replicated seeds, each finding's three
//! outcomes, and the runs chosen on the validation split.

use super::*;

/// Per-item scores of 100 items: the first `a`, `a_p`, `a_r` items right.
pub(super) fn items(a: usize, a_p: usize, a_r: usize) -> ItemAccuracies {
    let first = |k: usize| -> ItemScores {
        (0..100)
            .map(|i| (format!("item{i:03}"), f64::from(u8::from(i < k))))
            .collect()
    };
    ItemAccuracies {
        a: first(a),
        a_p: first(a_p),
        a_r: first(a_r),
    }
}

pub(super) fn run(role: SftRole, item: ItemAccuracies) -> SftResult {
    let mean = |s: &ItemScores| s.values().sum::<f64>() / s.len() as f64;
    SftResult {
        role,
        source: src("p", "eval"),
        // Wide intervals: the unpaired rule would call every comparison inconclusive.
        acc: Accuracies {
            a: est(mean(&item.a), 0.3),
            a_p: est(mean(&item.a_p), 0.3),
            a_r: est(mean(&item.a_r), 0.3),
            items: 100,
        },
        items: Some(item),
        replicates: Vec::new(),
    }
}

/// A grid whose λ frontier and NGDiff are given per item.
fn paired_grid(lambdas: [(usize, usize, usize); 3], ngdiff_a: usize) -> Results {
    let mut sft = vec![run(SftRole::Standard, items(20, 30, 60))];
    for (l, (a, p, q)) in [0.1, 0.5, 0.9].into_iter().zip(lambdas) {
        sft.push(run(SftRole::Lambda(l), items(a, p, q)));
    }
    sft.push(run(SftRole::Ngdiff, items(ngdiff_a, 50, 60)));
    for (l, (p, q)) in [(0.1, (20, 70)), (0.9, (80, 40))] {
        sft.push(run(SftRole::PerceptionInitLambda(l), items(30, p, q)));
    }
    Results {
        sft,
        ..Results::default()
    }
}

/// A run replicated over seeds: the seeds' item scores merged.
fn replicated(role: SftRole, seeds: &[(u64, ItemAccuracies)]) -> SftResult {
    let reps = seeds
        .iter()
        .map(|(seed, items)| {
            let one = run(role, items.clone());
            crate::report::Replicate {
                seed: *seed,
                acc: one.acc,
                items: items.clone(),
                source: src(&format!("r{seed}"), &format!("eval[seed={seed}]")),
            }
        })
        .collect();
    let h = crate::report::replicates::merge("eval", reps).unwrap();
    SftResult {
        role,
        source: h.source,
        acc: h.acc,
        items: h.items,
        replicates: h.replicates,
    }
}

/// With a run replicated over seeds, a comparison is decided only when every seed's
/// difference lies on the side the items' interval decides: the λ frontier's peak (λ = 0.5,
/// a = 0.5 merged, against 0.3 at the ends) is reproduced when both seeds peak and
/// inconclusive when one seed does not.
#[test]
fn replicated_runs_decide_only_when_the_seeds_agree() {
    use Verdict::*;
    let grid = |seeds: [(u64, usize); 2]| {
        let mut g = paired_grid([(30, 20, 70), (50, 50, 60), (30, 80, 40)], 70);
        let seeds: Vec<(u64, ItemAccuracies)> =
            seeds.iter().map(|(s, a)| (*s, items(*a, 50, 60))).collect();
        g.sft[2] = replicated(SftRole::Lambda(0.5), &seeds);
        // The validation split chooses λ = 0.5 as the peak.
        g.val_sft = [(0.1, 0.3), (0.5, 0.5), (0.9, 0.3)]
            .into_iter()
            .map(|(l, a)| (SftRole::Lambda(l), est(a, 0.05), src("v", "val")))
            .collect();
        g
    };
    let agree = grid([(1, 60), (2, 40)]);
    assert_eq!(verdict(&agree, "lambda-frontier"), Reproduced);
    let f = findings(&agree);
    let line = &f
        .iter()
        .find(|f| f.id == "lambda-frontier")
        .unwrap()
        .evidence;
    assert!(
        line.contains("seed by seed +0.300 (seed 1), +0.100 (seed 2)"),
        "{line}"
    );
    let split = grid([(1, 80), (2, 20)]);
    assert_eq!(verdict(&split, "lambda-frontier"), Inconclusive);
    let f = findings(&split);
    let line = &f
        .iter()
        .find(|f| f.id == "lambda-frontier")
        .unwrap()
        .evidence;
    assert!(line.contains("the seeds disagree, so undecided"), "{line}");
}

/// The findings decided by paired per-item intervals.
const PAIRED_FINDINGS: [&str; 5] = [
    "sft-gains",
    "sft-reweighting",
    "lambda-frontier",
    "ngdiff-vs-lambda",
    "perception-init-tradeoff",
];

/// The SFT findings decide by the paired per-item interval: each rule says reproduced, not
/// reproduced and inconclusive on constructed inputs.
#[test]
fn paired_findings_say_each_outcome() {
    use Verdict::*;
    // λ = 0.1, 0.5, 0.9: a_p 20 → 80 items, a_r 70 → 40, a peaks at 0.5 (50 against 30).
    let mut good = paired_grid([(30, 20, 70), (50, 50, 60), (30, 80, 40)], 70);
    // From the start to the standard run a_r gains 40 items, a_p 5.
    good.sft.push(run(SftRole::Start, items(5, 25, 20)));
    // The validation split chooses as the test items would.
    good.val_sft = [(0.1, 0.3), (0.5, 0.5), (0.9, 0.3)]
        .into_iter()
        .map(|(l, a)| (SftRole::Lambda(l), est(a, 0.05), src("v", "val")))
        .chain([(SftRole::Ngdiff, est(0.7, 0.05), src("v", "val"))])
        .collect();
    for id in PAIRED_FINDINGS {
        assert_eq!(verdict(&good, id), Reproduced, "{id}");
    }
    let f = findings(&good);
    let frontier = f.iter().find(|f| f.id == "lambda-frontier").unwrap();
    assert!(
        frontier.evidence.contains("(paired)"),
        "{}",
        frontier.evidence
    );
    assert!(frontier.evidence.contains("detectable"));
    // The three λ runs and the validation evaluation that chose the peak.
    assert_eq!(frontier.sources.len(), 4);

    // a_p falls with λ, NGDiff below the best λ, a below the standard run everywhere.
    let mut bad = paired_grid([(10, 60, 70), (15, 50, 60), (10, 20, 40)], 5);
    bad.sft[0] = run(SftRole::Standard, items(40, 30, 60));
    bad.sft[6] = run(SftRole::PerceptionInitLambda(0.9), items(30, 5, 40));
    // a_p gains 30 items, a_r none.
    bad.sft.push(run(SftRole::Start, items(5, 0, 60)));
    for id in PAIRED_FINDINGS {
        assert_eq!(verdict(&bad, id), NotReproduced, "{id}");
    }

    // The peak is two items above the ends, NGDiff one item above the best λ, the standard
    // run two below: nothing decided.
    let mut close = paired_grid([(30, 20, 70), (32, 50, 60), (30, 80, 40)], 33);
    close.sft[0] = run(SftRole::Standard, items(31, 30, 60));
    close.sft[6] = run(SftRole::PerceptionInitLambda(0.9), items(30, 21, 40));
    // One item gains perception, another reasoning.
    close.sft.push(run(SftRole::Start, items(5, 29, 59)));
    for id in PAIRED_FINDINGS {
        assert_eq!(verdict(&close, id), Inconclusive, "{id}");
    }
}

/// The best λ, the best reweighted run and the best α are chosen on the validation split when
/// every candidate has an evaluation there, and reported on the test items: a validation
/// split that prefers another run changes which run the test comparison reads.
#[test]
fn best_runs_are_chosen_on_the_validation_split() {
    use Verdict::*;
    // On test, λ = 0.5 peaks (50 of 100 against the standard run's 20); λ = 0.9 has 30.
    let mut g = paired_grid([(30, 20, 70), (50, 50, 60), (30, 80, 40)], 10);
    // Chosen on the test items it is compared on: at most inconclusive.
    assert_eq!(verdict(&g, "sft-reweighting"), Inconclusive);
    let f = findings(&g);
    let rw = f.iter().find(|f| f.id == "sft-reweighting").unwrap();
    assert!(
        rw.evidence.contains("at most inconclusive"),
        "{}",
        rw.evidence
    );
    // The same numbers with the choice made on the validation split: reproduced.
    let mut v = g.clone();
    v.val_sft = vec![
        (SftRole::Lambda(0.1), est(0.3, 0.05), src("v", "val")),
        (SftRole::Lambda(0.5), est(0.5, 0.05), src("v", "val")),
        (SftRole::Lambda(0.9), est(0.3, 0.05), src("v", "val")),
        (SftRole::Ngdiff, est(0.1, 0.05), src("v", "val")),
    ];
    assert_eq!(verdict(&v, "sft-reweighting"), Reproduced);
    let val = |l: f64, a: f64| {
        (
            SftRole::Lambda(l),
            est(a, 0.05),
            src("v", "val_eval_lambda"),
        )
    };
    // The validation split prefers λ = 0.1 (which ties the standard run on test: 20 against
    // 20 after setting it so), over λ = 0.5 and 0.9.
    g.sft[1] = run(SftRole::Lambda(0.1), items(20, 20, 70));
    g.val_sft = vec![val(0.1, 0.6), val(0.5, 0.3), val(0.9, 0.2)];
    g.val_sft
        .push((SftRole::Ngdiff, est(0.1, 0.05), src("v", "val_eval_ngdiff")));
    let f = findings(&g);
    let rw = f.iter().find(|f| f.id == "sft-reweighting").unwrap();
    assert_eq!(rw.verdict, Inconclusive, "{}", rw.evidence);
    assert!(
        rw.evidence.contains("λ = 0.1 − standard"),
        "{}",
        rw.evidence
    );
    assert!(
        rw.evidence
            .contains("chosen on the validation split (a = 0.600 there)"),
        "{}",
        rw.evidence
    );
    assert!(rw.sources.iter().any(|s| s.instance == "val_eval_lambda"));
    // Without NGDiff's validation evaluation the reweighted run is chosen on test again.
    g.val_sft.pop();
    let f = findings(&g);
    let rw = f.iter().find(|f| f.id == "sft-reweighting").unwrap();
    assert!(
        rw.evidence.contains("on the same test items"),
        "{}",
        rw.evidence
    );
    // α: the validation split prefers α = 1 over α = 0.5, which leads on test.
    let mut r = results();
    assert_eq!(r.best_alpha().unwrap().0.role, RlRole::Alpha(0.5));
    r.val_rl = vec![
        (RlRole::Alpha(0.5), est(0.2, 0.05), src("w", "val_eval_rl")),
        (RlRole::Alpha(1.0), est(0.4, 0.05), src("w", "val_eval_rl")),
    ];
    let (top, how) = r.best_alpha().unwrap();
    assert_eq!(top.role, RlRole::Alpha(1.0));
    assert!(matches!(how, Selection::Validation(a, _) if a == 0.4));
    let f = findings(&r);
    let aug = f.iter().find(|f| f.id == "reward-augmentation").unwrap();
    assert!(aug.evidence.contains("a: α = 1 "), "{}", aug.evidence);
    assert!(
        aug.evidence.contains("validation split"),
        "{}",
        aug.evidence
    );
}
