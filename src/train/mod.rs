//! Training: batches from formatted examples, the SFT objectives (standard, fixed-λ span
//! reweighting, NGDiff, perception-only), gradient utilities, the learning-rate schedule, the
//! objective-independent trainer (optimizer, clipping, snapshots) and the SFT loop.

pub mod batch;
pub mod flat;
pub mod gradient;
pub mod grads;
pub mod objective;
pub mod parallel;
pub mod peers;
pub mod schedule;
pub mod sft;
pub mod trainer;
