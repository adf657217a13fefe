//! A BERT encoder: all-MiniLM-L6-v2 and any checkpoint of the BERT family (MiniLM, bge, gte,
//! e5) or the XLM-RoBERTa family (multilingual MiniLM, multilingual-e5), which differ only in
//! weight-name prefix, segment table size and where position ids start.
//! Written here rather than using candle-transformers' `BertModel` for two reasons: inference
//! uses fused QKV and the fused softmax/layer-norm kernels, and training mode uses the
//! differentiable ops (the stock model silently drops encoder gradients, see shared notes).
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::kernels;

/// The fields of a Hugging Face `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// "bert", "roberta", "xlm-roberta", …; decides where position ids start.
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Only "absolute" position embeddings exist in these families' sentence encoders.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

/// Largest dimensions accepted from a config.json: past these a hostile file could ask for
/// tables of many GiB before a weight is read.
const MAX_HIDDEN: usize = 8_192;
const MAX_LAYERS: usize = 64;
const MAX_VOCAB: usize = 1_000_000;
const MAX_POSITIONS: usize = 16_384;

impl BertConfig {
    /// First position id of a sequence. RoBERTa-style models number positions from
    /// `padding_idx + 1` (the pad id's row of the position table is reserved); BERT from 0.
    pub fn position_offset(&self) -> usize {
        match self.model_type.as_deref() {
            Some("roberta" | "xlm-roberta" | "camembert") => {
                self.pad_token_id.unwrap_or(1) as usize + 1
            }
            _ => 0,
        }
    }

    /// Longest sequence (special tokens included) the position table covers.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Rejects configs this forward pass cannot run, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let bounded = |name: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(format!("{name} {v} is outside 1..={max}"))
            } else {
                Ok(())
            }
        };
        bounded("hidden_size", self.hidden_size, MAX_HIDDEN)?;
        bounded("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        bounded(
            "num_attention_heads",
            self.num_attention_heads,
            self.hidden_size,
        )?;
        bounded("intermediate_size", self.intermediate_size, 8 * MAX_HIDDEN)?;
        bounded("vocab_size", self.vocab_size, MAX_VOCAB)?;
        bounded(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_POSITIONS,
        )?;
        bounded("type_vocab_size", self.type_vocab_size, 16)?;
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps {} must be positive",
                self.layer_norm_eps
            ));
        }
        if let Some(t) = self
            .position_embedding_type
            .as_deref()
            .filter(|t| *t != "absolute")
        {
            return Err(format!(
                "position_embedding_type \"{t}\" is not supported (only \"absolute\")"
            ));
        }
        if self.max_tokens() < 3 {
            return Err(format!(
                "max_position_embeddings {} leaves no room for a sequence after the position offset {}",
                self.max_position_embeddings,
                self.position_offset()
            ));
        }
        Ok(())
    }
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Whether the graph must be differentiable (training) or fast (inference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Inference,
    /// Differentiable ops and dropout with this probability.
    Train {
        dropout: f32,
    },
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: VarBuilder, n: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(n, "weight")?,
            bias: vb.get(n, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        match mode {
            Mode::Inference => candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps),
            Mode::Train { .. } => {
                candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
            }
        }
    }
}

/// A dense layer applied to 2-D input `(rows, in)`.
struct Dense {
    weight: Tensor,
    bias: Tensor,
    /// (in, out) contiguous copy for inference: gemm then needs no repacking of the weight.
    /// Training uses `weight` so gradients reach the Var.
    weight_t: Tensor,
}

