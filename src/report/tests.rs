use super::*;

mod paired;
use paired::{items, run};
mod rl;

fn src(id: &str, instance: &str) -> Source {
    Source {
        id: id.repeat(64 / id.len()),
        instance: instance.into(),
    }
}

fn est(mean: f64, half: f64) -> Estimate {
    Estimate {
        mean,
        lo: mean - half,
        hi: mean + half,
    }
}

fn acc(a: f64, a_p: f64, a_r: f64) -> Accuracies {
    Accuracies {
        a: est(a, 0.05),
        a_p: est(a_p, 0.05),
        a_r: est(a_r, 0.05),
        items: 128,
    }
}

fn curve(end: &Accuracies) -> Vec<CurvePoint> {
    [(-1, 0.5), (9, 1.0)]
        .iter()
        .map(|&(step, f)| CurvePoint {
            step,
            a: end.a.mean * f,
            a_p: end.a_p.mean * f,
            a_r: end.a_r.mean * f,
        })
        .collect()
}

fn rl(role: RlRole, id: &str, end: Accuracies, r_a_p: f64) -> RlResult {
    RlResult {
        curve: curve(&end),
        role,
        source: src(id, "rl"),
        log: src(&format!("{id}0"), "rl.log"),
        start: acc(0.2, 0.4, 0.5),
        end,
        r_a_p: Some(r_a_p),
        r_a_tilde_r: Some(0.9),
        rollouts: 640,
        held_out: None,
    }
}

fn pool(reward: &str, against: &str, r: f64) -> PoolR {
    PoolR {
        source: src("c", "correlate"),
        reward: reward.into(),
        against: against.into(),
        r: Some(r),
        lo: Some(r - 0.05),
        hi: Some(r + 0.05),
        n: 2560,
        mean: 0.5,
        own_a_p: None,
        unread: None,
    }
}

fn results() -> Results {
    let mix = crate::rl::coupling::mixture_name;
    let sft = vec![
        SftResult {
            role: SftRole::Standard,
            source: src("a", "eval_standard"),
            acc: acc(0.20, 0.40, 0.55),
            items: None,
            replicates: Vec::new(),
        },
        SftResult {
            role: SftRole::Lambda(0.2),
            source: src("b", "eval_lambda[lambda=0.2]"),
            acc: acc(0.25, 0.45, 0.55),
            items: None,
            replicates: Vec::new(),
        },
        SftResult {
            role: SftRole::Lambda(0.8),
            source: src("d", "eval_lambda[lambda=0.8]"),
            acc: acc(0.40, 0.65, 0.50),
            items: None,
            replicates: Vec::new(),
        },
        SftResult {
            role: SftRole::Ngdiff,
            source: src("e", "eval_ngdiff"),
            acc: acc(0.30, 0.50, 0.52),
            items: None,
            replicates: Vec::new(),
        },
    ];
    let sft_curves = vec![Curve {
        label: "standard".into(),
        source: src("f", "sft_standard.log"),
        points: curve(&sft[0].acc),
    }];
    Results {
        title: "test report".into(),
        sft,
        sft_curves,
        shares: vec![Shares {
            source: src("f", "sft_standard.log"),
            tokens: 0.08,
            loss: 0.2,
            grad: Some(0.15),
        }],
        rl: vec![
            rl(RlRole::Alpha(0.0), "1", acc(0.30, 0.50, 0.60), 0.6),
            rl(RlRole::Alpha(0.5), "2", acc(0.45, 0.70, 0.60), 0.9),
            rl(RlRole::Alpha(1.0), "3", acc(0.20, 0.75, 0.30), 1.0),
            rl(
                RlRole::Surrogate("self".into()),
                "4",
                acc(0.35, 0.55, 0.6),
                0.7,
            ),
            RlResult {
                r_a_p: None,
                ..rl(RlRole::TokenLambda(0.2), "5", acc(0.28, 0.52, 0.6), 0.0)
            },
        ],
        pool: vec![
            pool("outcome", "a_p", 0.59),
            pool("outcome", "a_tilde_r", 0.98),
            pool("clip", "a_p", 0.04),
            pool("self_1", "a_p", 0.63),
            pool("self_4", "a_p", 0.80),
            pool("teacher", "a_p", 0.98),
            // Each run's reward on the starting policy: 2·Δa_p + 0.3 for the runs above.
            pool(&mix(0.0, "ground_truth"), "a_p", 0.5),
            pool(&mix(0.5, "ground_truth"), "a_p", 0.9),
            pool(&mix(1.0, "ground_truth"), "a_p", 1.0),
            pool(&mix(0.5, "self_1"), "a_p", 0.6),
        ],
        pool_diffs: Vec::new(),
        rl_start: None,
        setup: Default::default(),
        // Validation a that chooses as the test a would: λ = 0.8 and α = 0.5.
        val_sft: vec![
            (
                SftRole::Lambda(0.2),
                est(0.2, 0.05),
                src("v", "val_eval_lambda"),
            ),
            (
                SftRole::Lambda(0.8),
                est(0.4, 0.05),
                src("v", "val_eval_lambda"),
            ),
            (SftRole::Ngdiff, est(0.3, 0.05), src("v", "val_eval_ngdiff")),
        ],
        val_rl: vec![
            (RlRole::Alpha(0.5), est(0.45, 0.05), src("w", "val_eval_rl")),
            (RlRole::Alpha(1.0), est(0.2, 0.05), src("w", "val_eval_rl")),
        ],
    }
}

