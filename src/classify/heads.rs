//! The classifier heads: intent and domain (softmax) and complexity (sigmoids) on the sentence
//! embedding plus a length feature. Shared by training (candle graph) and inference.
use candle_core::{Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

/// Input features beyond the embedding: the prompt's length in tokens, log-scaled.
pub const EXTRA_FEATURES: usize = 1;

/// Length feature in [0, 1]: ln(tokens) / ln(512).
pub fn length_feature(tokens: usize) -> f32 {
    ((tokens.max(1) as f32).ln() / 512f32.ln()).min(1.0)
}

/// One head: optional hidden layer (ReLU) then a linear output.
pub struct Mlp {
    hidden: Option<Linear>,
    out: Linear,
}

impl Mlp {
    pub fn new(
        vb: VarBuilder,
        inputs: usize,
        hidden: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        if hidden == 0 {
            return Ok(Self {
                hidden: None,
                out: candle_nn::linear(inputs, outputs, vb.pp("out"))?,
            });
        }
        Ok(Self {
            hidden: Some(candle_nn::linear(inputs, hidden, vb.pp("hidden"))?),
            out: candle_nn::linear(hidden, outputs, vb.pp("out"))?,
        })
    }

    /// `mask`: a seeded dropout mask (b, hidden), already scaled by 1/(1-p); training only.
    /// candle's own dropout draws from an unseedable RNG, and training must be deterministic.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = match &self.hidden {
            Some(h) => {
                let y = h.forward(x)?.relu()?;
                match mask {
                    Some(m) => y.mul(m)?,
                    None => y,
                }
            }
            None => x.clone(),
        };
        self.out.forward(&x)
    }
}

/// A head as plain row-major vectors, for the single-prompt request path: a handful of
/// dot products is far cheaper than building and running a candle graph.
pub struct FastMlp {
    hidden: Option<(Vec<f32>, Vec<f32>)>,
    out: (Vec<f32>, Vec<f32>),
}

fn to_vecs(l: &Linear) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let w = l.weight().flatten_all()?.to_vec1::<f32>()?;
    let b = match l.bias() {
        Some(b) => b.to_vec1::<f32>()?,
        None => vec![0.0; l.weight().dim(0)?],
    };
    Ok((w, b))
}

/// out[i] = W[i] · x + b[i] for row-major W.
fn affine(w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
    let n = x.len();
    w.chunks_exact(n)
        .zip(b)
        .map(|(row, bias)| {
            let mut acc = [0f32; 8];
            let (rc, xc) = (row.chunks_exact(8), x.chunks_exact(8));
            let rest: f32 = rc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .map(|(a, b)| a * b)
                .sum();
            for (r8, x8) in rc.zip(xc) {
                for ((a, r), x) in acc.iter_mut().zip(r8).zip(x8) {
                    *a += r * x;
                }
            }
            acc.iter().sum::<f32>() + rest + bias
        })
        .collect()
}

impl FastMlp {
    pub fn from(m: &Mlp) -> candle_core::Result<Self> {
        Ok(Self {
            hidden: m.hidden.as_ref().map(to_vecs).transpose()?,
            out: to_vecs(&m.out)?,
        })
    }

    /// Logits for one feature row.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        match &self.hidden {
            Some((w, b)) => {
                let h: Vec<f32> = affine(w, b, x).into_iter().map(|v| v.max(0.0)).collect();
                affine(&self.out.0, &self.out.1, &h)
            }
            None => affine(&self.out.0, &self.out.1, x),
        }
    }
}

/// Softmax of logits / temperature.
pub fn softmax_t(logits: &[f32], t: f32) -> Vec<f32> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|v| ((v - m) / t).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Outputs of the complexity head in the current format: logit 0 = P(a small model fails the
/// prompt), logit 1 = P(the strongest model answers it right). Older heads have only logit 0.
pub const COMPLEXITY_OUTPUTS: usize = 2;

/// What the complexity head says about a prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Complexity {
    /// The routing score: `strong_gain` clamped to [0, 1].
    pub score: f32,
    /// P(a small model fails the prompt): how hard it is.
    pub small_fails: f32,
    /// P(strong right) − P(small right), in [−1, 1]: what the strongest model adds.
    pub strong_gain: f32,
}

