//! Records written on every request and read by retraining and reports: the decision log
//! (with each served completion's usage) and the feedback log. They sit below the engine (which writes decisions) and know nothing of it.
pub mod decisions;
pub mod feedback;
pub mod shared;
pub mod usage;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use decisions::{read_decisions, DecisionLog, DecisionLogConfig, DecisionRecord};
pub use feedback::{join, FeedbackLog, FeedbackRecord};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The decision log's files in `dir`, oldest first.
pub(crate) fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("decisions-") && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort();
    Ok(v)
}
