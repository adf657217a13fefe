//! The prompt's language, a routing signal beside intent and domain. whatlang compares the
//! text's character trigrams with 69 languages' profiles compiled into the binary: no model
//! files, no allocation beyond the trigram table, microseconds for a prompt. Short or mixed
//! texts come back unreliable, and the confidence says so.
use serde::{Deserialize, Serialize};

/// Characters looked at: a prompt's language shows in its opening; a long paste (code, a
/// document) would only cost time.
const MAX_CHARS: usize = 1_000;

/// A detected language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Language {
    /// ISO 639-3 ("eng", "spa", "cmn", "jpn", …); empty when nothing could be told.
    pub code: String,
    /// In [0, 1]; whatlang's own measure of how far the best profile beat the next.
    pub confidence: f32,
}

/// The language of `text`, when there is enough of it to tell.
pub fn detect(text: &str) -> Language {
    let end = text
        .char_indices()
        .nth(MAX_CHARS)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    match whatlang::detect(&text[..end]) {
        Some(info) => Language {
            code: info.lang().code().to_string(),
            confidence: info.confidence() as f32,
        },
        None => Language::default(),
    }
}

/// Whether `code` is a language the detector can report (for validating configuration).
pub fn known(code: &str) -> bool {
    whatlang::Lang::from_code(code).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_scripts_and_close_languages_apart() {
        assert_eq!(
            detect("What is the capital of France, and why is it there?").code,
            "eng"
        );
        assert_eq!(
            detect("¿Cuál es la capital de Francia y por qué está allí?").code,
            "spa"
        );
        assert_eq!(
            detect("Какая столица Франции и почему она там находится?").code,
            "rus"
        );
        assert_eq!(detect("").code, "");
        assert!(known("jpn") && !known("xx"));
        // Past the bound the text is not read (and a char boundary is respected).
        let long = "é".repeat(50_000);
        let _ = detect(&long);
    }
}
