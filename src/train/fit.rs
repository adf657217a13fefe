//! The training loop for the heads on precomputed features: seeded init, seeded shuffling and
//! dropout, AdamW, masked multi-task loss, early stopping on dev loss, temperature fitting.
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::ops::ControlFlow;

use crate::classify::heads::{HeadOutputs, Heads, Outputs};

/// Feature rows with their (possibly missing) labels.
#[derive(Debug, Default, Clone)]
pub struct Dataset {
    pub dim: usize,
    pub x: Vec<f32>,
    pub intent: Vec<u32>,
    pub intent_mask: Vec<f32>,
    pub domain: Vec<u32>,
    pub domain_mask: Vec<f32>,
    pub complexity: Vec<f32>,
    pub complexity_mask: Vec<f32>,
    /// Whether the strongest model answered the row right (graded rows only).
    pub strong: Vec<f32>,
    pub strong_mask: Vec<f32>,
    /// Per-row loss weight (e.g. real prompts weigh more than template rows).
    pub weight: Vec<f32>,
}

impl Dataset {
    /// Appends `other`'s rows (same feature dimension).
    pub fn append(&mut self, other: Dataset) {
        self.dim = self.dim.max(other.dim);
        self.x.extend(other.x);
        self.intent.extend(other.intent);
        self.intent_mask.extend(other.intent_mask);
        self.domain.extend(other.domain);
        self.domain_mask.extend(other.domain_mask);
        self.complexity.extend(other.complexity);
        self.complexity_mask.extend(other.complexity_mask);
        self.strong.extend(other.strong);
        self.strong_mask.extend(other.strong_mask);
        self.weight.extend(other.weight);
    }

    pub fn len(&self) -> usize {
        self.weight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }

    pub(crate) fn tensors(&self, idx: &[usize], dev: &Device) -> candle_core::Result<Batch> {
        let d = self.dim;
        let mut x = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
        }
        let pick_u = |v: &[u32]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let pick_f = |v: &[f32]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let n = idx.len();
        Ok(Batch {
            x: Tensor::from_vec(x, (n, d), dev)?,
            intent: Tensor::from_vec(pick_u(&self.intent), n, dev)?,
            intent_w: Tensor::from_vec(
                mul(&pick_f(&self.intent_mask), &pick_f(&self.weight)),
                n,
                dev,
            )?,
            domain: Tensor::from_vec(pick_u(&self.domain), n, dev)?,
            domain_w: Tensor::from_vec(
                mul(&pick_f(&self.domain_mask), &pick_f(&self.weight)),
                n,
                dev,
            )?,
            cx: Tensor::from_vec(pairs(&self.complexity, &self.strong, idx), (n, 2), dev)?,
            cx_w: Tensor::from_vec(
                pairs(&self.complexity_mask, &self.strong_mask, idx),
                (n, 2),
                dev,
            )?,
        })
    }
}

/// Rows `idx` of two columns, interleaved (row-major (n, 2)).
fn pairs(a: &[f32], b: &[f32], idx: &[usize]) -> Vec<f32> {
    idx.iter().flat_map(|&i| [a[i], b[i]]).collect()
}

fn mul(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

pub(crate) struct Batch {
    pub(crate) x: Tensor,
    intent: Tensor,
    intent_w: Tensor,
    domain: Tensor,
    domain_w: Tensor,
    /// (n, 2): P(small fails) target, strongest-model-right target; `cx_w` masks each.
    cx: Tensor,
    cx_w: Tensor,
}

/// Hyper-parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FitConfig {
    pub hidden: usize,
    pub max_epochs: usize,
    pub patience: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub dropout: f32,
    pub seed: u64,
}

/// One epoch's numbers, for progress output.
#[derive(Debug, Clone)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub dev_loss: f64,
    pub dev_intent_accuracy: f64,
}

pub struct FitResult {
    pub varmap: VarMap,
    pub heads: Heads,
    pub best_epoch: usize,
    pub history: Vec<EpochLog>,
}

/// Weighted mean of per-row negative log-likelihood; 0 when no row has the label.
fn masked_nll(logits: &Tensor, labels: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let denom = (w.sum_all()? + 1e-6)?;
    (picked.neg()? * w)?.sum_all()?.broadcast_div(&denom)
}

/// Masked binary cross-entropy with logits.
fn masked_bce(z: &Tensor, y: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let loss = ((z.relu()? - (z * y)?)? + softplus)?;
    let denom = (w.sum_all()? + 1e-6)?;
    (loss * w)?.sum_all()?.broadcast_div(&denom)
}

