//! Data parallelism within one process: a batch split into shards whose forward and backward
//! passes run concurrently, each on its own thread and its own replica of the model, their
//! gradients then summed in shard order.
//!
//! A replica shares the weights' storage and parameter ids with the model (so its gradients
//! address the same parameters) but gets fresh autodiff leaves: burn's autodiff keeps one graph
//! per set of connected nodes, and two threads that touched the same leaves would have their
//! graphs merged (and the merge and a concurrent backward pass take the same two locks in
//! opposite order). Every backward pass, sharded or not, goes through [`gradients`], which
//! takes it on leaves of its own (see there for why).
//!
//! The shards run on threads of their own, each with its own rayon pool for its kernels, not as
//! jobs of the global pool: a backward pass holds its graph's lock while its kernels run, and
//! burn's autodiff, after each backward pass, visits every live graph under that graph's lock.
//! Were the shards jobs of the global pool, a shard could block on the lock of another thread's
//! backward pass whose kernels wait for that very pool (seen as a hang with tests training
//! concurrently).
//!
//! The shard count is a setting, never the machine's core count, so that results do not depend
//! on where they were computed; the shards are contiguous slices of the batch.

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use std::sync::{Arc, Mutex};

/// A copy of `model` with the same weights and parameter ids and its own autodiff leaves.
pub fn replica<B: AutodiffBackend, M: Module<B>>(model: &M) -> M {
    struct FreshLeaves;
    impl<B: AutodiffBackend> ModuleMapper<B> for FreshLeaves {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = if tensor.is_require_grad() {
                tensor.detach().require_grad()
            } else {
                tensor
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    model.clone().map(&mut FreshLeaves)
}

/// The gradients of `forward(m)`'s scalar loss for the parameters of `model`, `m` being a
/// [`replica`] of it, with whatever else `forward` returns.
///
/// Every backward pass runs on leaves of its own. burn's autodiff (0.21), after a backward
/// pass, frees the steps of any graph no live tensor holds; a graph that grew from leaves
/// already through a backward pass (the model's, on its second pass before an optimizer
/// step) can look so while another thread builds it, and the gradients of those leaves are
/// then silently missing. Fresh leaves keep their graph held by the model from the start.
pub fn gradients<B: AutodiffBackend, M: AutodiffModule<B>, T, E>(
    model: &M,
    forward: impl FnOnce(&M) -> Result<(Tensor<B, 1>, T), E>,
) -> Result<(GradientsParams, T), E> {
    let m = replica(model);
    let (loss, rest) = forward(&m)?;
    Ok((GradientsParams::from_grads(loss.backward(), &m), rest))
}

/// Contiguous shards of `items`, at most `shards` of them, sizes differing by at most one.
pub fn split<T>(items: &[T], shards: usize) -> Vec<&[T]> {
    let n = shards.clamp(1, items.len().max(1));
    let (base, extra) = (items.len() / n, items.len() % n);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let len = base + usize::from(i < extra);
        out.push(&items[start..start + len]);
        start += len;
    }
    out
}

/// A set of rayon pools made once and kept: a fresh thread per shard and step would start with
/// cold allocator and matrix-kernel buffers every time.
struct Pools {
    name: &'static str,
    pools: Mutex<Vec<Arc<rayon::ThreadPool>>>,
}

/// The data shards' pools ([`map_shards`]).
static SHARDS: Pools = Pools {
    name: "asymm-shard",
    pools: Mutex::new(Vec::new()),
};

/// The data-parallel peers' pools ([`super::peers`]), apart from the shards' so that a peer
/// waiting for the others never holds a pool a shard needs.
static PEERS: Pools = Pools {
    name: "asymm-peer",
    pools: Mutex::new(Vec::new()),
};

impl Pools {
    /// The first `n` pools of the set, each with an equal part of the global pool's threads (at
    /// least one); fewer when threads cannot be spawned.
    fn take(&self, n: usize) -> Vec<Arc<rayon::ThreadPool>> {
        let threads = (rayon::current_num_threads() / n).max(1);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        while pools.len() < n {
            let name = self.name;
            match rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("{name}-{i}"))
                .build()
            {
                Ok(p) => pools.push(Arc::new(p)),
                Err(_) => break,
            }
        }
        pools.iter().take(n).cloned().collect()
    }
}

