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
    #[error("unknown device `{0}` (use cpu or cuda:N)")]
    Device(String),
    #[error("device `{0}` needs a build with `--features cuda`")]
    NoCuda(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("model config: {0}")]
    Config(String),
}

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<DeviceSpec, ModelError> {
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if let Some(n) = s.strip_prefix("cuda") {
            let n = n
                .strip_prefix(':')
                .unwrap_or(if n.is_empty() { "0" } else { n });
            return n
                .parse()
                .map(DeviceSpec::Cuda)
                .map_err(|_| ModelError::Device(s.to_string()));
        }
        Err(ModelError::Device(s.to_string()))
    }
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
            #[cfg(not(feature = "cuda"))]
            $crate::model::DeviceSpec::Cuda(n) => {
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
    }
}
