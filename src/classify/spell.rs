//! Typo repair before classification: a word that is neither in the encoder's vocabulary nor in
//! the classifier's lexicon (the words of its training prompts) is replaced by the most frequent
//! known word one edit away (delete, insert, replace, swap). Typos otherwise split a word into
//! unrelated word pieces and move the embedding. The vocabulary alone is too small a dictionary
//! (it lacks "json", "const", "summarize"), hence the lexicon.
use std::borrow::Cow;
use std::collections::HashMap;

use rustc_hash::FxHashMap;

/// Words shorter than this are left alone: too many short words are one edit apart.
const MIN_LEN: usize = 4;
/// Longer runs of letters are identifiers or pasted data, not words.
const MAX_LEN: usize = 24;

/// Known words with their rank (lower is more frequent). FxHash: a one-edit search probes
/// about 50 candidates per letter, and SipHash would be most of its cost.
pub struct SpellFixer {
    words: FxHashMap<String, u32>,
}

/// Key of the lexicon in the heads' safetensors metadata: one word a line, most frequent first.
pub const LEXICON_KEY: &str = "spell_lexicon";
/// A word must occur in this many groups of training prompts (`train::data::split_group`: a
/// prompt, or all template phrasings of one passage) to enter the lexicon: rarer words are
/// often typos themselves, or names.
pub const MIN_GROUPS: usize = 3;
/// Only words in the first HEAD_BYTES and the last TAIL_BYTES of a text are repaired: the encoder
/// reads 128 tokens, the first 96 and the last 30 of a longer text (about 4 bytes a token).
const HEAD_BYTES: usize = 800;
const TAIL_BYTES: usize = 300;
/// At most this many unknown words are looked up per text, which bounds the cost of pasted
/// code or foreign-language text.
const MAX_LOOKUPS: usize = 64;

impl SpellFixer {
    /// From a lexicon: one word a line, most frequent first.
    pub fn from_lexicon(lexicon: &str) -> Self {
        let mut words = FxHashMap::default();
        for (rank, w) in lexicon.lines().enumerate() {
            words.entry(w.to_string()).or_insert(rank as u32);
        }
        Self { words }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The text with each unknown word of [MIN_LEN, MAX_LEN] ASCII letters repaired when a
    /// vocabulary word is one edit away. Borrowed when nothing changed.
    pub fn fix<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let bytes = text.as_bytes();
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut i = 0;
        let mut lookups = 0;
        while i < bytes.len() && lookups < MAX_LOOKUPS {
            if !bytes[i].is_ascii_alphabetic() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            if start >= HEAD_BYTES && start + TAIL_BYTES < bytes.len() {
                // Skip to the tail (past any word cut there): the middle of a long text never
                // reaches the encoder.
                i = i.max(bytes.len() - TAIL_BYTES);
                while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                    i += 1;
                }
                continue;
            }
            // A letter run glued to digits or an underscore is an identifier.
            let glued = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || *b == b'_');
            if glued(bytes.get(i)) || (start > 0 && glued(bytes.get(start - 1))) {
                continue;
            }
            let Some(lower) = self.unknown(&text[start..i]) else {
                continue;
            };
            lookups += 1;
            if let Some(fixed) = self.nearest(&lower) {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[copied..start]);
                o.push_str(&fixed);
                copied = i;
            }
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[copied..]);
                Cow::Owned(o)
            }
        }
    }

    /// The lowercased word when it is a candidate for repair: unknown, of [MIN_LEN, MAX_LEN]
    /// letters, and not an acronym or name.
    fn unknown(&self, word: &str) -> Option<String> {
        if !(MIN_LEN..=MAX_LEN).contains(&word.len()) {
            return None;
        }
        // Capitals after the first letter mark an acronym or a name (FOMO, CBoost).
        if word.bytes().skip(1).any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let lower = word.to_ascii_lowercase();
        (!self.words.contains_key(&lower)).then_some(lower)
    }

    /// The most frequent known word one edit from `lower`, if any.
    fn nearest(&self, lower: &str) -> Option<String> {
        let mut best: Option<(u32, &str)> = None;
        let mut buf = Vec::with_capacity(lower.len() + 1);
        for_each_edit(lower.as_bytes(), &mut buf, |cand| {
            // Edits of ASCII letters with ASCII letters stay ASCII.
            let s = std::str::from_utf8(cand).unwrap_or_default();
            if let Some((k, &rank)) = self.words.get_key_value(s) {
                if best.is_none_or(|(b, _)| rank < b) {
                    best = Some((rank, k.as_str()));
                }
            }
        });
        best.map(|(_, w)| w.to_string())
    }
}

