//! Qwen3-VL against transformers: the fixtures in `tests/fixtures/qwen3_vl/` (made by
//! `make_fixture.py` there) hold tiny random checkpoints, their inputs and transformers' outputs.

use crate::checkpoints::max_diff;
use asymm::model::Cpu;
use asymm::model::hf::reference::Reference;
use asymm::model::qwen3_vl::reference::{inputs as reference_inputs, parity};
use asymm::model::qwen3_vl::{ImageInput, Qwen3Vl};
use asymm::model::{Fork, VisionLanguageModel};
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    crate::checkpoints::fixture("qwen3_vl", name)
}

fn reference(name: &str) -> Reference {
    crate::checkpoints::reference(&fixture(name))
}

fn inputs(r: &Reference) -> (Vec<u32>, [usize; 3], ImageInput<Cpu>) {
    let (ids, image) = reference_inputs::<Cpu>(r, &Default::default()).expect("inputs");
    (ids, image.grid, image)
}

/// Logits within 1e-4 of transformers' for each fixture config (tied and untied heads,
/// attention with and without biases, square and non-square image grids), and the 3-axis
/// positions equal to `get_rope_index`'s.
#[test]
fn logits_and_positions_match_transformers() {
    for name in ["tied", "untied-bias"] {
        let dev = Default::default();
        let model = Qwen3Vl::<Cpu>::from_pretrained(&fixture(name), &dev)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let p = parity(&model, &reference(name)).expect("runs");
        assert!(p.positions_equal, "{name}: position ids");
        assert_eq!(
            p.logits,
            reference(name).f32("logits").expect("logits").1.len()
        );
        eprintln!("{name}: max |Δlogit| = {}", p.max_abs_logit_diff);
        assert!(
            p.max_abs_logit_diff <= 1e-4,
            "{name}: max |Δlogit| = {}",
            p.max_abs_logit_diff
        );
    }
}

/// The vision tower's outputs (before the merger, after it, and each DeepStack feature) match
/// transformers' within 1e-4.
#[test]
fn vision_features_match_transformers() {
    let dev = Default::default();
    let model = Qwen3Vl::<Cpu>::from_pretrained(&fixture("tied"), &dev).expect("loads");
    let r = reference("tied");
    let (_, grid, image) = inputs(&r);
    let out = model.model.visual.forward(image.pixel_values, &[grid]);
    let v = |t: Tensor<Cpu, 2>| t.into_data().to_vec::<f32>().expect("f32");
    for (key, got) in [
        ("vision_hidden", v(out.hidden)),
        ("image_embeds", v(out.embeds)),
        ("deepstack_0", v(out.deepstack[0].clone())),
        ("deepstack_1", v(out.deepstack[1].clone())),
    ] {
        let d = max_diff(&got, &r.f32(key).expect("tensor").1);
        assert!(d <= 1e-4, "{key}: max |Δ| = {d}");
    }
}

