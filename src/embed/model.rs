//! The loaded sentence encoder: weights, config, pooling and identity. Synchronous; the
//! worker threads own the calls. Must not be used from async code directly.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::bert::{l2_normalize, max_pool_normalize, mean_pool_normalize, Bert, BertConfig, Mode};
use super::EmbedError;

/// How token vectors become one sentence vector (sentence-transformers' 1_Pooling).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// Who the encoder is: heads trained on one encoder must not be used with another.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderInfo {
    pub name: String,
    pub weights_sha256: String,
    pub dim: usize,
    pub dir: PathBuf,
}

/// A BERT- or XLM-RoBERTa-family sentence encoder on one device.
pub struct SentenceEncoder {
    bert: Bert,
    pooling: Pooling,
    device: Device,
    info: EncoderInfo,
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Load(format!("{}: {e}", path.display()))
}

/// Copies an encoder folder's small files (config, tokenizer, pooling, licence) from `from` to
/// `to`; the weights are the caller's to write.
pub fn copy_encoder_files(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to.join("1_Pooling"))?;
    for f in [
        "config.json",
        "tokenizer.json",
        "1_Pooling/config.json",
        "LICENSE",
    ] {
        if from.join(f).is_file() {
            std::fs::copy(from.join(f), to.join(f))?;
        }
    }
    Ok(())
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, EmbedError> {
    let bytes = std::fs::read(path).map_err(|e| load_err(path, e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and (optionally) `1_Pooling/config.json`
    /// from `dir`. Weights of any float dtype are converted to f32 for compute.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| load_err(&cfg_path, e))?;
        let cfg: BertConfig =
            serde_json::from_str(&cfg_text).map_err(|e| load_err(&cfg_path, e))?;
        cfg.validate().map_err(|e| load_err(&cfg_path, e))?;
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| load_err(&weights, e))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let bert = Bert::load(vb, &cfg).map_err(|e| load_err(&weights, e))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "encoder".into());
        let info = EncoderInfo {
            name,
            weights_sha256: sha256_file(&weights)?,
            dim: cfg.hidden_size,
            dir: dir.to_path_buf(),
        };
        Ok(Self {
            bert,
            pooling: read_pooling(dir)?,
            device: device.clone(),
            info,
        })
    }

    pub fn info(&self) -> &EncoderInfo {
        &self.info
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// Longest sequence (special tokens included) the position table allows.
    pub fn max_positions(&self) -> usize {
        self.bert.config().max_tokens()
    }

    /// Pads `seqs` to the longest, returns (ids, mask) tensors of shape (b, l).
    pub fn batch_tensors(&self, seqs: &[&[u32]]) -> candle_core::Result<(Tensor, Tensor)> {
        let l = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let b = seqs.len();
        let mut ids = vec![0u32; b * l];
        let mut mask = vec![0u32; b * l];
        for (row, s) in seqs.iter().enumerate() {
            ids[row * l..row * l + s.len()].copy_from_slice(s);
            mask[row * l..row * l + s.len()].fill(1);
        }
        Ok((
            Tensor::from_vec(ids, (b, l), &self.device)?,
            Tensor::from_vec(mask, (b, l), &self.device)?,
        ))
    }

    /// Forward + pooling + L2 normalisation: one unit vector per sequence.
    pub fn embed_ids(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, mask) = self.batch_tensors(seqs)?;
        let hidden = self.bert.forward(&ids, &mask, Mode::Inference)?;
        let pooled = match self.pooling {
            Pooling::Mean => mean_pool_normalize(&hidden, &mask)?,
            Pooling::Cls => l2_normalize(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?,
            Pooling::Max => max_pool_normalize(&hidden, &mask)?,
        };
        pooled.to_dtype(DType::F32)?.to_vec2()
    }
}

fn read_pooling(dir: &Path) -> Result<Pooling, EmbedError> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.exists() {
        return Ok(Pooling::Mean);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| load_err(&path, e))?;
    let p: PoolingFile = serde_json::from_str(&text).map_err(|e| load_err(&path, e))?;
    // sentence-transformers concatenates the vectors of every mode switched on; one mode
    // keeps the embedding the model's own size, which is what its users compare.
    let modes = [
        (p.pooling_mode_mean_tokens, Some(Pooling::Mean)),
        (p.pooling_mode_cls_token, Some(Pooling::Cls)),
        (p.pooling_mode_max_tokens, Some(Pooling::Max)),
        (p.pooling_mode_mean_sqrt_len_tokens, None),
        (p.pooling_mode_weightedmean_tokens, None),
        (p.pooling_mode_lasttoken, None),
    ];
    let on: Vec<_> = modes.iter().filter(|(on, _)| *on).collect();
    match on.as_slice() {
        [(_, Some(mode))] => Ok(*mode),
        _ => Err(load_err(
            &path,
            "exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token or \
             pooling_mode_max_tokens must be true (other modes and combinations are not supported)",
        )),
    }
}
