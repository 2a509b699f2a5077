//! Readers of artifact kinds that several stages consume (stages never import each other).

use super::{StageError, ensure};
use crate::eval::rollout::{Mode, RolloutRow};
use crate::render::digits::DigitBank;
use crate::rl::reward::RewardRow;
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

/// The sampling mode and temperature of a rollouts artifact (one of each per artifact).
pub fn read_sampling(t: &Table) -> Result<Option<(Mode, f32)>, StageError> {
    let modes = t.required_strings("mode")?;
    let temps = t.f32("temperature")?;
    let mut out: Option<(Mode, f32)> = None;
    for (i, m) in modes.iter().enumerate() {
        let mode = [Mode::Standard, Mode::Counterfactual, Mode::TextOnly]
            .into_iter()
            .find(|x| x.name() == m)
            .ok_or_else(|| StageError::Invalid(format!("rollouts row {i}: unknown mode `{m}`")))?;
        let temp = temps.value(i);
        match out {
            None => out = Some((mode, temp)),
            Some(o) => ensure!(
                o == (mode, temp),
                "rollouts mix modes or temperatures: {} at {} and {m} at {temp} (row {i})",
                o.0.name(),
                o.1
            ),
        }
    }
    Ok(out)
}

/// Reads a `rewards` artifact back.
pub fn read_rewards(t: &crate::table::Table) -> Result<Vec<RewardRow>, StageError> {
    let ids = t.required_strings("id")?;
    let samples = t.i32("sample")?;
    let tasks = t.required_strings("task")?;
    let (a, a_p, a_tr) = (t.bool("a")?, t.bool("a_p")?, t.bool("a_tilde_r")?);
    let (first, mean) = (t.f64("self_first")?, t.f64("self_mean")?);
    let n = t.i32("self_samples")?;
    let unread = t.f64("self_unread")?;
    let teacher = t.f64("teacher")?;
    let teacher_a_p = t.f64("teacher_a_p")?;
    let clip = t.f64("clip")?;
    let reward = t.f64("reward")?;
    use arrow::array::Array;
    let opt = |c: &arrow::array::Float64Array, i: usize| (!c.is_null(i)).then(|| c.value(i));
    (0..t.rows())
        .map(|i| {
            Ok(RewardRow {
                id: ids[i].clone(),
                sample: usize::try_from(samples.value(i)).map_err(|_| {
                    StageError::Invalid(format!("rewards row {i}: negative sample"))
                })?,
                task: tasks[i].clone(),
                a: a.value(i),
                a_p: a_p.value(i),
                a_tilde_r: a_tr.value(i),
                self_first: opt(first, i),
                self_mean: opt(mean, i),
                self_unread: opt(unread, i),
                self_n: n.value(i).max(0) as usize,
                teacher: opt(teacher, i),
                teacher_a_p: opt(teacher_a_p, i),
                clip: opt(clip, i),
                reward: reward.value(i),
            })
        })
        .collect()
}
