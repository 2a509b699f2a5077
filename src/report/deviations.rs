//! Where a grid's setup departs from the paper's, with the grid's own numbers: what a reader
//! must keep in mind before comparing a finding with the paper's.

use super::Results;

/// One line per departure the grid's numbers show (none for an empty grid).
pub fn deviations(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(n) = r.sft.iter().map(|x| x.acc.items).max() {
        out.push(format!(
            "SFT variants are evaluated on {n} test items (the paper: 500); the smallest \
             difference a comparison could detect is printed beside each paired finding"
        ));
    }
    if let Some(n) = r.rl.iter().map(|x| x.end.items).max() {
        out.push(format!(
            "RL runs are evaluated on {n} items, without per-item scores, so RL comparisons are \
             unpaired"
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
    if r.lambda_runs(false).len() > 1 || r.rl.len() > 1 {
        out.push(
            "the best λ and the best α are chosen on the test items they are reported on, not \
             on a validation split, which favours them"
                .into(),
        );
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
    if r.pool.iter().any(|p| p.reward == "clip") {
        out.push(
            "the CLIP reward is a small dual encoder trained on the task's own (image, p*) pairs, \
             not OpenAI's CLIP"
                .into(),
        );
    }
    out
}
