use super::*;
use crate::model::VlmConfig;
use crate::model::checkpoint::model_from_bytes;
use crate::model::config::small_config;
use crate::model::{Cpu, Vlm};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use std::sync::Arc;

type B = Autodiff<Cpu>;

/// What a test reads of an update: the new weights (checkpoint format), the optimizer
/// state and the log.
struct Updated {
    weights: Vec<u8>,
    state: OptimState,
    log: Vec<MinibatchRow>,
}

/// One update of the built-in policy with weights `init`, continuing from `state`.
fn update(
    settings: &UpdateSettings,
    cfg: &VlmConfig,
    init: &[u8],
    state: Option<&OptimState>,
    seqs: &[Sequence],
    progress: impl FnMut(&MinibatchRow) + Send,
) -> Result<Updated> {
    let dev = Default::default();
    let policy = Policy::<B> {
        model: Model::from(model_from_bytes::<B>(cfg, init, &dev)?),
        state,
        reference: None,
    };
    let out = update_model(settings, policy, seqs, 0, &dev, progress)?;
    Ok(Updated {
        weights: out.model.weights_bytes()?,
        state: out.state,
        log: out.log,
    })
}

/// Every weight of a checkpoint, in the module tree's order.
fn host_weights(cfg: &VlmConfig, weights: &[u8]) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl burn::module::ModuleVisitor<Cpu> for Flat {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<Cpu, D>>) {
            self.0.extend(p.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let m = model_from_bytes::<Cpu>(cfg, weights, &Default::default()).unwrap();
    let mut w = Flat(Vec::new());
    burn::module::Module::visit(&m, &mut w);
    w.0
}

#[test]
fn minibatches_cover_each_sequence_once_per_epoch() {
    for epoch in 0..3 {
        let mb = minibatches(10, 4, 7, epoch);
        assert_eq!(mb.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut all: Vec<usize> = mb.into_iter().flatten().collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(minibatches(10, 4, 7, 0), minibatches(10, 4, 7, 1));
    assert_eq!(minibatches(10, 4, 7, 1), minibatches(10, 4, 7, 1));
}

/// What the update tests share: a small model, its weights, two sequences of one item (one
/// rewarded, one not, their old log-probabilities from the model) and the update's settings.
struct Fixture {
    cfg: VlmConfig,
    dev: burn::tensor::Device<Cpu>,
    model: Model<Cpu>,
    init: Vec<u8>,
    good: Sequence,
    bad: Sequence,
    settings: UpdateSettings,
}

const TEMPERATURE: f32 = 1.0;

/// A sequence of `tokens` with advantage `adv`, its old log-probabilities under `m`.
fn sequence(
    tokens: Vec<u32>,
    adv: f32,
    m: &Model<Cpu>,
    dev: &burn::tensor::Device<Cpu>,
) -> Sequence {
    let image: Arc<[f32]> = vec![0.5f32; 32 * 32].into();
    let s = Sequence {
        image,
        prefix: vec![1, 2],
        old_logprobs: vec![0.0; tokens.len()],
        perception_tokens: 1,
        advantages: vec![adv; tokens.len()],
        tokens,
        reward: f64::from(adv > 0.0),
    };
    let b = ForcedBatch::<Cpu>::new(&[&s], 32, 1, 0, dev).unwrap();
    let lp = b.gather_host(&host_f32(token_logprobs(m, &b, TEMPERATURE).unwrap().0).unwrap());
    Sequence {
        old_logprobs: lp[0].clone(),
        ..s
    }
}

fn fixture() -> Fixture {
    let cfg = small_config();
    let dev = Default::default();
    Cpu::seed(&dev, 2);
    let model: Model<Cpu> = Vlm::<Cpu>::new(&cfg, &dev).into();
    let init = model.weights_bytes().unwrap();
    let good = sequence(vec![5, 6, 7, 39], 1.0, &model, &dev);
    let bad = sequence(vec![8, 9, 39], -1.0, &model, &dev);
    let settings = UpdateSettings {
        loss: LossSettings {
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.0,
            gspo: false,
            temperature: TEMPERATURE,
        },
        ppo_epochs: 4,
        mini_batch: 2,
        micro_batch: 1,
        lr: 3e-3,
        weight_decay: 0.0,
        grad_clip: 1.0,
        seed: 1,
        max_logprob_gap: 1e-3,
        seq_bucket: 1,
        data_parallel: 1,
    };
    Fixture {
        cfg,
        dev,
        model,
        init,
        good,
        bad,
        settings,
    }
}

impl Fixture {
    fn seqs(&self) -> Vec<Sequence> {
        vec![self.good.clone(), self.bad.clone()]
    }

    fn update(&self, s: &UpdateSettings) -> Updated {
        update(s, &self.cfg, &self.init, None, &self.seqs(), |_| {}).unwrap()
    }
}

/// Two sequences of one item, one rewarded and one not: the update makes the rewarded one
/// likelier and the other less likely; the first mini-batch is on-policy (ratio 1, gap ~0),
/// later ones are not.
#[test]
fn an_update_moves_probability_toward_positive_advantage() {
    let f = fixture();
    let (cfg, dev, init, settings) = (&f.cfg, &f.dev, &f.init, &f.settings);
    let seqs = f.seqs();
    // One host read per optimizer step (statistics and gradient norm together), counted
    // with the mini-batch as one micro-batch, on this thread.
    let one_micro = UpdateSettings {
        micro_batch: 2,
        ..settings.clone()
    };
    let mut reads = vec![crate::model::host::reads_on_this_thread()];
    update(&one_micro, cfg, init, None, &seqs, |_| {
        reads.push(crate::model::host::reads_on_this_thread())
    })
    .unwrap();
    let per_step: Vec<u64> = reads.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(per_step, [1, 1, 1, 1]);
    let out = f.update(settings);
    assert_eq!(out.log.len(), 4);
    let first = &out.log[0];
    assert!(first.logprob_gap < 1e-4, "{first:?}");
    assert!((first.ratio_mean - 1.0).abs() < 1e-4, "{first:?}");
    assert!((first.loss - 0.0).abs() < 1e-5, "−mean Â = 0: {first:?}");
    assert!(out.log[3].logprob_gap > 1e-3, "{:?}", out.log[3]);
    let after: Model<Cpu> =
        crate::model::checkpoint::model_from_bytes::<Cpu>(cfg, &out.weights, dev)
            .unwrap()
            .into();
    let total = |s: &Sequence, m: &Model<Cpu>| -> f32 {
        let b = ForcedBatch::<Cpu>::new(&[s], 32, 1, 0, dev).unwrap();
        b.gather_host(&host_f32(token_logprobs(m, &b, TEMPERATURE).unwrap().0).unwrap())[0]
            .iter()
            .sum()
    };
    assert!(total(&f.good, &after) > total(&f.good, &f.model) + 0.1);
    assert!(total(&f.bad, &after) < total(&f.bad, &f.model) - 0.1);
    // The two micro-batches of each mini-batch ran concurrently, their kernels on rayon's
    // pool; with a one-thread pool the result is the same to the bit.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let serial = pool.install(|| f.update(settings));
    assert_eq!(serial.weights, out.weights);
    assert_eq!(serial.log, out.log);
}

/// Two data-parallel peers, a sequence each of every mini-batch, weighted by the whole
/// mini-batch's size and all-reduced before clipping, step as one peer does: the same weights
/// (within 1e-5 of the largest), gradient norms and clipping decisions; three peers cannot
/// share a mini-batch of two sequences.
#[test]
fn data_parallel_peers_update_as_one() {
    let f = fixture();
    let out = f.update(&f.settings);
    let peers = UpdateSettings {
        data_parallel: 2,
        ..f.settings.clone()
    };
    let two = f.update(&peers);
    let (w1, w2) = (
        host_weights(&f.cfg, &out.weights),
        host_weights(&f.cfg, &two.weights),
    );
    let scale = w1.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = w1
        .iter()
        .zip(&w2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-5 * scale, "max |Δw| {diff}, largest |w| {scale}");
    assert_eq!(two.log.len(), out.log.len());
    for (a, b) in out.log.iter().zip(&two.log) {
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-5 * a.grad_norm,
            "{a:?} {b:?}"
        );
        assert_eq!(
            a.grad_norm > 1.0,
            b.grad_norm > 1.0,
            "clipping: {a:?} {b:?}"
        );
        assert_eq!((a.tokens, a.sequences), (b.tokens, b.sequences));
        assert!((a.loss - b.loss).abs() < 1e-6, "{a:?} {b:?}");
    }
    let three = UpdateSettings {
        data_parallel: 3,
        ..f.settings.clone()
    };
    let err = update(&three, &f.cfg, &f.init, None, &f.seqs(), |_| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("data_parallel = 3"), "{err}");
}

/// Two updates of two epochs each, the second continuing the first's AdamW state, end where
/// one update of four epochs does (one mini-batch per epoch, so only the order of the two
/// sequences within it differs); a fresh optimizer for the second does not; a state saved with
/// other weights is refused.
#[test]
fn optimizer_state_carries_across_updates() {
    let f = fixture();
    let (cfg, dev, seqs) = (&f.cfg, &f.dev, f.seqs());
    let whole = UpdateSettings {
        mini_batch: 2,
        micro_batch: 2,
        max_logprob_gap: 0.0,
        ..f.settings.clone()
    };
    let half = UpdateSettings {
        ppo_epochs: 2,
        ..whole.clone()
    };
    let flat = |w: &[u8]| -> Vec<f32> {
        let m = crate::model::checkpoint::model_from_bytes::<Cpu>(cfg, w, dev).unwrap();
        let mut v = Vec::new();
        for p in [m.lm_head.weight.val(), m.embed.weight.val()] {
            v.extend(p.into_data().to_vec::<f32>().unwrap());
        }
        v
    };
    let run = |s: &UpdateSettings, init: &[u8], st: Option<&OptimState>| {
        update(s, cfg, init, st, &seqs, |_| {}).unwrap()
    };
    let one = run(&whole, &f.init, None);
    let first = run(&half, &f.init, None);
    let carried = run(&half, &first.weights, Some(&first.state));
    let fresh = run(&half, &first.weights, None);
    let dist = |a: &[u8], b: &[u8]| -> f32 {
        flat(a)
            .iter()
            .zip(flat(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    assert!(dist(&carried.weights, &one.weights) < 1e-5);
    assert!(dist(&fresh.weights, &one.weights) > 1e-4);
    let err = update(&half, cfg, &f.init, Some(&first.state), &seqs, |_| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("other weights"), "{err}");
}

/// Rollouts from another policy are refused before any step.
#[test]
fn rollouts_of_another_policy_are_refused() {
    let f = fixture();
    let other_model: Model<Cpu> = Vlm::<Cpu>::new(&f.cfg, &f.dev).into();
    let other = sequence(vec![5, 6, 7, 39], 1.0, &other_model, &f.dev);
    let err = update(
        &f.settings,
        &f.cfg,
        &f.init,
        None,
        &[other, f.bad.clone()],
        |_| {},
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("not sampled from this checkpoint"), "{err}");
}
