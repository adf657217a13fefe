//! Client API keys: a TOML file of sha256 hashes (never the keys), each bound to a tenant and
//! optionally to the backends it may use. Transport-neutral: each transport reads the bearer
//! token from its own headers and passes it here; the caller's identity then narrows routing.
use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::engine::RouteRequest;
use crate::error::{Error, ErrorKind};

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
    #[serde(default)]
    backends: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub tenant: String,
    /// Empty = every backend.
    pub backends: Vec<String>,
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
        let mut by_hash = HashMap::new();
        for (i, k) in parsed.keys.into_iter().enumerate() {
            if k.sha256.len() != 64 || !k.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid {
                    file: file.clone(),
                    path: format!("keys[{i}].sha256"),
                    message: "must be 64 hex digits (the key's sha256)".into(),
                });
            }
            by_hash.insert(
                k.sha256.to_ascii_lowercase(),
                Caller {
                    tenant: k.tenant,
                    backends: k.backends,
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
            },
        );
        assert_eq!(keys.check(Some("Bearer s3cret")).unwrap().tenant, "acme");
        assert!(keys.check(Some("Bearer nope")).is_err());
        assert!(keys.check(Some("s3cret")).is_err());
        assert!(keys.check(None).is_err());
    }
}
