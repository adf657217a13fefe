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

/// Known words with their rank (lower is more frequent), and a one-delete index (SymSpell's
/// idea): every known word is filed under each string one deletion away from it. A substitution
/// or insertion then costs one probe per letter instead of 26, and a whole repair about three
/// probes per letter.
pub struct SpellFixer {
    words: FxHashMap<String, u32>,
    /// Word by rank.
    by_rank: Vec<Box<str>>,
    /// Hash of a one-deletion string → range of `postings`.
    deletes: FxHashMap<u64, (u32, u32)>,
    /// Ranks of the words, grouped by deletion string.
    postings: Vec<u32>,
}

fn hash(w: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(w);
    h.finish()
}

/// Key of the lexicon in the heads' safetensors metadata: one word a line, most frequent first.
pub const LEXICON_KEY: &str = "spell_lexicon";
/// A word must occur in this many groups of training prompts (`dataset::split_group`: a
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

/// Built fixers by the sha256 of their lexicon. Building one takes about 80 ms of CPU, and
/// the heads variants of one training run, a retrained head and the kept versions all share
/// one lexicon: a swap should not rebuild it while the encoder is busy.
static BUILT: std::sync::Mutex<Vec<([u8; 32], std::sync::Weak<SpellFixer>)>> =
    std::sync::Mutex::new(Vec::new());

