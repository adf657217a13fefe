//! The fuzz targets' smoke run, inside the ordinary suite: every checked-in seed and every
//! regression input (a crash a fuzzer once found) replayed through its entry point, then
//! random and mutated inputs from proptest. The long coverage-guided runs are `cargo fuzz`
//! (docs/fuzzing.md); this keeps every target building and every past crash fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use switchboard::fuzz::TARGETS;

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = entries
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_target_has_seeds_and_replays_them_and_past_crashes() {
    for (name, run) in TARGETS {
        let seeds = inputs("seeds", name);
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} is empty");
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{name}.rs"));
        assert!(src.is_file(), "no cargo-fuzz target for {name}");
        for (path, bytes) in seeds.into_iter().chain(inputs("regressions", name)) {
            let r = std::panic::catch_unwind(|| run(&bytes));
            assert!(r.is_ok(), "{name} panicked on {}", path.display());
        }
    }
}

#[test]
fn the_inline_heads_seed_is_a_real_artifact() {
    let seeds = inputs("seeds", "inline_heads");
    let real = seeds.iter().find(|(p, _)| p.ends_with("bundled_heads"));
    let (_, bytes) = real.expect("fuzz/seeds/inline_heads/bundled_heads");
    switchboard::live::registry::inline_classifier(bytes).expect("the bundled heads, packed");
}

/// One seed of `target`, mutated: bytes flipped, cut, or spliced with random ones.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = seed.len().max(1);
    (
        proptest::collection::vec((0..n, any::<u8>()), 0..8),
        0..=n,
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut b = seed.clone();
            for (i, v) in flips {
                if let Some(x) = b.get_mut(i) {
                    *x = v;
                }
            }
            b.truncate(cut);
            b.extend(tail);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), t in 0..TARGETS.len()) {
        (TARGETS[t].1)(&bytes);
    }

    #[test]
    fn mutated_seeds_never_panic((t, bytes) in (0..TARGETS.len()).prop_flat_map(|t| {
        let seeds: Vec<Vec<u8>> = inputs("seeds", TARGETS[t].0).into_iter().map(|(_, b)| b).collect();
        let n = seeds.len().max(1);
        (Just(t), (0..n).prop_flat_map(move |i| mutated(seeds.get(i).cloned().unwrap_or_default())))
    })) {
        (TARGETS[t].1)(&bytes);
    }
}
