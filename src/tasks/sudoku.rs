//! Sudoku: puzzle generation with a uniqueness proof, canonical grid text, a human-style solver with
//! a step-by-step trace, and the grader.
//!
//! Canonical perception text (p*): nine lines of nine characters, `1`–`9` for givens, `.` for empty
//! cells. The answer is the nine lines of nine digits that follow the last `answer` line.

use rand::Rng;
use rand::seq::SliceRandom;
use std::fmt::Write;

/// 81 cells, row-major; 0 = empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grid(pub [u8; 81]);

const ALL: u16 = 0x3fe; // bits 1..=9

#[inline]
fn box_of(i: usize) -> usize {
    (i / 27) * 3 + (i % 9) / 3
}

/// Generation knobs.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SudokuGen {
    /// Target number of givens (fewer is harder). Puzzles stop early if no further cell can be
    /// removed while keeping the solution unique; the actual count is recorded per puzzle.
    pub givens: usize,
}

impl Default for SudokuGen {
    fn default() -> Self {
        SudokuGen { givens: 30 }
    }
}

/// Row/column/box occupancy masks for fast candidate computation.
#[derive(Clone)]
struct Masks {
    row: [u16; 9],
    col: [u16; 9],
    bx: [u16; 9],
}

impl Masks {
    /// `None` if the givens already conflict.
    fn of(g: &Grid) -> Option<Masks> {
        let mut m = Masks {
            row: [0; 9],
            col: [0; 9],
            bx: [0; 9],
        };
        for i in 0..81 {
            let d = g.0[i];
            if d != 0 {
                let bit = 1u16 << d;
                let (r, c, b) = (i / 9, i % 9, box_of(i));
                if (m.row[r] | m.col[c] | m.bx[b]) & bit != 0 {
                    return None;
                }
                m.set(i, bit);
            }
        }
        Some(m)
    }
    #[inline]
    fn cand(&self, i: usize) -> u16 {
        ALL & !(self.row[i / 9] | self.col[i % 9] | self.bx[box_of(i)])
    }
    #[inline]
    fn set(&mut self, i: usize, bit: u16) {
        self.row[i / 9] |= bit;
        self.col[i % 9] |= bit;
        self.bx[box_of(i)] |= bit;
    }
    #[inline]
    fn clear(&mut self, i: usize, bit: u16) {
        self.row[i / 9] &= !bit;
        self.col[i % 9] &= !bit;
        self.bx[box_of(i)] &= !bit;
    }
}

fn count_rec(
    g: &mut Grid,
    m: &mut Masks,
    limit: usize,
    found: &mut usize,
    first: &mut Option<Grid>,
) {
    // Most-constrained empty cell.
    let mut best = usize::MAX;
    let mut best_n = 10;
    for i in 0..81 {
        if g.0[i] == 0 {
            let n = m.cand(i).count_ones();
            if n < best_n {
                best_n = n;
                best = i;
                if n <= 1 {
                    break;
                }
            }
        }
    }
    if best == usize::MAX {
        *found += 1;
        if first.is_none() {
            *first = Some(*g);
        }
        return;
    }
    let mut c = m.cand(best);
    while c != 0 && *found < limit {
        let d = c.trailing_zeros() as u8;
        c &= c - 1;
        let bit = 1u16 << d;
        g.0[best] = d;
        m.set(best, bit);
        count_rec(g, m, limit, found, first);
        m.clear(best, bit);
        g.0[best] = 0;
    }
}

impl Grid {
    /// Counts solutions, stopping at `limit`; also returns the first solution found.
    pub fn count_solutions(&self, limit: usize) -> (usize, Option<Grid>) {
        let Some(mut m) = Masks::of(self) else {
            return (0, None);
        };
        let mut g = *self;
        let mut found = 0;
        let mut first = None;
        count_rec(&mut g, &mut m, limit, &mut found, &mut first);
        (found, first)
    }

    pub fn givens(&self) -> usize {
        self.0.iter().filter(|&&d| d != 0).count()
    }