/// Each table cell carries the number of the result it names and that result's artifact.
#[test]
fn tables_carry_each_number_with_its_source() {
    let r = results();
    let t = tables(&r);
    let keys: Vec<&str> = t.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "table1_sft",
            "table2_rl",
            "table3_perception_rewards",
            "table4_reward_correlations",
            "table5_shares"
        ]
    );
    let c = t[0].cell("λ = 0.8", "a").unwrap();
    let want = r.sft[2].acc.a;
    assert_eq!(
        (c.value, c.lo, c.hi),
        (Some(0.40), Some(want.lo), Some(want.hi))
    );
    assert_eq!(c.source, r.sft[2].source);
    let init = t[1].cell("initialization", "a_p").unwrap();
    assert_eq!(init.value, Some(0.4));
    let tl = t[1].cell("token λ = 0.2", "a").unwrap();
    assert_eq!((tl.value, &tl.source), (Some(0.28), &r.rl[4].source));
    let a1 = t[1].cell("α = 1", "a_r").unwrap();
    assert_eq!((a1.value, &a1.source), (Some(0.30), &r.rl[2].source));
    // Table 3: α = 0 and 0.5 and the surrogate run, not α = 1; r comes from the log.
    let (rows, _) = t[2].layout();
    assert_eq!(
        rows,
        [
            "outcome only (α = 0)",
            "ground truth (α = 0.5)",
            "self (α = 0.5)"
        ]
    );
    let rr = t[2].cell("self (α = 0.5)", "r(R, a_p)").unwrap();
    assert_eq!((rr.value, &rr.source), (Some(0.7), &r.rl[3].log));
    assert_eq!(
        t[3].cell("teacher", "r with a_p").unwrap().value,
        Some(0.98)
    );
    assert_eq!(
        cell_text(t[4].cell("sft_standard.log", "token share").unwrap()),
        "8.0 %"
    );
}

fn cell_text(c: &Cell) -> String {
    page::cell_text(c)
}

fn verdicts(r: &Results) -> Vec<Verdict> {
    findings(r).iter().map(|f| f.verdict).collect()
}

fn verdict(r: &Results, id: &str) -> Verdict {
    let all = findings(r);
    let f = all.iter().find(|f| f.id == id);
    f.unwrap_or_else(|| panic!("no finding `{id}`")).verdict
}

