//! End-to-end tests: the `asymm` binary on temporary stores.

mod bad_pipelines;
mod bundles;
mod cache;
mod checkpoints;
mod common;
mod crash;
mod fidelity;
mod internvl;
mod json;
mod model;
mod qwen3_vl;
mod remote;
mod render;
mod report;
mod rl;
mod slurm;
