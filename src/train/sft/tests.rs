use super::*;
use crate::model::{Vlm, VlmConfig};
use crate::train::batch::make_batch;
use crate::train::objective::ObjectiveKind;
use burn::tensor::Tensor;

fn settings(objective: ObjectiveKind, extra_spans: Vec<(String, f64)>) -> SftSettings {
    SftSettings {
        objective,
        extra_spans,
        batch_size: 1,
        seed: 1,
        max_text: 8,
        ..SftSettings::default()
    }
}

fn example(target_len: usize) -> Example {
    Example {
        id: format!("e{target_len}"),
        task: "t".into(),
        perception: String::new(),
        image: vec![0.0; 16],
        prompt: vec![1],
        target: vec![2; target_len],
        spans: vec![
            ("perception".into(), 0, 1),
            ("reasoning".into(), 1, target_len),
        ],
    }
}

/// NGDiff balances two spans only: further span weights are refused, not ignored; and a
/// target longer than the context is refused, naming the example, not cut silently.
#[test]
fn refused_settings_name_the_problem() {
    let answer = vec![("answer".to_string(), 2.0)];
    let e = check_settings(
        &settings(ObjectiveKind::Ngdiff, answer.clone()),
        &[example(4)],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ngdiff") && e.contains("answer"), "{e}");
    check_settings(&settings(ObjectiveKind::Reweight, answer), &[example(4)]).unwrap();
    // prompt 1 + target 8 = 9 = max_text + 1 fits; one more does not.
    check_settings(&settings(ObjectiveKind::Standard, vec![]), &[example(8)]).unwrap();
    let e = check_settings(&settings(ObjectiveKind::Standard, vec![]), &[example(9)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`e9`") && e.contains("10 prompt + target tokens"),
        "{e}"
    );
}

#[test]
fn batches_cover_each_epoch_once() {
    let s = SftSettings {
        steps: 10,
        batch_size: 4,
        grad_clip: 0.0,
        seed: 1,
        max_text: 100,
        ..SftSettings::default()
    };
    let mut seen: Vec<usize> = (0..3).flat_map(|st| batch_indices(12, &s, st, 0)).collect();
    seen.sort();
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
    assert_eq!(batch_indices(12, &s, 5, 0), batch_indices(12, &s, 5, 0));
}

/// A fresh-model run on the CPU with no held-out evaluation.
fn train_cpu(
    settings: &SftSettings,
    cfg: &VlmConfig,
    init: Option<&[u8]>,
    data: &[Example],
) -> SftOutput<crate::model::Cpu> {
    type B = burn::backend::Autodiff<crate::model::Cpu>;
    let dir = crate::util::fsx::TempDir::new("asymm-sft").unwrap();
    let device = Default::default();
    let model = crate::model::load::native_model::<B>(cfg, init, settings.seed, &device).unwrap();
    train::<B>(settings, model, data, &device, dir.path(), 0, &mut NoEval).unwrap()
}

/// The perception token is a function of the image alone (which quadrant holds ink), so
/// the loss can only fall below ln 4 by reading the image; the blank-image loss stays high.
#[test]
fn learns_to_read_the_image() {
    let s = 16usize;
    let example = |q: usize| {
        let mut image = vec![0.0f32; s * s];
        let (r0, c0) = ((q / 2) * s / 2, (q % 2) * s / 2);
        for r in r0..r0 + s / 2 {
            for c in c0..c0 + s / 2 {
                image[r * s + c] = 1.0;
            }
        }
        Example {
            id: format!("q{q}"),
            task: "t".into(),
            perception: String::new(),
            image,
            prompt: vec![1],
            target: vec![4 + q as u32, 2],
            spans: vec![("perception".into(), 0, 1), ("reasoning".into(), 1, 2)],
        }
    };
    let data: Vec<Example> = (0..4).map(example).collect();
    for conv_stem in [0, 4] {
        let cfg = VlmConfig {
            image_size: s,
            patch_size: 8,
            vit_dim: 16,
            vit_layers: 1,
            vit_heads: 2,
            conv_stem,
            d_model: 16,
            layers: 1,
            heads: 2,
            mlp_ratio: 2,
            vocab_size: 10,
            max_seq_len: 16,
            rope_theta: 10000.0,
        };
        let settings = SftSettings {
            steps: 60,
            batch_size: 4,
            lr: 1e-2,
            min_lr: 1e-3,
            diagnostics_every: 59,
            seed: 3,
            max_text: 8,
            ..SftSettings::default()
        };
        let out = train_cpu(&settings, &cfg, None, &data);
        let last = out.log.last().unwrap();
        let blank = out.log[59].loss_perception_blank.unwrap();
        assert!(
            last.loss_perception < 0.2,
            "stem {conv_stem}: {}",
            last.loss_perception
        );
        assert!(blank > 1.0, "stem {conv_stem}: {blank}");
    }
}

/// Shards run concurrently on replicas and their gradients sum to the whole batch's: the
/// same training run with 1, 2 and 3 shards (unequal shards, different padding per shard)
/// ends with the same weights and logs, for a fixed-weight objective with diagnostics and
/// for NGDiff. Broken by leaving the token weights unrescaled, it fails.
#[test]
fn data_shards_sum_to_the_batch_gradient() {
    let cfg = crate::model::config::small_config();
    // One initialization for every run (the backend's random stream is shared by tests
    // running concurrently).
    let (data, init) = varied_data(&cfg);
    for objective in [ObjectiveKind::Reweight, ObjectiveKind::Ngdiff] {
        let run = |data_shards: usize| {
            let settings = SftSettings {
                objective,
                lambda: 0.3,
                steps: 2,
                batch_size: 5,
                data_shards,
                diagnostics_every: 1,
                seed: 7,
                max_text: 12,
                ..SftSettings::default()
            };
            let out = train_cpu(&settings, &cfg, Some(&init), &data);
            (host_weights(&cfg, &out), out.log)
        };
        let (w1, log1) = run(1);
        for shards in [2, 3] {
            let (w, log) = run(shards);
            let diff = max_abs_diff(&w1, &w);
            assert!(
                diff < 1e-5,
                "{objective:?}, {shards} shards: max |Δw| {diff}"
            );
            for (k, (a, b)) in log1.iter().zip(&log).enumerate() {
                assert!((a.loss - b.loss).abs() < 1e-5, "{objective:?} {shards}");
                assert_eq!(a.perception_token_share, b.perception_token_share);
                let (ga, gb) = (a.perception_grad_share, b.perception_grad_share);
                assert!(
                    (ga.unwrap() - gb.unwrap()).abs() < 1e-4,
                    "{objective:?}, {shards} shards, step {}: {ga:?} {gb:?}",
                    k + 1
                );
            }
        }
    }
}

/// The largest element-wise |a − b|.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every weight of a trained model, in the module tree's order.
fn host_weights(cfg: &VlmConfig, out: &SftOutput<crate::model::Cpu>) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl burn::module::ModuleVisitor<crate::model::Cpu> for Flat {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<Tensor<crate::model::Cpu, D>>,
        ) {
            self.0.extend(p.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let model = crate::model::checkpoint::load_weights(
        Vlm::<crate::model::Cpu>::new(cfg, &Default::default()),
        &out.weights().unwrap(),
    )
    .unwrap();
    let mut w = Flat(Vec::new());
    burn::module::Module::visit(&model, &mut w);
    w.0
}

/// Data-parallel peers (burn's collective) on parts of each batch train as one peer on the
/// whole batch: after three AdamW steps the weights agree within 1e-5 of their largest
/// magnitude, each step's gradient norm within 1e-5 relative, the clipping decisions are the
/// same, for a fixed-weight objective with diagnostics, for NGDiff, and with gradient
/// accumulation. The threshold is just below the first step's gradient norm of a run without
/// clipping, so that the first step clips and the later ones (whose norms fall) do not. Seen to
/// fail with each peer's tokens weighted by its own part instead of the whole batch.
#[test]
fn data_parallel_peers_match_one_peer_on_the_whole_batch() {
    let cfg = crate::model::config::small_config();
    let (data, init) = varied_data(&cfg);
    let run = |objective, grad_accum, data_parallel, grad_clip| {
        let settings = SftSettings {
            objective,
            lambda: 0.3,
            steps: 3,
            batch_size: 5,
            grad_accum,
            data_parallel,
            diagnostics_every: 2,
            grad_clip,
            seed: 7,
            max_text: 12,
            ..SftSettings::default()
        };
        let out = train_cpu(&settings, &cfg, Some(&init), &data);
        (host_weights(&cfg, &out), out.log)
    };
    let mut clipped = [0, 0];
    for (objective, accum) in [
        (ObjectiveKind::Reweight, 1),
        (ObjectiveKind::Ngdiff, 1),
        (ObjectiveKind::Standard, 2),
    ] {
        let clip = run(objective, accum, 1, 0.0).1[0].grad_norm * 0.999;
        let (w1, log1) = run(objective, accum, 1, clip);
        let scale = w1.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for peers in [2, 3] {
            let (w, log) = run(objective, accum, peers, clip);
            let diff = max_abs_diff(&w1, &w);
            assert!(
                diff <= 1e-5 * scale,
                "{objective:?}, {peers} peers: max |Δw| {diff} (largest |w| {scale})"
            );
            assert_eq!(log.len(), log1.len());
            for (a, b) in log1.iter().zip(&log) {
                let what = format!("{objective:?}, {peers} peers, step {}", a.step);
                let rel = (a.grad_norm - b.grad_norm).abs() / a.grad_norm;
                assert!(rel < 1e-5, "{what}: ‖g‖ {} vs {}", a.grad_norm, b.grad_norm);
                assert_eq!(a.grad_norm > clip, b.grad_norm > clip, "{what}: clipping");
                clipped[usize::from(a.grad_norm > clip)] += 1;
                assert!((a.loss - b.loss).abs() < 1e-5, "{what}: loss");
                assert_eq!(a.perception_token_share, b.perception_token_share, "{what}");
                if let (Some(ga), Some(gb)) = (a.perception_grad_share, b.perception_grad_share) {
                    assert!((ga - gb).abs() < 1e-4, "{what}: gradient share");
                }
            }
        }
    }
    assert!(
        clipped[0] > 0 && clipped[1] > 0,
        "steps within / above the clip: {clipped:?}"
    );
}

/// Peers need examples of their own and one kind of data parallelism at a time.
#[test]
fn data_parallel_settings_are_checked() {
    let data = [example(4), example(5)];
    let with = |data_parallel, data_shards, batch_size| SftSettings {
        data_parallel,
        data_shards,
        batch_size,
        max_text: 8,
        ..SftSettings::default()
    };
    let e = check_settings(&with(2, 2, 4), &data)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data_parallel = 2") && e.contains("data_shards = 2"),
        "{e}"
    );
    let e = check_settings(&with(3, 1, 2), &data)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch_size 2") && e.contains("data_parallel = 3"),
        "{e}"
    );
    check_settings(&with(2, 1, 2), &data).unwrap();
}

/// Five examples of 3 to 7 target tokens on `cfg`'s image size, and one initialization.
fn varied_data(cfg: &VlmConfig) -> (Vec<Example>, Vec<u8>) {
    let data: Vec<Example> = (0..5)
        .map(|i| {
            let mut e = example(3 + i);
            e.id = format!("e{i}");
            e.image = (0..cfg.image_size * cfg.image_size)
                .map(|p| ((p * (i + 3)) % 7) as f32 / 7.0)
                .collect();
            e.target = (0..3 + i).map(|k| (4 + (k * 5 + i) % 30) as u32).collect();
            e
        })
        .collect();
    let init = crate::model::checkpoint::weights_to_bytes(&Vlm::<crate::model::Cpu>::new(
        cfg,
        &Default::default(),
    ))
    .unwrap();
    (data, init)
}

/// A step reads the device once, after its backward passes and optimizer step, whatever the
/// objective, the diagnostics and the micro-batches (on a GPU every read drains the queue of
/// launches). Broken by reading each micro-batch's loss before `backward()`, it fails.
#[test]
fn one_host_read_per_step() {
    let cfg = crate::model::config::small_config();
    let (data, init) = varied_data(&cfg);
    for (objective, grad_accum) in [
        (ObjectiveKind::Standard, 1),
        (ObjectiveKind::Reweight, 2),
        (ObjectiveKind::Ngdiff, 2),
    ] {
        let settings = SftSettings {
            objective,
            steps: 3,
            batch_size: 2,
            grad_accum,
            diagnostics_every: 2,
            seed: 7,
            max_text: 12,
            ..SftSettings::default()
        };
        let before = crate::model::host::reads_on_this_thread();
        let out = train_cpu(&settings, &cfg, Some(&init), &data);
        let reads = crate::model::host::reads_on_this_thread() - before;
        assert_eq!(reads, 3, "{objective:?}: {reads} host reads in 3 steps");
        // The one read carries every statistic of the log.
        let first = &out.log[0];
        assert!(first.loss.is_finite() && first.loss > 0.0, "{first:?}");
        assert!(first.perception_grad_share.is_some() && first.loss_perception_blank.is_some());
        assert!(out.log[1].perception_grad_share.is_none());
        assert_eq!(first.lambda.is_some(), objective != ObjectiveKind::Standard);
    }
}

/// Padding a batch to a bucket (as on a GPU) changes neither the losses nor the gradients: the
/// same run with rows padded to 32 ends with the same weights, losses and gradient norms.
/// Broken by giving padding labels a weight, it fails.
#[test]
fn bucketed_padding_changes_neither_loss_nor_gradients() {
    let cfg = crate::model::config::small_config();
    let (data, init) = varied_data(&cfg);
    let refs: Vec<&Example> = data.iter().collect();
    let dev = Default::default();
    let plain = make_batch::<crate::model::Cpu>(&refs, cfg.image_size, 40, 1, 0, &dev);
    let padded = make_batch::<crate::model::Cpu>(&refs, cfg.image_size, 40, 32, 0, &dev);
    assert_eq!((plain.len, padded.len), (7, 32));
    for objective in [ObjectiveKind::Standard, ObjectiveKind::Ngdiff] {
        let run = |seq_bucket: usize| {
            let settings = SftSettings {
                objective,
                steps: 2,
                batch_size: 3,
                diagnostics_every: 1,
                seed: 5,
                max_text: 40,
                seq_bucket,
                ..SftSettings::default()
            };
            let out = train_cpu(&settings, &cfg, Some(&init), &data);
            (out.weights().unwrap(), out.log)
        };
        let ((w1, log1), (w32, log32)) = (run(1), run(32));
        let (a, b) = (
            crate::model::checkpoint::model_from_bytes::<crate::model::Cpu>(&cfg, &w1, &dev)
                .unwrap(),
            crate::model::checkpoint::model_from_bytes::<crate::model::Cpu>(&cfg, &w32, &dev)
                .unwrap(),
        );
        let (fa, fb) = (flat_weights(&a), flat_weights(&b));
        let diff = fa
            .iter()
            .zip(&fb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{objective:?}: max |Δw| {diff}");
        for (x, y) in log1.iter().zip(&log32) {
            assert!((x.loss - y.loss).abs() < 1e-5, "{objective:?} {x:?} {y:?}");
            assert!((x.grad_norm - y.grad_norm).abs() < 1e-4, "{x:?} {y:?}");
            let (gx, gy) = (x.perception_grad_share, y.perception_grad_share);
            assert!((gx.unwrap() - gy.unwrap()).abs() < 1e-4, "{gx:?} {gy:?}");
        }
    }
}

/// Every float parameter of `model`, in module order.
fn flat_weights(model: &impl burn::module::Module<crate::model::Cpu>) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl burn::module::ModuleVisitor<crate::model::Cpu> for Flat {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<Tensor<crate::model::Cpu, D>>,
        ) {
            self.0.extend(crate::model::host_f32(p.val()).unwrap());
        }
    }
    let mut w = Flat(Vec::new());
    model.visit(&mut w);
    w.0
}

