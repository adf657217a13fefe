//! The live classifier and its lifecycle: one `ArcSwap<LiveModel>` (encoder, heads, lexicon and
//! version as one unit), the registry that validates and swaps candidates and keeps older
//! versions for rollback, the evaluation gate, and the directory watch. Requests take one
//! snapshot and use it for their whole life; this module never sees a request.
pub mod fleet;
pub mod gate;
pub mod registry;
pub mod watch;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::classify::Classifier;
use crate::embed::SentenceEncoder;

/// A classifier as it runs: its heads (with their lexicon and version) and the encoder whose
/// vectors they read. Swapped as one unit, so a request never pairs heads with another
/// encoder's vectors.
pub struct LiveModel {
    pub classifier: Arc<Classifier>,
    pub encoder: Arc<SentenceEncoder>,
    /// Where it was loaded from (a folder, "inline", or the startup path).
    pub source: String,
    /// When it was loaded (RFC 3339, UTC).
    pub loaded_at: String,
}

impl LiveModel {
    pub fn new(classifier: Arc<Classifier>, encoder: Arc<SentenceEncoder>, source: String) -> Self {
        Self {
            classifier,
            encoder,
            source,
            loaded_at: rfc3339(crate::records::now_ms()),
        }
    }

    /// The classifier's content version (it names the encoder too).
    pub fn version(&self) -> &str {
        self.classifier.version()
    }

    /// sha256 of the encoder's weights.
    pub fn encoder_sha256(&self) -> &str {
        &self.encoder.info().weights_sha256
    }
}

/// The one place the live model is held. Reading is a lock-free snapshot; only the registry
/// replaces it.
pub struct Live(ArcSwap<LiveModel>);

impl Live {
    pub fn new(model: LiveModel) -> Self {
        Self(ArcSwap::from_pointee(model))
    }

    /// The live model now; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<LiveModel> {
        self.0.load_full()
    }

    /// Makes `model` live in one store. Requests in flight keep the snapshot they hold.
    pub(crate) fn replace(&self, model: Arc<LiveModel>) {
        self.0.store(model);
    }
}

/// RFC 3339 (UTC, seconds) for a unix time in ms.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = crate::quota::calendar::civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