/// Each finding follows its numbers: flip the numbers and the verdict flips.
#[test]
fn findings_follow_the_numbers() {
    use Verdict::*;
    let r = results();
    let ids: Vec<&str> = findings(&r).iter().map(|f| f.id).collect();
    // The coupling on the starting policy, 0.5/0.9/1.0/0.6, against Δa_p 0.1/0.3/0.35/0.15
    // rises.
    let judged = [
        "sft-reweighting",
        "outcome-coupling",
        "reward-augmentation",
        "surrogate-order",
        "coupling-predicts-gain",
    ];
    for id in judged {
        assert_eq!(verdict(&r, id), Reproduced, "{id}");
    }
    // The share is a setting of the traces: described, never judged.
    assert_eq!(verdict(&r, "perception-share"), Measured);
    // Two λ runs make no frontier; no perception-only initialization was run.
    assert_eq!(verdict(&r, "lambda-frontier"), NotRun);
    assert_eq!(verdict(&r, "perception-init-tradeoff"), NotRun);
    // No evaluation of the start checkpoint.
    assert_eq!(verdict(&r, "sft-gains"), NotRun);
    // NGDiff against the best λ (0.40 ± 0.05), without per-item scores: intervals compared.
    let mut ng = r.clone();
    ng.sft[3].acc = acc(0.20, 0.5, 0.52);
    assert_eq!(verdict(&ng, "ngdiff-vs-lambda"), NotReproduced);
    ng.sft[3].acc = acc(0.37, 0.5, 0.52);
    assert_eq!(verdict(&ng, "ngdiff-vs-lambda"), Inconclusive);
    ng.sft[3].acc = acc(0.55, 0.5, 0.52);
    assert_eq!(verdict(&ng, "ngdiff-vs-lambda"), Reproduced);
    let mut worse = r.clone();
    worse.sft[2].acc = acc(0.05, 0.2, 0.2); // the best λ falls behind the standard run
    worse.sft[1].acc = acc(0.05, 0.2, 0.2);
    worse.sft[3].acc = acc(0.05, 0.2, 0.2);
    worse.shares[0].tokens = 0.45;
    worse.pool[1].r = Some(0.3); // outcome couples to reasoning less than to perception
    worse.pool[1].lo = Some(0.25);
    worse.pool[1].hi = Some(0.35);
    worse.pool[5] = pool("teacher", "a_p", 0.5); // teacher below self
    // α > 0 ends below α = 0, and the perception gains fall as the coupling rises.
    worse.rl[0].end = acc(0.30, 0.80, 0.6);
    worse.rl[1].end = acc(0.10, 0.50, 0.2);
    worse.rl[2].end = acc(0.10, 0.45, 0.2);
    worse.rl[3].end = acc(0.3, 0.70, 0.2);
    for id in judged {
        assert_eq!(verdict(&worse, id), NotReproduced, "{id}");
    }
    assert_eq!(verdict(&worse, "perception-share"), Measured);
    let mut close = r.clone();
    close.sft[2].acc = acc(0.22, 0.4, 0.5);
    close.sft[3].acc = acc(0.22, 0.4, 0.5);
    assert_eq!(verdict(&close, "sft-reweighting"), Inconclusive);
    // self (N = 4) within the interval of self (N = 1).
    close.pool[4] = pool("self_4", "a_p", 0.66);
    assert_eq!(verdict(&close, "surrogate-order"), Inconclusive);
    let order = findings(&r);
    let order = order.iter().find(|f| f.id == "surrogate-order").unwrap();
    // The outcome reward (0.59 ± 0.05) stands above CLIP and below self (N = 4) and teacher.
    assert!(
        order
            .evidence
            .contains("lies above clip and below self_4, teacher"),
        "{}",
        order.evidence
    );
    let empty = Results::default();
    assert!(verdicts(&empty).iter().all(|v| *v == NotRun));
    assert_eq!(ids.len(), 14);
}

/// Every figure decodes as a PNG of the stated size and is the same bytes when drawn again.
#[test]
fn figures_decode_and_are_deterministic() {
    let r = results();
    let f = figures::figures(&r).unwrap();
    let files: Vec<&str> = f.iter().map(|f| f.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "sft_curves.png",
            "rl_curves.png",
            "sft_frontier.png",
            "rl_frontier.png",
            "correlations.png",
            "coupling.png"
        ]
    );
    for fig in &f {
        let pm = tiny_skia::Pixmap::decode_png(&fig.png).unwrap();
        assert_eq!((pm.width(), pm.height()), (1000, 440), "{}", fig.file);
        // Not a blank canvas: some pixels are dark (axes, text).
        let dark = pm.pixels().iter().filter(|p| p.red() < 100).count();
        assert!(dark > 1000, "{}: {dark} dark pixels", fig.file);
    }
    let again = figures::figures(&r).unwrap();
    assert!(f.iter().zip(&again).all(|(a, b)| a.png == b.png));
}

