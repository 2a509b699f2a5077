//! Runs replicated over seeds (`sweep = { seed = [1, 2, 3] }`): one evaluation per seed,
//! merged into the run's evaluation for the paired comparisons, and kept for their spread.
//!
//! Rule: an item's score is the mean over the seeds of its per-seed score (each seed's samples
//! averaged first), so a paired comparison still has the items as its units and reads the
//! seeds as repeated measurements of each item; the accuracies are means over items with a
//! bootstrap interval over items. Each comparison also prints its difference seed by seed, and
//! a decided comparison needs every seed's difference on its side: the items' interval leaves
//! the seeds' own variation out, so seeds that disagree in sign leave it undecided.

use super::{
    Accuracies, Estimate, HeldOut, ItemAccuracies, ItemScores, ReportError, Result, Source,
};
use crate::analysis::paired::PairedDiff;
use std::collections::{BTreeMap, BTreeSet};

/// One seed's evaluation of a replicated run.
#[derive(Debug, Clone, PartialEq)]
pub struct Replicate {
    pub seed: u64,
    pub acc: Accuracies,
    pub items: ItemAccuracies,
    pub source: Source,
}

/// The seed of every bootstrap here (the report is deterministic).
const SEED: u64 = 0;

/// Per item, the mean of the scores the replicates give it.
fn mean_over(scores: &[&ItemScores]) -> ItemScores {
    let mut sums: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for s in scores {
        for (item, v) in s.iter() {
            let e = sums.entry(item.as_str()).or_default();
            e.0 += v;
            e.1 += 1.0;
        }
    }
    sums.into_iter()
        .map(|(item, (sum, n))| (item.to_string(), sum / n))
        .collect()
}

/// The mean of per-item scores with its bootstrap interval over items (NaN without items).
fn estimate(scores: &ItemScores) -> Estimate {
    let v: Vec<f64> = scores.values().copied().collect();
    match PairedDiff::of(&v, SEED) {
        Some(d) => Estimate {
            mean: d.mean,
            lo: d.lo,
            hi: d.hi,
        },
        None => Estimate {
            mean: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        },
    }
}

/// One evaluation of a run from its replicates (at least two, with distinct seeds, over the
/// same test items); `run` names it in errors.
pub fn merge(run: &str, mut reps: Vec<Replicate>) -> Result<HeldOut> {
    reps.sort_by_key(|r| r.seed);
    let Some(first) = reps.first() else {
        return Err(ReportError::Invalid(format!(
            "report: `{run}` has no replicate"
        )));
    };
    if let Some(w) = reps.windows(2).find(|w| w[0].seed == w[1].seed) {
        return Err(ReportError::Invalid(format!(
            "report: `{run}` has two evaluations with seed {} (`{}` and `{}`)",
            w[0].seed, w[0].source.instance, w[1].source.instance
        )));
    }
    // The same items for every accuracy (a counterfactual rollout missing for one seed would
    // otherwise average a_r over fewer seeds).
    let keys = |r: &Replicate| {
        [&r.items.a, &r.items.a_p, &r.items.a_r]
            .map(|s| s.keys().cloned().collect::<BTreeSet<String>>())
    };
    let want = keys(first);
    if let Some(other) = reps.iter().find(|r| keys(r) != want) {
        return Err(ReportError::Invalid(format!(
            "report: the replicates of `{run}` are not evaluated on the same items (`{}` and \
             `{}` differ); evaluate every seed on one split",
            first.source.instance, other.source.instance
        )));
    }
    let merged = |f: fn(&ItemAccuracies) -> &ItemScores| {
        mean_over(&reps.iter().map(|r| f(&r.items)).collect::<Vec<_>>())
    };
    let items = ItemAccuracies {
        a: merged(|i| &i.a),
        a_p: merged(|i| &i.a_p),
        a_r: merged(|i| &i.a_r),
    };
    let acc = Accuracies {
        a: estimate(&items.a),
        a_p: estimate(&items.a_p),
        a_r: estimate(&items.a_r),
        items: items.a.len() as u64,
    };
    Ok(HeldOut {
        source: first.source.clone(),
        acc,
        items: Some(items),
        replicates: reps,
    })
}

