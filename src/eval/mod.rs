//! Sampling and scoring, shared by the stages and the training loops: batched rollouts that keep
//! every sampled token and its log-probability ([`rollout`]), and per-sample scores, summaries
//! and held-out evaluation ([`score`]).

pub mod rollout;
pub mod score;

pub use rollout::{Mode, RolloutRow, RolloutSpec, Sampler, run_rollouts};
pub use score::{Scores, score};

/// Errors of sampling and scoring.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Codec(#[from] crate::data::codec::CodecError),
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

/// Returns early with an [`EvalError::Invalid`] built from a format string.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::eval::EvalError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;