impl Dense {
    fn load(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Self> {
        Self::new(vb.get((out, inp), "weight")?, vb.get(out, "bias")?)
    }

    fn new(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        let weight_t = weight.t()?.contiguous()?.detach();
        Ok(Self {
            weight,
            bias,
            weight_t,
        })
    }

    fn matmul(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        match mode {
            Mode::Inference => x.matmul(&self.weight_t),
            Mode::Train { .. } => x.matmul(&self.weight.t()?),
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        self.matmul(x, mode)?.broadcast_add(&self.bias)
    }
}

fn dropout(x: Tensor, mode: Mode) -> candle_core::Result<Tensor> {
    match mode {
        Mode::Train { dropout } if dropout > 0.0 => candle_nn::ops::dropout(&x, dropout),
        _ => Ok(x),
    }
}

struct Layer {
    /// Separate projections for training (gradients reach each Var).
    q: Dense,
    k: Dense,
    v: Dense,
    /// Fused (3h, h) projection for inference, with 1/sqrt(d) folded into the query rows.
    qkv: Dense,
    /// Fused bias + residual + LayerNorm ops for inference (CPU).
    attn_fused: kernels::BiasResidualLayerNorm,
    out_fused: kernels::BiasResidualLayerNorm,
    attn_out: Dense,
    attn_ln: LayerNorm,
    inter: Dense,
    out: Dense,
    out_ln: LayerNorm,
    heads: usize,
    exact_gelu: bool,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        let sa = att.pp("self");
        let q = Dense::load(sa.pp("query"), h, h)?;
        let k = Dense::load(sa.pp("key"), h, h)?;
        let v = Dense::load(sa.pp("value"), h, h)?;
        // One (3h, h) matmul instead of three, and no separate pass to scale the queries.
        let scale = 1.0 / ((h / cfg.num_attention_heads) as f64).sqrt();
        let qkv = Dense::new(
            Tensor::cat(&[&(&q.weight * scale)?, &k.weight, &v.weight], 0)?.detach(),
            Tensor::cat(&[&(&q.bias * scale)?, &k.bias, &v.bias], 0)?.detach(),
        )?;
        let eps = cfg.layer_norm_eps;
        let attn_out = Dense::load(att.pp("output").pp("dense"), h, h)?;
        let attn_ln = LayerNorm::load(att.pp("output").pp("LayerNorm"), h, eps)?;
        let out = Dense::load(vb.pp("output").pp("dense"), cfg.intermediate_size, h)?;
        let out_ln = LayerNorm::load(vb.pp("output").pp("LayerNorm"), h, eps)?;
        let fused =
            |d: &Dense, ln: &LayerNorm| -> candle_core::Result<kernels::BiasResidualLayerNorm> {
                let cpu = |t: &Tensor| {
                    t.to_dtype(DType::F32)?
                        .to_device(&candle_core::Device::Cpu)?
                        .to_vec1::<f32>()
                };
                Ok(kernels::BiasResidualLayerNorm {
                    bias: cpu(&d.bias)?,
                    gamma: cpu(&ln.weight)?,
                    beta: cpu(&ln.bias)?,
                    eps: ln.eps,
                })
            };
        Ok(Self {
            q,
            k,
            v,
            qkv,
            attn_fused: fused(&attn_out, &attn_ln)?,
            out_fused: fused(&out, &out_ln)?,
            attn_out,
            attn_ln,
            inter: Dense::load(vb.pp("intermediate").pp("dense"), h, cfg.intermediate_size)?,
            out,
            out_ln,
            heads: cfg.num_attention_heads,
            exact_gelu: !matches!(
                cfg.hidden_act.as_deref(),
                Some("gelu_new" | "gelu_pytorch_tanh")
            ),
        })
    }

    /// `x`: (b*l, h) rows; `mask`: additive (b, 1, 1, l).
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        b: usize,
        l: usize,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let h = x.dim(1)?;
        let d = h / self.heads;
        let heads = |t: Tensor| {
            t.reshape((b, l, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = match mode {
            Mode::Inference => {
                let qkv = self
                    .qkv
                    .forward(x, mode)?
                    .reshape((b, l, 3, self.heads, d))?;
                let part = |i| {
                    qkv.narrow(2, i, 1)?
                        .squeeze(2)?
                        .transpose(1, 2)?
                        .contiguous()
                };
                (part(0)?, part(1)?, part(2)?)
            }
            Mode::Train { .. } => {
                let scale = 1.0 / (d as f64).sqrt();
                (
                    heads((self.q.forward(x, mode)? * scale)?)?,
                    heads(self.k.forward(x, mode)?)?,
                    heads(self.v.forward(x, mode)?)?,
                )
            }
        };
        let scores = q.matmul(&k.t()?)?;
        let probs = match mode {
            Mode::Inference => kernels::masked_softmax(&scores, mask)?,
            Mode::Train { .. } => candle_nn::ops::softmax(&scores.broadcast_add(mask)?, D::Minus1)?,
        };
        let probs = dropout(probs, mode)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * l, h))?;
        let cpu_inference =
            mode == Mode::Inference && x.device().is_cpu() && x.dtype() == DType::F32;
        let x = if cpu_inference {
            self.attn_out
                .matmul(&ctx, mode)?
                .apply_op2_no_bwd(x, &self.attn_fused)?
        } else {
            let attn = dropout(self.attn_out.forward(&ctx, mode)?, mode)?;
            self.attn_ln.forward(&(attn + x)?, mode)?
        };
        let inter = match (mode, self.exact_gelu) {
            (Mode::Inference, true) => {
                kernels::bias_gelu(&self.inter.matmul(&x, mode)?, &self.inter.bias)?
            }
            (_, true) => self.inter.forward(&x, mode)?.gelu_erf()?,
            (_, false) => self.inter.forward(&x, mode)?.gelu()?,
        };
        if cpu_inference {
            return self
                .out
                .matmul(&inter, mode)?
                .apply_op2_no_bwd(&x, &self.out_fused);
        }
        let out = dropout(self.out.forward(&inter, mode)?, mode)?;
        self.out_ln.forward(&(out + x)?, mode)
    }
}

/// The encoder: embeddings + transformer layers, producing one hidden vector per token.
pub struct Bert {
    word: candle_nn::Embedding,
    position: candle_nn::Embedding,
    token_type: candle_nn::Embedding,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    /// Layers below this index (and the embeddings) are frozen: they always run the fast
    /// inference path, whatever mode `forward` is given.
    train_from: usize,
    cfg: BertConfig,
}

/// Checkpoints saved from a task model carry the family's prefix (`bert.`, `roberta.`);
/// sentence-transformers folders usually have none.
fn unprefixed(vb: VarBuilder) -> VarBuilder {
    for prefix in ["bert", "roberta", "xlm-roberta"] {
        if vb.contains_tensor(&format!("{prefix}.embeddings.word_embeddings.weight")) {
            return vb.pp(prefix);
        }
    }
    vb
}

impl Bert {
    /// Loads weights with HF names, with or without the family's prefix.
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> candle_core::Result<Self> {
        Self::load_split(vb.clone(), vb, cfg, 0)
    }

