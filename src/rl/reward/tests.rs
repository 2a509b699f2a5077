use super::*;

const P: &str = "nodes 3\nedges 0-1 1-2";
const WRONG: &str = "nodes 3\nedges 0-2";

fn row(id: &str, sample: usize, p: Option<&str>, r: Option<&str>) -> RolloutRow {
    RolloutRow {
        id: id.into(),
        sample,
        task: "graph_coloring".into(),
        text: String::new(),
        perception: p.map(String::from),
        reasoning: r.map(String::from),
        perception_error: None,
        reasoning_error: None,
        token_ids: vec![],
        logprobs: vec![],
        perception_tokens: 0,
        reasoning_tokens: 0,
        new_tokens: 0,
        truncated: false,
    }
}

/// A reasoner that solves the puzzle its perception describes, right with a fixed pattern
/// over re-rollouts (`pattern[k % len]`), otherwise answering nonsense.
struct Solver {
    pattern: Vec<bool>,
    calls: usize,
}

impl Reasoner for Solver {
    fn reason(&mut self, queries: &[Query], n: usize) -> Result<Vec<Vec<Option<String>>>> {
        self.calls += queries.len() * n;
        Ok(queries
            .iter()
            .map(|q| {
                (0..n)
                    .map(|k| {
                        let g = crate::tasks::graph_coloring::Graph::parse(q.perception)?;
                        let (_, colors) = crate::tasks::graph_coloring::chromatic(&g);
                        Some(if self.pattern[k % self.pattern.len()] {
                            crate::tasks::graph_coloring::answer_line(&colors)
                        } else {
                            "answer".to_string()
                        })
                    })
                    .collect()
            })
            .collect())
    }
}

fn truth() -> HashMap<String, String> {
    [("g".to_string(), P.to_string())].into()
}

/// A reasoner that never finishes: every re-rollout is cut by the token budget.
struct Rambler;

impl Reasoner for Rambler {
    fn reason(&mut self, queries: &[Query], n: usize) -> Result<Vec<Vec<Option<String>>>> {
        Ok(queries.iter().map(|_| vec![None; n]).collect())
    }
}

/// Re-rollouts without an answer score 0 and are counted, so that a self-reward that is 0
/// because its reasoner cannot finish is told apart from one whose perceptions are wrong.
#[test]
fn self_rewards_count_re_rollouts_without_an_answer() {
    let rows = vec![row("g", 0, Some(P), None), row("g", 1, None, None)];
    let s = self_rewards(&rows, &truth(), 4, &mut Rambler).unwrap();
    assert_eq!(
        s[0],
        SelfScore {
            first: 0.0,
            mean: 0.0,
            unread: Some(1.0)
        }
    );
    // Nothing was re-rolled for an unreadable perception: no share to report.
    assert_eq!(s[1].unread, None);
}

/// With the perception p* the self-reward is the reasoner's accuracy on p* (its reasoning
/// accuracy): here 3 of 4 re-rollouts right, and the first one right.
#[test]
fn self_reward_with_a_perfect_perception_is_the_reasoning_accuracy() {
    let mut solver = Solver {
        pattern: vec![true, false, true, true, false],
        calls: 0,
    };
    let rows = vec![
        row("g", 0, Some(P), None),
        row("g", 1, Some(WRONG), None),
        row("g", 2, None, None),
    ];
    let s = self_rewards(&rows, &truth(), 4, &mut solver).unwrap();
    let pairs = |s: &[SelfScore]| s.iter().map(|x| (x.first, x.mean)).collect::<Vec<_>>();
    assert_eq!(pairs(&s)[0], (1.0, 0.75));
    // The solver's answer for the graph missing an edge colors 1 and 2 alike: wrong for p*.
    assert_eq!(pairs(&s)[1], (0.0, 0.0));
    // No readable perception: 0, and no re-rollouts were spent on it.
    assert_eq!(s[2], SelfScore::default());
    // Every re-rollout of the readable perceptions had an answer line.
    assert_eq!(s[0].unread, Some(0.0));
    assert_eq!(solver.calls, 8);
    solver.calls = 0;
    // N = 5: the fifth re-rollout is wrong; N = 1 is the first one alone.
    let s = self_rewards(&rows, &truth(), 5, &mut solver).unwrap();
    assert_eq!((s[0].first, s[0].mean), (1.0, 0.6));
    // A perfect reasoner's self-reward is a_p on these rows.
    let mut perfect = Solver {
        pattern: vec![true],
        calls: 0,
    };
    let s = self_rewards(&rows, &truth(), 1, &mut perfect).unwrap();
    assert_eq!(
        s.iter().map(|x| x.mean).collect::<Vec<_>>(),
        [1.0, 0.0, 0.0]
    );
}

