use super::*;
use crate::model::{Vlm, VlmConfig};

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
    let model =
        crate::train::trainer::native_model::<B>(cfg, init, settings.seed, &device).unwrap();
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
    // One initialization for every run (the backend's random stream is shared by tests
    // running concurrently).
    let init = crate::model::checkpoint::weights_to_bytes(&Vlm::<crate::model::Cpu>::new(
        &cfg,
        &Default::default(),
    ))
    .unwrap();
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
                Vlm::<crate::model::Cpu>::new(&cfg, &Default::default()),
                &out.weights().unwrap(),
            )
            .unwrap();
            let mut w = Flat(Vec::new());
            burn::module::Module::visit(&model, &mut w);
            (w.0, out.log)
        };
        let (w1, log1) = run(1);
        for shards in [2, 3] {
            let (w, log) = run(shards);
            let diff = w1
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-5,
                "{objective:?}, {shards} shards: max |Δw| {diff}"
            );
            for (a, b) in log1.iter().zip(&log) {
                assert!((a.loss - b.loss).abs() < 1e-5, "{objective:?} {shards}");
                let (ga, gb) = (a.perception_grad_share, b.perception_grad_share);
                assert!((ga.unwrap() - gb.unwrap()).abs() < 1e-4, "{ga:?} {gb:?}");
                assert_eq!(a.perception_token_share, b.perception_token_share);
            }
        }
    }
}
