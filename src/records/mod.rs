//! Records written on every request and read by retraining and reports: the decision log
//! (with each served completion's usage) and the feedback log. They sit below the engine (which writes decisions) and know nothing of it.
pub mod decisions;
pub mod feedback;
pub mod shared;
pub mod usage;

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
