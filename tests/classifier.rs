//! Training on a small real slice (seconds): beats the majority baseline, is deterministic
//! under a seed, round-trips through its files, and refuses foreign or malformed heads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use switchboard::classify::{Classifier, ClassifyError, META_FILE, WEIGHTS_FILE};

use switchboard::dataset::{self, DataError};
use switchboard::embed::Embedder;
use switchboard::train::eval::LabelReport;
use switchboard::train::{evaluate, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_on_a_slice_beats_majority_is_deterministic_and_round_trips() {
    let embedder: Embedder = common::embedder(&common::encoder_config());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    let first = run::train(&embedder, &common::slice_config(&a, &cache))
        .await
        .unwrap();
    assert!(first.embedded > 300, "first run embeds the slice");
    // Rare labels (< 10 rows) are left out, not fatal.
    let labels = &first.classifier.meta.intent_labels;
    assert!(
        !labels.contains(&"translation".to_string()) && labels.contains(&"code".to_string()),
        "{labels:?}"
    );
    let r = &first.dev_report.intent;
    assert_beats_majority(r);
    // The artifact records its training languages (the slice is English, with unsure rows);
    // the dev report has a slice per source group and language group, summing to the whole.
    let langs = &first.classifier.meta.languages;
    let total: u64 = langs.values().sum();
    assert!(langs["eng"] * 2 > total, "{langs:?}");
    let groups = &first.dev_report.groups;
    let sum = |kind: &str| -> usize { groups.iter().filter(|g| g.kind == kind).map(|g| g.n).sum() };
    assert_eq!(sum("source"), r.n, "{groups:?}");
    assert_eq!(sum("language"), r.n, "{groups:?}");
    assert!(first
        .dev_report
        .group("source", "exam")
        .is_some_and(|g| g.domain_n > 0));

    // Same seed → identical weights, and the cache makes the second run embed nothing.
    let second = run::train(&embedder, &common::slice_config(&b, &cache))
        .await
        .unwrap();
    assert_eq!(second.embedded, 0);
    let (wa, wb) = (
        std::fs::read(a.join(WEIGHTS_FILE)).unwrap(),
        std::fs::read(b.join(WEIGHTS_FILE)).unwrap(),
    );
    assert!(wa == wb, "same seed gave different weights");
    assert_eq!(first.classifier.version(), second.classifier.version());

    assert_round_trips(&first.classifier, &a, &embedder).await;

    // `eval` on the trainer's dev split reproduces the trainer's dev report and writes its files.
    let out = tmp.path().join("eval");
    let cfg = evaluate::EvalConfig {
        data: vec![common::fixture("train_slice.jsonl")],
        head: a.clone(),
        cache_dir: cache.clone(),
        dev_split: Some((11, 25)),
        typo_rows: 30,
        typo_rate: 0.05,
        out_dir: Some(out.clone()),
        spell_fix: true,
        untrained_language_share: Some(switchboard::classify::language::DEFAULT_MIN_SHARE),
    };
    let report = evaluate::run(&embedder, &cfg).await.unwrap();
    assert_eq!(report.intent.n, r.n);
    assert!((report.intent.accuracy - r.accuracy).abs() < 1e-9);
    let typo = report.typo_robustness.expect("typo figure");
    assert!(typo > 0.5 && typo <= 1.0, "typo robustness {typo}");
    // The slice holds no ShareGPT rows, so there is no real-prompt typo figure.
    assert!(report.typo_robustness_real.is_none());
    assert_eval_files(&out, r, typo);
    assert_predictions_agree(&out, r);
    assert_foreign_and_malformed_refused(&a, &b, &embedder);
}

/// Intent accuracy on the dev split beats always answering its most common label.
fn assert_beats_majority(r: &LabelReport) {
    let majority = r
        .confusion
        .iter()
        .map(|row| row.iter().sum::<usize>())
        .max()
        .unwrap() as f64
        / r.n as f64;
    assert!(r.n >= 40, "dev split too small: {}", r.n);
    assert!(
        r.accuracy > majority + 0.2,
        "accuracy {} vs majority {majority}",
        r.accuracy
    );
}

/// Save → load → same predictions.
async fn assert_round_trips(trained: &Classifier, dir: &Path, embedder: &Embedder) {
    let loaded = Classifier::load(dir, &embedder.info()).unwrap();
    // The typo-repair lexicon travels in the heads file and repairs the same way after loading.
    assert!(trained.repairs_typos() && loaded.repairs_typos());
    let typo = "Plaese answr this questoin";
    assert_eq!(trained.prepare(typo), loaded.prepare(typo));
    assert_eq!(loaded.prepare(typo), "please answer this question");
    for text in [
        "Write a Python function that reverses a list.",
        "hello there, how are you?",
        "Solve for x: 3x + 5 = 20",
    ] {
        let e = embedder.embed(text).await.unwrap();
        let p1 = trained.predict(&e.vector, e.tokens, None).unwrap();
        let p2 = loaded.predict(&e.vector, e.tokens, None).unwrap();
        assert_eq!(p1, p2);
    }
}

/// The typo flips, report.json, the SVG charts and the mistakes file agree with the report.
fn assert_eval_files(out: &Path, r: &LabelReport, typo: f64) {
    let flips = std::fs::read_to_string(out.join(evaluate::TYPO_FLIPS_FILE)).unwrap();
    let sampled = 30; // typo_rows; the dev split has more rows than that
    let flipped = flips.lines().count();
    assert!((typo - (sampled - flipped) as f64 / sampled as f64).abs() < 1e-9);
    for line in flips.lines() {
        let f: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_ne!(f["clean"], f["noisy"], "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["intent"]["n"], r.n);
    for svg in ["confusion_intent.svg", "reliability_intent.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg}"
        );
    }
    let mistakes = std::fs::read_to_string(out.join(evaluate::MISTAKES_FILE)).unwrap();
    let wrong = r.n
        - r.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| row[i])
            .sum::<usize>();
    assert_eq!(mistakes.lines().count(), wrong, "one line per wrong intent");
    for line in mistakes.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_ne!(m["intent"], m["predicted"], "{line}");
    }
}

