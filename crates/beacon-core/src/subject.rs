//! NATS subjects Beacon publishes on, and making arbitrary names safe inside them.
//!
//! A subject token may not contain `.`, `*`, `>` or whitespace; names and sites
//! come from users, so every token is sanitized. The event itself keeps the
//! name exactly as sent: only the subject is changed.

/// Subjects of `BEACON_EVENTS`: `beacon.events.<partition>.<site>.<event>`.
pub const EVENTS_PREFIX: &str = "beacon.events";
/// Subjects of `BEACON_INGEST`: `beacon.ingest.<site>`.
pub const INGEST_PREFIX: &str = "beacon.ingest";
/// Subjects of `BEACON_REJECTS`: `beacon.rejects.<source>`.
pub const REJECTS_PREFIX: &str = "beacon.rejects";
/// Subjects of `BEACON_ROLLUPS`: `beacon.rollups.<partition>`.
pub const ROLLUPS_PREFIX: &str = "beacon.rollups";

/// Key-value bucket of the event store's manifests (one per partition).
pub const MANIFEST_BUCKET: &str = "BEACON_STORE";
/// Object store bucket of the event store's segment files.
pub const SEGMENT_BUCKET: &str = "BEACON_SEGMENTS";

/// Longest token Beacon puts in a subject; longer names are cut (the event keeps them whole).
pub const MAX_TOKEN_CHARS: usize = 64;

/// Make `raw` usable as one subject token: letters, digits, `-` and `_` stay,
/// everything else becomes `_`. Never empty.
pub fn sanitize_token(raw: &str) -> String {
    let token: String = raw
        .chars()
        .take(MAX_TOKEN_CHARS)
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

/// The subject a canonical event is stored under.
pub fn event_subject(partition: u32, site: &str, name: &str) -> String {
    format!(
        "{EVENTS_PREFIX}.{partition}.{}.{}",
        sanitize_token(site),
        sanitize_token(name)
    )
}

/// The subject producers publish raw events for `site` on.
pub fn ingest_subject(site: &str) -> String {
    format!("{INGEST_PREFIX}.{}", sanitize_token(site))
}

/// The site named by an ingest subject, if it is one.
pub fn site_of_ingest_subject(subject: &str) -> Option<&str> {
    let site = subject.strip_prefix(INGEST_PREFIX)?.strip_prefix('.')?;
    (!site.is_empty() && !site.contains('.')).then_some(site)
}

/// Subjects of `BEACON_REJECTS_UNAUTH`: `beacon.rejects.unauth.<source>`. One
/// token longer than `BEACON_REJECTS`' subjects, so neither stream's subjects
/// overlap the other's.
pub const UNAUTH_REJECTS_PREFIX: &str = "beacon.rejects.unauth";

/// The subject a rejected input that no configured site vouches for (no key,
/// an unknown key or site, a body unreadable before its key was known) is kept
/// under: its own small stream, so floods of them never push out the rejects
/// of known sites.
pub fn unauth_reject_subject(source: &str) -> String {
    format!("{UNAUTH_REJECTS_PREFIX}.{}", sanitize_token(source))
}

/// The subject a rejected input from `source` (e.g. `http`, `nats`) is kept under.
pub fn reject_subject(source: &str) -> String {
    format!("{REJECTS_PREFIX}.{}", sanitize_token(source))
}

/// Whether `site` is a valid site id: lowercase letters, digits, `-`, `_`, at most 64.
pub fn is_valid_site_id(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= MAX_TOKEN_CHARS
        && site
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn forbidden_characters_become_underscores() {
        assert_eq!(sanitize_token("sign up.clicked*>"), "sign_up_clicked__");
        assert_eq!(sanitize_token(""), "_");
        assert_eq!(sanitize_token("購入"), "購入");
        assert_eq!(
            event_subject(3, "shop", "a.b c"),
            "beacon.events.3.shop.a_b_c"
        );
    }

    #[test]
    fn ingest_subjects_round_trip() {
        assert_eq!(
            site_of_ingest_subject(&ingest_subject("shop")),
            Some("shop")
        );
        assert_eq!(site_of_ingest_subject("beacon.ingest"), None);
        assert_eq!(site_of_ingest_subject("beacon.ingest.a.b"), None);
        assert_eq!(site_of_ingest_subject("other.shop"), None);
    }

    proptest! {
        #[test]
        fn sanitized_tokens_are_always_valid(raw in any::<String>()) {
            let token = sanitize_token(&raw);
            prop_assert!(!token.is_empty());
            prop_assert!(token.chars().count() <= MAX_TOKEN_CHARS);
            prop_assert!(!token.chars().any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace()));
        }

        #[test]
        fn event_subjects_have_exactly_five_tokens(p in 0u32..1024, site in any::<String>(), name in any::<String>()) {
            let subject = event_subject(p, &site, &name);
            prop_assert_eq!(subject.split('.').count(), 5);
            prop_assert!(subject.split('.').all(|t| !t.is_empty()));
        }
    }
}
