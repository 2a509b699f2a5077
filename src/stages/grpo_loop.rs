//! The RL loop as a composite stage type: a declaration
//!
//! ```toml
//! [stages.rl]
//! stage = "grpo"
//! inputs = { checkpoint = "sft", data = "distill_format", reference = "sft" }  # + teacher
//! steps = 3
//! rollout = { prompts_per_step = 8, samples = 4 }   # each step's rollout (split "rl", G = 4 by default)
//! reward = { alpha = 0.5, perception = "ground_truth" }
//! update = { lr = 1e-4, kl_coef = 0.01 }
//! eval = { every = 10, items = 64 }                 # held-out evaluation (optional)
//! keep_every = 10                                   # retention (optional)
//! ```
//!
//! expands into per-step instances `rl_k_rollout` → `rl_k_reward` → `rl_k_update` (k from 0),
//! each step sampling from the previous step's checkpoint; the last update is named `rl` itself,
//! so `inputs = { checkpoint = "rl" }` downstream reads the final policy. Each update continues
//! the previous one's AdamW state (`optimizer`), log (`history`: the last log holds the whole
//! run, with the running correlations) and evaluations (`eval_history`). With `eval`, the
//! policy is evaluated greedily on `items` held-out items (`split`, default "test") before the
//! first step and after every `every`-th (`rl.eval` holds them all). With `keep_every = k`,
//! only every k-th step's checkpoint and the last step's are kept once the next step has read
//! them (and only the last optimizer state); the others are discarded from the store, and
//! recomputed by the runner if a stage that must run needs them. Each instance is an
//! ordinary stage, so the runner's cache resumes a killed loop at its first incomplete step,
//! rerunning an unchanged loop is a no-op, and lengthening it keeps the steps already done.
//! `reference` feeds every update's KL term, `teacher` every reward's teacher; the reward's
//! self-reward reads the step's own policy.

use crate::dag::{ConfigError, Expansion};

/// The composite's type name.
pub const KIND: &str = "grpo";

const INPUTS: &[(&str, bool)] = &[
    ("checkpoint", true),
    ("data", true),
    ("reference", false),
    ("teacher", false),
];

fn sub_table(t: &toml::Table, key: &str) -> Result<toml::Table, ConfigError> {
    match t.get(key) {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(x)) => {
            for reserved in ["stage", "inputs", "step", "sweep", "seed"] {
                if x.contains_key(reserved) {
                    return Err(format!(
                        "`{key}.{reserved}` is set by the loop (or belongs on the loop's table)"
                    )
                    .into());
                }
            }
            Ok(x.clone())
        }
        Some(_) => Err(format!("`{key}` must be a table of that stage's settings").into()),
    }
}

fn stage_table(
    kind: &str,
    inputs: &[(&str, String)],
    mut table: toml::Table,
    seed: Option<&toml::Value>,
) -> toml::Table {
    table.insert("stage".into(), toml::Value::String(kind.into()));
    let mut it = toml::Table::new();
    for (k, v) in inputs {
        it.insert((*k).into(), toml::Value::String(v.clone()));
    }
    table.insert("inputs".into(), toml::Value::Table(it));
    if let Some(s) = seed {
        table.insert("seed".into(), s.clone());
    }
    table
}

/// The declarations a `grpo` loop named `name` stands for.
pub fn expand(name: &str, t: &toml::Table) -> Expansion {
    let lp = Loop::parse(name, t)?;
    let mut out = Vec::with_capacity(3 * lp.steps);
    let mut policy = lp.input("checkpoint").unwrap_or_default();
    for k in 0..lp.steps {
        let step = lp.step(k, &policy);
        policy = step[2].0.clone();
        out.extend(step);
    }
    Ok(out)
}

