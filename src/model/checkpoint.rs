//! Checkpoints as store artifacts: `model.safetensors` (weights), `config.json` (the model shape),
//! `tokenizer.json`. Loading checks that every weight is present and that the tokenizer is the one
//! the data was encoded with.

use super::{ModelError, VlmConfig, vlm::Vlm};
use crate::text::Tokenizer;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Serialized weights (no free-form metadata, so identical weights give identical bytes).
pub fn weights_to_bytes<B: Backend, M: Module<B>>(model: &M) -> Result<Vec<u8>, ModelError> {
    let mut store = SafetensorsStore::from_bytes(None).clear_metadata();
    model
        .save_into(&mut store)
        .map_err(|e| ModelError::Checkpoint(format!("saving weights: {e}")))?;
    store
        .get_bytes()
        .map_err(|e| ModelError::Checkpoint(format!("saving weights: {e}")))
}

/// Loads weights into a fresh model of shape `cfg`.
pub fn model_from_bytes<B: Backend>(
    cfg: &VlmConfig,
    bytes: &[u8],
    device: &B::Device,
) -> Result<Vlm<B>, ModelError> {
    cfg.validate()?;
    load_weights(Vlm::<B>::new(cfg, device), bytes)
}

/// `model` with every float parameter in the backend's float type. burn-store keeps the dtype a
/// file stores, so a bf16 checkpoint read on an f32 backend (or an f32 one on a bf16 device)
/// would otherwise give parameters of another type than the activations they meet.
pub fn to_backend_dtype<B: Backend, M: Module<B>>(model: M) -> M {
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::{DType, Tensor};
    struct Cast(Option<DType>);
    impl<B: Backend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = p.consume();
            let want = *self
                .0
                .get_or_insert_with(|| Tensor::<B, 1>::zeros([1], &tensor.device()).dtype());
            let tensor = if tensor.dtype() == want {
                tensor
            } else if tensor.is_require_grad() {
                tensor.cast(want).detach().require_grad()
            } else {
                tensor.cast(want)
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    model.map(&mut Cast(None))
}

/// Loads [`weights_to_bytes`] output into `model`, which must have every weight it names.
pub fn load_weights<B: Backend, M: Module<B>>(mut model: M, bytes: &[u8]) -> Result<M, ModelError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()));
    let r = model
        .load_from(&mut store)
        .map_err(|e| ModelError::Checkpoint(format!("loading weights: {e}")))?;
    if !r.missing.is_empty() || !r.errors.is_empty() {
        return Err(ModelError::Checkpoint(format!(
            "weights do not match the config: {} missing ({}), {} errors",
            r.missing.len(),
            r.missing
                .iter()
                .map(|m| m.0.as_str())
                .take(3)
                .collect::<Vec<_>>()
                .join(", "),
            r.errors.len()
        )));
    }
    Ok(to_backend_dtype(model))
}

/// `to` with the parameter values of `from`, a module of the same structure on any backend and
/// float type (read as f32 and written in `to`'s float type), in module order.
pub fn copy_weights<B1: Backend, B2: Backend, M1: Module<B1>, M2: Module<B2>>(
    from: &M1,
    to: M2,
) -> Result<M2, ModelError> {
    use burn::module::{ModuleMapper, ModuleVisitor, Param};
    use burn::tensor::{Tensor, TensorData};
    struct Read(Vec<Result<Vec<f32>, ModelError>>);
    impl<B: Backend> ModuleVisitor<B> for Read {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(super::host_f32(p.val()));
        }
    }
    struct Write {
        values: std::vec::IntoIter<Result<Vec<f32>, ModelError>>,
        error: Option<ModelError>,
    }
    impl<B: Backend> ModuleMapper<B> for Write {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = p.consume();
            let shape = tensor.shape();
            let tensor = match self.values.next() {
                Some(Ok(v)) if v.len() == shape.num_elements() => {
                    Tensor::from_data(TensorData::new(v, shape), &tensor.device())
                }
                Some(Err(e)) => {
                    self.error.get_or_insert(e);
                    tensor
                }
                _ => {
                    self.error.get_or_insert(ModelError::Checkpoint(
                        "copying weights: the two models have other parameters".into(),
                    ));
                    tensor
                }
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    let mut read = Read(Vec::new());
    from.visit(&mut read);
    let n = read.0.len();
    let mut write = Write {
        values: read.0.into_iter(),
        error: None,
    };
    let out = to.map(&mut write);
    if let Some(e) = write.error {
        return Err(e);
    }
    if write.values.len() > 0 || n == 0 {
        return Err(ModelError::Checkpoint(
            "copying weights: the two models have other parameters".into(),
        ));
    }
    Ok(out)
}

pub fn config_to_json(cfg: &VlmConfig) -> String {
    serde_json::to_string_pretty(cfg).unwrap_or_default()
}

pub fn config_from_json(s: &str) -> Result<VlmConfig, ModelError> {
    serde_json::from_str(s).map_err(|e| ModelError::Checkpoint(format!("config.json: {e}")))
}

/// Checks that a checkpoint's tokenizer equals the data's.
pub fn check_tokenizer(checkpoint: &Tokenizer, data: &Tokenizer) -> Result<(), ModelError> {
    if checkpoint != data {
        return Err(ModelError::Checkpoint(format!(
            "tokenizer mismatch: checkpoint {} vs data {}",
            checkpoint.fingerprint(),
            data.fingerprint()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cpu;

    /// Copied weights give the source's bytes; a model of another shape is refused.
    #[test]
    fn weights_copy_across_models() {
        let dev = Default::default();
        let a = Vlm::<Cpu>::new(&tiny(), &dev);
        let b = Vlm::<Cpu>::new(&tiny(), &dev);
        assert_ne!(weights_to_bytes(&a).unwrap(), weights_to_bytes(&b).unwrap());
        let b = copy_weights(&a, b).unwrap();
        assert_eq!(weights_to_bytes(&a).unwrap(), weights_to_bytes(&b).unwrap());
        let wider = VlmConfig {
            d_model: 32,
            ..tiny()
        };
        assert!(copy_weights(&a, Vlm::<Cpu>::new(&wider, &dev)).is_err());
        let deeper = VlmConfig {
            layers: tiny().layers + 1,
            ..tiny()
        };
        assert!(copy_weights(&a, Vlm::<Cpu>::new(&deeper, &dev)).is_err());
    }

    fn tiny() -> VlmConfig {
        VlmConfig {
            image_size: 32,
            patch_size: 16,
            vit_dim: 16,
            vit_layers: 1,
            vit_heads: 2,
            conv_stem: 2,
            d_model: 16,
            layers: 1,
            heads: 2,
            mlp_ratio: 2,
            vocab_size: 20,
            max_seq_len: 64,
            rope_theta: 10000.0,
        }
    }

    #[test]
    fn weights_round_trip_byte_identically() {
        let dev = Default::default();
        Cpu::seed(&dev, 3);
        let m = Vlm::<Cpu>::new(&tiny(), &dev);
        let a = weights_to_bytes(&m).unwrap();
        let b = weights_to_bytes(&m).unwrap();
        assert_eq!(a, b);
        let back = model_from_bytes::<Cpu>(&tiny(), &a, &dev).unwrap();
        assert_eq!(weights_to_bytes(&back).unwrap(), a);
        let mut other = tiny();
        other.d_model = 32;
        assert!(model_from_bytes::<Cpu>(&other, &a, &dev).is_err());
        let cfg = config_from_json(&config_to_json(&tiny())).unwrap();
        assert_eq!(cfg, tiny());
    }
}