/// Greedy decoding with the KV cache (prefill, then one token at a time) gives the tokens and
/// logits of running the whole sequence again at every step.
#[test]
fn cached_greedy_equals_uncached() {
    let dev = Default::default();
    let model = Qwen3Vl::<Cpu>::from_pretrained(&fixture("untied-bias"), &dev).expect("loads");
    let r = reference("untied-bias");
    let (ids, _, image) = inputs(&r);
    let argmax = |l: Tensor<Cpu, 2>| -> (u32, Vec<f32>) {
        let v = l.into_data().to_vec::<f32>().expect("f32");
        (asymm::model::sampling::argmax(&v), v)
    };
    let (first, mut state) = model.prefill(&ids, &[image]).expect("prefill");
    let (mut tok, _) = argmax(first);
    let mut seq = ids.clone();
    for _ in 0..6 {
        seq.push(tok);
        let (cached_tok, cached) = argmax(model.step(tok, &mut state));
        let (_, _, again) = inputs(&r);
        let full = model.forward(&seq, &[again]).expect("forward");
        let [_, l, v] = full.dims();
        let (full_tok, uncached) = argmax(full.slice([0..1, l - 1..l, 0..v]).reshape([1, v]));
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
    let dev = Default::default();
    for name in ["tied", "untied-bias"] {
        let model = Qwen3Vl::<Cpu>::from_pretrained(&fixture(name), &dev).expect("loads");
        let out =
            std::env::temp_dir().join(format!("asymm-qwen3vl-save-{name}-{}", std::process::id()));
        model.save_pretrained(&out).expect("saves");
        crate::checkpoints::assert_same_checkpoint(&fixture(name), &out);
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A checkpoint stored in bf16 (as the released Qwen3-VL weights are) loads on the f32 CPU
/// backend with every parameter in f32, and its logits stay near transformers' f32 ones (the
/// weights lost their low mantissa bits, nothing else).
#[test]
fn a_bf16_checkpoint_loads_as_the_backends_float_type() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{DType, bf16};
    let src = fixture("tied");
    let dir = asymm::util::fsx::TempDir::new("asymm-qwen3vl-bf16").unwrap();
    for f in std::fs::read_dir(&src).unwrap().flatten() {
        if f.file_name() != "model.safetensors" {
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let converted: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .names()
        .into_iter()
        .map(|name| {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            let data = t
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    bf16::from_f32(x).to_bits().to_le_bytes()
                })
                .collect();
            (name.to_string(), t.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = converted
        .iter()
        .map(|(n, shape, data)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), data)
                    .unwrap();
            (n.clone(), v)
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &dir.path().join("model.safetensors"))
        .unwrap();

    let model = Qwen3Vl::<Cpu>::from_pretrained(dir.path(), &Default::default()).expect("loads");
    struct Types(Vec<DType>);
    impl ModuleVisitor<Cpu> for Types {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Cpu, D>>) {
            self.0.push(p.val().dtype());
        }
    }
    let mut types = Types(Vec::new());
    model.visit(&mut types);
    assert!(!types.0.is_empty());
    assert!(types.0.iter().all(|&d| d == DType::F32), "{:?}", types.0);
    let p = parity(&model, &reference("tied")).expect("runs");
    assert!(p.positions_equal && p.non_finite_logits == 0, "{p:?}");
    assert!(p.max_abs_logit_diff < 0.05, "{p:?}");

    // Cast parameters still train: each gets a gradient.
    type Ad = burn::backend::Autodiff<Cpu>;
    let dev = Default::default();
    let model = Qwen3Vl::<Ad>::from_pretrained(dir.path(), &dev).expect("loads");
    let (ids, image) = reference_inputs::<Ad>(&reference("tied"), &dev).expect("inputs");
    let grads = model
        .forward(&ids, &[image])
        .unwrap()
        .square()
        .mean()
        .backward();
    struct Count<'a>(
        &'a <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
        usize,
        usize,
    );
    impl ModuleVisitor<Ad> for Count<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Ad, D>>) {
            self.1 += 1;
            self.2 += usize::from(p.val().grad(self.0).is_some());
        }
    }
    let mut count = Count(&grads, 0, 0);
    model.visit(&mut count);
    assert!(
        count.1 > 0 && count.1 == count.2,
        "{} of {} have a gradient",
        count.2,
        count.1
    );
}

/// The processor turns each fixture's `image.png` into the pixel rows and grid transformers'
/// image processor gave (read with the fixture's `preprocessor_config.json`).
#[test]
fn preprocessing_matches_transformers() {
    use asymm::model::hf::image::Rgb;
    use asymm::model::qwen3_vl::processor::ProcessorConfig;
    for name in ["tied", "untied-bias"] {
        let cfg = ProcessorConfig::from_dir(&fixture(name)).expect("processor config");
        let png = std::fs::read(fixture(name).join("image.png")).expect("image");
        let (rows, grid) = cfg
            .preprocess(&Rgb::from_png(&png).expect("decodes"))
            .expect("preprocess");
        let r = reference(name);
        let (_, want_grid) = r.i64("image_grid_thw").expect("grid");
        assert_eq!(grid.map(|g| g as i64).to_vec(), want_grid, "{name}: grid");
        let d = max_diff(&rows, &r.f32("pixel_values").expect("tensor").1);
        assert!(d <= 1e-6, "{name}: max |Δpixel| = {d}");
    }
}

