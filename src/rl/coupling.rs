//! How each reward couples to perception and to reasoning over a pool of rollouts: Pearson r
//! between every reward column of the scored rows (the outcome, the ground-truth perception
//! reward, the self-rewards with N = 1 and N, the teacher reward, the CLIP reward, the final
//! reward) and a_p and ã_r, with a 95 % bootstrap interval that resamples items (the samples of
//! one item are not independent). The paper's Figure 8 and Table 3.

use super::reward::RewardRow;
use crate::analysis::{BootstrapR, pearson_cluster_bootstrap};
use std::collections::BTreeMap;

/// One row of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationRow {
    pub reward: String,
    pub against: &'static str,
    pub n: usize,
    pub items: usize,
    pub mean_reward: f64,
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

/// Every reward column against a_p and ã_r.
pub fn correlate(rows: &[RewardRow], reps: usize, seed: u64) -> Vec<CorrelationRow> {
    let mut out = Vec::new();
    let targets: [Target; 2] = [("a_p", |r| bit(r.a_p)), ("a_tilde_r", |r| bit(r.a_tilde_r))];
    for (name, get) in reward_columns(rows) {
        for (against, target) in targets {
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
            let key = blake3::hash(format!("{name}/{against}").as_bytes());
            let sub = u64::from_le_bytes(key.as_bytes()[..8].try_into().unwrap_or([0; 8]));
            out.push(CorrelationRow {
                reward: name.clone(),
                against,
                n,
                items,
                mean_reward: sum / n.max(1) as f64,
                stats: pearson_cluster_bootstrap(&clusters, reps, seed ^ sub),
            });
        }
    }
    out
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
            self_n: 0,
            teacher,
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
        let t = correlate(&rows, 200, 1);
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
        for r in &t {
            let (lo, hi) = r.stats.ci.unwrap();
            assert!(
                lo <= r.stats.r.unwrap() + 1e-9 && r.stats.r.unwrap() <= hi + 1e-9,
                "{r:?}"
            );
        }
    }
}