/// A `grpo` loop's table, checked.
struct Loop {
    name: String,
    steps: usize,
    inputs: Vec<(&'static str, String)>,
    seed: Option<toml::Value>,
    rollout: toml::Table,
    reward: toml::Table,
    update: toml::Table,
    eval: Eval,
    keep_every: usize,
    sweeps: Sweeps,
}

impl Loop {
    fn parse(name: &str, t: &toml::Table) -> Result<Loop, ConfigError> {
        for k in t.keys() {
            if ![
                "stage",
                "inputs",
                "seed",
                "steps",
                "rollout",
                "reward",
                "update",
                "eval",
                "keep_every",
                "sweep",
            ]
            .contains(&k.as_str())
            {
                return Err(format!(
                    "unknown key `{k}` of a `{KIND}` loop (steps, rollout, reward, update, eval, \
                     keep_every, sweep, inputs, seed)"
                )
                .into());
            }
        }
        let steps = t
            .get("steps")
            .and_then(|v| v.as_integer())
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or("`steps` must be a positive integer")?;
        let given = t
            .get("inputs")
            .and_then(|v| v.as_table())
            .ok_or("`inputs` must name at least `checkpoint` and `data`")?;
        let mut inputs: Vec<(&str, String)> = Vec::new();
        for (k, v) in given {
            if !INPUTS.iter().any(|(n, _)| n == k) {
                return Err(format!(
                    "unknown input `{k}` of a `{KIND}` loop (checkpoint, data, reference, teacher)"
                )
                .into());
            }
            let v = v
                .as_str()
                .ok_or_else(|| format!("`inputs.{k}` must be a stage name"))?;
            let k = INPUTS.iter().find(|(n, _)| n == k).map_or("", |(n, _)| *n);
            inputs.push((k, v.to_string()));
        }
        for (n, required) in INPUTS {
            if *required && !inputs.iter().any(|(k, _)| k == n) {
                return Err(format!("a `{KIND}` loop needs input `{n}`").into());
            }
        }
        let mut rollout = sub_table(t, "rollout")?;
        rollout
            .entry("split")
            .or_insert_with(|| toml::Value::String("rl".into()));
        rollout.entry("samples").or_insert(toml::Value::Integer(4));
        let reward = sub_table(t, "reward")?;
        let update = sub_table(t, "update")?;
        for k in [
            "eval_items",
            "eval_start",
            "eval_after",
            "eval_split",
            "eval_max_new_tokens",
        ] {
            if update.contains_key(k) {
                return Err(format!("`update.{k}` is set by the loop's `eval` table").into());
            }
        }
        let eval = Eval::parse(t.get("eval"))?;
        let keep_every = match t.get("keep_every") {
            None => 0,
            Some(v) => v
                .as_integer()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or("`keep_every` must be a non-negative integer (0 keeps every step)")?,
        };
        Ok(Loop {
            name: name.to_string(),
            steps,
            inputs,
            seed: t.get("seed").cloned(),
            rollout,
            reward,
            update,
            eval,
            keep_every,
            sweeps: Sweeps::parse(t.get("sweep"))?,
        })
    }

    /// The stage named by input `n`, if given.
    fn input(&self, n: &str) -> Option<String> {
        self.inputs
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
    }

