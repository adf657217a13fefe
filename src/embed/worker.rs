//! The encoder's owner threads. Each worker waits on the shared queue, takes a batch, runs the
//! forward pass and answers every caller through its oneshot. Async code never blocks here.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::Span;

use super::model::SentenceEncoder;
use super::queue::{BatchLimits, BatchQueue, Pending};
use super::{EmbedError, Embedded};

/// One sequence waiting to be embedded.
pub(crate) struct Job {
    pub ids: Vec<u32>,
    /// The encoder this job must run on (its caller's snapshot of the live model).
    pub model: Arc<SentenceEncoder>,
    pub reply: oneshot::Sender<Result<Embedded, EmbedError>>,
    pub span: Span,
    pub enqueued: Instant,
}

impl Pending for Job {
    fn tokens(&self) -> usize {
        self.ids.len()
    }
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// State shared by callers and workers.
pub(crate) struct Shared {
    pub queue: Mutex<BatchQueue<Job>>,
    pub ready: Condvar,
    pub shutdown: AtomicBool,
    pub limits: BatchLimits,
    /// Worker restarts after a panic, over the process's life.
    pub restarts: AtomicU64,
    /// Set once a worker panicked too often to be restarted: callers get `Unavailable`.
    pub broken: AtomicBool,
    /// Test-only fault hook: the next this-many batches panic in the worker.
    pub inject_panics: AtomicUsize,
}

/// A worker that panics more than this often within `RESTART_WINDOW` is not restarted again:
/// a fault that repeats is not transient, and readiness should say so.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

impl Shared {
    /// Locks the queue; a poisoned lock (a panicking worker) still holds valid state.
    pub fn lock(&self) -> MutexGuard<'_, BatchQueue<Job>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps worker `i` running: spawns it, and when it dies of a panic (its batch's callers
/// have already seen their replies dropped), spawns it again; after `MAX_RESTARTS` within
/// `RESTART_WINDOW` marks the encoder broken and fails every queued job.
pub(crate) fn supervise(shared: Arc<Shared>, i: usize) {
    let mut recent: VecDeque<Instant> = VecDeque::new();
    loop {
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("encoder-{i}"))
            .spawn(move || run(s));
        let died = match spawned {
            Ok(h) => h.join().is_err(),
            Err(e) => {
                tracing::error!(error = %e, worker = i, "cannot spawn an encoder worker");
                true
            }
        };
        if !died || shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        recent.push_back(now);
        while recent.front().is_some_and(|t| now - *t > RESTART_WINDOW) {
            recent.pop_front();
        }
        if recent.len() > MAX_RESTARTS {
            tracing::error!(
                worker = i,
                "encoder worker keeps failing; the encoder is now unavailable"
            );
            // Under the queue's lock, so no caller can queue a job after the drain.
            let jobs: Vec<Job> = {
                let mut q = shared.lock();
                shared.broken.store(true, Ordering::Release);
                q.drain()
            };
            for job in jobs {
                let _ = job.reply.send(Err(EmbedError::Unavailable));
            }
            return;
        }
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(worker = i, "encoder worker panicked; restarting it");
    }
}

/// The loop each worker thread runs until shutdown.
fn run(shared: Arc<Shared>) {
    loop {
        let batch = {
            let mut q = shared.lock();
            while q.is_empty() && !shared.shutdown.load(Ordering::Acquire) {
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.is_empty() {
                return;
            }
            q.next_batch(shared.limits)
        };
        if !batch.is_empty() {
            let inject = shared
                .inject_panics
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            assert!(!inject, "injected encoder fault (test hook)");
            process(batch);
        }
    }
}

/// Runs a batch, one forward per encoder in it: a swap can leave jobs for the old and the new
/// encoder in the same batch, and each must get its own encoder's vector.
fn process(mut batch: Vec<Job>) {
    while let Some(first) = batch.first() {
        let model = first.model.clone();
        let (same, rest) = batch
            .into_iter()
            .partition(|j: &Job| Arc::ptr_eq(&j.model, &model));
        forward(&model, same);
        batch = rest;
    }
}

fn forward(model: &SentenceEncoder, batch: Vec<Job>) {
    let started = Instant::now();
    let encoder: Arc<str> = Arc::from(model.info().weights_sha256.as_str());
    let seqs: Vec<&[u32]> = batch.iter().map(|j| j.ids.as_slice()).collect();
    let padded = seqs.iter().map(|s| s.len()).max().unwrap_or(0) * seqs.len();
    let result = model.embed_ids(&seqs);
    let embed_us = started.elapsed().as_micros() as u64;
    let size = batch.len();
    match result {
        Ok(vectors) => {
            for (job, vector) in batch.into_iter().zip(vectors) {
                let queue_us = started.duration_since(job.enqueued).as_micros() as u64;
                job.span.in_scope(|| {
                    tracing::debug!(
                        batch_size = size,
                        padded_tokens = padded,
                        queue_us,
                        embed_us,
                        "embedded"
                    );
                });
                // A send error means the caller is gone; nothing to do.
                let _ = job.reply.send(Ok(Embedded {
                    vector,
                    tokens: job.ids.len(),
                    original_tokens: job.ids.len(),
                    queue_us,
                    embed_us,
                    batch_size: size,
                    encoder: encoder.clone(),
                }));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch_size = size, "encoder forward failed");
            for job in batch {
                let _ = job.reply.send(Err(EmbedError::Model(e.to_string())));
            }
        }
    }
}
