//! The RL stages end to end on a very small model: SFT (long enough that sampled perceptions
//! sometimes match the greedy transcription, so rewards vary within a group), rollouts of an RL
//! step's keyed items, a CLIP-style dual encoder, reward-score with the teacher reward in the
//! reward and the self-reward and the CLIP reward beside it, GRPO updates (token-level with a KL to the SFT model and token reweighting; GSPO)
//! and correlate — read back as data; a rerun is a no-op.

use crate::common::*;
use arrow::array::Array;
use asymm::store::Store;
use asymm::table::Table;
use std::collections::BTreeSet;
use std::path::Path;

const PIPELINE: &str = r#"
[pipeline]
name = "rl"
seed = 7

[stages.synthesize]
splits = { test = 2, sft = 16, rl = 4 }
graph = { min_nodes = 3, max_nodes = 4, edge_prob = 0.5 }

[stages.render]
inputs = { puzzles = "synthesize" }
size = 64

[stages.distill_format]
inputs = { puzzles = "synthesize", images = "render" }
verbosity = 0

[stages.sft]
stage = "sft-train"
inputs = { data = "distill_format" }
size = { image_size = 32, patch_size = 16, vit_dim = 16, vit_layers = 1, vit_heads = 2, d_model = 48, layers = 2, heads = 2, max_seq_len = 256 }
steps = 600
batch_size = 4
eval_items = 1
eval_max_new_tokens = 8
diagnostics_every = 0
snapshot_every = 0

[stages.rollout]
inputs = { checkpoint = "sft", data = "distill_format" }
split = "rl"
prompts_per_step = 2
step = 0
samples = 4
max_new_tokens = 48
sampling = { temperature = 0.5 }

[stages.rollout_next]
stage = "rollout"
inputs = { checkpoint = "sft", data = "distill_format" }
split = "rl"
prompts_per_step = 2
step = 1
samples = 1
max_new_tokens = 4

[stages.clip]
stage = "clip-train"
inputs = { data = "distill_format" }
image_size = 32
conv_stem = 0
dim = 16
image_layers = 1
text_layers = 1
heads = 2
embed_dim = 8
steps = 12
batch_size = 4
eval_items = 2

[stages.reward]
stage = "reward-score"
inputs = { rollouts = "rollout", data = "distill_format", checkpoint = "sft", teacher = "sft", clip = "clip" }
alpha = 0.5
perception = "teacher"
surrogates = ["self", "clip"]
self_n = 2
self_max_new_tokens = 40

[stages.grpo]
stage = "grpo-update"
inputs = { checkpoint = "sft", rollouts = "rollout", rewards = "reward", data = "distill_format", reference = "sft" }
lr = 1e-3
kl_coef = 0.01
ppo_epochs = 2
mini_batch = 4
micro_batch = 2
token_lambda = 0.5

[stages.grpo_gspo]
stage = "grpo-update"
inputs = { checkpoint = "sft", rollouts = "rollout", rewards = "reward", data = "distill_format" }
lr = 1e-3
gspo = true
clip_low = 3e-4
clip_high = 4e-4
ppo_epochs = 2

[stages.correlate]
inputs = { rewards = "reward" }
reps = 200
"#;

fn artifact(store: &Path, instance: &str, output: &str) -> String {
    let s = Store::open(store).unwrap();
    let key = s
        .head("rl", instance)
        .unwrap()
        .unwrap_or_else(|| panic!("no run of {instance}"));
    s.record(&key).unwrap().unwrap().outputs[output].clone()
}

fn read(store: &Path, instance: &str, output: &str, kind: &str) -> Table {
    Table::read(
        &Store::open(store).unwrap(),
        &artifact(store, instance, output),
        kind,
    )
    .unwrap()
}

