//! Generation parameters, checked before any upstream call: a value an upstream would refuse
//! (or a hostile one, such as NaN) costs no provider round trip and names its field.
use crate::config::Backend;

/// Most stop sequences a request may carry (OpenAI's own limit).
pub const MAX_STOP: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Generation parameters forwarded upstream. `seed` is any 64-bit integer; the transports'
/// typed parsing refuses everything else.
#[derive(Debug, Clone, Default)]
pub struct GenParams {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub json: bool,
}

/// A parameter out of range: its field, and why.
pub type Invalid = (String, String);

impl GenParams {
    /// Range checks. `largest_window` is the largest context window in the catalog: a
    /// `max_tokens` above it fits no backend.
    pub fn validate(&self, largest_window: u32) -> Result<(), Invalid> {
        let bad = |f: &str, m: String| Err((f.to_string(), m));
        if let Some(t) = self
            .temperature
            .filter(|t| !(t.is_finite() && (0.0..=2.0).contains(t)))
        {
            return bad(
                "temperature",
                format!("must be a number in [0, 2], found {t}"),
            );
        }
        if let Some(p) = self
            .top_p
            .filter(|p| !(p.is_finite() && (0.0..=1.0).contains(p)))
        {
            return bad("top_p", format!("must be a number in [0, 1], found {p}"));
        }
        match self.max_tokens {
            Some(0) => return bad("max_tokens", "must be at least 1".into()),
            Some(m) if m > largest_window => {
                return bad(
                    "max_tokens",
                    format!(
                        "{m} exceeds every backend's context window (largest {largest_window})"
                    ),
                )
            }
            _ => {}
        }
        if self.stop.len() > MAX_STOP {
            return bad(
                "stop",
                format!("{} sequences, at most {MAX_STOP}", self.stop.len()),
            );
        }
        for (i, s) in self.stop.iter().enumerate() {
            if s.is_empty() || s.len() > MAX_STOP_BYTES {
                return bad(
                    &format!("stop[{i}]"),
                    format!("must be 1 to {MAX_STOP_BYTES} bytes, found {}", s.len()),
                );
            }
        }
        Ok(())
    }
}

/// Why a pinned backend cannot take this request: the same capability and context-window
/// rules a routed request is ranked under.
pub fn pinned_misfit(
    b: &Backend,
    required: &[String],
    prompt_tokens: u32,
    output_tokens: u32,
) -> Option<Invalid> {
    if let Some((i, c)) = required
        .iter()
        .enumerate()
        .find(|(_, c)| !b.capabilities.contains(c))
    {
        return Some((
            format!("preferences.required_capabilities[{i}]"),
            format!("pinned backend {} lacks capability {c}", b.name),
        ));
    }
    let needed = prompt_tokens as u64 + output_tokens as u64;
    if needed > b.context_window as u64 {
        return Some((
            "max_tokens".into(),
            format!(
                "{prompt_tokens} prompt tokens + {output_tokens} output tokens exceed pinned backend {}'s context window of {}",
                b.name, b.context_window
            ),
        ));
    }
    None
}
