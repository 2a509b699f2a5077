//! The cubecl runtime's settings for the GPU-shaped backends (CUDA, wgpu): where compiled kernels
//! and autotune results persist between runs, and counting kernel launches and compilations.
//!
//! cubecl reads its settings once, from a `cubecl.toml` in the working folder or above and from
//! `CUBECL_*` variables; [`configure`] takes those and sets the caches to one folder, so that a
//! second run of the same shapes neither recompiles nor re-tunes:
//! `$ASYMM_KERNEL_CACHE`, else `.cache/cubecl` under the working folder.
//!
//! Counting ([`count_kernels`] before the first GPU call): cubecl logs each launch and each
//! compilation through the `log` crate; a logger installed here counts those records (and passes
//! nothing on). The records come from cubecl's logging thread, so [`KernelCounts::now`] waits
//! until the count stops moving after a device sync.

use cubecl_common::config::logger::{LogCrateLevel, LogLevel, LoggerConfig};
use cubecl_runtime::config::autotune::AutotuneLogLevel;
use cubecl_runtime::config::cache::CacheConfig;
use cubecl_runtime::config::compilation::CompilationLogLevel;
use cubecl_runtime::config::profiling::ProfilingLogLevel;
use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

static CONFIGURED: Once = Once::new();
static COUNTING: AtomicBool = AtomicBool::new(false);
static LAUNCHES: AtomicU64 = AtomicU64::new(0);
static COMPILES: AtomicU64 = AtomicU64::new(0);
static AUTOTUNES: AtomicU64 = AtomicU64::new(0);

/// burn's cubecl backend over wgpu without fusion (see [`super::DeviceSpec::WgpuBareCpu`]).
#[cfg(feature = "wgpu-bare")]
pub type BareWgpu =
    burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// The folder of the persistent kernel and autotune caches.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("ASYMM_KERNEL_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(".cache/cubecl"),
    }
}

/// Asks for launch and compilation counts; must come before the first GPU call of the process.
/// Returns false when cubecl was configured already (the counts would stay 0).
pub fn count_kernels() -> bool {
    if CONFIGURED.is_completed() {
        return false;
    }
    COUNTING.store(true, Ordering::SeqCst);
    configure();
    true
}

/// Sets cubecl's runtime configuration once per process (see the module docs).
pub fn configure() {
    CONFIGURED.call_once(|| {
        let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
        let dir = cache_dir();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        cfg.compilation.cache = Some(CacheConfig::File(dir.join("kernels")));
        cfg.autotune.cache = CacheConfig::File(dir.join("autotune"));
        if COUNTING.load(Ordering::SeqCst) && log::set_logger(&COUNTER).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
            // One `log` level per source, so that a record's level says what it counts.
            cfg.profiling.logger = counted(ProfilingLogLevel::Minimal, LogCrateLevel::Info);
            cfg.compilation.logger = counted(CompilationLogLevel::Basic, LogCrateLevel::Debug);
            cfg.autotune.logger = counted(AutotuneLogLevel::Minimal, LogCrateLevel::Trace);
        }
        CubeClRuntimeConfig::set(cfg);
    });
}

/// A logger setting that sends records of `level` to the `log` crate only, at `as_level`.
fn counted<L: LogLevel>(level: L, as_level: LogCrateLevel) -> LoggerConfig<L> {
    LoggerConfig::<L> {
        level,
        log: Some(as_level),
        ..Default::default()
    }
}

/// Counts cubecl's log records by level: an info record ("Executing …", profiling at its minimal
/// level) is a launch, a debug record a compilation, a trace record an autotune event.
struct Counter;

static COUNTER: Counter = Counter;

impl log::Log for Counter {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("cubecl")
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        if r.level() == log::Level::Info {
            tally(&r.args().to_string());
        }
        let counter = match r.level() {
            log::Level::Info => &LAUNCHES,
            log::Level::Debug => &COMPILES,
            _ => &AUTOTUNES,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&self) {}
}

/// Launches so far by kernel name.
static BY_KERNEL: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts one launch record ("Executing NAME") under the kernel's short name.
fn tally(message: &str) {
    let Some(name) = message.strip_prefix("Executing ") else {
        return;
    };
    let name = kernel_name(name);
    let mut by = BY_KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    match by.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            by.insert(name.to_string(), 1);
        }
    }
}

