//! The decision log: every routing decision (id, classification, and the embedding the heads
//! saw, so heads can be retrained without user text), written by one background thread. The
//! request path only hands over a formatted line; it never waits on the disk.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use base64::Engine as _;
use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::now_ms;
use super::usage::UsageRecord;
use crate::classify::Features;

/// One line of the decision log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub id: String,
    pub ts_ms: u64,
    pub classifier_version: String,
    /// The catalog the ranking used.
    #[serde(default)]
    pub catalog_version: String,
    /// sha256 of the encoder that produced `embedding`.
    #[serde(default)]
    pub encoder: String,
    pub intent: String,
    pub domain: String,
    /// The prompt's language (ISO 639-3; empty when it could not be told).
    #[serde(default)]
    pub language: String,
    pub complexity: f32,
    pub confidence: f32,
    /// Why the classifier abstained ("low_confidence", "untrained_language"); empty if it did not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub abstain_reason: String,
    /// Tokens the encoder saw (the heads' length feature).
    pub tokens: u32,
    /// The embedding, f32 little-endian, base64.
    pub embedding: String,
    pub top_backend: String,
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl DecisionRecord {
    /// `embedding` encoded as the log stores it (f32 little-endian, base64).
    pub fn encode_embedding(embedding: &[f32]) -> String {
        let mut bytes = Vec::with_capacity(embedding.len() * 4);
        for v in embedding {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    }

    /// The classifier input this record carries, when its embedding decodes.
    pub fn features(&self) -> Option<Features> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.embedding)
            .ok()?;
        let embedding = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(Features {
            embedding,
            tokens: self.tokens,
        })
    }
}

enum Msg {
    Line(String),
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Where a fleet's records also go (the shared store's writer). Must not block.
pub trait Sink: Send + Sync {
    fn decision(&self, r: &DecisionRecord);
    fn usage(&self, r: &UsageRecord);
}

/// Settings of the decision log.
#[derive(Debug, Clone)]
pub struct DecisionLogConfig {
    pub dir: PathBuf,
    pub file_bytes: u64,
    pub files: usize,
    pub log_prompts: bool,
}

/// Append-only, rotated JSONL written by one background thread; the request path only
/// formats a line and hands it over (dropped and counted when the writer falls behind).
pub struct DecisionLog {
    tx: mpsc::SyncSender<Msg>,
    known: Mutex<LruCache<String, ()>>,
    /// Lines dropped because the writer fell behind (exported as a metric).
    pub dropped: AtomicU64,
    log_prompts: bool,
    dir: PathBuf,
    /// In a fleet, every record is also handed to this (the shared store's writer).
    shared: std::sync::OnceLock<Box<dyn Sink>>,
}

/// Decision ids remembered for RecordFeedback's check.
const KNOWN_IDS: usize = 200_000;

/// Every decision record in `dir`, oldest first; unreadable lines are skipped.
pub fn read_decisions(dir: &Path) -> std::io::Result<Vec<DecisionRecord>> {
    let mut out = Vec::new();
    for f in super::log_files(dir)? {
        for line in BufReader::new(File::open(&f)?).lines() {
            if let Ok(r) = serde_json::from_str::<DecisionRecord>(&line?) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

struct Writer {
    cfg: DecisionLogConfig,
    out: Option<(BufWriter<File>, u64)>,
    seq: u64,
}

impl Writer {
    fn open_next(&mut self) -> std::io::Result<()> {
        self.seq += 1;
        let path = self
            .cfg
            .dir
            .join(format!("decisions-{:010}.jsonl", self.seq));
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        self.out = Some((BufWriter::new(f), 0));
        let all = super::log_files(&self.cfg.dir)?;
        for old in all
            .iter()
            .take(all.len().saturating_sub(self.cfg.files.max(1)))
        {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        let full = self
            .out
            .as_ref()
            .is_none_or(|(_, n)| *n >= self.cfg.file_bytes);
        if full {
            if let Some((mut w, _)) = self.out.take() {
                w.flush()?;
            }
            self.open_next()?;
        }
        if let Some((w, n)) = self.out.as_mut() {
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
            *n += line.len() as u64 + 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some((w, _)) => w.flush(),
            None => Ok(()),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            let mut next = Some(msg);
            // Write the whole burst, then flush once.
            while let Some(m) = next.take() {
                let r = match m {
                    Msg::Line(l) => self.write(&l),
                    Msg::Flush(done) => {
                        let r = self.flush();
                        let _ = done.send(());
                        r
                    }
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, dir = %self.cfg.dir.display(), "decision log write failed");
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "decision log flush failed");
            }
        }
    }
}

impl DecisionLog {
    /// Opens (creating) the directory, remembers the ids already logged, starts the writer.
    pub fn open(cfg: DecisionLogConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)?;
        let cap = NonZeroUsize::new(KNOWN_IDS).unwrap_or(NonZeroUsize::MIN);
        let mut known = LruCache::new(cap);
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        for f in super::log_files(&cfg.dir)? {
            for line in BufReader::new(File::open(&f)?).lines() {
                if let Ok(r) = serde_json::from_str::<Id>(&line?) {
                    known.put(r.id, ());
                }
            }
        }
        let seq = super::log_files(&cfg.dir)?
            .last()
            .and_then(|p| {
                p.file_stem()?
                    .to_str()?
                    .strip_prefix("decisions-")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let (tx, rx) = mpsc::sync_channel(16_384);
        let (log_prompts, dir) = (cfg.log_prompts, cfg.dir.clone());
        let writer = Writer {
            cfg,
            out: None,
            seq,
        };
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx,
            known: Mutex::new(known),
            dropped: AtomicU64::new(0),
            log_prompts,
            dir,
            shared: std::sync::OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Logs one routing decision (the prompt only with `admin.log_prompts`); never blocks.
    pub fn record(&self, mut r: DecisionRecord, prompt: &str) {
        r.prompt = self.log_prompts.then(|| prompt.to_string());
        if let Some(sink) = self.shared.get() {
            sink.decision(&r);
        }
        let Ok(line) = serde_json::to_string(&r) else {
            return;
        };
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(r.id, ());
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Also hands every record to `sink` (the fleet's shared store; set once, at start).
    /// It must not block.
    pub fn share(&self, sink: Box<dyn Sink>) {
        let _ = self.shared.set(sink);
    }

    /// Logs which backend served a completion (`ok` false: it failed), so outcome feedback
    /// names the backend used; also makes a pinned completion's id known. Never blocks.
    pub fn served(&self, id: &str, backend: &str, ok: bool) {
        let line = serde_json::json!({"kind": "served", "id": id, "ts_ms": now_ms(), "backend": backend, "ok": ok});
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(id.to_string(), ());
        if self.tx.try_send(Msg::Line(line.to_string())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Logs a served completion's usage (and its counterfactual costs), for the savings
    /// report; never blocks.
    pub fn usage(&self, r: &UsageRecord) {
        if let Some(sink) = self.shared.get() {
            sink.usage(r);
        }
        let Ok(line) = serde_json::to_string(r) else {
            return;
        };
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `id` was logged (within the remembered window).
    pub fn knows(&self, id: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Waits until every line handed over so far is written (blocking; call off the runtime).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}
