//! Prompt → embedding. Owns the tokenizer, the candle encoder, its worker threads and the
//! batching queue. Async callers get `Embedder`; the model itself never runs on the runtime.
pub mod bert;
pub mod kernels;
pub mod model;
pub mod queue;
pub mod tokenize;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind};
pub use model::{EncoderInfo, SentenceEncoder};
pub use queue::BatchLimits;
pub use tokenize::{Encoded, TextTokenizer, Truncation};

/// Errors of the embedding layer. Messages name the limit or input that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("text is empty")]
    EmptyInput,
    #[error("text is {bytes} bytes, over the limit of {limit} bytes (encoder.max_input_bytes)")]
    InputTooLong { bytes: usize, limit: usize },
    #[error("encoder queue is full ({capacity} waiting, encoder.queue_capacity); retry later")]
    Overloaded { capacity: usize },
    #[error("encoder is shutting down")]
    Shutdown,
    #[error("the encoder worker failed while embedding this text; retry")]
    WorkerLost,
    #[error("no embedding within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the encoder is unavailable: its worker kept failing and was not restarted")]
    Unavailable,
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    #[error("encoder forward failed: {0}")]
    Model(String),
    #[error("cannot load encoder: {0}")]
    Load(String),
}

impl From<EmbedError> for Error {
    fn from(e: EmbedError) -> Self {
        let kind = match &e {
            EmbedError::EmptyInput => ErrorKind::InvalidArgument,
            EmbedError::InputTooLong { .. } => ErrorKind::TooLarge,
            EmbedError::Overloaded { .. } => ErrorKind::Overloaded,
            EmbedError::Shutdown
            | EmbedError::WorkerLost
            | EmbedError::Unavailable
            | EmbedError::Timeout(_) => ErrorKind::Unavailable,
            EmbedError::Tokenize(_) | EmbedError::Model(_) | EmbedError::Load(_) => {
                ErrorKind::Internal
            }
        };
        let out = Error::new(kind, e.to_string());
        match e {
            EmbedError::Overloaded { .. } => out.reason("overloaded"),
            EmbedError::Shutdown => out.reason("shutting_down"),
            EmbedError::WorkerLost | EmbedError::Unavailable => out.reason("encoder_unavailable"),
            _ => out,
        }
    }
}

/// Encoder settings (the `[encoder]` table of the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// Folder with config.json, tokenizer.json, model.safetensors.
    pub model_dir: PathBuf,
    /// Token budget per prompt, special tokens included (≤ the model's positions).
    pub max_tokens: usize,
    pub truncation: Truncation,
    /// Inputs longer than this are refused before tokenization.
    pub max_input_bytes: usize,
    pub max_batch_items: usize,
    /// Bound on items × longest sequence per batch.
    pub max_batch_tokens: usize,
    /// Queue bound; callers beyond it get `Overloaded` at once.
    pub queue_capacity: usize,
    /// Number of worker threads, each running whole forwards. One worker whose forward uses
    /// every core measured faster here than one single-threaded worker per core (BENCHMARKS.md).
    pub workers: usize,
    /// Use the GPU when built with `cuda` and one is present.
    pub use_gpu: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            model_dir: crate::assets::bundled(crate::assets::ENCODER),
            max_tokens: 128,
            truncation: Truncation::HeadTail,
            max_input_bytes: 64 * 1024,
            max_batch_items: 32,
            max_batch_tokens: 4096,
            queue_capacity: 1024,
            workers: 1,
            use_gpu: false,
        }
    }
}

/// One embedded prompt with its timings.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vector: Vec<f32>,
    /// Tokens the model saw (after truncation).
    pub tokens: usize,
    /// Tokens of the whole text, before truncation.
    pub original_tokens: usize,
    pub queue_us: u64,
    pub embed_us: u64,
    pub batch_size: usize,
    /// sha256 of the encoder weights that produced `vector` (the model can be swapped live).
    pub encoder: Arc<str>,
}

struct Inner {
    shared: Arc<worker::Shared>,
    tokenizer: TextTokenizer,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.ready.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

type Reply = oneshot::Receiver<Result<Embedded, EmbedError>>;

/// Longest wait for one embedding; a CPU batch takes milliseconds, so this only trips on a
/// worker that hangs.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Cheap-to-clone handle to the encoder service: the shared queue and workers, bound to one
/// model. Each job carries its handle's model, so handles bound to different models (a live
/// swap, a retrain on the live encoder) share the workers without mixing vectors.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
    model: Arc<SentenceEncoder>,
}

