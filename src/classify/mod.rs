//! Embedding → intent, domain, complexity. Owns the head artifact format (weights +
//! `classifier.json` metadata), its validation against the live encoder, and inference.
//! Training lives in `train`; this module must stay cheap enough for the request path.
pub mod artifact;
pub mod heads;
pub mod input;
pub mod language;
pub mod spell;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::embed::EncoderInfo;
use heads::{calibrated_softmax, length_feature, Heads, EXTRA_FEATURES};

pub const META_FILE: &str = "classifier.json";
pub const WEIGHTS_FILE: &str = "heads.safetensors";

/// Errors loading or running a classifier.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    /// A head trained on another encoder; the message names both identities.
    #[error("{0}")]
    EncoderMismatch(String),
    #[error("embedding has {got} values, classifier expects {want}")]
    Dimension { got: usize, want: usize },
    #[error("classifier forward failed: {0}")]
    Model(#[from] candle_core::Error),
}

/// The encoder a head was trained on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncoderRef {
    pub name: String,
    pub sha256: String,
}

/// Everything about a head that is not a weight. Stored as `classifier.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierMeta {
    pub format: u32,
    /// Content hash of weights + labels + encoder + calibration.
    pub version: String,
    pub encoder: EncoderRef,
    pub intent_labels: Vec<String>,
    pub domain_labels: Vec<String>,
    pub inputs: usize,
    pub hidden: usize,
    pub intent_temperature: f32,
    pub domain_temperature: f32,
    pub abstain_threshold: f32,
    /// Outputs of the complexity head (`heads::complexity_score`); files from before the
    /// two-output head have one.
    #[serde(default = "one_output")]
    pub complexity_outputs: usize,
    /// Data hash, seed and hyper-parameters of the run that produced it.
    pub training: BTreeMap<String, serde_json::Value>,
    /// Languages of its training rows as the detector tells them (ISO 639-3 → rows;
    /// `language::UNDETERMINED` for unsure ones). Empty for artifacts from before it was
    /// recorded: those never abstain on language.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub languages: BTreeMap<String, u64>,
    /// Dev-split metrics of that run.
    pub metrics: BTreeMap<String, f64>,
}

fn one_output() -> usize {
    1
}

/// One prompt's classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub intent: String,
    pub intent_probs: Vec<f32>,
    pub domain: String,
    pub domain_probs: Vec<f32>,
    /// Routing score in [0, 1] (`heads::complexity_score`).
    pub complexity: f32,
    /// P(a small model fails the prompt): what the data's complexity values measure.
    pub small_fails: f32,
    /// P(strong right) − P(small right), unclamped (`complexity` is this clamped to [0, 1]).
    pub strong_gain: f32,
    /// The prompt's language (set by the engine from the text; the heads do not see it).
    pub language: language::Language,
    pub confidence: f32,
    pub abstained: bool,
    /// Set when it abstained because the prompt's language was this share of its training
    /// rows, under the configured minimum (`apply_language`).
    pub untrained_language_share: Option<f32>,
}

impl Prediction {
    /// Why it abstained, as the API and the decision log name it; empty when it did not.
    pub fn abstain_reason(&self) -> &'static str {
        match (self.abstained, self.untrained_language_share) {
            (false, _) => "",
            (true, Some(_)) => "untrained_language",
            (true, None) => "low_confidence",
        }
    }
}

/// The classifier's input for one prompt: the embedding and the tokens the encoder saw. The
/// decision log keeps it, so heads can be retrained without the prompt's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub embedding: Vec<f32>,
    pub tokens: u32,
}

