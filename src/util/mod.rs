//! Small helpers shared by every layer: keyed randomness, canonical JSON, atomic file writes.

pub mod canon;
pub mod fsx;
pub mod rng;
