//! Fine-tuning the encoder's top layers together with the heads (`switchboard train
//! --finetune-layers K`). The result is one artifact: `encoder/` (the whole encoder, its top K
//! layers changed) beside heads bound to that encoder's sha256, so the server, the swap and the
//! rollback treat both as a unit. Frozen layers run the fast inference path; only the top
//! layers are Vars. candle-transformers' BERT cannot be trained here: its fused LayerNorm and
//! softmax are applied without a backward op, so gradients stop at the top without an error.
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::fit::{self, Dataset, EpochLog};
use super::run::{self, HeadParts, TrainOutcome};
use super::{TrainConfig, TrainError};
use crate::classify::heads::{Heads, Outputs};
use crate::dataset::{self, Row};
use crate::embed::bert::{mean_pool_normalize, Bert, BertConfig, Mode};
use crate::embed::{Embedder, EncoderConfig};

/// Settings of the fine-tuning variant.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FinetuneConfig {
    /// Top encoder layers trained (the rest, and the embeddings, stay frozen).
    pub layers: usize,
    pub epochs: usize,
    pub encoder_lr: f64,
    pub batch_size: usize,
    /// Training rows per epoch: every real prompt, then a seeded sample of the rest up to this.
    pub max_rows: usize,
    /// Dev rows scored after each epoch for early stopping (real prompts first).
    pub dev_rows: usize,
    /// Dropout inside the trained encoder layers.
    pub encoder_dropout: f32,
    /// Start the heads from this head folder (same labels) instead of a seeded init.
    pub init_heads: Option<std::path::PathBuf>,
    /// Share of the training rows added again with 5% character noise (typo robustness).
    pub noise_share: f32,
    /// Which dev figure picks the epoch that ships (and stops training when it gets worse).
    pub select: Select,
}

/// The dev figure early stopping follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// Lowest summed dev loss of the three heads.
    Loss,
    /// Highest dev intent accuracy (the dev rows are real prompts first).
    IntentAccuracy,
}

/// One selected row: token ids and its index into the label dataset.
struct Sample {
    ids: Vec<u32>,
}

/// Every real prompt, then a seeded sample of the other rows, up to `max`.
fn select<'a>(rows: &[&'a Row], max: usize, rng: &mut StdRng) -> Vec<&'a Row> {
    let (mut real, mut other): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.is_real());
    other.shuffle(rng);
    let room = max.saturating_sub(real.len());
    real.extend(other.into_iter().take(room));
    real.truncate(max.max(1));
    real
}

/// Noisy copies (5% character noise, as the typo-robustness figure applies) of a seeded
/// `share` of `rows`.
fn with_noise(rows: &[&Row], share: f32, seed: u64, rng: &mut StdRng) -> Vec<Row> {
    let n = (rows.len() as f32 * share.clamp(0.0, 1.0)).round() as usize;
    let mut pick: Vec<&Row> = rows.to_vec();
    pick.shuffle(rng);
    pick.into_iter()
        .take(n)
        .map(|r| Row {
            text: super::evaluate::typo_noise(&r.text, 0.05, seed.wrapping_add(1000)),
            ..r.clone()
        })
        .collect()
}

/// Labels (and the length feature as `x`) of `rows`, in the trainer's dataset form.
fn labels(
    rows: &[&Row],
    samples: &[Sample],
    cfg: &TrainConfig,
    sets: &(Vec<String>, Vec<String>),
) -> Dataset {
    let lens: Vec<(Vec<f32>, u32)> = samples
        .iter()
        .map(|s| (Vec::new(), s.ids.len() as u32))
        .collect();
    let refs: Vec<&(Vec<f32>, u32)> = lens.iter().collect();
    run::dataset(rows, &refs, &sets.0, &sets.1, run::RowWeighting::of(cfg))
}

/// Whether a weight name belongs to an encoder layer at or above `from`.
fn trainable(name: &str, from: usize) -> bool {
    name.split("encoder.layer.")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= from)
}

/// The encoder with its top layers as Vars in `varmap`.
struct Trainable {
    bert: Bert,
    varmap: VarMap,
    /// The weights as loaded (original dtypes), to write the new encoder file from.
    original: HashMap<String, Tensor>,
    /// A trained weight and its starting value: proof that gradients reach the encoder.
    probe: (String, Tensor),
}

