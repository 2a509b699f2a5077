//! The grid's setup read back from its artifacts' manifests: each producer's recorded config,
//! followed along the lineage of the report's inputs (the SFT logs to their data and the runs
//! they start from, the RL logs to their rollouts, the evaluations to their standard
//! rollouts).

use super::{EVALS, RL_LOGS, SFT_LOGS};
use crate::dag::{InputSpec, RunCtx};
use crate::eval::rollout::RolloutSpec;
use crate::report::setup::{Data, EvalSampling, RlRun, Setup, SftRun};
use crate::stages::distill_format::DistillConfig;
use crate::stages::grpo_update::GrpoUpdateConfig;
use crate::stages::model_io::ModelChoice;
use crate::stages::rollout::RolloutConfig;
use crate::stages::sft_train::SftTrainConfig;
use crate::stages::{StageError, bail};
use crate::store::{Manifest, StoreError};
use crate::table::Table;
use crate::tasks::TaskKind;
use crate::tasks::generate::SynthesizeConfig;
use crate::tasks::sudoku::Side;
use serde::de::DeserializeOwned;

/// An artifact's manifest and its producer's instance.
fn manifest(ctx: &RunCtx, id: &str) -> Result<Manifest, StageError> {
    Ok(ctx.store.manifest(id)?)
}

fn instance(m: &Manifest) -> String {
    m.producer["instance"].as_str().unwrap_or("?").to_string()
}

/// The producer's config as the stage's type; an error names the artifact.
fn config<T: DeserializeOwned>(m: &Manifest) -> Result<T, StageError> {
    serde_json::from_value(m.producer["config"].clone()).map_err(|e| {
        StageError::Invalid(format!(
            "report: the config recorded for `{}` (artifact {}) does not read as its stage's: {e}",
            instance(m),
            &m.id[..12.min(m.id.len())]
        ))
    })
}

