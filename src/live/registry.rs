//! Classifier versions: load a candidate off to the side, validate it (encoder identity,
//! labels the catalog uses, shapes and finiteness, the evaluation gate, a probe), then swap
//! it in with one store of the live model; keep recent versions for rollback. One swap at a
//! time. Every attempt is counted (`observe`) by whoever asked for it.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::gate::{self, GateFeatures, GateSet};
use super::{Live, LiveModel};
use crate::classify::{Classifier, ClassifierMeta, META_FILE};
use crate::config::{AdminConfig, Config};
use crate::embed::{SentenceEncoder, TextTokenizer};
use crate::error::{Error, ErrorKind};
use crate::metrics::Metrics;

/// Why a swap or rollback was refused; each maps to one error kind.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The request or the artifact is malformed (bad path, corrupt file, wrong shapes).
    #[error("{0}")]
    Invalid(String),
    /// A valid artifact that may not go live now (other encoder, labels, gate, CAS).
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
    /// The fleet's shared store or artifact store cannot be reached: nothing changed.
    #[error("{0}")]
    Unavailable(String),
}

impl SwapError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Rejected(_) => "rejected",
            Self::TooLarge(_) => "too_large",
            Self::NotFound(_) => "not_found",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl From<SwapError> for Error {
    fn from(e: SwapError) -> Self {
        let kind = match &e {
            SwapError::Invalid(_) => ErrorKind::InvalidArgument,
            SwapError::Rejected(_) => ErrorKind::FailedPrecondition,
            SwapError::TooLarge(_) => ErrorKind::ResourceExhausted,
            SwapError::NotFound(_) => ErrorKind::NotFound,
            SwapError::Internal(_) => ErrorKind::Internal,
            SwapError::Unavailable(_) => ErrorKind::Unavailable,
        };
        Error::new(kind, e.to_string())
    }
}

/// Where a candidate comes from.
pub enum Source {
    Path(PathBuf),
    Inline(Vec<u8>),
}

