//! InternVL3.5 against transformers: the fixtures in `tests/fixtures/internvl/` (made by
//! `make_fixture.py` there) hold tiny random checkpoints, their tiled inputs and transformers'
//! outputs.

use crate::checkpoints::max_diff;
use asymm::model::Cpu;
use asymm::model::hf::image::Rgb;
use asymm::model::hf::reference::Reference;
use asymm::model::internvl::InternVl;
use asymm::model::internvl::processor::TileConfig;
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    crate::checkpoints::fixture("internvl", name)
}

fn reference(name: &str) -> Reference {
    crate::checkpoints::reference(&fixture(name))
}

fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32")
}

/// The reference's ids and tiles [N, C, S, S].
fn inputs(r: &Reference) -> (Vec<u32>, Tensor<Cpu, 4>) {
    let (_, ids) = r.i64("input_ids").expect("input_ids");
    let ids = ids.into_iter().map(|x| x as u32).collect();
    let (shape, px) = r.f32("pixel_values").expect("pixel_values");
    let shape: [usize; 4] = shape.try_into().expect("4-d pixel values");
    let tiles = Tensor::from_data(TensorData::new(px, shape), &Default::default());
    (ids, tiles)
}

/// The logits of `model` on one sequence and its tiles, as host values.
fn logits_of(model: &InternVl<Cpu>, ids: &[u32], tiles: &Tensor<Cpu, 4>) -> Vec<f32> {
    values(
        model
            .prefill_rows(&[ids], &[Some(tiles.clone())])
            .expect("runs")
            .0,
    )
}