/// The manifest of `m`'s input `name`, if it has one and it is still in the store (an
/// ancestor deleted after use — `discard`, `keep_every`, `gc` — leaves its settings unknown).
fn upstream(ctx: &RunCtx, m: &Manifest, name: &str) -> Result<Option<Manifest>, StageError> {
    let Some(id) = m.lineage.get(name) else {
        return Ok(None);
    };
    match ctx.store.manifest(id) {
        Ok(m) => Ok(Some(m)),
        Err(StoreError::Discarded(_) | StoreError::Missing(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn data(ctx: &RunCtx, targets: &Manifest) -> Result<Option<Data>, StageError> {
    let Some(puzzles) = upstream(ctx, targets, "puzzles")? else {
        return Ok(None);
    };
    let synth: SynthesizeConfig = config(&puzzles)?;
    let task = match synth.task {
        TaskKind::Sudoku if synth.sudoku.size == Side::FOUR => {
            format!("sudoku 4×4, {} givens", synth.sudoku.givens)
        }
        TaskKind::Sudoku => format!("sudoku, {} givens", synth.sudoku.givens),
        TaskKind::GraphColoring => format!(
            "graph coloring, {}–{} nodes",
            synth.graph.min_nodes, synth.graph.max_nodes
        ),
    };
    let digits = match (synth.task, upstream(ctx, targets, "images")?) {
        (TaskKind::Sudoku, Some(images)) => match images.lineage.get("digits") {
            Some(id) if ctx.store.has(id) => Table::read(ctx.store, id, "digits")?
                .required_strings("source")?
                .into_iter()
                .next(),
            _ => None,
        },
        _ => None,
    };
    Ok(Some(Data {
        task,
        sft: synth.splits.sft,
        rl: synth.splits.rl,
        test: synth.splits.test,
        val: synth.splits.val,
        digits,
    }))
}

/// The SFT run that produced `m` (a train log or a checkpoint).
fn sft_run(ctx: &RunCtx, m: &Manifest) -> Result<SftRun, StageError> {
    let cfg: SftTrainConfig = config(m)?;
    let s = cfg.settings(0, 0);
    // Imported traces (distill-format's `reasoning` input) have no verbosity.
    let verbosity = match upstream(ctx, m, "data")? {
        Some(d) if !d.lineage.contains_key("reasoning") => {
            Some(config::<DistillConfig>(&d)?.verbosity)
        }
        _ => None,
    };
    let init = match (m.lineage.get("init"), upstream(ctx, m, "init")?) {
        (_, Some(i)) => Some(instance(&i)),
        (Some(id), None) => Some(format!("artifact {}", &id[..12.min(id.len())])),
        (None, None) => None,
    };
    Ok(SftRun {
        instance: instance(m),
        model: match &cfg.model {
            ModelChoice::Preset(p) => p.clone(),
            ModelChoice::Hf(h) => h.hf.display().to_string(),
        },
        pretrained: matches!(cfg.model, ModelChoice::Hf(_)),
        steps: s.steps,
        batch: s.batch_size * s.grad_accum,
        lr: s.lr,
        min_lr: s.min_lr,
        warmup: s.warmup_ratio,
        early_stop: s.early_stop.is_some(),
        verbosity,
        init,
    })
}

/// The RL run whose last update wrote the log `m`.
fn rl_run(ctx: &RunCtx, m: &Manifest) -> Result<RlRun, StageError> {
    let update: GrpoUpdateConfig = config(m)?;
    let Some(rollouts) = upstream(ctx, m, "rollouts")? else {
        bail!(
            "report: the RL log `{}` records no rollouts in its lineage",
            instance(m)
        );
    };
    let roll: RolloutConfig = config(&rollouts)?;
    // The first update's log, through each log's `history`, read the starting checkpoint.
    let mut first = m.clone();
    while let Some(h) = upstream(ctx, &first, "history")? {
        first = h;
    }
    let start = first.lineage.get("checkpoint").map(|id| {
        ctx.store.manifest(id).map_or_else(
            |_| format!("artifact {}", &id[..12.min(id.len())]),
            |c| instance(&c),
        )
    });
    Ok(RlRun {
        start,
        instance: instance(m),
        steps: update.step + 1,
        prompts: roll.prompts_per_step,
        samples: roll.spec.samples,
        temperature: decimal(roll.spec.sampling.temperature),
        lr: update.lr,
        kl_coef: update.kl_coef,
        mini_batch: update.mini_batch,
        ppo_epochs: update.ppo_epochs,
    })
}

/// A config's `f32` as the decimal it was written as (0.7, not 0.699999988).
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

fn ids(ctx: &RunCtx, spec: &InputSpec) -> Vec<String> {
    ctx.inputs_many(spec.name)
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Reads the setup of the grid the report's inputs come from.
pub(super) fn read_setup(ctx: &RunCtx) -> Result<Setup, StageError> {
    let mut s = Setup::default();
    for id in ids(ctx, &SFT_LOGS) {
        let m = manifest(ctx, &id)?;
        if s.data.is_none()
            && let Some(d) = upstream(ctx, &m, "data")?
        {
            s.data = data(ctx, &d)?;
        }
        let run = sft_run(ctx, &m)?;
        // The chain of runs it starts from, through their checkpoints.
        let mut at = upstream(ctx, &m, "init")?;
        // Through the SFT runs only: a checkpoint another stage wrote ends the chain.
        while let Some(ck) = at.filter(|c| c.producer["stage"] == "sft-train") {
            let name = instance(&ck);
            if s.bases.contains_key(&name) {
                break;
            }
            s.bases.insert(name, sft_run(ctx, &ck)?);
            at = upstream(ctx, &ck, "init")?;
        }
        s.sft.push(run);
    }
    for id in ids(ctx, &RL_LOGS) {
        let m = manifest(ctx, &id)?;
        s.rl.push(rl_run(ctx, &m)?);
    }
    for id in ids(ctx, &EVALS) {
        let m = manifest(ctx, &id)?;
        let Some(standard) = upstream(ctx, &m, "standard")? else {
            continue;
        };
        let roll: RolloutConfig = config(&standard)?;
        let spec: &RolloutSpec = &roll.spec;
        s.evals.push(EvalSampling {
            instance: instance(&m),
            temperature: decimal(spec.sampling.temperature),
            samples: spec.samples,
        });
    }
    Ok(s)
}
