//! The grid's own setup — data, traces, model, SFT and RL settings, evaluation sampling — as the
//! configs recorded in its artifacts' manifests give it, and each place it departs from the
//! paper's (Table 5; Appendix B.1, Tables 6 and 7; "Inference and evaluation").

use std::collections::BTreeMap;

/// The paper's setup, as its appendix states it.
pub mod paper {
    /// Table 5: test items, SFT training items, RL training prompts per task.
    pub const TEST: usize = 500;
    pub const SFT_TRAIN: usize = 2_000;
    pub const RL_TRAIN: usize = 16_000;
    /// Table 6 (LlamaFactory): effective batch 8, lr 1e-6, cosine, warmup 0.1, 500 steps.
    pub const SFT_BATCH: usize = 8;
    pub const SFT_LR: f64 = 1e-6;
    pub const SFT_WARMUP: f64 = 0.1;
    pub const SFT_STEPS: usize = 500;
    /// Table 7 (verl, Qwen): 128 prompts a step, lr 1e-6, mini-batch 128, KL loss 0.01, 100
    /// steps.
    pub const RL_PROMPTS: usize = 128;
    pub const RL_LR: f64 = 1e-6;
    pub const RL_MINI_BATCH: usize = 128;
    pub const RL_KL: f64 = 0.01;
    pub const RL_STEPS: usize = 100;
    /// "Inference and evaluation": vLLM at temperature 0.7, top-p 1.0.
    pub const EVAL_TEMPERATURE: f64 = 0.7;
}

/// The puzzles: what they are and how many each split has.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    /// `sudoku, 75 givens` or `graph coloring, 7–9 nodes`.
    pub task: String,
    pub sft: usize,
    pub rl: usize,
    pub test: usize,
    pub val: usize,
    /// Where the digits come from (`strokes`, `mnist`), for Sudoku.
    pub digits: Option<String>,
}

/// One SFT run's settings, with the run it starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct SftRun {
    pub instance: String,
    /// The model preset or checkpoint folder it builds when it starts without `init`.
    pub model: String,
    /// `model` is a pretrained checkpoint folder, not a preset initialised afresh.
    pub pretrained: bool,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: f64,
    /// Stops on the standard objective's validation loss (`early_stop`).
    pub early_stop: bool,
    /// The trace verbosity of its data.
    pub verbosity: Option<u8>,
    /// The instance whose checkpoint it starts from (`None`: from `model`).
    pub init: Option<String>,
}

/// One RL run's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RlRun {
    pub instance: String,
    pub steps: usize,
    pub prompts: usize,
    pub samples: usize,
    pub temperature: f64,
    pub lr: f64,
    pub kl_coef: f64,
    pub mini_batch: usize,
    pub ppo_epochs: usize,
    /// The checkpoint its first step samples from (the producing instance).
    pub start: Option<String>,
}

/// How an evaluation's standard rollouts sample.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSampling {
    pub instance: String,
    /// 0 = greedy.
    pub temperature: f64,
    pub samples: usize,
}

/// Everything the report knows of the grid's setup; what its artifacts did not record stays
/// empty and produces no line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Setup {
    pub data: Option<Data>,
    /// The SFT variants (the report's training logs).
    pub sft: Vec<SftRun>,
    /// The runs the variants start from, by instance (their `init` chains).
    pub bases: BTreeMap<String, SftRun>,
    pub rl: Vec<RlRun>,
    pub evals: Vec<EvalSampling>,
}

fn lr(v: f64) -> String {
    format!("{v:e}")
}

/// "`a`" or "3 runs (`a`, `b`, `c`)" for a group of instances; past four, the first three
/// and how many more.
fn named(instances: &[&str]) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("`{i}`")).collect();
    match list.len() {
        1 => list[0].clone(),
        n if n <= 4 => format!("{n} runs ({})", list.join(", ")),
        n => format!("{n} runs ({}, and {} more)", list[..3].join(", "), n - 3),
    }
}