/// The complexity head's logits read. With two outputs the score is the expected gain of the
/// strongest model over a small one, P(strong right) − P(small right), clamped to [0, 1]:
/// 0 = a small model does as well (an easy prompt, or one no model answers), 1 = only the
/// strongest model answers it. Ranking by that gain routes better than P(small fails) alone,
/// which also sends prompts no model answers to the expensive one (MODEL_CARD.md). With one
/// output (older heads) the score and the gain are P(small fails).
pub fn complexity_score(logits: &[f32]) -> Complexity {
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    let (small_fails, strong_gain) = match logits {
        [fail, strong, ..] => {
            let fail = sigmoid(*fail);
            (fail, sigmoid(*strong) - (1.0 - fail))
        }
        [fail] => (sigmoid(*fail), sigmoid(*fail)),
        [] => (0.0, 0.0),
    };
    Complexity {
        score: strong_gain.clamp(0.0, 1.0),
        small_fails,
        strong_gain,
    }
}

/// Output sizes of the three heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outputs {
    pub intent: usize,
    pub domain: usize,
    pub complexity: usize,
}

impl Outputs {
    /// The shape training writes: the given label counts and the current complexity head.
    pub fn current(intent: usize, domain: usize) -> Self {
        Self {
            intent,
            domain,
            complexity: COMPLEXITY_OUTPUTS,
        }
    }
}

/// The three heads.
pub struct Heads {
    pub intent: Mlp,
    pub domain: Mlp,
    pub complexity: Mlp,
}

/// Raw outputs for a batch: logits (b, n_intent), (b, n_domain), (b, complexity outputs).
pub struct HeadOutputs {
    pub intent: Tensor,
    pub domain: Tensor,
    pub complexity: Tensor,
}

impl Heads {
    pub fn new(
        vb: VarBuilder,
        inputs: usize,
        hidden: usize,
        outputs: Outputs,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            intent: Mlp::new(vb.pp("intent"), inputs, hidden, outputs.intent)?,
            domain: Mlp::new(vb.pp("domain"), inputs, hidden, outputs.domain)?,
            complexity: Mlp::new(vb.pp("complexity"), inputs, hidden, outputs.complexity)?,
        })
    }

    /// `masks`: per-head dropout masks (training only).
    pub fn forward(
        &self,
        x: &Tensor,
        masks: Option<&[Tensor; 3]>,
    ) -> candle_core::Result<HeadOutputs> {
        Ok(HeadOutputs {
            intent: self.intent.forward(x, masks.map(|m| &m[0]))?,
            domain: self.domain.forward(x, masks.map(|m| &m[1]))?,
            complexity: self.complexity.forward(x, masks.map(|m| &m[2]))?,
        })
    }
}

/// Softmax of logits / temperature over the last dimension.
pub fn calibrated_softmax(logits: &Tensor, temperature: f32) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(&(logits / temperature as f64)?, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::complexity_score;

    #[test]
    fn complexity_score_is_the_clamped_gain_of_the_strong_model() {
        // Small model fails (p 0.9), strong right (p 0.9): gain 0.8.
        let c = complexity_score(&[9f32.ln(), 9f32.ln()]);
        assert!((c.score - 0.8).abs() < 1e-5 && (c.small_fails - 0.9).abs() < 1e-5);
        assert!((c.strong_gain - 0.8).abs() < 1e-5);
        // Both right, or neither: no gain; the strong model worse: clamped at 0, and the gain
        // says by how much it is worse.
        assert!(complexity_score(&[-9f32.ln(), 9f32.ln()]).score < 1e-5);
        assert!(complexity_score(&[9f32.ln(), -9f32.ln()]).score < 1e-5);
        // Small model right (p 0.9), strong wrong (p 0.9): the gain is -0.8.
        let worse = complexity_score(&[-(9f32.ln()), -(9f32.ln())]);
        assert!(worse.score < 1e-5 && (worse.strong_gain + 0.8).abs() < 1e-5);
        assert_eq!(complexity_score(&[-5.0, -5.0]).score, 0.0);
        // One output (older heads): the score is P(small fails).
        let c = complexity_score(&[0.0]);
        assert_eq!((c.score, c.small_fails, c.strong_gain), (0.5, 0.5, 0.5));
    }
}