/// Over 100 steps of targets 20 to 200 tokens long, GPU buckets of 64 give at most 4 padded
/// lengths (so at most 4 shapes to compile and tune), where exact padding gives dozens.
#[test]
fn a_run_sees_a_handful_of_shapes_with_buckets() {
    let data: Vec<Example> = (0..50)
        .map(|i| {
            let mut e = example(20 + (i * 37) % 181);
            e.id = format!("e{i}");
            e.image = vec![0.0; 4];
            e
        })
        .collect();
    let dev = Default::default();
    let shapes = |bucket: usize| {
        let s = SftSettings {
            steps: 100,
            batch_size: 4,
            seed: 3,
            max_text: 256,
            seq_bucket: bucket,
            ..SftSettings::default()
        };
        let mut lens = std::collections::BTreeSet::new();
        for step in 0..s.steps {
            let exs: Vec<&Example> = batch_indices(data.len(), &s, step, 0)
                .into_iter()
                .map(|i| &data[i])
                .collect();
            let b = make_batch::<crate::model::Cpu>(&exs, 2, s.max_text, s.seq_bucket, 0, &dev);
            lens.insert(b.len);
        }
        lens.len()
    };
    let (exact, bucketed) = (shapes(1), shapes(64));
    assert!(bucketed <= 4, "{bucketed} shapes with buckets of 64");
    assert!(exact > 20, "{exact} shapes with exact padding");
}

