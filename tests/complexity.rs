//! The two-output complexity head: trained on graded rows, retrainable (with the domain head,
//! `--keep-heads`) while the intent head is kept bit for bit, and heads of the older one-output
//! format still load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use switchboard::classify::{Classifier, META_FILE, WEIGHTS_FILE};
use switchboard::embed::Embedder;
use switchboard::train::run;
use switchboard::train::TrainConfig;

fn config(out: &Path, cache: &Path) -> TrainConfig {
    let mut cfg = common::slice_config(out, cache);
    cfg.data.push(common::fixture("graded_slice.jsonl"));
    cfg
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.dims() == b.dims() && flat(a) == flat(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_heads_keeps_intent_retrains_the_rest_and_one_output_heads_still_load() {
    let embedder: Embedder = common::embedder(&common::encoder_config());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    let first = run::train(&embedder, &config(&a, &cache)).await.unwrap();
    assert_eq!(first.classifier.meta.complexity_outputs, 2);
    assert!(
        first.dev_report.graded_n > 0,
        "the graded rows reach the dev split"
    );

    // Keep intent from `a`, train the domain and complexity heads afresh with another seed.
    let mut cfg = config(&b, &cache);
    cfg.fit.seed = 12;
    cfg.keep_heads = Some(a.clone());
    let second = run::train(&embedder, &cfg).await.unwrap();
    let (ta, tb) = (tensors(&a), tensors(&b));
    for (name, t) in &ta {
        let kept = name.starts_with("intent.");
        assert_eq!(same(t, &tb[name]), kept, "{name}: kept {kept}");
    }
    assert_eq!(
        second.classifier.meta.training["kept_heads_from"],
        serde_json::json!(first.classifier.version())
    );

    // A head made for another encoder cannot be kept.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::copy(a.join(WEIGHTS_FILE), foreign.join(WEIGHTS_FILE)).unwrap();
    let text = std::fs::read_to_string(a.join(META_FILE)).unwrap();
    let sha = embedder.info().weights_sha256;
    std::fs::write(foreign.join(META_FILE), text.replace(&sha, &"0".repeat(64))).unwrap();
    let mut cfg = config(&tmp.path().join("c"), &cache);
    cfg.keep_heads = Some(foreign);
    let err = run::train(&embedder, &cfg)
        .await
        .err()
        .expect("foreign head kept");
    assert!(err.to_string().contains("--keep-heads"), "{err}");

    // The older format: one complexity output, no `complexity_outputs` in the metadata.
    let old = tmp.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let mut w = ta.clone();
    for n in ["complexity.out.weight", "complexity.out.bias"] {
        w.insert(n.into(), w[n].narrow(0, 0, 1).unwrap());
    }
    candle_core::safetensors::save(&w, old.join(WEIGHTS_FILE)).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    meta.as_object_mut().unwrap().remove("complexity_outputs");
    std::fs::write(old.join(META_FILE), meta.to_string()).unwrap();
    let old_c = Classifier::load(&old, &embedder.info()).unwrap();
    assert_eq!(old_c.meta.complexity_outputs, 1);
    let e = embedder
        .embed("A train leaves at 3 pm at 60 km/h; when has it covered 150 km?")
        .await
        .unwrap();
    let p_new = first.classifier.predict(&e.vector, e.tokens, None).unwrap();
    let p_old = old_c.predict(&e.vector, e.tokens, None).unwrap();
    assert_eq!(p_old.small_fails, p_new.small_fails, "same first output");
    assert_eq!(
        p_old.complexity, p_old.small_fails,
        "old score = P(small fails)"
    );
    assert!((0.0..=1.0).contains(&p_new.complexity), "{p_new:?}");
}
