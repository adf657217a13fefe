//! The encoder end to end with the bundled weights: parity with an independent reference,
//! batch invariance, concurrency through the queue, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cosine, embedder, encoder_config};
use serde::Deserialize;
use switchboard::embed::{EmbedError, EncoderConfig, SentenceEncoder};

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
    max_seq_length: usize,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_reference.json"
    );
    let text =
        std::fs::read_to_string(path).expect("tests/fixtures/minilm_reference.json must exist");
    serde_json::from_str(&text).expect("fixture parses")
}

#[tokio::test]
async fn parity_with_numpy_reference_f16_weights() {
    let r = reference();
    assert_eq!(r.sentences.len(), r.embeddings.len());
    assert!(r.sentences.len() >= 5);
    let cfg = EncoderConfig {
        max_tokens: r.max_seq_length,
        ..encoder_config()
    };
    let e = embedder(&cfg);
    for (s, want) in r.sentences.iter().zip(&r.embeddings) {
        let got = e.embed(s).await.unwrap();
        assert_eq!(got.vector.len(), want.len());
        let c = cosine(&got.vector, want);
        assert!(c >= 0.999, "cosine {c:.6} < 0.999 for {s:?}");
    }
}

#[test]
fn batch_gives_the_same_vectors_as_single_prompts() {
    let cfg = encoder_config();
    let model = SentenceEncoder::load(&cfg.model_dir, &candle_core::Device::Cpu).unwrap();
    let e = embedder(&cfg);
    let long = "The quarterly report covers revenue, costs, hiring and the outlook for next year. "
        .repeat(12);
    let texts = [
        "?",
        "hi",
        "Translate 'good morning' into French.",
        long.as_str(),
        "fn main() {}",
    ];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| e.tokenizer().encode(t).unwrap().ids)
        .collect();
    assert!(
        ids.iter().map(|v| v.len()).max().unwrap()
            > 10 * ids.iter().map(|v| v.len()).min().unwrap()
    );
    let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let batched = model.embed_ids(&seqs).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let alone = model.embed_ids(&[s]).unwrap();
        let c = cosine(&batched[i], &alone[0]);
        assert!(c >= 0.9999, "cosine {c:.7} for {:?}", texts[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_callers_each_get_their_own_vector() {
    let e = embedder(&encoder_config());
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "request number {i}: {}",
                "please route this prompt ".repeat(i % 9 + 1)
            )
        })
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in texts.iter().enumerate() {
        let (e, t) = (e.clone(), t.clone());
        set.spawn(async move { (i, e.embed(&t).await.unwrap()) });
    }
    let mut got = vec![None; texts.len()];
    let mut max_batch = 0;
    while let Some(r) = set.join_next().await {
        let (i, emb) = r.unwrap();
        max_batch = max_batch.max(emb.batch_size);
        got[i] = Some(emb.vector);
    }
    assert!(max_batch > 1, "concurrent requests were never coalesced");
    let model = e.model();
    for (i, t) in texts.iter().enumerate() {
        let ids = e.tokenizer().encode(t).unwrap().ids;
        let alone = model.embed_ids(&[&ids]).unwrap();
        let c = cosine(got[i].as_ref().unwrap(), &alone[0]);
        assert!(
            c >= 0.9999,
            "caller {i} got a vector with cosine {c:.6} to its own"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_answers_overloaded_at_once() {
    let cfg = EncoderConfig {
        queue_capacity: 4,
        workers: 1,
        max_batch_items: 1,
        ..encoder_config()
    };
    let e = embedder(&cfg);
    let text = "a prompt long enough to keep the single worker busy for a while ".repeat(6);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (e, t) = (e.clone(), text.clone());
        set.spawn(async move { e.embed(&t).await });
    }
    let (mut ok, mut overloaded) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(EmbedError::Overloaded { capacity }) => {
                assert_eq!(capacity, 4);
                overloaded += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(
        overloaded > 0,
        "no caller was refused with 64 callers and capacity 4"
    );
    assert!(ok >= 4, "only {ok} callers were served");
    // Still serving afterwards.
    e.embed("still alive?").await.unwrap();
}

#[tokio::test]
async fn empty_and_oversized_text_are_refused_with_the_limit_named() {
    let cfg = EncoderConfig {
        max_input_bytes: 1000,
        ..encoder_config()
    };
    let e = embedder(&cfg);
    assert!(matches!(e.embed("").await, Err(EmbedError::EmptyInput)));
    assert!(matches!(
        e.embed("   \n\t").await,
        Err(EmbedError::EmptyInput)
    ));
    let err = e.embed(&"x".repeat(1001)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("1000") && msg.contains("max_input_bytes"),
        "message: {msg}"
    );
    assert!(e.embed(&"x ".repeat(500)).await.is_ok());
}

#[tokio::test]
async fn text_of_any_length_under_the_limit_is_truncated_not_rejected() {
    let cfg = EncoderConfig {
        max_tokens: 128,
        ..encoder_config()
    };
    let e = embedder(&cfg);
    // Mixed scripts, emoji and long words: far more than 512 tokens.
    let unit = "Zusammenfassung 数据 🙂 supercalifragilistic, (x+y)^2 = x^2 + 2xy + y^2. ";
    let long = unit.repeat(600);
    assert!(long.len() < cfg.max_input_bytes);
    let enc = e.tokenizer().encode(&long).unwrap();
    assert!(enc.truncated());
    assert_eq!(enc.ids.len(), 128);
    let got = e.embed(&long).await.unwrap();
    assert_eq!(got.tokens, 128);
    let norm: f32 = got.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    // Head+tail keeps the instruction at the end of a long prompt; head alone drops it.
    let prompt = format!(
        "{} Now translate the text above into French.",
        "The meeting moved to Tuesday. ".repeat(200)
    );
    let ht = e.tokenizer().encode(&prompt).unwrap().ids;
    let tail_tok = e.tokenizer().encode("French").unwrap().ids[1];
    assert!(
        ht.contains(&tail_tok),
        "head_tail truncation lost the final instruction"
    );
}

/// The p50 (ms) of a `bench embed` row, after its label.
fn p50_after(line: &str, label: &str) -> f64 {
    let rest = &line[line.find(label).expect("row label") + label.len()..];
    let at = rest.find("p50").expect("p50 column") + 3;
    rest[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn bench_embed_runs_and_reports_every_row() {
    // Smoke test of the benchmark path through the real binary (numbers come from release
    // runs, BENCHMARKS.md). The stock-BERT reference row needs `--features bench-reference`;
    // `stock_bert_matches_our_forward` below checks the same model for correctness instead.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "bench",
            "embed",
            "--iterations",
            "2",
            "--rounds",
            "1",
            "--workers",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let singles: Vec<&str> = text.lines().filter(|l| l.starts_with("single")).collect();
    let tokens: Vec<usize> = singles
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(tokens, vec![16, 64, 256]);
    let bare: Vec<&str> = text.lines().filter(|l| l.contains("bare fwd")).collect();
    assert_eq!(bare.len(), 3, "{text}");
    assert!(
        singles.iter().all(|l| p50_after(l, "end-to-end") > 0.0),
        "{text}"
    );
    assert!(
        bare.iter().all(|l| p50_after(l, "bare fwd") > 0.0),
        "{text}"
    );
    let batched = text
        .lines()
        .find(|l| l.starts_with("batched:"))
        .expect("batched row");
    // Through the queue, and the bare forward of the same batch.
    let words: Vec<&str> = batched.split_whitespace().collect();
    let rates: Vec<f64> = words
        .windows(2)
        .filter(|w| w[1].starts_with("prompts/s"))
        .map(|w| w[0].parse().unwrap())
        .collect();
    assert_eq!(rates.len(), 2, "{batched}");
    assert!(rates.iter().all(|r| *r > 0.0), "{batched}");
}

#[test]
fn stock_bert_matches_our_forward() {
    // candle-transformers' BertModel on the same weights and ids: our fused forward must agree.
    use candle_transformers::models::bert::{BertModel, Config};
    let dir = common::model_dir();
    let cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let dev = candle_core::Device::Cpu;
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev);
    let stock = BertModel::load(vb, &cfg).unwrap();
    let ours = SentenceEncoder::load(&dir, &dev).unwrap();
    let e = embedder(&encoder_config());
    for text in [
        "How do I reset my password?",
        "Prove that sqrt(2) is irrational",
    ] {
        let ids = e.tokenizer().encode(text).unwrap().ids;
        let t = candle_core::Tensor::new(ids.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = stock.forward(&t, &t.zeros_like().unwrap(), None).unwrap();
        let pooled: Vec<f32> = hidden
            .mean(1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = ours.embed_ids(&[ids.as_slice()]).unwrap().remove(0);
        let c = cosine(&pooled, &got);
        assert!(c > 0.9999, "{text:?}: cosine {c}");
    }
}

#[test]
fn bench_embed_measures_a_random_weight_shape_and_refuses_a_bad_one() {
    let run = |shape: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["bench", "embed", "--iterations", "2", "--rounds", "1"])
            .args(["--shape", shape])
            .output()
            .unwrap()
    };
    let out = run("2x128");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("random-weight BERT 2 layers × 128"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("single")).count(), 3);
    let bad = run("12x100");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--shape 12x100"));
}
