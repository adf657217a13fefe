//! Labelled prompts from JSONL: parsing with file:line errors, merging files, label sets and
//! the deterministic, leak-free train/dev split.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A problem in the training data, located by file and line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("label {label:?} of `{field}` has {count} examples, fewer than the minimum {min} (first at {first}); left out")]
    RareLabel {
        field: &'static str,
        label: String,
        count: usize,
        min: usize,
        first: String,
    },
    #[error("no usable rows in {0}")]
    Empty(String),
}

#[derive(Deserialize)]
struct RawRow {
    id: Option<String>,
    text: Option<serde_json::Value>,
    intent: Option<serde_json::Value>,
    domain: Option<serde_json::Value>,
    complexity: Option<serde_json::Value>,
    source: Option<serde_json::Value>,
    weak_correct: Option<bool>,
    strong_correct: Option<bool>,
}

/// One training example.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub text: String,
    pub intent: Option<String>,
    pub domain: Option<String>,
    pub complexity: Option<f32>,
    pub source: String,
    /// (weak model right, strong model right), for routing evaluation.
    pub graded: Option<(bool, bool)>,
    /// "file:line" of the row, for messages.
    pub origin: String,
}

impl Row {
    /// A real user prompt (a ShareGPT first turn), not a template or benchmark row.
    pub fn is_real(&self) -> bool {
        self.source == "sharegpt"
    }
}

fn opt_string(v: Option<serde_json::Value>, field: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "field `{field}` must be a string or null, found {other}"
        )),
    }
}

fn parse_line(line: &str, lineno: usize, origin: &str) -> Result<Row, String> {
    let raw: RawRow = serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let text = opt_string(raw.text, "text")?.ok_or("missing `text`")?;
    let complexity = match raw.complexity {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("field `complexity` must be in [0, 1], found {v}"));
            }
            Some(v)
        }
        Some(other) => {
            return Err(format!(
                "field `complexity` must be a number or null, found {other}"
            ))
        }
    };
    let graded = match (raw.weak_correct, raw.strong_correct) {
        (Some(w), Some(s)) => Some((w, s)),
        _ => None,
    };
    Ok(Row {
        id: raw.id.unwrap_or_else(|| format!("line-{lineno}")),
        text,
        intent: opt_string(raw.intent, "intent")?,
        domain: opt_string(raw.domain, "domain")?,
        complexity,
        source: opt_string(raw.source, "source")?.unwrap_or_default(),
        graded,
        origin: origin.to_string(),
    })
}

/// Reads a JSONL file. Bad lines are collected (file:line + reason), not fatal.
pub fn read_jsonl(path: &Path) -> Result<(Vec<Row>, Vec<DataError>), DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.into(),
        source,
    })?;
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        match parse_line(line, i + 1, &origin) {
            Ok(r) => rows.push(r),
            Err(message) => bad.push(DataError::Line {
                path: path.into(),
                line: i + 1,
                message,
            }),
        }
    }
    Ok((rows, bad))
}

/// Reads several files; a row whose id was seen before fills in only the labels it lacked.
pub fn read_all(paths: &[PathBuf]) -> Result<(Vec<Row>, Vec<DataError>), DataError> {
    let mut rows: Vec<Row> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut bad = Vec::new();
    for p in paths {
        let (r, b) = read_jsonl(p)?;
        bad.extend(b);
        for row in r {
            match index.get(&row.id) {
                Some(&i) => {
                    let old = &mut rows[i];
                    old.intent = old.intent.take().or(row.intent);
                    old.domain = old.domain.take().or(row.domain);
                    old.complexity = old.complexity.or(row.complexity);
                    old.graded = old.graded.or(row.graded);
                }
                None => {
                    index.insert(row.id.clone(), rows.len());
                    rows.push(row);
                }
            }
        }
    }
    if rows.is_empty() {
        return Err(DataError::Empty(format!("{paths:?}")));
    }
    Ok((rows, bad))
}

/// The unit that must not straddle train and dev: a ShareGPT conversation, a P3 passage
/// (dataset + row index, shared by every template), or the row itself.
pub fn split_group(row: &Row) -> String {
    if row.is_real() {
        return match row.id.rsplit_once('_') {
            Some((conv, part)) if part.chars().all(|c| c.is_ascii_digit()) => conv.to_string(),
            _ => row.id.clone(),
        };
    }
    if row.source.starts_with("p3-") {
        if let Some((_, n)) = row.id.rsplit_once('-') {
            return format!("{}#{n}", row.source);
        }
    }
    row.id.clone()
}

/// True when the row belongs to the dev split (`dev_percent` of groups, fixed by `seed`).
pub fn is_dev(row: &Row, seed: u64, dev_percent: u32) -> bool {
    let h = Sha256::digest(format!("{seed}:{}", split_group(row)).as_bytes());
    let v = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    v % 100 < dev_percent
}

/// Sorted label set of a field. Labels with fewer than `min` examples are left out and
/// reported (their rows then train the other heads only).
pub fn label_set(
    rows: &[Row],
    field: &'static str,
    get: impl Fn(&Row) -> Option<&String>,
    min: usize,
) -> (Vec<String>, Vec<DataError>) {
    let mut counts: BTreeMap<&String, (usize, &str)> = BTreeMap::new();
    for r in rows {
        if let Some(l) = get(r) {
            counts.entry(l).or_insert((0, &r.origin)).0 += 1;
        }
    }
    let mut labels = Vec::new();
    let mut rare = Vec::new();
    for (label, (count, first)) in counts {
        if count < min {
            rare.push(DataError::RareLabel {
                field,
                label: label.clone(),
                count,
                min,
                first: first.to_string(),
            });
        } else {
            labels.push(label.clone());
        }
    }
    (labels, rare)
}

/// sha256 over the files' bytes, in order.
pub fn data_sha256(paths: &[PathBuf]) -> Result<String, DataError> {
    let mut h = Sha256::new();
    for p in paths {
        let bytes = std::fs::read(p).map_err(|source| DataError::Io {
            path: p.clone(),
            source,
        })?;
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}
