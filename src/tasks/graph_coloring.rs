//! Graph coloring: random graphs, their canonical edge-list text, an exact chromatic-number solver
//! with a step-by-step trace, and the grader.
//!
//! Canonical perception text (p*):
//! ```text
//! nodes 7
//! edges 0-1 0-4 1-2
//! ```
//! with each edge written `u-v`, `u < v`, sorted. The answer is the last line of the reasoning that
//! starts with `answer`: `answer 0:1 1:2 …`, one `node:color` pair per node, colors numbered from 1.

use rand::{Rng, RngExt};
use std::fmt::Write;

/// Largest graph the grader will solve exactly (a guard against hostile perception text).
pub const MAX_NODES: usize = 16;

/// A simple undirected graph on nodes `0..n`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Graph {
    pub n: usize,
    /// Sorted, deduplicated, `u < v`.
    pub edges: Vec<(u8, u8)>,
}

/// Generation knobs.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcGen {
    pub min_nodes: usize,
    pub max_nodes: usize,
    /// Probability of each possible edge.
    pub edge_prob: f64,
}

impl Default for GcGen {
    fn default() -> Self {
        GcGen {
            min_nodes: 7,
            max_nodes: 9,
            edge_prob: 0.35,
        }
    }
}

impl Graph {
    /// Builds a graph, normalizing edge order; `None` for self-loops or out-of-range nodes.
    pub fn new(n: usize, edges: impl IntoIterator<Item = (usize, usize)>) -> Option<Graph> {
        if n > MAX_NODES {
            return None;
        }
        let mut es = Vec::new();
        for (a, b) in edges {
            if a == b || a >= n || b >= n {
                return None;
            }
            es.push((a.min(b) as u8, a.max(b) as u8));
        }
        es.sort_unstable();
        es.dedup();
        Some(Graph { n, edges: es })
    }

    /// A G(n, p) random graph with `n` uniform in the configured range.
    pub fn random<R: Rng>(rng: &mut R, cfg: &GcGen) -> Graph {
        let lo = cfg.min_nodes.clamp(1, MAX_NODES);
        let hi = cfg.max_nodes.clamp(lo, MAX_NODES);
        let n = rng.random_range(lo..=hi);
        let mut edges = Vec::new();
        for u in 0..n {
            for v in u + 1..n {
                if rng.random_bool(cfg.edge_prob.clamp(0.0, 1.0)) {
                    edges.push((u as u8, v as u8));
                }
            }
        }
        Graph { n, edges }
    }

    /// Neighbor bitmasks.
    pub fn adjacency(&self) -> Vec<u32> {
        let mut adj = vec![0u32; self.n];
        for &(u, v) in &self.edges {
            adj[u as usize] |= 1 << v;
            adj[v as usize] |= 1 << u;
        }
        adj
    }

    /// The canonical perception text.
    pub fn canonical(&self) -> String {
        let mut s = format!("nodes {}\nedges", self.n);
        for (u, v) in &self.edges {
            let _ = write!(s, " {u}-{v}");
        }
        s
    }

    /// Parses perception text in the canonical grammar (edge order and spacing are free).
    pub fn parse(text: &str) -> Option<Graph> {
        let mut lines = text.trim().lines().map(str::trim).filter(|l| !l.is_empty());
        let n: usize = lines.next()?.strip_prefix("nodes")?.trim().parse().ok()?;
        let edges_line = lines.next()?.strip_prefix("edges")?;
        if lines.next().is_some() || n == 0 {
            return None;
        }
        let mut edges = Vec::new();
        for tok in edges_line.split_whitespace() {
            let (a, b) = tok.split_once('-')?;
            edges.push((a.parse().ok()?, b.parse().ok()?));
        }
        Graph::new(n, edges)
    }
}

