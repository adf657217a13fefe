//! The one function that turns a conversation into the classifier's input text.
//!
//! The last user turn comes first and whole (it is what must be answered, and head+tail
//! truncation keeps the head). Then, bounded, the context that decides what a short follow-up
//! means: the previous user turn, the last assistant turn, and the system prompt. So
//! "now do the same in Rust" after a coding exchange carries that exchange's code with it.

/// A conversation turn.
#[derive(Debug, Clone)]
pub struct Turn<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// Characters of each context turn kept after the last user turn.
pub const CONTEXT_CHARS: usize = 600;

fn clip(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Builds the classifier input. Returns None when there is no non-empty user turn.
pub fn classifier_input(turns: &[Turn<'_>]) -> Option<String> {
    let last_user = turns
        .iter()
        .rposition(|t| t.role == "user" && !t.content.trim().is_empty())?;
    let mut out = turns[last_user].content.trim().to_string();
    let earlier = &turns[..last_user];
    let prev_user = earlier.iter().rev().find(|t| t.role == "user");
    let prev_assistant = earlier.iter().rev().find(|t| t.role == "assistant");
    let system = turns.iter().find(|t| t.role == "system");
    for t in [prev_user, prev_assistant, system].into_iter().flatten() {
        let c = t.content.trim();
        if !c.is_empty() {
            out.push_str("\n\n");
            out.push_str(clip(c, CONTEXT_CHARS));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(role: &'a str, content: &'a str) -> Turn<'a> {
        Turn { role, content }
    }

    #[test]
    fn single_turn_is_the_text_itself() {
        assert_eq!(
            classifier_input(&[t("user", "  hello ")]).as_deref(),
            Some("hello")
        );
    }

    #[test]
    fn follow_up_carries_bounded_context_after_the_last_turn() {
        let long = "x".repeat(5000);
        let turns = [
            t("system", "You are a coder."),
            t("user", "write fizzbuzz in python"),
            t("assistant", &long),
            t("user", "now in Rust"),
        ];
        let s = classifier_input(&turns).unwrap();
        assert!(s.starts_with("now in Rust\n\nwrite fizzbuzz in python\n\n"));
        assert!(s.ends_with("You are a coder."));
        assert!(s.len() < 5000);
    }

    #[test]
    fn no_user_turn_gives_none() {
        assert!(classifier_input(&[t("system", "be brief"), t("user", "  ")]).is_none());
    }
}
