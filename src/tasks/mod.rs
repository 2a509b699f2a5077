//! The puzzle tasks: generation, canonical perception text, exact solvers with traces, graders.
//! Tasks know nothing about models: graders take text segments and return a verdict.

pub mod graph_coloring;
pub mod sudoku;

use serde::{Deserialize, Serialize};

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

    /// The instruction given to the model with the image.
    pub fn prompt(self) -> &'static str {
        match self {
            TaskKind::GraphColoring => {
                "color the graph with as few colors as possible so that no edge joins two nodes of one color"
            }
            TaskKind::Sudoku => "solve the sudoku",
        }
    }

    /// Whether perception text `p` matches the ground truth `p_star`.
    pub fn perception_correct(self, p: &str, p_star: &str) -> bool {
        match self {
            TaskKind::GraphColoring => graph_coloring::perception_correct(p, p_star),
            TaskKind::Sudoku => sudoku::perception_correct(p, p_star),
        }
    }

    /// Acc(reasoning | perception): whether the reasoning's answer solves the puzzle that
    /// `perception` describes. Never panics; malformed text is simply wrong.
    pub fn accuracy(self, reasoning: &str, perception: &str) -> bool {
        match self {
            TaskKind::GraphColoring => graph_coloring::accuracy(reasoning, perception),
            TaskKind::Sudoku => sudoku::accuracy(reasoning, perception),
        }
    }
}
