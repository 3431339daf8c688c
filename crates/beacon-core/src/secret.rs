//! Secrets (write keys, read keys, NATS passwords, tokens and nkey seeds) in a
//! type that never prints itself: `Debug` and `Display` show no part of the
//! value, so a secret cannot reach a log line or an error by accident.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string. Read it with [`Secret::expose`], where it is really needed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Characters of a key shown by [`Secret::shortened`]: its prefix and four more,
/// enough to tell keys apart, far too few to use one.
const SHOWN_CHARS: usize = 7;

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first characters and an ellipsis (`wk_3f0c…`), to name a key on screen.
    pub fn shortened(&self) -> String {
        let shown: String = self.0.chars().take(SHOWN_CHARS).collect();
        format!("{shown}…")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// Lets maps keyed by secrets be looked up with the `&str` a request carries.
impl Borrow<str> for Secret {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_itself() {
        let secret = Secret::from("wk_3f0c9a41deadbeef");
        assert!(!format!("{secret:?}").contains("3f0c"));
        assert!(!format!("{secret}").contains("3f0c"));
        assert!(!format!("{:?}", vec![secret.clone()]).contains("3f0c"));
        assert_eq!(secret.expose(), "wk_3f0c9a41deadbeef");
        assert_eq!(secret.shortened(), "wk_3f0c…");
    }

    #[test]
    fn secrets_read_and_write_as_plain_strings() {
        let secret: Secret = serde_json::from_str(r#""rk_0123456789abcdef""#).expect("parse");
        assert_eq!(secret.expose(), "rk_0123456789abcdef");
        assert_eq!(
            serde_json::to_string(&secret).expect("write"),
            r#""rk_0123456789abcdef""#
        );
        let map: std::collections::HashMap<Secret, u8> = [(secret, 1)].into();
        assert_eq!(map.get("rk_0123456789abcdef"), Some(&1));
    }
}
