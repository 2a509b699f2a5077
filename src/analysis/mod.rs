//! Statistics for reporting: Wilson score intervals, a cluster bootstrap for repeated samples
//! of one item, and Pearson correlation.

pub mod paired;

use rand::RngExt;

/// 95 % Wilson score interval for `k` successes out of `n`.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054f64;
    let n = n as f64;
    let p = k as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// 95 % percentile-bootstrap interval of a proportion measured on clusters (items) of
/// correlated samples: `clusters[i] = (successes, samples)` of item i. Items are resampled with
/// replacement `reps` times and the pooled proportion Σk/Σn recomputed, so samples of one item
/// are never treated as independent. Deterministic for a given `seed`.
pub fn cluster_bootstrap(clusters: &[(u64, u64)], reps: usize, seed: u64) -> (f64, f64) {
    let m = clusters.len();
    if m == 0 || clusters.iter().all(|c| c.1 == 0) {
        return (0.0, 1.0);
    }
    let mut rng = crate::util::rng::keyed(seed, "analysis/cluster-bootstrap", m as u64, 0);
    let mut stats: Vec<f64> = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let (mut k, mut n) = (0u64, 0u64);
        for _ in 0..m {
            let c = clusters[rng.random_range(0..m)];
            k += c.0;
            n += c.1;
        }
        if n > 0 {
            stats.push(k as f64 / n as f64);
        }
    }
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| stats[((p * (stats.len() - 1) as f64).round() as usize).min(stats.len() - 1)];
    (q(0.025), q(0.975))
}

/// Pearson correlation of two equally long samples (`None` if undefined).
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Pearson r of paired samples grouped in clusters (the samples of one item), with a 95 %
/// percentile-bootstrap interval that resamples whole clusters with replacement `reps` times.
/// Replicates in which r is undefined (a constant variable) are left out; the result carries
/// how many were kept. Deterministic for a given `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapR {
    /// r on all samples (`None` if undefined).
    pub r: Option<f64>,
    /// The interval (`None` when no replicate had a defined r).
    pub ci: Option<(f64, f64)>,
    /// Replicates with a defined r.
    pub reps: usize,
}

pub fn pearson_cluster_bootstrap(
    clusters: &[Vec<(f64, f64)>],
    reps: usize,
    seed: u64,
) -> BootstrapR {
    let (x, y): (Vec<f64>, Vec<f64>) = clusters.iter().flatten().copied().unzip();
    let stat = |rows: &[(f64, f64)]| {
        let (x, y): (Vec<f64>, Vec<f64>) = rows.iter().copied().unzip();
        pearson(&x, &y)
    };
    let (ci, reps) = resample_clusters(clusters, reps, seed, "analysis/pearson-bootstrap", stat);
    BootstrapR {
        r: pearson(&x, &y),
        ci,
        reps,
    }
}

/// The difference of two correlations measured on the same rows, r(x₂, y₂) − r(x₁, y₁), with a
/// 95 % percentile-bootstrap interval that resamples whole clusters (items) with replacement
/// `reps` times, both correlations on the same resample — so the interval is paired: what the
/// two share (the same rollouts, the same items) cancels in the difference. A row is
/// `[x₁, y₁, x₂, y₂]`. Replicates in which either r is undefined are left out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapDiff {
    /// r₂ − r₁ on all rows (`None` if either is undefined).
    pub diff: Option<f64>,
    /// The interval (`None` when no replicate had both defined).
    pub ci: Option<(f64, f64)>,
    /// Replicates with both correlations defined.
    pub reps: usize,
}

pub fn pearson_difference_cluster_bootstrap(
    clusters: &[Vec<[f64; 4]>],
    reps: usize,
    seed: u64,
) -> BootstrapDiff {
    let stat = |rows: &[[f64; 4]]| {
        let col = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<f64>>();
        Some(pearson(&col(2), &col(3))? - pearson(&col(0), &col(1))?)
    };
    let all: Vec<[f64; 4]> = clusters.iter().flatten().copied().collect();
    let (ci, reps) = resample_clusters(clusters, reps, seed, "analysis/pearson-difference", stat);
    BootstrapDiff {
        diff: stat(&all),
        ci,
        reps,
    }
}

