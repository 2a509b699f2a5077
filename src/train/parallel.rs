//! Data parallelism within one process: a batch split into shards whose forward and backward
//! passes run concurrently, each on its own thread and its own replica of the model, their
//! gradients then summed in shard order.
//!
//! A replica shares the weights' storage and parameter ids with the model (so its gradients
//! address the same parameters) but gets fresh autodiff leaves: burn's autodiff keeps one graph
//! per set of connected nodes, and two threads that touched the same leaves would have their
//! graphs merged (and the merge and a concurrent backward pass take the same two locks in
//! opposite order).
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

use burn::module::{Module, ModuleMapper, Param};
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

/// The shards' pools, made once and kept: a fresh thread per shard and step would start with
/// cold allocator and matrix-kernel buffers every time.
fn shard_pools(n: usize) -> Vec<Arc<rayon::ThreadPool>> {
    static POOLS: Mutex<Vec<Arc<rayon::ThreadPool>>> = Mutex::new(Vec::new());
    let threads = (rayon::current_num_threads() / n).max(1);
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    while pools.len() < n {
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("asymm-shard-{i}"))
            .build()
        {
            Ok(p) => pools.push(Arc::new(p)),
            Err(_) => break,
        }
    }
    pools.iter().take(n).cloned().collect()
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
    let pools = shard_pools(n);
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