/// The chat prompt for one image and a message gives the ids of the reference path (template,
/// image placeholder expanded, the checkpoint's tokenizer), and decodes back to its text.
#[test]
fn chat_prompt_matches_the_reference() {
    use asymm::text::chat::ChatTokenizer;
    let tok = ChatTokenizer::from_dir(&fixture("tied")).expect("tokenizer.json");
    let r = reference("tied");
    let (_, want) = r.i64("chat_ids").expect("chat ids");
    let (_, grid) = r.i64("image_grid_thw").expect("grid");
    let n = (grid[0] * grid[1] * grid[2] / 4) as usize;
    let ids = tok.prompt("Color the graph: 3 nodes.", n).expect("prompt");
    assert_eq!(ids.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(), want);
    let text =
        std::fs::read_to_string(fixture("tied").join("chat_prompt.txt")).expect("prompt text");
    let expanded = text.replace("<|image_pad|>", &"<|image_pad|>".repeat(n));
    assert_eq!(tok.decode(&ids, false).expect("decodes"), expanded);
}

/// `asymm dev hf-generate` runs a checkpoint folder end to end (tokenizer, processor, model,
/// greedy decoding) and prints what the library's greedy decoding of the same prompt gives.
#[test]
fn hf_generate_prints_the_greedy_answer() {
    use asymm::model::hf::image::Rgb;
    use asymm::model::qwen3_vl::processor::ProcessorConfig;
    use asymm::text::chat::ChatTokenizer;
    let dir = fixture("tied");
    let out = std::process::Command::new(crate::common::bin())
        .args(["dev", "hf-generate", "--checkpoint"])
        .arg(&dir)
        .arg("--image")
        .arg(dir.join("image.png"))
        .args([
            "--prompt",
            "Color the graph: 3 nodes.",
            "--max-new-tokens",
            "12",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_string();

    let dev = Default::default();
    let model = Qwen3Vl::<Cpu>::from_pretrained(&dir, &dev).expect("loads");
    let tok = ChatTokenizer::from_dir(&dir).expect("tokenizer");
    let proc = ProcessorConfig::from_dir(&dir).expect("processor");
    let png = std::fs::read(dir.join("image.png")).expect("image");
    let (rows, grid) = proc
        .preprocess(&Rgb::from_png(&png).expect("png"))
        .expect("rows");
    let n = rows.len() / 384;
    let image = ImageInput {
        pixel_values: Tensor::<Cpu, 2>::from_data(TensorData::new(rows, [n, 384]), &dev),
        grid,
    };
    let ids = tok
        .prompt("Color the graph: 3 nodes.", n / 4)
        .expect("prompt");
    let stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tok.token_id(t))
        .collect();
    let answer = model.greedy(&ids, &[image], 12, &stop).expect("greedy");
    assert!(!answer.is_empty());
    assert_eq!(printed, tok.decode(&answer, true).expect("decodes"));
}

/// A checkpoint missing a tensor is refused with an error naming it, and a config the model
/// cannot honour names its problem.
#[test]
fn bad_checkpoints_are_named() {
    let src = fixture("tied");
    let dir = std::env::temp_dir().join(format!("asymm-qwen3vl-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bytes = std::fs::read(src.join("model.safetensors")).expect("weights");
    let st = SafeTensors::deserialize(&bytes).expect("parses");
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != "model.language_model.norm.weight")
        .collect();
    let out = safetensors::serialize(kept, None).expect("serializes");
    std::fs::write(dir.join("model.safetensors"), out).expect("writes");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).expect("config");
    let err = Qwen3Vl::<Cpu>::from_pretrained(&dir, &Default::default())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("language_model.norm.weight"), "{err}");

    let cfg = std::fs::read_to_string(src.join("config.json")).expect("config");
    let bad = cfg.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    std::fs::write(dir.join("config.json"), bad).expect("writes");
    let err = Qwen3Vl::<Cpu>::from_pretrained(&dir, &Default::default())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("num_key_value_heads"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The model trains: loaded on the autodiff backend, a few AdamW steps on next-token
/// cross-entropy over the fixture's sequence lower the loss, and every parameter gets a gradient.
#[test]
fn a_loaded_checkpoint_trains() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Int, backend::AutodiffBackend};
    type Ad = burn::backend::Autodiff<Cpu>;
    let dev = Default::default();
    let mut model = Qwen3Vl::<Ad>::from_pretrained(&fixture("tied"), &dev).expect("loads");
    let r = reference("tied");
    let (ids, image) = reference_inputs::<Ad>(&r, &dev).expect("inputs");
    let l = ids.len();
    let targets = Tensor::<Ad, 1, Int>::from_data(
        TensorData::new(
            ids[1..].iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
            [l - 1],
        ),
        &dev,
    );
    let loss_of = |m: &Qwen3Vl<Ad>| {
        let image = ImageInput {
            pixel_values: image.pixel_values.clone(),
            grid: image.grid,
        };
        let logits = m.forward(&ids, &[image]).expect("forward");
        let v = logits.dims()[2];
        let lp = log_softmax(logits.slice([0..1, 0..l - 1, 0..v]).reshape([l - 1, v]), 1);
        lp.gather(1, targets.clone().reshape([l - 1, 1]))
            .mean()
            .neg()
    };
    struct Count<'a, B: AutodiffBackend>(&'a <B as AutodiffBackend>::Gradients, usize, usize);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Count<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.1 += 1;
            self.2 += usize::from(p.val().grad(self.0).is_some());
        }
    }
    let mut optim = AdamWConfig::new().init::<Ad, Qwen3Vl<Ad>>();
    let first = loss_of(&model);
    let start = first.clone().into_scalar();
    let grads = first.backward();
    let mut count = Count::<Ad>(&grads, 0, 0);
    model.visit(&mut count);
    let (params, with_grad) = (count.1, count.2);
    assert!(
        params > 0 && params == with_grad,
        "{with_grad} of {params} parameters have a gradient"
    );
    let mut g = GradientsParams::from_grads(grads, &model);
    for _ in 0..5 {
        model = optim.step(1e-2, model, g);
        g = GradientsParams::from_grads(loss_of(&model).backward(), &model);
    }
    let end = loss_of(&model).into_scalar();
    eprintln!("loss {start} → {end}, {params} parameters");
    assert!(end < start * 0.9, "loss {start} → {end}");
}

