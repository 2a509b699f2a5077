//! Paired comparisons of variants evaluated on the same items: the per-item difference, its
//! 95 % percentile-bootstrap interval (items resampled with replacement, so an item's samples
//! stay together), and the smallest difference that many items could detect.
//!
//! A comparison is decided only by its interval: it supports a claimed direction when the
//! interval excludes 0 on that side, contradicts it when it excludes 0 on the other side, and
//! is undecided otherwise, with the minimum detectable effect printed beside it.

use rand::RngExt;
use std::collections::BTreeMap;

/// Standard normal quantiles: two-sided 5 % level and 80 % power.
const Z_975: f64 = 1.959_963_984_540_054;
const Z_80: f64 = 0.841_621_233_572_914_3;

/// Bootstrap replicates of every paired interval.
pub const REPS: usize = 2000;

/// A score per item: the mean over the item's samples (each 0 or 1 for an accuracy).
pub type ItemScores = BTreeMap<String, f64>;

/// The mean per item of `(item, value)` rows (several rows of one item are its samples).
pub fn item_means<'a>(rows: impl IntoIterator<Item = (&'a str, f64)>) -> ItemScores {
    let mut acc: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (id, v) in rows {
        let e = acc.entry(id.to_string()).or_insert((0.0, 0));
        e.0 += v;
        e.1 += 1;
    }
    acc.into_iter()
        .map(|(id, (s, n))| (id, s / n as f64))
        .collect()
}

/// The per-item values `f(x_i, y_i)` over the items both `x` and `y` score, in item order.
pub fn pair_with(x: &ItemScores, y: &ItemScores, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    x.iter()
        .filter_map(|(id, a)| y.get(id).map(|b| f(*a, *b)))
        .collect()
}

/// The mean of per-item differences with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedDiff {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// Items paired.
    pub n: usize,
    /// Standard deviation of the per-item differences.
    pub sd: f64,
}

/// What an interval says about a claimed direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The interval excludes 0 in the claimed direction.
    Supports,
    /// The interval excludes 0 in the other direction.
    Contradicts,
    /// The interval contains 0.
    Undecided,
}

/// The direction a claim predicts for a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Positive,
    Negative,
}

impl PairedDiff {
    /// The bootstrap interval of the mean of `diffs` (one value per item); `None` without items.
    /// Deterministic for a given `seed`.
    pub fn of(diffs: &[f64], seed: u64) -> Option<PairedDiff> {
        let n = diffs.len();
        if n == 0 {
            return None;
        }
        let mean = diffs.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let mut rng = crate::util::rng::keyed(seed, "analysis/paired-bootstrap", n as u64, 0);
        let mut means: Vec<f64> = (0..REPS)
            .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
            .collect();
        means.sort_by(f64::total_cmp);
        let q = |p: f64| means[((p * (REPS - 1) as f64).round() as usize).min(REPS - 1)];
        Some(PairedDiff {
            mean,
            lo: q(0.025),
            hi: q(0.975),
            n,
            sd,
        })
    }

    /// The paired difference `x − y` over the items both score.
    pub fn between(x: &ItemScores, y: &ItemScores, seed: u64) -> Option<PairedDiff> {
        Self::of(&pair_with(x, y, |a, b| a - b), seed)
    }

    /// What the interval says of a claim that the difference has sign `dir`.
    pub fn side(&self, dir: Direction) -> Side {
        let (above, below) = (self.lo > 0.0, self.hi < 0.0);
        match (dir, above, below) {
            (Direction::Positive, true, _) | (Direction::Negative, _, true) => Side::Supports,
            (Direction::Positive, _, true) | (Direction::Negative, true, _) => Side::Contradicts,
            _ => Side::Undecided,
        }
    }

    /// The smallest true difference this many items detect at the 5 % level with 80 % power,
    /// (z₀.₉₇₅ + z₀.₈)·sd/√n. When no item differs the observed sd is 0; the sd of one item
    /// differing by 1 (≈ 1/√n) is used instead, so the effect is never reported as 0.
    pub fn min_detectable(&self) -> f64 {
        let n = self.n.max(1) as f64;
        (Z_975 + Z_80) * self.sd.max(1.0 / n.sqrt()) / n.sqrt()
    }

