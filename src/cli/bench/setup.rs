//! What the model suite runs on: the model's config (a preset with `--model-set` changes), the
//! examples built in memory as distill-format would, and the SFT settings.

use super::*;

/// The preset's name, with the fields `--model-set` changed.
pub(super) fn model_name(a: &BenchArgs) -> String {
    if a.model_set.is_empty() {
        a.model.clone()
    } else {
        format!("{} with {}", a.model, a.model_set.join(", "))
    }
}

pub(super) fn model_config(a: &BenchArgs, tok: &Tokenizer) -> anyhow::Result<VlmConfig> {
    let preset = VlmConfig::preset(&a.model, tok.vocab_size())
        .ok_or_else(|| anyhow::anyhow!("unknown model preset `{}` (tiny, small)", a.model))?;
    if a.model_set.is_empty() {
        return Ok(preset);
    }
    let mut fields = serde_json::to_value(&preset)?;
    for set in &a.model_set {
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--model-set `{set}`: expected FIELD=VALUE"))?;
        let slot = fields
            .get_mut(key)
            .ok_or_else(|| anyhow::anyhow!("--model-set: the model config has no field `{key}`"))?;
        *slot = serde_json::from_str(value)
            .map_err(|e| anyhow::anyhow!("--model-set {key}: `{value}` is not a number: {e}"))?;
    }
    let cfg: VlmConfig =
        serde_json::from_value(fields).map_err(|e| anyhow::anyhow!("--model-set: {e}"))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("--model-set gives an invalid model: {e}"))?;
    Ok(cfg)
}

/// Examples to build: the SFT set, or more when the rollouts read more prompts.
pub(super) fn example_count(plans: &[RolloutPlan]) -> usize {
    plans
        .iter()
        .map(RolloutPlan::examples)
        .max()
        .unwrap_or(0)
        .max(EXAMPLES)
}

/// One graph-coloring puzzle: its perception p*, the teacher's reasoning and the image's ink.
pub(super) struct Puzzle {
    pub(super) perception: String,
    pub(super) reasoning: String,
    pub(super) ink: Vec<f32>,
}

/// `n` graph-coloring puzzles (verbosity 0 teacher traces) rendered at `image_size`².
pub(super) fn puzzles(image_size: usize, n: usize) -> anyhow::Result<Vec<Puzzle>> {
    let gc = SynthesizeConfig::default();
    let cfg = RenderConfig {
        size: image_size as u32,
        ..RenderConfig::default()
    };
    (0..n)
        .map(|i| {
            let p = generate(&gc, 3, i as u64).perception;
            let r = TaskKind::GraphColoring
                .task()
                .trace(&p, 0)
                .ok_or_else(|| anyhow::anyhow!("no teacher trace"))?;
            let png = render_one(TaskKind::GraphColoring, "x", &p, &cfg, None, 1)?.to_png();
            Ok(Puzzle {
                perception: p,
                reasoning: r,
                ink: image_ink(&png, image_size)
                    .ok_or_else(|| anyhow::anyhow!("render produced a bad PNG"))?,
            })
        })
        .collect()
}

/// Training examples built in memory, as distill-format would.
pub(super) fn examples(
    tok: &Tokenizer,
    image_size: usize,
    n: usize,
) -> anyhow::Result<Vec<Example>> {
    use asymm::text::format::encode;
    let ids = |v: Vec<i32>| v.into_iter().map(|x| x.max(0) as u32).collect::<Vec<u32>>();
    Ok(puzzles(image_size, n)?
        .into_iter()
        .enumerate()
        .map(|(i, z)| {
            let e = encode(
                tok,
                TaskKind::GraphColoring.prompt(),
                &z.perception,
                &z.reasoning,
            );
            Example {
                id: format!("bench-{i}"),
                task: "graph_coloring".into(),
                perception: z.perception,
                image: z.ink,
                prompt: ids(e.prompt_ids),
                target: ids(e.target_ids),
                spans: e
                    .spans
                    .into_iter()
                    .map(|(n, s, t)| (n, s as usize, t as usize))
                    .collect(),
            }
        })
        .collect())
}

/// The model suite's SFT settings.
pub(super) fn sft_settings(
    cfg: &VlmConfig,
    objective: ObjectiveKind,
    steps: usize,
    data_shards: usize,
) -> SftSettings {
    SftSettings {
        objective,
        steps,
        data_shards,
        batch_size: SFT_BATCH,
        seed: SFT_SEED,
        max_text: cfg.max_seq_len - cfg.patches(),
        ..SftSettings::default()
    }
}