/// Every model stage on the Qwen3-VL fixture ([`crate::checkpoints::run_pipeline`]).
#[test]
fn a_pipeline_fine_tunes_samples_and_scores_the_checkpoint() {
    crate::checkpoints::run_pipeline(&fixture(""));
}

/// A checkpoint model decodes a batch in groups of rows whose caches have one length: after a
/// prefill of prompts of two lengths and a fork (as the G samples of a prompt share a prefill),
/// every row's logits at every step are those it gets decoded alone (to float rounding), and
/// the rows come back in their order.
#[test]
fn batched_decoding_gives_each_row_its_own_logits() {
    use asymm::model::{HfVlm, Model, host_f32, max_abs_diff};
    use asymm::text::chat::ChatTokenizer;
    let dev = Default::default();
    let hf = HfVlm::<Cpu>::from_pretrained(&fixture("tied"), 64, &dev).expect("loads");
    let tok = ChatTokenizer::from_dir(&fixture("tied")).unwrap();
    let base = tok.prompt("Color the graph.", hf.image_tokens).unwrap();
    let longer = [base.clone(), tok.encode(" Now.").unwrap()].concat();
    let prompts = vec![base.clone(), longer, base];
    let s = 64;
    let image = |k: usize| -> Vec<f32> {
        (0..s * s)
            .map(|i| ((i * (7 + k) + 13 * k) % 97) as f32 / 97.0)
            .collect()
    };
    let images = |ks: &[usize]| {
        let px: Vec<f32> = ks.iter().flat_map(|&k| image(k)).collect();
        Tensor::<Cpu, 3>::from_data(TensorData::new(px, [ks.len(), s, s]), &dev)
    };
    let model = Model::Hf(hf);
    let rows = [2usize, 0, 1, 0, 2];
    let feed = [5u32, 9, 13, 21];
    let (_, state) = model.prefill(images(&[0, 1, 2]), &prompts).unwrap();
    let mut state = state.fork(&rows);
    let mut batched = Vec::new();
    for &t in &feed {
        batched.push(host_f32(model.step(&[t; 5], &mut state).unwrap()).unwrap());
    }
    let v = batched[0].len() / rows.len();
    for (i, &r) in rows.iter().enumerate() {
        let (_, mut alone) = model.prefill(images(&[r]), &prompts[r..r + 1]).unwrap();
        for (k, &t) in feed.iter().enumerate() {
            let want = host_f32(model.step(&[t], &mut alone).unwrap()).unwrap();
            let got = &batched[k][i * v..(i + 1) * v];
            let (diff, bad) = max_abs_diff(got, &want);
            assert!(
                bad == 0 && diff < 1e-5,
                "row {i} (prompt {r}) step {k}: {diff}"
            );
        }
    }
}

