//! The TOML configuration: server settings, encoder, backend catalog and routing policies.
//! Parsed strictly (unknown keys are errors) and validated at load; every error names the
//! TOML path of the offending key. Secrets are referenced by environment-variable name only.
pub mod fleet;
mod numbers;
pub mod transport;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::embed::EncoderConfig;
pub use fleet::FleetConfig;
pub use transport::TransportConfig;

/// The bundled example catalog, used when no config file is given.
pub const BUNDLED_CONFIG: &str = include_str!("../../config/switchboard.toml");
const BUNDLED_NAME: &str = "<bundled config/switchboard.toml>";

/// A configuration error, located by TOML path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {path}: {message}")]
    Invalid {
        file: String,
        path: String,
        message: String,
    },
    #[error("{file}: {0}", file = .1)]
    Io(std::io::Error, String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Head folder loaded at start (default: the bundled one, found through `assets`).
    pub classifier_dir: PathBuf,
    /// Override of the classifier's own abstain threshold.
    pub abstain_threshold: Option<f32>,
    /// Abstain (the policy's default backend) on prompts in a language that was less than
    /// `untrained_language_share` of the classifier's training rows: its confidence there is
    /// not to be trusted.
    pub abstain_untrained_languages: bool,
    pub untrained_language_share: f64,
    /// Entries of the classification cache (0 disables it).
    pub cache_entries: usize,
    /// Longest accepted conversation, in bytes of message content.
    pub max_prompt_bytes: usize,
    pub max_messages: usize,
    /// Upstream calls per completion before giving up (skipped backends do not count).
    pub max_attempts: usize,
    /// Circuit breaker: consecutive failures that open it, and the cooldown before a probe.
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
    /// TOML file of client API keys (sha256 hashes, tenants, allowed backends). Unset = no auth.
    pub api_keys_file: Option<PathBuf>,
    /// Longest SSE line accepted from an upstream; a longer one ends the stream with an error.
    pub max_sse_line_bytes: usize,
    /// Longest completion relayed from an upstream, in bytes of text.
    pub max_completion_bytes: usize,
    /// Serve on a non-loopback address without client API keys (off: refuse to start, since
    /// anyone who can reach the port could spend the operator's provider keys).
    pub allow_unauthenticated: bool,
    /// After SIGTERM, how long requests in flight get to finish before open streams are ended
    /// (keep it below the orchestrator's kill grace, e.g. Kubernetes' 30 s default).
    pub shutdown_grace_ms: u64,
    /// A completion under a spend budget that sets no `max_tokens` is sent with this one,
    /// so its reserved cost is an upper bound and a budget cannot be overshot.
    pub budget_max_tokens: u32,
    /// How often the config file is checked for a changed catalog, which is then swapped in
    /// (0: only Admin `ReloadConfig` reloads it).
    pub config_watch_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            classifier_dir: crate::assets::bundled(crate::assets::CLASSIFIER),
            abstain_threshold: None,
            abstain_untrained_languages: true,
            untrained_language_share: crate::classify::language::DEFAULT_MIN_SHARE,
            cache_entries: 10_000,
            max_prompt_bytes: 64 * 1024,
            max_messages: 256,
            max_attempts: 3,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
            api_keys_file: None,
            max_sse_line_bytes: 1 << 20,
            max_completion_bytes: 8 << 20,
            shutdown_grace_ms: 25_000,
            allow_unauthenticated: false,
            budget_max_tokens: 4_096,
            config_watch_ms: 500,
        }
    }
}

impl ServerConfig {
    /// The share under which a language counts as untrained, when abstaining on it is on.
    pub fn untrained_language_share(&self) -> Option<f64> {
        self.abstain_untrained_languages
            .then_some(self.untrained_language_share)
    }

    /// Largest request either transport accepts: the prompt limit with room for JSON or
    /// protobuf framing and escapes, so an oversized prompt gets our message naming the limit.
    pub fn max_request_bytes(&self) -> usize {
        self.max_prompt_bytes * 2 + 64 * 1024
    }
}