/// The stopping rule: `patience` checks in a row without a fall of more than `min_delta` below
/// the best.
#[test]
fn early_stop_counts_checks_without_improvement() {
    let rule = |patience, min_delta| EarlyStop {
        every: 1,
        patience,
        min_delta,
    };
    assert!(rule(2, 0.0).should_stop(&[3.0, 2.0, 2.5, 2.1]));
    assert!(!rule(2, 0.0).should_stop(&[3.0, 2.0, 2.5, 1.9]));
    assert!(!rule(3, 0.0).should_stop(&[3.0, 2.0, 2.5, 2.1]));
    // 2.9 and 2.85 are below 3.0, but not by more than 0.2.
    assert!(rule(2, 0.2).should_stop(&[3.0, 2.9, 2.85]));
    assert!(!rule(2, 0.0).should_stop(&[3.0, 2.9, 2.85]));
    assert!(!rule(1, 0.0).should_stop(&[]));
}

/// Hooks that give the standard loss on a validation set.
struct ValHooks<'a> {
    val: &'a [Example],
    settings: SftSettings,
}

impl<B: AutodiffBackend> SftHooks<B> for ValHooks<'_> {
    fn val_loss(
        &mut self,
        _: usize,
        model: &Model<B::InnerBackend>,
    ) -> Result<Option<f64>, TrainError> {
        standard_loss(model, self.val, &self.settings, 0, &Default::default()).map(Some)
    }
}

