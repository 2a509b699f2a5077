//! Readers of artifact kinds that several stages consume (stages never import each other).

use super::{StageError, ensure};
use crate::eval::rollout::RolloutRow;
use crate::render::digits::DigitBank;
use crate::table::{self, Table};

/// Reads a rollouts artifact back.
pub fn read_rollouts(t: &Table) -> Result<Vec<RolloutRow>, StageError> {
    let ids = t.required_strings("id")?;
    let samples = t.i32("sample")?;
    let tasks = t.required_strings("task")?;
    let texts = t.required_strings("text")?;
    let ps = t.strings("perception")?;
    let rs = t.strings("reasoning")?;
    let pe = t.strings("perception_error")?;
    let re = t.strings("reasoning_error")?;
    let toks = t.int_lists("token_ids")?;
    let lps = t.f32_lists("logprobs")?;
    let pt = t.i32("perception_tokens")?;
    let rt = t.i32("reasoning_tokens")?;
    let nt = t.i32("new_tokens")?;
    let tr = t.bool("truncated")?;
    let count = |v: i32, what: &str, i: usize| {
        usize::try_from(v)
            .map_err(|_| StageError::Invalid(format!("rollouts row {i}: negative {what} {v}")))
    };
    (0..t.rows())
        .map(|i| {
            let token_ids = toks[i]
                .iter()
                .map(|&x| u32::try_from(x))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| StageError::Invalid(format!("rollouts row {i}: negative token id")))?;
            ensure!(
                token_ids.len() == lps[i].len(),
                "rollouts row {i}: {} token ids but {} log-probabilities",
                token_ids.len(),
                lps[i].len()
            );
            Ok(RolloutRow {
                id: ids[i].clone(),
                sample: count(samples.value(i), "sample", i)?,
                task: tasks[i].clone(),
                text: texts[i].clone(),
                perception: ps[i].clone(),
                reasoning: rs[i].clone(),
                perception_error: pe[i].clone(),
                reasoning_error: re[i].clone(),
                token_ids,
                logprobs: lps[i].clone(),
                perception_tokens: count(pt.value(i), "perception_tokens", i)?,
                reasoning_tokens: count(rt.value(i), "reasoning_tokens", i)?,
                new_tokens: count(nt.value(i), "new_tokens", i)?,
                truncated: tr.value(i),
            })
        })
        .collect()
}

/// Reads a digits artifact back into a bank, with its source label.
pub fn load_bank(t: &table::Table) -> Result<(DigitBank, String), StageError> {
    let digit = t.i32("digit")?;
    let pixels = t.binary("pixels")?;
    let source = t.utf8("source")?;
    let mut bank = DigitBank::default();
    for i in 0..t.rows() {
        let d = digit.value(i);
        let px = pixels.value(i);
        if !(0..10).contains(&d) || px.len() != crate::render::digits::PIXELS {
            return Err(StageError::Invalid(format!(
                "digits row {i}: bad digit or image size"
            )));
        }
        bank.by_digit[d as usize].push(px.to_vec());
    }
    let label = if t.rows() > 0 {
        source.value(0).to_string()
    } else {
        String::new()
    };
    Ok((bank, label))
}
