//! Classifier artifacts in an object store (the `object_store` crate: a local directory by
//! default, a bucket where the build enables it), content-addressed: every file is a blob
//! named by its sha256, and a manifest listing the files (path, sha256, size) is named by its
//! own sha256, which is the artifact's address. A download checks every hash before a byte is
//! used, so a corrupt or substituted artifact is refused, never loaded.
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest manifest read back (a classifier folder lists a handful of files).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
const MAX_FILES: usize = 1_000;
/// Largest artifact (an encoder plus heads is ~100 MB).
const MAX_TOTAL_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact store: {0}")]
    Store(String),
    #[error("artifact {0}: {1}")]
    Corrupt(String, String),
    #[error("artifact: {0}")]
    Io(String),
}

/// What an artifact holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A classifier folder (heads, or encoder + heads).
    Dir,
    /// Heads packed into one blob (an inline swap).
    Inline,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    path: String,
    sha256: String,
    bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    kind: Kind,
    files: Vec<Entry>,
}

/// A verified local copy.
pub enum Fetched {
    Dir(PathBuf),
    Inline(Vec<u8>),
}

pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    root: ObjPath,
    url: String,
    cache: PathBuf,
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn store_err(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Store(e.to_string())
}

impl Artifacts {
    /// Opens the store at `url` (`file:///dir`, or a bucket URL where the build supports it);
    /// verified downloads go under `cache`.
    pub fn open(url: &str, cache: PathBuf) -> Result<Self, ArtifactError> {
        let parsed = url::Url::parse(url).map_err(|e| store_err(format!("{url:?}: {e}")))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|_| store_err(format!("{url:?} is not a local path")))?;
            std::fs::create_dir_all(&dir).map_err(|e| store_err(format!("{url:?}: {e}")))?;
        }
        let (store, root) = object_store::parse_url(&parsed).map_err(store_err)?;
        Ok(Self {
            store: Arc::from(store),
            root,
            url: url.trim_end_matches('/').to_string(),
            cache,
        })
    }

    fn at(&self, part: &str) -> ObjPath {
        let mut p = self.root.clone();
        for seg in part.split('/') {
            p = p.join(seg);
        }
        p
    }

    /// The artifact's location, for the records.
    pub fn uri(&self, sha: &str) -> String {
        format!("{}/manifests/{sha}.json", self.url)
    }

    /// Uploads a classifier folder; returns its address (the manifest's sha256).
    pub async fn put_dir(&self, dir: &Path) -> Result<String, ArtifactError> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files).map_err(|e| ArtifactError::Io(e.to_string()))?;
        files.sort();
        let mut entries = Vec::new();
        for rel in files {
            let bytes = tokio::fs::read(dir.join(&rel))
                .await
                .map_err(|e| ArtifactError::Io(format!("{}: {e}", rel.display())))?;
            entries.push(self.put_blob(&rel.to_string_lossy(), bytes).await?);
        }
        self.put_manifest(Kind::Dir, entries).await
    }

    /// Uploads inline heads; returns the artifact's address.
    pub async fn put_inline(&self, bytes: Vec<u8>) -> Result<String, ArtifactError> {
        let e = self.put_blob("inline", bytes).await?;
        self.put_manifest(Kind::Inline, vec![e]).await
    }

    async fn put_blob(&self, path: &str, bytes: Vec<u8>) -> Result<Entry, ArtifactError> {
        let sha = sha_hex(&bytes);
        let n = bytes.len() as u64;
        let at = self.at(&format!("blobs/{sha}"));
        if self.store.head(&at).await.is_err() {
            self.store
                .put(&at, PutPayload::from(bytes))
                .await
                .map_err(store_err)?;
        }
        Ok(Entry {
            path: path.replace('\\', "/"),
            sha256: sha,
            bytes: n,
        })
    }

    async fn put_manifest(&self, kind: Kind, files: Vec<Entry>) -> Result<String, ArtifactError> {
        let text = serde_json::to_vec(&Manifest { kind, files }).map_err(store_err)?;
        let sha = sha_hex(&text);
        let at = self.at(&format!("manifests/{sha}.json"));
        self.store
            .put(&at, PutPayload::from(text))
            .await
            .map_err(store_err)?;
        Ok(sha)
    }

    async fn get(&self, part: &str, limit: u64) -> Result<Vec<u8>, ArtifactError> {
        let r = self.store.get(&self.at(part)).await.map_err(store_err)?;
        if r.meta.size > limit {
            return Err(store_err(format!(
                "{part}: {} bytes, over {limit}",
                r.meta.size
            )));
        }
        Ok(r.bytes().await.map_err(store_err)?.to_vec())
    }

    /// Downloads artifact `sha` and checks every hash; a folder is written under the cache
    /// (once: a verified copy is reused).
    pub async fn fetch(&self, sha: &str) -> Result<Fetched, ArtifactError> {
        let corrupt = |m: String| ArtifactError::Corrupt(sha.to_string(), m);
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(corrupt("not a sha256".into()));
        }
        let text = self
            .get(&format!("manifests/{sha}.json"), MAX_MANIFEST_BYTES)
            .await?;
        if sha_hex(&text) != sha {
            return Err(corrupt(
                "the manifest's sha256 does not match its name".into(),
            ));
        }
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        check_manifest(&m).map_err(corrupt)?;
        if m.kind == Kind::Inline {
            let e = &m.files[0];
            return Ok(Fetched::Inline(self.blob(e).await.map_err(corrupt)?));
        }
        let done = self.cache.join(sha);
        if done.is_dir() {
            return Ok(Fetched::Dir(done));
        }
        let tmp = self.cache.join(format!(".{sha}.{}", std::process::id()));
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        for e in &m.files {
            let bytes = self.blob(e).await.map_err(corrupt)?;
            let path = tmp.join(&e.path);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| ArtifactError::Io(e.to_string()))?;
            }
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|e| ArtifactError::Io(e.to_string()))?;
        }
        match tokio::fs::rename(&tmp, &done).await {
            Ok(()) => Ok(Fetched::Dir(done)),
            // Another task of this process finished first: its copy is as good.
            Err(_) if done.is_dir() => Ok(Fetched::Dir(done)),
            Err(e) => Err(ArtifactError::Io(e.to_string())),
        }
    }

    async fn blob(&self, e: &Entry) -> Result<Vec<u8>, String> {
        let bytes = self
            .get(&format!("blobs/{}", e.sha256), e.bytes)
            .await
            .map_err(|x| x.to_string())?;
        if sha_hex(&bytes) != e.sha256 || bytes.len() as u64 != e.bytes {
            return Err(format!("{}: content does not match its sha256", e.path));
        }
        Ok(bytes)
    }
}

