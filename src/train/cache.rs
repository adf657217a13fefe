//! On-disk embedding cache for training: one append-only file per encoder identity and
//! tokenization setting, keyed by the text's sha256. A second training run embeds nothing.
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub type Key = [u8; 16];

/// Cache key of a text.
pub fn key(text: &str) -> Key {
    let h = Sha256::digest(text.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h[..16]);
    k
}

/// Embedding + token count of a cached text.
pub type Entry = (Vec<f32>, u32);

pub struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    map: HashMap<Key, Entry>,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache file for `identity` under `dir`.
    pub fn open(dir: &Path, identity: &str, dim: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("embeddings-{identity}.bin"));
        let mut map = HashMap::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let rec = 16 + 4 + 4 * dim;
            // A torn last record (crash while appending) is ignored.
            for chunk in bytes.chunks_exact(rec) {
                let mut k = [0u8; 16];
                k.copy_from_slice(&chunk[..16]);
                let tokens = u32::from_le_bytes([chunk[16], chunk[17], chunk[18], chunk[19]]);
                let v = chunk[20..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                map.insert(k, (v, tokens));
            }
        }
        Ok(Self { path, dim, map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, k: &Key) -> Option<&Entry> {
        self.map.get(k)
    }

    /// Appends new entries to the file and the map.
    pub fn extend(&mut self, entries: Vec<(Key, Entry)>) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut w = BufWriter::new(file);
        for (k, (v, tokens)) in entries {
            if v.len() != self.dim {
                continue;
            }
            w.write_all(&k)?;
            w.write_all(&tokens.to_le_bytes())?;
            for x in &v {
                w.write_all(&x.to_le_bytes())?;
            }
            self.map.insert(k, (v, tokens));
        }
        w.flush()
    }
}
