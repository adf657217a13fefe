//! Classifier versions: load a candidate off to the side, validate it (encoder identity,
//! labels the catalog uses, shapes and finiteness, the evaluation gate, a probe), then swap
//! it in atomically; keep recent versions for rollback. One swap at a time.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::gate::{self, GateFeatures, GateSet};
use crate::classify::{Classifier, ClassifierMeta, META_FILE};
use crate::config::AdminConfig;
use crate::embed::model::SentenceEncoder;
use crate::engine::Engine;

/// Why a swap or rollback was refused; each maps to one gRPC status.
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
}

impl SwapError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Rejected(_) => "rejected",
            Self::TooLarge(_) => "too_large",
            Self::NotFound(_) => "not_found",
            Self::Internal(_) => "internal",
        }
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
}

#[derive(Debug, Clone, Default)]
pub struct SwapReport {
    pub swapped: bool,
    pub previous: String,
    pub version: String,
    pub messages: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// A version that has been live, kept for rollback.
#[derive(Clone)]
pub struct Kept {
    pub version: String,
    pub source: String,
    pub loaded_at: String,
    pub classifier: Arc<Classifier>,
    pub encoder: Arc<SentenceEncoder>,
}

pub struct Registry {
    pub engine: Arc<Engine>,
    cfg: AdminConfig,
    /// The live version, and the older ones kept (oldest first).
    kept: Mutex<(Kept, Vec<Kept>)>,
    gate: Arc<GateSet>,
    gate_features: tokio::sync::Mutex<HashMap<String, GateFeatures>>,
    /// Gate metrics by (classifier version, encoder sha): a version is a content hash, so its
    /// score never changes; the live one is scored once, not at every swap.
    scores: Mutex<HashMap<(String, String), BTreeMap<String, f64>>>,
    swap_lock: tokio::sync::Mutex<()>,
}

/// RFC 3339 (UTC, seconds) for a unix time in ms.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn blocking_err(e: tokio::task::JoinError) -> SwapError {
    SwapError::Internal(e.to_string())
}

