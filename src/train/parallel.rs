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
//! The shards run on threads of their own, not on rayon's pool: a backward pass holds its graph's
//! lock while its kernels run on the pool, and burn's autodiff, after each backward pass, visits
//! every live graph under that graph's lock. Were the shards themselves pool jobs, two of them
//! could each wait for the other's lock while the kernels that would release it wait for a pool
//! thread (seen as a hang with tests training concurrently). Kept off the pool, the pool's
//! threads only ever run kernels, which take no autodiff lock.
//!
//! The shard count is a setting, never the machine's core count, so that results do not depend
//! on where they were computed; the shards are contiguous slices of the batch.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

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

/// `f(i)` for every shard `i` in `0..n`, concurrently (the last on the calling thread), results
/// in shard order.
pub fn map_shards<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if n <= 1 {
        return (0..n).map(f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n - 1).map(|i| s.spawn(move || f(i))).collect();
        let last = f(n - 1);
        let mut out: Vec<T> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        out.push(last);
        out
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