/// The pools of `n` data-parallel peers (see [`super::peers::run`]).
pub(crate) fn peer_pools(n: usize) -> Vec<Arc<rayon::ThreadPool>> {
    PEERS.take(n)
}

/// `f(i)` for every shard `i` in `0..n`, concurrently, results in shard order. Each shard runs
/// in a rayon pool of its own (an equal part of the global pool's threads, at least one), so a
/// shard's kernels run on its own threads and never wait on a pool that another shard or another
/// thread's backward pass keeps busy.
pub fn map_shards<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if n <= 1 {
        return (0..n).map(f).collect();
    }
    let f = &f;
    let pools = SHARDS.take(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let pool = pools.get(i).cloned();
                s.spawn(move || match pool {
                    Some(pool) => pool.install(|| f(i)),
                    // No pool (threads could not be spawned): the kernels go to the global
                    // pool, which is slower but as correct.
                    None => f(i),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use burn::backend::Autodiff;
    use burn::module::Param;
    type Ad = Autodiff<crate::model::Cpu>;

    #[derive(burn::module::Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        w: Param<Tensor<B, 2>>,
        v: Param<Tensor<B, 2>>,
    }

    /// `Σ cat(w·x, v + w, w·v)²`'s gradients as host vectors (`None` where one is missing).
    fn grads(m: &Two<Ad>, x: &Tensor<Ad, 2>) -> [Option<Vec<f32>>; 2] {
        let (g, ()) = gradients(m, |m: &Two<Ad>| {
            let (w, v) = (m.w.val(), m.v.val());
            let y = Tensor::cat(vec![w.clone() * x.clone(), v.clone() + w.clone(), w * v], 0);
            Ok::<_, std::convert::Infallible>(((y.clone() * y).sum(), ()))
        })
        .unwrap();
        let host = |p: &Param<Tensor<Ad, 2>>| {
            g.get::<crate::model::Cpu, 2>(p.id)
                .map(|t| t.into_data().to_vec::<f32>().unwrap())
        };
        [host(&m.w), host(&m.v)]
    }

    /// Threads that each take many backward passes from one model through [`gradients`] get,
    /// every time, the gradients of one pass alone (see [`gradients`] for what burn's autodiff
    /// does to reused leaves). Broken by backward passes on the model's own leaves, it fails
    /// (38 of 360 passes lost gradients).
    #[test]
    fn concurrent_backward_passes_keep_every_gradient() {
        let device = Default::default();
        let param = |seed: f32| {
            let data: Vec<f32> = (0..128 * 128).map(|i| (i as f32 * seed).sin()).collect();
            Param::from_tensor(Tensor::<Ad, 2>::from_data(
                burn::tensor::TensorData::new(data, [128, 128]),
                &device,
            ))
        };
        let model = Two {
            w: param(0.37),
            v: param(0.11),
        };
        let x = Tensor::<Ad, 2>::ones([128, 128], &device) * 0.5;
        let want = grads(&model, &x);
        let lost = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for _ in 0..60 {
                        if grads(&model, &x) != want {
                            lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(
            lost.into_inner(),
            0,
            "backward passes with missing or wrong gradients"
        );
    }

    #[test]
    fn split_keeps_order_and_balances() {
        let v: Vec<u32> = (0..7).collect();
        let s = split(&v, 3);
        assert_eq!(s, vec![&[0, 1, 2][..], &[3, 4], &[5, 6]]);
        assert_eq!(split(&v, 1), vec![&v[..]]);
        assert_eq!(split(&v[..2], 4).len(), 2);
        assert_eq!(split::<u32>(&[], 2).len(), 1);
    }
}