    /// For fine-tuning the top layers: layers `train_from..` load from `top` (Vars, so they get
    /// gradients), the embeddings and lower layers from `frozen`.
    pub fn load_split(
        frozen: VarBuilder,
        top: VarBuilder,
        cfg: &BertConfig,
        train_from: usize,
    ) -> candle_core::Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let (vb, top) = (unprefixed(frozen), unprefixed(top));
        let h = cfg.hidden_size;
        let e = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let src = if i >= train_from { &top } else { &vb };
                Layer::load(src.pp(format!("encoder.layer.{i}")), cfg)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word: candle_nn::embedding(cfg.vocab_size, h, e.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                cfg.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: candle_nn::embedding(
                cfg.type_vocab_size,
                h,
                e.pp("token_type_embeddings"),
            )?,
            emb_ln: LayerNorm::load(e.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            layers,
            train_from,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// `ids`, `mask`: (b, l) u32. Returns hidden states (b, l, h).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        // Right padding: a real token's position is its index (plus the family's offset); the
        // pads' positions differ from HF's but they are masked out of attention and pooling.
        let offset = self.cfg.position_offset() as u32;
        let pos = Tensor::arange(offset, offset + l as u32, dev)?;
        let flat = ids.flatten_all()?;
        let x = self.word.forward(&flat)?.reshape((b, l, ()))?;
        let x = x.broadcast_add(&self.position.forward(&pos)?)?;
        // Single-segment input: token type 0 everywhere.
        let tt = self
            .token_type
            .forward(&Tensor::zeros(1, DType::U32, dev)?)?;
        let x = x.broadcast_add(&tt)?;
        let h = x.dim(2)?;
        let x = x.reshape((b * l, h))?;
        let frozen = |i: usize| {
            if i < self.train_from {
                Mode::Inference
            } else {
                mode
            }
        };
        let mut x = dropout(self.emb_ln.forward(&x, frozen(0))?, frozen(0))?;
        let additive = additive_mask(mask)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &additive, b, l, frozen(i))?;
        }
        x.reshape((b, l, h))
    }
}

/// (b, l) 0/1 mask → (b, 1, 1, l) additive mask: 0 where attended, -1e4 on padding.
/// A finite value, as HF uses, keeps the softmax free of NaN for any dtype.
fn additive_mask(mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((m - 1.0)? * 1e4)?.reshape((b, 1, 1, l))
}

/// Attention-masked mean over tokens, then L2 normalisation: (b, l, h) → (b, h).
pub fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = sum.broadcast_div(&count)?;
    l2_normalize(&mean)
}

/// Attention-masked max over tokens, then L2 normalisation: (b, l, h) → (b, h).
pub fn max_pool_normalize(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    // Padding gets a large negative value so it never wins (as sentence-transformers does).
    let m = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let pad = ((m.ones_like()? - &m)? * -1e9)?;
    let max = hidden.broadcast_mul(&m)?.broadcast_add(&pad)?.max(1)?;
    l2_normalize(&max)
}

/// Row-wise L2 normalisation of (b, h).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

/// Picks the compute device: CUDA when built with the `cuda` feature and a GPU is present,
/// otherwise the CPU (with a log line saying why).
pub fn select_device(prefer_gpu: bool) -> Device {
    #[cfg(feature = "cuda")]
    if prefer_gpu {
        match Device::new_cuda(0) {
            Ok(d) => {
                tracing::info!("using CUDA device 0");
                return d;
            }
            Err(e) => {
                tracing::warn!(error = %e, "CUDA requested but unavailable; falling back to CPU")
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    if prefer_gpu {
        tracing::warn!(
            "GPU requested but switchboard was built without the `cuda` feature; using CPU"
        );
    }
    Device::Cpu
}
