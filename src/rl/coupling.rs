//! How each reward couples to perception and to reasoning over a pool of rollouts: Pearson r
//! between every reward column of the scored rows (the outcome, the ground-truth perception
//! reward, the self-rewards with N = 1 and N, the teacher reward, the CLIP reward, the final
//! reward) and a_p and ã_r, with a 95 % bootstrap interval that resamples items (the samples of
//! one item are not independent). The paper's Figure 8 and Table 3.
//!
//! Beside each r, [`differences`] compares two correlations over the same rollouts, paired
//! (both on the same resample of items): each reward's r with ã_r against its r with a_p (does
//! it couple to reasoning more than to perception?), and every two rewards' r with a_p (which
//! tracks perception better?).

use super::reward::RewardRow;
use super::{Result, RlError};
use crate::analysis::{
    BootstrapDiff, BootstrapR, pearson_cluster_bootstrap, pearson_difference_cluster_bootstrap,
};
use std::collections::BTreeMap;

/// One row of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationRow {
    pub reward: String,
    pub against: &'static str,
    pub n: usize,
    pub items: usize,
    pub mean_reward: f64,
    /// The reward's own transcription accuracy over the pool's items, where it has one (the
    /// teacher: the share of items whose teacher transcription equals p*).
    pub own_a_p: Option<f64>,
    /// For the self rewards: the share of their re-rollouts without a readable answer (each
    /// scored 0), over the rows where the self-reward re-rolled.
    pub unread: Option<f64>,
    pub stats: BootstrapR,
}

type Getter = Box<dyn Fn(&RewardRow) -> Option<f64>>;