    /// Step `k`'s rollout, reward and update declarations, from `policy`'s checkpoint.
    fn step(&self, k: usize, policy: &str) -> [(String, toml::Table); 3] {
        let (name, seed) = (&self.name, self.seed.as_ref());
        let data = self.input("data").unwrap_or_default();
        let policy = policy.to_string();
        let (r, w) = (format!("{name}_{k}_rollout"), format!("{name}_{k}_reward"));
        let last = k + 1 == self.steps;
        let u = if last {
            name.to_string()
        } else {
            format!("{name}_{k}_update")
        };
        let with_step = |mut t: toml::Table| {
            t.insert("step".into(), toml::Value::Integer(k as i64));
            t
        };
        let mut rollout = stage_table(
            "rollout",
            &[("checkpoint", policy.clone()), ("data", data.clone())],
            with_step(self.rollout.clone()),
            seed,
        );
        self.sweeps.set(&mut rollout, "rollout", k);
        let mut reward_inputs = vec![
            ("rollouts", r.clone()),
            ("data", data.clone()),
            ("checkpoint", policy.clone()),
        ];
        if let Some(teacher) = self.input("teacher") {
            reward_inputs.push(("teacher", teacher));
        }
        let mut reward = stage_table("reward-score", &reward_inputs, self.reward.clone(), seed);
        self.sweeps.set(&mut reward, "reward", k);
        let mut update_inputs = vec![
            ("checkpoint", policy.clone()),
            ("rollouts", r.clone()),
            ("rewards", w.clone()),
            ("data", data),
        ];
        if let Some(reference) = self.input("reference") {
            update_inputs.push(("reference", reference));
        }
        if k > 0 {
            // The previous update (its policy is this step's checkpoint).
            update_inputs.push(("optimizer", format!("{policy}.optimizer")));
            update_inputs.push(("history", format!("{policy}.log")));
            update_inputs.push(("eval_history", format!("{policy}.eval")));
        }
        let mut settings = with_step(self.update.clone());
        self.eval.set(&mut settings, k);
        let mut update = stage_table("grpo-update", &update_inputs, settings, seed);
        self.sweeps.set(&mut update, "update", k);
        if self.keep_every > 0 && !last {
            let mut discard = vec![toml::Value::String("optimizer".into())];
            if !(k + 1).is_multiple_of(self.keep_every) {
                discard.push(toml::Value::String("main".into()));
            }
            update.insert("discard".into(), toml::Value::Array(discard));
        }
        [(r, rollout), (w, reward), (u, update)]
    }
}

/// The loop's `sweep`: `{ "reward.alpha" = [0.5, 1.0], … }`, keys naming a setting of the
/// rollout, reward or update stages. Step 0's stage of that kind sweeps it; the later steps'
/// stages follow the value their inputs were computed with, so each value is one chain of
/// steps (instances `rl_3_reward[alpha=0.5]`, …, `rl[alpha=0.5]`), and what steps share before
/// the swept stage is computed once.
#[derive(Debug, Default)]
struct Sweeps(Vec<(String, String, toml::Value)>);

impl Sweeps {
    fn parse(v: Option<&toml::Value>) -> Result<Sweeps, ConfigError> {
        let Some(v) = v else {
            return Ok(Sweeps::default());
        };
        let t = v
            .as_table()
            .ok_or("`sweep` must be a table of \"rollout|reward|update.key\" = [values]")?;
        let mut out: Vec<(String, String, toml::Value)> = Vec::new();
        for (path, values) in t {
            let (sub, key) = path
                .split_once('.')
                .filter(|(s, _)| ["rollout", "reward", "update"].contains(s))
                .ok_or(format!(
                    "`sweep.{path}`: name a setting of rollout, reward or update, e.g. \
                     \"reward.alpha\""
                ))?;
            if out.iter().any(|(_, k, _)| k == key) {
                return Err(format!("`sweep` names `{key}` twice").into());
            }
            out.push((sub.to_string(), key.to_string(), values.clone()));
        }
        Ok(Sweeps(out))
    }

    fn set(&self, table: &mut toml::Table, sub: &str, k: usize) {
        for (_, key, values) in self.0.iter().filter(|(s, _, _)| s == sub) {
            let (slot, value) = if k == 0 {
                ("sweep", values.clone())
            } else {
                ("follow", toml::Value::String(key.clone()))
            };
            let entry = table
                .entry(slot)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(t) = entry.as_table_mut() {
                t.insert(key.clone(), value);
            }
        }
    }
}

/// The loop's `eval` table.
#[derive(Debug, Default)]
struct Eval {
    every: usize,
    items: i64,
    split: Option<toml::Value>,
    max_new_tokens: Option<toml::Value>,
}

impl Eval {
    fn parse(v: Option<&toml::Value>) -> Result<Eval, ConfigError> {
        let Some(v) = v else {
            return Ok(Eval::default());
        };
        let t = v
            .as_table()
            .ok_or("`eval` must be a table: { every = N, items = M }")?;
        for k in t.keys() {
            if !["every", "items", "split", "max_new_tokens"].contains(&k.as_str()) {
                return Err(format!(
                    "unknown key `eval.{k}` (every, items, split, max_new_tokens)"
                )
                .into());
            }
        }
        let positive = |k: &str| {
            t.get(k)
                .and_then(toml::Value::as_integer)
                .filter(|&v| v > 0)
                .ok_or(format!("`eval.{k}` must be a positive integer"))
        };
        Ok(Eval {
            every: usize::try_from(positive("every")?).map_err(|e| e.to_string())?,
            items: positive("items")?,
            split: t.get("split").cloned(),
            max_new_tokens: t.get("max_new_tokens").cloned(),
        })
    }