fn load_trainable(dir: &Path, layers: usize, dev: &Device) -> Result<Trainable, TrainError> {
    let cfg_text = std::fs::read_to_string(dir.join("config.json"))?;
    let cfg: BertConfig = serde_json::from_str(&cfg_text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", dir.join("config.json").display())))?;
    if layers == 0 || layers > cfg.num_hidden_layers {
        return Err(TrainError::Invalid(format!(
            "--finetune-layers must be 1..={}, got {layers}",
            cfg.num_hidden_layers
        )));
    }
    let from = cfg.num_hidden_layers - layers;
    let original = candle_core::safetensors::load(dir.join("model.safetensors"), dev)?;
    let varmap = VarMap::new();
    let mut probe = None;
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("varmap lock".into()))?;
        for (name, t) in &original {
            if trainable(name, from) {
                let t = t.to_dtype(DType::F32)?;
                if name.ends_with("output.dense.weight") && probe.is_none() {
                    probe = Some((name.clone(), t.copy()?));
                }
                data.insert(name.clone(), Var::from_tensor(&t)?);
            }
        }
    }
    let probe =
        probe.ok_or_else(|| TrainError::Invalid("no trainable encoder weight found".into()))?;
    let frozen = VarBuilder::from_tensors(original.clone(), DType::F32, dev);
    let top = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let bert = Bert::load_split(frozen, top, &cfg, from)?;
    Ok(Trainable {
        bert,
        varmap,
        original,
        probe,
    })
}

/// Largest absolute change of the probe weight since the start.
fn probe_change(t: &Trainable) -> Result<f32, TrainError> {
    let data = t
        .varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Invalid("varmap lock".into()))?;
    let now = data
        .get(&t.probe.0)
        .ok_or_else(|| TrainError::Invalid("probe weight missing".into()))?;
    Ok((now.as_tensor() - &t.probe.1)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?)
}

/// Heads' features for a batch: pooled sentence vectors beside the length column.
fn forward(
    t: &Trainable,
    heads: &Heads,
    samples: &[&Sample],
    length: &Tensor,
    mode: Mode,
    masks: Option<&[Tensor; 3]>,
) -> candle_core::Result<crate::classify::heads::HeadOutputs> {
    let dev = length.device();
    let l = samples.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let (mut ids, mut mask) = (vec![0u32; samples.len() * l], vec![0u32; samples.len() * l]);
    for (row, s) in samples.iter().enumerate() {
        ids[row * l..row * l + s.ids.len()].copy_from_slice(&s.ids);
        mask[row * l..row * l + s.ids.len()].fill(1);
    }
    let ids = Tensor::from_vec(ids, (samples.len(), l), dev)?;
    let mask = Tensor::from_vec(mask, (samples.len(), l), dev)?;
    let hidden = t.bert.forward(&ids, &mask, mode)?;
    let x = Tensor::cat(&[&mean_pool_normalize(&hidden, &mask)?, length], 1)?;
    heads.forward(&x, masks)
}

/// Batches of similar length (less padding), in a seeded order.
fn batches(samples: &[Sample], size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.shuffle(rng);
    let mut out = Vec::new();
    for pool in order.chunks(size * 32) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| samples[i].ids.len());
        out.extend(pool.chunks(size).map(<[usize]>::to_vec));
    }
    out.shuffle(rng);
    out
}

/// Dev loss and intent accuracy with the current weights (no dropout).
fn score(
    t: &Trainable,
    heads: &Heads,
    samples: &[Sample],
    ds: &Dataset,
) -> Result<(f64, f64), TrainError> {
    let no_dropout = Mode::Train { dropout: 0.0 };
    Ok(fit::evaluate_with(ds, 64, &Device::Cpu, |chunk, b| {
        let picked: Vec<&Sample> = chunk.iter().map(|&i| &samples[i]).collect();
        forward(t, heads, &picked, &b.x, no_dropout, None)
    })?)
}

