//! Training and evaluation of the classifier heads.
pub mod cache;
pub mod data;
pub mod fit;
