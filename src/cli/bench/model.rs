//! The model suite: SFT steps per objective and KV-cached rollouts per batch size, timed after
//! warm-up, with kernel launches and host reads counted where asked.

use super::*;

/// SFT steps and KV-cached rollouts on graph-coloring examples (verbosity 0 teacher traces).
pub(super) fn model_suite(a: &BenchArgs, report: &mut Report) -> anyhow::Result<String> {
    let spec = DeviceSpec::parse(&a.device)?;
    let tok = Tokenizer::task_vocabulary();
    let cfg = model_config(a, &tok)?;
    let objectives = objectives(a)?;
    let plans = rollout_plans(a)?;
    let examples = examples(&tok, cfg.image_size, example_count(&plans))?;
    let steps = a.steps.max(2);
    warmup_steps(a, steps)?;
    report.parameters = Some(cfg.parameters());
    start_counting(a, spec)?;
    asymm::with_backend!(spec, |B, device| {
        let mut out = format!(
            "\n| model suite: `{}` ({:.1} M parameters) on {} | rate |\n|---|---:|\n",
            model_name(a),
            cfg.parameters() as f64 / 1e6,
            a.device
        );
        for &objective in &objectives {
            let settings = SftSettings {
                seq_bucket: spec.seq_bucket(),
                data_parallel: a.data_parallel,
                ..sft_settings(&cfg, objective, steps, a.data_shards)
            };
            let model = asymm::model::load::native_model::<Autodiff<B>>(
                &cfg,
                None,
                settings.seed,
                &device,
            )?;
            let mut m = time_sft::<Autodiff<B>>(
                a,
                &settings,
                model,
                &examples[..EXAMPLES],
                &device,
                tok.pad(),
            )?;
            let mean_flops = examples[..EXAMPLES]
                .iter()
                .map(|e| sft_flops(&cfg, (e.prompt.len() + e.target.len()).saturating_sub(1)))
                .sum::<f64>()
                / EXAMPLES as f64;
            m.flops_per_step = Some(mean_flops * SFT_BATCH as f64);
            out.push_str(&format!(
                "| SFT, {} objective, batch {SFT_BATCH}{} | {:.0} target tokens/s |\n",
                objective_name(objective),
                match a.data_parallel {
                    1 => String::new(),
                    p => format!(", {p} data-parallel peers"),
                },
                m.tokens as f64 / m.seconds.max(1e-9)
            ));
            out.push_str(&m.flops_row(a.peak_tflops));
            if let Some(c) = &m.counts {
                out.push_str(&c.rows(m.steps as f64, "SFT step"));
            }
            report.sft.push(m);
        }
        if !plans.is_empty() {
            // A seeded model, so that every run samples the same outputs.
            <B as burn::tensor::backend::Backend>::seed(&device, SFT_SEED);
            let model: asymm::model::Model<B> = Vlm::<B>::new(&cfg, &device).into();
            let codec = asymm::data::Codec::from(tok.clone());
            time_rollouts(
                a, &model, &codec, &examples, &plans, &device, &mut out, report,
            )?;
        }
        Ok::<String, anyhow::Error>(out)
    })
}

/// Turns kernel counting on before the first GPU call (`--count-kernels` on a cubecl device).
pub(super) fn start_counting(a: &BenchArgs, spec: DeviceSpec) -> anyhow::Result<()> {
    if !a.count_kernels || !spec.is_gpu() {
        return Ok(());
    }
    #[cfg(feature = "gpu")]
    anyhow::ensure!(
        asymm::model::gpu::count_kernels(),
        "--count-kernels: the GPU runtime was configured before counting could be turned on"
    );
    Ok(())
}

