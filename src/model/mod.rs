//! The vision-language model: a ViT-style image encoder, a projector, and a decoder-only causal LM
//! (RMSNorm, rotary positions, gated MLP) that reads the image tokens as a prefix. Generic over the
//! burn backend; the CPU backend is Flex, CUDA is behind the `cuda` cargo feature.
//! The model knows nothing of tasks: it maps images and token ids to logits.

pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod layers;
pub mod sampling;
pub mod vlm;

pub use config::VlmConfig;
pub use vlm::Vlm;

/// The CPU backend.
pub type Cpu = burn::backend::Flex;

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown device `{0}` (use cpu, cuda:N or cuda:N/bf16)")]
    Device(String),
    #[error("device `{0}`: bf16 needs a CUDA device (the CPU backend computes in f32)")]
    Bf16OnCpu(String),
    #[error("device `{0}` needs a build with `--features cuda`")]
    NoCuda(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("model input: {0}")]
    Input(String),
    #[error("reading a tensor back to the host: {0}")]
    TensorRead(String),
}

/// A parsed `--device` value: `cpu`, `cuda`, `cuda:N`; a CUDA device may be suffixed `/bf16` to
/// keep parameters and activations in bfloat16 (default float32; the CPU backend is f32 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    CudaBf16(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<DeviceSpec, ModelError> {
        let (dev, bf16) = match s.split_once('/') {
            None => (s, false),
            Some((d, "bf16")) => (d, true),
            Some(_) => return Err(ModelError::Device(s.to_string())),
        };
        if dev == "cpu" {
            return if bf16 {
                Err(ModelError::Bf16OnCpu(s.to_string()))
            } else {
                Ok(DeviceSpec::Cpu)
            };
        }
        if let Some(n) = dev.strip_prefix("cuda") {
            let n = n
                .strip_prefix(':')
                .unwrap_or(if n.is_empty() { "0" } else { n });
            let n: usize = n.parse().map_err(|_| ModelError::Device(s.to_string()))?;
            return Ok(if bf16 {
                DeviceSpec::CudaBf16(n)
            } else {
                DeviceSpec::Cuda(n)
            });
        }
        Err(ModelError::Device(s.to_string()))
    }
}

/// A tensor's values on the host as f32, whatever the backend's float type.
pub fn host_f32<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::TensorRead(format!("{e:?}")))
}

/// Calls `$body` with `$B` bound to the backend type and `$dev` to the device for `$spec`.
/// `$B` is the inner (non-autodiff) backend; wrap it in `burn::backend::Autodiff` to train.
#[macro_export]
macro_rules! with_backend {
    ($spec:expr, |$B:ident, $dev:ident| $body:expr) => {{
        match $spec {
            $crate::model::DeviceSpec::Cpu => {
                type $B = $crate::model::Cpu;
                let $dev = burn::backend::flex::FlexDevice;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::model::DeviceSpec::Cuda(n) => {
                type $B = burn::backend::Cuda;
                let $dev = burn::backend::cuda::CudaDevice::new(n);
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::model::DeviceSpec::CudaBf16(n) => {
                type $B = burn::backend::Cuda<burn::tensor::bf16>;
                let $dev = burn::backend::cuda::CudaDevice::new(n);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::model::DeviceSpec::Cuda(n) | $crate::model::DeviceSpec::CudaBf16(n) => {
                Err($crate::model::ModelError::NoCuda(format!("cuda:{n}")).into())
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert!(DeviceSpec::parse("tpu").is_err());
        assert!(DeviceSpec::parse("cpu/bf16").is_err());
        assert_eq!(
            DeviceSpec::parse("cuda:2/bf16").unwrap(),
            DeviceSpec::CudaBf16(2)
        );
        assert!(DeviceSpec::parse("cpu/f8").is_err());
    }
}