#[derive(Debug, Clone, Default)]
pub struct SwapOptions {
    pub expected_version: String,
    pub dry_run: bool,
    pub force: bool,
    /// Skip the evaluation gate (not the other checks): a fleet's followers apply what the
    /// committing replica already gated.
    pub skip_gate: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SwapReport {
    pub swapped: bool,
    pub previous: String,
    pub version: String,
    pub messages: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// What the registry works with: the live model it swaps, the catalog candidates must cover,
/// the tokenizer every encoder must share, and where swap outcomes are counted.
pub struct RegistryDeps {
    pub live: Arc<Live>,
    /// The catalog in force (a reload swaps it).
    pub config: Arc<arc_swap::ArcSwap<Config>>,
    pub tokenizer: TextTokenizer,
    pub metrics: Arc<Metrics>,
}

pub struct Registry {
    deps: RegistryDeps,
    cfg: AdminConfig,
    /// Versions that were live before the current one, oldest first, for rollback.
    older: Mutex<Vec<Arc<LiveModel>>>,
    gate: Arc<GateSet>,
    gate_features: tokio::sync::Mutex<HashMap<String, GateFeatures>>,
    /// Gate metrics by (classifier version, encoder sha): a version is a content hash, so its
    /// score never changes; the live one is scored once, not at every swap.
    scores: Mutex<HashMap<(String, String), BTreeMap<String, f64>>>,
    swap_lock: tokio::sync::Mutex<()>,
}

fn blocking_err(e: tokio::task::JoinError) -> SwapError {
    SwapError::Internal(e.to_string())
}

impl Registry {
    pub fn new(deps: RegistryDeps, cfg: AdminConfig) -> Result<Self, gate::GateError> {
        let gate = Arc::new(GateSet::load(&cfg.gate_set)?);
        Ok(Self {
            deps,
            cfg,
            older: Mutex::new(Vec::new()),
            gate,
            gate_features: tokio::sync::Mutex::new(HashMap::new()),
            scores: Mutex::new(HashMap::new()),
            swap_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn older_lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<LiveModel>>> {
        self.older.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live model.
    pub fn live(&self) -> Arc<LiveModel> {
        self.deps.live.snapshot()
    }

    /// The live version and the others kept (newest last).
    pub fn versions(&self) -> (Arc<LiveModel>, Vec<Arc<LiveModel>>) {
        let older = self.older_lock().clone();
        (self.live(), older)
    }

    /// Counts and logs one swap attempt (`op`: swap, rollback, watch, retrain) and its outcome.
    pub fn observe(&self, op: &str, r: &Result<SwapReport, SwapError>) {
        let (result, reason) = match r {
            Ok(rep) if rep.swapped => ("accepted", "ok"),
            Ok(_) => ("dry_run", "ok"),
            Err(e) => ("rejected", e.reason()),
        };
        self.deps
            .metrics
            .classifier_swaps
            .with_label_values(&[op, result, reason])
            .inc();
        match r {
            Ok(rep) => {
                tracing::info!(op, result, version = %rep.version, previous = %rep.previous, messages = ?rep.messages, "classifier swap")
            }
            Err(e) => tracing::warn!(op, result, error = %e, "classifier swap refused"),
        }
    }

    /// Gate-set features for an encoder, computed once per encoder (off the runtime).
    async fn features(&self, enc: &Arc<SentenceEncoder>) -> Result<GateFeatures, SwapError> {
        let mut cache = self.gate_features.lock().await;
        let key = enc.info().weights_sha256.clone();
        if let Some(f) = cache.get(&key) {
            return Ok(f.clone());
        }
        let (enc, tok) = (enc.clone(), self.deps.tokenizer.clone());
        let gate = self.gate.clone();
        let f = tokio::task::spawn_blocking(move || gate.embed(&enc, &tok))
            .await
            .map_err(blocking_err)?
            .map_err(|e| SwapError::Internal(e.to_string()))?;
        let f = Arc::new(f);
        cache.insert(key, f.clone());
        Ok(f)
    }

    /// Gate metrics of a classifier with the encoder it runs on.
    pub async fn score(
        &self,
        c: &Classifier,
        enc: &Arc<SentenceEncoder>,
    ) -> Result<BTreeMap<String, f64>, SwapError> {
        let key = (c.version().to_string(), enc.info().weights_sha256.clone());
        if let Some(m) = self
            .scores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(m.clone());
        }
        let f = self.features(enc).await?;
        let m = self
            .gate
            .score(c, &f)
            .map_err(|e| SwapError::Rejected(e.to_string()))?;
        self.scores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, m.clone());
        Ok(m)
    }

    /// Loads a candidate without touching the live service.
    async fn load(
        &self,
        src: Source,
    ) -> Result<(Arc<Classifier>, Arc<SentenceEncoder>, String), SwapError> {
        let live_enc = self.live().encoder.clone();
        match src {
            Source::Inline(bytes) => {
                if bytes.len() > self.cfg.max_inline_bytes {
                    return Err(SwapError::TooLarge(format!(
                        "inline_heads: {} bytes, over the limit of {} (admin.max_inline_bytes)",
                        bytes.len(),
                        self.cfg.max_inline_bytes
                    )));
                }
                let c = inline_classifier(&bytes)?;
                check_encoder(&c.meta, &live_enc, "inline_heads")?;
                Ok((Arc::new(c), live_enc, "inline".into()))
            }
            Source::Path(dir) => {
                if !dir.join(META_FILE).is_file() {
                    return Err(SwapError::Invalid(format!(
                        "path: {} has no {META_FILE}",
                        dir.display()
                    )));
                }
                if let Some(k) = self.kept_copy(&dir) {
                    return Ok(k);
                }
                let enc = match crate::classify::own_encoder(&dir) {
                    Some(enc_dir) => self.load_encoder(&enc_dir, &live_enc).await?,
                    None => live_enc,
                };
                let (d, e) = (dir.clone(), enc.clone());
                let c = tokio::task::spawn_blocking(move || Classifier::load(&d, e.info()))
                    .await
                    .map_err(blocking_err)?
                    .map_err(|e| match e {
                        crate::classify::ClassifyError::EncoderMismatch(m) => {
                            SwapError::Rejected(m)
                        }
                        other => SwapError::Invalid(format!("path: {other}")),
                    })?;
                Ok((Arc::new(c), enc, dir.display().to_string()))
            }
        }
    }

    /// A version still held in memory whose classifier.json matches `dir`'s (same content
    /// version and encoder identity): re-promoting it needs no reload from disk.
    fn kept_copy(&self, dir: &Path) -> Option<(Arc<Classifier>, Arc<SentenceEncoder>, String)> {
        let text = std::fs::read_to_string(dir.join(META_FILE)).ok()?;
        let meta: ClassifierMeta = serde_json::from_str(&text).ok()?;
        let (live, older) = self.versions();
        // Heads only (no encoder/ folder) pair with the live encoder, as a fresh load would.
        let full = crate::classify::own_encoder(dir).is_some();
        let live_sha = live.encoder.info().weights_sha256.clone();
        let k = std::iter::once(&live).chain(&older).find(|k| {
            let sha = &k.encoder.info().weights_sha256;
            k.version() == meta.version && *sha == meta.encoder.sha256 && (full || *sha == live_sha)
        })?;
        Some((
            k.classifier.clone(),
            k.encoder.clone(),
            dir.display().to_string(),
        ))
    }

    /// A full model's encoder, loaded off to the side; it must keep the live tokenizer.
    async fn load_encoder(
        &self,
        dir: &Path,
        live: &Arc<SentenceEncoder>,
    ) -> Result<Arc<SentenceEncoder>, SwapError> {
        let tok = dir.join("tokenizer.json");
        if tok.is_file() {
            let same = std::fs::read(&tok).ok()
                == std::fs::read(live.info().dir.join("tokenizer.json")).ok();
            if !same {
                return Err(SwapError::Rejected(format!(
                    "path: {} differs from the live tokenizer; a full-model swap must keep it",
                    tok.display()
                )));
            }
        }
        let (d, device) = (dir.to_path_buf(), live.device().clone());
        let enc = tokio::task::spawn_blocking(move || SentenceEncoder::load(&d, &device))
            .await
            .map_err(blocking_err)?
            .map_err(|e| SwapError::Invalid(format!("path: encoder: {e}")))?;
        if enc.info().dim != live.info().dim {
            return Err(SwapError::Rejected(format!(
                "path: encoder dimension {} differs from the live {}",
                enc.info().dim,
                live.info().dim
            )));
        }
        Ok(Arc::new(enc))
    }

    /// The candidate's labels cover every intent and domain the catalog names.
    fn check_labels(&self, c: &Classifier) -> Result<(), SwapError> {
        self.deps
            .config
            .load()
            .validate(&c.meta.intent_labels, &c.meta.domain_labels)
            .map_err(|e| SwapError::Rejected(format!("labels do not cover the catalog: {e}")))
    }

    /// Validates, gates and probes `candidate`; returns its gate metrics and messages.
    async fn validate(
        &self,
        c: &Classifier,
        enc: &Arc<SentenceEncoder>,
        force: bool,
    ) -> Result<(BTreeMap<String, f64>, Vec<String>), SwapError> {
        self.check_labels(c)?;
        let live = self.live();
        let live_metrics = self.score(&live.classifier, &live.encoder).await?;
        let metrics = self.score(c, enc).await?;
        let short = gate::shortfalls(&live_metrics, &metrics, self.cfg.gate_margin);
        let mut messages = vec![format!(
            "gate: intent accuracy {:.4} (live {:.4}), domain accuracy {:.4} (live {:.4}) on {} rows",
            metrics["gate_intent_accuracy"],
            live_metrics["gate_intent_accuracy"],
            metrics["gate_domain_accuracy"],
            live_metrics["gate_domain_accuracy"],
            metrics["gate_rows"]
        )];
        if !short.is_empty() {
            if !force {
                return Err(SwapError::Rejected(format!(
                    "evaluation gate failed: {}",
                    short.join("; ")
                )));
            }
            messages.push(format!("gate failed but forced: {}", short.join("; ")));
        }
        Ok((metrics, messages))
    }

    /// The whole swap: CAS check, load, validate, probe, swap, keep.
    pub async fn swap(&self, src: Source, opt: SwapOptions) -> Result<SwapReport, SwapError> {
        let _one = self.swap_lock.lock().await;
        let previous = self.live().version().to_string();
        if !opt.expected_version.is_empty() && opt.expected_version != previous {
            return Err(SwapError::Rejected(format!(
                "expected_version: {:?} is not live (live is {previous:?})",
                opt.expected_version
            )));
        }
        let (c, enc, source) = self.load(src).await?;
        let (metrics, mut messages) = if opt.skip_gate {
            self.check_labels(&c)?;
            (
                BTreeMap::new(),
                vec!["gate: run by the replica that committed it".into()],
            )
        } else {
            self.validate(&c, &enc, opt.force).await?
        };
        let version = c.version().to_string();
        if opt.dry_run {
            messages.push("dry run: validated, not swapped".into());
            return Ok(SwapReport {
                swapped: false,
                previous: previous.clone(),
                version,
                messages,
                metrics,
            });
        }
        self.go_live(Arc::new(LiveModel::new(c, enc, source)));
        messages.push(format!("live: {previous} → {version}"));
        Ok(SwapReport {
            swapped: true,
            previous,
            version,
            messages,
            metrics,
        })
    }

    /// Makes `m` live in one store and keeps the previous version for rollback.
    fn go_live(&self, m: Arc<LiveModel>) {
        let mut older = self.older_lock();
        let previous = self.live();
        self.deps.live.replace(m.clone());
        older.push(previous);
        older.retain(|x| x.version() != m.version());
        let excess = older
            .len()
            .saturating_sub(self.cfg.kept_versions.max(2) - 1);
        older.drain(..excess);
    }

    /// Back to `version`, or to the version live before the current one.
    pub async fn rollback(&self, version: &str) -> Result<SwapReport, SwapError> {
        let _one = self.swap_lock.lock().await;
        let (live, older) = self.versions();
        let target = if version.is_empty() {
            older
                .last()
                .cloned()
                .ok_or_else(|| SwapError::NotFound("version: no earlier version is kept".into()))?
        } else {
            older
                .iter()
                .find(|k| k.version() == version)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = older.iter().map(|k| k.version()).collect();
                    SwapError::NotFound(format!(
                        "version: {version:?} is not kept (kept: {known:?}, live: {})",
                        live.version()
                    ))
                })?
        };
        let version = target.version().to_string();
        self.go_live(target);
        Ok(SwapReport {
            swapped: true,
            previous: live.version().to_string(),
            version: version.clone(),
            messages: vec![format!("rolled back: {} → {version}", live.version())],
            metrics: BTreeMap::new(),
        })
    }
}

fn check_encoder(
    meta: &ClassifierMeta,
    enc: &SentenceEncoder,
    field: &str,
) -> Result<(), SwapError> {
    let info = enc.info();
    if meta.encoder.sha256 != info.weights_sha256 {
        return Err(SwapError::Rejected(format!(
            "{field}: trained for encoder {} (sha256 {}), but the live encoder is {} (sha256 {})",
            meta.encoder.name, meta.encoder.sha256, info.name, info.weights_sha256
        )));
    }
    Ok(())
}

/// The classifier an inline artifact carries (its encoder is checked by the caller).
pub fn inline_classifier(bytes: &[u8]) -> Result<Classifier, SwapError> {
    let meta = inline_meta(bytes)?;
    Classifier::from_parts(meta, bytes, Path::new("<inline>"))
        .map_err(|e| SwapError::Invalid(format!("inline_heads: {e}")))
}

/// The classifier.json carried in an inline artifact's safetensors metadata.
fn inline_meta(bytes: &[u8]) -> Result<ClassifierMeta, SwapError> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| SwapError::Invalid(format!("inline_heads: not a safetensors file: {e}")))?;
    let text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_FILE))
        .ok_or_else(|| {
            SwapError::Invalid(format!(
                "inline_heads: no {META_FILE} in the safetensors metadata (pack it with `switchboard classifier swap --inline`)"
            ))
        })?;
    serde_json::from_str(text)
        .map_err(|e| SwapError::Invalid(format!("inline_heads: {META_FILE}: {e}")))
}
