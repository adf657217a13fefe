//! Catalog hot reload: the config file is read again (on a change seen by the file watch, or
//! on Admin `ReloadConfig`), checked as at start (syntax, numbers, the live classifier's
//! labels), and its backends, policies and default policy replace the running ones in one
//! atomic swap. Requests in flight keep the catalog they started with; an invalid file is
//! refused, logged and counted, and the old catalog keeps serving. Sections that only take
//! effect at start (`[server]`, `[encoder]`, …) are not swapped: a reload names those that
//! changed, so the operator knows a restart is due.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backends::Upstreams;
use crate::config::{text_version, Config, ConfigError};
use crate::live::Live;
use crate::metrics::Metrics;

/// Larger config files are refused unread (a catalog is kilobytes).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The top-level keys a reload swaps; the others need a restart.
const CATALOG_KEYS: &[&str] = &["backends", "policies", "default_policy"];

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the server runs on the bundled config, which has no file to reload; start it with --config")]
    NoFile,
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("the catalog's backend clients: {0}")]
    Clients(#[from] reqwest::Error),
}

/// What a reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub version: String,
    pub previous: String,
    /// False when the file's text was the one already running.
    pub changed: bool,
    pub backends: usize,
    pub policies: usize,
    /// Top-level sections that differ from the running file but take effect only at start.
    pub restart_needed: Vec<String>,
}

pub struct Reloader {
    path: Option<PathBuf>,
    config: Arc<ArcSwap<Config>>,
    live: Arc<Live>,
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    /// One reload at a time; holds the running file's parsed table (for `restart_needed`).
    running: tokio::sync::Mutex<Option<toml::Table>>,
}

impl Reloader {
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        live: Arc<Live>,
        upstreams: Arc<Upstreams>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let current = config.load();
        let path = current.path.clone();
        let table = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| t.parse::<toml::Table>().ok());
        drop(current);
        Self {
            path,
            config,
            live,
            upstreams,
            metrics,
            running: tokio::sync::Mutex::new(table),
        }
    }

    /// Reads the file again and swaps its catalog in when it is valid; `origin` says who
    /// asked ("watch", "admin") for the log and the metric.
    pub async fn reload(&self, origin: &str) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().await;
        let out = self.reload_locked(&mut running).await;
        let outcome = match &out {
            Ok(r) if !r.changed => "unchanged",
            Ok(_) => "ok",
            Err(_) => "refused",
        };
        self.metrics
            .config_reloads
            .with_label_values(&[origin, outcome])
            .inc();
        match &out {
            Ok(r) if r.changed => {
                tracing::info!(origin, version = %r.version, previous = %r.previous, backends = r.backends, policies = r.policies, restart_needed = ?r.restart_needed, "catalog reloaded");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(origin, error = %e, "catalog reload refused; the running catalog stays")
            }
        }
        out
    }

    async fn reload_locked(
        &self,
        running: &mut Option<toml::Table>,
    ) -> Result<Reloaded, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let text = read_bounded(path).await?;
        let current = self.config.load_full();
        let new_version = text_version(&text);
        if new_version == current.version {
            return Ok(summary(&current, &current.version, false, Vec::new()));
        }
        let mut next = Config::parse(&text, &path.display().to_string())?;
        let model = self.live.snapshot();
        let meta = &model.classifier.meta;
        next.validate(&meta.intent_labels, &meta.domain_labels)?;
        let table: Option<toml::Table> = text.parse().ok();
        let restart_needed = sections_changed(running.as_ref(), table.as_ref());
        let mut swapped = (*current).clone();
        swapped.backends = std::mem::take(&mut next.backends);
        swapped.policies = std::mem::take(&mut next.policies);
        swapped.default_policy = std::mem::take(&mut next.default_policy);
        swapped.version = new_version;
        // Backends first, so a request that sees the new catalog finds their state.
        self.upstreams.update(&swapped)?;
        let done = summary(&swapped, &current.version, true, restart_needed);
        self.config.store(Arc::new(swapped));
        *running = table;
        Ok(done)
    }

    /// Polls the file every `every` and reloads when its text changed (a ConfigMap update
    /// replaces the file through a symlink swap, so its content, not its mtime, is compared).
    /// An invalid version is reported once, not at every poll.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut refused: Option<String> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(text) = read_bounded(&path).await else {
                continue;
            };
            let v = text_version(&text);
            if v == self.config.load().version || refused.as_deref() == Some(v.as_str()) {
                continue;
            }
            refused = self.reload("watch").await.err().map(|_| v);
        }
    }
}

fn summary(c: &Config, previous: &str, changed: bool, restart_needed: Vec<String>) -> Reloaded {
    Reloaded {
        version: c.version.clone(),
        previous: previous.to_string(),
        changed,
        backends: c.backends.len(),
        policies: c.policies.len(),
        restart_needed,
    }
}

/// Reads the config file, refusing one over `MAX_CONFIG_BYTES`.
async fn read_bounded(path: &std::path::Path) -> Result<String, ConfigError> {
    let name = path.display().to_string();
    let io = |e| ConfigError::Io(e, name.clone());
    let meta = tokio::fs::metadata(path).await.map_err(io)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid {
            file: name.clone(),
            path: "<file>".into(),
            message: format!("{} bytes, over the limit of {MAX_CONFIG_BYTES}", meta.len()),
        });
    }
    tokio::fs::read_to_string(path).await.map_err(io)
}

/// The top-level sections outside the catalog that differ between two parsed files.
fn sections_changed(old: Option<&toml::Table>, new: Option<&toml::Table>) -> Vec<String> {
    let (Some(old), Some(new)) = (old, new) else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !CATALOG_KEYS.contains(&k.as_str()) && old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_outside_the_catalog_need_a_restart() {
        let old: toml::Table =
            "default_policy = \"a\"\n[server]\nmax_messages = 5\n[admin]\ngate_margin = 0.1\n"
                .parse()
                .unwrap();
        let new: toml::Table =
            "default_policy = \"b\"\n[server]\nmax_messages = 6\n[admin]\ngate_margin = 0.1\n"
                .parse()
                .unwrap();
        assert_eq!(sections_changed(Some(&old), Some(&new)), vec!["server"]);
    }
}