/// The heads' Vars: seeded, or started from `ft.init_heads` (which must have the same shape).
fn init_heads(
    cfg: &TrainConfig,
    ft: &FinetuneConfig,
    sets: &(Vec<String>, Vec<String>),
    dim: usize,
    dev: &Device,
) -> Result<(VarMap, Heads), TrainError> {
    let outputs = Outputs::current(sets.0.len(), sets.1.len());
    let mut rng = StdRng::seed_from_u64(cfg.fit.seed);
    let shapes = fit::head_shapes(dim, cfg.fit.hidden, outputs);
    let varmap = fit::seeded_varmap(&shapes, &mut rng, dev)?;
    if let Some(dir) = &ft.init_heads {
        let labels = (sets.0.as_slice(), sets.1.as_slice());
        let (_, w) = run::read_heads(dir, "--init-heads", labels, (cfg.fit.hidden, dim))?;
        for name in fit::warm_start(&varmap, &w)? {
            tracing::warn!(tensor = %name, "--init-heads: shape differs, starts from the seeded init");
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let heads = Heads::new(vb, dim, cfg.fit.hidden, outputs)?;
    Ok((varmap, heads))
}

/// What the loop hands back.
struct Trained {
    history: Vec<EpochLog>,
    best_epoch: usize,
    epoch_secs: Vec<f64>,
}

/// One pass over the training rows; returns the summed (row-weighted) loss.
fn one_epoch(
    t: &Trainable,
    heads: &Heads,
    (enc_opt, head_opt): (&mut AdamW, &mut AdamW),
    train: (&[Sample], &Dataset),
    (cfg, ft): (&TrainConfig, &FinetuneConfig),
    epoch: usize,
    rng: &mut StdRng,
) -> Result<f64, TrainError> {
    let (dev, started) = (Device::Cpu, Instant::now());
    let mode = Mode::Train {
        dropout: ft.encoder_dropout,
    };
    let plan = batches(train.0, ft.batch_size.max(1), rng);
    let mut sum = 0.0;
    for (step, batch) in plan.iter().enumerate() {
        let b = train.1.tensors(batch, &dev)?;
        let picked: Vec<&Sample> = batch.iter().map(|&i| &train.0[i]).collect();
        let masks = fit::dropout_masks(rng, batch.len(), cfg.fit.hidden, cfg.fit.dropout, &dev)?;
        let l = fit::loss(&forward(t, heads, &picked, &b.x, mode, masks.as_ref())?, &b)?;
        let grads = l.backward()?;
        enc_opt.step(&grads)?;
        head_opt.step(&grads)?;
        if epoch == 1 && step == 0 {
            check_encoder_moved(t)?;
        }
        sum += l.to_scalar::<f32>()? as f64 * batch.len() as f64;
        if (step + 1) % 25 == 0 || step + 1 == plan.len() {
            let per_step = started.elapsed().as_secs_f64() / (step + 1) as f64;
            tracing::info!(
                epoch,
                step = step + 1,
                steps = plan.len(),
                s_per_step = format!("{per_step:.2}"),
                "fine-tuning"
            );
        }
    }
    Ok(sum)
}

/// Epochs of joint training with early stopping on the dev rows (patience 1, on the figure
/// `ft.select` names); the best epoch's weights are restored.
fn train_loop(
    t: &Trainable,
    (heads, head_vars): (&Heads, &VarMap),
    train: (&[Sample], &Dataset),
    dev_set: (&[Sample], &Dataset),
    cfg: &TrainConfig,
    ft: &FinetuneConfig,
) -> Result<Trained, TrainError> {
    let mut rng = StdRng::seed_from_u64(cfg.fit.seed);
    let adamw = |lr, weight_decay| ParamsAdamW {
        lr,
        weight_decay,
        ..Default::default()
    };
    let mut enc_opt = AdamW::new(t.varmap.all_vars(), adamw(ft.encoder_lr, 0.01))?;
    let mut head_opt = AdamW::new(
        head_vars.all_vars(),
        adamw(cfg.fit.lr, cfg.fit.weight_decay),
    )?;
    let mut best = (
        f64::INFINITY,
        0,
        fit::snapshot(&t.varmap)?,
        fit::snapshot(head_vars)?,
    );
    let mut out = Trained {
        history: Vec::new(),
        best_epoch: 0,
        epoch_secs: Vec::new(),
    };
    for epoch in 1..=ft.epochs {
        let started = Instant::now();
        let opts = (&mut enc_opt, &mut head_opt);
        let sum = one_epoch(t, heads, opts, train, (cfg, ft), epoch, &mut rng)?;
        out.epoch_secs.push(started.elapsed().as_secs_f64());
        let (dev_loss, acc) = score(t, heads, dev_set.0, dev_set.1)?;
        let log = EpochLog {
            epoch,
            train_loss: sum / train.0.len().max(1) as f64,
            dev_loss,
            dev_intent_accuracy: acc,
        };
        tracing::info!(
            epoch,
            train_loss = format!("{:.4}", log.train_loss),
            dev_loss = format!("{dev_loss:.4}"),
            dev_intent_acc = format!("{acc:.4}"),
            secs = format!("{:.0}", out.epoch_secs[epoch - 1]),
            "epoch"
        );
        out.history.push(log);
        let key = match ft.select {
            Select::Loss => dev_loss,
            Select::IntentAccuracy => -acc,
        };
        if key < best.0 {
            best = (
                key,
                epoch,
                fit::snapshot(&t.varmap)?,
                fit::snapshot(head_vars)?,
            );
        } else {
            break;
        }
    }
    fit::restore(&t.varmap, &best.2)?;
    fit::restore(head_vars, &best.3)?;
    out.best_epoch = best.1;
    Ok(out)
}

/// candle's stock BERT silently gives the encoder no gradients; refuse to go on if ours did too.
fn check_encoder_moved(t: &Trainable) -> Result<(), TrainError> {
    let moved = probe_change(t)?;
    if moved <= 0.0 {
        return Err(TrainError::Invalid(format!(
            "encoder weight {} did not change after the first step: no gradient reaches the encoder",
            t.probe.0
        )));
    }
    tracing::info!(weight = %t.probe.0, max_change = moved, "encoder weights moved after the first step");
    Ok(())
}

/// Writes the fine-tuned encoder: the base folder's files with the trained layers replaced
/// (kept in the base file's dtype).
fn write_encoder(t: &Trainable, base: &Path, out: &Path) -> Result<(), TrainError> {
    crate::embed::model::copy_encoder_files(base, out)?;
    let data = t
        .varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Invalid("varmap lock".into()))?;
    let mut tensors = t.original.clone();
    for (name, v) in data.iter() {
        let dtype = tensors.get(name).map(Tensor::dtype).unwrap_or(DType::F32);
        tensors.insert(name.clone(), v.as_tensor().to_dtype(dtype)?);
    }
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    Ok(())
}

async fn start_embedder(cfg: EncoderConfig) -> Result<Embedder, TrainError> {
    tokio::task::spawn_blocking(move || Embedder::start(&cfg))
        .await
        .map_err(|e| TrainError::Invalid(e.to_string()))?
        .map_err(TrainError::from)
}

fn tokenize(embedder: &Embedder, rows: &[&Row]) -> Result<Vec<Sample>, TrainError> {
    rows.iter()
        .map(|r| {
            Ok(Sample {
                ids: embedder.tokenizer().encode(&r.text)?.ids,
            })
        })
        .collect()
}

/// The trainer's deterministic (dev, train) split.
fn split<'a>(
    rows: &'a [Row],
    cfg: &TrainConfig,
) -> Result<(Vec<&'a Row>, Vec<&'a Row>), TrainError> {
    let (dv, tr): (Vec<&Row>, Vec<&Row>) = rows
        .iter()
        .partition(|r| dataset::is_dev(r, cfg.fit.seed, cfg.dev_percent));
    if tr.is_empty() || dv.is_empty() {
        return Err(TrainError::Invalid(format!(
            "split left {} train and {} dev rows",
            tr.len(),
            dv.len()
        )));
    }
    Ok((dv, tr))
}