/// The page holds every table, figure and source, and every number links to its artifact.
#[test]
fn page_links_every_number_to_its_artifact() {
    let r = results();
    let (t, f, fi) = (tables(&r), figures::figures(&r).unwrap(), findings(&r));
    let h = page::html(&r, &t, &f, &fi);
    for table in &t {
        assert!(h.contains(&format!("data-table=\"{}\"", table.key)));
        for c in &table.cells {
            let link = format!(
                "title=\"asymm show {}\">{}</a>",
                c.source.id,
                page::cell_text(c)
            );
            assert!(h.contains(&link), "{link}");
        }
    }
    assert_eq!(
        h.matches("<img src=\"data:image/png;base64,").count(),
        f.len()
    );
    for id in sources(&r).keys() {
        assert!(h.contains(&format!("<code>{id}</code>")));
    }
    let m = page::markdown(&r, &t, &f, &fi);
    assert!(m.contains("](sft_curves.png)") && m.contains("**reproduced**"));
}

#[test]
fn instance_labels_parse() {
    assert_eq!(page::base_name("eval_lambda[lambda=0.1]"), "eval_lambda");
    assert_eq!(
        page::params("rl[alpha=0.5]"),
        vec![("alpha".to_string(), "0.5".to_string())]
    );
    assert!(page::params("eval").is_empty());
    assert_eq!(
        page::params("rl[alpha=0.0].eval"),
        vec![("alpha".to_string(), "0.0".to_string())]
    );
}

/// A paired comparison r(second) − r(first) with interval [d − w, d + w].
fn diff(first: (&str, &str), second: (&str, &str), d: f64, w: f64) -> PoolDiff {
    PoolDiff {
        source: src("d", "correlate.differences"),
        first: (first.0.into(), first.1.into()),
        second: (second.0.into(), second.1.into()),
        diff: Some(d),
        lo: Some(d - w),
        hi: Some(d + w),
        n: 2560,
    }
}