    /// A uniformly shuffled complete valid grid.
    pub fn random_solution<R: Rng>(rng: &mut R) -> Grid {
        fn fill<R: Rng>(g: &mut Grid, m: &mut Masks, i: usize, rng: &mut R) -> bool {
            if i == 81 {
                return true;
            }
            let mut digits: Vec<u8> = (1..=9).filter(|d| m.cand(i) >> d & 1 == 1).collect();
            digits.shuffle(rng);
            for d in digits {
                let bit = 1u16 << d;
                g.0[i] = d;
                m.set(i, bit);
                if fill(g, m, i + 1, rng) {
                    return true;
                }
                m.clear(i, bit);
                g.0[i] = 0;
            }
            false
        }
        let mut g = Grid([0; 81]);
        let mut m = Masks {
            row: [0; 9],
            col: [0; 9],
            bx: [0; 9],
        };
        fill(&mut g, &mut m, 0, rng);
        g
    }

    /// A puzzle with a unique solution: `(puzzle, solution)`.
    pub fn random_puzzle<R: Rng>(rng: &mut R, cfg: &SudokuGen) -> (Grid, Grid) {
        let solution = Grid::random_solution(rng);
        let mut puzzle = solution;
        let mut cells: Vec<usize> = (0..81).collect();
        cells.shuffle(rng);
        let target = cfg.givens.clamp(17, 81);
        let mut givens = 81;
        for i in cells {
            if givens <= target {
                break;
            }
            let d = puzzle.0[i];
            puzzle.0[i] = 0;
            if puzzle.count_solutions(2).0 == 1 {
                givens -= 1;
            } else {
                puzzle.0[i] = d;
            }
        }
        (puzzle, solution)
    }

    /// Whether this is a complete valid solution grid.
    pub fn is_valid_solution(&self) -> bool {
        self.0.iter().all(|&d| (1..=9).contains(&d)) && Masks::of(self).is_some()
    }

    /// Canonical perception text: nine rows, `.` for empty.
    pub fn canonical(&self) -> String {
        let mut s = String::with_capacity(90);
        for r in 0..9 {
            if r > 0 {
                s.push('\n');
            }
            for c in 0..9 {
                let d = self.0[r * 9 + c];
                s.push(if d == 0 { '.' } else { (b'0' + d) as char });
            }
        }
        s
    }

    /// Parses nine lines of nine cells (`1`–`9` or `.`; `0` also means empty).
    pub fn parse(text: &str) -> Option<Grid> {
        let rows: Vec<&str> = text
            .trim()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Grid::parse_rows(&rows, true)
    }

    fn parse_rows(rows: &[&str], allow_empty: bool) -> Option<Grid> {
        if rows.len() != 9 {
            return None;
        }
        let mut g = Grid([0; 81]);
        for (r, row) in rows.iter().enumerate() {
            let cells: Vec<char> = row.chars().filter(|c| !c.is_whitespace()).collect();
            if cells.len() != 9 {
                return None;
            }
            for (c, ch) in cells.into_iter().enumerate() {
                g.0[r * 9 + c] = match ch {
                    '1'..='9' => ch as u8 - b'0',
                    '.' | '0' if allow_empty => 0,
                    _ => return None,
                };
            }
        }
        Some(g)
    }
}

