//! The feedback log: operator corrections and outcomes for past decisions, one JSON line per
//! record, flushed and fsynced before the record is acknowledged.
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::decisions::DecisionRecord;

/// One line of the feedback log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeedbackRecord {
    pub sequence: u64,
    pub ts_ms: u64,
    pub decision_id: String,
    #[serde(default)]
    pub intent: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub complexity: Option<f32>,
    #[serde(default)]
    pub outcome: String,
    #[serde(default)]
    pub rating: u32,
    #[serde(default)]
    pub comment: String,
}

/// The feedback log: one JSON line per record, fsynced before `append` returns.
pub struct FeedbackLog {
    path: PathBuf,
    file: Mutex<(File, u64)>,
}

impl FeedbackLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let count = Self::read(path)?.len() as u64;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new((file, count)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `r` (its `sequence` assigned here) durably; returns the sequence. Blocking.
    pub fn append(&self, mut r: FeedbackRecord) -> std::io::Result<u64> {
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        r.sequence = g.1 + 1;
        let mut line = serde_json::to_string(&r).map_err(std::io::Error::other)?;
        line.push('\n');
        g.0.write_all(line.as_bytes())?;
        g.0.sync_data()?;
        g.1 = r.sequence;
        Ok(r.sequence)
    }

    /// Every complete record in the log (a torn last line from a crash is skipped).
    pub fn read(path: &Path) -> std::io::Result<Vec<FeedbackRecord>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            if let Ok(r) = serde_json::from_str(&line?) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// Joins feedback with the decisions it names: the latest correction per decision, with its
/// decision record. Returns the joined rows and the ids with no decision record.
pub fn join<'d>(
    feedback: &[FeedbackRecord],
    decisions: &'d [DecisionRecord],
) -> (Vec<(FeedbackRecord, &'d DecisionRecord)>, Vec<String>) {
    let mut latest: HashMap<&str, &FeedbackRecord> = HashMap::new();
    for f in feedback {
        if f.intent.is_some() || f.domain.is_some() || f.complexity.is_some() {
            latest.insert(f.decision_id.as_str(), f);
        }
    }
    let mut found = HashSet::new();
    let mut rows = Vec::new();
    for d in decisions {
        if let Some(f) = latest.get(d.id.as_str()) {
            if found.insert(d.id.as_str()) {
                rows.push(((*f).clone(), d));
            }
        }
    }
    let missing = latest
        .keys()
        .filter(|k| !found.contains(*k))
        .map(|k| k.to_string())
        .collect();
    (rows, missing)
}
