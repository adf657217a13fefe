//! Client API keys: a TOML file of sha256 hashes (never the keys), each bound to a tenant,
//! optionally to the backends it may use, and to quotas and budgets (the key's own, and its
//! tenant's from the file's `[tenants.<name>]` tables). Transport-neutral: each transport reads the bearer
//! token from its own headers and passes it here; the caller's identity then narrows routing.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::engine::RouteRequest;
use crate::error::{Error, ErrorKind};
use crate::quota::{Limits, Scope, Subject};

/// Why a caller may not make a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No key, or an unknown one.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The key's tenant may not use what the request asks for; `field` names it.
    #[error("{field}: {message}")]
    Forbidden {
        field: &'static str,
        message: String,
    },
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => Error::new(ErrorKind::Unauthenticated, m),
            AuthError::Forbidden { field, message } => {
                Error::field(ErrorKind::PermissionDenied, field, message)
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    /// Hex sha256 of the key (`switchboard hash-key KEY` prints it).
    sha256: String,
    tenant: String,
    /// The key's name in usage reports and metrics (default: the hash's first 12 digits).
    name: Option<String>,
    #[serde(default)]
    backends: Vec<String>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    usd_per_day: Option<f64>,
    usd_per_month: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
    /// Limits shared by every key of a tenant.
    #[serde(default)]
    tenants: BTreeMap<String, Limits>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub tenant: String,
    /// Empty = every backend.
    pub backends: Vec<String>,
    /// The key's name (usage reports, metrics).
    pub key: String,
    pub key_limits: Limits,
    pub tenant_limits: Limits,
}

impl Caller {
    /// What a request counts against: the key, then its tenant.
    pub fn subjects(&self) -> Vec<Subject> {
        vec![
            Subject {
                scope: Scope::Key,
                name: self.key.clone(),
                limits: self.key_limits,
            },
            Subject {
                scope: Scope::Tenant,
                name: self.tenant.clone(),
                limits: self.tenant_limits,
            },
        ]
    }

    /// Whether any limit applies to this caller's requests.
    pub fn limited(&self) -> bool {
        !self.key_limits.is_empty() || !self.tenant_limits.is_empty()
    }

    /// Whether a completion must estimate its tokens and cost before the call.
    pub fn meters_usage(&self) -> bool {
        self.key_limits.meters_usage() || self.tenant_limits.meters_usage()
    }

    /// Whether a spend budget applies (its cost estimate must be an upper bound).
    pub fn has_budget(&self) -> bool {
        self.key_limits.has_budget() || self.tenant_limits.has_budget()
    }
}

/// The loaded key table.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<String, Caller>,
}

/// The token of an `authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header?.strip_prefix("Bearer ").map(str::trim)
}

/// Hex sha256 of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl ApiKeys {
    /// Reads a keys file; errors name the file and the entry.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io(e, file.clone()))?;
        Self::parse(&text, &file)
    }

    /// Parses a keys file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let file = file.to_string();
        let parsed: KeysFile = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            file: file.clone(),
            path: "keys".into(),
            message: e.message().to_string(),
        })?;
        let invalid = |(path, message)| ConfigError::Invalid {
            file: file.clone(),
            path,
            message,
        };
        for (t, l) in &parsed.tenants {
            l.check(&format!("tenants.{t}")).map_err(invalid)?;
        }
        let mut by_hash = HashMap::new();
        for (i, k) in parsed.keys.into_iter().enumerate() {
            if k.sha256.len() != 64 || !k.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid {
                    file: file.clone(),
                    path: format!("keys[{i}].sha256"),
                    message: "must be 64 hex digits (the key's sha256)".into(),
                });
            }
            let key_limits = Limits {
                requests_per_minute: k.requests_per_minute,
                tokens_per_minute: k.tokens_per_minute,
                usd_per_day: k.usd_per_day,
                usd_per_month: k.usd_per_month,
            };
            key_limits.check(&format!("keys[{i}]")).map_err(invalid)?;
            let hash = k.sha256.to_ascii_lowercase();
            let key = match k.name {
                Some(n) if valid_name(&n) => n,
                Some(_) => {
                    return Err(invalid((
                        format!("keys[{i}].name"),
                        "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
                    )))
                }
                None => hash[..12].to_string(),
            };
            let tenant_limits = parsed.tenants.get(&k.tenant).copied().unwrap_or_default();
            by_hash.insert(
                hash,
                Caller {
                    tenant: k.tenant,
                    backends: k.backends,
                    key,
                    key_limits,
                    tenant_limits,
                },
            );
        }
        Ok(Self { by_hash })
    }

    /// The caller for an `authorization` header value (`Bearer KEY`).
    pub fn check(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let key = bearer(header).ok_or(AuthError::Unauthenticated(
            "missing `authorization: Bearer <key>`",
        ))?;
        self.by_hash
            .get(&hash_key(key))
            .cloned()
            .ok_or(AuthError::Unauthenticated("unknown API key"))
    }
}

