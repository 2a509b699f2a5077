//! What a benchmark window did: host reads and, on cubecl devices with `--count-kernels`, kernel
//! launches (in all and by kernel), compilations and autotune events.

use super::BenchArgs;

/// What the process had done at one moment: host reads and, where counted, kernel launches,
/// compilations and autotune events.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counts {
    host_reads: u64,
    kernels: Option<[u64; 3]>,
    /// Launches by kernel name, where counted.
    by_kernel: std::collections::BTreeMap<String, u64>,
}

impl Counts {
    /// The counts after a device sync; `None` unless `--count-kernels`.
    pub(super) fn now<B: burn::tensor::backend::Backend>(
        a: &BenchArgs,
        device: &B::Device,
    ) -> Option<Self> {
        if !a.count_kernels {
            return None;
        }
        let _ = B::sync(device);
        #[cfg(feature = "gpu")]
        let kernels = asymm::model::gpu::KernelCounts::active().then(|| {
            let k = asymm::model::gpu::KernelCounts::now();
            [k.launches, k.compiles, k.autotunes]
        });
        #[cfg(feature = "gpu")]
        let by_kernel = asymm::model::gpu::launches_by_kernel();
        #[cfg(not(feature = "gpu"))]
        let (kernels, by_kernel) = (None, Default::default());
        Some(Counts {
            host_reads: asymm::model::host::reads_total(),
            kernels,
            by_kernel,
        })
    }

    pub(super) fn since(self, earlier: Counts) -> Counts {
        Counts {
            host_reads: self.host_reads - earlier.host_reads,
            kernels: match (self.kernels, earlier.kernels) {
                (Some(a), Some(b)) => Some([a[0] - b[0], a[1] - b[1], a[2] - b[2]]),
                _ => None,
            },
            by_kernel: self
                .by_kernel
                .into_iter()
                .map(|(k, n)| {
                    let d = n - earlier.by_kernel.get(&k).copied().unwrap_or(0);
                    (k, d)
                })
                .filter(|&(_, d)| d > 0)
                .collect(),
        }
    }

    /// The most launched kernels, most first: "name n, …" per `per`.
    fn top_kernels(&self, per: f64, n: usize) -> String {
        let mut v: Vec<(&String, &u64)> = self.by_kernel.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .take(n)
            .map(|(k, c)| format!("{k} {:.1}", **c as f64 / per.max(1.0)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Markdown rows: each count divided by `per` (`what`: "SFT step", "decode step").
    pub(super) fn rows(&self, per: f64, what: &str) -> String {
        let mut out = format!(
            "| host reads per {what} | {:.2} |\n",
            self.host_reads as f64 / per.max(1.0)
        );
        if let Some([launches, compiles, autotunes]) = self.kernels {
            out.push_str(&format!(
                "| kernel launches per {what} | {:.1} |\n| kernel compilations in the timed window | {compiles} |\n| autotune log records in the timed window | {autotunes} |\n",
                launches as f64 / per.max(1.0)
            ));
            if !self.by_kernel.is_empty() {
                out.push_str(&format!(
                    "| most launched kernels per {what} ({} kinds) | {} |\n",
                    self.by_kernel.len(),
                    self.top_kernels(per, 8)
                ));
            }
        }
        out
    }

    pub(super) fn json(&self, per: f64) -> serde_json::Value {
        serde_json::json!({
            "host_reads": self.host_reads,
            "host_reads_per": self.host_reads as f64 / per.max(1.0),
            "kernel_launches": self.kernels.map(|k| k[0]),
            "kernel_launches_per": self.kernels.map(|k| k[0] as f64 / per.max(1.0)),
            "kernel_compiles": self.kernels.map(|k| k[1]),
            "autotune_records": self.kernels.map(|k| k[2]),
            "kernel_launches_by_name": self.by_kernel,
        })
    }
}