pub(crate) fn loss(out: &HeadOutputs, b: &Batch) -> candle_core::Result<Tensor> {
    let li = masked_nll(&out.intent, &b.intent, &b.intent_w)?;
    let ld = masked_nll(&out.domain, &b.domain, &b.domain_w)?;
    let mut total = (li + ld)?;
    // Each complexity output has its own mask and mean (older heads have only the first).
    for c in 0..out.complexity.dim(1)? {
        let col = |t: &Tensor| t.narrow(1, c, 1);
        total = (total + masked_bce(&col(&out.complexity)?, &col(&b.cx)?, &col(&b.cx_w)?)?)?;
    }
    Ok(total)
}

/// Torch-style uniform init, drawn from our seeded RNG.
pub(crate) fn seeded_varmap(
    shapes: &[(String, Vec<usize>)],
    rng: &mut StdRng,
    dev: &Device,
) -> candle_core::Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = vars(&varmap)?;
        for (name, shape) in shapes {
            let fan_in = if shape.len() == 2 {
                shape[1]
            } else {
                shapes
                    .iter()
                    .find(|(n, _)| n == &name.replace(".bias", ".weight"))
                    .map(|(_, s)| s[1])
                    .unwrap_or(1)
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            data.insert(
                name.clone(),
                Var::from_tensor(&Tensor::from_vec(v, shape.as_slice(), dev)?)?,
            );
        }
    }
    Ok(varmap)
}

pub(crate) fn head_shapes(
    inputs: usize,
    hidden: usize,
    outputs: Outputs,
) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for (head, outputs) in [
        ("intent", outputs.intent),
        ("domain", outputs.domain),
        ("complexity", outputs.complexity),
    ] {
        let out_in = if hidden == 0 { inputs } else { hidden };
        if hidden > 0 {
            v.push((format!("{head}.hidden.weight"), vec![hidden, inputs]));
            v.push((format!("{head}.hidden.bias"), vec![hidden]));
        }
        v.push((format!("{head}.out.weight"), vec![outputs, out_in]));
        v.push((format!("{head}.out.bias"), vec![outputs]));
    }
    v
}

pub(crate) fn dropout_masks(
    rng: &mut StdRng,
    n: usize,
    hidden: usize,
    p: f32,
    dev: &Device,
) -> candle_core::Result<Option<[Tensor; 3]>> {
    if hidden == 0 || p <= 0.0 {
        return Ok(None);
    }
    let scale = 1.0 / (1.0 - p);
    let mut one = || -> candle_core::Result<Tensor> {
        let v: Vec<f32> = (0..n * hidden)
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { scale })
            .collect();
        Tensor::from_vec(v, (n, hidden), dev)
    };
    Ok(Some([one()?, one()?, one()?]))
}

/// Dev loss and intent accuracy with the current weights (no dropout).
pub fn evaluate(heads: &Heads, ds: &Dataset, dev: &Device) -> candle_core::Result<(f64, f64)> {
    evaluate_with(ds, 4096, dev, |_, b| heads.forward(&b.x, None))
}

/// Mean loss and intent accuracy of `ds`, scored in chunks by `forward` (which gets the
/// chunk's row indices and its batch).
pub(crate) fn evaluate_with(
    ds: &Dataset,
    chunk_size: usize,
    dev: &Device,
    mut forward: impl FnMut(&[usize], &Batch) -> candle_core::Result<HeadOutputs>,
) -> candle_core::Result<(f64, f64)> {
    let idx: Vec<usize> = (0..ds.len()).collect();
    let (mut total, mut hits, mut labelled) = (0.0, 0.0, 0.0);
    for chunk in idx.chunks(chunk_size) {
        let b = ds.tensors(chunk, dev)?;
        let out = forward(chunk, &b)?;
        total += loss(&out, &b)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        let pred = out.intent.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (j, &i) in chunk.iter().enumerate() {
            if ds.intent_mask[i] > 0.0 {
                labelled += 1.0;
                hits += f64::from(u8::from(pred[j] == ds.intent[i]));
            }
        }
    }
    Ok((
        total / ds.len().max(1) as f64,
        hits / f64::max(labelled, 1.0),
    ))
}