/// The head-training provenance plus what fine-tuning adds.
fn provenance(
    cfg: &TrainConfig,
    ft: &FinetuneConfig,
    trained: &Trained,
    train_rows: usize,
    max_tokens: usize,
    base: &Path,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, TrainError> {
    let mut training = run::provenance(cfg, trained.best_epoch, max_tokens)?;
    let ft = serde_json::to_value(ft).map_err(|e| TrainError::Invalid(e.to_string()))?;
    training.insert("finetune".into(), ft);
    let secs = serde_json::json!(trained.epoch_secs);
    training.insert("finetune_epoch_seconds".into(), secs);
    training.insert("finetune_train_rows".into(), serde_json::json!(train_rows));
    let base = serde_json::json!(base.display().to_string());
    training.insert("base_encoder".into(), base);
    Ok(training)
}

/// The dev split as the new encoder embeds it: calibration and the report use the artifact
/// exactly as the server will run it. Returns the encoder, the vectors, how many were new and
/// the seconds it took.
async fn embed_dev(
    enc: &EncoderConfig,
    model_dir: std::path::PathBuf,
    dv: &[&Row],
    cache: &Path,
) -> Result<(Embedder, Vec<(Vec<f32>, u32)>, usize, f64), TrainError> {
    let new = start_embedder(EncoderConfig {
        model_dir,
        ..enc.clone()
    })
    .await?;
    let owned: Vec<Row> = dv.iter().map(|r| (*r).clone()).collect();
    let t = Instant::now();
    let (vectors, embedded) = run::embed_rows(&new, &owned, cache).await?;
    Ok((new, vectors, embedded, t.elapsed().as_secs_f64()))
}

/// Fine-tunes the top `ft.layers` encoder layers with the heads, writes `cfg.out/encoder/` and
/// the heads bound to it into `cfg.out`, then calibrates and evaluates on the whole dev split
/// embedded by the new encoder.
pub async fn finetune(
    enc: &EncoderConfig,
    cfg: &TrainConfig,
    ft: &FinetuneConfig,
) -> Result<TrainOutcome, TrainError> {
    let rows = run::load_rows(cfg)?;
    let sets = run::label_sets(&rows, cfg.min_examples)?;
    let (dv, tr) = split(&rows, cfg)?;
    let mut rng = StdRng::seed_from_u64(cfg.fit.seed);
    let (mut train_rows, dev_rows) = (
        select(&tr, ft.max_rows, &mut rng),
        select(&dv, ft.dev_rows, &mut rng),
    );
    let noisy = with_noise(&train_rows, ft.noise_share, cfg.fit.seed, &mut rng);
    train_rows.extend(noisy.iter());
    let base = start_embedder(enc.clone()).await?;
    let (train_s, dev_s) = (tokenize(&base, &train_rows)?, tokenize(&base, &dev_rows)?);
    let train_ds = labels(&train_rows, &train_s, cfg, &sets);
    let dev_ds = labels(&dev_rows, &dev_s, cfg, &sets);
    let dim = base.info().dim + crate::classify::heads::EXTRA_FEATURES;
    drop(base);
    tracing::info!(
        train_rows = train_s.len(),
        dev_rows = dev_s.len(),
        layers = ft.layers,
        "fine-tuning the encoder with the heads"
    );
    let t0 = Instant::now();
    let (dir, cfg2, ft2, sets2) = (enc.model_dir.clone(), cfg.clone(), ft.clone(), sets.clone());
    let (t, head_vars, heads, trained) = tokio::task::spawn_blocking(move || {
        let dev = Device::Cpu;
        let t = load_trainable(&dir, ft2.layers, &dev)?;
        let (head_vars, heads) = init_heads(&cfg2, &ft2, &sets2, dim, &dev)?;
        let trained = train_loop(
            &t,
            (&heads, &head_vars),
            (&train_s, &train_ds),
            (&dev_s, &dev_ds),
            &cfg2,
            &ft2,
        )?;
        Ok::<_, TrainError>((t, head_vars, heads, trained))
    })
    .await
    .map_err(|e| TrainError::Invalid(e.to_string()))??;
    let fit_secs = t0.elapsed().as_secs_f64();
    let enc_dir = cfg.out.join("encoder");
    write_encoder(&t, &enc.model_dir, &enc_dir)?;
    drop(t);
    let (new, vectors, embedded, embed_secs) = embed_dev(enc, enc_dir, &dv, &cfg.cache_dir).await?;
    let vec_refs: Vec<&(Vec<f32>, u32)> = vectors.iter().collect();
    let dev_full = run::dataset(&dv, &vec_refs, &sets.0, &sets.1, run::RowWeighting::of(cfg));
    let temperatures = run::calibrate(&heads, &dev_full)?;
    let max_tokens = new.tokenizer().max_tokens();
    let training = provenance(
        cfg,
        ft,
        &trained,
        train_rows.len(),
        max_tokens,
        &enc.model_dir,
    )?;
    let head = HeadParts {
        varmap: &head_vars,
        temperatures,
        labels: sets,
        inputs: dim,
        training,
        languages: crate::classify::language::mix(tr.iter().map(|r| r.text.as_str())),
    };
    // Fine-tuning trains on the raw text with noisy copies; its heads carry no lexicon.
    let (classifier, dev_report) = run::write_head(cfg, &new.info(), head, None, &dv, &vec_refs)?;
    Ok(TrainOutcome {
        classifier,
        dev_report,
        history: trained.history,
        embed_secs,
        embedded,
        fit_secs,
        train_rows: train_rows.len(),
        dev_rows: dv.len(),
    })
}
