//! A small hand-written check set for the shipped classifier: prompts written for this project
//! (not from the training data), phrased the way people type. It guards against a retrained
//! default head that only learned the template phrasing of the training data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use switchboard::classify::Classifier;

const CHECK_SET: &[(&str, &str)] = &[
    ("write a python script that renames every .jpg in a folder by its creation date", "code"),
    ("my rust code won't compile: borrowed value does not live long enough. how do i fix it?", "code"),
    ("Implement a function in JavaScript that debounces another function.", "code"),
    ("what is 17% of 2,340?", "math"),
    ("Solve for x: 3x^2 - 12x + 9 = 0", "math"),
    ("If a train travels 240 km in 3 hours, what is its average speed in m/s?", "math"),
    ("who wrote the novel One Hundred Years of Solitude?", "open_qa"),
    ("Why is the sky blue?", "open_qa"),
    ("what's the difference between a virus and a bacterium", "open_qa"),
    ("Write a short poem about the first snow of winter.", "creative_writing"),
    ("Give me 10 name ideas for a coffee shop run by cats.", "creative_writing"),
    ("Write a cover letter for a junior data analyst position at a bank.", "creative_writing"),
    ("hi! how's your day going?", "chat"),
    ("From now on you are Captain Jack, a pirate. Stay in character. Ready?", "chat"),
    ("Translate into German: The meeting has been moved to Thursday afternoon.", "translation"),
    ("Summarize the following article in three bullet points:\n\nThe city council voted on Tuesday to expand the bike lane network by 40 kilometres over the next five years. Supporters said the plan would cut traffic and emissions, while opponents worried about the loss of parking spaces for local shops. The first new lanes will open downtown next spring.", "summarization"),
    ("Rewrite this sentence so it sounds more professional: hey guys, the report is gonna be late cuz the data was messed up", "rewrite"),
    ("Classify the sentiment of this review as positive or negative: \"The battery died after two days and support never answered.\"", "classification"),
];

/// Check-set prompts with typos typed by hand (swapped, dropped, doubled letters), and the
/// words the repair must restore.
const TYPOS: &[(&str, usize, &[&str])] = &[
    ("write a pyhton script that renames every .jpg in a foldr by its creation date", 0, &["python", "folder"]),
    ("Implement a funtion in JavaScript that debounces another function.", 2, &["function"]),
    ("Why is the skyy blue?", 7, &["sky"]),
    ("what's the diference between a virus and a bacterium", 8, &["difference"]),
    ("Write a short peom about the first snwo of winter.", 9, &["poem", "snow"]),
    ("Transalte into German: The meeting has been moved to Thursday afternoon.", 14, &["translate"]),
    ("Rewrite this sentence so it sounds more profesional: hey guys, the report is gonna be late cuz the data was messed up", 16, &["professional"]),
];

fn shipped() -> (switchboard::embed::Embedder, Classifier) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/classifier");
    // A fine-tuned classifier carries its encoder; run it as the server does.
    let mut enc = common::encoder_config();
    if let Some(own) = switchboard::classify::own_encoder(&dir) {
        enc.model_dir = own;
    }
    let e = common::embedder(&enc);
    let c = Classifier::load(&dir, &e.info()).expect("the shipped classifier loads");
    (e, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_head_repairs_typed_typos_and_keeps_the_intent() {
    let (e, c) = shipped();
    assert!(
        c.repairs_typos(),
        "the shipped heads carry a typo-repair lexicon"
    );
    for (typo, i, words) in TYPOS {
        let fixed = c.prepare(typo);
        for w in *words {
            assert!(fixed.contains(w), "{w:?} not restored in {fixed:?}");
        }
        let clean = c.prepare(CHECK_SET[*i].0);
        let a = e.embed(&fixed).await.unwrap();
        let b = e.embed(&clean).await.unwrap();
        let (pa, pb) = (
            c.predict(&a.vector, a.tokens, None).unwrap(),
            c.predict(&b.vector, b.tokens, None).unwrap(),
        );
        assert_eq!(pa.intent, pb.intent, "{typo:?}");
    }
    // Words the repair knows pass through untouched. A rare word one edit from a common one
    // is the known false repair: "debounces" (not in the lexicon) becomes "denounces".
    let changed: Vec<&str> = CHECK_SET
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| matches!(c.prepare(t), std::borrow::Cow::Owned(_)))
        .collect();
    assert_eq!(
        changed,
        [CHECK_SET[2].0],
        "clean prompts the repair changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_head_gets_most_of_the_hand_written_check_set() {
    let (e, c) = shipped();
    let mut wrong = Vec::new();
    for (text, want) in CHECK_SET {
        let emb = e.embed(&c.prepare(text)).await.unwrap();
        let p = c.predict(&emb.vector, emb.tokens, None).unwrap();
        if p.intent != *want {
            wrong.push(format!(
                "{want} → {} ({:.2}): {text}",
                p.intent, p.confidence
            ));
        }
    }
    let right = CHECK_SET.len() - wrong.len();
    eprintln!(
        "check set: {right}/{} right\n{}",
        CHECK_SET.len(),
        wrong.join("\n")
    );
    // 18 prompts; the bar is 14 right (78%). Record misses so a regression is visible.
    assert!(
        right >= 14,
        "{right}/{} right; misses:\n{}",
        CHECK_SET.len(),
        wrong.join("\n")
    );
}