/// The Admin service, the decision and feedback logs, and the swap gate (`[admin]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Environment variable holding the admin bearer token; unset = Admin not served.
    pub token_env: String,
    /// Decision log, feedback log and retrained heads live here.
    pub state_dir: PathBuf,
    /// Write the decision log (embedding + classification per decision).
    pub decision_log: bool,
    /// Also store raw prompt text in the decision log (off: user text stays out of logs).
    pub log_prompts: bool,
    /// Decision-log rotation: bytes per file, and files kept (oldest deleted first).
    pub decision_file_bytes: u64,
    pub decision_files: usize,
    /// Labelled JSONL every candidate classifier is evaluated on before a swap.
    pub gate_set: PathBuf,
    /// A candidate may score at most this much below the live classifier on the gate set
    /// (intent and domain accuracy) unless the swap is forced.
    pub gate_margin: f64,
    /// Versions kept in memory for rollback (the live one included).
    pub kept_versions: usize,
    /// Largest inline heads artifact accepted by SwapClassifier.
    pub max_inline_bytes: usize,
    /// Loss weight of a feedback correction relative to a training row, in Retrain.
    pub feedback_weight: f32,
    /// New head folders appearing here are swapped in through the validated path.
    pub watch_dir: Option<PathBuf>,
    pub watch_interval_ms: u64,
    /// Paths a client names (SwapClassifier's folder, Retrain's data) must lie under this
    /// folder once symlinks are resolved. Default: the server's working directory.
    pub artifact_root: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token_env: "SWITCHBOARD_ADMIN_TOKEN".into(),
            state_dir: PathBuf::from("state"),
            decision_log: true,
            log_prompts: false,
            decision_file_bytes: 64 << 20,
            decision_files: 8,
            gate_set: crate::assets::bundled(crate::assets::GATE_SET),
            gate_margin: 0.02,
            kept_versions: 5,
            max_inline_bytes: 8 << 20,
            feedback_weight: 5.0,
            watch_dir: None,
            watch_interval_ms: 2000,
            artifact_root: PathBuf::from("."),
        }
    }
}

/// One upstream model endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    /// Only "openai_compatible" for now.
    pub provider: String,
    pub base_url: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    pub model: String,
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
    pub context_window: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Quality in [0, 1] per intent, with `default` for the others.
    pub quality: BTreeMap<String, f64>,
    /// Quality per domain, overriding the intent quality when the domain matches.
    #[serde(default)]
    pub domain_quality: BTreeMap<String, f64>,
    /// Languages it serves well (ISO 639-3); empty = any. A request that requires a language
    /// is not sent to a backend that lists others only.
    #[serde(default)]
    pub languages: Vec<String>,
    /// Typical time to first token, in milliseconds.
    pub latency_ms: f64,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Fail over when no token arrives within this time.
    #[serde(default = "default_ttft_timeout")]
    pub first_token_timeout_ms: u64,
    /// After the first token: end the stream with an error when nothing arrives for this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// The whole call, first token included, may take at most this long.
    #[serde(default = "default_total_timeout")]
    pub total_timeout_ms: u64,
    /// TCP (and TLS) connection set-up to this backend.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
}

fn default_connect_timeout() -> u64 {
    5_000
}

fn default_idle_timeout() -> u64 {
    30_000
}

fn default_total_timeout() -> u64 {
    600_000
}

fn default_concurrency() -> u32 {
    64
}

fn default_ttft_timeout() -> u64 {
    10_000
}

/// A condition of a rule; every given field must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub intent: Option<String>,
    pub domain: Option<String>,
    /// The prompt's detected language (ISO 639-3).
    pub language: Option<String>,
    pub tenant: Option<String>,
    /// Metadata key → value.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Pin (rank first when it qualifies) or boost (add to the score) a backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "when")]
    pub when: Match,
    pub backend: String,
    #[serde(default)]
    pub pin: bool,
    #[serde(default)]
    pub boost: f64,
}

