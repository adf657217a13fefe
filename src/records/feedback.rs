//! The feedback log: operator corrections and outcomes for past decisions, one JSON line per
//! record, flushed and fsynced before the record is acknowledged.
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
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
        let cut = truncate_torn_tail(path)?;
        if cut > 0 {
            tracing::warn!(path = %path.display(), bytes = cut, "feedback log ended in a partial record (a crash or a failed write); cut it");
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

/// Cuts a partial last line (left by a crash or a failed write in the middle of a record), so
/// the next record starts on a line of its own instead of being glued to the fragment and lost
/// on reading. The cut is fsynced. Returns the bytes removed.
fn truncate_torn_tail(path: &Path) -> std::io::Result<u64> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    // Scan back from the end for the last newline, one block at a time.
    let mut buf = vec![0u8; 64 * 1024];
    let (mut end, mut keep) = (len, 0);
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let block = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(block)?;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if keep == len {
        return Ok(0);
    }
    f.set_len(keep)?;
    f.sync_all()?;
    Ok(len - keep)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> FeedbackRecord {
        FeedbackRecord {
            sequence: 0,
            ts_ms: 1,
            decision_id: id.into(),
            intent: Some("code".into()),
            domain: None,
            complexity: None,
            outcome: String::new(),
            rating: 0,
            comment: String::new(),
        }
    }

    #[test]
    fn a_record_acknowledged_after_a_torn_tail_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.jsonl");
        let log = FeedbackLog::open(&path).unwrap();
        assert_eq!(log.append(record("a")).unwrap(), 1);
        drop(log);
        // A crash in the middle of the next record leaves a fragment without a newline.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"sequence":2,"ts_ms":1,"decision_id":"tor"#)
            .unwrap();
        drop(f);
        let log = FeedbackLog::open(&path).unwrap();
        assert_eq!(log.append(record("b")).unwrap(), 2);
        let ids: Vec<String> = FeedbackLog::read(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.decision_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"tor"), "the fragment is gone: {text}");
    }

    #[test]
    fn a_file_that_is_only_a_fragment_is_cut_to_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.jsonl");
        std::fs::write(&path, b"{\"sequence\":1").unwrap();
        let log = FeedbackLog::open(&path).unwrap();
        assert_eq!(log.append(record("x")).unwrap(), 1);
        assert_eq!(FeedbackLog::read(&path).unwrap().len(), 1);
    }
}