/// Whether perception text `p` describes the same graph as `p_star`.
pub fn perception_equivalent(p: &str, p_star: &str) -> bool {
    match (Graph::parse(p), Graph::parse(p_star)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn colorable(adj: &[u32], order: &[usize], k: u8, colors: &mut [u8], i: usize, used: u8) -> bool {
    if i == order.len() {
        return true;
    }
    let v = order[i];
    // Symmetry breaking: a new color is only ever the next unused one.
    for c in 1..=k.min(used + 1) {
        if (0..adj.len()).any(|u| adj[v] >> u & 1 == 1 && colors[u] == c) {
            continue;
        }
        colors[v] = c;
        if colorable(adj, order, k, colors, i + 1, used.max(c)) {
            return true;
        }
        colors[v] = 0;
    }
    false
}

/// Degree-descending node order (ties by index): the solver's ordering.
pub fn solver_order(g: &Graph) -> Vec<usize> {
    let adj = g.adjacency();
    let mut order: Vec<usize> = (0..g.n).collect();
    order.sort_by_key(|&v| (std::cmp::Reverse(adj[v].count_ones()), v));
    order
}

/// Exact chromatic number and one optimal coloring (colors from 1).
pub fn chromatic(g: &Graph) -> (u8, Vec<u8>) {
    let adj = g.adjacency();
    let order = solver_order(g);
    for k in 1..=g.n.max(1) as u8 {
        let mut colors = vec![0u8; g.n];
        if colorable(&adj, &order, k, &mut colors, 0, 0) {
            return (k, colors);
        }
    }
    (g.n as u8, (1..=g.n as u8).collect())
}

/// Whether `colors` (from 1) is a proper coloring of `g`.
pub fn is_proper(g: &Graph, colors: &[u8]) -> bool {
    colors.len() == g.n
        && colors.iter().all(|&c| c >= 1)
        && g.edges
            .iter()
            .all(|&(u, v)| colors[u as usize] != colors[v as usize])
}

/// Parses the last `answer` line of a reasoning text into a coloring of `n` nodes.
pub fn parse_answer(reasoning: &str, n: usize) -> Option<Vec<u8>> {
    let line = reasoning
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("answer"))?;
    let mut colors = vec![0u8; n];
    let mut seen = 0usize;
    for tok in line.strip_prefix("answer")?.split_whitespace() {
        let (a, b) = tok.split_once(':')?;
        let v: usize = a.parse().ok()?;
        let c: u8 = b.parse().ok()?;
        if v >= n || colors[v] != 0 || c == 0 {
            return None;
        }
        colors[v] = c;
        seen += 1;
    }
    (seen == n).then_some(colors)
}

/// Acc(reasoning | perception): a proper coloring of the perceived graph using exactly its
/// chromatic number of colors. Malformed input of either kind scores false.
pub fn accuracy(reasoning: &str, perception: &str) -> bool {
    let Some(g) = Graph::parse(perception) else {
        return false;
    };
    let Some(colors) = parse_answer(reasoning, g.n) else {
        return false;
    };
    if !is_proper(&g, &colors) {
        return false;
    }
    let mut distinct: Vec<u8> = colors.clone();
    distinct.sort_unstable();
    distinct.dedup();
    distinct.len() == chromatic(&g).0 as usize
}

/// Writes the final answer line.
pub fn answer_line(colors: &[u8]) -> String {
    let mut s = String::from("answer");
    for (v, c) in colors.iter().enumerate() {
        let _ = write!(s, " {v}:{c}");
    }
    s
}

struct Tracer<'a> {
    adj: &'a [u32],
    order: &'a [usize],
    verbosity: u8,
    out: String,
    budget: usize,
}

impl Tracer<'_> {
    fn search(&mut self, k: u8, colors: &mut [u8], i: usize, used: u8) -> bool {
        if i == self.order.len() {
            return true;
        }
        let v = self.order[i];
        if self.verbosity >= 3 && self.out.len() < self.budget {
            // The node's neighbourhood as the search sees it: colored neighbours and free colors.
            let _ = write!(self.out, "node {v} neighbors");
            let mut taken = 0u32;
            for (u, &cu) in colors.iter().enumerate() {
                if self.adj[v] >> u & 1 == 1 {
                    if cu == 0 {
                        let _ = write!(self.out, " {u}=none");
                    } else {
                        let _ = write!(self.out, " {u}={cu}");
                        taken |= 1 << cu;
                    }
                }
            }
            let _ = write!(self.out, " free");
            for c in 1..=k {
                if taken >> c & 1 == 0 {
                    let _ = write!(self.out, " {c}");
                }
            }
            self.out.push('\n');
        }
        for c in 1..=k.min(used + 1) {
            let conflict =
                (0..self.adj.len()).find(|&u| self.adj[v] >> u & 1 == 1 && colors[u] == c);
            if let Some(u) = conflict {
                if self.verbosity >= 2 && self.out.len() < self.budget {
                    let _ = writeln!(self.out, "node {v} color {c} conflict node {u}");
                }
                continue;
            }
            colors[v] = c;
            if self.verbosity >= 1 && self.out.len() < self.budget {
                let _ = writeln!(self.out, "node {v} color {c}");
            }
            if self.search(k, colors, i + 1, used.max(c)) {
                return true;
            }
            colors[v] = 0;
            if self.verbosity >= 1 && self.out.len() < self.budget {
                let _ = writeln!(self.out, "backtrack node {v}");
            }
        }
        false
    }
}

