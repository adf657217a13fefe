//! Tokenization with our own truncation. The bundled tokenizer.json pads and truncates
//! every input to 128 tokens; both are switched off here: batches are padded by the
//! worker to their longest member, and long inputs are cut by `Truncation` below.
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::EmbedError;

/// What to keep of an input longer than the token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first tokens.
    Head,
    /// Keep the first three quarters of the budget and the last quarter: instructions sit
    /// at the start ("Summarize: …") or at the end ("… translate the above") of long prompts.
    HeadTail,
}

/// A tokenized input, ready for the model.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Tokens before truncation (with special tokens).
    pub original_tokens: usize,
}

impl Encoded {
    pub fn truncated(&self) -> bool {
        self.original_tokens > self.ids.len()
    }
}

/// Tokenizer + input limits.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    max_tokens: usize,
    truncation: Truncation,
    max_input_bytes: usize,
}

impl TextTokenizer {
    /// `max_tokens` includes the two special tokens and is capped by the model's positions.
    pub fn load(
        path: &Path,
        max_tokens: usize,
        truncation: Truncation,
        max_input_bytes: usize,
    ) -> Result<Self, EmbedError> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| EmbedError::Load(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Load(format!("{}: {e}", path.display())))?;
        Ok(Self {
            tokenizer,
            max_tokens: max_tokens.max(3),
            truncation,
            max_input_bytes,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Name of the truncation strategy (part of the embedding cache key).
    pub fn truncation_name(&self) -> &'static str {
        match self.truncation {
            Truncation::Head => "head",
            Truncation::HeadTail => "head_tail",
        }
    }

    pub fn max_input_bytes(&self) -> usize {
        self.max_input_bytes
    }

    /// Checks the input limits, tokenizes and truncates. Never fails on valid UTF-8 under
    /// the byte limit.
    pub fn encode(&self, text: &str) -> Result<Encoded, EmbedError> {
        if text.trim().is_empty() {
            return Err(EmbedError::EmptyInput);
        }
        if text.len() > self.max_input_bytes {
            return Err(EmbedError::InputTooLong {
                bytes: text.len(),
                limit: self.max_input_bytes,
            });
        }
        let enc = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let ids = enc.get_ids();
        Ok(Encoded {
            ids: truncate(ids, self.max_tokens, self.truncation),
            original_tokens: ids.len(),
        })
    }

    /// The tokenizer's vocabulary (token → id), for the classifier's typo repair.
    pub fn vocab(&self) -> std::collections::HashMap<String, u32> {
        self.tokenizer.get_vocab(false)
    }

    /// Number of tokens of `text` (with special tokens, before truncation).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode_fast(text, true)
            .map(|e| e.len())
            .unwrap_or(text.len() / 4)
    }
}

/// Cuts `ids` (starting with [CLS] and ending with [SEP]) to `max` tokens, keeping both
/// special tokens.
pub fn truncate(ids: &[u32], max: usize, strategy: Truncation) -> Vec<u32> {
    if ids.len() <= max || ids.len() < 2 {
        return ids.to_vec();
    }
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    let body = &ids[1..ids.len() - 1];
    let budget = max - 2;
    let (head, tail) = match strategy {
        Truncation::Head => (budget, 0),
        Truncation::HeadTail => {
            let tail = budget / 4;
            (budget - tail, tail)
        }
    };
    let mut out = Vec::with_capacity(max);
    out.push(first);
    out.extend_from_slice(&body[..head]);
    out.extend_from_slice(&body[body.len() - tail..]);
    out.push(last);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_untouched() {
        let ids = [101, 1, 2, 3, 102];
        assert_eq!(truncate(&ids, 8, Truncation::HeadTail), ids.to_vec());
    }

    #[test]
    fn head_keeps_the_start_and_the_special_tokens() {
        let ids: Vec<u32> = std::iter::once(101)
            .chain(1..=20)
            .chain(std::iter::once(102))
            .collect();
        assert_eq!(
            truncate(&ids, 6, Truncation::Head),
            vec![101, 1, 2, 3, 4, 102]
        );
    }

    #[test]
    fn head_tail_keeps_both_ends() {
        let ids: Vec<u32> = std::iter::once(101)
            .chain(1..=20)
            .chain(std::iter::once(102))
            .collect();
        let out = truncate(&ids, 10, Truncation::HeadTail);
        assert_eq!(out.len(), 10);
        assert_eq!(out, vec![101, 1, 2, 3, 4, 5, 6, 19, 20, 102]);
    }
}