fn load(name: &str) -> InternVl<Cpu> {
    InternVl::<Cpu>::from_pretrained(&fixture(name), &Default::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Logits within 1e-4 of transformers' for each fixture config: a tied head, layer norms and
/// attention biases in the tower, three tiles (two and a thumbnail); an untied head, RMS norms
/// with q/k norms and a final layer norm in the tower, biases in the LM, one tile.
#[test]
fn logits_match_transformers() {
    for name in ["tied", "untied-rms"] {
        let model = load(name);
        let r = reference(name);
        let (ids, tiles) = inputs(&r);
        let (logits, _) = model.prefill_rows(&[&ids], &[Some(tiles)]).expect("runs");
        let (shape, want) = r.f32("logits").expect("logits");
        assert_eq!(logits.dims().to_vec(), shape, "{name}: shape");
        let d = max_diff(&values(logits), &want);
        eprintln!("{name}: max |Δlogit| = {d}");
        assert!(d <= 1e-4, "{name}: max |Δlogit| = {d}");
    }
}

/// The tower's last hidden states (class token included) and the projector's image tokens
/// (after the pixel shuffle) match transformers' within 1e-4.
#[test]
fn vision_features_match_transformers() {
    let model = load("tied");
    let r = reference("tied");
    let (_, tiles) = inputs(&r);
    let hidden = model.vision_tower.forward(tiles.clone());
    let d = max_diff(&values(hidden), &r.f32("vision_hidden").expect("tensor").1);
    assert!(d <= 1e-4, "vision_hidden: max |Δ| = {d}");
    let embeds = model.image_features(tiles);
    let (shape, want) = r.f32("image_embeds").expect("tensor");
    assert_eq!(
        embeds.dims()[0],
        shape[0] * shape[1],
        "one row per image token"
    );
    let d = max_diff(&values(embeds), &want);
    assert!(d <= 1e-4, "image_embeds: max |Δ| = {d}");
}

/// The processor cuts the fixture's 64 × 32 image into the reference's tiles: two crops (no
/// resampling), then a thumbnail of the whole image (resampled by PIL's bicubic convolution);
/// a 32 × 32 image is one tile. All equal to transformers' within 1e-5.
#[test]
fn tiles_match_the_reference_processor() {
    for (name, tiles) in [("tied", 3), ("untied-rms", 1)] {
        let cfg = TileConfig::from_dir(&fixture(name)).expect("preprocessor_config.json");
        let png = std::fs::read(fixture(name).join("image.png")).expect("image.png");
        let img = Rgb::from_png(&png).expect("png");
        let (got, n) = cfg.preprocess(&img).expect("tiles");
        assert_eq!(n, tiles, "{name}");
        assert_eq!(cfg.tiles(img.height, img.width), tiles, "{name}");
        let (shape, want) = reference(name).f32("pixel_values").expect("pixel_values");
        assert_eq!(shape[0], tiles, "{name}");
        let d = max_diff(&got, &want);
        assert!(d <= 1e-5, "{name}: tiles differ by {d}");
    }
}

/// An image off the tile grid (50 × 37) is resampled up to a 4 × 3 canvas of tiles and down to
/// the thumbnail, both sides each time (both passes run, the intermediate rounded to whole levels
/// as PIL rounds it): equal to transformers' tiles but where PIL's fixed-point weights round a
/// value to the next level (1/255/std ≈ 0.018 normalized).
#[test]
fn resampled_tiles_stay_within_a_level_of_the_reference() {
    let cfg = TileConfig::from_dir(&fixture("tied")).unwrap();
    let png = std::fs::read(fixture("tied").join("image_offgrid.png")).unwrap();
    let img = Rgb::from_png(&png).unwrap();
    let (got, n) = cfg.preprocess(&img).unwrap();
    assert_eq!((n, cfg.grid(img.height, img.width)), (13, (4, 3)));
    let (shape, want) = reference("tied").f32("pixel_values_offgrid").unwrap();
    assert_eq!(shape[0], 13);
    let d = max_diff(&got, &want);
    eprintln!("off-grid tiles: max |Δ| = {d}");
    assert!(d <= 0.02, "resampled tiles differ by {d}");
}

/// Greedy decoding with the KV cache (prefill, then one token at a time) gives the tokens and
/// logits of running the whole sequence again at every step.
#[test]
fn cached_greedy_equals_uncached() {
    let model = load("untied-rms");
    let r = reference("untied-rms");
    let (ids, tiles) = inputs(&r);
    let argmax = |l: Tensor<Cpu, 2>| -> (u32, Vec<f32>) {
        let v = values(l);
        (asymm::model::sampling::argmax(&v), v)
    };
    let last = |l: Tensor<Cpu, 3>| {
        let [_, n, v] = l.dims();
        l.slice([0..1, n - 1..n, 0..v]).reshape([1, v])
    };
    let (first, mut state) = model
        .prefill_rows(&[&ids], &[Some(tiles.clone())])
        .expect("prefill");
    let (mut tok, _) = argmax(last(first));
    let mut seq = ids.clone();
    for _ in 0..6 {
        seq.push(tok);
        let (cached_tok, cached) = argmax(model.step_batch(&[tok], &mut state));
        let (full, _) = model
            .prefill_rows(&[&seq], &[Some(tiles.clone())])
            .expect("forward");
        let (full_tok, uncached) = argmax(last(full));
        assert_eq!(cached_tok, full_tok);
        let d = max_diff(&cached, &uncached);
        assert!(d <= 1e-4, "step {}: max |Δlogit| = {d}", seq.len());
        tok = cached_tok;
    }
}

/// Saving writes the checkpoint's own layout: the same keys, shapes and bytes as the file it was
/// loaded from, and the config unchanged.
#[test]
fn save_pretrained_round_trips_bit_for_bit() {
    for name in ["tied", "untied-rms"] {
        let model = load(name);
        let dir = asymm::util::fsx::TempDir::new("asymm-internvl-save").unwrap();
        model.save_pretrained(dir.path()).expect("saves");
        crate::checkpoints::assert_same_checkpoint(&fixture(name), dir.path());
    }
}

/// The chat prompt is InternVL's single-image template with the image placeholder expanded as
/// the reference processor expands it (`<img>`, one `<IMG_CONTEXT>` per token of each tile,
/// `</img>`): the same ids as the reference's.
#[test]
fn chat_prompt_matches_the_reference() {
    use asymm::text::chat::{ChatTokenizer, Family};
    let tok = ChatTokenizer::from_dir(&fixture("tied")).expect("tokenizer.json");
    assert_eq!(tok.family(), Family::InternVl);
    let r = reference("tied");
    let (_, want) = r.i64("chat_ids").expect("chat ids");
    let cfg = TileConfig::from_dir(&fixture("tied")).unwrap();
    let img = Rgb::from_png(&std::fs::read(fixture("tied").join("image.png")).unwrap()).unwrap();
    let n = cfg.tiles(img.height, img.width) * load("tied").cfg.tokens_per_tile();
    let ids = tok.prompt("Color the graph: 3 nodes.", n).expect("prompt");
    assert_eq!(ids.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(), want);
    let text =
        std::fs::read_to_string(fixture("tied").join("chat_prompt.txt")).expect("prompt text");
    let expanded = text.replace(
        "<IMG_CONTEXT>",
        &format!("<img>{}</img>", "<IMG_CONTEXT>".repeat(n)),
    );
    assert_eq!(tok.decode(&ids, false).expect("decodes"), expanded);
}

/// Every model stage on the InternVL fixture ([`crate::checkpoints::run_pipeline`]); its puzzle
/// images (64²) are cut into 2 × 2 tiles and a thumbnail.
#[test]
fn a_pipeline_fine_tunes_samples_and_scores_the_checkpoint() {
    crate::checkpoints::run_pipeline(&fixture(""));
}

/// `asymm dev hf-generate` runs an InternVL folder end to end (tokenizer, tiling, model, greedy
/// decoding) and prints what greedy decoding of the reference's own tiles gives (the fixture's
/// tiles equal the reference's); `asymm dev hf-parity` passes on the fixture.
#[test]
fn the_dev_commands_run_an_internvl_folder() {
    use asymm::text::chat::ChatTokenizer;
    let dir = fixture("tied");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::common::bin())
            .args(args)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let d = dir.to_str().unwrap();
    let printed = run(&[
        "dev",
        "hf-generate",
        "--checkpoint",
        d,
        "--image",
        dir.join("image.png").to_str().unwrap(),
        "--prompt",
        "Color the graph: 3 nodes.",
        "--max-new-tokens",
        "12",
    ]);
    let tok = ChatTokenizer::from_dir(&dir).unwrap();
    let (_, tiles) = inputs(&reference("tied"));
    let n = tiles.dims()[0] * 4;
    let ids = tok.prompt("Color the graph: 3 nodes.", n).unwrap();
    let stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tok.token_id(t))
        .collect();
    let out = load("tied").greedy(&ids, tiles, 12, &stop).unwrap();
    assert!(!out.is_empty());
    assert_eq!(
        printed.trim_end_matches('\n'),
        tok.decode(&out, true).unwrap()
    );

    let parity: serde_json::Value =
        serde_json::from_str(&run(&["dev", "hf-parity", "--fixture", d])).expect("json");
    assert_eq!(parity["passed"], true, "{parity}");
    assert!(parity["parity"]["max_abs_logit_diff"].as_f64().unwrap() <= 1e-4);
}