/// `x − y` seed by seed (seed, mean paired difference): replicates paired by seed, a side
/// without replicates read as the same run for every seed; empty unless a side is replicated.
pub fn per_seed(
    x: (&[Replicate], Option<&ItemAccuracies>),
    y: (&[Replicate], Option<&ItemAccuracies>),
    scores: impl Fn(&ItemAccuracies) -> &ItemScores,
) -> Vec<(u64, f64)> {
    if x.0.is_empty() && y.0.is_empty() {
        return Vec::new();
    }
    let seeds: BTreeSet<u64> = x.0.iter().chain(y.0).map(|r| r.seed).collect();
    let side = |(reps, whole): (&[Replicate], Option<&ItemAccuracies>), seed: u64| {
        if reps.is_empty() {
            whole.cloned()
        } else {
            reps.iter()
                .find(|r| r.seed == seed)
                .map(|r| r.items.clone())
        }
    };
    seeds
        .into_iter()
        .filter_map(|s| {
            let (xi, yi) = (side(x, s)?, side(y, s)?);
            let d = PairedDiff::between(scores(&xi), scores(&yi), SEED)?;
            Some((s, d.mean))
        })
        .collect()
}

/// "+0.050 (seed 1), +0.080 (seed 2)".
pub fn describe(diffs: &[(u64, f64)]) -> String {
    diffs
        .iter()
        .map(|(s, d)| format!("{d:+.3} (seed {s})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(v: &[f64]) -> ItemScores {
        v.iter()
            .enumerate()
            .map(|(i, x)| (format!("i{i}"), *x))
            .collect()
    }

    fn rep(seed: u64, a: &[f64]) -> Replicate {
        let items = ItemAccuracies {
            a: scores(a),
            a_p: scores(a),
            a_r: scores(a),
        };
        let e = Estimate {
            mean: 0.0,
            lo: 0.0,
            hi: 0.0,
        };
        Replicate {
            seed,
            acc: Accuracies {
                a: e,
                a_p: e,
                a_r: e,
                items: a.len() as u64,
            },
            items,
            source: Source {
                id: format!("id{seed}"),
                instance: format!("eval[seed={seed}]"),
            },
        }
    }

    /// Items are averaged over seeds; the accuracies are the items' mean; seeds must differ and
    /// cover the same items.
    #[test]
    fn replicates_average_each_item_over_seeds() {
        let m = merge(
            "eval",
            vec![rep(2, &[1.0, 0.0, 1.0, 0.0]), rep(1, &[1.0, 1.0, 0.0, 0.0])],
        )
        .unwrap();
        let items = m.items.as_ref().unwrap();
        assert_eq!(items.a, scores(&[1.0, 0.5, 0.5, 0.0]));
        assert!((m.acc.a.mean - 0.5).abs() < 1e-12);
        assert!(m.acc.a.lo <= 0.5 && m.acc.a.hi >= 0.5 && m.acc.a.lo < m.acc.a.hi);
        assert_eq!(m.acc.items, 4);
        assert_eq!(
            m.replicates.iter().map(|r| r.seed).collect::<Vec<_>>(),
            [1, 2]
        );
        let e = merge("eval", vec![rep(1, &[1.0]), rep(1, &[0.0])]).unwrap_err();
        assert!(e.to_string().contains("two evaluations with seed 1"), "{e}");
        let e = merge("eval", vec![rep(1, &[1.0]), rep(2, &[0.0, 1.0])]).unwrap_err();
        assert!(
            e.to_string().contains("not evaluated on the same items"),
            "{e}"
        );
    }

    /// The per-seed differences pair replicates by seed; an unreplicated side is read for
    /// every seed.
    #[test]
    fn per_seed_differences_pair_by_seed() {
        let x = [rep(1, &[1.0, 1.0]), rep(2, &[1.0, 0.0])];
        let y = [rep(1, &[0.0, 0.0]), rep(2, &[1.0, 1.0])];
        let got = per_seed((&x, None), (&y, None), |i| &i.a);
        assert_eq!(describe(&got), "+1.000 (seed 1), -0.500 (seed 2)");
        let start = rep(9, &[0.0, 1.0]).items;
        let got = per_seed((&x, None), (&[], Some(&start)), |i| &i.a);
        assert_eq!(describe(&got), "+0.500 (seed 1), +0.000 (seed 2)");
        assert!(per_seed((&[], Some(&start)), (&[], Some(&start)), |i| &i.a).is_empty());
    }
}
