//! Data-parallel training with burn's collective (`burn::collective`): `data_parallel = N`
//! peers, each with a replica of the model and of its optimizer, each computing the gradient of
//! its part of every batch; the peers' gradients are summed (an all-reduce) before the optimizer
//! step, so that every peer sees the whole batch's gradient, clips it the same way and steps to
//! the same weights. A run of N peers computes what one peer computes on the whole batch, up to
//! the rounding of the sum.
//!
//! On one node the peers are threads of one process, registered with burn's local collective
//! server, each with a rayon pool of its own (an equal part of the cores), all on the run's
//! device. The parts are contiguous slices of the batch ([`Peer::part`]) and every peer weighs
//! its tokens by the whole batch's normaliser, so the sum of the parts' gradients is the batch's.
//! The leader (peer 0) runs the loop's callbacks (evaluation, validation loss, progress) and
//! writes snapshots; what they decide (early stopping) reaches the others through
//! [`Peer::any`].
//!
//! Determinism: burn's all-reduce adds the peers' tensors in an order it does not fix. A sum of
//! two is exact in either order; for more peers [`Peer::sum`] all-reduces an exact gather (each
//! peer's tensor in a row of its own, zeros elsewhere: adding zeros is exact) and adds the rows in
//! peer order, so results never depend on the order the peers arrive in.

use super::gradient::Gradient;
use super::parallel::{peer_pools, split};
use burn::collective::{
    CollectiveConfig, CollectiveError, PeerId, ReduceOperation, all_reduce, finish_collective,
    register, reset_collective,
};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use std::sync::Mutex;

/// Errors of the peers' collective operations.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("data-parallel peer {peer}: burn's collective failed in {op}: {detail}")]
    Collective {
        peer: usize,
        op: &'static str,
        detail: String,
    },
    #[error(
        "data-parallel peer {peer}: parameter tensor {param} (in the module tree's order) has a \
         gradient on {with} of {peers} peers; every peer must have the same parameter tensors"
    )]
    Parameters {
        peer: usize,
        param: usize,
        with: usize,
        peers: usize,
    },
    #[error("data-parallel peer {peer}: reading a reduced value back: {detail}")]
    Read { peer: usize, detail: String },
    #[error(transparent)]
    Flat(#[from] super::flat::FlatError),
}

pub type Result<T> = std::result::Result<T, PeerError>;

/// One of the peers of a data-parallel run (or the only one: [`Peer::solo`], whose collective
/// operations are the identity).
pub struct Peer<I: Backend> {
    index: usize,
    count: usize,
    device: I::Device,
}

impl<I: Backend> Peer<I> {
    /// The one peer of a run that is not data-parallel.
    pub fn solo(device: &I::Device) -> Self {
        Peer {
            index: 0,
            count: 1,
            device: device.clone(),
        }
    }

    /// This peer's index, `0..count`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many peers the run has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether this peer runs the loop's callbacks and writes its snapshots (peer 0).
    pub fn is_leader(&self) -> bool {
        self.index == 0
    }