/// An A/B arm: its share of traffic and the rules it adds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub percent: f64,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Backend used first when the classifier abstains.
    pub default_backend: String,
    /// Quality needed = min_quality + complexity_slope × complexity.
    #[serde(default = "default_min_quality")]
    pub min_quality: f64,
    #[serde(default = "default_slope")]
    pub complexity_slope: f64,
    /// Trade-off used when the request gives none.
    #[serde(default = "default_trade_off")]
    pub trade_off: f64,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub variants: Vec<Variant>,
}

fn default_min_quality() -> f64 {
    0.55
}
fn default_slope() -> f64 {
    0.35
}
fn default_trade_off() -> f64 {
    0.5
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub encoder: EncoderConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub transport: TransportConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    pub backends: Vec<Backend>,
    pub policies: BTreeMap<String, Policy>,
    /// Name of the policy used when a request names none.
    pub default_policy: String,
    /// Where this config came from (for messages).
    #[serde(skip)]
    pub file: String,
    /// The first 12 hex digits of the file text's sha256: names the catalog a decision used.
    #[serde(skip)]
    pub version: String,
    /// The file it was read from; `None` for the bundled config (which cannot be reloaded).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// Capabilities a backend may declare.
pub const CAPABILITIES: &[&str] = &["tools", "vision", "json_mode", "long_context", "streaming"];

impl Config {
    /// Reads `path`, or the bundled example when `None`, checking syntax and keys only;
    /// call `validate` once the classifier's label sets are known.
    pub fn read(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (file, text) = match path {
            Some(p) => {
                let name = p.display().to_string();
                (
                    name.clone(),
                    std::fs::read_to_string(p).map_err(|e| ConfigError::Io(e, name))?,
                )
            }
            None => (BUNDLED_NAME.to_string(), BUNDLED_CONFIG.to_string()),
        };
        let mut cfg = Self::parse(&text, &file)?;
        cfg.path = path.map(Path::to_path_buf);
        Ok(cfg)
    }

    /// Parses TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
            file: file.into(),
            path: "<syntax>".into(),
            message: e.message().to_string(),
        })?;
        let mut cfg: Config =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Invalid {
                file: file.into(),
                path: e.path().to_string(),
                message: e.inner().message().to_string(),
            })?;
        cfg.file = file.to_string();
        cfg.version = text_version(text);
        Ok(cfg)
    }

    /// Semantic checks against the classifier's label sets; errors name the TOML path.
    pub fn validate(&self, intents: &[String], domains: &[String]) -> Result<(), ConfigError> {
        self.check(intents, domains)
            .map_err(|(path, message)| ConfigError::Invalid {
                file: self.file.clone(),
                path,
                message,
            })
    }

    fn check(&self, intents: &[String], domains: &[String]) -> Result<(), (String, String)> {
        numbers::check(self)?;
        let mut names = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if !names.insert(b.name.as_str()) {
                return Err((
                    format!("backends[{i}].name"),
                    format!("duplicate backend name {:?}", b.name),
                ));
            }
            check_backend(i, b, intents, domains)?;
        }
        if !self.policies.contains_key(&self.default_policy) {
            return Err((
                "default_policy".into(),
                format!("no policy named {:?}", self.default_policy),
            ));
        }
        for (name, pol) in &self.policies {
            let p = format!("policies.{name}");
            if !names.contains(pol.default_backend.as_str()) {
                return Err((
                    format!("{p}.default_backend"),
                    format!("unknown backend {:?}", pol.default_backend),
                ));
            }
            if !(0.0..=1.0).contains(&pol.trade_off) {
                return Err((
                    format!("{p}.trade_off"),
                    format!("must be in [0, 1], found {}", pol.trade_off),
                ));
            }
            check_rules(&pol.rules, &format!("{p}.rules"), &names, intents, domains)?;
            if !pol.variants.is_empty() {
                let total: f64 = pol.variants.iter().map(|v| v.percent).sum();
                if (total - 100.0).abs() > 1e-6 {
                    return Err((
                        format!("{p}.variants"),
                        format!("percentages must add up to 100, found {total}"),
                    ));
                }
                for (i, v) in pol.variants.iter().enumerate() {
                    if v.percent < 0.0 {
                        return Err((
                            format!("{p}.variants[{i}].percent"),
                            format!("must be ≥ 0, found {}", v.percent),
                        ));
                    }
                    check_rules(
                        &v.rules,
                        &format!("{p}.variants[{i}].rules"),
                        &names,
                        intents,
                        domains,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The version a config's text gets: the first 12 hex digits of its sha256.
pub fn text_version(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Checks one backend entry; errors name its TOML path.
fn check_backend(
    i: usize,
    b: &Backend,
    intents: &[String],
    domains: &[String],
) -> Result<(), (String, String)> {
    let p = |k: &str| format!("backends[{i}].{k}");
    if b.provider != "openai_compatible" {
        return Err((
            p("provider"),
            format!(
                "unknown provider {:?}; expected \"openai_compatible\"",
                b.provider
            ),
        ));
    }
    for (k, v) in [
        ("input_price_per_mtok", b.input_price_per_mtok),
        ("output_price_per_mtok", b.output_price_per_mtok),
        ("latency_ms", b.latency_ms),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            return Err((p(k), format!("must be ≥ 0, found {v}")));
        }
    }
    if !b.quality.contains_key("default") {
        return Err((p("quality"), "needs a `default` entry".into()));
    }
    for (k, q) in &b.quality {
        if k != "default" && !intents.contains(k) {
            return Err((
                format!("{}.{k}", p("quality")),
                format!("unknown intent {k:?}; the classifier knows {intents:?}"),
            ));
        }
        if !(0.0..=1.0).contains(q) {
            return Err((
                format!("{}.{k}", p("quality")),
                format!("must be in [0, 1], found {q}"),
            ));
        }
    }
    for (k, q) in &b.domain_quality {
        if !domains.contains(k) {
            return Err((
                format!("{}.{k}", p("domain_quality")),
                format!("unknown domain {k:?}; the classifier knows {domains:?}"),
            ));
        }
        if !(0.0..=1.0).contains(q) {
            return Err((
                format!("{}.{k}", p("domain_quality")),
                format!("must be in [0, 1], found {q}"),
            ));
        }
    }
    for (j, l) in b.languages.iter().enumerate() {
        if whatlang::Lang::from_code(l.as_str()).is_none() {
            return Err((
                format!("{}[{j}]", p("languages")),
                format!(
                    "unknown language {l:?}; expected an ISO 639-3 code such as \"eng\" or \"jpn\""
                ),
            ));
        }
    }
    for (j, c) in b.capabilities.iter().enumerate() {
        if !CAPABILITIES.contains(&c.as_str()) {
            return Err((
                format!("{}[{j}]", p("capabilities")),
                format!("unknown capability {c:?}; expected one of {CAPABILITIES:?}"),
            ));
        }
    }
    Ok(())
}

fn check_rules(
    rules: &[Rule],
    at: &str,
    names: &HashSet<&str>,
    intents: &[String],
    domains: &[String],
) -> Result<(), (String, String)> {
    for (i, r) in rules.iter().enumerate() {
        if !names.contains(r.backend.as_str()) {
            return Err((
                format!("{at}[{i}].backend"),
                format!("unknown backend {:?}", r.backend),
            ));
        }
        if let Some(x) = &r.when.intent {
            if !intents.contains(x) {
                return Err((
                    format!("{at}[{i}].when.intent"),
                    format!("unknown intent {x:?}"),
                ));
            }
        }
        if let Some(x) = &r.when.domain {
            if !domains.contains(x) {
                return Err((
                    format!("{at}[{i}].when.domain"),
                    format!("unknown domain {x:?}"),
                ));
            }
        }
        if let Some(x) = r
            .when
            .language
            .as_ref()
            .filter(|x| whatlang::Lang::from_code(x.as_str()).is_none())
        {
            return Err((
                format!("{at}[{i}].when.language"),
                format!("unknown language {x:?}; expected an ISO 639-3 code"),
            ));
        }
    }
    Ok(())
}
