//! The one reader of `Authorization: Bearer <key>` headers, shared by the
//! collector (write keys) and the query nodes (read keys), so both accept the
//! same spellings: the scheme in any case (RFC 9110 makes it
//! case-insensitive), spaces or tabs around the key.

/// The key in an `Authorization` header value, if it uses the Bearer scheme
/// and holds a non-empty key.
pub fn bearer_key(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once([' ', '\t'])?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in ["Bearer k1", "bearer k1", "BEARER  k1 ", "\tbEaReR\tk1"] {
            assert_eq!(bearer_key(value), Some("k1"), "{value:?}");
        }
        for value in ["Basic k1", "Bearer", "Bearer   ", "k1", "", "Bearerk1"] {
            assert_eq!(bearer_key(value), None, "{value:?}");
        }
    }

    proptest! {
        #[test]
        fn any_header_gives_a_trimmed_key_or_none(value in "\\PC{0,80}") {
            if let Some(key) = bearer_key(&value) {
                prop_assert!(!key.is_empty());
                prop_assert_eq!(key, key.trim());
                prop_assert!(value.contains(key));
            }
        }
    }
}