/// Builds the lexicon a classifier carries: the words of at least [MIN_GROUPS] of the `texts`'
/// groups (most frequent first), then the tokenizer's whole words (by id: WordPiece lists common
/// words first), then the dictionary's words, each word once. `texts` are (group, text): a word
/// counts once per group, so that the many template phrasings of one passage (one group) do
/// not make its rare words look common.
pub fn build_lexicon<'a>(
    texts: impl Iterator<Item = (String, &'a str)>,
    vocab: &HashMap<String, u32>,
    dictionary: &str,
) -> String {
    let mut texts: Vec<(String, &str)> = texts.collect();
    texts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut groups: HashMap<String, usize> = HashMap::new();
    for group in texts.chunk_by(|a, b| a.0 == b.0) {
        let words: std::collections::HashSet<String> =
            group.iter().flat_map(|(_, t)| words_of(t)).collect();
        for w in words {
            *groups.entry(w).or_default() += 1;
        }
    }
    let dict: std::collections::HashSet<&str> = dictionary
        .lines()
        .map(str::trim)
        .filter(|w| is_word(w))
        .collect();
    let checked = |w: &str| dict.contains(w) || vocab.contains_key(w);
    let mut common: Vec<(String, usize)> = groups
        .iter()
        .filter(|(w, n)| **n >= MIN_GROUPS && (checked(w) || !is_misspelling(w, **n, &groups)))
        .map(|(w, n)| (w.clone(), *n))
        .collect();
    common.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut by_id: Vec<(&String, &u32)> = vocab.iter().filter(|(w, _)| is_word(w)).collect();
    by_id.sort_by_key(|(_, id)| **id);
    let mut dict: Vec<&str> = dict.into_iter().collect();
    dict.sort_unstable();
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    let all = common
        .iter()
        .map(|(w, _)| w.as_str())
        .chain(by_id.into_iter().map(|(w, _)| w.as_str()))
        .chain(dict);
    for w in all {
        if seen.insert(w) {
            out.push_str(w);
            out.push('\n');
        }
    }
    out
}

/// A rare data word one edit from a far more common one is a frequent misspelling of it
/// ("profesional"), not a word to keep.
fn is_misspelling(w: &str, n: usize, groups: &HashMap<String, usize>) -> bool {
    const RARE: usize = 10;
    const RATIO: usize = 20;
    if n > RARE {
        return false;
    }
    let mut found = false;
    let mut buf = Vec::with_capacity(w.len() + 1);
    for_each_edit(w.as_bytes(), &mut buf, |cand| {
        let s = std::str::from_utf8(cand).unwrap_or_default();
        found |= groups.get(s).is_some_and(|&m| m >= RATIO * n);
    });
    found
}

/// The lowercased stand-alone words of [MIN_LEN, MAX_LEN] letters of a text.
fn words_of(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            (MIN_LEN..=MAX_LEN).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_alphabetic())
        })
        .map(str::to_ascii_lowercase)
}

fn is_word(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())
}