/// Names that go into store keys and metric labels: short and plain.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Applies the authenticated caller: its tenant replaces any `tenant` metadata, and its
/// backend list narrows `allow_backends` (and must contain a pinned backend).
pub fn apply_caller(
    req: &mut RouteRequest,
    pinned: Option<&str>,
    caller: Option<&Caller>,
) -> Result<(), AuthError> {
    let Some(c) = caller else { return Ok(()) };
    req.metadata.insert("tenant".into(), c.tenant.clone());
    if c.backends.is_empty() {
        return Ok(());
    }
    if let Some(p) = pinned {
        if !c.backends.iter().any(|b| b == p) {
            return Err(AuthError::Forbidden {
                field: "pinned_backend",
                message: format!("{p:?} is not allowed for tenant {:?}", c.tenant),
            });
        }
    }
    let allow: Vec<String> = if req.prefs.allow.is_empty() {
        c.backends.clone()
    } else {
        req.prefs
            .allow
            .iter()
            .filter(|b| c.backends.contains(b))
            .cloned()
            .collect()
    };
    if allow.is_empty() {
        return Err(AuthError::Forbidden {
            field: "preferences.allow_backends",
            message: format!("none is allowed for tenant {:?}", c.tenant),
        });
    }
    req.prefs.allow = allow;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bearer_keys_by_hash() {
        let mut keys = ApiKeys::default();
        keys.by_hash.insert(
            hash_key("s3cret"),
            Caller {
                tenant: "acme".into(),
                backends: vec![],
                key: "k1".into(),
                key_limits: Limits::default(),
                tenant_limits: Limits::default(),
            },
        );
        assert_eq!(keys.check(Some("Bearer s3cret")).unwrap().tenant, "acme");
        assert!(keys.check(Some("Bearer nope")).is_err());
        assert!(keys.check(Some("s3cret")).is_err());
        assert!(keys.check(None).is_err());
    }

    #[test]
    fn limits_come_from_the_key_and_its_tenant() {
        let h = hash_key("k");
        let text = format!(
            "[[keys]]\nsha256 = \"{h}\"\ntenant = \"acme\"\nname = \"batch\"\n\
             requests_per_minute = 60\n[tenants.acme]\nusd_per_day = 2.5\n"
        );
        let keys = ApiKeys::parse(&text, "k.toml").unwrap();
        let c = keys.check(Some("Bearer k")).unwrap();
        assert_eq!(c.key, "batch");
        assert_eq!(c.key_limits.requests_per_minute, Some(60));
        assert_eq!(c.tenant_limits.usd_per_day, Some(2.5));
        assert!(c.has_budget() && c.limited());
        let bad = text.replace("usd_per_day = 2.5", "usd_per_day = -1");
        let e = ApiKeys::parse(&bad, "k.toml").unwrap_err().to_string();
        assert!(e.contains("tenants.acme.usd_per_day"), "{e}");
        let bad = text.replace("name = \"batch\"", "name = \"a b\"");
        let e = ApiKeys::parse(&bad, "k.toml").unwrap_err().to_string();
        assert!(e.contains("keys[0].name"), "{e}");
    }
}
