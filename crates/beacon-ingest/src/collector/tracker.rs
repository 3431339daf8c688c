//! Beacon's tracker script, served at `/js/beacon.js` (and at `/js/script.js`,
//! where a Plausible snippet looks for it), and `POST /api/v1/track`, where it
//! sends its events: the native events plus a cookieless visitor id computed
//! here, for a site named by id or by domain. docs/TRACKER.md.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use beacon_core::compat::tracker::{self, SiteRef};
use beacon_core::compat::{plausible, translate_all};
use beacon_core::site::ANY_DOMAIN;
use beacon_core::{Reason, Rejection, Secret};

use super::answer::Protocol;
use super::{ApiError, Collector, Compat, RawSlot, user_agent};

/// The script, as kept in the repository.
const SCRIPT: &str = include_str!("../../tracker/beacon.js");

/// Where the script is served: Beacon's own path, and Plausible's, so an
/// existing Plausible snippet works by changing only its host.
pub const SCRIPT_PATHS: &[&str] = &["/js/beacon.js", "/js/script.js"];

/// The script as served, plain and gzipped, and the tag naming this version.
struct Served {
    plain: String,
    gzipped: Vec<u8>,
    etag: HeaderValue,
}

static SERVED: LazyLock<Served> = LazyLock::new(|| {
    let plain = compact(SCRIPT);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail; an empty result would only cost the gzip form.
    let gzipped = gz
        .write_all(plain.as_bytes())
        .and_then(|()| gz.finish())
        .unwrap_or_default();
    let hash = xxhash_rust::xxh3::xxh3_64(plain.as_bytes());
    let etag = HeaderValue::from_str(&format!("\"{hash:016x}\""))
        .unwrap_or(HeaderValue::from_static("\"beacon\""));
    Served {
        plain,
        gzipped,
        etag,
    }
});

/// The script without its indentation, blank lines and comment lines: the
/// source stays readable and the browser gets a third less. Line breaks stay,
/// so JavaScript reads every statement as written.
pub fn compact(source: &str) -> String {
    source
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET /js/beacon.js`: cached for an hour by browsers and CDNs, revalidated by
/// its ETag; gzipped for clients that take it.
pub async fn script(headers: HeaderMap) -> Response {
    let served = &*SERVED;
    let cache = [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        ),
        (header::ETAG, served.etag.clone()),
        (header::VARY, HeaderValue::from_static("Accept-Encoding")),
    ];
    if headers.get(header::IF_NONE_MATCH) == Some(&served.etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    let takes_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if takes_gzip && !served.gzipped.is_empty() {
        let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (cache, [content_type, encoding], served.gzipped.clone()).into_response()
    } else {
        (cache, [content_type], served.plain.clone()).into_response()
    }
}

/// `POST /api/v1/track`: the tracker's events.
pub async fn track(
    State(c): State<Arc<Collector>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<RawSlot>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let compat = Compat::new(Protocol::Native, &headers);
    let (raw, request) = match compat.read(&c, body, &slot, tracker::request).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let (site, key) = match c.tracked_site(&request.site, page_host(&headers).as_deref()) {
        Ok(found) => found,
        Err(r) => return compat.refuse(&c, ApiError::from_rejection(r), &raw).await,
    };
    let salt = match compat.salt(&c).await {
        Ok(salt) => salt,
        Err(refused) => return refused,
    };
    let ip = c.client_ip(&headers, peer);
    let visitor =
        plausible::visitor_id(&salt, &site, &ip, user_agent(&headers).unwrap_or_default());
    let sent_at = request.sent_at;
    let translated = translate_all(request.events, c.pipeline.limits(), |event, _| {
        tracker::translate(event, visitor.clone(), sent_at.as_ref(), compat.received_at)
    });
    compat
        .submit(&c, Some(key.expose()), translated, &raw, Some(&ip))
        .await
}

/// The host of the page that sent a request, as the browser says it: `Origin`,
/// else `Referer`. Browsers set both themselves; a page's script cannot.
fn page_host(headers: &HeaderMap) -> Option<String> {
    [header::ORIGIN, header::REFERER]
        .iter()
        .filter_map(|h| headers.get(h)?.to_str().ok())
        .find_map(|v| {
            url::Url::parse(v)
                .ok()?
                .host_str()
                .map(str::to_ascii_lowercase)
        })
}

/// Whether a page on `host` may send events for a site listing `domains`: the
/// host is a domain or one of its subdomains, or the site takes any domain.
pub fn host_allowed(domains: &[String], host: Option<&str>) -> bool {
    domains.iter().any(|d| {
        d == ANY_DOMAIN
            || host.is_some_and(|h| {
                h == d || h.strip_suffix(d.as_str()).is_some_and(|p| p.ends_with('.'))
            })
    })
}

impl Collector {
    /// The site a tracker request is for and the write key its events count
    /// against. By id, the page's host must be one of the site's domains (a
    /// site id is public, so the domains are what keep strangers' pages out);
    /// by domain, as on the Plausible endpoint.
    fn tracked_site(
        &self,
        site: &SiteRef,
        host: Option<&str>,
    ) -> Result<(String, Secret), Rejection> {
        match site {
            SiteRef::Domain(domain) => self.site_of_domain(std::slice::from_ref(domain)).ok_or_else(|| {
                Rejection::new(
                    Reason::UnknownSite,
                    format!(
                        "no site has the domain {domain:?}; add it with `beacon sites add SITE --domain {domain}`"
                    ),
                )
            }),
            SiteRef::Id(id) => {
                let Some((key, domains)) = self.sites.get(id) else {
                    return Err(Rejection::new(
                        Reason::UnknownSite,
                        format!("no site is called {id:?}"),
                    ));
                };
                if !host_allowed(domains, host) {
                    return Err(Rejection::new(
                        Reason::UnknownSite,
                        format!(
                            "site {id:?} does not take events from pages on {}; add the domain with `beacon sites add {id} --domain HOST`",
                            host.unwrap_or("an unnamed origin")
                        ),
                    ));
                }
                Ok((id.clone(), key.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_script_is_under_two_kilobytes_gzipped() {
        let served = &*SERVED;
        assert!(
            served.gzipped.len() < 2048,
            "{} bytes gzipped",
            served.gzipped.len()
        );
        assert!(!served.plain.contains("\n//") && served.plain.contains("/api/v1/track"));
    }

    #[test]
    fn a_page_host_matches_its_domain_and_subdomains_only() {
        let domains = vec!["shop.example".to_owned()];
        for (host, allowed) in [
            (Some("shop.example"), true),
            (Some("www.shop.example"), true),
            (Some("badshop.example"), false),
            (Some("shop.example.evil"), false),
            (None, false),
        ] {
            assert_eq!(host_allowed(&domains, host), allowed, "{host:?}");
        }
        assert!(host_allowed(&[ANY_DOMAIN.to_owned()], None));
        assert!(!host_allowed(&[], Some("shop.example")));
    }
}
