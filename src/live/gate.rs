//! The evaluation gate: a labelled set every candidate classifier is scored on, beside the
//! live one, before it may go live. Embeddings of the set are computed once per encoder.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::classify::Classifier;
use crate::dataset::{self, Row};
use crate::embed::model::SentenceEncoder;
use crate::embed::TextTokenizer;

/// Why the gate set could not be loaded or a classifier could not be scored on it.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("gate set {path}: {message}")]
    Load {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("embedding the gate set: {0}")]
    Embed(#[from] crate::embed::EmbedError),
    #[error("embedding the gate set: {0}")]
    Model(#[from] candle_core::Error),
    #[error("scoring on the gate set: {0}")]
    Classify(#[from] crate::classify::ClassifyError),
    #[error("the classifier produced NaN or Inf on the gate set")]
    NonFinite,
}

/// (embedding, tokens the encoder saw) per gate row.
pub type GateFeatures = Arc<Vec<(Vec<f32>, u32)>>;

/// The gate's labelled rows.
pub struct GateSet {
    pub rows: Vec<Row>,
}

impl GateSet {
    pub fn load(path: &Path) -> Result<Self, GateError> {
        let err = |message: String| GateError::Load {
            path: path.to_path_buf(),
            message,
        };
        let (rows, bad) =
            dataset::read_all(&[path.to_path_buf()]).map_err(|e| err(e.to_string()))?;
        if let Some(b) = bad.first() {
            return Err(err(b.to_string()));
        }
        if rows.iter().filter(|r| r.intent.is_some()).count() < 20 {
            return Err(err("fewer than 20 rows with an intent label".into()));
        }
        Ok(Self { rows })
    }

    /// Embeds every row with `model` directly (not through the live queue: a full-model
    /// candidate is not live yet). Blocking; run it off the async runtime.
    pub fn embed(
        &self,
        model: &SentenceEncoder,
        tok: &TextTokenizer,
    ) -> Result<Vec<(Vec<f32>, u32)>, GateError> {
        let mut out = Vec::with_capacity(self.rows.len());
        for chunk in self.rows.chunks(16) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|r| tok.encode(&r.text).map(|e| e.ids))
                .collect::<Result<_, _>>()?;
            let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
            let vecs = model.embed_ids(&seqs)?;
            out.extend(vecs.into_iter().zip(ids.iter().map(|i| i.len() as u32)));
        }
        Ok(out)
    }

    /// Intent and domain accuracy (rows whose label the classifier knows) and complexity MAE.
    pub fn score(
        &self,
        c: &Classifier,
        features: &[(Vec<f32>, u32)],
    ) -> Result<BTreeMap<String, f64>, GateError> {
        let (mut ih, mut in_, mut dh, mut dn, mut cerr, mut cn) = (0, 0, 0, 0, 0.0, 0);
        for (r, (v, t)) in self.rows.iter().zip(features) {
            let p = c.predict(v, *t as usize, Some(0.0))?;
            let mut probs = p.intent_probs.iter().chain(&p.domain_probs);
            if !probs.all(|x| x.is_finite()) || !p.complexity.is_finite() {
                return Err(GateError::NonFinite);
            }
            if let Some(l) = &r.intent {
                in_ += 1;
                ih += usize::from(*l == p.intent);
            }
            if let Some(l) = &r.domain {
                dn += 1;
                dh += usize::from(*l == p.domain);
            }
            if let Some(x) = r.complexity {
                cn += 1;
                cerr += (x - p.small_fails).abs() as f64;
            }
        }
        let ratio = |h: usize, n: usize| if n == 0 { 0.0 } else { h as f64 / n as f64 };
        Ok(BTreeMap::from([
            ("gate_intent_accuracy".into(), ratio(ih, in_)),
            ("gate_domain_accuracy".into(), ratio(dh, dn)),
            (
                "gate_complexity_mae".into(),
                if cn == 0 { 0.0 } else { cerr / cn as f64 },
            ),
            ("gate_rows".into(), self.rows.len() as f64),
        ]))
    }
}

/// Where `candidate` falls more than `margin` below `live`; empty = it passes.
pub fn shortfalls(
    live: &BTreeMap<String, f64>,
    candidate: &BTreeMap<String, f64>,
    margin: f64,
) -> Vec<String> {
    ["gate_intent_accuracy", "gate_domain_accuracy"]
        .iter()
        .filter_map(|k| {
            let (l, c) = (live.get(*k)?, candidate.get(*k)?);
            (*c < *l - margin).then(|| {
                format!("{k} {c:.4} is more than {margin} below the live classifier's {l:.4}")
            })
        })
        .collect()
}
