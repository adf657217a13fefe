//! Retrain: warm-start the live heads on a dataset plus the operator's corrections (feedback
//! joined with the decision log's embeddings), calibrate, write a new head folder, and
//! optionally promote it through the same validated swap.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use tokio::sync::mpsc;

use super::fit::{self, Dataset, FitConfig};
use super::run;
use crate::classify::{content_version, varmap_bytes, Classifier, Features};
use crate::config::AdminConfig;
use crate::dataset::{self, Row};
use crate::embed::Embedder;
use crate::error::{Error, ErrorKind};
use crate::live::fleet::Rollout;
use crate::live::registry::{Registry, Source, SwapError, SwapOptions};
use crate::live::LiveModel;
use crate::records::shared::SharedRecords;
use crate::records::{self, DecisionLog, DecisionRecord, FeedbackLog, FeedbackRecord};

/// Why a retrain stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("data_path: {0}")]
    Data(#[from] crate::dataset::DataError),
    #[error(transparent)]
    Train(#[from] super::TrainError),
    #[error(transparent)]
    Classify(#[from] crate::classify::ClassifyError),
    #[error("training failed: {0}")]
    Model(#[from] candle_core::Error),
    #[error("reading the decision or feedback log: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Swap(#[from] SwapError),
    #[error("the client left")]
    ClientGone,
    #[error("{0}")]
    Internal(String),
    /// The fleet's shared store could not be read.
    #[error("the fleet's shared store: {0}")]
    Store(String),
}

impl From<RetrainError> for Error {
    fn from(e: RetrainError) -> Self {
        use RetrainError as E;
        let kind = match e {
            E::Swap(s) => {
                let inner = Error::from(s);
                return Error {
                    message: format!("retrain: {}", inner.message),
                    ..inner
                };
            }
            E::Invalid { .. } | E::Data(_) => ErrorKind::InvalidArgument,
            E::ClientGone => ErrorKind::Cancelled,
            E::Store(_) => ErrorKind::Unavailable,
            E::Train(_) | E::Classify(_) | E::Model(_) | E::Io(_) | E::Internal(_) => {
                ErrorKind::Internal
            }
        };
        Error::new(kind, format!("retrain: {e}"))
    }
}

/// What a retrain works with: the registry it starts from (and promotes into), the encoder's
/// queue, the operator's feedback joined with the decision log, and the admin settings.
pub struct Retrainer {
    pub registry: Arc<Registry>,
    pub embedder: Embedder,
    pub feedback: Arc<FeedbackLog>,
    pub decisions: Option<Arc<DecisionLog>>,
    pub cfg: AdminConfig,
    /// In a fleet: feedback and decisions from the shared store, and promotion for all.
    pub shared: Option<Arc<SharedRecords>>,
    pub rollout: Option<Arc<Rollout>>,
}

#[derive(Debug, Clone)]
pub struct RetrainParams {
    pub data: Option<PathBuf>,
    pub include_feedback: bool,
    pub promote_if_better: bool,
    pub seed: u64,
    pub max_epochs: usize,
}

/// One progress message (epochs, then a final summary).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub epoch: u32,
    pub train_loss: f64,
    pub dev_loss: f64,
    pub dev_metrics: BTreeMap<String, f64>,
    pub message: String,
    pub output_path: String,
    pub promoted: bool,
    pub version: String,
}

type Tx = mpsc::Sender<Result<Progress, RetrainError>>;

fn say(tx: &Tx, message: String) -> Result<(), RetrainError> {
    tx.try_send(Ok(Progress {
        message,
        ..Default::default()
    }))
    .map_err(|_| RetrainError::ClientGone)
}

/// The fleet's feedback and the decisions it names, or this replica's logs.
async fn feedback_and_decisions(
    s: &Retrainer,
) -> Result<(Vec<FeedbackRecord>, Vec<DecisionRecord>), RetrainError> {
    let store = |e: crate::fleet::StoreError| RetrainError::Store(e.to_string());
    if let Some(shared) = &s.shared {
        let fb = shared.feedback().await.map_err(store)?;
        let ids: Vec<String> = fb.iter().map(|f| f.decision_id.clone()).collect();
        let decisions = shared.decisions(&ids).await.map_err(store)?;
        return Ok((fb, decisions));
    }
    let Some(dlog) = &s.decisions else {
        return Err(RetrainError::Invalid {
            field: "include_feedback",
            message: "the decision log is disabled (admin.decision_log)".into(),
        });
    };
    dlog.flush();
    let fb = FeedbackLog::read(s.feedback.path())?;
    let decisions = records::read_decisions(dlog.dir())?;
    Ok((fb, decisions))
}

/// Training rows from feedback corrections whose decision was embedded by the live encoder.
async fn feedback_rows(
    s: &Retrainer,
    encoder: &str,
    tx: &Tx,
) -> Result<Vec<(Row, Features)>, RetrainError> {
    let (fb, decisions) = feedback_and_decisions(s).await?;
    let (joined, missing) = records::join(&fb, &decisions);
    if !missing.is_empty() {
        say(
            tx,
            format!(
                "{} feedback records name decisions no longer in the log (retention): skipped",
                missing.len()
            ),
        )?;
    }
    let mut out = Vec::new();
    for (f, d) in joined {
        // Only vectors from the live encoder can train the live heads.
        if d.encoder != encoder {
            continue;
        }
        let Some(features) = d.features() else {
            continue;
        };
        out.push((
            Row {
                id: f.decision_id.clone(),
                text: String::new(),
                intent: f.intent.clone(),
                domain: f.domain.clone(),
                complexity: f.complexity,
                source: "feedback".into(),
                graded: None,
                origin: format!("feedback #{}", f.sequence),
            },
            features,
        ));
    }
    Ok(out)
}

/// Share of feedback rows whose corrected intent/domain the classifier predicts.
fn feedback_accuracy(c: &Classifier, rows: &[(Row, Features)]) -> f64 {
    let (mut hit, mut n) = (0usize, 0usize);
    for (r, f) in rows {
        let Ok(p) = c.predict(&f.embedding, f.tokens as usize, Some(0.0)) else {
            continue;
        };
        for (want, got) in [(&r.intent, &p.intent), (&r.domain, &p.domain)] {
            if let Some(w) = want {
                n += 1;
                hit += usize::from(w == got);
            }
        }
    }
    if n == 0 {
        1.0
    } else {
        hit as f64 / n as f64
    }
}

impl Retrainer {
    /// Runs a retrain, streaming progress into `tx`; the last message carries the result.
    /// A caller that leaves cancels it: whatever step is running stops at its next await
    /// (training at its next epoch), and nothing is written or promoted after that.
    pub async fn run(self: Arc<Self>, p: RetrainParams, tx: Tx) {
        let result = tokio::select! {
            r = run_retrain(&self, &p, &tx) => r,
            () = tx.closed() => {
                tracing::info!("retrain cancelled: the caller left");
                return;
            }
        };
        let _ = match result {
            Ok(last) => tx.send(Ok(last)).await,
            Err(e) => tx.send(Err(e)).await,
        };
    }
}

async fn run_retrain(s: &Retrainer, p: &RetrainParams, tx: &Tx) -> Result<Progress, RetrainError> {
    // The live version the retrain starts from (warm start, labels, lexicon, encoder).
    let base = s.registry.live();
    let fb = if p.include_feedback {
        feedback_rows(s, base.encoder_sha256(), tx).await?
    } else {
        Vec::new()
    };
    let (train, dev) = datasets(s, p, &base, &fb, tx).await?;
    let before = feedback_accuracy(&base.classifier, &fb);
    let cfg = FitConfig {
        hidden: base.classifier.meta.hidden,
        max_epochs: p.max_epochs.max(1),
        patience: 3,
        lr: 5e-4,
        weight_decay: 1e-4,
        batch_size: 64,
        dropout: 0.1,
        seed: p.seed,
    };
    let result = fit_streaming(&base, train, dev.clone(), cfg.clone(), tx).await?;
    let (out, after) = write_heads(s, p, &base, &fb, &cfg, &result, &dev).await?;
    let mut last = Progress {
        output_path: out.display().to_string(),
        version: after.version.clone(),
        dev_metrics: after.metrics.clone(),
        message: format!(
            "wrote {}; feedback accuracy {before:.3} → {:.3}",
            out.display(),
            after.feedback_accuracy
        ),
        ..Default::default()
    };
    if p.promote_if_better {
        if after.feedback_accuracy < before {
            last.message += "; not promoted: feedback accuracy fell";
        } else {
            // In a fleet the promotion is the fleet's: a new generation every replica runs.
            let promoted = match &s.rollout {
                Some(r) => r.swap(Source::Path(out), SwapOptions::default()).await,
                None => {
                    s.registry
                        .swap(Source::Path(out), SwapOptions::default())
                        .await
                }
            };
            match promoted {
                Ok(r) => {
                    last.promoted = r.swapped;
                    last.message += &format!("; promoted: {}", r.messages.join("; "));
                }
                Err(e) => last.message += &format!("; not promoted: {e}"),
            }
        }
    }
    Ok(last)
}

/// The train set (data rows outside the dev split, plus weighted feedback corrections) and the
/// dev set (the data rows' dev split, or the train set when there is none).
async fn datasets(
    s: &Retrainer,
    p: &RetrainParams,
    base: &LiveModel,
    fb: &[(Row, Features)],
    tx: &Tx,
) -> Result<(Dataset, Dataset), RetrainError> {
    let mut rows = Vec::new();
    if let Some(path) = &p.data {
        let (r, bad) = dataset::read_all(std::slice::from_ref(path))?;
        for b in bad.iter().take(5) {
            say(tx, format!("skipped: {b}"))?;
        }
        rows = r;
    }
    if rows.is_empty() && fb.is_empty() {
        return Err(RetrainError::Invalid {
            field: "data_path",
            message: "nothing to train on: give data_path and/or include_feedback with corrections"
                .into(),
        });
    }
    let (n_rows, n_fb) = (rows.len(), fb.len());
    say(
        tx,
        format!("{n_rows} data rows, {n_fb} feedback corrections; embedding data rows"),
    )?;
    let cache = s.cfg.state_dir.join("cache");
    // The live encoder, which the heads being retrained read.
    let embedder = s.embedder.with_model(base.encoder.clone());
    let (vectors, _) = run::embed_rows(&embedder, &rows, &cache).await?;
    let (il, dl) = (
        &base.classifier.meta.intent_labels,
        &base.classifier.meta.domain_labels,
    );
    let (dv, tr): (Vec<usize>, Vec<usize>) =
        (0..rows.len()).partition(|&i| dataset::is_dev(&rows[i], p.seed, 10));
    let pick = |ix: &[usize]| -> Dataset {
        let rs: Vec<&Row> = ix.iter().map(|&i| &rows[i]).collect();
        let vs: Vec<&(Vec<f32>, u32)> = ix.iter().map(|&i| &vectors[i]).collect();
        run::dataset(&rs, &vs, il, dl, run::RowWeighting::UNIFORM)
    };
    let mut train = pick(&tr);
    let fb_vecs: Vec<(Vec<f32>, u32)> = fb
        .iter()
        .map(|(_, f)| (f.embedding.clone(), f.tokens))
        .collect();
    let fb_rows: Vec<&Row> = fb.iter().map(|(r, _)| r).collect();
    let fb_vecs: Vec<&(Vec<f32>, u32)> = fb_vecs.iter().collect();
    let mut fb_ds = run::dataset(&fb_rows, &fb_vecs, il, dl, run::RowWeighting::UNIFORM);
    fb_ds.weight.fill(s.cfg.feedback_weight);
    train.append(fb_ds);
    let dev = if dv.is_empty() {
        train.clone()
    } else {
        pick(&dv)
    };
    Ok((train, dev))
}

/// Warm-starts from the live heads and fits on a blocking thread, streaming each epoch.
async fn fit_streaming(
    base: &LiveModel,
    train: Dataset,
    dev: Dataset,
    cfg: FitConfig,
    tx: &Tx,
) -> Result<fit::FitResult, RetrainError> {
    let init: Vec<(String, Tensor)> =
        candle_core::safetensors::load_buffer(&base.classifier.weights, &Device::Cpu)?
            .into_iter()
            .collect();
    let etx = tx.clone();
    let result = run::fit_blocking(
        train,
        dev,
        base.classifier.meta.outputs(),
        cfg,
        Some(init),
        None,
        move |e| {
            // A failed send means the caller has gone: stop training.
            let sent = etx.blocking_send(Ok(Progress {
                epoch: e.epoch as u32,
                train_loss: e.train_loss,
                dev_loss: e.dev_loss,
                dev_metrics: BTreeMap::from([(
                    "dev_intent_accuracy".into(),
                    e.dev_intent_accuracy,
                )]),
                ..Default::default()
            }));
            match sent {
                Ok(()) => std::ops::ControlFlow::Continue(()),
                Err(_) => std::ops::ControlFlow::Break(()),
            }
        },
    )
    .await?;
    Ok(result)
}

/// What the written heads measure.
struct Written {
    version: String,
    metrics: BTreeMap<String, f64>,
    feedback_accuracy: f64,
}

/// Calibrates, stamps metadata, scores on the gate set and writes the new head folder.
async fn write_heads(
    s: &Retrainer,
    p: &RetrainParams,
    base: &LiveModel,
    fb: &[(Row, Features)],
    cfg: &FitConfig,
    result: &fit::FitResult,
    dev: &Dataset,
) -> Result<(PathBuf, Written), RetrainError> {
    let (t_int, t_dom) = run::calibrate(&result.heads, dev)?;
    let mut meta = base.classifier.meta.clone();
    (meta.intent_temperature, meta.domain_temperature) = (t_int, t_dom);
    meta.training = BTreeMap::from([
        ("retrained_from".into(), serde_json::json!(base.version())),
        (
            "data".into(),
            serde_json::json!(p.data.as_ref().map(|d| d.display().to_string())),
        ),
        ("feedback_rows".into(), serde_json::json!(fb.len())),
        (
            "hyper_parameters".into(),
            serde_json::to_value(cfg).unwrap_or_default(),
        ),
        ("best_epoch".into(), serde_json::json!(result.best_epoch)),
    ]);
    // The new heads keep the live classifier's typo-repair lexicon: the rows here are few.
    let lexicon = crate::classify::lexicon(&base.classifier.weights)
        .map_err(|e| RetrainError::Internal(e.to_string()))?;
    let weights = varmap_bytes(&result.varmap, lexicon.as_deref())?;
    meta.version = content_version(&weights, &meta);
    let out = s.cfg.state_dir.join("heads").join(&meta.version);
    let c = Classifier::from_parts(meta.clone(), &weights, &out)?;
    let feedback_accuracy = feedback_accuracy(&c, fb);
    meta.metrics = s.registry.score(&c, &base.encoder).await?;
    meta.metrics
        .insert("feedback_accuracy".into(), feedback_accuracy);
    Classifier::save_parts(&out, &meta, &weights)?;
    let written = Written {
        version: meta.version,
        metrics: meta.metrics,
        feedback_accuracy,
    };
    Ok((out, written))
}
