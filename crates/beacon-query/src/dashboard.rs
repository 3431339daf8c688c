//! The dashboard: plain HTML, CSS and JavaScript from `dashboard/`, embedded
//! in the binary and served at `/` (the page) and `/assets/` (its files). The
//! page reads everything through the query API with the read key its user
//! signs in with, so serving it needs no key and no state.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "dashboard/"]
struct Files;

/// The page may load only its own files and talk only to its own origin: no
/// inline scripts or styles, no frames, no requests elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The dashboard's routes. They sit beside the collector's and the API's, so
/// they take only `/` and `/assets/…`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

/// One embedded file, revalidated by its hash on every load so a new binary's
/// page is never mixed with an old one's cached scripts.
fn serve(file: &str, request: &HeaderMap) -> Response {
    let Some(found) = Files::get(file) else {
        return (StatusCode::NOT_FOUND, "no such dashboard file\n").into_response();
    };
    let etag = format!("\"{}\"", hex(&found.metadata.sha256_hash()));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        found.data.into_owned().into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(file)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(file: &str) -> String {
        let found = Files::get(file).unwrap_or_else(|| panic!("{file} is embedded"));
        String::from_utf8(found.data.into_owned()).expect("UTF-8")
    }

    #[test]
    fn the_page_is_served_with_its_policy_and_type() {
        let response = serve("index.html", &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|p| p.contains("connect-src 'self'"))
        );
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        let missing = serve("nope.js", &HeaderMap::new());
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn an_unchanged_file_is_not_sent_again() {
        let first = serve("app.js", &HeaderMap::new());
        assert_eq!(
            first.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, first.headers()[header::ETAG].clone());
        assert_eq!(serve("app.js", &request).status(), StatusCode::NOT_MODIFIED);
    }

    /// Every file the page and its modules refer to is embedded, and none is
    /// fetched from anywhere else (the SVG namespace is a name, not a request).
    #[test]
    fn the_page_refers_only_to_its_own_files() {
        let mut refs = Vec::new();
        for file in Files::iter() {
            let body = text(&file);
            let cleaned = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !cleaned.contains("http://")
                    && !cleaned.contains("https://")
                    && !cleaned.contains("//cdn"),
                "{file} names an outside address"
            );
            for quote in ['"', '\''] {
                for part in body.split(quote) {
                    if let Some(name) = part.strip_prefix("/assets/") {
                        refs.push(name.to_owned());
                    } else if let Some(name) = part.strip_prefix("./")
                        && name.ends_with(".js")
                    {
                        refs.push(name.to_owned());
                    }
                }
            }
        }
        assert!(refs.iter().any(|r| r == "app.js"), "{refs:?}");
        for r in refs {
            assert!(
                Files::get(&r).is_some(),
                "{r} is referred to but not embedded"
            );
        }
    }
}
