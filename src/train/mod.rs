//! Training and evaluation of the classifier heads, and retraining from operator feedback.
//! The types every training command shares live here; each file is one step or command.
pub mod cache;
pub mod eval;
pub mod evaluate;
pub mod finetune;
pub mod fit;
pub mod groups;
pub mod metrics;
pub mod report;
pub mod retrain;
pub mod run;
pub mod typos;

use std::path::PathBuf;

use crate::classify::ClassifyError;
use crate::dataset::DataError;
use crate::embed::EmbedError;
use fit::FitConfig;

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error("training failed: {0}")]
    Model(#[from] candle_core::Error),
    #[error("embedding cache: {0}")]
    Cache(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Settings of a training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    pub cache_dir: PathBuf,
    pub dev_percent: u32,
    /// Loss weight of real user prompts (`source == "sharegpt"`) relative to other rows.
    pub real_prompt_weight: f32,
    /// Class balancing of real prompts: each real row's weight is multiplied by
    /// (mean real class size / its class size)^this (0 = off), so that thin real classes count.
    pub real_class_balance: f32,
    pub min_examples: usize,
    pub abstain_threshold: f32,
    /// Use at most this many rows (0 = all), taken in file order: for quick runs and tests.
    pub limit: usize,
    pub fit: FitConfig,
    /// Keep the intent and domain heads of this classifier folder (made for the same encoder)
    /// and train the complexity head alone; its own encoder, if any, is copied to the output.
    pub keep_heads: Option<PathBuf>,
    /// Word list for typo repair (`classify::spell`); None = heads without typo repair.
    pub spell_dictionary: Option<PathBuf>,
}
