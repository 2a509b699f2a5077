//! InternViT, the InternVL vision tower: patch embedding (a 2-d convolution whose stride is its
//! kernel, so one linear map per patch), a class token, learned absolute positions, pre-norm
//! blocks (layer or RMS norm; full attention with optional q/k RMS norms over the whole width;
//! GELU MLP) whose two branches are scaled by learned per-channel factors (`lambda_1`,
//! `lambda_2`), and a final layer norm when the tower does not mean-pool.
//!
//! Tiles are squares of the config's `image_size`: the learned positions are used as they are
//! (the reference interpolates them for other sizes, which its processor never gives).

use super::config::VisionConfig;
use crate::model::hf::act;
use crate::model::layers::linear3;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;

/// A layer norm (with `bias`) or an RMS norm (without), over the last dimension, with the
/// checkpoint's parameter names (`weight`, `bias`).
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> Norm<B> {
    /// A layer norm of width `d` (`rms = false`) or an RMS norm.
    pub fn new(d: usize, rms: bool, eps: f64, device: &B::Device) -> Self {
        Norm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: (!rms).then(|| Param::from_tensor(Tensor::zeros([d], device))),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = match &self.bias {
            // Layer norm: centred, divided by the (biased) standard deviation.
            Some(_) => {
                let centred = x.clone() - x.mean_dim(D - 1);
                let var = centred.clone().square().mean_dim(D - 1);
                centred / (var + self.eps).sqrt()
            }
            None => {
                let ms = x.clone().square().mean_dim(D - 1);
                x / (ms + self.eps).sqrt()
            }
        };
        let y = y * self.weight.val().unsqueeze();
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}

/// `projection` of the patch embedding: the convolution's weight [hidden, C, P, P] and bias.
#[derive(Module, Debug)]
pub struct Conv2dProj<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
pub struct PatchEmbeddings<B: Backend> {
    pub projection: Conv2dProj<B>,
}

#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    pub cls_token: Param<Tensor<B, 3>>,
    pub patch_embeddings: PatchEmbeddings<B>,
    pub position_embeddings: Param<Tensor<B, 3>>,
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub projection_layer: Linear<B>,
    pub q_norm: Option<Norm<B>>,
    pub k_norm: Option<Norm<B>>,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    pub attention: Attention<B>,
    pub mlp: Mlp<B>,
    pub layernorm_before: Norm<B>,
    pub layernorm_after: Norm<B>,
    pub lambda_1: Param<Tensor<B, 1>>,
    pub lambda_2: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub layer: Vec<Layer<B>>,
}

#[derive(Module, Debug)]
pub struct VisionModel<B: Backend> {
    pub embeddings: Embeddings<B>,
    pub encoder: Encoder<B>,
    /// Present when the tower does not mean-pool.
    pub layernorm: Option<Norm<B>>,
    #[module(skip)]
    pub cfg: VisionConfig,
}

impl<B: Backend> VisionModel<B> {
    /// A tower of `cfg`'s shapes with placeholder weights (load a checkpoint into it).
    pub fn new(cfg: &VisionConfig, device: &B::Device) -> Self {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let rms = cfg.norm_type == "rms_norm";
        let lin =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = || Norm::new(d, rms, cfg.layer_norm_eps, device);
        let patches = cfg.grid() * cfg.grid();
        VisionModel {
            embeddings: Embeddings {
                cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
                patch_embeddings: PatchEmbeddings {
                    projection: Conv2dProj {
                        weight: Param::from_tensor(Tensor::zeros([d, c, p, p], device)),
                        bias: Param::from_tensor(Tensor::zeros([d], device)),
                    },
                },
                position_embeddings: Param::from_tensor(Tensor::zeros([1, patches + 1, d], device)),
            },
            encoder: Encoder {
                layer: (0..cfg.num_hidden_layers)
                    .map(|_| Layer {
                        attention: Attention {
                            q_proj: lin(d, d, cfg.attention_bias),
                            k_proj: lin(d, d, cfg.attention_bias),
                            v_proj: lin(d, d, cfg.attention_bias),
                            projection_layer: lin(d, d, true),
                            // The q/k norms are RMS norms whatever the block norms are.
                            q_norm: cfg.use_qk_norm.then(|| Norm::new(d, true, 1e-6, device)),
                            k_norm: cfg.use_qk_norm.then(|| Norm::new(d, true, 1e-6, device)),
                        },
                        mlp: Mlp {
                            fc1: lin(d, cfg.intermediate_size, true),
                            fc2: lin(cfg.intermediate_size, d, true),
                        },
                        layernorm_before: norm(),
                        layernorm_after: norm(),
                        lambda_1: Param::from_tensor(Tensor::ones([d], device)),
                        lambda_2: Param::from_tensor(Tensor::ones([d], device)),
                    })
                    .collect(),
            },
            // The final norm is a layer norm whatever `norm_type` says.
            layernorm: (!cfg.use_mean_pooling)
                .then(|| Norm::new(d, false, cfg.layer_norm_eps, device)),
            cfg: cfg.clone(),
        }
    }