    /// This peer's part of `items`: the `index`-th of `count` contiguous slices, sizes differing
    /// by at most one (empty when there are fewer items than peers).
    pub fn part<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        if self.count <= 1 {
            return items;
        }
        split(items, self.count)
            .get(self.index)
            .copied()
            .filter(|_| items.len() >= self.count)
            .unwrap_or(&[])
    }

    fn all_reduce_sum<const D: usize>(&self, t: Tensor<I, D>) -> Result<Tensor<I, D>> {
        let out = all_reduce::<I>(
            PeerId::from(self.index),
            t.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(collective(self.index, "all-reduce"))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// The sum of every peer's `t` (same shape on all), in peer order (see the module docs).
    pub fn sum<const D: usize>(&self, t: Tensor<I, D>) -> Result<Tensor<I, D>> {
        if self.count <= 1 {
            return Ok(t);
        }
        if self.count == 2 {
            return self.all_reduce_sum(t);
        }
        let shape = t.shape();
        let n = shape.num_elements();
        let rows = Tensor::<I, 2>::zeros([self.count, n], &self.device)
            .slice_assign(self.index..self.index + 1, t.reshape([1, n]));
        let rows = self.all_reduce_sum(rows)?;
        let mut total = rows.clone().slice(0..1);
        for i in 1..self.count {
            total = total + rows.clone().slice(i..i + 1);
        }
        Ok(total.reshape(shape))
    }

    /// Every peer's `counts` summed, element by element (exact below 2²⁴).
    pub fn sum_counts(&self, counts: &[usize]) -> Result<Vec<usize>> {
        if self.count <= 1 {
            return Ok(counts.to_vec());
        }
        let data: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
        // In f32 whatever the backend's float type (bf16 rounds counts above 256).
        let t = Tensor::<I, 1>::from_data(
            TensorData::new(data, [counts.len()]),
            (&self.device, DType::F32),
        );
        let host = self
            .all_reduce_sum(t)?
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| PeerError::Read {
                peer: self.index,
                detail: format!("{e:?}"),
            })?;
        Ok(host.into_iter().map(|x| x.round() as usize).collect())
    }

    /// Whether any peer's `flag` is set (a decision one peer takes for all, such as the
    /// leader's early stop).
    pub fn any(&self, flag: bool) -> Result<bool> {
        Ok(self.sum_counts(&[usize::from(flag)])?[0] > 0)
    }

    /// The sum of every peer's gradient: one all-reduce of the buffer in the flat form,
    /// `GradientsParams::all_reduce` (a tensor at a time, in parameter-id order) in burn's.
    pub fn sum_gradient<B, M>(&self, model: &M, g: Gradient<B>) -> Result<Gradient<B>>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        if self.count <= 1 {
            return Ok(g);
        }
        match g {
            Gradient::Flat(g) => Ok(Gradient::Flat(g.reduce_with(|t| self.sum(t))?)),
            Gradient::PerTensor(g) => {
                // Peers whose gradients name different parameters would pair the wrong tensors
                // (or wait for each other forever): every parameter must have a gradient on
                // every peer or on none.
                let mine = presence::<B, M>(model, &g);
                let flags: Vec<usize> = mine.iter().map(|&p| usize::from(p)).collect();
                let all = self.sum_counts(&flags)?;
                if let Some(at) = all.iter().position(|&n| n != 0 && n != self.count) {
                    return Err(PeerError::Parameters {
                        peer: self.index,
                        param: at,
                        with: all[at],
                        peers: self.count,
                    });
                }
                if self.count == 2 {
                    return g
                        .all_reduce::<I>(PeerId::from(self.index), ReduceOperation::Sum)
                        .map(Gradient::PerTensor)
                        .map_err(collective(self.index, "GradientsParams::all_reduce"));
                }
                self.sum_params(model, g).map(Gradient::PerTensor)
            }
        }
    }

    /// Burn's map of `model`'s gradient summed a tensor at a time through [`Peer::sum`], in the
    /// module tree's order (more than two peers).
    fn sum_params<B, M>(&self, model: &M, grads: GradientsParams) -> Result<GradientsParams>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        struct Sum<'a, I: Backend> {
            peer: &'a Peer<I>,
            grads: GradientsParams,
            out: Result<GradientsParams>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Sum<'_, B::InnerBackend> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Ok(out) = &mut self.out else { return };
                if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                    match self.peer.sum(g) {
                        Ok(g) => out.register::<B::InnerBackend, D>(param.id, g),
                        Err(e) => self.out = Err(e),
                    }
                }
            }
        }
        let mut sum = Sum {
            peer: self,
            grads,
            out: Ok(GradientsParams::new()),
        };
        model.visit(&mut sum);
        sum.out
    }
}

/// Whether each float parameter of `model` (in the module tree's order) has a gradient in `g`.
fn presence<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, g: &GradientsParams) -> Vec<bool> {
    struct Has<'a> {
        g: &'a GradientsParams,
        out: Vec<bool>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Has<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let has = self.g.get::<B::InnerBackend, D>(param.id).is_some();
            self.out.push(has);
        }
    }
    let mut has = Has { g, out: Vec::new() };
    model.visit(&mut has);
    has.out
}

