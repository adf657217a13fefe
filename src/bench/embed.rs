//! `switchboard bench embed`: latency of single prompts and throughput of concurrent batches
//! through the same queue the server uses, beside the bare candle forward of the same inputs.
use std::fmt;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{prompt_of, Stats};
use crate::embed::bert::Mode;
use crate::embed::{EmbedError, Embedder};

/// One single-prompt row.
#[derive(Debug, Clone)]
pub struct SingleRow {
    pub tokens: usize,
    pub end_to_end: Stats,
    pub bare_forward: Stats,
}

/// The whole `bench embed` report.
#[derive(Debug, Clone)]
pub struct EmbedReport {
    pub iterations: usize,
    pub single: Vec<SingleRow>,
    pub batch_size: usize,
    pub batch_tokens: usize,
    pub prompts_per_s: f64,
    pub bare_batch_prompts_per_s: f64,
    pub workers: usize,
    pub threads: usize,
}

impl fmt::Display for EmbedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workers {}, candle threads per forward {}, {} iterations",
            self.workers, self.threads, self.iterations
        )?;
        for r in &self.single {
            writeln!(
                f,
                "single {:>3} tokens  end-to-end {}",
                r.tokens, r.end_to_end
            )?;
            writeln!(
                f,
                "                   bare fwd   {}   overhead (p50 ratio) {:.3}",
                r.bare_forward,
                r.end_to_end.p50 / r.bare_forward.p50
            )?;
        }
        writeln!(
            f,
            "batched: {} concurrent prompts of {} tokens: {:.1} prompts/s through the queue; bare forward of the same batch on one caller: {:.1} prompts/s",
            self.batch_size, self.batch_tokens, self.prompts_per_s, self.bare_batch_prompts_per_s
        )
    }
}

/// Times one bare forward (no tokenization, queue or pooling) of `ids`.
fn bare_forward_once(embedder: &Embedder, ids: &[u32]) -> Result<Duration, EmbedError> {
    let model = embedder.model();
    let err = |e: candle_core::Error| EmbedError::Model(e.to_string());
    let (t, m) = model.batch_tensors(&[ids]).map_err(err)?;
    let start = Instant::now();
    let out: Tensor = model.bert().forward(&t, &m, Mode::Inference).map_err(err)?;
    std::hint::black_box(out);
    Ok(start.elapsed())
}

/// Single-prompt latency, end to end and bare, interleaved so drift hits both alike.
async fn single(
    embedder: &Embedder,
    tokens: usize,
    iterations: usize,
) -> Result<SingleRow, EmbedError> {
    let text = prompt_of(embedder, tokens, tokens);
    let ids = embedder.tokenizer().encode(&text)?.ids;
    embedder.embed(&text).await?;
    let (mut e2e, mut bare) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    for _ in 0..iterations {
        let start = Instant::now();
        embedder.embed(&text).await?;
        e2e.push(start.elapsed());
        let (e, ids) = (embedder.clone(), ids.clone());
        let d = tokio::task::spawn_blocking(move || bare_forward_once(&e, &ids))
            .await
            .map_err(|e| EmbedError::Model(e.to_string()))??;
        bare.push(d);
    }
    Ok(SingleRow {
        tokens,
        end_to_end: Stats::from(&mut e2e),
        bare_forward: Stats::from(&mut bare),
    })
}

/// Runs the embed benchmark. Call from a multi-threaded tokio runtime.
pub async fn embed(
    embedder: &Embedder,
    iterations: usize,
    batch_rounds: usize,
    workers: usize,
) -> Result<EmbedReport, EmbedError> {
    let mut rows = Vec::new();
    for tokens in [16usize, 64, 256] {
        rows.push(single(embedder, tokens, iterations).await?);
    }
    let (batch_size, batch_tokens) = (32usize, 32usize);
    let prompts: Vec<String> = (0..batch_size)
        .map(|i| prompt_of(embedder, batch_tokens, i + 1))
        .collect();
    embedder.embed_many(&prompts).await?;
    let start = Instant::now();
    for _ in 0..batch_rounds {
        let mut set = tokio::task::JoinSet::new();
        for p in &prompts {
            let e = embedder.clone();
            let p = p.clone();
            set.spawn(async move { e.embed(&p).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| EmbedError::Model(e.to_string()))??;
        }
    }
    let prompts_per_s = (batch_rounds * batch_size) as f64 / start.elapsed().as_secs_f64();
    let e = embedder.clone();
    let bare_batch_prompts_per_s =
        tokio::task::spawn_blocking(move || -> Result<f64, EmbedError> {
            let model = e.model();
            let ids: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| e.tokenizer().encode(p).map(|x| x.ids))
                .collect::<Result<_, _>>()?;
            let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
            let err = |e: candle_core::Error| EmbedError::Model(e.to_string());
            let (t, m) = model.batch_tensors(&seqs).map_err(err)?;
            model.bert().forward(&t, &m, Mode::Inference).map_err(err)?;
            let start = Instant::now();
            for _ in 0..batch_rounds {
                std::hint::black_box(model.bert().forward(&t, &m, Mode::Inference).map_err(err)?);
            }
            Ok((batch_rounds * seqs.len()) as f64 / start.elapsed().as_secs_f64())
        })
        .await
        .map_err(|e| EmbedError::Model(e.to_string()))??;
    Ok(EmbedReport {
        iterations,
        single: rows,
        batch_size,
        batch_tokens,
        prompts_per_s,
        bare_batch_prompts_per_s,
        workers,
        threads: candle_core::utils::get_num_threads(),
    })
}