    /// The last hidden states [N, 1 + patches, hidden] (class token first) of tiles
    /// `pixels` [N, C, S, S], S the config's `image_size`.
    ///
    /// # Shapes
    /// - pixels: `[N, C, S, S]` → `[N, 1 + (S/P)², hidden]`
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.forward_observed(pixels, &mut |_, _| {})
    }

    /// [`VisionModel::forward`], handing each step's output to `observe` with its name
    /// (`embeddings`, `layer.i`, `layernorm`): where values stop being numbers on a device.
    pub fn forward_observed(
        &self,
        pixels: Tensor<B, 4>,
        observe: &mut dyn FnMut(&str, &Tensor<B, 3>),
    ) -> Tensor<B, 3> {
        let mut x = self.embed(pixels);
        observe("embeddings", &x);
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            x = layer.forward(x, &self.cfg);
            observe(&format!("layer.{i}"), &x);
        }
        if let Some(norm) = &self.layernorm {
            x = norm.forward(x);
            observe("layernorm", &x);
        }
        x
    }

    /// Patch embeddings with the class token in front and the learned positions added.
    fn embed(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let [n, c, s, _] = pixels.dims();
        let (p, d) = (self.cfg.patch_size, self.cfg.hidden_size);
        let g = s / p;
        // [N, C, g, P, g, P] → [N, g, g, C, P, P]: each patch's values in the kernel's order.
        let rows = pixels
            .reshape([n, c, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n * g * g, c * p * p]);
        let proj = &self.embeddings.patch_embeddings.projection;
        let w = proj.weight.val().reshape([d, c * p * p]);
        let patches =
            (rows.matmul(w.transpose()) + proj.bias.val().unsqueeze::<2>()).reshape([n, g * g, d]);
        let cls = self.embeddings.cls_token.val().expand([n, 1, d]);
        Tensor::cat(vec![cls, patches], 1) + self.embeddings.position_embeddings.val()
    }
}

impl<B: Backend> Layer<B> {
    fn forward(&self, x: Tensor<B, 3>, cfg: &VisionConfig) -> Tensor<B, 3> {
        let h = self
            .attention
            .forward(self.layernorm_before.forward(x.clone()), cfg);
        let x = x + h * self.lambda_1.val().unsqueeze();
        let y = self.layernorm_after.forward(x.clone());
        let y = linear3(
            &self.mlp.fc2,
            act(linear3(&self.mlp.fc1, y), &cfg.hidden_act),
        );
        x + y * self.lambda_2.val().unsqueeze()
    }
}

impl<B: Backend> Attention<B> {
    fn forward(&self, x: Tensor<B, 3>, cfg: &VisionConfig) -> Tensor<B, 3> {
        let [n, t, d] = x.dims();
        let (h, hd) = (cfg.num_attention_heads, cfg.head_dim());
        let norm = |y: Tensor<B, 3>, nm: &Option<Norm<B>>| match nm {
            Some(nm) => nm.forward(y),
            None => y,
        };
        let heads = |y: Tensor<B, 3>| y.reshape([n, t, h, hd]).swap_dims(1, 2);
        let q = heads(norm(linear3(&self.q_proj, x.clone()), &self.q_norm));
        let k = heads(norm(linear3(&self.k_proj, x.clone()), &self.k_norm));
        let v = heads(linear3(&self.v_proj, x));
        let scores = q.matmul(k.swap_dims(2, 3)) * (hd as f64).powf(-0.5);
        let ctx = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([n, t, d]);
        linear3(&self.projection_layer, ctx)
    }
}
