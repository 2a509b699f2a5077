//! Sudoku: puzzle generation with a uniqueness proof, canonical grid text, a human-style solver with
//! a step-by-step trace, and the grader.
//!
//! Two sizes: the standard 9×9 grid of 3×3 boxes (digits 1–9), and a 4×4 grid of 2×2 boxes
//! (digits 1–4), whose transcription is a fifth as long — the size that lets a verbose trace make
//! perception a small share of the target tokens at sequence lengths a CPU trains on.
//!
//! Canonical perception text (p*): one line per row, one character per cell, `1`–`9` for givens,
//! `.` for empty cells (nine lines of nine, or four lines of four). The answer is the grid that
//! follows the last `answer` line. A grid's size is read from its number of rows.

use rand::Rng;
use rand::seq::SliceRandom;
use std::fmt::Write;

/// A grid's side: 9 (3×3 boxes) or 4 (2×2 boxes). In a config, `size = 9` or `size = 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Side(u8);

/// A `size` other than 4 or 9.
#[derive(Debug, thiserror::Error)]
#[error("sudoku size {0} is not supported: use 9 (3×3 boxes) or 4 (2×2 boxes)")]
pub struct BadSide(u8);

impl Side {
    pub const NINE: Side = Side(9);
    pub const FOUR: Side = Side(4);

    /// Cells on a side.
    pub fn n(self) -> usize {
        self.0 as usize
    }
    /// Cells on a box's side.
    fn b(self) -> usize {
        if self.0 == 4 { 2 } else { 3 }
    }
    /// Cells in the grid.
    pub fn cells(self) -> usize {
        self.n() * self.n()
    }
    /// The digits' bits, 1..=n.
    fn all(self) -> u16 {
        ((1u16 << (self.n() + 1)) - 1) & !1
    }
    fn is_nine(&self) -> bool {
        *self == Side::NINE
    }
    /// The box of cell `i`, row-major over boxes.
    #[inline]
    fn box_of(self, i: usize) -> usize {
        let (n, b) = (self.n(), self.b());
        (i / n / b) * b + (i % n) / b
    }
    /// The cells of a unit: rows `0..n`, then columns, then boxes.
    fn unit_cells(self, unit: usize) -> Vec<usize> {
        let (n, b) = (self.n(), self.b());
        (0..n)
            .map(|k| match unit / n {
                0 => unit * n + k,
                1 => k * n + (unit - n),
                _ => {
                    let bx = unit - 2 * n;
                    (bx / b) * b * n + (bx % b) * b + (k / b) * n + k % b
                }
            })
            .collect()
    }
    fn unit_name(self, unit: usize) -> String {
        let n = self.n();
        match unit / n {
            0 => format!("row {}", unit + 1),
            1 => format!("col {}", unit - n + 1),
            _ => format!("box {}", unit - 2 * n + 1),
        }
    }
    fn cell_name(self, i: usize) -> String {
        format!("r{}c{}", i / self.n() + 1, i % self.n() + 1)
    }
}

impl Default for Side {
    fn default() -> Self {
        Side::NINE
    }
}

impl TryFrom<u8> for Side {
    type Error = BadSide;
    fn try_from(n: u8) -> std::result::Result<Side, BadSide> {
        match n {
            4 | 9 => Ok(Side(n)),
            _ => Err(BadSide(n)),
        }
    }
}

impl From<Side> for u8 {
    fn from(s: Side) -> u8 {
        s.0
    }
}

/// A grid, row-major; 0 = empty. Cells past `side²` stay 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grid {
    side: Side,
    cells: [u8; 81],
}

/// Generation knobs.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SudokuGen {
    /// Target number of givens (fewer is harder). Puzzles stop early if no further cell can be
    /// removed while keeping the solution unique; the actual count is recorded per puzzle.
    pub givens: usize,
    /// The grid's side (9 unless set; not written into the config's key at 9).
    #[serde(skip_serializing_if = "Side::is_nine")]
    pub size: Side,
}