/// Calls `f` with every string one delete, swap, replace or insert (a–z) away from `w`,
/// built in `buf` so that no candidate allocates.
fn for_each_edit(w: &[u8], buf: &mut Vec<u8>, mut f: impl FnMut(&[u8])) {
    let n = w.len();
    let mut emit = |buf: &mut Vec<u8>, i: usize, skip: usize, mid: &[u8]| {
        buf.clear();
        buf.extend_from_slice(&w[..i]);
        buf.extend_from_slice(mid);
        buf.extend_from_slice(&w[i + skip..]);
        f(buf);
    };
    for i in 0..n {
        emit(buf, i, 1, &[]);
    }
    for i in 0..n.saturating_sub(1) {
        emit(buf, i, 2, &[w[i + 1], w[i]]);
    }
    for i in 0..=n {
        for c in b'a'..=b'z' {
            if i < n {
                emit(buf, i, 1, &[c]);
            }
            emit(buf, i, 0, &[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixer() -> SpellFixer {
        let vocab: HashMap<String, u32> = [
            ("the", 1),
            ("recruitment", 5),
            ("manager", 6),
            ("rust", 8),
            ("##ing", 10),
            ("[CLS]", 11),
        ]
        .into_iter()
        .map(|(w, i)| (w.to_string(), i))
        .collect();
        // "trust" and "json" are in three groups, the typo "jsno" in two.
        // "jsno" is in three rows of one group (template phrasings of one passage).
        let texts = [
            ("a", "trust json jsno"),
            ("b", "Trust the JSON."),
            ("c", "trust json"),
            ("c", "jsno"),
            ("c", "jsno x_trust2"),
        ];
        let dictionary = "resources\nRome\nrecruitment\n";
        let texts = texts.into_iter().map(|(g, t)| (g.to_string(), t));
        let lexicon = build_lexicon(texts, &vocab, dictionary);
        assert_eq!(
            lexicon, "json\ntrust\nthe\nrecruitment\nmanager\nrust\nresources\n",
            "data words by rows, then the vocabulary by id, then the dictionary, each once"
        );
        SpellFixer::from_lexicon(&lexicon)
    }

    #[test]
    fn one_edit_typos_are_repaired_and_known_words_kept() {
        let f = fixer();
        assert_eq!(f.len(), 7);
        assert_eq!(
            f.fix("The recruitmnet managr, resoruces!"),
            "The recruitment manager, resources!"
        );
        assert!(matches!(f.fix("the manager"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_most_frequent_neighbour_wins_and_identifiers_are_left_alone() {
        let f = fixer();
        // "tust" is one edit from "rust" (vocabulary) and "trust" (three training prompts).
        assert_eq!(f.fix("tust"), "trust");
        assert_eq!(f.fix("jsno json"), "json json");
        assert_eq!(
            f.fix("managr_2 managr2 resoruces"),
            "managr_2 managr2 resources"
        );
        // Too short to repair, too far to repair.
        assert_eq!(f.fix("teh mngr"), "teh mngr");
        // Acronyms and inner capitals are names, not typos.
        assert_eq!(f.fix("MANAGR ManagR Managr"), "MANAGR ManagR manager");
    }

    #[test]
    fn the_middle_of_a_long_text_is_left_alone() {
        let f = fixer();
        let filler = "x ".repeat(HEAD_BYTES);
        let text = format!("managr {filler}managr {filler}managr");
        let fixed = f.fix(&text);
        assert!(fixed.starts_with("manager "), "head repaired");
        assert!(fixed.ends_with(" manager"), "tail repaired");
        assert_eq!(fixed.matches("managr").count(), 1, "middle untouched");
    }

    #[test]
    fn a_common_misspelling_in_the_data_is_not_a_word() {
        let mut texts: Vec<(String, &str)> = (0..60)
            .map(|g| (g.to_string(), "a professional tone"))
            .collect();
        texts.extend((0..3).map(|g| (format!("t{g}"), "profesional tone")));
        let lexicon = build_lexicon(texts.into_iter(), &HashMap::new(), "");
        assert_eq!(lexicon, "tone\nprofessional\n");
        let f = SpellFixer::from_lexicon(&lexicon);
        assert_eq!(f.fix("a profesional tone"), "a professional tone");
    }

    #[test]
    fn lookups_per_text_are_bounded() {
        let f = fixer();
        let many = "managr ".repeat(MAX_LOOKUPS + 5);
        let fixed = f.fix(&many);
        assert_eq!(fixed.matches("manager").count(), MAX_LOOKUPS);
    }
}