impl Registry {
    pub fn new(
        engine: Arc<Engine>,
        cfg: AdminConfig,
        source: &Path,
    ) -> Result<Self, gate::GateError> {
        let gate = Arc::new(GateSet::load(&cfg.gate_set)?);
        let live = Kept {
            version: engine.classifier.load().version().to_string(),
            source: source.display().to_string(),
            loaded_at: rfc3339(super::logs::now_ms()),
            classifier: engine.classifier.load_full(),
            encoder: engine.embedder.model(),
        };
        Ok(Self {
            engine,
            cfg,
            kept: Mutex::new((live, Vec::new())),
            gate,
            gate_features: tokio::sync::Mutex::new(HashMap::new()),
            scores: Mutex::new(HashMap::new()),
            swap_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn kept_lock(&self) -> std::sync::MutexGuard<'_, (Kept, Vec<Kept>)> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live version and the others kept (newest last).
    pub fn versions(&self) -> (Kept, Vec<Kept>) {
        self.kept_lock().clone()
    }

    /// Gate-set features for an encoder, computed once per encoder (off the runtime).
    async fn features(&self, enc: &Arc<SentenceEncoder>) -> Result<GateFeatures, SwapError> {
        let mut cache = self.gate_features.lock().await;
        let key = enc.info().weights_sha256.clone();
        if let Some(f) = cache.get(&key) {
            return Ok(f.clone());
        }
        let (enc, tok) = (enc.clone(), self.engine.embedder.tokenizer().clone());
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
        let live_enc = self.engine.embedder.model();
        match src {
            Source::Inline(bytes) => {
                if bytes.len() > self.cfg.max_inline_bytes {
                    return Err(SwapError::TooLarge(format!(
                        "inline_heads: {} bytes, over the limit of {} (admin.max_inline_bytes)",
                        bytes.len(),
                        self.cfg.max_inline_bytes
                    )));
                }
                let meta = inline_meta(&bytes)?;
                check_encoder(&meta, &live_enc, "inline_heads")?;
                let c = Classifier::from_parts(meta, &bytes, Path::new("<inline>"))
                    .map_err(|e| SwapError::Invalid(format!("inline_heads: {e}")))?;
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
            k.version == meta.version && *sha == meta.encoder.sha256 && (full || *sha == live_sha)
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

    /// Validates, gates and probes `candidate`; returns its gate metrics and messages.
    async fn validate(
        &self,
        c: &Classifier,
        enc: &Arc<SentenceEncoder>,
        force: bool,
    ) -> Result<(BTreeMap<String, f64>, Vec<String>), SwapError> {
        self.engine
            .config
            .validate(&c.meta.intent_labels, &c.meta.domain_labels)
            .map_err(|e| SwapError::Rejected(format!("labels do not cover the catalog: {e}")))?;
        let live = self.versions().0;
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
        let previous = self.versions().0.version;
        if !opt.expected_version.is_empty() && opt.expected_version != previous {
            return Err(SwapError::Rejected(format!(
                "expected_version: {:?} is not live (live is {previous:?})",
                opt.expected_version
            )));
        }
        let (c, enc, source) = self.load(src).await?;
        let (metrics, mut messages) = self.validate(&c, &enc, opt.force).await?;
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
        self.go_live(Kept {
            version: version.clone(),
            source,
            loaded_at: rfc3339(super::logs::now_ms()),
            classifier: c,
            encoder: enc,
        });
        messages.push(format!("live: {previous} → {version}"));
        Ok(SwapReport {
            swapped: true,
            previous,
            version,
            messages,
            metrics,
        })
    }

    /// Makes `k` live (encoder first when it differs; the engine re-embeds a request that
    /// straddles the two stores) and records it as the newest kept version.
    fn go_live(&self, k: Kept) {
        let live_enc = self.engine.embedder.model();
        if live_enc.info().weights_sha256 != k.encoder.info().weights_sha256 {
            self.engine.embedder.swap_model(k.encoder.clone());
        }
        self.engine.classifier.store(k.classifier.clone());
        let mut g = self.kept_lock();
        let (live, older) = &mut *g;
        let old = std::mem::replace(live, k);
        older.push(old);
        older.retain(|x| x.version != live.version);
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
                .find(|k| k.version == version)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = older.iter().map(|k| k.version.as_str()).collect();
                    SwapError::NotFound(format!(
                        "version: {version:?} is not kept (kept: {known:?}, live: {})",
                        live.version
                    ))
                })?
        };
        let version = target.version.clone();
        self.go_live(target);
        Ok(SwapReport {
            swapped: true,
            previous: live.version.clone(),
            version: version.clone(),
            messages: vec![format!("rolled back: {} → {version}", live.version)],
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

/// Packs a head folder into one inline artifact (heads with classifier.json as metadata).
pub fn pack_inline(dir: &Path) -> Result<Vec<u8>, SwapError> {
    let read = |p: PathBuf| {
        std::fs::read(&p).map_err(|e| SwapError::Invalid(format!("{}: {e}", p.display())))
    };
    let meta = String::from_utf8(read(dir.join(META_FILE))?)
        .map_err(|e| SwapError::Invalid(format!("{META_FILE}: {e}")))?;
    let wpath = dir.join(crate::classify::WEIGHTS_FILE);
    let weights = read(wpath.clone())?;
    let tensors = safetensors::SafeTensors::deserialize(&weights)
        .map_err(|e| SwapError::Invalid(format!("{}: {e}", wpath.display())))?;
    let info = HashMap::from([(META_FILE.to_string(), meta)]);
    safetensors::tensor::serialize(tensors.tensors(), Some(info))
        .map_err(|e| SwapError::Internal(e.to_string()))
}