/// A checkpoint sharded over two files (`model.safetensors.index.json`) loads, in the published
/// key layout and in transformers' in-memory one (`model.vision_tower.*`, `lm_head.*`), to the
/// same weights: the same logits, bit for bit.
#[test]
fn sharded_checkpoints_load_in_either_key_layout() {
    let name = "untied-rms";
    let r = reference(name);
    let (ids, tiles) = inputs(&r);
    let logits = |m: &InternVl<Cpu>| logits_of(m, &ids, &tiles);
    let want = logits(&load(name));
    let in_memory = |k: &str| {
        if let Some(rest) = k.strip_prefix("language_model.model.") {
            format!("model.language_model.{rest}")
        } else if let Some(rest) = k.strip_prefix("language_model.lm_head.") {
            format!("lm_head.{rest}")
        } else {
            format!("model.{k}")
        }
    };
    for (layout, rename) in [
        (
            "published",
            &(|k: &str| k.to_string()) as &dyn Fn(&str) -> String,
        ),
        ("in-memory", &in_memory),
    ] {
        let dir = asymm::util::fsx::TempDir::new("asymm-internvl-shards").unwrap();
        crate::checkpoints::rewrite_weights(&fixture(name), dir.path(), 2, rename, &[]);
        assert!(!dir.path().join("model.safetensors").exists());
        let model = InternVl::<Cpu>::from_pretrained(dir.path(), &Default::default())
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        assert!(logits(&model) == want, "{layout}: other logits");
    }
}