/// "1 sample", "4 samples".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The runs as the subject of `verb`: "`a` trains", "2 runs (`a`, `b`) train".
fn subject(instances: &[&str], verb: &str) -> String {
    let s = if instances.len() == 1 { "s" } else { "" };
    format!("{} {verb}{s}", named(instances))
}

/// Groups items by a description of their settings, keeping the first appearance's order.
fn grouped<T>(items: &[T], key: impl Fn(&T) -> String) -> Vec<(String, Vec<&T>)> {
    let mut out: Vec<(String, Vec<&T>)> = Vec::new();
    for it in items {
        let k = key(it);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(it),
            None => out.push((k, vec![it])),
        }
    }
    out
}

impl SftRun {
    /// "`sft` 850 steps at verbosity 0" (at most, when it stops early).
    fn describe(&self) -> String {
        let v = self
            .verbosity
            .map_or(String::new(), |v| format!(" at verbosity {v}"));
        let most = if self.early_stop { "at most " } else { "" };
        format!("`{}` {most}{} steps{v}", self.instance, self.steps)
    }

    fn schedule(&self) -> String {
        let shape = if self.min_lr == self.lr {
            format!("constant lr {}", lr(self.lr))
        } else {
            format!("lr {} → {} (cosine)", lr(self.lr), lr(self.min_lr))
        };
        let warm = if self.warmup > 0.0 {
            format!(", warmup {}", self.warmup)
        } else {
            String::new()
        };
        let stop = if self.early_stop {
            format!(
                "at most {} steps, stopping on the validation loss",
                self.steps
            )
        } else {
            format!("{} steps", self.steps)
        };
        format!("{stop}, batch {}, {shape}{warm}", self.batch)
    }

    fn differs_from_paper(&self) -> bool {
        self.steps != paper::SFT_STEPS
            || self.batch != paper::SFT_BATCH
            || self.lr != paper::SFT_LR
            || self.min_lr != 0.0
            || self.warmup != paper::SFT_WARMUP
    }
}

impl Setup {
    /// The chain of runs `run` starts from, nearest first.
    fn ancestors<'a>(&'a self, run: &'a SftRun) -> Vec<&'a SftRun> {
        let mut out = Vec::new();
        let mut at = run.init.as_deref();
        while let Some(name) = at {
            let Some(base) = self.bases.get(name) else {
                break;
            };
            if out.iter().any(|b: &&SftRun| b.instance == base.instance) {
                break;
            }
            out.push(base);
            at = base.init.as_deref();
        }
        out
    }

    /// Where `run` starts: a fresh model, a pretrained checkpoint, or a checkpoint another
    /// stage wrote, trained further by the chain of SFT runs before it.
    fn start_of(&self, run: &SftRun) -> String {
        let chain = self.ancestors(run);
        let root = chain.last().copied().unwrap_or(run);
        let origin = match (&root.init, root.pretrained) {
            (Some(other), _) => format!("the checkpoint of `{other}`"),
            (None, true) => format!("the pretrained checkpoint `{}`", root.model),
            (None, false) => format!("a freshly initialised `{}`", root.model),
        };
        if chain.is_empty() {
            return format!("from {origin}");
        }
        let trained: Vec<String> = chain.iter().rev().map(|b| b.describe()).collect();
        format!(
            "from {origin} trained on the task itself ({})",
            trained.join(", then ")
        )
    }

    /// Where an RL run that starts from `start` starts: an SFT variant of the report, or a
    /// run before them.
    fn rl_start(&self, start: &str) -> String {
        if let Some(v) = self.sft.iter().find(|r| r.instance == start) {
            return format!("from the SFT variant `{}`", v.instance);
        }
        match self.bases.get(start) {
            Some(b) => format!(
                "from {}, a run the SFT variants build on, not from an SFT variant",
                b.describe()
            ),
            None => format!("from `{start}`"),
        }
    }

    /// One line per departure from the paper's setup, each with the grid's and the paper's
    /// values.
    pub fn deviations(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.data_lines(&mut out);
        self.sft_lines(&mut out);
        self.rl_lines(&mut out);
        self.eval_lines(&mut out);
        out
    }