/// The pool's findings decide by the paired differences where the pool has them — over
/// correlations whose own intervals overlap, so the unpaired rule would say inconclusive — and
/// a difference stored in the other order is read negated.
#[test]
fn pool_findings_decide_by_paired_differences() {
    use Verdict::*;
    let mut r = Results {
        pool: vec![
            pool("outcome", "a_p", 0.60),
            pool("outcome", "a_tilde_r", 0.62),
            pool("clip", "a_p", 0.55),
            pool("self_1", "a_p", 0.58),
            pool("self_4", "a_p", 0.61),
            pool("teacher", "a_p", 0.64),
        ],
        ..Results::default()
    };
    assert_eq!(verdict(&r, "outcome-coupling"), Inconclusive);
    assert_eq!(verdict(&r, "surrogate-order"), Inconclusive);
    // As correlate writes them: column order outcome, self_1, self_4, teacher, clip.
    let grid = |outcome: f64, steps: [f64; 3], w: f64| {
        vec![
            diff(("outcome", "a_p"), ("outcome", "a_tilde_r"), outcome, w),
            diff(("self_1", "a_p"), ("clip", "a_p"), -steps[0], w),
            diff(("self_1", "a_p"), ("self_4", "a_p"), steps[1], w),
            diff(("self_4", "a_p"), ("teacher", "a_p"), steps[2], w),
            diff(("outcome", "a_p"), ("clip", "a_p"), -0.05, w),
            diff(("outcome", "a_p"), ("self_1", "a_p"), -0.02, w),
            diff(("outcome", "a_p"), ("self_4", "a_p"), 0.01, w),
            diff(("outcome", "a_p"), ("teacher", "a_p"), 0.04, w),
        ]
    };
    r.pool_diffs = grid(0.02, [0.03, 0.03, 0.03], 0.01);
    assert_eq!(verdict(&r, "outcome-coupling"), Reproduced);
    assert_eq!(verdict(&r, "surrogate-order"), Reproduced);
    let f = findings(&r);
    let order = f.iter().find(|f| f.id == "surrogate-order").unwrap();
    assert!(
        order.evidence.contains("paired over the same rollouts")
            && order
                .evidence
                .contains("< (by +0.030 [+0.020, +0.040]) self_1")
            && order
                .evidence
                .contains("lies above clip, self_1 and below teacher"),
        "{}",
        order.evidence
    );
    assert!(
        order
            .sources
            .iter()
            .any(|s| s.instance == "correlate.differences")
    );
    assert!(!order.evidence.contains("own a_p"), "{}", order.evidence);
    let mut own = r.clone();
    own.pool.push(PoolR {
        mean: 0.55,
        ..pool("ground_truth", "a_p", 1.0)
    });
    own.pool[5].own_a_p = Some(0.83);
    let f = findings(&own);
    let order = f.iter().find(|f| f.id == "surrogate-order").unwrap();
    assert!(
        order
            .evidence
            .ends_with("; the teacher's own a_p on the pool's items is 0.830, the policy's 0.550"),
        "{}",
        order.evidence
    );
    // Self re-rollouts without an answer, which score 0 whatever the perception, are said.
    assert!(
        !order.evidence.contains("re-rollouts"),
        "{}",
        order.evidence
    );
    for p in own
        .pool
        .iter_mut()
        .filter(|p| p.reward.starts_with("self_"))
    {
        p.unread = Some(0.984);
    }
    let f = findings(&own);
    let order = f.iter().find(|f| f.id == "surrogate-order").unwrap();
    assert!(
        order
            .evidence
            .contains("; 98.4 % of the pool's self-reward re-rollouts (all N per perception) end"),
        "{}",
        order.evidence
    );
    r.pool_diffs = grid(-0.02, [0.03, -0.03, 0.03], 0.01);
    assert_eq!(verdict(&r, "outcome-coupling"), NotReproduced);
    assert_eq!(verdict(&r, "surrogate-order"), NotReproduced);
    r.pool_diffs = grid(0.02, [0.03, 0.03, 0.03], 0.05);
    assert_eq!(verdict(&r, "outcome-coupling"), Inconclusive);
    assert_eq!(verdict(&r, "surrogate-order"), Inconclusive);
}

/// The departures from the paper's setup come from the grid's own numbers, and an empty grid
/// has none.
#[test]
fn deviations_name_the_grids_numbers() {
    let mut r = results();
    r.val_sft.clear();
    r.val_rl.clear();
    r.pool[5].own_a_p = Some(0.42);
    let d = deviations(&r);
    let has = |s: &str| d.iter().any(|l| l.contains(s));
    assert!(has("evaluated on 128 test items"), "{d:?}");
    assert!(
        has("perception is 8.0 % of the SFT target tokens, 20.0 % of the loss"),
        "{d:?}"
    );
    assert!(has("whose own a_p on the pool is 0.420"), "{d:?}");
    assert!(
        has("the best λ and the best α chosen on the test items"),
        "{d:?}"
    );
    assert!(has("dual encoder"), "{d:?}");
    assert!(!has("blank image"), "{d:?}");
    for p in r.pool.iter_mut().filter(|p| p.reward.starts_with("self_")) {
        p.unread = Some(0.5);
    }
    assert!(
        deviations(&r).iter().any(|l| l.contains("blank image")
            && l.contains("50.0 % of them end without a readable reasoning segment")),
        "{:?}",
        deviations(&r)
    );
    assert!(deviations(&Results::default()).is_empty());
    // With every λ run evaluated on the validation split, only α is left chosen on test.
    for (role, a) in [(SftRole::Lambda(0.2), 0.3), (SftRole::Lambda(0.8), 0.2)] {
        r.val_sft
            .push((role, est(a, 0.05), src("v", "val_eval_lambda")));
    }
    let d = deviations(&r);
    assert!(
        d.iter()
            .any(|l| l.contains("the best α chosen on the test items")),
        "{d:?}"
    );
}