/// Trains `settings.steps` SFT steps of `model` and measures the steps after the first
/// `--warmup`: target tokens, seconds, the median step and, with `--count-kernels`, what they
/// did on the device.
pub(super) fn time_sft<B: AutodiffBackend>(
    a: &BenchArgs,
    settings: &SftSettings,
    model: asymm::model::Model<B>,
    examples: &[Example],
    device: &B::Device,
    pad: u32,
) -> anyhow::Result<SftMeasure> {
    struct Mark<'a, B: AutodiffBackend> {
        a: &'a BenchArgs,
        device: &'a B::Device,
        at: Option<Counts>,
    }
    impl<B: AutodiffBackend> asymm::train::sft::SftHooks<B> for Mark<'_, B> {
        fn eval(
            &mut self,
            _: usize,
            _: &asymm::model::Model<B::InnerBackend>,
        ) -> Result<Option<asymm::train::sft::EvalPoint>, asymm::train::sft::TrainError> {
            Ok(None)
        }
        fn after_step(&mut self, step: usize, _: &asymm::train::sft::LogRow, _: f64) {
            if step == self.a.warmup {
                self.at = Counts::now::<B::InnerBackend>(self.a, self.device);
            }
        }
    }
    let warmup = warmup_steps(a, settings.steps)?;
    let scratch = asymm::util::fsx::TempDir::new("asymm-bench")?;
    let mut mark = Mark::<B> {
        a,
        device,
        at: if warmup == 0 {
            Counts::now::<B::InnerBackend>(a, device)
        } else {
            None
        },
    };
    let out = train::<B>(
        settings,
        model,
        examples,
        device,
        scratch.path(),
        pad,
        &mut mark,
    )?;
    let end = Counts::now::<B::InnerBackend>(a, device);
    let timed = &out.timing[warmup..];
    Ok(SftMeasure {
        flops_per_step: None,
        objective: settings.objective,
        steps: timed.len(),
        tokens: timed.iter().map(|t| t.tokens).sum(),
        seconds: timed.iter().map(|t| t.seconds).sum(),
        median_step: median(timed.iter().map(|t| t.seconds).collect()),
        counts: end.zip(mark.at).map(|(e, s)| e.since(s)),
    })
}

/// Times KV-cached rollouts of `model` for each of `plans` (standard mode, ≤ROLLOUT_TOKENS new
/// tokens), appending a table row and a measurement each; with `--warmup` above 0, each plan
/// runs once untimed first.
#[allow(clippy::too_many_arguments)]
pub(super) fn time_rollouts<B: burn::tensor::backend::Backend>(
    a: &BenchArgs,
    model: &asymm::model::Model<B>,
    codec: &asymm::data::Codec,
    examples: &[Example],
    plans: &[RolloutPlan],
    device: &B::Device,
    out: &mut String,
    report: &mut Report,
) -> anyhow::Result<()> {
    for &plan in plans {
        let spec = RolloutSpec {
            mode: Mode::Standard,
            samples: plan.samples,
            sampling: SamplingConfig::default(),
            max_new_tokens: Some(ROLLOUT_TOKENS),
            batch_size: plan.batch,
        };
        let run = || {
            run_rollouts(
                &Sampler {
                    model,
                    codec,
                    device,
                },
                &examples[..plan.examples()],
                None,
                &spec,
                1,
                |_| {},
            )
        };
        if a.warmup > 0 {
            run()?;
        }
        let before = Counts::now::<B>(a, device);
        let t = Instant::now();
        let rows = run()?;
        let _ = B::sync(device);
        let seconds = t.elapsed().as_secs_f64();
        let counts = Counts::now::<B>(a, device)
            .zip(before)
            .map(|(e, s)| e.since(s));
        let new: usize = rows.iter().map(|r| r.new_tokens).sum();
        // A batch decodes until its longest row stops (`<eos>` is one more sampled token).
        let decode_steps: usize = rows
            .chunks(plan.batch)
            .map(|c| {
                c.iter()
                    .map(|r| (r.new_tokens + usize::from(!r.truncated)).min(ROLLOUT_TOKENS))
                    .max()
                    .unwrap_or(0)
            })
            .sum();
        let shape = if plan.samples > 1 {
            format!(" ({} prompts × {} samples)", plan.prompts, plan.samples)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| rollout (KV cache), batch {}{shape}, ≤{ROLLOUT_TOKENS} new tokens | {:.0} new tokens/s |\n",
            plan.batch,
            new as f64 / seconds
        ));
        if let Some(c) = &counts {
            out.push_str(&c.rows(decode_steps as f64, "decode step"));
        }
        report.rollout.push(RolloutMeasure {
            plan,
            new_tokens: new,
            rows: rows.iter().map(|r| (r.new_tokens, !r.truncated)).collect(),
            seconds,
            decode_steps,
            counts,
        });
    }
    Ok(())
}
