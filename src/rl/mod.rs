//! Reinforcement learning on the VLM (GRPO), as libraries the stages adapt:
//!
//! - [`advantage`]: group-normalized advantages and the per-token advantage rescaling of the
//!   paper's appendix B.3 (token reweighting between perception and reasoning);
//! - [`grpo`]: per-token log-probabilities of sampled sequences by teacher forcing, and the
//!   PPO-clipped objective (token mean per sequence, mean over sequences), KL to a reference
//!   (k3) and GSPO's sequence ratio;
//! - [`batch`]: one step's rollouts matched to their rewards, with advantages, as training
//!   sequences;
//! - [`update`]: one policy update (epochs of mini-batches) on the shared trainer;
//! - [`reward`]: the outcome reward, ground-truth and surrogate perception rewards (self,
//!   teacher) and their composition;
//! - [`coupling`]: how each reward correlates with a_p and with ã_r over scored rollouts;
//! - [`select`]: the keyed subset of items an RL step samples.

pub mod advantage;
pub mod batch;
pub mod coupling;
pub mod grpo;
pub mod reward;
pub mod select;
pub mod update;

/// Errors of the RL libraries.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Trainer(#[from] crate::train::trainer::TrainerError),
    #[error(transparent)]
    Peer(#[from] crate::train::peers::PeerError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, RlError>;
