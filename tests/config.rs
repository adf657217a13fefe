//! Config validation: one test per message; each error names the TOML path of the bad key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchboard::config::{Config, ConfigError};

fn labels() -> (Vec<String>, Vec<String>) {
    let i = ["chat", "code", "math", "open_qa"]
        .map(String::from)
        .to_vec();
    let d = ["law", "math", "other"].map(String::from).to_vec();
    (i, d)
}

const BASE: &str = r#"
default_policy = "p"

[[backends]]
name = "a"
provider = "openai_compatible"
base_url = "http://127.0.0.1:1/v1"
model = "m"
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0
context_window = 1000
latency_ms = 100
quality = { default = 0.5, code = 0.7 }

[policies.p]
default_backend = "a"
"#;

fn check(text: &str) -> Result<Config, ConfigError> {
    let (i, d) = labels();
    let cfg = Config::parse(text, "test.toml")?;
    cfg.validate(&i, &d)?;
    Ok(cfg)
}

fn err(text: &str) -> (String, String) {
    match check(text) {
        Err(ConfigError::Invalid { path, message, .. }) => (path, message),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn base_and_bundled_configs_are_valid() {
    check(BASE).unwrap();
    let bundled = Config::read(None).unwrap();
    let i = [
        "chat",
        "classification",
        "closed_qa",
        "code",
        "creative_writing",
        "extraction",
        "math",
        "open_qa",
        "rewrite",
        "summarization",
        "translation",
    ]
    .map(String::from)
    .to_vec();
    let d = [
        "biology",
        "business",
        "chemistry",
        "computer_science",
        "economics",
        "engineering",
        "health",
        "history",
        "law",
        "math",
        "other",
        "philosophy",
        "physics",
        "psychology",
    ]
    .map(String::from)
    .to_vec();
    bundled.validate(&i, &d).unwrap();
}

#[test]
fn unknown_key_names_its_path() {
    let (path, msg) = err(&BASE.replace("latency_ms = 100", "latency_ms = 100\nprcie = 3"));
    assert_eq!(path, "backends[0].prcie");
    assert!(msg.contains("prcie"), "{msg}");
}

#[test]
fn wrong_type_names_its_path() {
    let (path, msg) = err(&BASE.replace("context_window = 1000", "context_window = \"big\""));
    assert_eq!(path, "backends[0].context_window");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn unknown_intent_in_quality() {
    let (path, msg) = err(&BASE.replace("code = 0.7", "poetry = 0.7"));
    assert_eq!(path, "backends[0].quality.poetry");
    assert!(msg.contains("unknown intent"), "{msg}");
}

#[test]
fn unknown_domain_in_domain_quality() {
    let (path, msg) = err(&BASE.replace(
        "latency_ms = 100",
        "latency_ms = 100\ndomain_quality = { astrology = 0.9 }",
    ));
    assert_eq!(path, "backends[0].domain_quality.astrology");
    assert!(msg.contains("unknown domain"), "{msg}");
}

#[test]
fn duplicate_backend_name() {
    let block = &BASE[BASE.find("[[backends]]").unwrap()..BASE.find("[policies.p]").unwrap()];
    let text = BASE.replace("[policies.p]", &format!("{block}[policies.p]"));
    let (path, msg) = err(&text);
    assert_eq!(path, "backends[1].name");
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn negative_price() {
    let (path, msg) =
        err(&BASE.replace("input_price_per_mtok = 1.0", "input_price_per_mtok = -1.0"));
    assert_eq!(path, "backends[0].input_price_per_mtok");
    assert!(msg.contains("≥ 0"), "{msg}");
}

#[test]
fn quality_out_of_range() {
    let (path, msg) = err(&BASE.replace("code = 0.7", "code = 1.7"));
    assert_eq!(path, "backends[0].quality.code");
    assert!(msg.contains("[0, 1]"), "{msg}");
}

#[test]
fn missing_default_quality() {
    let (path, _) = err(&BASE.replace("default = 0.5, ", ""));
    assert_eq!(path, "backends[0].quality");
}

#[test]
fn unknown_capability() {
    let (path, msg) = err(&BASE.replace(
        "latency_ms = 100",
        "latency_ms = 100\ncapabilities = [\"telepathy\"]",
    ));
    assert_eq!(path, "backends[0].capabilities[0]");
    assert!(msg.contains("telepathy"), "{msg}");
}

#[test]
fn unknown_provider() {
    let (path, _) = err(&BASE.replace(
        "provider = \"openai_compatible\"",
        "provider = \"carrier-pigeon\"",
    ));
    assert_eq!(path, "backends[0].provider");
}

#[test]
fn dangling_default_policy() {
    let (path, msg) = err(&BASE.replace("default_policy = \"p\"", "default_policy = \"nope\""));
    assert_eq!(path, "default_policy");
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn dangling_default_backend() {
    let (path, _) = err(&BASE.replace("default_backend = \"a\"", "default_backend = \"zzz\""));
    assert_eq!(path, "policies.p.default_backend");
}

#[test]
fn dangling_rule_backend_and_unknown_rule_intent() {
    let (path, _) = err(&format!(
        "{BASE}rules = [{{ when = {{ domain = \"law\" }}, backend = \"ghost\", pin = true }}]\n"
    ));
    assert_eq!(path, "policies.p.rules[0].backend");
    let (path, _) = err(&format!(
        "{BASE}rules = [{{ when = {{ intent = \"poetry\" }}, backend = \"a\", pin = true }}]\n"
    ));
    assert_eq!(path, "policies.p.rules[0].when.intent");
}

#[test]
fn variant_percentages_must_add_up() {
    let text = format!(
        "{BASE}variants = [{{ name = \"x\", percent = 60 }}, {{ name = \"y\", percent = 30 }}]\n"
    );
    let (path, msg) = err(&text);
    assert_eq!(path, "policies.p.variants");
    assert!(msg.contains("100"), "{msg}");
}

#[test]
fn syntax_error_is_reported() {
    let (path, _) = err("default_policy = ");
    assert_eq!(path, "<syntax>");
}

#[test]
fn nan_infinity_and_zero_are_refused_with_their_path() {
    // TOML has `nan` and `inf` literals; each used to pass a range check written as `x < 0`.
    let cases = [
        (format!("{BASE}min_quality = nan\n"), "policies.p.min_quality"),
        (format!("{BASE}complexity_slope = inf\n"), "policies.p.complexity_slope"),
        (
            format!("{BASE}rules = [{{ when = {{ intent = \"code\" }}, backend = \"a\", boost = nan }}]\n"),
            "policies.p.rules[0].boost",
        ),
        (
            format!("{BASE}variants = [{{ name = \"x\", percent = nan }}, {{ name = \"y\", percent = 100 }}]\n"),
            "policies.p.variants[0].percent",
        ),
        (format!("{BASE}\n[server]\nabstain_threshold = nan\n"), "server.abstain_threshold"),
        (
            format!("{BASE}\n[server]\nuntrained_language_share = 1.5\n"),
            "server.untrained_language_share",
        ),
        (format!("{BASE}\n[server]\nmax_prompt_bytes = 0\n"), "server.max_prompt_bytes"),
        (
            format!("{BASE}\n[server]\nmax_prompt_bytes = 9223372036854775807\n"),
            "server.max_prompt_bytes",
        ),
        (format!("{BASE}\n[admin]\ngate_margin = nan\n"), "admin.gate_margin"),
        (format!("{BASE}\n[admin]\nmax_inline_bytes = 0\n"), "admin.max_inline_bytes"),
        (format!("{BASE}\n[admin]\nwatch_interval_ms = 0\n"), "admin.watch_interval_ms"),
        (
            BASE.replace("latency_ms = 100", "latency_ms = 100\nfirst_token_timeout_ms = 0"),
            "backends[0].first_token_timeout_ms",
        ),
        (
            BASE.replace("latency_ms = 100", "latency_ms = 100\nconnect_timeout_ms = 0"),
            "backends[0].connect_timeout_ms",
        ),
        (
            format!("{BASE}\n[transport]\nhttp_max_connections = 0\n"),
            "transport.http_max_connections",
        ),
        (
            format!("{BASE}\n[transport]\nhttp_header_read_timeout_ms = 0\n"),
            "transport.http_header_read_timeout_ms",
        ),
        (
            format!("{BASE}\n[transport]\ngrpc_default_timeout_ms = 0\n"),
            "transport.grpc_default_timeout_ms",
        ),
    ];
    for (text, want) in cases {
        let (path, msg) = err(&text);
        assert_eq!(path, want, "{msg}");
        assert!(msg.contains("must be"), "{want}: {msg}");
    }
}

#[test]
fn languages_must_be_iso_639_3_codes() {
    let text = BASE.replace(
        "latency_ms = 100\n",
        "latency_ms = 100\nlanguages = [\"eng\", \"english\"]\n",
    );
    assert_ne!(text, BASE);
    let (path, message) = err(&text);
    assert_eq!(path, "backends[0].languages[1]", "{message}");
    assert!(message.contains("ISO 639-3"), "{message}");
    check(&BASE.replace(
        "latency_ms = 100\n",
        "latency_ms = 100\nlanguages = [\"jpn\"]\n",
    ))
    .unwrap();
}