/// The parameter counts `dev hf-memory` works from equal the loaded modules' own, for every
/// fixture config of both families; the command reports them with the static memory of SFT
/// (weights, gradients, two AdamW moments: 4 values a parameter) and GRPO (and a reference).
#[test]
fn memory_estimates_count_the_modules_parameters() {
    use asymm::model::memory;
    use asymm::model::qwen3_vl::Qwen3Vl;
    use burn::module::Module;
    let qwen = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl");
    let dev = Default::default();
    for name in ["tied", "untied-bias"] {
        let m = Qwen3Vl::<Cpu>::from_pretrained(&qwen.join(name), &dev).unwrap();
        let counted = memory::count_qwen3_vl(&m.cfg);
        assert_eq!(counted.total(), m.num_params() as u64, "qwen3_vl {name}");
        assert_eq!(counted.head == 0, m.lm_head.is_none(), "qwen3_vl {name}");
    }
    // Values stored in a checkpoint's weights file.
    let stored = |dir: PathBuf| -> u64 {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        st.names()
            .into_iter()
            .map(|n| st.tensor(n).unwrap().shape().iter().product::<usize>() as u64)
            .sum()
    };
    for name in ["tied", "untied-bias"] {
        let cfg: asymm::model::qwen3_vl::Qwen3VlConfig =
            serde_json::from_slice(&std::fs::read(qwen.join(name).join("config.json")).unwrap())
                .unwrap();
        let counted = memory::count_qwen3_vl(&cfg).total();
        assert_eq!(counted, stored(qwen.join(name)), "qwen3_vl {name} file");
    }
    for name in ["tied", "untied-rms"] {
        let m = load(name);
        let counted = memory::count_internvl(&m.cfg);
        assert_eq!(counted.total(), m.num_params() as u64, "internvl {name}");
        assert_eq!(
            counted.total(),
            stored(fixture(name)),
            "internvl {name} file"
        );
        assert_eq!(
            counted.vision,
            m.vision_tower.num_params() as u64,
            "internvl {name}"
        );
    }
    let out = std::process::Command::new(crate::common::bin())
        .args(["dev", "hf-memory", "--checkpoint"])
        .arg(fixture("untied-rms"))
        .args(["--image-size", "64", "--dtype", "f32"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let params = load("untied-rms").num_params() as f64;
    assert_eq!(report["params_total"].as_f64(), Some(params));
    let bytes = |k: &str| report["bytes"][k].as_f64().unwrap();
    assert_eq!(bytes("weights"), 4.0 * params);
    assert_eq!(bytes("sft_static"), 16.0 * params);
    assert_eq!(bytes("grpo_static"), 20.0 * params);
    // 64² is cut into 2 × 2 tiles and a thumbnail of 4 tokens each.
    assert_eq!(report["image_tokens"], 20);
}

/// A config that ties the head while the weights hold one gets the stored head, as
/// transformers does (other logits), unless it equals the embeddings (tied, the same logits); a
/// tensor the model has no place for is an error naming it, not a weight silently dropped.
#[test]
fn a_stored_head_beside_a_tied_config_is_used() {
    let name = "tied";
    let r = reference(name);
    let (ids, tiles) = inputs(&r);
    let logits = |m: &InternVl<Cpu>| logits_of(m, &ids, &tiles);
    let base = load(name);
    let want = logits(&base);
    let embed = base.language_model.model.embed_tokens.weight.val();
    let shape = embed.dims().to_vec();
    let same = values(embed);
    let other: Vec<f32> = same.iter().map(|x| x * 0.5 + 0.01).collect();
    let head = "language_model.lm_head.weight";
    let open = |extra: &[(&str, Vec<usize>, Vec<f32>)]| {
        let dir = asymm::util::fsx::TempDir::new("asymm-internvl-head").unwrap();
        crate::checkpoints::rewrite_weights(&fixture(name), dir.path(), 1, &|k| k.into(), extra);
        InternVl::<Cpu>::from_pretrained(dir.path(), &Default::default())
    };
    let tied = open(&[(head, shape.clone(), same)]).expect("loads");
    assert!(
        tied.language_model.lm_head.is_none(),
        "equal to the embeddings: tied"
    );
    assert!(logits(&tied) == want);
    let untied = open(&[(head, shape.clone(), other)]).expect("loads");
    assert!(untied.language_model.lm_head.is_some(), "a head of its own");
    assert!(
        max_diff(&logits(&untied), &want) > 1e-3,
        "the stored head's logits"
    );
    // Saved, the config says untied (readers that trust the flag keep the head), and the folder
    // loads to the same model.
    let saved = asymm::util::fsx::TempDir::new("asymm-internvl-head-saved").unwrap();
    untied.save_pretrained(saved.path()).expect("saves");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(saved.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["text_config"]["tie_word_embeddings"], false);
    let again = InternVl::<Cpu>::from_pretrained(saved.path(), &Default::default()).unwrap();
    assert!(again.language_model.lm_head.is_some());
    assert!(logits(&again) == logits(&untied));
    let err = open(&[("language_model.model.extra.weight", vec![2], vec![0.0, 1.0])])
        .expect_err("an unknown tensor is an error")
        .to_string();
    assert!(err.contains("language_model.model.extra.weight"), "{err}");
}

/// `asymm bench --hf DIR` times SFT and rollouts of a checkpoint folder; a folder with a config
/// and a tokenizer but no weights gets random weights of the config's shapes (the parameters
/// the memory estimate counts).
#[test]
fn bench_runs_a_checkpoint_folder_without_weights() {
    let dir = asymm::util::fsx::TempDir::new("asymm-internvl-bench").unwrap();
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(fixture("tied").join(f), dir.path().join(f)).unwrap();
    }
    let out = std::process::Command::new(crate::common::bin())
        .args(["bench", "--suite", "model", "--json", "--steps", "2"])
        .args(["--rollout-batches", "2", "--hf-image-size", "64", "--hf"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let counted = asymm::model::memory::count_internvl(&load("tied").cfg).total();
    assert_eq!(r["parameters"].as_u64(), Some(counted));
    assert!(r["sft"][0]["target_tokens"].as_u64().unwrap() > 0, "{r}");
    assert!(r["rollout"][0]["new_tokens"].as_u64().unwrap() > 0, "{r}");
}

/// `activation_checkpointing = true` trains a checkpoint model to the same losses (the
/// element-wise outputs recomputed in the backward pass instead of kept; float rounding aside),
/// as a result of its own; `false` is the default's result (the same cache key).
#[test]
fn activation_checkpointing_trains_the_same() {
    use crate::common::{json, rows, stage};
    let dir = asymm::util::fsx::TempDir::new("asymm-it-ckpt").unwrap();
    let store = dir.path().join("store");
    let src = fixture("tied").display().to_string();
    let sft = |name: &str, extra: &str| {
        format!(
            "[stages.{name}]\nstage = \"sft-train\"\ninputs = {{ data = \"distill_format\" }}\n\
             model = {{ hf = {src:?}, image_size = 64 }}\nsteps = 3\nbatch_size = 2\n\
             data_shards = 1\nlr = 1e-3\nmin_lr = 1e-3\nwarmup_ratio = 0.0\neval_items = 0\n\
             diagnostics_every = 0\nsnapshot_every = 0\n{extra}\n"
        )
    };
    let text = format!(
        "[pipeline]\nname = \"ckpt\"\nseed = 1\n\
         [stages.synthesize]\ntask = \"graph_coloring\"\nsplits = {{ test = 2, sft = 8 }}\n\
         [stages.render]\ninputs = {{ puzzles = \"synthesize\" }}\nsize = 224\n\
         [stages.distill_format]\ninputs = {{ puzzles = \"synthesize\", images = \"render\" }}\n\
         verbosity = 0\n{}{}{}",
        sft("plain", ""),
        sft("checkpointed", "activation_checkpointing = true"),
        sft("explicit_off", "activation_checkpointing = false"),
    );
    let ps = dir.path().join("p.toml");
    std::fs::write(&ps, text).unwrap();
    let run = json(&store, &["run", ps.to_str().unwrap()]);
    let out = |name: &str, o: &str| {
        stage(&run, name)["outputs"][o]
            .as_str()
            .unwrap()
            .to_string()
    };
    let losses = |name: &str| -> Vec<f64> {
        rows(&json(&store, &["show", &out(name, "log")]))
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    let (a, b) = (losses("plain"), losses("checkpointed"));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
    assert_ne!(
        out("plain", "main"),
        out("checkpointed", "main"),
        "a result of its own"
    );
    // The checkpointed run composes the operations the fused CPU kernels run otherwise: the
    // weights differ by rounding (equal bytes would mean the option was not applied).
    let weights = |name: &str| {
        std::fs::read(
            store
                .join("objects")
                .join(out(name, "main"))
                .join("model.safetensors"),
        )
        .unwrap()
    };
    assert_ne!(weights("plain"), weights("checkpointed"));
    assert_eq!(
        out("plain", "main"),
        out("explicit_off", "main"),
        "the default's result"
    );
}
