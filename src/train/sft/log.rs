//! The SFT loop's logs as rows: the deterministic training log (`train_log`) and the
//! wall-clock timing kept apart from it, with the training log's table columns
//! (`schemas/train_log.json`) and its reader.

use super::EvalPoint;
use crate::table::{Result, Table, TableError, cols};
use arrow::array::{Array, ArrayRef};
use serde::{Deserialize, Serialize};

/// One row of the training log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogRow {
    pub step: usize,
    pub loss: f64,
    pub loss_perception: f64,
    pub loss_reasoning: f64,
    pub perception_token_share: f64,
    pub perception_loss_share: f64,
    /// ‖g_p‖ / (‖g_p‖ + ‖g_r‖), each gradient under the objective being trained restricted to
    /// the perception or the reasoning tokens (diagnostic steps).
    pub perception_grad_share: Option<f64>,
    /// Mean perception cross-entropy with the image blanked (diagnostic steps): how much the
    /// model's transcription relies on the image.
    pub loss_perception_blank: Option<f64>,
    pub lambda: Option<f64>,
    pub lr: f64,
    /// Global L2 norm of the step's gradient before clipping.
    pub grad_norm: f64,
    /// The standard objective's loss on the validation examples (early stopping's checks).
    pub val_loss: Option<f64>,
    pub eval: Option<EvalPoint>,
}

/// Wall-clock measurements (kept apart from the deterministic log).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimingRow {
    pub step: usize,
    pub seconds: f64,
    pub tokens: usize,
}

impl LogRow {
    /// The `train_log` table's columns for `log` (`schemas/train_log.json`), but for the
    /// run-level `overlong_dropped`.
    pub fn columns(log: &[LogRow]) -> Vec<(&'static str, ArrayRef)> {
        let f = |g: &dyn Fn(&LogRow) -> f64| cols::f64(log.iter().map(g).collect());
        let opt = |g: &dyn Fn(&LogRow) -> Option<f64>| cols::f64_opt(log.iter().map(g).collect());
        vec![
            (
                "step",
                cols::i32(log.iter().map(|r| r.step as i32).collect()),
            ),
            ("loss", f(&|r| r.loss)),
            ("loss_perception", f(&|r| r.loss_perception)),
            ("loss_reasoning", f(&|r| r.loss_reasoning)),
            ("perception_token_share", f(&|r| r.perception_token_share)),
            ("perception_loss_share", f(&|r| r.perception_loss_share)),
            ("perception_grad_share", opt(&|r| r.perception_grad_share)),
            ("loss_perception_blank", opt(&|r| r.loss_perception_blank)),
            ("lambda", opt(&|r| r.lambda)),
            ("lr", f(&|r| r.lr)),
            ("grad_norm", f(&|r| r.grad_norm)),
            ("val_loss", opt(&|r| r.val_loss)),
            ("eval_a_p", opt(&|r| r.eval.map(|e| e.a_p))),
            ("eval_a_r", opt(&|r| r.eval.map(|e| e.a_r))),
            ("eval_a", opt(&|r| r.eval.map(|e| e.a))),
            ("eval_a_tilde_r", opt(&|r| r.eval.map(|e| e.a_tilde_r))),
            ("eval_a_given_p", opt(&|r| r.eval.and_then(|e| e.a_given_p))),
            ("eval_truncated", opt(&|r| r.eval.map(|e| e.truncated))),
        ]
    }

    /// Reads a `train_log` table back; a row has an evaluation where its `eval_a_p` is set.
    pub fn read_all(t: &Table) -> Result<Vec<LogRow>> {
        let at = |name: &str| t.f64(name);
        let (step, loss, lp, lr_) = (
            t.i32("step")?,
            at("loss")?,
            at("loss_perception")?,
            at("loss_reasoning")?,
        );
        let (ts, ls, gs) = (
            at("perception_token_share")?,
            at("perception_loss_share")?,
            at("perception_grad_share")?,
        );
        let (blank, lambda, lr, norm) = (
            at("loss_perception_blank")?,
            at("lambda")?,
            at("lr")?,
            at("grad_norm")?,
        );
        let (ea_p, ea_r, ea, eat, eag, etr) = (
            at("eval_a_p")?,
            at("eval_a_r")?,
            at("eval_a")?,
            at("eval_a_tilde_r")?,
            at("eval_a_given_p")?,
            at("eval_truncated")?,
        );
        let get = |a: &arrow::array::Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        // Logs written before early stopping have no `val_loss` column.
        let val_loss = if t.column_names().iter().any(|c| c == "val_loss") {
            Some(at("val_loss")?)
        } else {
            None
        };
        let set = |a: &arrow::array::Float64Array, name: &str, i: usize| {
            get(a, i).ok_or_else(|| TableError::Column {
                kind: "train_log".into(),
                column: name.into(),
                msg: format!("row {i} has `eval_a_p` but no `{name}`"),
            })
        };
        (0..t.rows())
            .map(|i| {
                let eval = match get(ea_p, i) {
                    None => None,
                    Some(a_p) => Some(EvalPoint {
                        a_p,
                        a_r: set(ea_r, "eval_a_r", i)?,
                        a: set(ea, "eval_a", i)?,
                        a_tilde_r: set(eat, "eval_a_tilde_r", i)?,
                        a_given_p: get(eag, i),
                        truncated: set(etr, "eval_truncated", i)?,
                    }),
                };
                Ok(LogRow {
                    step: step.value(i).max(0) as usize,
                    loss: loss.value(i),
                    loss_perception: lp.value(i),
                    loss_reasoning: lr_.value(i),
                    perception_token_share: ts.value(i),
                    perception_loss_share: ls.value(i),
                    perception_grad_share: get(gs, i),
                    loss_perception_blank: get(blank, i),
                    lambda: get(lambda, i),
                    lr: lr.value(i),
                    grad_norm: norm.value(i),
                    val_loss: val_loss.and_then(|v| get(v, i)),
                    eval,
                })
            })
            .collect()
    }
}

/// The row of `log` whose perception shares describe the run: the last diagnostic step (the
/// one that measured the gradient share), or the last step when none did.
pub fn last_diagnostic(log: &[LogRow]) -> Option<&LogRow> {
    log.iter()
        .rev()
        .find(|r| r.perception_grad_share.is_some())
        .or(log.last())
}