/// A correctness target: its name and its value on a row.
type Target = (&'static str, fn(&RewardRow) -> f64);

fn bit(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// The reward columns present in `rows` (a surrogate only where it was computed).
fn reward_columns(rows: &[RewardRow]) -> Vec<(String, Getter)> {
    let mut out: Vec<(String, Getter)> = vec![
        ("outcome".into(), Box::new(|r: &RewardRow| Some(bit(r.a)))),
        (
            "ground_truth".into(),
            Box::new(|r: &RewardRow| Some(bit(r.a_p))),
        ),
    ];
    if rows.iter().any(|r| r.self_first.is_some()) {
        out.push(("self_1".into(), Box::new(|r: &RewardRow| r.self_first)));
        let n = rows.iter().map(|r| r.self_n).max().unwrap_or(0);
        if n > 1 {
            out.push((format!("self_{n}"), Box::new(|r: &RewardRow| r.self_mean)));
        }
    }
    if rows.iter().any(|r| r.teacher.is_some()) {
        out.push(("teacher".into(), Box::new(|r: &RewardRow| r.teacher)));
    }
    if rows.iter().any(|r| r.clip.is_some()) {
        out.push(("clip".into(), Box::new(|r: &RewardRow| r.clip)));
    }
    out.push(("reward".into(), Box::new(|r: &RewardRow| Some(r.reward))));
    out
}

/// An RL run's reward composed from a pool's columns: α·`perception` + (1 − α)·outcome, the
/// reward R = α·a_p + (1 − α)·a of a run with that perception reward (`ground_truth`,
/// `self_1`, `self_N`, `teacher`, `clip`). Over the starting policy's rollouts its r with a_p
/// is the run's coupling measured before training (the paper's Figure 11).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mixture {
    pub alpha: f64,
    pub perception: String,
}

/// The reward column a mixture is written as: `alpha=0.2:ground_truth`.
pub fn mixture_name(alpha: f64, perception: &str) -> String {
    format!("alpha={alpha}:{perception}")
}

/// The mixtures as reward columns, each checked to name a column of the pool.
fn mixture_columns(rows: &[RewardRow], mixtures: &[Mixture]) -> Result<Vec<(String, Getter)>> {
    let mut out: Vec<(String, Getter)> = Vec::new();
    for m in mixtures {
        if !(0.0..=1.0).contains(&m.alpha) {
            return Err(RlError::Invalid(format!(
                "mixture alpha {} is outside [0, 1]",
                m.alpha
            )));
        }
        let Some((_, get)) = reward_columns(rows)
            .into_iter()
            .find(|(name, _)| *name == m.perception && name != "outcome" && name != "reward")
        else {
            let names: Vec<String> = reward_columns(rows)
                .into_iter()
                .map(|c| c.0)
                .filter(|n| n != "outcome" && n != "reward")
                .collect();
            return Err(RlError::Invalid(format!(
                "mixture perception `{}` is not a reward of this pool (it has {})",
                m.perception,
                names.join(", ")
            )));
        };
        let alpha = m.alpha;
        out.push((
            mixture_name(alpha, &m.perception),
            Box::new(move |r: &RewardRow| Some(alpha * get(r)? + (1.0 - alpha) * bit(r.a))),
        ));
    }
    Ok(out)
}

const TARGETS: [Target; 2] = [("a_p", |r| bit(r.a_p)), ("a_tilde_r", |r| bit(r.a_tilde_r))];

/// A bootstrap's sub-seed for one named statistic, so that every row has its own stream.
fn sub_seed(seed: u64, name: &str) -> u64 {
    let key = blake3::hash(name.as_bytes());
    seed ^ u64::from_le_bytes(key.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// The share of the pool's items whose teacher transcription equals p* (`None` without one).
fn teacher_a_p(rows: &[RewardRow]) -> Option<f64> {
    let per_item: BTreeMap<&str, f64> = rows
        .iter()
        .filter_map(|r| Some((r.id.as_str(), r.teacher_a_p?)))
        .collect();
    (!per_item.is_empty()).then(|| per_item.values().sum::<f64>() / per_item.len() as f64)
}

/// The share of the self-reward's re-rollouts without a readable answer over the rows that were
/// re-rolled (`None` without any).
fn self_unread(rows: &[RewardRow]) -> Option<f64> {
    let v: Vec<f64> = rows.iter().filter_map(|r| r.self_unread).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Every reward column, then every mixture, against a_p and ã_r.
pub fn correlate(
    rows: &[RewardRow],
    mixtures: &[Mixture],
    reps: usize,
    seed: u64,
) -> Result<Vec<CorrelationRow>> {
    let mut out = Vec::new();
    let teacher_own = teacher_a_p(rows);
    let unread = self_unread(rows);
    let mut columns = reward_columns(rows);
    columns.extend(mixture_columns(rows, mixtures)?);
    for (name, get) in columns {
        for (against, target) in TARGETS {
            let mut clusters: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
            let mut sum = 0.0;
            let mut n = 0;
            for r in rows {
                if let Some(v) = get(r) {
                    clusters
                        .entry(r.id.as_str())
                        .or_default()
                        .push((v, target(r)));
                    sum += v;
                    n += 1;
                }
            }
            let items = clusters.len();
            let clusters: Vec<Vec<(f64, f64)>> = clusters.into_values().collect();
            out.push(CorrelationRow {
                reward: name.clone(),
                against,
                n,
                items,
                mean_reward: sum / n.max(1) as f64,
                own_a_p: if name == "teacher" { teacher_own } else { None },
                unread: if name.starts_with("self_") {
                    unread
                } else {
                    None
                },
                stats: pearson_cluster_bootstrap(
                    &clusters,
                    reps,
                    sub_seed(seed, &format!("{name}/{against}")),
                ),
            });
        }
    }
    Ok(out)
}

/// One correlation: a reward column and what it is correlated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub reward: String,
    pub against: &'static str,
}

/// A paired comparison of two correlations over the rollouts where both rewards were computed:
/// `stats.diff` = r(second) − r(first).
#[derive(Debug, Clone, PartialEq)]
pub struct DifferenceRow {
    pub first: Side,
    pub second: Side,
    pub n: usize,
    pub items: usize,
    pub stats: BootstrapDiff,
}

/// The paired comparisons: for each reward, r with ã_r against r with a_p; then, for every two
/// rewards (in column order), the later one's r with a_p against the earlier one's.
pub fn differences(rows: &[RewardRow], reps: usize, seed: u64) -> Vec<DifferenceRow> {
    let columns = reward_columns(rows);
    let (p, r) = (TARGETS[0], TARGETS[1]);
    let mut pairs: Vec<((usize, Target), (usize, Target))> =
        (0..columns.len()).map(|i| ((i, p), (i, r))).collect();
    for i in 0..columns.len() {
        for j in i + 1..columns.len() {
            pairs.push(((i, p), (j, p)));
        }
    }
    pairs
        .into_iter()
        .map(|((i, (a1, t1)), (j, (a2, t2)))| {
            let (g1, g2) = (&columns[i].1, &columns[j].1);
            let mut clusters: BTreeMap<&str, Vec<[f64; 4]>> = BTreeMap::new();
            let mut n = 0;
            for row in rows {
                if let (Some(x1), Some(x2)) = (g1(row), g2(row)) {
                    clusters
                        .entry(row.id.as_str())
                        .or_default()
                        .push([x1, t1(row), x2, t2(row)]);
                    n += 1;
                }
            }
            let items = clusters.len();
            let clusters: Vec<Vec<[f64; 4]>> = clusters.into_values().collect();
            let (first, second) = (
                Side {
                    reward: columns[i].0.clone(),
                    against: a1,
                },
                Side {
                    reward: columns[j].0.clone(),
                    against: a2,
                },
            );
            let name = format!(
                "{}/{} vs {}/{}",
                first.reward, first.against, second.reward, second.against
            );
            DifferenceRow {
                stats: pearson_difference_cluster_bootstrap(&clusters, reps, sub_seed(seed, &name)),
                first,
                second,
                n,
                items,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, a: bool, a_p: bool, a_tr: bool, teacher: Option<f64>) -> RewardRow {
        RewardRow {
            id: id.into(),
            sample: 0,
            task: "graph_coloring".into(),
            a,
            a_p,
            a_tilde_r: a_tr,
            self_first: None,
            self_mean: None,
            self_unread: None,
            self_n: 0,
            teacher,
            teacher_a_p: None,
            clip: None,
            reward: f64::from(u8::from(a)),
        }
    }

    #[test]
    fn every_reward_against_perception_and_reasoning() {
        // a = a_p ∧ ã_r on every row; the teacher agrees with a_p.
        let mut rows = Vec::new();
        for i in 0..40 {
            let (p, r) = (i % 2 == 0, i % 3 != 0);
            rows.push(row(&format!("g{}", i / 2), p && r, p, r, Some(bit(p))));
        }
        let t = correlate(&rows, &[], 200, 1).unwrap();
        let names: Vec<(&str, &str)> = t.iter().map(|r| (r.reward.as_str(), r.against)).collect();
        assert_eq!(
            names,
            [
                ("outcome", "a_p"),
                ("outcome", "a_tilde_r"),
                ("ground_truth", "a_p"),
                ("ground_truth", "a_tilde_r"),
                ("teacher", "a_p"),
                ("teacher", "a_tilde_r"),
                ("reward", "a_p"),
                ("reward", "a_tilde_r"),
            ]
        );
        let get = |n: &str, a: &str| {
            t.iter()
                .find(|r| r.reward == n && r.against == a)
                .and_then(|r| r.stats.r)
                .unwrap()
        };
        assert!((get("ground_truth", "a_p") - 1.0).abs() < 1e-12);
        assert!((get("teacher", "a_p") - 1.0).abs() < 1e-12);
        let (x, y): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (bit(r.a), bit(r.a_p))).unzip();
        assert_eq!(
            get("outcome", "a_p"),
            crate::analysis::pearson(&x, &y).unwrap()
        );
        assert!(t.iter().all(|r| r.n == 40 && r.items == 20));
        assert!(t.iter().all(|r| r.own_a_p.is_none()));
        // The teacher's own a_p: over items, each counted once however many rollouts it has.
        let mut own = rows.clone();
        for r in own.iter_mut() {
            r.teacher_a_p = Some(f64::from(u8::from(r.id == "g0" || r.id == "g1")));
        }
        let t2 = correlate(&own, &[], 10, 1).unwrap();
        let teacher = t2.iter().find(|r| r.reward == "teacher").unwrap();
        assert_eq!(teacher.own_a_p, Some(2.0 / 20.0));
        assert!(
            t2.iter()
                .filter(|r| r.reward != "teacher")
                .all(|r| r.own_a_p.is_none())
        );
        for r in &t {
            let (lo, hi) = r.stats.ci.unwrap();
            assert!(
                lo <= r.stats.r.unwrap() + 1e-9 && r.stats.r.unwrap() <= hi + 1e-9,
                "{r:?}"
            );
        }
    }

    /// Each reward's ã_r-against-a_p comparison, then every two rewards' a_p correlations;
    /// each difference equals the two correlations' difference, and the outcome's coupling to
    /// reasoning minus its coupling to perception is decided where the data say so.
    #[test]
    fn differences_pair_correlations_over_the_same_rollouts() {
        // a = a_p ∧ ã_r with ã_r right far more often than a_p: the outcome tracks a_p more
        // closely (a is 0 whenever a_p is); the teacher is a_p with one item flipped.
        let mut rows = Vec::new();
        for i in 0..120 {
            let (p, r) = (i % 4 == 0, i % 7 != 0);
            let t = if i / 2 == 3 { !p } else { p };
            rows.push(row(&format!("g{}", i / 2), p && r, p, r, Some(bit(t))));
        }
        let t = correlate(&rows, &[], 500, 1).unwrap();
        let d = differences(&rows, 500, 1);
        let names: Vec<String> = d
            .iter()
            .map(|x| {
                format!(
                    "{}/{}-{}/{}",
                    x.first.reward, x.first.against, x.second.reward, x.second.against
                )
            })
            .collect();
        assert_eq!(
            names[..5],
            [
                "outcome/a_p-outcome/a_tilde_r",
                "ground_truth/a_p-ground_truth/a_tilde_r",
                "teacher/a_p-teacher/a_tilde_r",
                "reward/a_p-reward/a_tilde_r",
                "outcome/a_p-ground_truth/a_p",
            ]
        );
        assert_eq!(d.len(), 4 + 6);
        let r = |n: &str, a: &str| {
            t.iter()
                .find(|x| x.reward == n && x.against == a)
                .and_then(|x| x.stats.r)
                .unwrap()
        };
        let outcome = &d[0];
        assert!(
            (outcome.stats.diff.unwrap() - (r("outcome", "a_tilde_r") - r("outcome", "a_p"))).abs()
                < 1e-12
        );
        assert!(outcome.stats.ci.unwrap().1 < 0.0, "{outcome:?}");
        let teacher = d
            .iter()
            .find(|x| x.first.reward == "ground_truth" && x.second.reward == "teacher")
            .unwrap();
        assert!(
            (teacher.stats.diff.unwrap() - (r("teacher", "a_p") - r("ground_truth", "a_p"))).abs()
                < 1e-12
        );
        assert!(d.iter().all(|x| x.n == 120 && x.items == 60));
    }

    /// A mixture is the run's reward on the pool: α·perception + (1 − α)·outcome, its r the
    /// Pearson r of that composed column; a mixture of a reward the pool lacks is an error
    /// naming the pool's rewards.
    #[test]
    fn mixtures_compose_a_runs_reward_on_the_pool() {
        let mut rows = Vec::new();
        for i in 0..60 {
            let (p, r) = (i % 3 != 0, i % 5 != 0);
            let t = if i % 11 == 0 { 0.5 } else { bit(p) };
            rows.push(row(&format!("g{}", i / 2), p && r, p, r, Some(t)));
        }
        let mix = |alpha: f64, perception: &str| Mixture {
            alpha,
            perception: perception.into(),
        };
        let t = correlate(
            &rows,
            &[mix(0.2, "ground_truth"), mix(0.5, "teacher")],
            100,
            1,
        )
        .unwrap();
        let get = |n: &str| {
            t.iter()
                .find(|r| r.reward == n && r.against == "a_p")
                .unwrap_or_else(|| panic!("no {n}"))
        };
        for (name, alpha, comp) in [
            ("alpha=0.2:ground_truth", 0.2, None),
            ("alpha=0.5:teacher", 0.5, Some(())),
        ] {
            let x: Vec<f64> = rows
                .iter()
                .map(|r| {
                    let p = if comp.is_some() {
                        r.teacher.unwrap()
                    } else {
                        bit(r.a_p)
                    };
                    alpha * p + (1.0 - alpha) * bit(r.a)
                })
                .collect();
            let y: Vec<f64> = rows.iter().map(|r| bit(r.a_p)).collect();
            let want = crate::analysis::pearson(&x, &y).unwrap();
            assert!((get(name).stats.r.unwrap() - want).abs() < 1e-12, "{name}");
            let mean = x.iter().sum::<f64>() / x.len() as f64;
            assert!((get(name).mean_reward - mean).abs() < 1e-12);
        }
        // Mixing in perception raises the coupling above the outcome's.
        assert!(get("alpha=0.2:ground_truth").stats.r > get("outcome").stats.r);
        let err = correlate(&rows, &[mix(0.5, "clip")], 10, 1).unwrap_err();
        assert!(err.to_string().contains("`clip`"), "{err}");
        assert!(err.to_string().contains("ground_truth, teacher"), "{err}");
        assert!(correlate(&rows, &[mix(1.5, "teacher")], 10, 1).is_err());
    }
}
