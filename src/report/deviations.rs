//! Where a grid's setup departs from the paper's, with the grid's own numbers: what a reader
//! must keep in mind before comparing a finding with the paper's.

use super::{Results, Selection, SftRole};

/// One line per departure the grid's numbers show (none for an empty grid).
pub fn deviations(r: &Results) -> Vec<String> {
    let mut out = r.setup.deviations();
    if let Some(start) = r.sft.iter().find(|x| x.role == SftRole::Start) {
        let a = &start.acc;
        out.push(format!(
            "the SFT variants' start checkpoint (`{}`) scores a = {:.3}, a_p = {:.3}, a_r = {:.3} \
             on {} test items (the paper's base models: near zero on both segments)",
            start.source.instance, a.a.mean, a.a_p.mean, a.a_r.mean, a.items
        ));
    }
    if let Some(n) = r.sft.iter().map(|x| x.acc.items).max() {
        out.push(format!(
            "SFT variants are evaluated on {n} test items (the paper: 500); the smallest \
             difference a comparison could detect is printed beside each paired finding"
        ));
    }
    if let Some(n) = r.rl.iter().map(|x| x.arm().acc.items).max() {
        let unpaired = r.rl.iter().filter(|x| x.arm().items.is_none()).count();
        let how = if unpaired == 0 && r.rl_start.as_ref().is_some_and(|s| s.items.is_some()) {
            ", with per-item scores (comparisons paired)".to_string()
        } else {
            format!(
                "; {unpaired} of {} without per-item scores (their comparisons unpaired, by \
                 the loop's greedy evaluation)",
                r.rl.len()
            )
        };
        out.push(format!(
            "RL runs are evaluated on {n} items (the paper: 500){how}"
        ));
    }
    if let Some(s) = r.shares.first() {
        out.push(format!(
            "perception is {:.1} % of the SFT target tokens, {:.1} % of the loss (the paper: \
             2.2–2.5 % and 1.3 %)",
            100.0 * s.tokens,
            100.0 * s.loss
        ));
    }
    let on_test: Vec<&str> = [
        ("λ", r.best_lambda_choice().map(|x| x.1)),
        ("α", r.best_alpha().map(|x| x.1)),
    ]
    .into_iter()
    .filter(|(_, how)| matches!(how, Some(Selection::Test)))
    .map(|x| x.0)
    .collect();
    if !on_test.is_empty() {
        out.push(format!(
            "the best {} chosen on the test items reported on, not on a validation split \
             (wire `val_evals`), which favours it",
            on_test.join(" and the best ")
        ));
    }
    if let Some(t) = r
        .pool
        .iter()
        .find(|p| p.reward == "teacher" && p.against == "a_p")
    {
        let own = t.own_a_p.map_or(String::new(), |a| {
            format!(", whose own a_p on the pool is {a:.3}")
        });
        out.push(format!(
            "the teacher is a checkpoint of this toolkit{own} (the paper's teacher, Gemini, \
             perceives far better than its policies: r with a_p 0.96)"
        ));
    }
    if let Some(u) = r
        .pool
        .iter()
        .find(|p| p.reward.starts_with("self_") && p.against == "a_p")
        .and_then(|p| p.unread)
    {
        out.push(format!(
            "the self-reward's re-rollouts read the perception with a blank image, input the \
             model never saw in training (the paper's VLMs read text alone natively): {:.1} % of \
             them end without a readable reasoning segment and score 0",
            100.0 * u
        ));
    }
    if r.pool.iter().any(|p| p.reward == "clip") {
        out.push(
            "the CLIP reward is a small dual encoder trained on the task's own (image, p*) pairs, \
             not OpenAI's CLIP"
                .into(),
        );
    }
    out
}
