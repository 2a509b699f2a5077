//! Training: batches from formatted examples, the SFT objectives (standard, fixed-λ span
//! reweighting, NGDiff, perception-only), gradient utilities, the learning-rate schedule, and the
//! SFT loop with resumable snapshots.

pub mod batch;
pub mod grads;
pub mod objective;
pub mod schedule;
pub mod sft;
