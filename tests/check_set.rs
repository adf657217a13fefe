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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_head_gets_most_of_the_hand_written_check_set() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/classifier");
    // A fine-tuned classifier carries its encoder; run it as the server does.
    let mut enc = common::encoder_config();
    if let Some(own) = switchboard::classify::own_encoder(&dir) {
        enc.model_dir = own;
    }
    let e = common::embedder(&enc);
    let c = Classifier::load(&dir, &e.info()).expect("the shipped classifier loads");
    let mut wrong = Vec::new();
    for (text, want) in CHECK_SET {
        let emb = e.embed(text).await.unwrap();
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
