//! Fused CPU kernels for inference, where candle's generic ops were measured as the largest
//! non-matmul costs: `bias + gelu_erf` (libm erf per element) and `scores + mask → softmax`
//! (libm exp per element). Plain loops over contiguous f32 with branch-free polynomial
//! approximations, which the compiler vectorises. Other devices and dtypes fall back to
//! candle's ops. No backward: training uses the differentiable ops in `bert.rs`.
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, D};

/// erf(x) as a rational approximation on [-4, 4] (Eigen's fast erf; |error| < 2e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    let p = x * p;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_474e-2;
    p / q
}

/// exp(x) for x ≤ 0 as 2^n · 2^f, f in [-0.5, 0.5), 2^f by its degree-6 Taylor polynomial
/// (truncation error < 2e-7 relative).
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    // Round to nearest with the 1.5·2^23 trick: plain adds, so it vectorises without SSE4.1.
    let n = (t + 12_582_912.0) - 12_582_912.0;
    let f = t - n;
    let mut p = 1.540_353e-4f32;
    p = p * f + 1.333_355_8e-3;
    p = p * f + 9.618_129e-3;
    p = p * f + 5.550_411e-2;
    p = p * f + 2.402_265e-1;
    p = p * f + 6.931_472e-1;
    p = p * f + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Elements below which a kernel stays on the calling thread (thread hand-off costs more).
const PAR_MIN: usize = 1 << 15;

/// Row-wise map of `src` into `out`, across candle's matmul threads when it is large.
fn par_rows(
    out: &mut [f32],
    src: &[f32],
    n: usize,
    f: impl Fn((&mut [f32], &[f32])) + Sync + Send,
) {
    par_rows_indexed(out, src, n, |_, o, s| f((o, s)));
}

fn par_rows_indexed(
    out: &mut [f32],
    src: &[f32],
    n: usize,
    f: impl Fn(usize, &mut [f32], &[f32]) + Sync + Send,
) {
    use rayon::prelude::*;
    if out.len() >= PAR_MIN && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(n)
            .zip(src.par_chunks(n))
            .enumerate()
            .for_each(|(r, (o, s))| f(r, o, s));
    } else {
        out.chunks_mut(n)
            .zip(src.chunks(n))
            .enumerate()
            .for_each(|(r, (o, s))| f(r, o, s));
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: only f32 is supported")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "bias_gelu x")?;
        let b = contiguous(s2, l2, "bias_gelu bias")?;
        let n = b.len();
        let mut out = vec![0f32; x.len()];
        let rows = |(orow, xrow): (&mut [f32], &[f32])| {
            for ((o, &v), &bb) in orow.iter_mut().zip(xrow).zip(b) {
                let y = v + bb;
                *o = 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
            }
        };
        par_rows(&mut out, x, n, rows);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// gelu_erf(x + bias) for x (rows, n) and bias (n).
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2_no_bwd(bias, &BiasGelu)
    } else {
        x.broadcast_add(bias)?.gelu_erf()
    }
}

struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = contiguous(s1, l1, "masked_softmax scores")?;
        let mask = contiguous(s2, l2, "masked_softmax mask")?;
        let dims = l1.shape().dims();
        let (b, l) = (dims[0], dims[dims.len() - 1]);
        let rows_per_batch = scores.len() / (b * l);
        let mut out = vec![0f32; scores.len()];
        par_rows_indexed(&mut out, scores, l, |r, orow, srow| {
            let m = &mask[(r / rows_per_batch) * l..][..l];
            softmax_row(orow, srow, m);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Sum with 8 independent accumulators, so the loop vectorises (float adds don't reassociate).
#[inline(always)]
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let rest = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    acc.iter().fold(rest, |m, &x| if x > m { x } else { m })
}

/// out = softmax(s + m), in separate passes that each vectorise.
#[inline(always)]
fn softmax_row(out: &mut [f32], s: &[f32], m: &[f32]) {
    for (o, (&a, &b)) in out.iter_mut().zip(s.iter().zip(m)) {
        *o = a + b;
    }
    let max = lane_max(out);
    for o in out.iter_mut() {
        *o = exp_neg(*o - max);
    }
    let inv = 1.0 / lane_sum(out);
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// softmax(scores + mask) over the last dimension; scores (b, h, l, l), mask (b, 1, 1, l).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == candle_core::DType::F32 {
        scores
            .contiguous()?
            .apply_op2_no_bwd(&mask.contiguous()?, &MaskedSoftmax)
    } else {
        candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)
            .or_else(|_| candle_nn::ops::softmax(&scores.broadcast_add(mask)?, D::Minus1))
    }
}

/// `layer_norm(y + bias + residual)` in one pass over rows, for the two dense + residual + LN
/// blocks of each layer. Bias, gain and shift are plain vectors held by the op.
pub struct BiasResidualLayerNorm {
    pub bias: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

impl CustomOp2 for BiasResidualLayerNorm {
    fn name(&self) -> &'static str {
        "bias-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous(s1, l1, "bias_residual_ln y")?;
        let r = contiguous(s2, l2, "bias_residual_ln residual")?;
        let n = self.gamma.len();
        if y.len() != r.len() || y.len() % n != 0 || self.bias.len() != n || self.beta.len() != n {
            candle_core::bail!("bias_residual_ln: shape mismatch")
        }
        let mut out = vec![0f32; y.len()];
        for ((o, yr), rr) in out
            .chunks_exact_mut(n)
            .zip(y.chunks_exact(n))
            .zip(r.chunks_exact(n))
        {
            for (((o, &a), &b), &c) in o.iter_mut().zip(yr).zip(rr).zip(&self.bias) {
                *o = a + b + c;
            }
            let mean = lane_sum(o) / n as f32;
            for v in o.iter_mut() {
                *v -= mean;
            }
            let mut sq = [0f32; 8];
            let mut chunks = o.chunks_exact(8);
            for c in &mut chunks {
                for (a, x) in sq.iter_mut().zip(c) {
                    *a += x * x;
                }
            }
            let var = (sq.iter().sum::<f32>()
                + chunks.remainder().iter().map(|x| x * x).sum::<f32>())
                / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, &g), &b) in o.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = *v * inv * g + b;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference erf by Simpson integration of exp(-t²), independent of the kernel.
    fn erf_ref(x: f64) -> f64 {
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_reference() {
        let mut worst = 0f64;
        for i in -600..=600 {
            let x = i as f64 / 100.0;
            worst = worst.max((erf(x as f32) as f64 - erf_ref(x)).abs());
        }
        assert!(worst < 1e-6, "max |erf error| {worst}");
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f32;
        for i in 0..=10_000 {
            let x = -(i as f32) / 100.0;
            let (a, b) = (exp_neg(x), x.exp());
            worst = worst.max(((a - b) / b.max(1e-30)).abs());
        }
        // f32 rounding of x·log2(e) dominates for large |x|; softmax inputs stay near 0.
        assert!(worst < 5e-6, "max relative exp error {worst}");
    }

    #[test]
    fn fused_ops_match_candle() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (5, 7), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 7, &dev)?;
        let want = x.broadcast_add(&b)?.gelu_erf()?;
        let diff = (bias_gelu(&x, &b)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "bias_gelu diff {diff}");
        let s = Tensor::randn(0f32, 3.0, (2, 3, 4, 4), &dev)?;
        let m = Tensor::new(&[[0f32, 0., 0., -1e4], [0., 0., -1e4, -1e4]], &dev)?
            .reshape((2, 1, 1, 4))?;
        let want = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&m)?)?;
        let diff = (masked_softmax(&s, &m)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "masked_softmax diff {diff}");
        Ok(())
    }
}
