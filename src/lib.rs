//! asymm: controlled experiments on how post-training improves perception versus reasoning in
//! vision-language models.
//!
//! Layers, from the bottom: [`store`] (content-addressed artifacts, records, locks, bundles) and
//! [`table`] (Parquet with schemas) know nothing of ML; [`dag`] parses pipelines, keys and runs
//! stages; [`stages`] are the pipeline steps, built from [`tasks`] (puzzles, solvers, graders),
//! [`render`] (images) and [`text`] (tokenizer, answer format), [`data`] (the formatted example
//! the learning libraries share). ARCHITECTURE.md has the whole picture.

pub mod analysis;
pub mod clip;
pub mod dag;
pub mod data;
pub mod eval;
pub mod model;
pub mod progress;
pub mod render;
pub mod report;
pub mod rl;
pub mod stages;
pub mod store;
pub mod table;
pub mod tasks;
pub mod text;
pub mod train;
pub mod util;