/// The exact solver's own step-by-step trace, ending in the answer line.
///
/// Verbosity: 0 = the color counts tried and the answer; 1 = plus every assignment and backtrack;
/// 2 = plus every rejected color with the conflicting neighbor, each node's neighborhood, and a
/// full edge-by-edge check; 3 (paper-like length) = plus, before every choice, the node's
/// neighbors with their current colors and the free colors, the edges restated per node, and a
/// final per-node check.
pub fn trace(g: &Graph, verbosity: u8) -> String {
    let adj = g.adjacency();
    let order = solver_order(g);
    let mut t = Tracer {
        adj: &adj,
        order: &order,
        verbosity,
        out: String::new(),
        budget: 64 * 1024,
    };
    let _ = write!(t.out, "order");
    for v in &order {
        let _ = write!(t.out, " {v}");
    }
    t.out.push('\n');
    if verbosity >= 3 {
        for v in 0..g.n {
            let _ = write!(t.out, "node {v} edges");
            for &(a, b) in &g.edges {
                if a as usize == v || b as usize == v {
                    let _ = write!(t.out, " {a}-{b}");
                }
            }
            t.out.push('\n');
        }
    }
    if verbosity >= 2 {
        for &v in &order {
            let _ = write!(t.out, "node {v} degree {} neighbors", adj[v].count_ones());
            for u in 0..g.n {
                if adj[v] >> u & 1 == 1 {
                    let _ = write!(t.out, " {u}");
                }
            }
            t.out.push('\n');
        }
    }
    let mut result = Vec::new();
    for k in 1..=g.n.max(1) as u8 {
        let _ = writeln!(t.out, "try {k} colors");
        let mut colors = vec![0u8; g.n];
        if t.search(k, &mut colors, 0, 0) {
            let _ = writeln!(t.out, "success with {k} colors");
            result = colors;
            break;
        }
        let _ = writeln!(t.out, "fail with {k} colors");
    }
    if verbosity >= 3 {
        let k = result.iter().copied().max().unwrap_or(0);
        for c in 1..=k {
            let _ = write!(t.out, "color {c} nodes");
            for (v, &cv) in result.iter().enumerate() {
                if cv == c {
                    let _ = write!(t.out, " {v}");
                }
            }
            t.out.push('\n');
        }
        for &v in &order {
            for (u, &cu) in result.iter().enumerate() {
                if adj[v] >> u & 1 == 1 {
                    let _ = writeln!(
                        t.out,
                        "node {v} color {} neighbor {u} color {cu} differs",
                        result[v]
                    );
                }
            }
        }
    }
    if verbosity >= 2 {
        for &(u, v) in &g.edges {
            let _ = writeln!(
                t.out,
                "check {u}-{v} {} {} ok",
                result[u as usize], result[v as usize]
            );
        }
    }
    let _ = writeln!(t.out, "check ok");
    t.out.push_str(&answer_line(&result));
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::keyed;
    use proptest::prelude::*;

    /// Chromatic number by trying every assignment of k colors.
    fn brute_chromatic(g: &Graph) -> u8 {
        for k in 1..=g.n as u32 {
            let total = (k as u64).pow(g.n as u32);
            for code in 0..total {
                let mut c = code;
                let colors: Vec<u8> = (0..g.n)
                    .map(|_| {
                        let x = (c % k as u64) as u8 + 1;
                        c /= k as u64;
                        x
                    })
                    .collect();
                if is_proper(g, &colors) {
                    return k as u8;
                }
            }
        }
        g.n as u8
    }

    #[test]
    fn chromatic_matches_brute_force_on_small_graphs() {
        for i in 0..300 {
            let mut rng = keyed(3, "t", i, 0);
            let cfg = GcGen {
                min_nodes: 2,
                max_nodes: 6,
                edge_prob: [0.2, 0.5, 0.8][i as usize % 3],
            };
            let g = Graph::random(&mut rng, &cfg);
            let (k, col) = chromatic(&g);
            assert_eq!(k, brute_chromatic(&g), "{}", g.canonical());
            assert!(is_proper(&g, &col));
        }
    }

    #[test]
    fn known_graphs() {
        // Odd cycle needs 3, even cycle 2, K4 needs 4, empty graph 1.
        let c5 = Graph::new(5, (0..5).map(|i| (i, (i + 1) % 5))).unwrap();
        assert_eq!(chromatic(&c5).0, 3);
        let c6 = Graph::new(6, (0..6).map(|i| (i, (i + 1) % 6))).unwrap();
        assert_eq!(chromatic(&c6).0, 2);
        let k4 = Graph::new(4, [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]).unwrap();
        assert_eq!(chromatic(&k4).0, 4);
        assert_eq!(chromatic(&Graph::new(3, []).unwrap()).0, 1);
    }

    #[test]
    fn canonical_round_trip_and_perception() {
        let g = Graph::new(7, [(3, 1), (0, 6), (1, 3)]).unwrap();
        assert_eq!(g.canonical(), "nodes 7\nedges 0-6 1-3");
        assert_eq!(Graph::parse(&g.canonical()), Some(g.clone()));
        assert!(perception_equivalent(
            "nodes 7\nedges 1-3 6-0",
            &g.canonical()
        ));
        assert!(!perception_equivalent("nodes 7\nedges 1-3", &g.canonical()));
        assert!(!perception_equivalent(
            "nodes 8\nedges 0-6 1-3",
            &g.canonical()
        ));
        assert!(!perception_equivalent("garbage", &g.canonical()));
    }

    #[test]
    fn grader_known_good_and_bad() {
        let p = "nodes 3\nedges 0-1 1-2";
        assert!(accuracy("blah\nanswer 0:1 1:2 2:1", p));
        // Proper but not minimal.
        assert!(!accuracy("answer 0:1 1:2 2:3", p));
        // Improper.
        assert!(!accuracy("answer 0:1 1:1 2:2", p));
        // Missing node, duplicate node, junk.
        assert!(!accuracy("answer 0:1 1:2", p));
        assert!(!accuracy("answer 0:1 0:2 2:1", p));
        assert!(!accuracy("answer 0:x 1:2 2:1", p));
        assert!(!accuracy("", p));
        // Graded against the given perception, not the truth.
        assert!(accuracy("answer 0:1 1:1 2:1", "nodes 3\nedges"));
        // Hostile perception.
        assert!(!accuracy("answer 0:1", "nodes 99999999999\nedges"));
        assert!(!accuracy("answer 0:1", "nodes 40\nedges"));
    }

    #[test]
    fn trace_ends_in_a_correct_answer() {
        for i in 0..50 {
            let g = Graph::random(&mut keyed(1, "t", i, 0), &GcGen::default());
            for verb in 0..=3 {
                let t = trace(&g, verb);
                assert!(accuracy(&t, &g.canonical()), "{t}");
            }
        }
    }

    proptest! {
        #[test]
        fn grader_never_panics(r in ".{0,200}", p in ".{0,200}") {
            let _ = accuracy(&r, &p);
            let _ = perception_equivalent(&r, &p);
        }

        #[test]
        fn grader_never_panics_on_near_miss(edges in proptest::collection::vec((0usize..20, 0usize..20), 0..30),
                                            ans in proptest::collection::vec((0usize..20, 0u8..12), 0..20)) {
            let p = format!("nodes 9\nedges {}", edges.iter().map(|(a,b)| format!("{a}-{b}")).collect::<Vec<_>>().join(" "));
            let r = format!("answer {}", ans.iter().map(|(a,b)| format!("{a}:{b}")).collect::<Vec<_>>().join(" "));
            let _ = accuracy(&r, &p);
        }
    }
}