impl Default for SudokuGen {
    fn default() -> Self {
        SudokuGen {
            givens: 30,
            size: Side::NINE,
        }
    }
}

/// Row/column/box occupancy masks for fast candidate computation.
#[derive(Clone)]
struct Masks {
    side: Side,
    row: [u16; 9],
    col: [u16; 9],
    bx: [u16; 9],
}

impl Masks {
    fn empty(side: Side) -> Masks {
        Masks {
            side,
            row: [0; 9],
            col: [0; 9],
            bx: [0; 9],
        }
    }
    /// `None` if the givens already conflict.
    fn of(g: &Grid) -> Option<Masks> {
        let mut m = Masks::empty(g.side);
        for (i, &d) in g.cells().iter().enumerate() {
            if d != 0 {
                let bit = 1u16 << d;
                if m.taken(i) & bit != 0 {
                    return None;
                }
                m.set(i, bit);
            }
        }
        Some(m)
    }
    #[inline]
    fn taken(&self, i: usize) -> u16 {
        let n = self.side.n();
        self.row[i / n] | self.col[i % n] | self.bx[self.side.box_of(i)]
    }
    #[inline]
    fn cand(&self, i: usize) -> u16 {
        self.side.all() & !self.taken(i)
    }
    #[inline]
    fn set(&mut self, i: usize, bit: u16) {
        let (n, b) = (self.side.n(), self.side.box_of(i));
        self.row[i / n] |= bit;
        self.col[i % n] |= bit;
        self.bx[b] |= bit;
    }
    #[inline]
    fn clear(&mut self, i: usize, bit: u16) {
        let (n, b) = (self.side.n(), self.side.box_of(i));
        self.row[i / n] &= !bit;
        self.col[i % n] &= !bit;
        self.bx[b] &= !bit;
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
    for i in 0..g.side.cells() {
        if g.cells[i] == 0 {
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
        g.cells[best] = d;
        m.set(best, bit);
        count_rec(g, m, limit, found, first);
        m.clear(best, bit);
        g.cells[best] = 0;
    }
}

impl Grid {
    /// An empty grid of this side.
    pub fn empty(side: Side) -> Grid {
        Grid {
            side,
            cells: [0; 81],
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// The `side²` cells, row-major; 0 = empty.
    pub fn cells(&self) -> &[u8] {
        &self.cells[..self.side.cells()]
    }

    /// The cells to write (any byte: validity is checked where it matters).
    pub fn cells_mut(&mut self) -> &mut [u8] {
        let n = self.side.cells();
        &mut self.cells[..n]
    }

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
        self.cells().iter().filter(|&&d| d != 0).count()
    }

    /// A uniformly shuffled complete valid grid.
    pub fn random_solution<R: Rng>(rng: &mut R, side: Side) -> Grid {
        fn fill<R: Rng>(g: &mut Grid, m: &mut Masks, i: usize, rng: &mut R) -> bool {
            if i == g.side.cells() {
                return true;
            }
            let n = g.side.n() as u8;
            let mut digits: Vec<u8> = (1..=n).filter(|d| m.cand(i) >> d & 1 == 1).collect();
            digits.shuffle(rng);
            for d in digits {
                let bit = 1u16 << d;
                g.cells[i] = d;
                m.set(i, bit);
                if fill(g, m, i + 1, rng) {
                    return true;
                }
                m.clear(i, bit);
                g.cells[i] = 0;
            }
            false
        }
        let mut g = Grid::empty(side);
        let mut m = Masks::empty(side);
        fill(&mut g, &mut m, 0, rng);
        g
    }

    /// A puzzle with a unique solution: `(puzzle, solution)`. The givens are clamped to the
    /// fewest a unique puzzle can have (17 on 9×9, 4 on 4×4) and the whole grid.
    pub fn random_puzzle<R: Rng>(rng: &mut R, cfg: &SudokuGen) -> (Grid, Grid) {
        let side = cfg.size;
        let solution = Grid::random_solution(rng, side);
        let mut puzzle = solution;
        let mut cells: Vec<usize> = (0..side.cells()).collect();
        cells.shuffle(rng);
        let fewest = if side.is_nine() { 17 } else { 4 };
        let target = cfg.givens.clamp(fewest, side.cells());
        let mut givens = side.cells();
        for i in cells {
            if givens <= target {
                break;
            }
            let d = puzzle.cells[i];
            puzzle.cells[i] = 0;
            if puzzle.count_solutions(2).0 == 1 {
                givens -= 1;
            } else {
                puzzle.cells[i] = d;
            }
        }
        (puzzle, solution)
    }

    /// Whether this is a complete valid solution grid.
    pub fn is_valid_solution(&self) -> bool {
        let n = self.side.n() as u8;
        self.cells().iter().all(|&d| (1..=n).contains(&d)) && Masks::of(self).is_some()
    }

    /// Canonical perception text: one line per row, `.` for empty.
    pub fn canonical(&self) -> String {
        let n = self.side.n();
        let mut s = String::with_capacity(n * (n + 1));
        for (r, row) in self.cells().chunks(n).enumerate() {
            if r > 0 {
                s.push('\n');
            }
            for &d in row {
                s.push(if d == 0 { '.' } else { (b'0' + d) as char });
            }
        }
        s
    }

    /// Parses nine lines of nine cells or four lines of four (`1`–`9` or `1`–`4`, or `.`; `0`
    /// also means empty).
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
        let side = Side::try_from(u8::try_from(rows.len()).ok()?).ok()?;
        let n = side.n();
        let mut g = Grid::empty(side);
        for (r, row) in rows.iter().enumerate() {
            let cells: Vec<char> = row.chars().filter(|c| !c.is_whitespace()).collect();
            if cells.len() != n {
                return None;
            }
            for (c, ch) in cells.into_iter().enumerate() {
                g.cells[r * n + c] = match ch.to_digit(10) {
                    Some(d @ 1..) if d as usize <= n => d as u8,
                    _ if allow_empty && (ch == '.' || ch == '0') => 0,
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

/// Acc(reasoning | perception): a valid complete grid of the same size that keeps the perceived
/// givens.
pub fn accuracy(reasoning: &str, perception: &str) -> bool {
    let (Some(givens), Some(ans)) = (Grid::parse(perception), parse_answer(reasoning)) else {
        return false;
    };
    givens.side == ans.side
        && ans.is_valid_solution()
        && givens
            .cells()
            .iter()
            .zip(ans.cells())
            .all(|(&g, &a)| g == 0 || g == a)
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

    /// Verbosity 4: the whole grid after a placement or an undo, so that what a later line
    /// looks up stands a few lines above it.
    fn state(&mut self, g: &Grid) {
        if self.verbosity >= 4 && self.out.len() < self.budget {
            let _ = writeln!(self.out, "grid\n{}", g.canonical());
        }
    }

    /// Verbosity 3: the digits already in the cell's row, column and box, and what is left.
    fn explain(&mut self, g: &Grid, m: &Masks, i: usize) {
        if self.verbosity < 3 || self.out.len() >= self.budget {
            return;
        }
        let side = g.side;
        let n = side.n();
        let (r, c, b) = (i / n, i % n, side.box_of(i));
        let list = |unit: usize| -> String {
            side.unit_cells(unit)
                .into_iter()
                .filter(|&k| g.cells[k] != 0)
                .map(|k| char::from(b'0' + g.cells[k]))
                .collect()
        };
        let _ = writeln!(
            self.out,
            "{} row {} has {} col {} has {} box {} has {} candidates {}",
            side.cell_name(i),
            r + 1,
            list(r),
            c + 1,
            list(n + c),
            b + 1,
            list(2 * n + b),
            digits_of(m.cand(i))
        );
    }

    /// Propagates singles, then guesses on the most constrained cell. Returns the solution.
    fn solve(&mut self, g: &mut Grid, m: &mut Masks) -> bool {
        let side = g.side;
        let (n, cells) = (side.n(), side.cells());
        loop {
            // Naked singles.
            let mut progress = false;
            for i in 0..cells {
                if g.cells[i] != 0 {
                    continue;
                }
                let c = m.cand(i);
                if c == 0 {
                    self.line(1, format_args!("{} no candidates", side.cell_name(i)));
                    return false;
                }
                if c.count_ones() == 1 {
                    let d = c.trailing_zeros() as u8;
                    self.explain(g, m, i);
                    self.line(1, format_args!("{}={} naked single", side.cell_name(i), d));
                    g.cells[i] = d;
                    m.set(i, 1 << d);
                    self.state(g);
                    progress = true;
                }
            }
            if progress {
                continue;
            }
            // Hidden singles in rows, columns and boxes.
            for unit in 0..3 * n {
                let unit_cells = side.unit_cells(unit);
                for d in 1..=n as u8 {
                    let bit = 1u16 << d;
                    if unit_cells.iter().any(|&i| g.cells[i] == d) {
                        continue;
                    }
                    let places: Vec<usize> = unit_cells
                        .iter()
                        .copied()
                        .filter(|&i| g.cells[i] == 0 && m.cand(i) & bit != 0)
                        .collect();
                    if places.len() == 1 {
                        let i = places[0];
                        self.explain(g, m, i);
                        self.line(
                            1,
                            format_args!(
                                "{}={} hidden single {}",
                                side.cell_name(i),
                                d,
                                side.unit_name(unit)
                            ),
                        );
                        g.cells[i] = d;
                        m.set(i, bit);
                        self.state(g);
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        // Guess on the most constrained cell.
        let Some(i) = (0..cells)
            .filter(|&i| g.cells[i] == 0)
            .min_by_key(|&i| (m.cand(i).count_ones(), i))
        else {
            return true;
        };
        let cands = m.cand(i);
        self.line(
            2,
            format_args!("{} candidates {}", side.cell_name(i), digits_of(cands)),
        );
        for d in 1..=n as u8 {
            if cands >> d & 1 == 0 {
                continue;
            }
            self.line(1, format_args!("guess {}={}", side.cell_name(i), d));
            let (saved_g, saved_m) = (*g, m.clone());
            g.cells[i] = d;
            m.set(i, 1 << d);
            self.state(g);
            if self.solve(g, m) {
                return true;
            }
            self.line(1, format_args!("undo {}={}", side.cell_name(i), d));
            *g = saved_g;
            *m = saved_m;
            self.state(g);
        }
        false
    }
}

/// The solver's own step-by-step trace, ending with `answer` and the grid.
///
/// Verbosity: 0 = the answer alone; 1 = every placement (naked/hidden single, guess, undo);
/// 2 = plus the candidates of every empty cell at the start and of every guessed cell, and a
/// check of each unit; 3 (paper-like length) = plus, before every placement, the digits already
/// in the cell's row, column and box and the remaining candidates, and the final grid; 4 = plus
/// the whole grid after every placement and undo (the state each later line reads, restated).
pub fn trace(puzzle: &Grid, verbosity: u8) -> String {
    let mut t = Tracer {
        verbosity,
        out: String::new(),
        budget: 64 * 1024,
    };
    let Some(mut m) = Masks::of(puzzle) else {
        return "givens conflict".to_string();
    };
    let side = puzzle.side;
    if verbosity >= 2 {
        for (i, &d) in puzzle.cells().iter().enumerate() {
            if d == 0 {
                t.line(
                    2,
                    format_args!("{} candidates {}", side.cell_name(i), digits_of(m.cand(i))),
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
        for unit in 0..3 * side.n() {
            let name = side.unit_name(unit);
            t.line(2, format_args!("check {name} ok"));
        }
    }
    t.out.push_str("check ok\nanswer\n");
    t.out.push_str(&g.canonical());
    t.out
}

#[cfg(test)]
mod tests;