/// Trains the heads. `init` warm-starts them; `only` (head names) trains those heads alone and
/// keeps the others at their `init` values. `progress` is called after every epoch; a
/// `Break` stops training there (its caller has gone), keeping the best epoch so far.
pub fn fit(
    train: &Dataset,
    dev_set: &Dataset,
    outputs: Outputs,
    cfg: &FitConfig,
    init: Option<&[(String, Tensor)]>,
    only: Option<&[&str]>,
    progress: &mut dyn FnMut(&EpochLog) -> ControlFlow<()>,
) -> candle_core::Result<FitResult> {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let shapes = head_shapes(train.dim, cfg.hidden, outputs);
    let varmap = seeded_varmap(&shapes, &mut rng, &dev)?;
    if let Some(w) = init {
        for name in warm_start(&varmap, w)? {
            tracing::warn!(tensor = %name, "warm start: shape differs, starts from the seeded init");
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let heads = Heads::new(vb, train.dim, cfg.hidden, outputs)?;
    let params = ParamsAdamW {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars_of(&varmap, only)?, params)?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let (mut best, mut best_epoch, mut best_weights) = (f64::INFINITY, 0, snapshot(&varmap)?);
    let mut history = Vec::new();
    for epoch in 1..=cfg.max_epochs {
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let b = train.tensors(chunk, &dev)?;
            let masks = dropout_masks(&mut rng, chunk.len(), cfg.hidden, cfg.dropout, &dev)?;
            let l = loss(&heads.forward(&b.x, masks.as_ref())?, &b)?;
            opt.backward_step(&l)?;
            sum += l.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        }
        let (dev_loss, acc) = evaluate(&heads, dev_set, &dev)?;
        let log = EpochLog {
            epoch,
            train_loss: sum / train.len().max(1) as f64,
            dev_loss,
            dev_intent_accuracy: acc,
        };
        let flow = progress(&log);
        history.push(log);
        if dev_loss < best {
            (best, best_epoch, best_weights) = (dev_loss, epoch, snapshot(&varmap)?);
        } else if epoch - best_epoch >= cfg.patience {
            break;
        }
        if flow.is_break() {
            break;
        }
    }
    restore(&varmap, &best_weights)?;
    Ok(FitResult {
        varmap,
        heads,
        best_epoch,
        history,
    })
}

pub(crate) fn snapshot(varmap: &VarMap) -> candle_core::Result<Vec<(String, Tensor)>> {
    let data = vars(varmap)?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// The Vars of the heads named in `only`, or all of them.
fn vars_of(varmap: &VarMap, only: Option<&[&str]>) -> candle_core::Result<Vec<Var>> {
    let data = vars(varmap)?;
    let vars: Vec<Var> = data
        .iter()
        .filter(|(k, _)| {
            only.is_none_or(|heads| heads.iter().any(|h| k.starts_with(&format!("{h}."))))
        })
        .map(|(_, v)| v.clone())
        .collect();
    if vars.is_empty() {
        return Err(candle_core::Error::Msg(format!("no head named {only:?}")));
    }
    Ok(vars)
}

/// Copies `weights` into `varmap` where name and shape match (a warm start from a head of an
/// older format keeps the seeded init for the tensors that changed shape); returns the
/// names that were skipped.
pub(crate) fn warm_start(
    varmap: &VarMap,
    weights: &[(String, Tensor)],
) -> candle_core::Result<Vec<String>> {
    let data = vars(varmap)?;
    let mut skipped = Vec::new();
    for (k, t) in weights {
        match data.get(k) {
            Some(v) if v.shape() == t.shape() => v.set(t)?,
            Some(_) => skipped.push(k.clone()),
            None => {}
        }
    }
    Ok(skipped)
}

/// Copies `weights` (a snapshot of the same heads) back into `varmap`.
pub(crate) fn restore(varmap: &VarMap, weights: &[(String, Tensor)]) -> candle_core::Result<()> {
    match warm_start(varmap, weights)?.first() {
        Some(name) => Err(candle_core::Error::Msg(format!(
            "restore: {name} changed shape"
        ))),
        None => Ok(()),
    }
}

/// The VarMap's name → Var table, locked.
fn vars(
    varmap: &VarMap,
) -> candle_core::Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Var>>> {
    varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("varmap lock".into()))
}

/// Temperature minimising the NLL of `logits` (rows, classes) on labelled rows.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[Option<usize>]) -> f32 {
    let nll = |t: f32| -> f64 {
        let mut s = 0.0;
        for (row, y) in logits.iter().zip(labels) {
            let Some(y) = y else { continue };
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|v| (((v - m) / t) as f64).exp()).sum();
            s += z.ln() - ((row[*y] - m) / t) as f64;
        }
        s
    };
    let mut best = (1.0f32, f64::INFINITY);
    let mut t = 0.25f32;
    while t <= 5.0 {
        let v = nll(t);
        if v < best.1 {
            best = (t, v);
        }
        t += 0.025;
    }
    best.0
}