/// Whether perception text `p` is the same grid of givens as `p_star`.
pub fn perception_equivalent(p: &str, p_star: &str) -> bool {
    match (Grid::parse(p), Grid::parse(p_star)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The grid after the last `answer` line of a reasoning text.
pub fn parse_answer(reasoning: &str) -> Option<Grid> {
    let lines: Vec<&str> = reasoning.lines().map(str::trim).collect();
    let at = lines.iter().rposition(|l| *l == "answer")?;
    let rows: Vec<&str> = lines[at + 1..]
        .iter()
        .copied()
        .filter(|l| !l.is_empty())
        .collect();
    Grid::parse_rows(&rows, false)
}

/// Acc(reasoning | perception): a valid complete grid that keeps the perceived givens.
pub fn accuracy(reasoning: &str, perception: &str) -> bool {
    let (Some(givens), Some(ans)) = (Grid::parse(perception), parse_answer(reasoning)) else {
        return false;
    };
    ans.is_valid_solution() && (0..81).all(|i| givens.0[i] == 0 || givens.0[i] == ans.0[i])
}

fn cell_name(i: usize) -> String {
    format!("r{}c{}", i / 9 + 1, i % 9 + 1)
}

fn digits_of(mask: u16) -> String {
    (1..=9)
        .filter(|d| mask >> d & 1 == 1)
        .map(|d| char::from(b'0' + d as u8))
        .collect()
}

struct Tracer {
    verbosity: u8,
    out: String,
    budget: usize,
}

impl Tracer {
    fn line(&mut self, min_verbosity: u8, s: std::fmt::Arguments) {
        if self.verbosity >= min_verbosity && self.out.len() < self.budget {
            let _ = self.out.write_fmt(s);
            self.out.push('\n');
        }
    }

    /// Verbosity 3: the digits already in the cell's row, column and box, and what is left.
    fn explain(&mut self, g: &Grid, m: &Masks, i: usize) {
        if self.verbosity < 3 || self.out.len() >= self.budget {
            return;
        }
        let (r, c) = (i / 9, i % 9);
        let list = |cells: [usize; 9]| -> String {
            cells
                .iter()
                .filter(|&&k| g.0[k] != 0)
                .map(|&k| char::from(b'0' + g.0[k]))
                .collect()
        };
        let _ = writeln!(
            self.out,
            "{} row {} has {} col {} has {} box {} has {} candidates {}",
            cell_name(i),
            r + 1,
            list(unit_cells(r)),
            c + 1,
            list(unit_cells(9 + c)),
            box_of(i) + 1,
            list(unit_cells(18 + box_of(i))),
            digits_of(m.cand(i))
        );
    }

    /// Propagates singles, then guesses on the most constrained cell. Returns the solution.
    fn solve(&mut self, g: &mut Grid, m: &mut Masks) -> bool {
        loop {
            // Naked singles.
            let mut progress = false;
            for i in 0..81 {
                if g.0[i] != 0 {
                    continue;
                }
                let c = m.cand(i);
                if c == 0 {
                    self.line(1, format_args!("{} no candidates", cell_name(i)));
                    return false;
                }
                if c.count_ones() == 1 {
                    let d = c.trailing_zeros() as u8;
                    self.explain(g, m, i);
                    self.line(1, format_args!("{}={} naked single", cell_name(i), d));
                    g.0[i] = d;
                    m.set(i, 1 << d);
                    progress = true;
                }
            }
            if progress {
                continue;
            }
            // Hidden singles in rows, columns and boxes.
            for unit in 0..27 {
                let cells = unit_cells(unit);
                for d in 1..=9u8 {
                    let bit = 1u16 << d;
                    if cells.iter().any(|&i| g.0[i] == d) {
                        continue;
                    }
                    let places: Vec<usize> = cells
                        .iter()
                        .copied()
                        .filter(|&i| g.0[i] == 0 && m.cand(i) & bit != 0)
                        .collect();
                    if places.len() == 1 {
                        let i = places[0];
                        self.explain(g, m, i);
                        self.line(
                            1,
                            format_args!(
                                "{}={} hidden single {}",
                                cell_name(i),
                                d,
                                unit_name(unit)
                            ),
                        );
                        g.0[i] = d;
                        m.set(i, bit);
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        // Guess on the most constrained cell.
        let Some(i) = (0..81)
            .filter(|&i| g.0[i] == 0)
            .min_by_key(|&i| (m.cand(i).count_ones(), i))
        else {
            return true;
        };
        let cands = m.cand(i);
        self.line(
            2,
            format_args!("{} candidates {}", cell_name(i), digits_of(cands)),
        );
        for d in 1..=9u8 {
            if cands >> d & 1 == 0 {
                continue;
            }
            self.line(1, format_args!("guess {}={}", cell_name(i), d));
            let (saved_g, saved_m) = (*g, m.clone());
            g.0[i] = d;
            m.set(i, 1 << d);
            if self.solve(g, m) {
                return true;
            }
            self.line(1, format_args!("undo {}={}", cell_name(i), d));
            *g = saved_g;
            *m = saved_m;
        }
        false
    }
}

fn unit_cells(unit: usize) -> [usize; 9] {
    let mut out = [0; 9];
    for (k, o) in out.iter_mut().enumerate() {
        *o = match unit {
            0..=8 => unit * 9 + k,
            9..=17 => k * 9 + (unit - 9),
            _ => {
                let b = unit - 18;
                (b / 3) * 27 + (b % 3) * 3 + (k / 3) * 9 + k % 3
            }
        };
    }
    out
}

fn unit_name(unit: usize) -> String {
    match unit {
        0..=8 => format!("row {}", unit + 1),
        9..=17 => format!("col {}", unit - 8),
        _ => format!("box {}", unit - 17),
    }
}

/// The solver's own step-by-step trace, ending with `answer` and the grid.
///
/// Verbosity: 0 = the answer alone; 1 = every placement (naked/hidden single, guess, undo);
/// 2 = plus the candidates of every empty cell at the start and of every guessed cell, and a
/// check of each unit; 3 (paper-like length) = plus, before every placement, the digits already
/// in the cell's row, column and box and the remaining candidates, and the final grid.
pub fn trace(puzzle: &Grid, verbosity: u8) -> String {
    let mut t = Tracer {
        verbosity,
        out: String::new(),
        budget: 64 * 1024,
    };
    let Some(mut m) = Masks::of(puzzle) else {
        return "givens conflict".to_string();
    };
    if verbosity >= 2 {
        for i in 0..81 {
            if puzzle.0[i] == 0 {
                t.line(
                    2,
                    format_args!("{} candidates {}", cell_name(i), digits_of(m.cand(i))),
                );
            }
        }
    }
    let mut g = *puzzle;
    let solved = t.solve(&mut g, &mut m);
    if !solved {
        t.out.push_str("no solution");
        return t.out;
    }
    if verbosity >= 3 {
        t.out.push_str("grid\n");
        t.out.push_str(&g.canonical());
        t.out.push('\n');
    }
    if verbosity >= 2 {
        for unit in 0..27 {
            let name = unit_name(unit);
            t.line(2, format_args!("check {name} ok"));
        }
    }
    t.out.push_str("check ok\nanswer\n");
    t.out.push_str(&g.canonical());
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::keyed;
    use proptest::prelude::*;

    #[test]
    fn generated_puzzles_are_unique_and_consistent() {
        for i in 0..20 {
            let (p, s) = Grid::random_puzzle(&mut keyed(5, "t", i, 0), &SudokuGen::default());
            assert!(s.is_valid_solution());
            let (n, sol) = p.count_solutions(10);
            assert_eq!(n, 1, "puzzle {i} not unique");
            assert_eq!(sol, Some(s));
            assert!(p.givens() >= 30 && p.givens() <= 40, "{}", p.givens());
            assert!((0..81).all(|k| p.0[k] == 0 || p.0[k] == s.0[k]));
        }
    }

    #[test]
    fn uniqueness_counter_sees_multiple_solutions() {
        let empty = Grid([0; 81]);
        assert_eq!(empty.count_solutions(2).0, 2);
        // A "deadly pattern": cells (r1,c1)=a, (r1,c2)=b, (r2,c1)=b, (r2,c2)=a with r1, r2 in the
        // same band. The four cells lie in two boxes, so swapping a and b gives another valid
        // grid; with exactly those four cells empty, each row, column and box involved misses
        // just {a, b}, so the original and the swap are the only two solutions.
        let rectangle = |g: &Grid| -> Option<[usize; 4]> {
            for r1 in 0..9 {
                for r2 in (r1 + 1)..(r1 / 3 * 3 + 3) {
                    for c1 in 0..9 {
                        for c2 in (c1 + 1)..9 {
                            let (a, b) = (g.0[r1 * 9 + c1], g.0[r1 * 9 + c2]);
                            if g.0[r2 * 9 + c1] == b && g.0[r2 * 9 + c2] == a {
                                return Some([r1 * 9 + c1, r1 * 9 + c2, r2 * 9 + c1, r2 * 9 + c2]);
                            }
                        }
                    }
                }
            }
            None
        };
        let (s, cells) = (0..50)
            .map(|seed| Grid::random_solution(&mut keyed(1, "deadly", seed, 0)))
            .find_map(|g| rectangle(&g).map(|c| (g, c)))
            .expect("some random solution has a deadly pattern");
        let mut swapped = s;
        (swapped.0[cells[0]], swapped.0[cells[1]]) = (s.0[cells[1]], s.0[cells[0]]);
        (swapped.0[cells[2]], swapped.0[cells[3]]) = (s.0[cells[3]], s.0[cells[2]]);
        assert!(s.is_valid_solution() && swapped.is_valid_solution() && swapped != s);
        let mut p = s;
        for c in cells {
            p.0[c] = 0;
        }
        assert_eq!(p.count_solutions(2).0, 2);
        assert_eq!(p.count_solutions(10).0, 2, "exactly two solutions");
        let first = p.count_solutions(1).1;
        assert!(first == Some(s) || first == Some(swapped), "{first:?}");
        // With one of the four cells given, the solution is unique again.
        p.0[cells[0]] = s.0[cells[0]];
        assert_eq!(p.count_solutions(10), (1, Some(s)));
        // Conflicting givens: no solution.
        let mut bad = Grid([0; 81]);
        bad.0[0] = 5;
        bad.0[1] = 5;
        assert_eq!(bad.count_solutions(2).0, 0);
    }

    #[test]
    fn grader_known_good_and_bad() {
        let (p, s) = Grid::random_puzzle(&mut keyed(9, "t", 0, 0), &SudokuGen::default());
        let ps = p.canonical();
        let good = format!("work\nanswer\n{}", s.canonical());
        assert!(accuracy(&good, &ps));
        assert!(perception_equivalent(&ps, &ps));
        // Break a cell.
        let mut bad = s;
        bad.0[0] = if s.0[0] == 1 { 2 } else { 1 };
        assert!(!accuracy(&format!("answer\n{}", bad.canonical()), &ps));
        // A valid grid that ignores a given (relabel digits): valid but wrong for these givens.
        let mut relabeled = s;
        for d in relabeled.0.iter_mut() {
            *d = *d % 9 + 1;
        }
        assert!(relabeled.is_valid_solution());
        assert!(!accuracy(
            &format!("answer\n{}", relabeled.canonical()),
            &ps
        ));
        // Truncated answer.
        let trunc: String = good.chars().take(good.len() - 5).collect();
        assert!(!accuracy(&trunc, &ps));
        assert!(!accuracy("", &ps));
        assert!(!accuracy(&good, "not a grid"));
    }

    #[test]
    fn traces_end_in_correct_answers() {
        for i in 0..10 {
            let (p, _) = Grid::random_puzzle(&mut keyed(2, "t", i, 0), &SudokuGen { givens: 26 });
            for v in 0..=3 {
                let t = trace(&p, v);
                assert!(accuracy(&t, &p.canonical()), "{t}");
            }
        }
    }

    #[test]
    fn canonical_round_trip() {
        let (p, _) = Grid::random_puzzle(&mut keyed(4, "t", 0, 0), &SudokuGen::default());
        assert_eq!(Grid::parse(&p.canonical()), Some(p));
        assert_eq!(p.canonical().lines().count(), 9);
    }

    proptest! {
        #[test]
        fn grader_never_panics(r in ".{0,300}", p in ".{0,300}") {
            let _ = accuracy(&r, &p);
            let _ = perception_equivalent(&r, &p);
        }

        #[test]
        fn grader_never_panics_on_gridlike(rows in proptest::collection::vec("[0-9.x]{0,11}", 0..12)) {
            let text = rows.join("\n");
            let _ = accuracy(&format!("answer\n{text}"), &text);
        }
    }
}