/// One predictions line per dev row, probabilities summing to 1; over the rows with a known
/// intent, their argmax reproduces the reported accuracy.
fn assert_predictions_agree(out: &Path, r: &LabelReport) {
    let preds = std::fs::read_to_string(out.join(evaluate::PREDICTIONS_FILE)).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let labels: Vec<String> = serde_json::from_value(json["intent"]["labels"].clone()).unwrap();
    let (mut labelled, mut agree) = (0, 0);
    for line in preds.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let probs: Vec<f64> = serde_json::from_value(p["intent_probs"].clone()).unwrap();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{line}");
        let Some(i) = labels.iter().position(|l| p["intent"] == *l) else {
            continue;
        };
        labelled += 1;
        agree += usize::from(switchboard::classify::argmax(&probs_f32(&probs)).0 == i);
    }
    assert!(preds.lines().count() >= labelled);
    assert_eq!(labelled, r.n);
    assert!((agree as f64 / r.n as f64 - r.accuracy).abs() < 1e-9);
}

fn assert_foreign_and_malformed_refused(a: &Path, b: &Path, embedder: &Embedder) {
    // A head made for another encoder is refused with both identities in the message.
    let meta_path = a.join(META_FILE);
    let text = std::fs::read_to_string(&meta_path).unwrap();
    let sha = embedder.info().weights_sha256;
    std::fs::write(&meta_path, text.replace(&sha, &"0".repeat(64))).unwrap();
    match Classifier::load(a, &embedder.info()) {
        Err(e @ ClassifyError::EncoderMismatch(_)) => {
            assert!(e.to_string().contains(&sha), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("foreign head accepted"),
    }

    // A head whose weights do not match its declared shape is refused.
    let text = std::fs::read_to_string(b.join(META_FILE)).unwrap();
    std::fs::write(
        b.join(META_FILE),
        text.replace("\"hidden\": 64", "\"hidden\": 65"),
    )
    .unwrap();
    let err = Classifier::load(b, &embedder.info()).expect_err("malformed head must fail");
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn bad_rows_are_reported_with_file_and_line() {
    let path = common::fixture("bad_rows.jsonl");
    let (rows, bad) = dataset::read_jsonl(&path).unwrap();
    assert_eq!(rows.len(), 2);
    let lines: Vec<usize> = bad
        .iter()
        .map(|e| match e {
            DataError::Line { line, .. } => *line,
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6]);
    let msgs: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
    assert!(
        msgs[0].contains("bad_rows.jsonl:2") && msgs[0].contains("malformed JSON"),
        "{}",
        msgs[0]
    );
    assert!(msgs[1].contains("missing `text`"), "{}", msgs[1]);
    assert!(msgs[2].contains("`intent` must be a string"), "{}", msgs[2]);
    assert!(msgs[3].contains("[0, 1]"), "{}", msgs[3]);
    assert!(
        msgs[4].contains("`complexity` must be a number"),
        "{}",
        msgs[4]
    );
}

#[test]
fn split_keeps_passages_and_conversations_on_one_side() {
    let row = |id: &str, source: &str| dataset::Row {
        id: id.into(),
        text: "t".into(),
        intent: None,
        domain: None,
        complexity: None,
        source: source.into(),
        graded: None,
        origin: "x".into(),
    };
    // Every template rendering of P3 passage 17 shares a group; ShareGPT parts share one.
    assert_eq!(
        dataset::split_group(&row("p3-xsum_summarize_me-17", "p3-xsum")),
        dataset::split_group(&row("p3-xsum_tldr-17", "p3-xsum"))
    );
    assert_eq!(
        dataset::split_group(&row("sharegpt-abc_0", "sharegpt")),
        dataset::split_group(&row("sharegpt-abc_3", "sharegpt"))
    );
    assert_ne!(
        dataset::split_group(&row("gsm8k-test-1", "gsm8k")),
        dataset::split_group(&row("gsm8k-test-2", "gsm8k"))
    );
    let a = row("p3-xsum_a-5", "p3-xsum");
    let b = row("p3-xsum_b-5", "p3-xsum");
    for seed in 0..20 {
        assert_eq!(dataset::is_dev(&a, seed, 15), dataset::is_dev(&b, seed, 15));
    }
}

fn probs_f32(p: &[f64]) -> Vec<f32> {
    p.iter().map(|&x| x as f32).collect()
}