/// The 95 % percentile interval of `stat` over `reps` resamples of whole clusters (with
/// replacement; a resample has as many clusters as the data), and how many replicates gave a
/// value. The random stream is keyed by (`seed`, `purpose`, cluster count).
fn resample_clusters<T: Copy>(
    clusters: &[Vec<T>],
    reps: usize,
    seed: u64,
    purpose: &str,
    stat: impl Fn(&[T]) -> Option<f64>,
) -> (Option<(f64, f64)>, usize) {
    let m = clusters.len();
    if m == 0 {
        return (None, 0);
    }
    let mut rng = crate::util::rng::keyed(seed, purpose, m as u64, 0);
    let mut stats: Vec<f64> = Vec::with_capacity(reps);
    let mut rows = Vec::new();
    for _ in 0..reps {
        rows.clear();
        for _ in 0..m {
            rows.extend_from_slice(&clusters[rng.random_range(0..m)]);
        }
        if let Some(v) = stat(&rows) {
            stats.push(v);
        }
    }
    stats.sort_by(f64::total_cmp);
    let ci = (!stats.is_empty()).then(|| {
        let q =
            |p: f64| stats[((p * (stats.len() - 1) as f64).round() as usize).min(stats.len() - 1)];
        (q(0.025), q(0.975))
    });
    (ci, stats.len())
}

/// Sufficient statistics of Pearson's r between x and each of K binary variables y_k,
/// accumulated one observation at a time (so Σy² = Σy), e.g. across the steps of an RL run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunningPearson<const K: usize> {
    pub n: f64,
    pub x: f64,
    pub xx: f64,
    pub y: [f64; K],
    pub xy: [f64; K],
}

impl<const K: usize> Default for RunningPearson<K> {
    fn default() -> Self {
        RunningPearson {
            n: 0.0,
            x: 0.0,
            xx: 0.0,
            y: [0.0; K],
            xy: [0.0; K],
        }
    }
}

impl<const K: usize> RunningPearson<K> {
    pub fn add(&mut self, x: f64, ys: [f64; K]) {
        self.n += 1.0;
        self.x += x;
        self.xx += x * x;
        for ((y, xy), v) in self.y.iter_mut().zip(&mut self.xy).zip(ys) {
            *y += v;
            *xy += x * v;
        }
    }

    /// Pearson r of x with y_k so far; `None` when either is constant.
    pub fn r(&self, k: usize) -> Option<f64> {
        let (n, y, xy) = (self.n, *self.y.get(k)?, *self.xy.get(k)?);
        let vx = n * self.xx - self.x * self.x;
        let vy = n * y - y * y;
        if vx <= 1e-12 * (n * self.xx).max(1.0) * n.max(1.0) || vy <= 1e-12 * n * n.max(1.0) {
            return None;
        }
        Some(((n * xy - self.x * y) / (vx * vy).sqrt()).clamp(-1.0, 1.0))
    }
}

impl RunningPearson<2> {
    /// n, Σx, Σx², Σy₀, Σxy₀, Σy₁, Σxy₁.
    pub fn sums(&self) -> [f64; 7] {
        [
            self.n, self.x, self.xx, self.y[0], self.xy[0], self.y[1], self.xy[1],
        ]
    }
}

/// Least squares y = slope·x + intercept with Pearson r, over the points given; `None` with
/// fewer than two distinct x.
pub fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64, Option<f64>)> {
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if points.len() < 2 || sxx <= 1e-12 {
        return None;
    }
    let slope = sxy / sxx;
    let (x, y): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
    Some((slope, my - slope * mx, pearson(&x, &y)))
}