#[test]
fn composition_keeps_every_component() {
    let rows = vec![
        // Right perception, right answer.
        row("g", 0, Some(P), Some("answer 0:1 1:2 2:1")),
        // Wrong perception, answer consistent with it (ã_r) but not with p*.
        row("g", 1, Some(WRONG), Some("answer 0:1 1:2 2:2")),
        // Right perception, wrong answer.
        row("g", 2, Some(P), Some("answer 0:1 1:1 2:1")),
    ];
    let selfs = [(1.0, 1.0), (0.0, 0.25), (1.0, 0.5)].map(|(first, mean)| SelfScore {
        first,
        mean,
        unread: Some(0.5),
    });
    let transcripts: HashMap<String, Option<String>> =
        [("g".to_string(), Some(P.to_string()))].into();
    let teacher = teacher_rewards(&rows, &transcripts).unwrap();
    assert_eq!(teacher, [1.0, 0.0, 1.0]);
    let w = RewardWeights::augmented(0.25, Component::GroundTruth).unwrap();
    let sur = Surrogates {
        self_scores: Some((&selfs, 4)),
        teacher: Some(&teacher),
        teacher_transcripts: Some(&transcripts),
        clip: None,
    };
    let out = reward_rows(&rows, &truth(), &w, sur).unwrap();
    let flags: Vec<(bool, bool, bool)> = out.iter().map(|r| (r.a, r.a_p, r.a_tilde_r)).collect();
    assert_eq!(
        flags,
        [
            (true, true, true),
            (false, false, true),
            (false, true, false)
        ]
    );
    assert_eq!(
        out.iter().map(|r| r.reward).collect::<Vec<_>>(),
        [1.0, 0.0, 0.25]
    );
    assert_eq!(out[1].self_mean, Some(0.25));
    assert_eq!(out[1].self_unread, Some(0.5));
    assert_eq!(out[2].teacher, Some(1.0));
    // The teacher read the item right: its own a_p is 1 on every row of it.
    assert!(out.iter().all(|r| r.teacher_a_p == Some(1.0)));
    let misread: HashMap<String, Option<String>> =
        [("g".to_string(), Some(WRONG.to_string()))].into();
    let sur = Surrogates {
        teacher_transcripts: Some(&misread),
        ..Surrogates::default()
    };
    let out2 = reward_rows(&rows, &truth(), &RewardWeights::outcome(), sur).unwrap();
    assert!(out2.iter().all(|r| r.teacher_a_p == Some(0.0)));
    assert_eq!(out[0].self_n, 4);
    let outcome = reward_rows(
        &rows,
        &truth(),
        &RewardWeights::outcome(),
        Surrogates::default(),
    )
    .unwrap();
    assert_eq!(
        outcome.iter().map(|r| r.reward).collect::<Vec<_>>(),
        [1.0, 0.0, 0.0]
    );
    let s = RewardWeights::augmented(0.5, Component::SelfReward).unwrap();
    let only_self = Surrogates {
        self_scores: Some((&selfs, 4)),
        ..Surrogates::default()
    };
    let out = reward_rows(&rows, &truth(), &s, only_self).unwrap();
    assert_eq!(
        out.iter().map(|r| r.reward).collect::<Vec<_>>(),
        [1.0, 0.125, 0.25]
    );
    // A reward that needs a component not computed is refused.
    assert!(reward_rows(&rows, &truth(), &s, Surrogates::default()).is_err());
    assert!(RewardWeights::augmented(1.5, Component::Teacher).is_err());
}

/// The CLIP reward is the similarity of the perceptions that can be scored, in row order,
/// and −1 (counted) for one that cannot be read or is longer than the encoder reads.
#[test]
fn clip_rewards_score_readable_perceptions_and_count_the_rest() {
    let tok = Tokenizer::task_vocabulary();
    let long = format!("{P}\n{P}\n{P}");
    let rows = vec![
        row("g", 0, Some(P), None),
        row("g", 1, None, None),
        row("g", 2, Some(&long), None),
        row("g", 3, Some(WRONG), None),
    ];
    let max = tok.encode(P).len();
    let mut seen = Vec::new();
    let mut sim = |q: &[(usize, Vec<u32>)]| -> Result<Vec<f64>> {
        seen = q.to_vec();
        Ok(q.iter().map(|(i, _)| 0.25 * *i as f64).collect())
    };
    let (r, unscored) = clip_rewards(&rows, &tok, max, &mut sim).unwrap();
    assert_eq!(r, [0.0, -1.0, -1.0, 0.75]);
    assert_eq!(unscored, 2);
    assert_eq!(seen[0], (0, tok.encode(P)));
    assert_eq!(seen[1], (3, tok.encode(WRONG)));
    // A scorer that answers for fewer queries is an error, not a silent zero.
    let mut short = |_: &[(usize, Vec<u32>)]| -> Result<Vec<f64>> { Ok(vec![0.5]) };
    assert!(clip_rewards(&rows, &tok, max, &mut short).is_err());
}
