//! The puzzle tasks: generation, canonical perception text, exact solvers with traces, graders.
//! Tasks know nothing about models: graders take text segments and return a verdict.

pub mod generate;
pub mod graph_coloring;
pub mod sudoku;

use chacha20::ChaCha8Rng;
use graph_coloring::{GcGen, Graph};
use serde::{Deserialize, Serialize};
use sudoku::{Grid, SudokuGen};

/// Generation knobs of every task (each task reads its own).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenConfig {
    pub graph: GcGen,
    pub sudoku: SudokuGen,
}

/// One generated puzzle: its canonical perception text p*, the solution, and size statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Puzzle {
    pub perception: String,
    pub solution: String,
    pub nodes: Option<i32>,
    pub edges: Option<i32>,
    pub chromatic: Option<i32>,
    pub givens: Option<i32>,
}

impl Puzzle {
    /// The size class splits are stratified by (node count, or number of givens).
    pub fn stratum(&self) -> i32 {
        self.nodes.or(self.givens).unwrap_or(0)
    }
}

/// What the pipeline needs of a puzzle family: generation, the canonical perception grammar,
/// the teacher's trace, and the graders. Stages reach a task through [`TaskKind::task`] instead
/// of matching on the kind.
pub trait Task: Send + Sync {
    fn kind(&self) -> TaskKind;
    /// Prefix of item ids (`gc-000001`).
    fn id_prefix(&self) -> &'static str;
    /// The instruction given to the model with the image.
    fn prompt(&self) -> &'static str;
    /// A random puzzle drawn from `rng`.
    fn generate(&self, rng: &mut ChaCha8Rng, cfg: &GenConfig) -> Puzzle;
    /// Whether `perception` is well-formed in the task's grammar.
    fn parses(&self, perception: &str) -> bool;
    /// The teacher's step-by-step reasoning for the puzzle `perception` describes (`None` if it
    /// does not parse).
    fn trace(&self, perception: &str, verbosity: u8) -> Option<String>;
    /// a_p = 1(p = p*): exact equality with the canonical text (up to surrounding whitespace,
    /// which the segment parser strips). Duplicated or reversed edges, another edge order or a
    /// wrong node count are not equal.
    fn perception_correct(&self, p: &str, p_star: &str) -> bool {
        p.trim() == p_star.trim()
    }
    /// A lenient diagnostic beside a_p: `p` describes the same puzzle as `p_star` in any
    /// spelling.
    fn perception_equivalent(&self, p: &str, p_star: &str) -> bool;
    /// Acc(reasoning | perception): the reasoning's answer solves the puzzle `perception`
    /// describes. Never panics; malformed text is simply wrong.
    fn accuracy(&self, reasoning: &str, perception: &str) -> bool;
}

struct GraphColoringTask;
struct SudokuTask;

impl Task for GraphColoringTask {
    fn kind(&self) -> TaskKind {
        TaskKind::GraphColoring
    }
    fn id_prefix(&self) -> &'static str {
        "gc"
    }
    fn prompt(&self) -> &'static str {
        "color the graph with as few colors as possible so that no edge joins two nodes of one color"
    }
    fn generate(&self, rng: &mut ChaCha8Rng, cfg: &GenConfig) -> Puzzle {
        let g = Graph::random(rng, &cfg.graph);
        let (k, colors) = graph_coloring::chromatic(&g);
        Puzzle {
            perception: g.canonical(),
            solution: graph_coloring::answer_line(&colors),
            nodes: Some(g.n as i32),
            edges: Some(g.edges.len() as i32),
            chromatic: Some(k as i32),
            givens: None,
        }
    }
    fn parses(&self, perception: &str) -> bool {
        Graph::parse(perception).is_some()
    }
    fn trace(&self, perception: &str, verbosity: u8) -> Option<String> {
        Graph::parse(perception).map(|g| graph_coloring::trace(&g, verbosity))
    }
    fn perception_equivalent(&self, p: &str, p_star: &str) -> bool {
        graph_coloring::perception_equivalent(p, p_star)
    }
    fn accuracy(&self, reasoning: &str, perception: &str) -> bool {
        graph_coloring::accuracy(reasoning, perception)
    }
}

impl Task for SudokuTask {
    fn kind(&self) -> TaskKind {
        TaskKind::Sudoku
    }
    fn id_prefix(&self) -> &'static str {
        "sd"
    }
    fn prompt(&self) -> &'static str {
        "solve the sudoku"
    }
    fn generate(&self, rng: &mut ChaCha8Rng, cfg: &GenConfig) -> Puzzle {
        let (p, s) = Grid::random_puzzle(rng, &cfg.sudoku);
        Puzzle {
            perception: p.canonical(),
            solution: s.canonical(),
            nodes: None,
            edges: None,
            chromatic: None,
            givens: Some(p.givens() as i32),
        }
    }
    fn parses(&self, perception: &str) -> bool {
        Grid::parse(perception).is_some()
    }
    fn trace(&self, perception: &str, verbosity: u8) -> Option<String> {
        Grid::parse(perception).map(|g| sudoku::trace(&g, verbosity))
    }
    fn perception_equivalent(&self, p: &str, p_star: &str) -> bool {
        sudoku::perception_equivalent(p, p_star)
    }
    fn accuracy(&self, reasoning: &str, perception: &str) -> bool {
        sudoku::accuracy(reasoning, perception)
    }
}

/// Which task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    GraphColoring,
    Sudoku,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::GraphColoring => "graph_coloring",
            TaskKind::Sudoku => "sudoku",
        }
    }

    pub fn parse(s: &str) -> Option<TaskKind> {
        match s {
            "graph_coloring" => Some(TaskKind::GraphColoring),
            "sudoku" => Some(TaskKind::Sudoku),
            _ => None,
        }
    }

    /// The task's implementation.
    pub fn task(self) -> &'static dyn Task {
        match self {
            TaskKind::GraphColoring => &GraphColoringTask,
            TaskKind::Sudoku => &SudokuTask,
        }
    }

    /// The instruction given to the model with the image.
    pub fn prompt(self) -> &'static str {
        self.task().prompt()
    }

    /// See [`Task::perception_correct`].
    pub fn perception_correct(self, p: &str, p_star: &str) -> bool {
        self.task().perception_correct(p, p_star)
    }

    /// See [`Task::perception_equivalent`].
    pub fn perception_equivalent(self, p: &str, p_star: &str) -> bool {
        self.task().perception_equivalent(p, p_star)
    }

    /// See [`Task::accuracy`].
    pub fn accuracy(self, reasoning: &str, perception: &str) -> bool {
        self.task().accuracy(reasoning, perception)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p_is_strict_equality_with_the_canonical_text() {
        let t = TaskKind::GraphColoring;
        let star = "nodes 3\nedges 0-1 1-2";
        assert!(t.perception_correct(star, star));
        assert!(t.perception_correct(&format!(" {star}\n"), star));
        for p in [
            "nodes 3\nedges 0-1 0-1 1-2",
            "nodes 3\nedges 1-0 1-2",
            "nodes 3\nedges 1-2 0-1",
            "nodes 4\nedges 0-1 1-2",
            "nodes 3\nedges  0-1 1-2",
        ] {
            assert!(!t.perception_correct(p, star), "{p:?}");
        }
        // The lenient diagnostic accepts the same graph written differently.
        assert!(t.perception_equivalent("nodes 3\nedges 1-0 2-1 0-1", star));
        assert!(!t.perception_equivalent("nodes 4\nedges 0-1 1-2", star));
    }
}
