//! Where the bundled models live. A binary copied into an image or a package must not look in
//! the directory it was built in, so the models folder is, in order: the one given with
//! `--models-dir` or `SWITCHBOARD_MODELS_DIR` (alone: an explicit choice never falls back),
//! else `models/` next to the executable, `../share/switchboard/models` from it, and last the
//! source tree the binary was built from (what `cargo run` and the tests use).
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The environment variable naming the models folder.
pub const MODELS_ENV: &str = "SWITCHBOARD_MODELS_DIR";

/// The sentence encoder, the classifier folder and its gate set, relative to the models folder.
pub const ENCODER: &str = "all-MiniLM-L6-v2";
pub const CLASSIFIER: &str = "classifier";
pub const GATE_SET: &str = "classifier/gate.jsonl";

static EXPLICIT: OnceLock<PathBuf> = OnceLock::new();

/// Sets the models folder for this process (the `--models-dir` flag); the first call wins.
/// Call before any configuration is read, since the defaults are computed from it.
pub fn set_models_dir(dir: PathBuf) {
    let _ = EXPLICIT.set(dir);
}

/// A bundled asset found in none of the places tried.
#[derive(Debug, thiserror::Error)]
#[error("bundled {what} not found; looked in: {tried}. Give the models folder with --models-dir or {MODELS_ENV}", tried = .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct AssetError {
    pub what: String,
    pub tried: Vec<PathBuf>,
}

/// The candidate models folders, in the order they are tried.
pub fn candidates() -> Vec<PathBuf> {
    if let Some(d) = EXPLICIT.get() {
        return vec![d.clone()];
    }
    if let Some(d) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut out = Vec::with_capacity(3);
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        out.push(bin.join("models"));
        out.push(bin.join("../share/switchboard/models"));
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    out
}

/// The path of `rel` in the first candidate folder that has it, or in the first candidate
/// when none has it (so a later `check` names a real place). Used for configuration defaults.
pub fn bundled(rel: &str) -> PathBuf {
    let all = candidates();
    all.iter()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| all[0].join(rel))
}

/// The path of `rel` in the first candidate folder that has it.
pub fn locate(rel: &str) -> Result<PathBuf, AssetError> {
    let all = candidates();
    all.iter()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
        .ok_or_else(|| AssetError {
            what: rel.to_string(),
            tried: all,
        })
}

/// Checks that `path`, when it is still the default for the bundled asset `rel`, exists;
/// a missing default is reported with every place tried. Paths the operator set are left to
/// the loader, whose error names that path.
pub fn check_default(path: &Path, rel: &str) -> Result<(), AssetError> {
    if path.exists() || path != bundled(rel) {
        return Ok(());
    }
    locate(rel).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_tree_is_the_last_resort() {
        // No flag or variable is set in unit tests (the integration tests cover those).
        assert!(
            std::env::var_os(MODELS_ENV).is_none(),
            "unset {MODELS_ENV} to run this"
        );
        let all = candidates();
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[0].ends_with("models"));
        assert_eq!(all[2], Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
        assert!(locate(ENCODER).is_ok());
    }
}