/// Early stopping on the validation loss: a run that cannot learn (lr 0) stops after its first
/// check and `patience` more, its validation loss is the standard objective's loss of the same
/// weights on the same examples; a run that learns sees its validation loss fall.
#[test]
fn early_stopping_reads_the_standard_validation_loss() {
    type B = burn::backend::Autodiff<crate::model::Cpu>;
    let data: Vec<Example> = (2..6).map(example).collect();
    let cfg = VlmConfig {
        image_size: 4,
        patch_size: 4,
        vit_dim: 8,
        vit_layers: 1,
        vit_heads: 1,
        conv_stem: 0,
        d_model: 8,
        layers: 1,
        heads: 1,
        mlp_ratio: 2,
        vocab_size: 6,
        max_seq_len: 16,
        rope_theta: 10000.0,
    };
    let run = |lr: f64| {
        let settings = SftSettings {
            steps: 40,
            batch_size: 4,
            lr,
            min_lr: lr,
            seed: 2,
            max_text: 8,
            early_stop: Some(EarlyStop {
                every: 2,
                patience: 2,
                min_delta: 0.0,
            }),
            ..SftSettings::default()
        };
        let dir = crate::util::fsx::TempDir::new("asymm-sft").unwrap();
        let device = Default::default();
        let model = crate::model::load::native_model::<B>(&cfg, None, 2, &device).unwrap();
        let mut hooks = ValHooks {
            val: &data,
            settings: settings.clone(),
        };
        train::<B>(&settings, model, &data, &device, dir.path(), 0, &mut hooks).unwrap()
    };
    let frozen = run(0.0);
    assert_eq!(frozen.log.len(), 6, "stops at step 2 + 2·2");
    let checks: Vec<(usize, f64)> = frozen
        .log
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (r.step, v)))
        .collect();
    assert_eq!(checks.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 4, 6]);
    // The batch is the whole (validation) set and the weights do not move: the logged
    // standard loss of a step is the validation loss.
    for r in &frozen.log {
        if let Some(v) = r.val_loss {
            assert!(
                (v - r.loss).abs() < 1e-5,
                "step {}: {v} against {}",
                r.step,
                r.loss
            );
        }
    }
    let learning = run(3e-2);
    let v: Vec<f64> = learning.log.iter().filter_map(|r| r.val_loss).collect();
    assert!(v.len() >= 3, "{v:?}");
    assert!(
        v.iter().cloned().fold(f64::INFINITY, f64::min) < v[0] - 0.1,
        "{v:?}"
    );
}

