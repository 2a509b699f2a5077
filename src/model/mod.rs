//! The vision-language model: a ViT-style image encoder, a projector, and a decoder-only causal LM
//! (RMSNorm, rotary positions, gated MLP) that reads the image tokens as a prefix. Generic over the
//! burn backend; the CPU backend is Flex, CUDA is behind the `cuda` cargo feature.
//! The model knows nothing of tasks: it maps images and token ids to logits.

pub mod any;
pub mod check;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "gpu")]
pub mod cube;
pub mod decode;
pub mod fused;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod hf;
pub mod host;
pub mod internvl;
pub mod layers;
pub mod load;
pub mod memory;
pub mod qwen3_vl;
pub mod sampling;
pub mod vlm;

pub use any::{Decoding, Fork, HfNet, HfShape, HfVlm, Model, VisionLanguageModel};
pub use config::VlmConfig;
pub use hf::family::Checkpoint;
pub use vlm::Vlm;

/// The CPU backend.
pub type Cpu = burn::backend::Flex;

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown device `{0}` (use cpu, cuda:N, cuda:N/bf16, wgpu or wgpu:cpu)")]
    Device(String),
    #[error("device `{0}`: bf16 needs a CUDA device (the CPU backend computes in f32)")]
    Bf16OnCpu(String),
    #[error("device `{0}` needs a build with `--features cuda`")]
    NoCuda(String),
    #[error("device `{0}` needs a build with `--features wgpu`")]
    NoWgpu(String),
    #[error("device `wgpu-bare:cpu` needs a build with `--features wgpu-bare`")]
    NoBareWgpu,
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A checkpoint folder that cannot be read as one.
    #[error("checkpoint {}: {reason}", dir.display())]
    Folder {
        dir: std::path::PathBuf,
        reason: String,
    },
    #[error("model config: {0}")]
    Config(String),
    #[error("model config: {0}")]
    InvalidConfig(#[from] config::ConfigError),
    #[error("model input: {0}")]
    Input(String),
    #[error("reading a tensor back to the host: {0}")]
    TensorRead(String),
    #[error(
        "device `{device}` is not usable: {msg}. A CUDA build loads the driver library \
         (libcuda.so.1) and NVRTC (libnvrtc.so, e.g. from a PyTorch install under \
         site-packages/nvidia/cuda_nvrtc/lib) at run time: put their folders on LD_LIBRARY_PATH"
    )]
    DeviceUnavailable { device: String, msg: String },
    #[error(transparent)]
    Hf(#[from] hf::HfError),
    #[error(transparent)]
    Chat(#[from] crate::text::chat::ChatError),
}

/// Runs one tiny operation on `device`, turning a panic inside the backend (a CUDA library
/// that cannot be loaded, no such device) into an error naming the device and what it needs.
pub fn probe_device<B: burn::tensor::backend::Backend>(
    spec: &str,
    device: &B::Device,
) -> Result<(), ModelError> {
    // The backend may fail on another thread (its device server) and answer this one with a
    // closed channel: the first panic message of any thread is the one that names the cause.
    let first: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let seen = first.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut g) = seen.lock()
            && g.is_none()
        {
            *g = Some(info.to_string());
        }
    }));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = burn::tensor::Tensor::<B, 1>::from_data(
            burn::tensor::TensorData::new(vec![1.0f32, 2.0], [2]),
            device,
        );
        host_f32(t.sum())
    }));
    std::panic::set_hook(previous);
    let first = first.lock().ok().and_then(|mut g| g.take());
    let msg = match r {
        Ok(Ok(v)) if v.first() == Some(&3.0) => return Ok(()),
        Ok(Ok(v)) => format!("1 + 2 gave {v:?}"),
        Ok(Err(e)) => e.to_string(),
        Err(payload) => first.unwrap_or_else(|| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the backend panicked".into())
        }),
    };
    Err(ModelError::DeviceUnavailable {
        device: spec.to_string(),
        msg,
    })
}

/// A parsed `--device` value: `cpu`, `cuda`, `cuda:N`; a CUDA device may be suffixed `/bf16` to
/// keep parameters and activations in bfloat16 (default float32; the CPU backend is f32 only).
/// `wgpu` is the first adapter wgpu finds and `wgpu:cpu` a software one (lavapipe): the cubecl
/// kernels of the CUDA build, runnable and countable on a machine without a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    CudaBf16(usize),
    Wgpu,
    WgpuCpu,
    /// `wgpu-bare:cpu`: burn's cubecl backend over wgpu's software device without fusion and
    /// without this toolkit's kernels (the composed operations, burn's per-tensor AdamW): the
    /// launch-count baseline the fused path is measured against. Built with `wgpu-bare`.
    WgpuBareCpu,
}

impl DeviceSpec {
    /// Whether the device runs cubecl kernels (CUDA or wgpu): there, shapes that repeat matter
    /// (kernels are compiled and tuned per shape) and host reads stall a queue of launches.
    pub fn is_gpu(self) -> bool {
        !matches!(self, DeviceSpec::Cpu)
    }

