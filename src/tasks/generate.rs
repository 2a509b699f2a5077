//! Puzzle generation for the splits of an experiment: attempt `a` of a task is a pure function
//! of (seed, task, a); attempts are deduplicated by canonical perception text in attempt order
//! (so no puzzle is in two splits, whatever the thread count), then dealt to the splits.
//!
//! Splits are drawn from one distribution: deduplication favours small puzzles among the first
//! attempts (they are the ones that repeat later), so the unique puzzles are shuffled by a keyed
//! permutation and then dealt to the splits stratified by size (node count for graph coloring,
//! number of givens for Sudoku), each stratum in proportion to the split sizes.

use super::graph_coloring::GcGen;
use super::sudoku::SudokuGen;
use super::{GenConfig, Puzzle, TaskKind};
use crate::util::rng::keyed;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Why the puzzles cannot be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "only {found} unique puzzles after {attempts} attempts: the generator's space is too \
         small for {wanted}"
    )]
    TooFewUnique {
        found: usize,
        attempts: u64,
        wanted: usize,
    },
    #[error("a puzzle generation thread panicked")]
    Thread,
}

/// Split sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Splits {
    pub test: usize,
    pub sft: usize,
    pub rl: usize,
    /// Validation items, on which a grid chooses its best λ and α apart from the test items
    /// it reports on (0: none). They are the puzzles generated after the other splits', so
    /// adding them leaves the test, sft and rl puzzles as they were.
    #[serde(skip_serializing_if = "is_zero")]
    pub val: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for Splits {
    fn default() -> Self {
        Splits {
            test: 500,
            sft: 2000,
            rl: 16000,
            val: 0,
        }
    }
}

