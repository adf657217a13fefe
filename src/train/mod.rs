//! Training and evaluation of the classifier heads.
pub mod cache;
pub mod data;
pub mod eval;
pub mod evaluate;
pub mod finetune;
pub mod fit;
pub mod report;
pub mod run;
pub mod typos;