/// A kernel's name without its type parameters and module path: `a::b::Kernel<F, ..>` → `Kernel`.
fn kernel_name(full: &str) -> &str {
    // Cut at the first `<`, opening brace (written `\x7b`), `(` or space.
    let base = full.split(['<', '\x7b', '(', ' ']).next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// Launches counted so far by kernel name (see [`count_kernels`]).
pub fn launches_by_kernel() -> BTreeMap<String, u64> {
    BY_KERNEL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Launches, compilations and autotune log records counted so far (all devices, all threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounts {
    pub launches: u64,
    pub compiles: u64,
    pub autotunes: u64,
}

impl KernelCounts {
    fn read() -> KernelCounts {
        KernelCounts {
            launches: LAUNCHES.load(Ordering::Relaxed),
            compiles: COMPILES.load(Ordering::Relaxed),
            autotunes: AUTOTUNES.load(Ordering::Relaxed),
        }
    }

    /// The counts once cubecl's logging thread has caught up: call after a device sync; waits
    /// until four reads 50 ms apart agree (at most 5 s), so that a logging thread held back by
    /// a busy machine is not taken for one that has finished.
    pub fn now() -> KernelCounts {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut last, mut same) = (Self::read(), 0);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let c = Self::read();
            same = if c == last { same + 1 } else { 0 };
            if same == 3 || Instant::now() > deadline {
                return c;
            }
            last = c;
        }
    }

    /// Whether counting is on (see [`count_kernels`]).
    pub fn active() -> bool {
        COUNTING.load(Ordering::SeqCst)
    }

    /// `self − earlier`, field by field.
    pub fn since(self, earlier: KernelCounts) -> KernelCounts {
        KernelCounts {
            launches: self.launches - earlier.launches,
            compiles: self.compiles - earlier.compiles,
            autotunes: self.autotunes - earlier.autotunes,
        }
    }
}

/// The software Vulkan device (`make test` installs lavapipe) for the tests, held by one test at
/// a time: the launch counts are per process and lavapipe's threads would share two cores.
/// Counting starts with the first test that asks (before any GPU call of the process).
#[cfg(all(test, feature = "wgpu"))]
pub(crate) fn software_gpu() -> (
    std::sync::MutexGuard<'static, ()>,
    burn::backend::wgpu::WgpuDevice,
) {
    static HELD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static PROBED: Once = Once::new();
    let guard = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let dev = burn::backend::wgpu::WgpuDevice::Cpu;
    PROBED.call_once(|| {
        count_kernels();
        crate::model::probe_device::<burn::backend::Wgpu>("wgpu:cpu", &dev)
            .expect("a software Vulkan device (lavapipe)");
    });
    (guard, dev)
}

/// The cubecl path on a software Vulkan device (`make test` installs lavapipe): the broadcast
/// tables of the GPU backends give the CPU's attention, and launches, compilations and host reads
/// are counted (a repeated computation launches as many kernels each time and compiles none).
#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::model::layers::{Rope, attention_bias, attention_reference};
    use crate::model::{Cpu, host, host_f32, max_abs_diff};
    use burn::backend::Wgpu;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorData};

    /// Rotary attention over a padded causal batch: [B, T, H·d].
    fn attention<B: Backend>(x: &[f32], dims: [usize; 5], device: &B::Device) -> Tensor<B, 3> {
        let [b, t, _, h, d] = dims;
        let qkv = Tensor::<B, 5>::from_data(TensorData::new(x.to_vec(), dims), device);
        let positions: Vec<i64> = (0..(b * t) as i64).map(|i| i % t as i64).collect();
        let rope = Rope::<B>::new(&positions, [b, t], h, d, 1e4, device);
        let mut keys = vec![vec![0.0f32; t]; b];
        keys[1][0] = crate::model::layers::MASKED;
        attention_reference(
            rope.apply_qkv(qkv),
            Some(attention_bias(&keys, h, t, device)),
        )
    }

    #[test]
    fn kernel_names_lose_paths_and_type_parameters() {
        assert_eq!(
            kernel_name("burn_cubecl::kernel::Matmul<f32, u32>"),
            "Matmul"
        );
        assert_eq!(kernel_name("ElemwiseFuse { id: 3 }"), "ElemwiseFuse");
        assert_eq!(kernel_name("plain"), "plain");
    }

    #[test]
    fn the_software_gpu_attends_as_the_cpu_and_is_counted() {
        let (_gpu, dev) = software_gpu();
        assert!(
            KernelCounts::active(),
            "counting starts before the first GPU call"
        );
        let dims = [2, 5, 3, 2, 8];
        let x: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let want = host_f32(attention::<Cpu>(&x, dims, &Default::default())).unwrap();
        let run = || {
            let before = (KernelCounts::now(), host::reads_on_this_thread());
            let got = host_f32(attention::<Wgpu>(&x, dims, &dev)).unwrap();
            let _ = <Wgpu as Backend>::sync(&dev);
            let after = (KernelCounts::now(), host::reads_on_this_thread());
            (got, after.0.since(before.0), after.1 - before.1)
        };
        let (first, counts, reads) = run();
        let (diff, bad) = max_abs_diff(&first, &want);
        assert!(
            diff < 1e-4 && bad == 0,
            "wgpu vs cpu: {diff} ({bad} non-finite)"
        );
        assert_eq!(reads, 1);
        assert!(counts.launches > 0 && counts.compiles > 0, "{counts:?}");
        // The first run also launched the autotuner's trial runs; a repeat launches only the
        // computation's own kernels (the same number every time) and compiles nothing.
        let (again, repeat, _) = run();
        assert_eq!(again, first);
        assert_eq!(repeat.compiles, 0, "{repeat:?}");
        assert!(
            repeat.launches > 0 && repeat.launches <= counts.launches,
            "{repeat:?}"
        );
        let by_kernel = launches_by_kernel();
        let (_, third, _) = run();
        // Launches and compilations repeat exactly; the number of autotune log records does not
        // (two repeats on a busy machine logged 116 and 126), so it is not compared.
        assert_eq!(
            (third.launches, third.compiles),
            (repeat.launches, repeat.compiles)
        );
        // The launches by name account for every launch of the run.
        let named: u64 = launches_by_kernel()
            .iter()
            .map(|(k, n)| n - by_kernel.get(k).copied().unwrap_or(0))
            .sum();
        assert_eq!(named, third.launches);
    }
}