impl Splits {
    pub fn total(&self) -> usize {
        self.test + self.sft + self.rl + self.val
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesizeConfig {
    pub task: TaskKind,
    pub splits: Splits,
    pub graph: GcGen,
    pub sudoku: SudokuGen,
}

impl Default for SynthesizeConfig {
    fn default() -> Self {
        SynthesizeConfig {
            task: TaskKind::GraphColoring,
            splits: Splits::default(),
            graph: GcGen::default(),
            sudoku: SudokuGen::default(),
        }
    }
}

/// Generates the puzzle for attempt number `attempt` (pure function of its arguments).
pub fn generate(cfg: &SynthesizeConfig, seed: u64, attempt: u64) -> Puzzle {
    let mut rng = keyed(seed, cfg.task.name(), attempt, 0);
    let gen_cfg = GenConfig {
        graph: cfg.graph,
        sudoku: cfg.sudoku,
    };
    cfg.task.task().generate(&mut rng, &gen_cfg)
}

/// Deals `puzzles` to the splits `(name, size)` (sizes summing to the puzzle count): a keyed
/// shuffle, then, stratum by stratum, each next puzzle goes to the split furthest below its
/// proportional share (largest-deficit rounding), so every stratum is split in proportion and
/// the totals are exact. Returns the puzzles grouped by split, in the order of `splits`.
pub fn assign_splits<'a>(
    puzzles: Vec<Puzzle>,
    splits: &[(&'a str, usize)],
    seed: u64,
) -> Vec<(&'a str, Puzzle)> {
    let total = puzzles.len();
    let mut order: Vec<usize> = (0..total).collect();
    order.shuffle(&mut keyed(seed, "synthesize/split", 0, 0));
    // Stable sort by stratum keeps the shuffled order within each stratum.
    order.sort_by_key(|&i| puzzles[i].stratum());
    let mut given = vec![0usize; splits.len()];
    let mut dest = vec![0usize; total];
    for (k, &i) in order.iter().enumerate() {
        let due = |s: usize| (k + 1) as f64 * splits[s].1 as f64 / total.max(1) as f64;
        let s = (0..splits.len())
            .filter(|&s| given[s] < splits[s].1)
            .max_by(|&a, &b| {
                (due(a) - given[a] as f64)
                    .total_cmp(&(due(b) - given[b] as f64))
                    .then(b.cmp(&a))
            })
            .unwrap_or(0);
        given[s] += 1;
        dest[i] = s;
    }
    let mut slots: Vec<Option<Puzzle>> = puzzles.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(total);
    // Within a split, puzzles keep the shuffled order.
    let mut shuffled: Vec<usize> = (0..total).collect();
    shuffled.shuffle(&mut keyed(seed, "synthesize/order", 0, 0));
    for (s, (name, _)) in splits.iter().enumerate() {
        for &i in &shuffled {
            if dest[i] == s
                && let Some(p) = slots[i].take()
            {
                out.push((*name, p));
            }
        }
    }
    out
}

/// Generates `total` unique puzzles; attempts are computed in parallel chunks and deduplicated in
/// attempt order, so the result does not depend on the thread count.
pub fn generate_unique(
    cfg: &SynthesizeConfig,
    seed: u64,
    total: usize,
) -> Result<Vec<Puzzle>, GenerateError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = 64 * threads as u64;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(total);
    let mut next = 0u64;
    let max_attempts = (total as u64).saturating_mul(50).max(10_000);
    while out.len() < total {
        if next > max_attempts {
            return Err(GenerateError::TooFewUnique {
                found: out.len(),
                attempts: next,
                wanted: total,
            });
        }
        let base = next;
        let batch: Vec<Puzzle> = std::thread::scope(|s| -> Result<Vec<Puzzle>, GenerateError> {
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    s.spawn(move || {
                        (base + t..base + chunk)
                            .step_by(threads)
                            .map(|a| (a, generate(cfg, seed, a)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all: Vec<(u64, Puzzle)> = Vec::with_capacity(chunk as usize);
            for h in handles {
                all.extend(h.join().map_err(|_| GenerateError::Thread)?);
            }
            all.sort_by_key(|(a, _)| *a);
            Ok(all.into_iter().map(|(_, p)| p).collect())
        })?;
        next += chunk;
        for p in batch {
            if out.len() < total && seen.insert(p.perception.clone()) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// The puzzles of every split, each with its split's name: test, sft and rl dealt by stratum
/// ([`assign_splits`]), then the validation split, the puzzles generated after theirs (so a
/// validation split leaves the others as they were).
pub fn deal(
    cfg: &SynthesizeConfig,
    seed: u64,
) -> Result<Vec<(&'static str, Puzzle)>, GenerateError> {
    let mut puzzles = generate_unique(cfg, seed, cfg.splits.total())?;
    let val = puzzles.split_off(puzzles.len() - cfg.splits.val);
    let s = &cfg.splits;
    let mut dealt = assign_splits(
        puzzles,
        &[("test", s.test), ("sft", s.sft), ("rl", s.rl)],
        seed,
    );
    dealt.extend(val.into_iter().map(|p| ("val", p)));
    Ok(dealt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A validation split adds puzzles no other split has and changes none of theirs.
    #[test]
    fn a_validation_split_leaves_the_others_as_they_were() {
        let mut cfg = SynthesizeConfig {
            splits: Splits {
                test: 12,
                sft: 30,
                rl: 8,
                val: 0,
            },
            ..SynthesizeConfig::default()
        };
        let before = deal(&cfg, 5).unwrap();
        cfg.splits.val = 10;
        let after = deal(&cfg, 5).unwrap();
        assert_eq!(after.len(), before.len() + 10);
        let key = |v: &[(&str, Puzzle)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(s, p)| (s.to_string(), p.perception.clone()))
                .collect()
        };
        assert_eq!(key(&after[..before.len()]), key(&before));
        let val: Vec<&Puzzle> = after[before.len()..].iter().map(|x| &x.1).collect();
        assert!(after[before.len()..].iter().all(|x| x.0 == "val"));
        assert!(
            val.iter()
                .all(|p| before.iter().all(|b| b.1.perception != p.perception))
        );
    }

    /// Total variation distance between the stratum distributions of two splits.
    fn tv(dealt: &[(&str, Puzzle)], a: &str, b: &str) -> f64 {
        let dist = |name: &str| {
            let mut m: BTreeMap<i32, f64> = BTreeMap::new();
            let rows: Vec<_> = dealt.iter().filter(|(s, _)| *s == name).collect();
            for (_, p) in &rows {
                *m.entry(p.stratum()).or_default() += 1.0 / rows.len() as f64;
            }
            m
        };
        let (da, db) = (dist(a), dist(b));
        let keys: std::collections::BTreeSet<i32> = da.keys().chain(db.keys()).copied().collect();
        keys.iter()
            .map(|k| (da.get(k).unwrap_or(&0.0) - db.get(k).unwrap_or(&0.0)).abs())
            .sum::<f64>()
            / 2.0
    }

    fn dealt(cfg: &SynthesizeConfig, n: usize) -> Vec<(&'static str, Puzzle)> {
        let puzzles = generate_unique(cfg, 3, 2 * n).unwrap();
        assert_eq!(puzzles.len(), 2 * n);
        assert_splits(assign_splits(puzzles, &[("test", n), ("sft", n)], 3), n)
    }

    fn assert_splits(d: Vec<(&'static str, Puzzle)>, n: usize) -> Vec<(&'static str, Puzzle)> {
        assert_eq!(d.iter().filter(|(s, _)| *s == "test").count(), n);
        assert_eq!(d.iter().filter(|(s, _)| *s == "sft").count(), n);
        d
    }

    #[test]
    fn graph_splits_share_one_node_count_distribution() {
        let cfg = SynthesizeConfig {
            graph: GcGen {
                min_nodes: 5,
                max_nodes: 6,
                edge_prob: 0.35,
            },
            ..SynthesizeConfig::default()
        };
        let d = dealt(&cfg, 2000);
        let t = tv(&d, "test", "sft");
        assert!(t <= 0.05, "node-count TV between test and sft = {t}");
    }

    #[test]
    fn sudoku_splits_share_one_givens_distribution() {
        let cfg = SynthesizeConfig {
            task: TaskKind::Sudoku,
            ..SynthesizeConfig::default()
        };
        let d = dealt(&cfg, 2000);
        let t = tv(&d, "test", "sft");
        assert!(t <= 0.05, "givens TV between test and sft = {t}");
    }

    #[test]
    fn uneven_splits_get_exact_sizes() {
        let cfg = SynthesizeConfig::default();
        let puzzles = generate_unique(&cfg, 1, 107).unwrap();
        let d = assign_splits(puzzles, &[("test", 10), ("sft", 0), ("rl", 97)], 1);
        assert_eq!(d.iter().filter(|(s, _)| *s == "test").count(), 10);
        assert_eq!(d.iter().filter(|(s, _)| *s == "rl").count(), 97);
        let names: Vec<&str> = d.iter().map(|(s, _)| *s).collect();
        assert!(
            names
                .windows(2)
                .all(|w| w[0] == w[1] || (w[0] == "test" && w[1] == "rl"))
        );
    }
}
