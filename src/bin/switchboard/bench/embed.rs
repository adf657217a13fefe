//! `switchboard bench embed`: latency of single prompts and throughput of concurrent batches
//! through the same queue the server uses, beside the bare candle forward of the same inputs.
use std::fmt;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{prompt_of, Stats};
use switchboard::embed::bert::Mode;
use switchboard::embed::{EmbedError, Embedder};

/// One single-prompt row.
#[derive(Debug, Clone)]
pub struct SingleRow {
    pub tokens: usize,
    pub end_to_end: Stats,
    pub bare_forward: Stats,
    /// candle-transformers' stock `BertModel` on the same ids, for reference (built with the
    /// `bench-reference` feature).
    pub stock_forward: Option<Stats>,
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
            if let Some(stock) = &r.stock_forward {
                writeln!(
                    f,
                    "                   stock fwd  {stock}   (candle-transformers BertModel, same ids)"
                )?;
            }
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

#[cfg(feature = "bench-reference")]
mod stock {
    //! candle-transformers' stock BERT as the reference point for our forward.
    use std::time::{Duration, Instant};

    use candle_core::Tensor;
    use switchboard::embed::EmbedError;

    use super::Stats;

    /// candle-transformers' own BERT, loaded from the same folder (f32), as the reference point.
    struct Stock(candle_transformers::models::bert::BertModel);

    impl Stock {
        fn load(dir: &std::path::Path) -> Result<Self, EmbedError> {
            let err = |e: &dyn std::fmt::Display| EmbedError::Load(e.to_string());
            let cfg_text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| err(&e))?;
            let cfg: candle_transformers::models::bert::Config =
                serde_json::from_str(&cfg_text).map_err(|e| err(&e))?;
            let dev = candle_core::Device::Cpu;
            let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &dev)
                .map_err(|e| err(&e))?;
            let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev);
            Ok(Self(
                candle_transformers::models::bert::BertModel::load(vb, &cfg)
                    .map_err(|e| err(&e))?,
            ))
        }

        fn forward_once(&self, ids: &[u32]) -> Result<Duration, EmbedError> {
            let err = |e: candle_core::Error| EmbedError::Model(e.to_string());
            let dev = candle_core::Device::Cpu;
            let t = Tensor::new(ids, &dev)
                .and_then(|t| t.unsqueeze(0))
                .map_err(err)?;
            let tt = t.zeros_like().map_err(err)?;
            let start = Instant::now();
            std::hint::black_box(self.0.forward(&t, &tt, None).map_err(err)?);
            Ok(start.elapsed())
        }
    }

    /// The stock model on `ids`, in its own loop: interleaved, it evicts our weights from cache.
    pub async fn times(
        dir: &std::path::Path,
        ids: &[u32],
        iterations: usize,
    ) -> Result<Option<Stats>, EmbedError> {
        let stock = std::sync::Arc::new(Stock::load(dir)?);
        let mut t = Vec::new();
        for _ in 0..iterations {
            let (st, ids) = (stock.clone(), ids.to_vec());
            let d = tokio::task::spawn_blocking(move || st.forward_once(&ids))
                .await
                .map_err(|e| EmbedError::Model(e.to_string()))??;
            t.push(d);
        }
        Ok(Some(Stats::from(&mut t)))
    }
}

#[cfg(not(feature = "bench-reference"))]
mod stock {
    use switchboard::embed::EmbedError;

    use super::Stats;

    /// Without `bench-reference` there is no stock model to time.
    pub async fn times(
        _: &std::path::Path,
        _: &[u32],
        _: usize,
    ) -> Result<Option<Stats>, EmbedError> {
        Ok(None)
    }
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
    let (mut e2e, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let start = Instant::now();
        embedder.embed(&text).await?;
        e2e.push(start.elapsed());
        let (e, ids2) = (embedder.clone(), ids.clone());
        let d = tokio::task::spawn_blocking(move || bare_forward_once(&e, &ids2))
            .await
            .map_err(|e| EmbedError::Model(e.to_string()))??;
        bare.push(d);
    }
    Ok(SingleRow {
        tokens,
        end_to_end: Stats::from(&mut e2e),
        bare_forward: Stats::from(&mut bare),
        stock_forward: stock::times(&embedder.info().dir, &ids, iterations).await?,
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
