//! Head folders as files: reading and writing `classifier.json` + heads, derived variants (for
//! swap tests and benchmarks), a full model (encoder + heads) from a heads-only folder, and the
//! single-file inline artifact the Admin API accepts.
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::{content_version, own_encoder, ClassifierMeta, META_FILE, WEIGHTS_FILE};

/// Every failure here is about a file; candle, serde and safetensors errors become I/O errors
/// carrying their message.
fn io(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

pub fn read_meta(dir: &Path) -> std::io::Result<ClassifierMeta> {
    let text = std::fs::read_to_string(dir.join(META_FILE)).map_err(io)?;
    serde_json::from_str(&text).map_err(io)
}

/// Writes a head folder with `meta` (version recomputed) and `weights`; returns the version.
pub fn write_heads(
    dir: &Path,
    mut meta: ClassifierMeta,
    weights: &[u8],
) -> std::io::Result<String> {
    std::fs::create_dir_all(dir).map_err(io)?;
    meta.version = content_version(weights, &meta);
    std::fs::write(dir.join(WEIGHTS_FILE), weights).map_err(io)?;
    let text = serde_json::to_string_pretty(&meta).map_err(io)?;
    std::fs::write(dir.join(META_FILE), text).map_err(io)?;
    Ok(meta.version)
}

/// `base`'s heads with the intent temperature scaled: a valid, distinct version.
pub fn variant(base: &Path, out: &Path, factor: f32) -> std::io::Result<String> {
    let mut m = read_meta(base)?;
    m.intent_temperature *= factor;
    let w = std::fs::read(base.join(WEIGHTS_FILE)).map_err(io)?;
    write_heads(out, m, &w)
}

/// A full model: `base`'s own encoder (or, for heads only, the encoder in `encoder_dir`)
/// re-saved as f32 (a new weights file, so a new encoder identity) with `base`'s heads bound
/// to it.
pub fn full_model(base: &Path, encoder_dir: &Path, out: &Path) -> std::io::Result<String> {
    let own = own_encoder(base);
    let encoder_dir = own.as_deref().unwrap_or(encoder_dir);
    let enc = out.join("encoder");
    crate::embed::model::copy_encoder_files(encoder_dir, &enc).map_err(io)?;
    let dev = candle_core::Device::Cpu;
    let tensors =
        candle_core::safetensors::load(encoder_dir.join("model.safetensors"), &dev).map_err(io)?;
    let f32s = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(candle_core::DType::F32)?)))
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()
        .map_err(io)?;
    candle_core::safetensors::save(&f32s, enc.join("model.safetensors")).map_err(io)?;
    let mut m = read_meta(base)?;
    m.encoder.name = format!("{}-f32", m.encoder.name);
    m.encoder.sha256 =
        crate::embed::model::sha256_file(&enc.join("model.safetensors")).map_err(io)?;
    let w = std::fs::read(base.join(WEIGHTS_FILE)).map_err(io)?;
    write_heads(out, m, &w)
}

/// Packs a head folder into one inline artifact (heads with classifier.json as metadata).
pub fn pack_inline(dir: &Path) -> std::io::Result<Vec<u8>> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| io(format!("{}: {e}", p.display())));
    let meta = String::from_utf8(read(&dir.join(META_FILE))?)
        .map_err(|e| io(format!("{META_FILE}: {e}")))?;
    let wpath = dir.join(WEIGHTS_FILE);
    let weights = read(&wpath)?;
    let tensors = safetensors::SafeTensors::deserialize(&weights)
        .map_err(|e| io(format!("{}: {e}", wpath.display())))?;
    let info = HashMap::from([(META_FILE.to_string(), meta)]);
    safetensors::tensor::serialize(tensors.tensors(), Some(info)).map_err(io)
}
