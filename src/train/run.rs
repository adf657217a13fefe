//! `switchboard train`: data → split → embeddings (cached) → heads → calibration → metrics →
//! a new head folder. Progress goes to tracing; the caller decides how to show it.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::cache::{self, EmbeddingCache};
use super::eval::{self, EvalReport};
use super::fit::{self, Dataset, EpochLog};
use super::{TrainConfig, TrainError};
use crate::classify::heads::Outputs;
use crate::classify::{content_version, varmap_bytes, Classifier, ClassifierMeta, EncoderRef};
use crate::dataset::{self, Row};
use crate::embed::Embedder;

/// What a run produced.
pub struct TrainOutcome {
    pub classifier: Classifier,
    pub dev_report: EvalReport,
    pub history: Vec<EpochLog>,
    pub embed_secs: f64,
    pub embedded: usize,
    pub fit_secs: f64,
    pub train_rows: usize,
    pub dev_rows: usize,
}

/// Embeds every row's text, through the cache; returns (embedding, tokens) per row.
pub async fn embed_rows(
    embedder: &Embedder,
    rows: &[Row],
    cache_dir: &std::path::Path,
) -> Result<(Vec<(Vec<f32>, u32)>, usize), TrainError> {
    let info = embedder.info();
    let tok = embedder.tokenizer();
    let identity = format!(
        "{}-{}-{}",
        &info.weights_sha256[..16],
        tok.max_tokens(),
        tok.truncation_name()
    );
    let mut c = EmbeddingCache::open(cache_dir, &identity, info.dim)?;
    let missing: Vec<&Row> = {
        let mut seen = std::collections::HashSet::new();
        rows.iter()
            .filter(|r| c.get(&cache::key(&r.text)).is_none() && seen.insert(cache::key(&r.text)))
            .collect()
    };
    let total = missing.len();
    tracing::info!(
        cached = c.len(),
        to_embed = total,
        "embedding training rows"
    );
    let started = Instant::now();
    for (i, chunk) in missing.chunks(512).enumerate() {
        let texts: Vec<String> = chunk.iter().map(|r| r.text.clone()).collect();
        let out = embedder.embed_many(&texts).await?;
        let entries = chunk
            .iter()
            .zip(out)
            .map(|(r, e)| (cache::key(&r.text), (e.vector, e.tokens as u32)))
            .collect();
        c.extend(entries)?;
        let done = ((i + 1) * 512).min(total);
        let rate = done as f64 / started.elapsed().as_secs_f64();
        tracing::info!(
            done,
            total,
            prompts_per_s = format!("{rate:.1}"),
            "embedding"
        );
    }
    let vectors = rows
        .iter()
        .map(|r| {
            c.get(&cache::key(&r.text))
                .cloned()
                .ok_or_else(|| TrainError::Invalid(format!("{}: not embedded", r.origin)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((vectors, total))
}

fn index_of(labels: &[String], v: Option<&String>) -> Option<usize> {
    v.and_then(|v| labels.iter().position(|l| l == v))
}

/// How rows weigh in the loss.
#[derive(Debug, Clone, Copy)]
pub struct RowWeighting {
    /// Weight of a real user prompt (`source == "sharegpt"`); other rows weigh 1.
    pub real: f32,
    /// Exponent of the real prompts' inverse class-frequency factor (0 = off).
    pub real_balance: f32,
}

impl RowWeighting {
    pub const UNIFORM: Self = Self {
        real: 1.0,
        real_balance: 0.0,
    };

    pub fn of(cfg: &TrainConfig) -> Self {
        Self {
            real: cfg.real_prompt_weight,
            real_balance: cfg.real_class_balance,
        }
    }

    /// Per-intent factor of real rows: (mean class size / class size)^balance, clamped to
    /// [1/4, 4] so a class of two prompts does not dominate.
    fn class_factors(&self, rows: &[&Row], intents: &[String]) -> Vec<f32> {
        let mut counts = vec![0usize; intents.len()];
        for r in rows.iter().filter(|r| r.is_real()) {
            if let Some(i) = index_of(intents, r.intent.as_ref()) {
                counts[i] += 1;
            }
        }
        let present: Vec<usize> = counts.iter().copied().filter(|&c| c > 0).collect();
        let mean = present.iter().sum::<usize>() as f32 / present.len().max(1) as f32;
        counts
            .iter()
            .map(|&c| match c {
                0 => 1.0,
                c => (mean / c as f32).powf(self.real_balance).clamp(0.25, 4.0),
            })
            .collect()
    }
}

/// Builds the feature dataset of `rows`.
pub fn dataset(
    rows: &[&Row],
    vectors: &[&(Vec<f32>, u32)],
    intents: &[String],
    domains: &[String],
    weighting: RowWeighting,
) -> Dataset {
    let factors = weighting.class_factors(rows, intents);
    let dim =
        vectors.first().map(|v| v.0.len()).unwrap_or(0) + crate::classify::heads::EXTRA_FEATURES;
    let mut d = Dataset {
        dim,
        ..Default::default()
    };
    for (r, (v, tokens)) in rows.iter().zip(vectors) {
        d.x.extend(Classifier::features(v, *tokens as usize));
        let i = index_of(intents, r.intent.as_ref());
        d.intent.push(i.unwrap_or(0) as u32);
        d.intent_mask.push(if i.is_some() { 1.0 } else { 0.0 });
        let dm = index_of(domains, r.domain.as_ref());
        d.domain.push(dm.unwrap_or(0) as u32);
        d.domain_mask.push(if dm.is_some() { 1.0 } else { 0.0 });
        d.complexity.push(r.complexity.unwrap_or(0.0));
        d.complexity_mask
            .push(if r.complexity.is_some() { 1.0 } else { 0.0 });
        let strong = r.graded.map(|(_, strong)| strong);
        d.strong.push(if strong == Some(true) { 1.0 } else { 0.0 });
        d.strong_mask.push(if strong.is_some() { 1.0 } else { 0.0 });
        d.weight.push(match (r.is_real(), i) {
            (true, Some(i)) => weighting.real * factors[i],
            (true, None) => weighting.real,
            (false, _) => 1.0,
        });
    }
    d
}

/// Reads and checks the data files: bad lines are logged with file:line and skipped.
pub fn load_rows(cfg: &TrainConfig) -> Result<Vec<Row>, TrainError> {
    let (mut rows, bad) = dataset::read_all(&cfg.data)?;
    for b in &bad {
        tracing::warn!("skipped: {b}");
    }
    if cfg.limit > 0 {
        rows.truncate(cfg.limit);
    }
    Ok(rows)
}

/// Label sets with at least `min` rows each; rarer labels are reported and left out.
pub(crate) fn label_sets(
    rows: &[Row],
    min: usize,
) -> Result<(Vec<String>, Vec<String>), TrainError> {
    let (intents, rare_i) = dataset::label_set(rows, "intent", |r| r.intent.as_ref(), min);
    let (domains, rare_d) = dataset::label_set(rows, "domain", |r| r.domain.as_ref(), min);
    for e in rare_i.iter().chain(&rare_d) {
        tracing::warn!("{e}");
    }
    if intents.len() < 2 || domains.is_empty() {
        return Err(TrainError::Invalid(format!("need ≥ 2 intent labels and ≥ 1 domain label with ≥ {min} rows each; found {intents:?} / {domains:?}")));
    }
    Ok((intents, domains))
}

type Part<'a> = (Vec<&'a Row>, Vec<&'a (Vec<f32>, u32)>);

/// The deterministic train/dev split of rows and their embeddings.
fn split<'a>(
    rows: &'a [Row],
    vectors: &'a [(Vec<f32>, u32)],
    cfg: &TrainConfig,
) -> Result<(Part<'a>, Part<'a>), TrainError> {
    let (mut tr, mut dv): (Part<'a>, Part<'a>) = Default::default();
    for (r, v) in rows.iter().zip(vectors) {
        let side = if dataset::is_dev(r, cfg.fit.seed, cfg.dev_percent) {
            &mut dv
        } else {
            &mut tr
        };
        side.0.push(r);
        side.1.push(v);
    }
    if tr.0.is_empty() || dv.0.is_empty() {
        return Err(TrainError::Invalid(format!(
            "split left {} train and {} dev rows",
            tr.0.len(),
            dv.0.len()
        )));
    }
    Ok((tr, dv))
}

/// Intent and domain temperatures fitted on the dev split's raw logits.
pub fn calibrate(
    heads: &crate::classify::heads::Heads,
    dev: &Dataset,
) -> Result<(f32, f32), TrainError> {
    let x = Tensor::from_vec(dev.x.clone(), (dev.len(), dev.dim), &Device::Cpu)?;
    let out = heads.forward(&x, None)?;
    let labels = |mask: &[f32], y: &[u32]| {
        mask.iter()
            .zip(y)
            .map(|(m, y)| (*m > 0.0).then_some(*y as usize))
            .collect::<Vec<_>>()
    };
    let t_int = fit::fit_temperature(
        &out.intent.to_vec2()?,
        &labels(&dev.intent_mask, &dev.intent),
    );
    let t_dom = fit::fit_temperature(
        &out.domain.to_vec2()?,
        &labels(&dev.domain_mask, &dev.domain),
    );
    Ok((t_int, t_dom))
}

/// Where a head came from: data files and hash, hyper-parameters, split, token budget.
pub(crate) fn provenance(
    cfg: &TrainConfig,
    best_epoch: usize,
    max_tokens: usize,
) -> Result<BTreeMap<String, serde_json::Value>, TrainError> {
    let files: Vec<String> = cfg.data.iter().map(|p| p.display().to_string()).collect();
    let hyper = serde_json::to_value(&cfg.fit).map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(BTreeMap::from([
        ("data".to_string(), serde_json::json!(files)),
        (
            "data_sha256".to_string(),
            serde_json::json!(dataset::data_sha256(&cfg.data)?),
        ),
        ("hyper_parameters".to_string(), hyper),
        ("best_epoch".to_string(), serde_json::json!(best_epoch)),
        (
            "dev_percent".to_string(),
            serde_json::json!(cfg.dev_percent),
        ),
        (
            "real_prompt_weight".to_string(),
            serde_json::json!(cfg.real_prompt_weight),
        ),
        (
            "real_class_balance".to_string(),
            serde_json::json!(cfg.real_class_balance),
        ),
        ("max_tokens".to_string(), serde_json::json!(max_tokens)),
        (
            "spell_dictionary".to_string(),
            serde_json::json!(cfg
                .spell_dictionary
                .as_ref()
                .map(|p| p.display().to_string())),
        ),
    ]))
}

/// A trained head's weights and what its metadata records.
pub(crate) struct HeadParts<'a> {
    pub varmap: &'a candle_nn::VarMap,
    pub temperatures: (f32, f32),
    pub labels: (Vec<String>, Vec<String>),
    pub inputs: usize,
    pub training: BTreeMap<String, serde_json::Value>,
    /// Languages of the training rows (`language::mix`).
    pub languages: BTreeMap<String, u64>,
}

/// Evaluates the head on the dev rows, records the metrics and writes the folder `cfg.out`.
pub(crate) fn write_head(
    cfg: &TrainConfig,
    info: &crate::embed::EncoderInfo,
    head: HeadParts,
    lexicon: Option<&str>,
    dv_rows: &[&Row],
    dv_vecs: &[&(Vec<f32>, u32)],
) -> Result<(Classifier, EvalReport), TrainError> {
    let mut meta = ClassifierMeta {
        format: 1,
        version: String::new(),
        encoder: EncoderRef {
            name: info.name.clone(),
            sha256: info.weights_sha256.clone(),
        },
        intent_labels: head.labels.0,
        domain_labels: head.labels.1,
        inputs: head.inputs,
        hidden: cfg.fit.hidden,
        intent_temperature: head.temperatures.0,
        domain_temperature: head.temperatures.1,
        abstain_threshold: cfg.abstain_threshold,
        complexity_outputs: crate::classify::heads::COMPLEXITY_OUTPUTS,
        training: head.training,
        languages: head.languages,
        metrics: BTreeMap::new(),
    };
    let weights = varmap_bytes(head.varmap, lexicon)?;
    meta.version = content_version(&weights, &meta);
    let classifier = Classifier::from_parts(meta.clone(), &weights, &cfg.out)?;
    let dev_report = eval::evaluate(&classifier, dv_rows, dv_vecs)?;
    meta.metrics = dev_report.headline();
    Classifier::save_parts(&cfg.out, &meta, &weights)?;
    Ok((
        Classifier::from_parts(meta, &weights, &cfg.out)?,
        dev_report,
    ))
}

/// A head folder given on the command line (`flag`: `--init-heads`, `--keep-heads`) and its
/// weights, after checking that its labels and shape match this run's.
pub(crate) fn read_heads(
    dir: &Path,
    flag: &str,
    labels: (&[String], &[String]),
    (hidden, inputs): (usize, usize),
) -> Result<(ClassifierMeta, Vec<(String, Tensor)>), TrainError> {
    let bad = |why: String| TrainError::Invalid(format!("{flag} {}: {why}", dir.display()));
    let text = std::fs::read_to_string(dir.join(crate::classify::META_FILE))
        .map_err(|e| bad(e.to_string()))?;
    let meta: ClassifierMeta = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if meta.intent_labels != labels.0 || meta.domain_labels != labels.1 {
        return Err(bad(format!(
            "its labels differ from the data's ({:?} / {:?})",
            meta.intent_labels, meta.domain_labels
        )));
    }
    if meta.hidden != hidden || meta.inputs != inputs {
        return Err(bad(format!(
            "shape {}→{} differs from --hidden {hidden} on {inputs} inputs",
            meta.inputs, meta.hidden
        )));
    }
    let w = candle_core::safetensors::load(dir.join(crate::classify::WEIGHTS_FILE), &Device::Cpu)?;
    Ok((meta, w.into_iter().collect()))
}

/// Heads `--keep-heads` trains afresh on every train row; the intent head is kept. Fine-tuning
/// samples its rows towards real prompts, so a domain head trained there saw a fraction of the
/// exam questions that carry most domain labels (and the complexity head may have another
/// meaning, one output); on the fine-tuned encoder, frozen, both learn from all of them.
const REFIT_WITH_KEPT: &[&str] = &["domain", "complexity"];

/// `--keep-heads DIR`: its metadata and its intent weights, after checking that it was made
/// for this encoder. The heads in `REFIT_WITH_KEPT` start fresh.
fn kept_heads(
    dir: &Path,
    info: &crate::embed::EncoderInfo,
    labels: (&[String], &[String]),
    shape: (usize, usize),
) -> Result<(ClassifierMeta, Vec<(String, Tensor)>), TrainError> {
    let (meta, w) = read_heads(dir, "--keep-heads", labels, shape)?;
    if meta.encoder.sha256 != info.weights_sha256 {
        return Err(TrainError::Invalid(format!(
            "--keep-heads {}: made for encoder sha256 {}, but --model-dir holds {}",
            dir.display(),
            meta.encoder.sha256,
            info.weights_sha256
        )));
    }
    let kept = w
        .into_iter()
        .filter(|(name, _)| {
            !REFIT_WITH_KEPT
                .iter()
                .any(|h| name.starts_with(&format!("{h}.")))
        })
        .collect();
    Ok((meta, kept))
}

/// Copies a classifier folder's own encoder (config, tokenizer, licence, weights) to `to`.
fn copy_encoder(from: &Path, to: &Path) -> std::io::Result<()> {
    crate::embed::model::copy_encoder_files(from, to)?;
    std::fs::copy(from.join("model.safetensors"), to.join("model.safetensors")).map(|_| ())
}

/// `fit::fit` on a blocking thread (it saturates the cores for seconds), each epoch reported to
/// `progress`. `only` names the heads to train when `init` holds the others.
pub(crate) async fn fit_blocking(
    train: Dataset,
    dev: Dataset,
    outputs: Outputs,
    cfg: fit::FitConfig,
    init: Option<Vec<(String, candle_core::Tensor)>>,
    only: Option<&'static [&'static str]>,
    mut progress: impl FnMut(&fit::EpochLog) -> std::ops::ControlFlow<()> + Send + 'static,
) -> Result<fit::FitResult, TrainError> {
    let result = tokio::task::spawn_blocking(move || {
        fit::fit(
            &train,
            &dev,
            outputs,
            &cfg,
            init.as_deref(),
            only,
            &mut progress,
        )
    })
    .await
    .map_err(|e| TrainError::Invalid(e.to_string()))??;
    Ok(result)
}

/// One epoch's losses and dev accuracy, as the training log shows them.
fn log_epoch(e: &EpochLog) -> std::ops::ControlFlow<()> {
    tracing::info!(
        epoch = e.epoch,
        train_loss = format!("{:.4}", e.train_loss),
        dev_loss = format!("{:.4}", e.dev_loss),
        dev_intent_acc = format!("{:.4}", e.dev_intent_accuracy),
        "epoch"
    );
    std::ops::ControlFlow::Continue(())
}

/// Runs the whole pipeline and writes the head folder to `cfg.out`.
pub async fn train(embedder: &Embedder, cfg: &TrainConfig) -> Result<TrainOutcome, TrainError> {
    let rows = load_rows(cfg)?;
    let (intents, domains) = label_sets(&rows, cfg.min_examples)?;
    let t0 = Instant::now();
    let (rows, lexicon) = super::typos::repair_typos(embedder, rows, cfg)?;
    let (vectors, embedded) = embed_rows(embedder, &rows, &cfg.cache_dir).await?;
    let embed_secs = t0.elapsed().as_secs_f64();
    let ((tr_rows, tr_vecs), (dv_rows, dv_vecs)) = split(&rows, &vectors, cfg)?;
    let weighting = RowWeighting::of(cfg);
    let train_ds = dataset(&tr_rows, &tr_vecs, &intents, &domains, weighting);
    let dev_ds = dataset(&dv_rows, &dv_vecs, &intents, &domains, weighting);
    let t1 = Instant::now();
    let fit_cfg = cfg.fit.clone();
    let outputs = Outputs::current(intents.len(), domains.len());
    let shape = (cfg.fit.hidden, train_ds.dim);
    let (kept_meta, init) = match cfg.keep_heads.as_deref() {
        Some(dir) => kept_heads(dir, &embedder.info(), (&intents, &domains), shape)
            .map(|(meta, w)| (Some(meta), Some(w)))?,
        None => (None, None),
    };
    // With kept heads only the others are trained.
    let only = init.as_ref().map(|_| REFIT_WITH_KEPT);
    let (tr, dv) = (train_ds.clone(), dev_ds.clone());
    let result = fit_blocking(tr, dv, outputs, fit_cfg, init, only, log_epoch).await?;
    let (t_int, t_dom) = calibrate(&result.heads, &dev_ds)?;
    let fit_secs = t1.elapsed().as_secs_f64();
    let mut training = provenance(cfg, result.best_epoch, embedder.tokenizer().max_tokens())?;
    if let Some(m) = &kept_meta {
        training.insert("kept_heads_from".into(), serde_json::json!(m.version));
        // The kept heads' own provenance (e.g. the fine-tuning run that made them).
        training.insert("kept_heads_training".into(), serde_json::json!(m.training));
    }
    let head = HeadParts {
        varmap: &result.varmap,
        temperatures: (t_int, t_dom),
        labels: (intents, domains),
        inputs: train_ds.dim,
        training,
        languages: crate::classify::language::mix(tr_rows.iter().map(|r| r.text.as_str())),
    };
    if let Some(enc) = cfg
        .keep_heads
        .as_deref()
        .and_then(crate::classify::own_encoder)
    {
        copy_encoder(&enc, &cfg.out.join("encoder"))?;
    }
    let (classifier, dev_report) = write_head(
        cfg,
        &embedder.info(),
        head,
        lexicon.as_deref(),
        &dv_rows,
        &dv_vecs,
    )?;
    Ok(TrainOutcome {
        classifier,
        dev_report,
        history: result.history,
        embed_secs,
        embedded,
        fit_secs,
        train_rows: train_ds.len(),
        dev_rows: dev_ds.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(intent: &str, source: &str) -> Row {
        Row {
            id: String::new(),
            text: String::new(),
            intent: Some(intent.to_string()),
            domain: None,
            complexity: None,
            source: source.to_string(),
            graded: None,
            origin: String::new(),
        }
    }

    #[test]
    fn real_class_balance_lifts_thin_real_classes_only() {
        let rows = [
            row("a", "sharegpt"),
            row("a", "sharegpt"),
            row("a", "sharegpt"),
            row("b", "sharegpt"),
            row("b", "p3"),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let v = (vec![0.0f32; 2], 3u32);
        let vecs = vec![&v; rows.len()];
        let labels = ["a".to_string(), "b".to_string()];
        let w = |real_balance| {
            let weighting = RowWeighting {
                real: 3.0,
                real_balance,
            };
            dataset(&refs, &vecs, &labels, &[], weighting).weight
        };
        assert_eq!(w(0.0), vec![3.0, 3.0, 3.0, 3.0, 1.0]);
        // Mean real class size 2: a (3 rows) × 2/3, b (1 row) × 2; template rows untouched.
        let balanced = w(1.0);
        for (got, want) in balanced.iter().zip([2.0, 2.0, 2.0, 6.0, 1.0]) {
            assert!((got - want).abs() < 1e-5, "{balanced:?}");
        }
    }
}