    /// Sets the evaluation of update `k`: the starting policy before step 0, and the policy
    /// after every `every`-th step.
    fn set(&self, update: &mut toml::Table, k: usize) {
        if self.every == 0 {
            return;
        }
        let start = k == 0;
        let after = (k + 1).is_multiple_of(self.every);
        if !(start || after) {
            return;
        }
        update.insert("eval_items".into(), toml::Value::Integer(self.items));
        update.insert("eval_start".into(), toml::Value::Boolean(start));
        update.insert("eval_after".into(), toml::Value::Boolean(after));
        if let Some(s) = &self.split {
            update.insert("eval_split".into(), s.clone());
        }
        if let Some(m) = &self.max_new_tokens {
            update.insert("eval_max_new_tokens".into(), m.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn a_loop_expands_into_chained_steps() {
        let t = parse(
            r#"
stage = "grpo"
inputs = { checkpoint = "sft", data = "fmt", reference = "sft" }
steps = 2
rollout = { prompts_per_step = 4 }
update = { lr = 0.001 }
"#,
        );
        let out = expand("rl", &t).unwrap();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "rl_0_rollout",
                "rl_0_reward",
                "rl_0_update",
                "rl_1_rollout",
                "rl_1_reward",
                "rl"
            ]
        );
        let get = |n: &str| &out.iter().find(|(x, _)| x == n).unwrap().1;
        let inputs = |n: &str| get(n)["inputs"].as_table().unwrap().clone();
        assert_eq!(inputs("rl_0_rollout")["checkpoint"].as_str(), Some("sft"));
        assert_eq!(
            inputs("rl_1_rollout")["checkpoint"].as_str(),
            Some("rl_0_update")
        );
        assert_eq!(inputs("rl")["checkpoint"].as_str(), Some("rl_0_update"));
        assert_eq!(inputs("rl")["rollouts"].as_str(), Some("rl_1_rollout"));
        assert_eq!(inputs("rl")["reference"].as_str(), Some("sft"));
        assert_eq!(
            inputs("rl_1_reward")["checkpoint"].as_str(),
            Some("rl_0_update")
        );
        assert!(!inputs("rl_1_reward").contains_key("teacher"));
        assert_eq!(get("rl_1_rollout")["step"].as_integer(), Some(1));
        assert_eq!(get("rl_1_rollout")["split"].as_str(), Some("rl"));
        assert_eq!(get("rl_1_rollout")["samples"].as_integer(), Some(4));
        assert_eq!(
            get("rl_1_rollout")["prompts_per_step"].as_integer(),
            Some(4)
        );
        assert_eq!(get("rl")["step"].as_integer(), Some(1));
        assert_eq!(get("rl")["lr"].as_float(), Some(0.001));
        assert_eq!(get("rl")["stage"].as_str(), Some("grpo-update"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| expand("rl", &parse(text)).unwrap_err().to_string();
        assert!(err("inputs = { checkpoint = \"a\" }\nsteps = 1").contains("needs input `data`"));
        assert!(err("inputs = { checkpoint = \"a\", data = \"b\" }").contains("steps"));
        assert!(
            err("inputs = { checkpoint = \"a\", data = \"b\" }\nsteps = 1\nsweep = { x = [1] }")
                .contains("name a setting of rollout, reward or update")
        );
        assert!(
            err("inputs = { checkpoint = \"a\", data = \"b\" }\nsteps = 1\nrollout = { step = 3 }")
                .contains("`rollout.step` is set by the loop")
        );
        assert!(
            err("inputs = { checkpoint = \"a\", data = \"b\", init = \"c\" }\nsteps = 1")
                .contains("unknown input `init`")
        );
    }
}
