//! Optional directory watch (`admin.watch_dir`): a head folder that appears there, and stays
//! unchanged for one polling interval (so a half-copied folder is not taken), goes through
//! the same validated swap as `SwapClassifier`. Folders present at start are left alone.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::registry::{Registry, Source, SwapOptions};
use crate::classify::{META_FILE, WEIGHTS_FILE};

/// Sizes and modification times of a folder's artifact files.
type Fingerprint = Vec<(u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    if !dir.join(META_FILE).is_file() {
        return None;
    }
    let files = [
        dir.join(META_FILE),
        dir.join(WEIGHTS_FILE),
        dir.join("encoder").join("model.safetensors"),
    ];
    Some(
        files
            .iter()
            .map(|f| match std::fs::metadata(f) {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(_) => (0, None),
            })
            .collect(),
    )
}

fn scan(dir: &Path) -> HashMap<PathBuf, Fingerprint> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| fingerprint(&p).map(|f| (p, f)))
        .collect()
}

/// Polls `dir` every `every` until the task is dropped.
pub async fn run(registry: Arc<Registry>, dir: PathBuf, every: Duration) {
    tracing::info!(dir = %dir.display(), every_ms = every.as_millis() as u64, "watching for new classifier folders");
    let mut done = scan(&dir);
    let mut pending: HashMap<PathBuf, Fingerprint> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        for (path, fp) in scan(&dir) {
            if done.get(&path) == Some(&fp) {
                continue;
            }
            // Take a folder once it has stopped changing.
            if pending.get(&path) != Some(&fp) {
                pending.insert(path, fp);
                continue;
            }
            pending.remove(&path);
            done.insert(path.clone(), fp);
            let r = registry
                .swap(Source::Path(path.clone()), SwapOptions::default())
                .await;
            registry.observe("watch", &r);
        }
    }
}