/// The error of burn's collective operation `op` on peer `peer`.
fn collective(peer: usize, op: &'static str) -> impl Fn(CollectiveError) -> PeerError {
    move |e| PeerError::Collective {
        peer,
        op,
        detail: format!("{e:?}"),
    }
}

/// One value for each peer: the original for the leader, clones for the others, each taken once
/// by its peer; with one peer nothing is cloned (a model moved, not copied, into its only
/// trainer, whose old weights can then be freed as it steps).
pub struct PerPeer<T>(Mutex<Vec<Option<T>>>);

impl<T: Clone> PerPeer<T> {
    pub fn new(value: T, count: usize) -> Self {
        let mut slots: Vec<Option<T>> = (1..count.max(1)).map(|_| Some(value.clone())).collect();
        slots.insert(0, Some(value));
        PerPeer(Mutex::new(slots))
    }
}

impl<T> PerPeer<T> {
    /// `peer`'s value; `None` when it was taken already.
    pub fn take<I: Backend>(&self, peer: &Peer<I>) -> Option<T> {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slots.get_mut(peer.index()).and_then(Option::take)
    }
}

/// Data-parallel runs take turns: burn's local collective server is one per backend type and
/// process.
static SESSION: Mutex<()> = Mutex::new(());

/// Runs `f` as `count` peers on `device` and returns the leader's result; with one peer, `f`
/// runs on the calling thread. A peer that fails (or panics) resets the collective, so that the
/// others, waiting in an all-reduce, fail too instead of waiting forever; the first failure is
/// the one returned.
pub fn run<I, T, E>(
    count: usize,
    device: &I::Device,
    f: impl Fn(Peer<I>) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<T, E>
where
    I: Backend,
    T: Send,
    E: From<PeerError> + Send,
{
    if count <= 1 {
        return f(Peer::solo(device));
    }
    let _session = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    reset_collective::<I>();
    let config = CollectiveConfig::default().with_num_devices(count);
    let first_failure: Mutex<Option<usize>> = Mutex::new(None);
    let fail = |index: usize| {
        let mut first = first_failure.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(index);
        drop(first);
        reset_collective::<I>();
    };
    let pools = peer_pools(count);
    let (f, fail, config) = (&f, &fail, &config);
    let results: Vec<std::thread::Result<std::result::Result<T, E>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .map(|index| {
                let pool = pools.get(index).cloned();
                s.spawn(move || {
                    let body = move || -> std::result::Result<T, E> {
                        if let Err(e) =
                            register::<I>(PeerId::from(index), device.clone(), config.clone())
                        {
                            fail(index);
                            return Err(collective(index, "register")(e).into());
                        }
                        let out = f(Peer {
                            index,
                            count,
                            device: device.clone(),
                        });
                        match out {
                            Ok(v) => {
                                finish_collective::<I>(PeerId::from(index))
                                    .map_err(collective(index, "finish"))?;
                                Ok(v)
                            }
                            Err(e) => {
                                fail(index);
                                Err(e)
                            }
                        }
                    };
                    let out =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match pool {
                            Some(pool) => pool.install(body),
                            None => body(),
                        }));
                    if out.is_err() {
                        fail(index);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(Err))
            .collect()
    });
    let first = first_failure
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut results: Vec<_> = results.into_iter().map(Some).collect();
    if let Some(i) = first
        && let Some(Some(r)) = results.get_mut(i).map(Option::take)
    {
        return match r {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
    }
    // No peer failed first: the leader's result (any other peer's panic still surfaces).
    let mut leader = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(Ok(r)) if i == 0 => leader = Some(r),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            _ => {}
        }
    }
    leader.unwrap_or_else(|| {
        Err(PeerError::Collective {
            peer: 0,
            op: "run",
            detail: "the leader returned nothing".into(),
        }
        .into())
    })
}

#[cfg(test)]
mod tests;