    /// "+0.062 [+0.016, +0.109], n = 128 (detectable ≥ 0.065)".
    pub fn describe(&self) -> String {
        format!(
            "{:+.3} [{:+.3}, {:+.3}], n = {} (detectable ≥ {:.3})",
            self.mean,
            self.lo,
            self.hi,
            self.n,
            self.min_detectable()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(v: &[f64]) -> ItemScores {
        v.iter()
            .enumerate()
            .map(|(i, x)| (format!("item{i:03}"), *x))
            .collect()
    }

    #[test]
    fn item_means_average_the_samples_of_each_item() {
        let m = item_means([("a", 1.0), ("b", 0.0), ("a", 0.0), ("a", 1.0)]);
        assert_eq!(m.len(), 2);
        assert!((m["a"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m["b"], 0.0);
    }

    #[test]
    fn a_consistent_gain_supports_and_its_reverse_contradicts() {
        // 40 of 100 items gain, none lose: the interval lies well above 0.
        let x = scores(&(0..100).map(|i| f64::from(i < 70)).collect::<Vec<_>>());
        let y = scores(&(0..100).map(|i| f64::from(i < 30)).collect::<Vec<_>>());
        let d = PairedDiff::between(&x, &y, 7).unwrap();
        assert!((d.mean - 0.4).abs() < 1e-12);
        assert!(d.lo > 0.25 && d.hi < 0.55, "{d:?}");
        assert_eq!(d.side(Direction::Positive), Side::Supports);
        assert_eq!(d.side(Direction::Negative), Side::Contradicts);
        let back = PairedDiff::between(&y, &x, 7).unwrap();
        assert_eq!(back.side(Direction::Positive), Side::Contradicts);
    }

    #[test]
    fn pairing_detects_what_overlapping_intervals_miss() {
        // 64 items; the better variant is right on 8 more items and wrong on none that the
        // other gets: a = 0.5 against 0.375. Their own Wilson intervals overlap, the paired
        // interval excludes 0.
        let x = scores(&(0..64).map(|i| f64::from(i < 32)).collect::<Vec<_>>());
        let y = scores(&(0..64).map(|i| f64::from(i < 24)).collect::<Vec<_>>());
        let (xl, _) = crate::analysis::wilson(32, 64);
        let (_, yh) = crate::analysis::wilson(24, 64);
        assert!(xl < yh, "the unpaired intervals overlap");
        let d = PairedDiff::between(&x, &y, 1).unwrap();
        assert_eq!(d.side(Direction::Positive), Side::Supports, "{d:?}");
    }

    #[test]
    fn balanced_changes_are_undecided_with_an_effect_size_beside() {
        // 10 items gain and 9 lose: no direction.
        let x: Vec<f64> = (0..100)
            .map(|i| f64::from(!(10..50).contains(&i)))
            .collect();
        let y: Vec<f64> = (0..100).map(|i| f64::from(i >= 41)).collect();
        let d = PairedDiff::between(&scores(&x), &scores(&y), 3).unwrap();
        assert_eq!(d.n, 100);
        assert_eq!(d.side(Direction::Positive), Side::Undecided, "{d:?}");
        assert_eq!(d.side(Direction::Negative), Side::Undecided);
        let mde = d.min_detectable();
        assert!(mde > 0.05 && mde < 0.2, "{mde}");
        assert!(d.describe().contains("n = 100"));
    }

    #[test]
    fn only_shared_items_are_paired_and_identical_runs_keep_a_positive_effect_size() {
        let x = scores(&[1.0, 0.0, 1.0]);
        let mut y = scores(&[1.0, 0.0, 1.0, 0.0]);
        y.insert("other".into(), 1.0);
        let d = PairedDiff::between(&x, &y, 0).unwrap();
        assert_eq!(d.n, 3);
        assert_eq!((d.mean, d.lo, d.hi), (0.0, 0.0, 0.0));
        assert!(d.min_detectable() > 0.0);
        assert!(PairedDiff::between(&x, &BTreeMap::new(), 0).is_none());
    }

    #[test]
    fn the_interval_depends_only_on_the_seed() {
        let v: Vec<f64> = (0..50).map(|i| (f64::from(i) * 0.37).sin()).collect();
        assert_eq!(PairedDiff::of(&v, 5), PairedDiff::of(&v, 5));
        assert_ne!(PairedDiff::of(&v, 5), PairedDiff::of(&v, 6));
    }
}