/// The leader's early stop reaches every peer: with a validation loss that only rises (given to
/// the leader alone), two peers stop together after `patience` checks, and every peer ends at
/// the same step (a peer left training would wait for the others forever).
#[test]
fn data_parallel_peers_stop_on_the_leaders_validation_loss() {
    struct Rising;
    impl<B: AutodiffBackend> SftHooks<B> for Rising {
        fn val_loss(
            &mut self,
            step: usize,
            _: &Model<B::InnerBackend>,
        ) -> Result<Option<f64>, TrainError> {
            Ok(Some(step as f64))
        }
    }
    type B = burn::backend::Autodiff<crate::model::Cpu>;
    let cfg = crate::model::config::small_config();
    let (data, init) = varied_data(&cfg);
    let settings = SftSettings {
        steps: 6,
        batch_size: 4,
        data_parallel: 2,
        max_text: 12,
        early_stop: Some(EarlyStop {
            every: 1,
            patience: 2,
            min_delta: 0.0,
        }),
        ..SftSettings::default()
    };
    let dir = crate::util::fsx::TempDir::new("asymm-sft").unwrap();
    let device = Default::default();
    let model = crate::model::load::native_model::<B>(&cfg, Some(&init), 1, &device).unwrap();
    let out = train::<B>(&settings, model, &data, &device, dir.path(), 0, &mut Rising).unwrap();
    let seen: Vec<(usize, Option<f64>)> = out.log.iter().map(|r| (r.step, r.val_loss)).collect();
    assert_eq!(seen, [(1, Some(1.0)), (2, Some(2.0)), (3, Some(3.0))]);
}
