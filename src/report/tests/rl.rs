//! The RL findings on constructed per-item evaluations.

use super::*;

/// An RL run whose final policy's held-out evaluation keeps per-item scores.
fn rl_items(role: RlRole, item: ItemAccuracies) -> RlResult {
    let e = run(SftRole::Standard, item);
    RlResult {
        held_out: Some(HeldOut {
            source: src("q", "eval_rl"),
            acc: e.acc,
            items: e.items,
            replicates: Vec::new(),
        }),
        ..rl(role, "9", acc(0.0, 0.0, 0.0), 0.5)
    }
}

/// The RL part of a grid, given per item (a, a_p, a_r correct items of 100) for the start,
/// α = 0 / 0.5 / 1, the self and teacher runs and token λ = 0.2 / 0.8; the pool holds each
/// run's reward on the starting policy with the couplings 0.3, 0.7, 1.0, 0.35, 0.8.
fn rl_grid(start: (usize, usize, usize), runs: [(usize, usize, usize); 7]) -> Results {
    let roles = [
        RlRole::Alpha(0.0),
        RlRole::Alpha(0.5),
        RlRole::Alpha(1.0),
        RlRole::Surrogate("self".into()),
        RlRole::Surrogate("teacher".into()),
        RlRole::TokenLambda(0.2),
        RlRole::TokenLambda(0.8),
    ];
    let rl = roles
        .into_iter()
        .zip(runs)
        .map(|(role, (a, p, q))| rl_items(role, items(a, p, q)))
        .collect();
    let s = run(SftRole::Start, items(start.0, start.1, start.2));
    let mix = crate::rl::coupling::mixture_name;
    // The validation split chooses the best α as the test items would.
    let val_rl = [(0.5, runs[1].0), (1.0, runs[2].0)]
        .into_iter()
        .map(|(a, k)| {
            (
                RlRole::Alpha(a),
                est(k as f64 / 100.0, 0.05),
                src("w", "val"),
            )
        })
        .collect();
    Results {
        rl,
        val_rl,
        rl_start: Some(HeldOut {
            source: src("s", "eval_rl_start"),
            acc: s.acc,
            items: s.items,
            replicates: Vec::new(),
        }),
        pool: vec![
            pool(&mix(0.0, "ground_truth"), "a_p", 0.3),
            pool(&mix(0.5, "ground_truth"), "a_p", 0.7),
            pool(&mix(1.0, "ground_truth"), "a_p", 1.0),
            pool(&mix(0.5, "self_1"), "a_p", 0.35),
            pool(&mix(0.5, "teacher"), "a_p", 0.8),
            pool("self_1", "a_p", 0.3),
            pool("teacher", "a_p", 0.9),
        ],
        ..Results::default()
    }
}

/// The RL findings decided by paired per-item intervals (and, for the coupling, by the Fisher
/// interval of the across-run correlation).
const RL_FINDINGS: [&str; 6] = [
    "rl-gains",
    "alpha-frontier",
    "reward-augmentation",
    "surrogate-rl",
    "rl-token-reweighting",
    "coupling-predicts-gain",
];

/// Each RL rule says reproduced, not reproduced and inconclusive on constructed per-item
/// evaluations.
#[test]
fn rl_findings_say_each_outcome() {
    use Verdict::*;
    let start = (10, 40, 20);
    // From the start, α = 0 gains 40 items of a_r and 5 of a_p; a_p rises (45 → 80) and a_r
    // falls (60 → 40) with α, α = 0.5 leads end to end; the teacher (r 0.9) out-perceives self
    // (0.3) and beats α = 0; token λ = 0.8 loses a and a_p; Δa_p 5, 20, 40, 7, 30 rises with
    // the coupling.
    let good = rl_grid(
        start,
        [
            (30, 45, 60),
            (45, 60, 55),
            (35, 80, 40),
            (28, 47, 58),
            (45, 70, 58),
            (29, 44, 58),
            (15, 30, 50),
        ],
    );
    for id in RL_FINDINGS {
        assert_eq!(verdict(&good, id), Reproduced, "{id}");
    }
    // A smaller token λ that raises a_p (44 → 60 items) contradicts "no λ improves".
    let mut raised = good.clone();
    raised.rl[5] = rl_items(RlRole::TokenLambda(0.2), items(29, 60, 58));
    assert_eq!(verdict(&raised, "rl-token-reweighting"), NotReproduced);
    // One surrogate run: the ordering is untested, so at most inconclusive.
    let mut one = good.clone();
    one.rl.remove(3);
    assert_eq!(verdict(&one, "surrogate-rl"), Inconclusive);
    let f = findings(&good);
    let gains = f.iter().find(|f| f.id == "rl-gains").unwrap();
    assert!(gains.evidence.contains("(paired)"), "{}", gains.evidence);
    let k = f.iter().find(|f| f.id == "coupling-predicts-gain").unwrap();
    assert!(k.evidence.contains("over 5 runs"), "{}", k.evidence);
    assert!(k.evidence.contains("Fisher z"), "{}", k.evidence);

    // α = 0 gains perception only; a_p falls with α; every α > 0 below α = 0; the teacher
    // perceives worse than self; token λ = 0.8 raises a; Δa_p falls as the coupling rises.
    let bad = rl_grid(
        start,
        [
            (12, 70, 20),
            (5, 50, 40),
            (3, 30, 70),
            (20, 60, 30),
            (5, 40, 20),
            (10, 60, 20),
            (40, 80, 60),
        ],
    );
    for id in RL_FINDINGS {
        assert_eq!(verdict(&bad, id), NotReproduced, "{id}");
    }

    // Every difference one item: nothing decided; Δa_p 1, 0, 1, 0, 1 barely follows the
    // coupling.
    let close = rl_grid(
        start,
        [
            (11, 41, 21),
            (12, 40, 21),
            (11, 41, 20),
            (11, 40, 21),
            (12, 41, 21),
            (11, 41, 21),
            (10, 40, 21),
        ],
    );
    for id in RL_FINDINGS {
        assert_eq!(verdict(&close, id), Inconclusive, "{id}");
    }

    // Without the starting policy's coupling the on-policy r is shown, never decisive.
    let mut after = good.clone();
    after.pool.retain(|p| !p.reward.starts_with("alpha="));
    let k = findings(&after);
    let k = k.iter().find(|f| f.id == "coupling-predicts-gain").unwrap();
    assert_eq!(k.verdict, Inconclusive);
    assert!(k.evidence.contains("on-policy"), "{}", k.evidence);
}