    /// The padded-length bucket of training batches on this device: shapes that repeat on a GPU
    /// (kernels are compiled and tuned per shape), the batch's own length on the CPU (whose
    /// results stay as they were).
    pub fn seq_bucket(self) -> usize {
        if self.is_gpu() { 64 } else { 1 }
    }
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<DeviceSpec, ModelError> {
        let (dev, bf16) = match s.split_once('/') {
            None => (s, false),
            Some((d, "bf16")) => (d, true),
            Some(_) => return Err(ModelError::Device(s.to_string())),
        };
        if dev == "wgpu-bare:cpu" && !bf16 {
            return Ok(DeviceSpec::WgpuBareCpu);
        }
        if dev == "wgpu" || dev == "wgpu:cpu" {
            if bf16 {
                return Err(ModelError::Device(s.to_string()));
            }
            return Ok(if dev == "wgpu" {
                DeviceSpec::Wgpu
            } else {
                DeviceSpec::WgpuCpu
            });
        }
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

pub use host::{host_f32, host_i64};

/// The largest |a − b| over paired values, and how many pairs hold a NaN or an infinity (the
/// difference is then infinite: a comparison never passes over values that are not numbers).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    let mut worst = 0.0f32;
    let mut bad = 0;
    for (x, y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            bad += 1;
            continue;
        }
        worst = worst.max((x - y).abs());
    }
    if bad > 0 || a.len() != b.len() {
        worst = f32::INFINITY;
    }
    (worst, bad)
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
                $crate::model::gpu::configure();
                type $B = burn::backend::Cuda;
                let $dev = burn::backend::cuda::CudaDevice::new(n);
                $crate::model::probe_device::<$B>(&format!("cuda:{n}"), &$dev)?;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::model::DeviceSpec::CudaBf16(n) => {
                $crate::model::gpu::configure();
                type $B = burn::backend::Cuda<burn::tensor::bf16>;
                let $dev = burn::backend::cuda::CudaDevice::new(n);
                $crate::model::probe_device::<$B>(&format!("cuda:{n}/bf16"), &$dev)?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::model::DeviceSpec::Cuda(n) | $crate::model::DeviceSpec::CudaBf16(n) => {
                Err($crate::model::ModelError::NoCuda(format!("cuda:{n}")).into())
            }
            #[cfg(feature = "wgpu")]
            $crate::model::DeviceSpec::Wgpu | $crate::model::DeviceSpec::WgpuCpu => {
                $crate::model::gpu::configure();
                type $B = burn::backend::Wgpu;
                let ($dev, name) = if matches!($spec, $crate::model::DeviceSpec::Wgpu) {
                    (burn::backend::wgpu::WgpuDevice::DefaultDevice, "wgpu")
                } else {
                    (burn::backend::wgpu::WgpuDevice::Cpu, "wgpu:cpu")
                };
                $crate::model::probe_device::<$B>(name, &$dev)?;
                $body
            }
            #[cfg(not(feature = "wgpu"))]
            $crate::model::DeviceSpec::Wgpu | $crate::model::DeviceSpec::WgpuCpu => {
                Err($crate::model::ModelError::NoWgpu("wgpu".into()).into())
            }
            #[cfg(feature = "wgpu-bare")]
            $crate::model::DeviceSpec::WgpuBareCpu => {
                $crate::model::gpu::configure();
                type $B = $crate::model::gpu::BareWgpu;
                let $dev = burn::backend::wgpu::WgpuDevice::Cpu;
                $crate::model::probe_device::<$B>("wgpu-bare:cpu", &$dev)?;
                $body
            }
            #[cfg(not(feature = "wgpu-bare"))]
            $crate::model::DeviceSpec::WgpuBareCpu => {
                Err($crate::model::ModelError::NoBareWgpu.into())
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_over_non_numbers_never_pass() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), (0.5, 0));
        assert_eq!(
            max_abs_diff(&[1.0, f32::NAN], &[1.0, 2.0]),
            (f32::INFINITY, 1)
        );
        assert_eq!(max_abs_diff(&[f32::INFINITY], &[1.0]), (f32::INFINITY, 1));
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]).0, f32::INFINITY);
    }

    #[test]
    fn the_cpu_probe_passes() {
        probe_device::<Cpu>("cpu", &Default::default()).unwrap();
    }

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
        assert_eq!(DeviceSpec::parse("wgpu:cpu").unwrap(), DeviceSpec::WgpuCpu);
        assert!(DeviceSpec::parse("wgpu/bf16").is_err());
        assert_eq!(
            DeviceSpec::parse("wgpu-bare:cpu").unwrap(),
            DeviceSpec::WgpuBareCpu
        );
        assert!(DeviceSpec::parse("wgpu-bare:cpu/bf16").is_err());
    }
}