    /// Split sizes against Table 5, and the digits.
    fn data_lines(&self, out: &mut Vec<String>) {
        if let Some(d) = &self.data {
            let mut sizes = Vec::new();
            if d.sft != paper::SFT_TRAIN {
                sizes.push(format!(
                    "{} SFT training puzzles (the paper: {})",
                    d.sft,
                    paper::SFT_TRAIN
                ));
            }
            if d.rl != paper::RL_TRAIN {
                sizes.push(format!(
                    "{} RL prompts (the paper: {})",
                    d.rl,
                    paper::RL_TRAIN
                ));
            }
            if d.test != paper::TEST {
                sizes.push(format!(
                    "{} test puzzles (the paper: {})",
                    d.test,
                    paper::TEST
                ));
            }
            if !sizes.is_empty() {
                out.push(format!("data ({}): {}", d.task, sizes.join(", ")));
            }
            if let Some(src) = d.digits.as_deref().filter(|s| !s.starts_with("mnist")) {
                out.push(format!(
                    "Sudoku digits are drawn from `{src}`, not MNIST (the paper renders MNIST \
                     digits)"
                ));
            }
        }
    }

    /// Where the SFT variants start, their traces, and their settings against Table 6.
    fn sft_lines(&self, out: &mut Vec<String>) {
        if !self.sft.is_empty() {
            for (start, runs) in grouped(&self.sft, |r| self.start_of(r)) {
                let names: Vec<&str> = runs.iter().map(|r| r.instance.as_str()).collect();
                out.push(format!(
                    "model: {} {start} (the paper: pretrained 2B VLMs, Qwen3-VL-2B and \
                     InternVL3.5-2B, near zero on the task)",
                    subject(&names, "start")
                ));
            }
            let verbosities: Vec<String> = self
                .sft
                .iter()
                .filter_map(|s| s.verbosity)
                .map(|v| v.to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if !verbosities.is_empty() {
                out.push(format!(
                    "traces: the solver's own steps at verbosity {} (the paper: traces distilled \
                     from a text-only RL model)",
                    verbosities.join(", ")
                ));
            }
            for (settings, runs) in grouped(&self.sft, SftRun::schedule) {
                if runs.iter().any(|r| r.differs_from_paper()) {
                    let names: Vec<&str> = runs.iter().map(|r| r.instance.as_str()).collect();
                    out.push(format!(
                        "SFT: {} {settings} (the paper, Table 6: {} steps, batch {}, lr {} \
                         cosine, warmup {})",
                        subject(&names, "train"),
                        paper::SFT_STEPS,
                        paper::SFT_BATCH,
                        lr(paper::SFT_LR),
                        paper::SFT_WARMUP
                    ));
                }
            }
        }
    }

    /// The RL runs' settings against Table 7, and where they start.
    fn rl_lines(&self, out: &mut Vec<String>) {
        let rl_settings = |r: &RlRun| {
            format!(
                "{} steps of {} prompts × {} samples at T = {}, lr {}, KL {}, mini-batch {}{}",
                r.steps,
                r.prompts,
                r.samples,
                r.temperature,
                lr(r.lr),
                r.kl_coef,
                r.mini_batch,
                if r.ppo_epochs == 1 {
                    String::new()
                } else {
                    format!(", {} epochs a step", r.ppo_epochs)
                }
            )
        };
        for (settings, runs) in grouped(&self.rl, rl_settings) {
            let r = runs[0];
            let same = r.steps == paper::RL_STEPS
                && r.prompts == paper::RL_PROMPTS
                && r.lr == paper::RL_LR
                && r.kl_coef == paper::RL_KL
                && r.mini_batch == paper::RL_MINI_BATCH
                && r.ppo_epochs == 1;
            if !same {
                let names: Vec<&str> = runs.iter().map(|r| r.instance.as_str()).collect();
                out.push(format!(
                    "RL: {} {settings} (the paper, Table 7: {} steps of {} prompts, lr {}, KL \
                     loss {}, mini-batch {})",
                    subject(&names, "run"),
                    paper::RL_STEPS,
                    paper::RL_PROMPTS,
                    lr(paper::RL_LR),
                    paper::RL_KL,
                    paper::RL_MINI_BATCH
                ));
            }
        }
        for (start, runs) in grouped(&self.rl, |r| {
            r.start.as_ref().map_or(String::new(), |s| self.rl_start(s))
        }) {
            if start.is_empty() {
                continue;
            }
            let names: Vec<&str> = runs.iter().map(|r| r.instance.as_str()).collect();
            out.push(format!(
                "RL start: {} {start} (the paper: from SFT checkpoints with matched perception \
                 and reasoning accuracies)",
                subject(&names, "start")
            ));
        }
    }

    /// How the evaluations sample, against the paper's T = 0.7.
    fn eval_lines(&self, out: &mut Vec<String>) {
        let sampling = |e: &EvalSampling| {
            if e.temperature == 0.0 {
                format!("greedily, {} an item", count(e.samples, "output"))
            } else {
                format!(
                    "at T = {}, {} an item",
                    e.temperature,
                    count(e.samples, "sample")
                )
            }
        };
        let groups = grouped(&self.evals, sampling);
        let paper_like = |e: &EvalSampling| e.temperature == paper::EVAL_TEMPERATURE;
        if groups.len() > 1 || self.evals.iter().any(|e| !paper_like(e)) {
            let parts: Vec<String> = groups
                .iter()
                .map(|(how, runs)| {
                    let names: Vec<&str> = runs.iter().map(|r| r.instance.as_str()).collect();
                    let verb = if runs[0].temperature == 0.0 {
                        "decode"
                    } else {
                        "sample"
                    };
                    format!("{} {how}", subject(&names, verb))
                })
                .collect();
            let mixed = if groups.len() > 1 {
                "; evaluations that sample differently are not comparable"
            } else {
                ""
            };
            out.push(format!(
                "evaluation: {} (the paper: T = {} for every evaluation){mixed}",
                parts.join("; "),
                paper::EVAL_TEMPERATURE
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sft(instance: &str, init: Option<&str>, steps: usize, lr: f64) -> SftRun {
        SftRun {
            instance: instance.into(),
            model: "tiny".into(),
            pretrained: false,
            steps,
            batch: 8,
            lr,
            min_lr: lr,
            warmup: 0.0,
            early_stop: false,
            verbosity: Some(1),
            init: init.map(String::from),
        }
    }

    fn rl(instance: &str, kl: f64) -> RlRun {
        RlRun {
            instance: instance.into(),
            steps: 3,
            prompts: 8,
            samples: 8,
            temperature: 1.0,
            lr: 1e-4,
            kl_coef: kl,
            mini_batch: 64,
            ppo_epochs: 1,
            start: Some("sft".into()),
        }
    }

    fn grid() -> Setup {
        let mut s = Setup {
            data: Some(Data {
                task: "sudoku, 75 givens".into(),
                sft: 4000,
                rl: 1024,
                test: 128,
                val: 64,
                digits: Some("strokes".into()),
            }),
            sft: vec![
                sft("sft_standard", Some("sft_base"), 40, 5e-4),
                sft("sft_lambda[lambda=0.2]", Some("sft_base"), 40, 5e-4),
            ],
            rl: vec![rl("rl[alpha=0]", 0.01), rl("rl[alpha=0.5]", 0.01)],
            evals: vec![EvalSampling {
                instance: "eval_standard".into(),
                temperature: 0.7,
                samples: 1,
            }],
            ..Setup::default()
        };
        let mut base = sft("sft_base", Some("sft"), 300, 1e-3);
        base.verbosity = Some(1);
        let mut root = sft("sft", None, 850, 1e-3);
        root.verbosity = Some(0);
        s.bases.insert("sft_base".into(), base);
        s.bases.insert("sft".into(), root);
        s
    }

    /// Every departure names the grid's value and the paper's; grouped runs are one line.
    #[test]
    fn deviations_name_the_grid_and_the_paper() {
        let d = grid().deviations();
        let has = |s: &str| d.iter().any(|l| l.contains(s));
        assert!(
            has(
                "4000 SFT training puzzles (the paper: 2000), 1024 RL prompts (the paper: 16000), 128 test puzzles (the paper: 500)"
            ),
            "{d:?}"
        );
        assert!(has("drawn from `strokes`, not MNIST"), "{d:?}");
        assert!(
            has(
                "trained on the task itself (`sft` 850 steps at verbosity 0, then `sft_base` 300 steps at verbosity 1)"
            ),
            "{d:?}"
        );
        assert!(
            has(
                "model: 2 runs (`sft_standard`, `sft_lambda[lambda=0.2]`) start from a freshly initialised `tiny` trained on the task itself"
            ),
            "{d:?}"
        );
        assert!(
            has("traces: the solver's own steps at verbosity 1"),
            "{d:?}"
        );
        assert!(
            has(
                "SFT: 2 runs (`sft_standard`, `sft_lambda[lambda=0.2]`) train 40 steps, batch 8, constant lr 5e-4"
            ),
            "{d:?}"
        );
        assert!(
            has(
                "RL: 2 runs (`rl[alpha=0]`, `rl[alpha=0.5]`) run 3 steps of 8 prompts × 8 samples at T = 1, lr 1e-4, KL 0.01, mini-batch 64"
            ),
            "{d:?}"
        );
        assert!(
            has(
                "RL start: 2 runs (`rl[alpha=0]`, `rl[alpha=0.5]`) start from `sft` 850 steps at verbosity 0, a run the SFT variants build on, not from an SFT variant"
            ),
            "{d:?}"
        );
        // Sampled at the paper's temperature: no evaluation line.
        assert!(!has("evaluation:"), "{d:?}");
        assert!(Setup::default().deviations().is_empty());
    }

    /// Runs with other settings get their own line; an evaluation that samples otherwise than
    /// the rest is flagged; settings equal to the paper's produce no line.
    #[test]
    fn deviations_separate_settings_and_flag_mixed_sampling() {
        let mut s = grid();
        s.rl[1].kl_coef = 0.001;
        s.evals.push(EvalSampling {
            instance: "eval_rl".into(),
            temperature: 0.0,
            samples: 1,
        });
        let d = s.deviations();
        let rl_lines = d.iter().filter(|l| l.starts_with("RL:")).count();
        assert_eq!(rl_lines, 2, "{d:?}");
        assert!(
            d.iter()
                .any(|l| l.contains("`eval_rl` decodes greedily") && l.contains("not comparable")),
            "{d:?}"
        );
        let mut paperlike = grid();
        paperlike.data = None;
        paperlike.bases.clear();
        for r in &mut paperlike.sft {
            (r.steps, r.lr, r.min_lr, r.warmup, r.init) = (500, 1e-6, 0.0, 0.1, None);
        }
        for r in &mut paperlike.rl {
            (r.steps, r.prompts, r.lr, r.mini_batch) = (100, 128, 1e-6, 128);
        }
        let d = paperlike.deviations();
        // A pretrained root, a base that stops early, and a start another stage wrote.
        let mut s = grid();
        if let Some(root) = s.bases.get_mut("sft") {
            (root.pretrained, root.model) = (true, "ckpt/qwen".into());
        }
        if let Some(base) = s.bases.get_mut("sft_base") {
            base.early_stop = true;
        }
        s.sft.push(sft("from_rl", Some("rl[alpha=0]"), 40, 5e-4));
        let d2 = s.deviations();
        let has = |t: &str| d2.iter().any(|l| l.contains(t));
        assert!(
            has(
                "from the pretrained checkpoint `ckpt/qwen` trained on the task itself (`sft` 850 steps at verbosity 0, then `sft_base` at most 300 steps at verbosity 1)"
            ),
            "{d2:?}"
        );
        assert!(
            has("`from_rl` starts from the checkpoint of `rl[alpha=0]`"),
            "{d2:?}"
        );
        assert!(
            !d.iter()
                .any(|l| l.starts_with("SFT:") || l.starts_with("RL:")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l.contains("from a freshly initialised `tiny`")),
            "{d:?}"
        );
    }
}