/// A checkpoint whose `max_position_embeddings` is shorter than the examples (prompt with its
/// image tokens, and target) is refused by sft-train with a message that names the limit, and
/// `overlong = "drop"` is then the way to train on what fits.
#[test]
fn examples_longer_than_the_checkpoint_are_refused() {
    let dir = asymm::util::fsx::TempDir::new("asymm-it-hf-long").unwrap();
    let ckpt = dir.path().join("short");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in std::fs::read_dir(fixture("tied")).unwrap().flatten() {
        std::fs::copy(f.path(), ckpt.join(f.file_name())).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap();
    cfg["text_config"]["max_position_embeddings"] = serde_json::json!(48);
    std::fs::write(ckpt.join("config.json"), cfg.to_string()).unwrap();
    let ps = crate::common::data_pipeline(dir.path(), 224);
    let mut text = std::fs::read_to_string(&ps).unwrap();
    text.push_str(&format!(
        "[stages.sft]\nstage = \"sft-train\"\ninputs = {{ data = \"distill_format\" }}\n\
         model = {{ hf = {:?}, image_size = 64 }}\nsteps = 1\nbatch_size = 2\n\
         data_shards = 1\neval_items = 0\n",
        ckpt.display().to_string()
    ));
    std::fs::write(&ps, text).unwrap();
    let out = crate::common::asymm(&dir.path().join("store"), &["run", ps.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = crate::common::stderr(&out);
    assert!(
        err.contains("longer than the model's context") && err.contains("max_position_embeddings"),
        "{err}"
    );
}

/// The vision tower hands each intermediate state to an observer, in order; a NaN in one pixel
/// row is seen from the patch embedding on, and the fixture's own pixels give none.
#[test]
fn the_vision_tower_names_where_values_stop_being_numbers() {
    use asymm::model::host_f32;
    let dev = Default::default();
    let model = Qwen3Vl::<Cpu>::from_pretrained(&fixture("tied"), &dev).expect("loads");
    let r = reference("tied");
    let (_, grid, image) = inputs(&r);
    let run = |pixels: Tensor<Cpu, 2>| {
        let mut seen: Vec<(String, bool)> = Vec::new();
        model
            .model
            .visual
            .forward_observed(pixels, &[grid], &mut |name, t| {
                let bad = host_f32(t.clone()).unwrap().iter().any(|x| !x.is_finite());
                seen.push((name.to_string(), bad));
            });
        seen
    };
    let clean = run(image.pixel_values.clone());
    let names: Vec<&str> = clean.iter().map(|s| s.0.as_str()).collect();
    let depth = model.model.visual.blocks.len();
    let mut want = vec!["patch_embed".to_string(), "positions".to_string()];
    want.extend((0..depth).map(|i| format!("block.{i}")));
    want.push("merger".to_string());
    assert_eq!(names, want);
    assert!(clean.iter().all(|s| !s.1), "{clean:?}");
    let [n, c] = image.pixel_values.dims();
    let mut px = host_f32(image.pixel_values.clone()).unwrap();
    px[c + 3] = f32::NAN;
    let dirty = run(Tensor::from_data(TensorData::new(px, [n, c]), &dev));
    assert!(dirty.iter().all(|s| s.1), "{dirty:?}");
}
