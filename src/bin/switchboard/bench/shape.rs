//! `bench embed --shape LAYERSxHIDDEN`: a BERT-family encoder of that size with random weights,
//! so operators can see what a larger encoder costs per prompt without downloading one (the
//! time of a forward pass does not depend on the values of the weights).
use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

/// Layers and hidden size parsed from "12x768".
pub fn parse(shape: &str) -> anyhow::Result<(usize, usize)> {
    let (l, h) = shape
        .split_once('x')
        .with_context(|| format!("--shape {shape:?}: expected LAYERSxHIDDEN, e.g. 12x768"))?;
    let (l, h): (usize, usize) = (l.parse()?, h.parse()?);
    anyhow::ensure!(
        (1..=48).contains(&l) && (64..=4096).contains(&h) && h % 64 == 0,
        "--shape {shape}: layers must be 1..=48 and the hidden size a multiple of 64 up to 4096"
    );
    Ok((l, h))
}

/// Writes a random-weight encoder of `layers` × `hidden` (heads of 64, feed-forward 4×hidden,
/// 512 positions, mean pooling) to `out`, with the tokenizer of `tokenizer_from`.
pub fn write(
    out: &Path,
    layers: usize,
    hidden: usize,
    tokenizer_from: &Path,
) -> anyhow::Result<()> {
    let vocab = 30_522;
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": hidden / 64,
        "intermediate_size": 4 * hidden, "max_position_embeddings": 512,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
    });
    std::fs::create_dir_all(out.join("1_Pooling"))?;
    std::fs::write(out.join("config.json"), config.to_string())?;
    std::fs::write(
        out.join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": true}"#,
    )?;
    std::fs::copy(
        tokenizer_from.join("tokenizer.json"),
        out.join("tokenizer.json"),
    )?;
    let dev = Device::Cpu;
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let mut rand = |name: String, shape: &[usize]| -> candle_core::Result<()> {
        w.insert(name, Tensor::randn(0f32, 0.02, shape, &dev)?);
        Ok(())
    };
    rand("embeddings.word_embeddings.weight".into(), &[vocab, hidden])?;
    rand(
        "embeddings.position_embeddings.weight".into(),
        &[512, hidden],
    )?;
    rand(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, hidden],
    )?;
    let mut dense = |p: String, i: usize, o: usize| -> candle_core::Result<()> {
        rand(format!("{p}.weight"), &[o, i])?;
        rand(format!("{p}.bias"), &[o])
    };
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        for n in ["query", "key", "value"] {
            dense(format!("{p}.attention.self.{n}"), hidden, hidden)?;
        }
        dense(format!("{p}.attention.output.dense"), hidden, hidden)?;
        dense(format!("{p}.intermediate.dense"), hidden, 4 * hidden)?;
        dense(format!("{p}.output.dense"), 4 * hidden, hidden)?;
    }
    let norms = (0..layers)
        .flat_map(|l| {
            let p = format!("encoder.layer.{l}");
            [
                format!("{p}.attention.output.LayerNorm"),
                format!("{p}.output.LayerNorm"),
            ]
        })
        .chain(["embeddings.LayerNorm".to_string()]);
    for n in norms {
        w.insert(
            format!("{n}.weight"),
            Tensor::ones(hidden, DType::F32, &dev)?,
        );
        w.insert(
            format!("{n}.bias"),
            Tensor::zeros(hidden, DType::F32, &dev)?,
        );
    }
    candle_core::safetensors::save(&w, out.join("model.safetensors"))?;
    Ok(())
}