impl Embedder {
    /// Loads the model and tokenizer and starts the workers.
    pub fn start(cfg: &EncoderConfig) -> Result<Self, EmbedError> {
        let device = bert::select_device(cfg.use_gpu);
        let model = SentenceEncoder::load(&cfg.model_dir, &device)?;
        let max_tokens = cfg.max_tokens.min(model.max_positions());
        let tokenizer = TextTokenizer::load(
            &cfg.model_dir.join("tokenizer.json"),
            max_tokens,
            cfg.truncation,
            cfg.max_input_bytes,
        )?;
        let shared = Arc::new(worker::Shared {
            queue: Mutex::new(queue::BatchQueue::new(cfg.queue_capacity)),
            ready: Condvar::new(),
            shutdown: AtomicBool::new(false),
            limits: BatchLimits {
                max_items: cfg.max_batch_items.max(1),
                max_tokens: cfg.max_batch_tokens.max(max_tokens),
            },
            restarts: Default::default(),
            broken: AtomicBool::new(false),
            inject_panics: Default::default(),
        });
        let mut threads = Vec::new();
        for i in 0..cfg.workers.max(1) {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("encoder-supervisor-{i}"))
                .spawn(move || worker::supervise(s, i))
                .map_err(|e| EmbedError::Load(format!("cannot spawn encoder thread: {e}")))?;
            threads.push(t);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tokenizer,
                threads: Mutex::new(threads),
            }),
            model: Arc::new(model),
        })
    }

    /// A handle on the same queue and workers that embeds with `model` (same tokenizer; the
    /// caller checks that).
    pub fn with_model(&self, model: Arc<SentenceEncoder>) -> Self {
        Self {
            inner: self.inner.clone(),
            model,
        }
    }

    pub fn info(&self) -> EncoderInfo {
        self.model.info().clone()
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.inner.tokenizer
    }

    /// Entries waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.inner.shared.lock().len()
    }

    /// False once a worker failed too often to be restarted (readiness reports it).
    pub fn is_healthy(&self) -> bool {
        !self.inner.shared.broken.load(Ordering::Acquire)
    }

    /// Worker restarts after panics so far.
    pub fn restarts(&self) -> u64 {
        self.inner.shared.restarts.load(Ordering::Relaxed)
    }

    /// Test hook: the next `n` batches panic inside the worker, as a bug in a forward would.
    #[doc(hidden)]
    pub fn inject_worker_panics(&self, n: usize) {
        self.inner.shared.inject_panics.store(n, Ordering::Relaxed);
    }

    /// The model this handle embeds with.
    pub fn model(&self) -> Arc<SentenceEncoder> {
        self.model.clone()
    }

    /// Embeds one text through the queue.
    pub async fn embed(&self, text: &str) -> Result<Embedded, EmbedError> {
        self.embed_with(&self.model, text).await
    }

    /// Embeds one text with `model` (a snapshot of the live model) instead of this handle's.
    pub async fn embed_with(
        &self,
        model: &Arc<SentenceEncoder>,
        text: &str,
    ) -> Result<Embedded, EmbedError> {
        let encoded = self.inner.tokenizer.encode(text)?;
        let original = encoded.original_tokens;
        let rx = self.submit_to(model, encoded.ids)?;
        let mut e = self.wait(rx).await?;
        e.original_tokens = original;
        Ok(e)
    }

    /// Embeds already-tokenized ids (with special tokens, within the token budget).
    pub async fn embed_encoded(&self, ids: Vec<u32>) -> Result<Embedded, EmbedError> {
        let rx = self.submit(ids)?;
        self.wait(rx).await
    }

    /// Embeds many texts, keeping at most half the queue's capacity in flight so a bulk job
    /// (training) never starves online callers into `Overloaded`.
    pub async fn embed_many(&self, texts: &[String]) -> Result<Vec<Embedded>, EmbedError> {
        let window = (self.inner.shared.lock().capacity() / 2).max(1);
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(window) {
            let mut pending = Vec::with_capacity(chunk.len());
            for t in chunk {
                let enc = self.inner.tokenizer.encode(t)?;
                pending.push(self.submit(enc.ids)?);
            }
            for rx in pending {
                out.push(self.wait(rx).await?);
            }
        }
        Ok(out)
    }

    /// A job's reply, bounded: a forward that hangs must not hang its callers.
    async fn wait(&self, rx: Reply) -> Result<Embedded, EmbedError> {
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => Err(EmbedError::Timeout(REPLY_TIMEOUT)),
        }
    }

    /// Why a reply never came: the worker died with the job, or the encoder is stopping.
    fn lost(&self) -> EmbedError {
        if self.inner.shared.shutdown.load(Ordering::Acquire) {
            EmbedError::Shutdown
        } else {
            EmbedError::WorkerLost
        }
    }

    fn submit(&self, ids: Vec<u32>) -> Result<Reply, EmbedError> {
        self.submit_to(&self.model, ids)
    }

    fn submit_to(&self, model: &Arc<SentenceEncoder>, ids: Vec<u32>) -> Result<Reply, EmbedError> {
        let shared = &self.inner.shared;
        if shared.shutdown.load(Ordering::Acquire) {
            return Err(EmbedError::Shutdown);
        }
        let (tx, rx) = oneshot::channel();
        let job = worker::Job {
            ids,
            model: model.clone(),
            reply: tx,
            span: tracing::Span::current(),
            enqueued: Instant::now(),
        };
        {
            let mut q = shared.lock();
            // Checked under the lock the supervisor drains under: no job is left behind.
            if shared.broken.load(Ordering::Acquire) {
                return Err(EmbedError::Unavailable);
            }
            q.push(job).map_err(|full| EmbedError::Overloaded {
                capacity: full.capacity,
            })?;
        }
        shared.ready.notify_one();
        Ok(rx)
    }
}