/// A loaded, validated classifier.
pub struct Classifier {
    pub meta: ClassifierMeta,
    heads: Heads,
    /// The same weights as plain vectors, for one prompt at a time.
    fast: [heads::FastMlp; 3],
    /// Typo repair applied to a prompt before embedding (`prepare`); None for heads saved
    /// without a lexicon.
    spell: Option<std::sync::Arc<spell::SpellFixer>>,
    /// The safetensors bytes it was built from (warm start for retraining, inline transfer).
    pub weights: Vec<u8>,
    pub dir: PathBuf,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("version", &self.meta.version)
            .field("dir", &self.dir)
            .finish()
    }
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> ClassifyError {
    ClassifyError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The encoder a classifier folder carries (`encoder/`, written by fine-tuning), if any: such a
/// folder is one unit and must run with that encoder, not the configured one.
pub fn own_encoder(dir: &Path) -> Option<std::path::PathBuf> {
    let enc = dir.join("encoder");
    enc.join("model.safetensors").is_file().then_some(enc)
}

/// Content hash used as the version id.
pub fn content_version(weights: &[u8], meta: &ClassifierMeta) -> String {
    let mut h = Sha256::new();
    h.update(weights);
    let identity = serde_json::json!([
        meta.encoder,
        meta.intent_labels,
        meta.domain_labels,
        meta.hidden,
        meta.intent_temperature,
        meta.domain_temperature
    ]);
    h.update(identity.to_string().as_bytes());
    hex::encode(&h.finalize()[..8])
}

impl ClassifierMeta {
    /// Output sizes of the heads this metadata describes.
    pub fn outputs(&self) -> heads::Outputs {
        heads::Outputs {
            intent: self.intent_labels.len(),
            domain: self.domain_labels.len(),
            complexity: self.complexity_outputs,
        }
    }
}

impl Classifier {
    /// Loads `dir`, checking the encoder identity, shapes and finiteness of every weight.
    pub fn load(dir: &Path, encoder: &EncoderInfo) -> Result<Self, ClassifyError> {
        let meta_path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&meta_path).map_err(|e| load_err(&meta_path, e))?;
        let meta: ClassifierMeta =
            serde_json::from_str(&text).map_err(|e| load_err(&meta_path, e))?;
        if meta.encoder.sha256 != encoder.weights_sha256 {
            return Err(ClassifyError::EncoderMismatch(format!(
                "classifier {} was trained for encoder {} (sha256 {}), but the live encoder is {} (sha256 {})",
                dir.display(),
                meta.encoder.name,
                meta.encoder.sha256,
                encoder.name,
                encoder.weights_sha256
            )));
        }
        if meta.inputs != encoder.dim + EXTRA_FEATURES {
            return Err(load_err(
                &meta_path,
                format!(
                    "inputs {} != encoder dim {} + {EXTRA_FEATURES}",
                    meta.inputs, encoder.dim
                ),
            ));
        }
        if meta.intent_labels.is_empty() || meta.domain_labels.is_empty() {
            return Err(load_err(&meta_path, "empty label set"));
        }
        if !(1..=heads::COMPLEXITY_OUTPUTS).contains(&meta.complexity_outputs) {
            return Err(load_err(
                &meta_path,
                format!(
                    "complexity_outputs {} is not 1 or {}",
                    meta.complexity_outputs,
                    heads::COMPLEXITY_OUTPUTS
                ),
            ));
        }
        let weights = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).map_err(|e| load_err(&weights, e))?;
        Self::from_parts(meta, &bytes, dir)
    }

    /// Builds from metadata and safetensors bytes (a folder or an inline upload).
    pub fn from_parts(
        meta: ClassifierMeta,
        weights: &[u8],
        dir: &Path,
    ) -> Result<Self, ClassifyError> {
        let device = Device::Cpu;
        let wpath = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load_buffer(weights, &device)
            .map_err(|e| load_err(&wpath, e))?;
        for (name, t) in &tensors {
            let finite = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| load_err(&wpath, e))?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                return Err(load_err(&wpath, format!("tensor {name} holds NaN or Inf")));
            }
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let heads = Heads::new(vb, meta.inputs, meta.hidden, meta.outputs())
            .map_err(|e| load_err(&wpath, format!("shape mismatch with classifier.json: {e}")))?;
        let fast = [
            heads::FastMlp::from(&heads.intent)?,
            heads::FastMlp::from(&heads.domain)?,
            heads::FastMlp::from(&heads.complexity)?,
        ];
        let spell = lexicon(weights)
            .map_err(|e| load_err(&wpath, e))?
            .map(|l| spell::SpellFixer::shared(&l));
        Ok(Self {
            meta,
            heads,
            fast,
            spell,
            weights: weights.to_vec(),
            dir: dir.to_path_buf(),
        })
    }

    /// Builds from a trained VarMap (training path).
    pub fn from_varmap(
        meta: ClassifierMeta,
        varmap: &VarMap,
        dir: &Path,
    ) -> Result<Self, ClassifyError> {
        let bytes = varmap_bytes(varmap, None)?;
        Self::from_parts(meta, &bytes, dir)
    }

    /// The text the encoder should see for `text`: with one-edit typos repaired when the
    /// classifier carries a lexicon (`spell`), else `text` itself.
    pub fn prepare<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.spell {
            Some(f) => f.fix(text),
            None => std::borrow::Cow::Borrowed(text),
        }
    }

    /// Gives `p` the prompt's language and, when `min_share` is set, abstains if the training
    /// data had less than that share of it: the heads' confidence does not know what the
    /// encoder cannot read.
    pub fn apply_language(
        &self,
        p: &mut Prediction,
        language: language::Language,
        min_share: Option<f64>,
    ) {
        if let Some(share) =
            min_share.and_then(|m| language::untrained_share(&self.meta.languages, &language, m))
        {
            p.abstained = true;
            p.untrained_language_share = Some(share as f32);
        }
        p.language = language;
    }

    /// Whether `prepare` repairs typos.
    pub fn repairs_typos(&self) -> bool {
        self.spell.is_some()
    }

    pub fn version(&self) -> &str {
        &self.meta.version
    }

    /// Feature row for one prompt: embedding ⊕ length feature.
    pub fn features(embedding: &[f32], tokens: usize) -> Vec<f32> {
        let mut f = Vec::with_capacity(embedding.len() + EXTRA_FEATURES);
        f.extend_from_slice(embedding);
        f.push(length_feature(tokens));
        f
    }

    /// Classifies a batch of feature rows (b, inputs).
    pub fn predict_features(
        &self,
        x: &Tensor,
        threshold: Option<f32>,
    ) -> Result<Vec<Prediction>, ClassifyError> {
        let out = self.heads.forward(x, None)?;
        let ip = calibrated_softmax(&out.intent, self.meta.intent_temperature)?.to_vec2::<f32>()?;
        let dp = calibrated_softmax(&out.domain, self.meta.domain_temperature)?.to_vec2::<f32>()?;
        let logits = out.complexity.to_vec2::<f32>()?;
        let cx = logits.iter().map(|z| heads::complexity_score(z));
        Ok(ip
            .into_iter()
            .zip(dp)
            .zip(cx)
            .map(|((ip, dp), c)| self.prediction(ip, dp, c, threshold))
            .collect())
    }

    fn prediction(
        &self,
        ip: Vec<f32>,
        dp: Vec<f32>,
        c: heads::Complexity,
        threshold: Option<f32>,
    ) -> Prediction {
        let threshold = threshold.unwrap_or(self.meta.abstain_threshold);
        let (ii, conf) = argmax(&ip);
        let (di, _) = argmax(&dp);
        Prediction {
            intent: self.meta.intent_labels[ii].clone(),
            domain: self.meta.domain_labels[di].clone(),
            intent_probs: ip,
            domain_probs: dp,
            complexity: c.score,
            small_fails: c.small_fails,
            strong_gain: c.strong_gain,
            language: language::Language::default(),
            confidence: conf,
            abstained: conf < threshold,
            untrained_language_share: None,
        }
    }

    /// Classifies one embedded prompt.
    pub fn predict(
        &self,
        embedding: &[f32],
        tokens: usize,
        threshold: Option<f32>,
    ) -> Result<Prediction, ClassifyError> {
        let want = self.meta.inputs - EXTRA_FEATURES;
        if embedding.len() != want {
            return Err(ClassifyError::Dimension {
                got: embedding.len(),
                want,
            });
        }
        let f = Self::features(embedding, tokens);
        let ip = heads::softmax_t(&self.fast[0].forward(&f), self.meta.intent_temperature);
        let dp = heads::softmax_t(&self.fast[1].forward(&f), self.meta.domain_temperature);
        let cx = heads::complexity_score(&self.fast[2].forward(&f));
        Ok(self.prediction(ip, dp, cx, threshold))
    }

    /// Writes `classifier.json` and `heads.safetensors` into `dir`.
    pub fn save_parts(
        dir: &Path,
        meta: &ClassifierMeta,
        weights: &[u8],
    ) -> Result<(), ClassifyError> {
        std::fs::create_dir_all(dir).map_err(|e| load_err(dir, e))?;
        let wpath = dir.join(WEIGHTS_FILE);
        std::fs::write(&wpath, weights).map_err(|e| load_err(&wpath, e))?;
        let mpath = dir.join(META_FILE);
        let text = serde_json::to_string_pretty(meta).map_err(|e| load_err(&mpath, e))?;
        std::fs::write(&mpath, text + "\n").map_err(|e| load_err(&mpath, e))
    }
}

/// The typo-repair lexicon stored in heads' safetensors metadata, if any.
pub fn lexicon(weights: &[u8]) -> Result<Option<String>, safetensors::SafeTensorError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(weights)?;
    Ok(meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(spell::LEXICON_KEY).cloned()))
}

/// Serialises a VarMap's tensors to safetensors bytes (sorted names, deterministic), with the
/// typo-repair lexicon in the metadata when given.
pub fn varmap_bytes(varmap: &VarMap, lexicon: Option<&str>) -> Result<Vec<u8>, ClassifyError> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    let mut named: Vec<(String, Tensor)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    drop(data);
    let info = lexicon.map(|l| {
        std::collections::HashMap::from([(spell::LEXICON_KEY.to_string(), l.to_string())])
    });
    safetensors::tensor::serialize(named, info).map_err(|e| {
        ClassifyError::Model(candle_core::Error::Msg(format!("serialising heads: {e}")))
    })
}

/// Index and value of the largest element.
pub fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
}