#[test]
fn rollout_reward_update_correlate_and_rerun() {
    let d = asymm::util::fsx::TempDir::new("asymm-rl").unwrap();
    let store = d.path().join("s");
    let p = d.path().join("rl.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let ps = p.to_str().unwrap();
    let first = table(&ok(asymm(&store, &["run", ps])));
    assert!(first.iter().all(|r| r.1 == "ran"), "{first:?}");

    // Each step samples its own keyed items of the RL split: two, disjoint from the next step's.
    let roll = read(&store, "rollout", "main", "rollouts");
    let next = read(&store, "rollout_next", "main", "rollouts");
    let items =
        |t: &Table| -> BTreeSet<String> { t.required_strings("id").unwrap().into_iter().collect() };
    assert_eq!(roll.rows(), 8);
    assert_eq!(items(&roll).len(), 2);
    assert_eq!(items(&next).len(), 2);
    assert!(items(&roll).is_disjoint(&items(&next)));
    let temps = roll.f32("temperature").unwrap();
    assert!((0..roll.rows()).all(|i| temps.value(i) == 0.5));

    // One reward row per rollout, every component kept.
    let rw = read(&store, "reward", "main", "rewards");
    assert_eq!(rw.rows(), 8);
    let (a, reward) = (rw.bool("a").unwrap(), rw.f64("reward").unwrap());
    let (first_self, mean_self) = (rw.f64("self_first").unwrap(), rw.f64("self_mean").unwrap());
    let (n, teacher) = (rw.i32("self_samples").unwrap(), rw.f64("teacher").unwrap());
    let clip = rw.f64("clip").unwrap();
    let unread = rw.f64("self_unread").unwrap();
    // Which rollouts' own perception can be read: only those are re-rolled for the self-reward.
    let readable: std::collections::BTreeMap<(String, i32), bool> = {
        let (rid, rs) = (
            roll.required_strings("id").unwrap(),
            roll.i32("sample").unwrap(),
        );
        let p = roll.strings("perception").unwrap();
        (0..roll.rows())
            .map(|i| ((rid[i].clone(), rs.value(i)), p[i].is_some()))
            .collect()
    };
    let samples = rw.i32("sample").unwrap();
    let ids = rw.required_strings("id").unwrap();
    let mut groups: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for (i, id) in ids.iter().enumerate() {
        // α-augmentation with the teacher reward: R = 0.5·teacher + 0.5·a.
        let want = 0.5 * teacher.value(i) + 0.5 * f64::from(u8::from(a.value(i)));
        assert!((reward.value(i) - want).abs() < 1e-12, "row {i}");
        groups.entry(id).or_default().push(reward.value(i));
        assert_eq!(n.value(i), 2);
        for c in [first_self, mean_self, teacher] {
            assert!(
                !c.is_null(i) && (0.0..=1.0).contains(&c.value(i)),
                "row {i}"
            );
        }
        // A cosine similarity (−1 for a perception that cannot be read).
        assert!(!clip.is_null(i) && (-1.0..=1.0).contains(&clip.value(i)));
        // With N = 2 the mean is a multiple of 1/2.
        assert_eq!((mean_self.value(i) * 2.0).fract(), 0.0);
        // The share of re-rollouts without a readable reasoning: set exactly where there were
        // re-rollouts, a multiple of 1/2 in [0, 1].
        let key = (ids[i].clone(), samples.value(i));
        assert_eq!(!unread.is_null(i), readable[&key], "row {i}");
        if !unread.is_null(i) {
            let u = unread.value(i);
            assert!(
                (0.0..=1.0).contains(&u) && (u * 2.0).fract() == 0.0,
                "row {i}: {u}"
            );
        }
    }

    let zero_groups = groups
        .values()
        .filter(|g| g.iter().all(|&x| x == g[0]))
        .count() as f64
        / groups.len() as f64;
    assert!(
        zero_groups < 1.0,
        "no group has reward variance (the SFT model no longer varies its perceptions): \
         {groups:?}"
    );
    let mean_reward = (0..rw.rows()).map(|i| reward.value(i)).sum::<f64>() / 8.0;

    // The samples the update trained on, recomputed from the reward artifact alone: Â over
    // each item's samples with the Bessel-corrected deviation + 1e-6, scales of token λ = 0.5.
    let sm = read(&store, "grpo", "samples", "rl_samples");
    assert_eq!(sm.rows(), 8);
    let (sid, ssample) = (
        sm.required_strings("id").unwrap(),
        sm.i32("sample").unwrap(),
    );
    let (sreward, adv) = (sm.f64("reward").unwrap(), sm.f64("advantage").unwrap());
    let (ntok, nper) = (
        sm.i32("tokens").unwrap(),
        sm.i32("perception_tokens").unwrap(),
    );
    let (sp, sr) = (
        sm.f64("perception_scale").unwrap(),
        sm.f64("reasoning_scale").unwrap(),
    );
    let rsample = rw.i32("sample").unwrap();
    for i in 0..sm.rows() {
        let j = (0..rw.rows())
            .find(|&j| ids[j] == sid[i] && rsample.value(j) == ssample.value(i))
            .unwrap_or_else(|| panic!("sample row {i} has no reward row"));
        assert_eq!(sreward.value(i), reward.value(j), "row {i}");
        let g = &groups[sid[i].as_str()];
        let m = g.iter().sum::<f64>() / g.len() as f64;
        let sd = (g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (g.len() - 1) as f64).sqrt();
        let want = if g.iter().all(|&x| x == g[0]) {
            0.0
        } else {
            (reward.value(j) - m) / (sd + 1e-6)
        };
        assert!(
            (adv.value(i) - want).abs() < 1e-9,
            "row {i}: {} vs {want}",
            adv.value(i)
        );
        let (y, p) = (f64::from(ntok.value(i)), f64::from(nper.value(i)));
        assert!(p <= y && y > 0.0, "row {i}");
        let scale = |w: f64, n: f64| if n > 0.0 { w * y / n } else { 0.0 };
        assert!((sp.value(i) - scale(0.5, p)).abs() < 1e-12, "row {i}");
        assert!((sr.value(i) - scale(0.5, y - p)).abs() < 1e-12, "row {i}");
    }

    // The update: 2 epochs × 2 mini-batches of 4; the first is on-policy.
    let log = read(&store, "grpo", "log", "rl_log");
    assert_eq!(log.rows(), 4);
    let col = |c: &str| log.f64(c).unwrap().clone();
    let (gap, ratio, kl, clip) = (
        col("logprob_gap"),
        col("ratio_mean"),
        col("kl"),
        col("clip_frac"),
    );
    let (epoch, mb) = (log.i32("epoch").unwrap(), log.i32("minibatch").unwrap());
    assert_eq!(
        (0..4)
            .map(|i| (epoch.value(i), mb.value(i)))
            .collect::<Vec<_>>(),
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    );
    assert!(
        gap.value(0) < 1e-3,
        "stored log-probs match: {}",
        gap.value(0)
    );
    assert!((ratio.value(0) - 1.0).abs() < 1e-3);
    assert!(kl.value(0).abs() < 1e-6, "policy = reference at first");
    for i in 0..4 {
        assert!(kl.value(i).is_finite() && kl.value(i) > -1e-6);
        assert!((0.0..=1.0).contains(&clip.value(i)));
        assert!((0.0..=1.0).contains(&col("perception_share").value(i)));
        assert_eq!(col("zero_adv_groups").value(i), zero_groups);
        assert!((col("step_reward").value(i) - mean_reward).abs() < 1e-12);
        assert!(
            col("step_r_reward_a_p").is_null(i) || col("step_r_reward_a_p").value(i).abs() <= 1.0
        );
        assert_eq!(col("token_lambda").value(i), 0.5);
        assert!(col("response_len").value(i) > 0.0);
    }
    assert!(gap.value(3) > 0.0, "the policy moved");
    // Some advantage is not zero: the policy term moves once the ratio leaves 1.
    assert!(
        (1..4).any(|i| col("pg_loss").value(i).abs() > 1e-9),
        "{:?}",
        col("pg_loss")
    );

    // GSPO: one mini-batch of all 8 per epoch; the first on-policy, without a KL term.
    let gspo = read(&store, "grpo_gspo", "log", "rl_log");
    assert_eq!(gspo.rows(), 2);
    let (g_ratio, g_kl) = (gspo.f64("ratio_mean").unwrap(), gspo.f64("kl").unwrap());
    assert!((g_ratio.value(0) - 1.0).abs() < 1e-3);
    assert!(g_kl.is_null(0) && g_kl.is_null(1));
    assert_eq!(gspo.i32("sequences").unwrap().value(0), 8);
    let ckpt = Store::open(&store)
        .unwrap()
        .manifest(&artifact(&store, "grpo", "main"))
        .unwrap();
    assert_eq!(ckpt.kind, "checkpoint");
    assert_ne!(
        artifact(&store, "grpo", "main"),
        artifact(&store, "sft", "main")
    );

    // The dual encoder's log: one row per step, the held-out retrieval on the last.
    let clog = read(&store, "clip", "log", "clip_log");
    assert_eq!(clog.rows(), 12);
    let retrieval = clog.f64("eval_retrieval").unwrap();
    assert!((0..11).all(|i| retrieval.is_null(i)));
    assert!((0.0..=1.0).contains(&retrieval.value(11)));
    assert_eq!(clog.f64("eval_chance").unwrap().value(11), 0.5);

    // Correlations of every reward column with a_p and ã_r.
    let c = read(&store, "correlate", "main", "correlations");
    let names: Vec<String> = c.required_strings("reward").unwrap();
    let against: Vec<String> = c.required_strings("against").unwrap();
    let want = [
        "outcome",
        "ground_truth",
        "self_1",
        "self_2",
        "teacher",
        "clip",
        "reward",
    ];
    assert_eq!(c.rows(), 2 * want.len());
    for (k, w) in want.iter().enumerate() {
        assert_eq!(names[2 * k], *w);
        assert_eq!(
            (against[2 * k].as_str(), against[2 * k + 1].as_str()),
            ("a_p", "a_tilde_r")
        );
    }
    let (nn, items) = (c.i64("n").unwrap(), c.i64("items").unwrap());
    assert!((0..c.rows()).all(|i| nn.value(i) == 8 && items.value(i) == 2));
    let r = c.f64("r").unwrap();
    for i in 0..c.rows() {
        assert!(r.is_null(i) || (-1.0..=1.0).contains(&r.value(i)));
    }
    // The teacher reward varies: its r with ã_r is defined, with an interval around it.
    let k = (0..c.rows())
        .find(|&i| names[i] == "teacher" && against[i] == "a_tilde_r")
        .unwrap();
    let (lo, hi) = (c.f64("ci_low").unwrap(), c.f64("ci_high").unwrap());
    assert!(!r.is_null(k) && !lo.is_null(k) && lo.value(k) <= hi.value(k));

    // The paired comparisons: each reward's r with ã_r against its r with a_p, then every two
    // rewards' r with a_p; each difference is the two correlations' difference.
    let d = read(
        &store,
        "correlate",
        "differences",
        "correlation_differences",
    );
    assert_eq!(d.rows(), want.len() + want.len() * (want.len() - 1) / 2);
    let text = |c: &str| d.required_strings(c).unwrap();
    let (fr, fa, sr, sa) = (
        text("first_reward"),
        text("first_against"),
        text("second_reward"),
        text("second_against"),
    );
    let r_of = |name: &str, a: &str| {
        (0..c.rows())
            .find(|&i| names[i] == name && against[i] == a)
            .and_then(|i| (!r.is_null(i)).then(|| r.value(i)))
    };
    let diff = d.f64("diff").unwrap();
    for i in 0..d.rows() {
        if i < want.len() {
            assert_eq!((fr[i].as_str(), sr[i].as_str()), (want[i], want[i]));
            assert_eq!((fa[i].as_str(), sa[i].as_str()), ("a_p", "a_tilde_r"));
        } else {
            assert_eq!((fa[i].as_str(), sa[i].as_str()), ("a_p", "a_p"));
        }
        let expect = r_of(&sr[i], &sa[i])
            .zip(r_of(&fr[i], &fa[i]))
            .map(|(x, y)| x - y);
        match expect {
            Some(e) => assert!((diff.value(i) - e).abs() < 1e-12, "row {i}"),
            None => assert!(diff.is_null(i), "row {i}"),
        }
    }
    assert_eq!(
        (fr[want.len()].as_str(), sr[want.len()].as_str()),
        ("outcome", "ground_truth")
    );

    // A rerun is a no-op.
    let again = table(&ok(asymm(&store, &["run", ps])));
    assert!(again.iter().all(|r| r.1 == "cached"), "{again:?}");
}

const LOOP: &str = r#"
[pipeline]
name = "loop"
seed = 3

[stages.synthesize]
splits = { test = 2, sft = 8, rl = 4 }
graph = { min_nodes = 3, max_nodes = 4, edge_prob = 0.5 }

[stages.render]
inputs = { puzzles = "synthesize" }
size = 32

[stages.distill_format]
inputs = { puzzles = "synthesize", images = "render" }
verbosity = 0

[stages.sft]
stage = "sft-train"
inputs = { data = "distill_format" }
size = { image_size = 32, patch_size = 16, vit_dim = 16, vit_layers = 1, vit_heads = 2, d_model = 32, layers = 1, heads = 2, max_seq_len = 256 }
steps = 2
batch_size = 4
eval_items = 1
eval_max_new_tokens = 4
diagnostics_every = 0
snapshot_every = 0

[stages.rl]
stage = "grpo"
inputs = { checkpoint = "sft", data = "distill_format", reference = "sft" }
steps = STEPS
rollout = { prompts_per_step = 2, samples = 2, max_new_tokens = 8 }
update = { lr = 1e-3, kl_coef = 0.01, mini_batch = 2 }
eval = { every = 1, items = 1, max_new_tokens = 4 }
"#;

fn ids(t: &[(String, String, String)]) -> Vec<(String, String)> {
    t.iter().map(|r| (r.0.clone(), r.2.clone())).collect()
}

/// The loop construct: per-step instances chained by checkpoint; a killed loop resumes where it
/// stopped and ends with the same artifacts; lengthening it keeps the steps done; rerunning is
/// a no-op.
#[test]
fn rl_loop_expands_resumes_and_extends() {
    let d = asymm::util::fsx::TempDir::new("asymm-rl").unwrap();
    let p = d.path().join("loop.toml");
    let write =
        |steps: usize| std::fs::write(&p, LOOP.replace("STEPS", &steps.to_string())).unwrap();
    let ps = p.to_str().unwrap();
    write(2);
    let a = d.path().join("a");
    let clean = table(&ok(asymm(&a, &["run", ps])));
    let names: Vec<&str> = clean.iter().map(|r| r.0.as_str()).collect();
    for n in [
        "rl_0_rollout",
        "rl_0_reward",
        "rl_0_update",
        "rl_1_rollout",
        "rl_1_reward",
        "rl",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(!names.contains(&"rl_1_update"));
    // Step 1 samples from step 0's checkpoint.
    let status = json(&a, &["status", ps]);
    let key = stage(&status, "rl_1_rollout")["key"]
        .as_str()
        .unwrap()
        .to_string();
    let rec = Store::open(&a).unwrap().record(&key).unwrap().unwrap();
    assert_eq!(
        rec.key_parts["inputs"]["checkpoint"],
        stage(&status, "rl_0_update")["outputs"]["main"]
    );
    // The last step's log continues the first's: both steps, with running sums over the
    // rollouts of both (2 prompts × 2 samples each).
    let log = json(&a, &["show", &format!("{ps}:rl.log")]);
    let steps: Vec<i64> = rows(&log)
        .iter()
        .filter_map(|r| r["step"].as_i64())
        .collect();
    assert_eq!(steps, [0, 0, 1, 1], "{log:#}");
    let last = rows(&log).last().cloned().unwrap_or_default();
    assert_eq!(last["running_rollouts"], 8, "{last:#}");
    let per_step = json(&a, &["show", &format!("{ps}:rl.log"), "--last-per", "step"]);
    assert_eq!(rows(&per_step).len(), 2, "{per_step:#}");
    assert_eq!(rows(&per_step)[1], last);
    // Held-out evaluations of the starting policy and after each step.
    let eval = json(&a, &["show", &format!("{ps}:rl.eval")]);
    let at: Vec<i64> = rows(&eval)
        .iter()
        .filter_map(|r| r["step"].as_i64())
        .collect();
    assert_eq!(at, [-1, 0, 1], "{eval:#}");
    // Step 1 continues step 0's optimizer state.
    let rec1 = Store::open(&a)
        .unwrap()
        .record(stage(&status, "rl")["key"].as_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        rec1.key_parts["inputs"]["optimizer"],
        stage(&status, "rl_0_update")["outputs"]["optimizer"]
    );

    // Killed while committing step 1's rewards, then resumed: the same artifacts.
    let b = d.path().join("b");
    let crashed = asymm_env(
        &b,
        &["run", ps],
        &[("ASYMM_FAULT", "rl_1_reward:before-commit")],
    );
    assert!(!crashed.status.success());
    let resumed = table(&ok(asymm(&b, &["run", ps])));
    assert_eq!(result_of(&resumed, "rl_0_update"), "cached");
    assert_eq!(result_of(&resumed, "rl_1_reward"), "ran");
    assert_eq!(ids(&resumed), ids(&clean));
    // Every output of every stage, the optimizer states included, is byte-identical (but the
    // wall-clock timing).
    let outputs = |store: &Path| -> Vec<serde_json::Value> {
        let st = json(store, &["status", ps]);
        st["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let mut o = s["outputs"].clone();
                o.as_object_mut().map(|m| m.remove("timing"));
                o
            })
            .collect()
    };
    assert_eq!(outputs(&a), outputs(&b));

    // Three steps: the first two are kept (the former final update is now `rl_1_update`).
    write(3);
    let longer = table(&ok(asymm(&a, &["run", ps])));
    for n in ["rl_0_update", "rl_1_rollout", "rl_1_reward", "rl_1_update"] {
        assert_eq!(result_of(&longer, n), "cached", "{n}");
    }
    for n in ["rl_2_rollout", "rl_2_reward", "rl"] {
        assert_eq!(result_of(&longer, n), "ran", "{n}");
    }
    let art = |t: &[(String, String, String)], n: &str| {
        t.iter().find(|r| r.0 == n).map(|r| r.2.clone()).unwrap()
    };
    assert_eq!(art(&longer, "rl_1_update"), art(&clean, "rl"));
    let again = table(&ok(asymm(&a, &["run", ps])));
    assert!(again.iter().all(|r| r.1 == "cached"), "{again:?}");
}

/// Retention: with `keep_every = 2` over 3 steps, step 0's checkpoint and every optimizer state
/// but the last are discarded once read; `gc` keeps their records, a rerun is a no-op, and a
/// stage that must run again gets a discarded input recomputed, byte-identical on CPU.
#[test]
fn rl_loop_retention_discards_and_recomputes() {
    let d = asymm::util::fsx::TempDir::new("asymm-rl").unwrap();
    let p = d.path().join("loop.toml");
    let text = LOOP
        .replace("STEPS", "3")
        .replace("eval = {", "keep_every = 2\neval = {");
    std::fs::write(&p, text).unwrap();
    let ps = p.to_str().unwrap();
    let s = d.path().join("s");
    let first = table(&ok(asymm(&s, &["run", ps])));
    let store = Store::open(&s).unwrap();
    let out = |inst: &str, o: &str| -> String {
        let key = store.head("loop", inst).unwrap().unwrap();
        store.record(&key).unwrap().unwrap().outputs[o].clone()
    };
    let gone = |inst: &str, o: &str| store.is_discarded(&out(inst, o));
    assert!(gone("rl_0_update", "main") && gone("rl_0_update", "optimizer"));
    assert!(!gone("rl_1_update", "main") && gone("rl_1_update", "optimizer"));
    assert!(!gone("rl", "main") && !gone("rl", "optimizer"));
    assert!(!gone("rl_0_update", "log"));
    let shown = asymm(&s, &["show", &out("rl_0_update", "main")]);
    assert!(stderr(&shown).contains("discarded"), "{}", stderr(&shown));

    ok(asymm(&s, &["gc"]));
    let again = table(&ok(asymm(&s, &["run", ps])));
    assert!(again.iter().all(|r| r.1 == "cached"), "{again:?}");

    let forced = table(&ok(asymm(&s, &["run", ps, "--force", "rl_1_update"])));
    assert_eq!(result_of(&forced, "rl_1_update"), "ran");
    assert_eq!(result_of(&forced, "rl"), "cached");
    assert_eq!(ids(&forced), ids(&first));
    assert!(gone("rl_0_update", "main"), "discarded again once read");

    // Discarding happens as the run goes: killed in step 2, step 0's checkpoint is already
    // gone; the resumed run ends with the same artifacts.
    let k = d.path().join("k");
    let crashed = asymm_env(
        &k,
        &["run", ps],
        &[("ASYMM_FAULT", "rl_2_reward:before-commit")],
    );
    assert!(!crashed.status.success());
    let ks = Store::open(&k).unwrap();
    let key = ks.head("loop", "rl_0_update").unwrap().unwrap();
    let ckpt = ks.record(&key).unwrap().unwrap().outputs["main"].clone();
    assert!(ks.is_discarded(&ckpt));
    let resumed = table(&ok(asymm(&k, &["run", ps])));
    assert_eq!(ids(&resumed), ids(&first));
}

/// correlate across RL runs: one row per run (its running r over all its rollouts and its
/// held-out gains from the starting policy), read from each run's final log and evaluations.
#[test]
fn correlate_across_runs() {
    let d = asymm::util::fsx::TempDir::new("asymm-rl").unwrap();
    let p = d.path().join("runs.toml");
    let text = LOOP.replace("STEPS", "1")
        + r#"
[stages.rl_b]
stage = "grpo"
inputs = { checkpoint = "sft", data = "distill_format", reference = "sft" }
steps = 2
rollout = { prompts_per_step = 2, samples = 2, max_new_tokens = 8 }
update = { lr = 1e-2, kl_coef = 0.01, mini_batch = 2 }
eval = { every = 2, items = 1, max_new_tokens = 4 }

[stages.runs]
stage = "correlate"
inputs = { logs = ["rl.log", "rl_b.log"], evals = ["rl.eval", "rl_b.eval"] }
"#;
    std::fs::write(&p, text).unwrap();
    let ps = p.to_str().unwrap();
    let s = d.path().join("s");
    ok(asymm(&s, &["run", ps]));
    let store = Store::open(&s).unwrap();
    let out = |inst: &str, o: &str| -> String {
        let key = store.head("loop", inst).unwrap().unwrap();
        store.record(&key).unwrap().unwrap().outputs[o].clone()
    };
    let runs = Table::read(&store, &out("runs", "runs"), "run_correlations").unwrap();
    assert_eq!(runs.required_strings("run").unwrap(), ["rl", "rl_b"]);
    let rollouts = runs.i64("rollouts").unwrap();
    assert_eq!((rollouts.value(0), rollouts.value(1)), (4, 8));
    for (k, inst) in ["rl", "rl_b"].iter().enumerate() {
        let eval = Table::read(&store, &out(inst, "eval"), "rl_eval").unwrap();
        let a_p = eval.f64("a_p").unwrap();
        let want = a_p.value(eval.rows() - 1) - a_p.value(0);
        assert_eq!(runs.f64("delta_a_p").unwrap().value(k), want);
    }
    // No rewards wired: the pool table is empty.
    let pool = Table::read(&store, &out("runs", "main"), "correlations").unwrap();
    assert_eq!(pool.rows(), 0);
    // Lists of different lengths are refused.
    let bad = std::fs::read_to_string(&p).unwrap().replace(
        r#"evals = ["rl.eval", "rl_b.eval"]"#,
        r#"evals = ["rl.eval"]"#,
    );
    std::fs::write(&p, bad).unwrap();
    let err = asymm(&s, &["run", ps]);
    assert!(!err.status.success());
    assert!(
        stderr(&err).contains("2 logs but 1 evaluation"),
        "{}",
        stderr(&err)
    );
}

/// A swept loop: one chain of steps per value, sharing what comes before the swept stage (step
/// 0's rollout); every step's reward follows its chain's value; a list input gathers every
/// chain's log.
#[test]
fn a_swept_loop_runs_one_chain_per_value() {
    let d = asymm::util::fsx::TempDir::new("asymm-rl").unwrap();
    let p = d.path().join("sweep.toml");
    let text = LOOP.replace("STEPS", "2").replace(
        "eval = {",
        "reward = { perception = \"ground_truth\" }\nsweep = { \"reward.alpha\" = [0.0, 1.0] }\neval = {",
    ) + r#"
[stages.runs]
stage = "correlate"
inputs = { logs = ["rl.log"], evals = ["rl.eval"] }
"#;
    std::fs::write(&p, text).unwrap();
    let ps = p.to_str().unwrap();
    let s = d.path().join("s");
    let rows = table(&ok(asymm(&s, &["run", ps])));
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for n in [
        "rl_0_rollout",
        "rl_0_reward[alpha=0.0]",
        "rl_0_reward[alpha=1.0]",
        "rl_1_rollout[alpha=1.0]",
        "rl_1_reward[alpha=1.0]",
        "rl[alpha=0.0]",
        "rl[alpha=1.0]",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("rl_0_rollout[")),
        "{names:?}"
    );
    let store = Store::open(&s).unwrap();
    let record = |inst: &str| {
        let key = store.head("loop", inst).unwrap().unwrap();
        store.record(&key).unwrap().unwrap()
    };
    for alpha in [0.0, 1.0] {
        let r = record(&format!("rl_1_reward[alpha={alpha:.1}]"));
        assert_eq!(r.key_parts["config"]["alpha"], alpha, "{:#}", r.key_parts);
    }
    let runs = Table::read(&store, &record("runs").outputs["runs"], "run_correlations").unwrap();
    assert_eq!(
        runs.required_strings("run").unwrap(),
        ["rl[alpha=0.0]", "rl[alpha=1.0]"]
    );
}