impl SpellFixer {
    /// The fixer for `lexicon`, shared with any live classifier that carries the same one.
    pub fn shared(lexicon: &str) -> std::sync::Arc<Self> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(lexicon.as_bytes()).into();
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        built.retain(|(_, w)| w.strong_count() > 0);
        if let Some(f) = built
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return f;
        }
        let f = std::sync::Arc::new(Self::from_lexicon(lexicon));
        built.push((key, std::sync::Arc::downgrade(&f)));
        f
    }

    /// From a lexicon: one word a line, most frequent first.
    pub fn from_lexicon(lexicon: &str) -> Self {
        let mut words = FxHashMap::default();
        let mut by_rank = Vec::new();
        let mut filed: Vec<(u64, u32)> = Vec::new();
        let mut buf = Vec::new();
        for (rank, w) in lexicon.lines().enumerate() {
            by_rank.push(Box::from(w));
            let (rank, b) = (rank as u32, w.as_bytes());
            let first = match words.entry(w.to_string()) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(rank);
                    true
                }
                std::collections::hash_map::Entry::Occupied(_) => false,
            };
            if !first || !(MIN_LEN - 1..=MAX_LEN + 1).contains(&b.len()) {
                continue;
            }
            for i in 0..b.len() {
                splice(b, &mut buf, i, 1, &[]);
                filed.push((hash(&buf), rank));
            }
        }
        filed.sort_unstable();
        filed.dedup();
        let mut deletes = FxHashMap::default();
        let mut start = 0u32;
        for group in filed.chunk_by(|x, y| x.0 == y.0) {
            deletes.insert(group[0].0, (start, group.len() as u32));
            start += group.len() as u32;
        }
        let postings = filed.into_iter().map(|(_, r)| r).collect();
        Self {
            words,
            by_rank,
            deletes,
            postings,
        }
    }

    /// The rank of `w` if it is a known word.
    fn rank_of(&self, w: &[u8]) -> Option<u32> {
        let s = std::str::from_utf8(w).ok()?;
        self.words.get(s).copied()
    }

    /// Ranks of the known words filed under the deletion string `d`.
    fn filed_under(&self, d: &[u8]) -> &[u32] {
        match self.deletes.get(&hash(d)) {
            Some(&(s, n)) => &self.postings[s as usize..(s + n) as usize],
            None => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The text with each unknown word of [MIN_LEN, MAX_LEN] ASCII letters repaired when a
    /// known word is one edit away. Borrowed when nothing changed.
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

    /// The most frequent known word one edit from `lower` (delete, swap, replace, insert), if any.
    fn nearest(&self, lower: &str) -> Option<String> {
        let w = lower.as_bytes();
        let mut best = u32::MAX;
        let mut consider = |rank: u32| best = best.min(rank);
        let mut buf = Vec::with_capacity(w.len() + 1);
        // `w` is a known word with a letter missing: that word is filed under `w`.
        for &r in self.filed_under(w) {
            if is_one_insert(self.by_rank[r as usize].as_bytes(), w) {
                consider(r);
            }
        }
        for i in 0..w.len() {
            splice(w, &mut buf, i, 1, &[]);
            // `w` has a letter too many.
            if let Some(r) = self.rank_of(&buf) {
                consider(r);
            }
            // `w` has a wrong letter at i: the word, deleted at i, equals `w` deleted at i.
            for &r in self.filed_under(&buf) {
                let k = self.by_rank[r as usize].as_bytes();
                if k.len() == w.len() && differs_only_at(k, w, i) {
                    consider(r);
                }
            }
            // Two letters swapped.
            if i + 1 < w.len() && w[i] != w[i + 1] {
                splice(w, &mut buf, i, 2, &[w[i + 1], w[i]]);
                if let Some(r) = self.rank_of(&buf) {
                    consider(r);
                }
            }
        }
        (best != u32::MAX).then(|| self.by_rank[best as usize].to_string())
    }
}

/// `long` is `short` with one byte inserted.
fn is_one_insert(long: &[u8], short: &[u8]) -> bool {
    if long.len() != short.len() + 1 {
        return false;
    }
    let j = short
        .iter()
        .zip(long)
        .position(|(a, b)| a != b)
        .unwrap_or(short.len());
    long[j + 1..] == short[j..]
}

/// `a` and `b` (same length) are equal except at position `i`.
fn differs_only_at(a: &[u8], b: &[u8], i: usize) -> bool {
    a[..i] == b[..i] && a[i] != b[i] && a[i + 1..] == b[i + 1..]
}

/// Writes `w` with `skip` bytes at `i` replaced by `mid` into `buf`.
fn splice(w: &[u8], buf: &mut Vec<u8>, i: usize, skip: usize, mid: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&w[..i]);
    buf.extend_from_slice(mid);
    buf.extend_from_slice(&w[i + skip..]);
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
        splice(w, buf, i, skip, mid);
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
        // "trust" and "json" are in three groups. The typo "jsno" is in four rows but only two
        // groups (rows of one group are template phrasings of one passage), so it is left out.
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
    fn the_delete_index_finds_what_trying_every_edit_finds() {
        let lexicon = "the\nthen\nthem\nthere\nthese\nthose\ntheir\nhere\nwhere\nwere\nwhere\nstring\nstrong\nspring\nsting\nstrings\nwrong\n";
        let f = SpellFixer::from_lexicon(lexicon);
        let mut rank: HashMap<&str, usize> = HashMap::new();
        for (i, w) in lexicon.lines().enumerate() {
            rank.entry(w).or_insert(i);
        }
        let brute = |w: &str| {
            let mut best: Option<(usize, String)> = None;
            for_each_edit(w.as_bytes(), &mut Vec::new(), |c| {
                let c = std::str::from_utf8(c).unwrap();
                if let Some(&r) = rank.get(c) {
                    if best.as_ref().is_none_or(|(b, _)| r < *b) {
                        best = Some((r, c.to_string()));
                    }
                }
            });
            best.map(|(_, w)| w)
        };
        let probes = [
            "thm", "tehn", "thenn", "thxn", "hten", "theer", "thsoe", "wehre", "hree", "strnig",
            "strin", "sstring", "sprong", "stirngs", "wrogn", "xyzzy", "theire", "ther", "strongg",
        ];
        for w in probes {
            assert_eq!(f.nearest(w), brute(w), "{w}");
        }
    }

    #[test]
    fn one_lexicon_is_built_once_while_in_use() {
        let a = SpellFixer::shared("alpha\nbeta\n");
        let b = SpellFixer::shared("alpha\nbeta\n");
        let c = SpellFixer::shared("gamma\n");
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
        assert_eq!(c.fix("gamm"), "gamma");
    }

    #[test]
    fn lookups_per_text_are_bounded() {
        let f = fixer();
        let many = "managr ".repeat(MAX_LOOKUPS + 5);
        let fixed = f.fix(&many);
        assert_eq!(fixed.matches("manager").count(), MAX_LOOKUPS);
    }
}