/// Paths stay inside the folder; sizes and counts are bounded.
fn check_manifest(m: &Manifest) -> Result<(), String> {
    if m.files.is_empty() || m.files.len() > MAX_FILES {
        return Err(format!(
            "{} files (1 to {MAX_FILES} allowed)",
            m.files.len()
        ));
    }
    if m.kind == Kind::Inline && m.files.len() != 1 {
        return Err("inline heads are one file".into());
    }
    let total: u64 = m.files.iter().map(|f| f.bytes).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(format!("{total} bytes, over {MAX_TOTAL_BYTES}"));
    }
    for f in &m.files {
        let p = Path::new(&f.path);
        let plain = p.components().all(|c| matches!(c, Component::Normal(_)));
        if f.path.is_empty() || !plain {
            return Err(format!("file path {:?} leaves the folder", f.path));
        }
        if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{}: sha256 is not 64 hex digits", f.path));
        }
    }
    Ok(())
}

/// Every regular file under `dir`, relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(root, &e.path(), out)?;
        } else if t.is_file() {
            if let Ok(rel) = e.path().strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
        if out.len() > MAX_FILES {
            return Err(std::io::Error::other(format!(
                "{}: more than {MAX_FILES} files",
                root.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_may_not_leave_the_folder() {
        let m = |p: &str| Manifest {
            kind: Kind::Dir,
            files: vec![Entry {
                path: p.into(),
                sha256: "a".repeat(64),
                bytes: 1,
            }],
        };
        assert!(check_manifest(&m("encoder/model.safetensors")).is_ok());
        for bad in ["../etc/passwd", "/abs", "", "a/../../b"] {
            assert!(check_manifest(&m(bad)).is_err(), "{bad}");
        }
    }
}