/// The 95 % interval of a Pearson r over `n` independent points by Fisher's z transform,
/// tanh(atanh r ± 1.96/√(n − 3)); `None` below four points, where it is undefined.
pub fn fisher_interval(r: f64, n: usize) -> Option<(f64, f64)> {
    if n < 4 || !r.is_finite() {
        return None;
    }
    let z = r.clamp(-1.0 + 1e-12, 1.0 - 1e-12).atanh();
    let half = 1.959_963_984_540_054 / ((n - 3) as f64).sqrt();
    Some(((z - half).tanh(), (z + half).tanh()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fisher_interval_narrows_with_points_and_stays_in_range() {
        // r = 0.5 over 28 points: z = 0.5493, half-width 1.96/5 = 0.392 → tanh(0.1573),
        // tanh(0.9413).
        let (lo, hi) = fisher_interval(0.5, 28).unwrap();
        assert!(
            (lo - 0.1560).abs() < 1e-3 && (hi - 0.7358).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo5, hi5) = fisher_interval(0.5, 5).unwrap();
        assert!(lo5 < 0.0 && hi5 > hi && hi5 < 1.0);
        assert_eq!(fisher_interval(0.9, 3), None);
        let (l1, h1) = fisher_interval(1.0, 6).unwrap();
        assert!(l1 > 0.99 && h1 <= 1.0);
    }

    #[test]
    fn wilson_known_values() {
        // 8/10: [0.4902, 0.9433] (standard tables).
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 20);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611).abs() < 1e-3, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn cluster_bootstrap_widens_for_correlated_samples() {
        // 40 items × 8 samples. Independent-looking data: every item half right. Clustered data:
        // half the items always right, half always wrong. Same pooled mean 0.5, but the clustered
        // interval must be as wide as 40 independent draws, not 320.
        let spread: Vec<(u64, u64)> = (0..40).map(|_| (4, 8)).collect();
        let clustered: Vec<(u64, u64)> = (0..40)
            .map(|i| if i % 2 == 0 { (8, 8) } else { (0, 8) })
            .collect();
        let (lo_s, hi_s) = cluster_bootstrap(&spread, 2000, 1);
        let (lo_c, hi_c) = cluster_bootstrap(&clustered, 2000, 1);
        assert!(hi_s - lo_s < 1e-9, "{lo_s} {hi_s}");
        let (wl, wh) = wilson(20, 40);
        assert!(
            ((hi_c - lo_c) - (wh - wl)).abs() < 0.08,
            "{lo_c} {hi_c} vs {wl} {wh}"
        );
        let (nl, nh) = wilson(160, 320);
        assert!(hi_c - lo_c > 1.5 * (nh - nl));
        assert_eq!(cluster_bootstrap(&clustered, 2000, 1), (lo_c, hi_c));
        assert_eq!(cluster_bootstrap(&[], 10, 1), (0.0, 1.0));
    }

    #[test]
    fn pearson_known_values() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_none());
    }

    /// Against the Fisher-z interval tanh(atanh r ± 1.96/√(n − 3)) on a large sample of
    /// independent pairs (one per cluster), where both are accurate.
    #[test]
    fn pearson_bootstrap_agrees_with_fisher_on_independent_pairs() {
        let mut rng = crate::util::rng::keyed(4, "test/pearson", 0, 0);
        let n = 600;
        let clusters: Vec<Vec<(f64, f64)>> = (0..n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random(), rng.random());
                let w: f64 = rng.random();
                vec![(u + w, v + w)]
            })
            .collect();
        let b = pearson_cluster_bootstrap(&clusters, 2000, 9);
        let r = b.r.unwrap();
        // x = u + w, y = v + w with u, v, w iid uniform: r = 1/2 in the population.
        assert!((r - 0.5).abs() < 0.08, "{r}");
        let half = 1.959_963_984_540_054 / ((n - 3) as f64).sqrt();
        let (lo, hi) = ((r.atanh() - half).tanh(), (r.atanh() + half).tanh());
        let (blo, bhi) = b.ci.unwrap();
        assert!(
            (blo - lo).abs() < 0.02 && (bhi - hi).abs() < 0.02,
            "{blo} {bhi} vs {lo} {hi}"
        );
        assert_eq!(b.reps, 2000);
        assert_eq!(pearson_cluster_bootstrap(&clusters, 2000, 9), b);
    }

    /// Clusters of perfectly repeated samples: the point estimate is that of the pooled samples,
    /// the interval as wide as the clusters alone would give (not the pooled count), and a
    /// constant variable gives no r.
    #[test]
    fn pearson_bootstrap_resamples_clusters() {
        let single: Vec<Vec<(f64, f64)>> = (0..40)
            .map(|i| vec![(i as f64 % 7.0, (i as f64 % 7.0) + (i % 3) as f64)])
            .collect();
        let repeated: Vec<Vec<(f64, f64)>> = single.iter().map(|c| vec![c[0]; 8]).collect();
        let (s, r) = (
            pearson_cluster_bootstrap(&single, 2000, 1),
            pearson_cluster_bootstrap(&repeated, 2000, 1),
        );
        assert!((s.r.unwrap() - r.r.unwrap()).abs() < 1e-12);
        let width = |b: &BootstrapR| b.ci.map(|c| c.1 - c.0).unwrap();
        assert!((width(&s) - width(&r)).abs() < 0.05, "{s:?} {r:?}");
        let flat: Vec<Vec<(f64, f64)>> = (0..10).map(|i| vec![(1.0, i as f64)]).collect();
        let f = pearson_cluster_bootstrap(&flat, 100, 1);
        assert_eq!((f.r, f.ci, f.reps), (None, None, 0));
        // A hand-checked r: x = 1, 2, 3, 4 and y = 1, 3, 2, 4 give r = 0.8.
        let h: Vec<Vec<(f64, f64)>> =
            vec![vec![(1.0, 1.0), (2.0, 3.0)], vec![(3.0, 2.0), (4.0, 4.0)]];
        assert!((pearson_cluster_bootstrap(&h, 10, 1).r.unwrap() - 0.8).abs() < 1e-12);
    }

    /// The paired difference of two correlations: its point value is r₂ − r₁ on all rows; with
    /// one variable shared and the other two sharing noise, the paired interval is far narrower
    /// than either correlation's own, and it excludes 0 where a difference is there; the
    /// reversed pair gives the negated interval; a constant variable gives nothing.
    #[test]
    fn pearson_difference_is_paired_over_the_same_rows() {
        let mut rng = crate::util::rng::keyed(6, "test/pearson-difference", 0, 0);
        let mut g = || rng.random::<f64>() - 0.5;
        let rows: Vec<[f64; 4]> = (0..300)
            .map(|_| {
                let (z, ex, e1, e2) = (g(), g(), g(), g());
                let (x, y1) = (z + 0.5 * ex, z + e1);
                [x, y1 + 0.4 * e2, x, y1]
            })
            .collect();
        let col = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<f64>>();
        let (r1, r2) = (
            pearson(&col(0), &col(1)).unwrap(),
            pearson(&col(2), &col(3)).unwrap(),
        );
        let clusters: Vec<Vec<[f64; 4]>> = rows.chunks(3).map(|c| c.to_vec()).collect();
        let d = pearson_difference_cluster_bootstrap(&clusters, 2000, 3);
        assert!((d.diff.unwrap() - (r2 - r1)).abs() < 1e-12);
        let (lo, hi) = d.ci.unwrap();
        assert!(lo > 0.0 && hi > lo, "{d:?} ({r1} → {r2})");
        let own = |k: usize| {
            let c: Vec<Vec<(f64, f64)>> = clusters
                .iter()
                .map(|c| c.iter().map(|r| (r[k], r[k + 1])).collect())
                .collect();
            let ci = pearson_cluster_bootstrap(&c, 2000, 3).ci.unwrap();
            ci.1 - ci.0
        };
        assert!(2.0 * (hi - lo) < own(0).min(own(2)), "{d:?}");
        // The two correlations' own intervals overlap: unpaired, no difference would be seen.
        let c1 = |k: usize| {
            let c: Vec<Vec<(f64, f64)>> = clusters
                .iter()
                .map(|c| c.iter().map(|r| (r[k], r[k + 1])).collect())
                .collect();
            pearson_cluster_bootstrap(&c, 2000, 3).ci.unwrap()
        };
        assert!(c1(0).1 > c1(2).0, "{:?} {:?}", c1(0), c1(2));
        let swapped: Vec<Vec<[f64; 4]>> = clusters
            .iter()
            .map(|c| c.iter().map(|r| [r[2], r[3], r[0], r[1]]).collect())
            .collect();
        let s = pearson_difference_cluster_bootstrap(&swapped, 2000, 3);
        assert!((s.diff.unwrap() + d.diff.unwrap()).abs() < 1e-12);
        let (slo, shi) = s.ci.unwrap();
        assert!(
            (slo + hi).abs() < 1e-12 && (shi + lo).abs() < 1e-12,
            "{s:?} {d:?}"
        );
        let flat: Vec<Vec<[f64; 4]>> = (0..10)
            .map(|i| vec![[1.0, i as f64, i as f64, i as f64]])
            .collect();
        let f = pearson_difference_cluster_bootstrap(&flat, 100, 1);
        assert_eq!((f.diff, f.ci, f.reps), (None, None, 0));
    }

    /// The running r, accumulated one observation at a time, equals Pearson's r over all of
    /// them; it is undefined while a side is constant.
    #[test]
    fn running_r_equals_pearson_over_all_observations() {
        let x: Vec<f64> = (0..40).map(|i| ((i * 7 % 11) as f64) / 10.0).collect();
        let p: Vec<f64> = (0..40).map(|i| f64::from(u8::from(i % 3 == 0))).collect();
        let r: Vec<f64> = (0..40)
            .map(|i| f64::from(u8::from(i * 5 % 7 < 3)))
            .collect();
        let mut run = RunningPearson::<2>::default();
        for k in 0..40 {
            run.add(x[k], [p[k], r[k]]);
            if k % 8 == 7 {
                let n = k + 1;
                assert!((run.r(0).unwrap() - pearson(&x[..n], &p[..n]).unwrap()).abs() < 1e-12);
                assert!((run.r(1).unwrap() - pearson(&x[..n], &r[..n]).unwrap()).abs() < 1e-12);
            }
        }
        let mut flat = RunningPearson::<1>::default();
        for _ in 0..5 {
            flat.add(0.5, [1.0]);
        }
        assert_eq!(flat.r(0), None);
    }

    /// The fitted line through points on a line is that line, with r = ±1; fewer than two
    /// distinct x give none.
    #[test]
    fn fit_line_recovers_a_line() {
        let pts: Vec<(f64, f64)> = [0.1, 0.4, 0.7]
            .iter()
            .map(|&x| (x, 0.5 - 2.0 * x))
            .collect();
        let (slope, intercept, r) = fit_line(&pts).unwrap();
        assert!((slope + 2.0).abs() < 1e-12 && (intercept - 0.5).abs() < 1e-12);
        assert!((r.unwrap() + 1.0).abs() < 1e-12);
        let noisy = [(0.0, 0.0), (1.0, 1.0), (2.0, 1.0)];
        let (slope, intercept, _) = fit_line(&noisy).unwrap();
        assert!((slope - 0.5).abs() < 1e-12 && (intercept - 1.0 / 6.0).abs() < 1e-12);
        assert!(fit_line(&[(0.3, 1.0), (0.3, 2.0)]).is_none());
        assert!(fit_line(&[(0.3, 1.0)]).is_none());
    }
}
