//! `/ui`: the web console, one HTML page, one script and one style sheet built into the binary.
//!
//! The page is deliberately public: it holds no data, and every call its script makes goes to the
//! authenticated REST API with the user's own bearer token. Its answers carry a strict
//! Content-Security-Policy (nothing but this origin's own files: no inline script or style, no
//! frames), `nosniff`, and cache headers: the page is revalidated on every load (`no-cache` with
//! an `ETag`) and names its script and style sheet by content hash (`?v=…`), so those are cached
//! for good and a new Rucat's page never runs an old script.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::error::ApiError;
use super::ApiContext;

/// What the console's page may load and do: its own origin's script, style, images and API calls,
/// nothing inline, never inside a frame.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const INDEX_TEMPLATE: &str = include_str!("ui/index.html");
const SCRIPT: &[u8] = include_bytes!("ui/app.js");
const STYLE: &[u8] = include_bytes!("ui/app.css");
const ICON: &[u8] = include_bytes!("ui/icon.svg");

/// The script, style sheet and icon, by the name they are served under (`/ui/NAME`).
const ASSETS: [(&str, &str, &[u8]); 3] = [
    ("app.js", "text/javascript; charset=utf-8", SCRIPT),
    ("app.css", "text/css; charset=utf-8", STYLE),
    ("icon.svg", "image/svg+xml", ICON),
];

struct Asset {
    content_type: &'static str,
    body: Bytes,
    /// A strong validator: the content's digest, quoted.
    etag: String,
}

struct Console {
    index: Asset,
    /// In the order of [`ASSETS`].
    assets: Vec<(&'static str, Asset)>,
}

fn digest(body: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, body);
    hash.as_ref()[..12]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The page with `{{NAME}}` replaced by `/ui/NAME?v=DIGEST` for each asset.
static CONSOLE: LazyLock<Console> = LazyLock::new(|| {
    let mut index = INDEX_TEMPLATE.to_owned();
    let mut assets = Vec::new();
    for (name, content_type, body) in ASSETS {
        let version = digest(body);
        index = index.replace(
            &format!("{{{{{name}}}}}"),
            &format!("/ui/{name}?v={version}"),
        );
        assets.push((
            name,
            Asset {
                content_type,
                body: Bytes::from_static(body),
                etag: format!("\"{version}\""),
            },
        ));
    }
    let etag = format!("\"{}\"", digest(index.as_bytes()));
    Console {
        index: Asset {
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(index.into_bytes()),
            etag,
        },
        assets,
    }
});

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&CONSOLE.index, &headers, "no-cache")
}

#[derive(Deserialize)]
struct Version {
    v: Option<String>,
}

async fn asset(
    Path(name): Path<String>,
    version: Result<Query<Version>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, asset) = CONSOLE
        .assets
        .iter()
        .find(|(known, _)| *known == name)
        .ok_or_else(|| ApiError::NotFound(format!("no console file {name:?}")))?;
    // Asked for by this content's digest: it never changes under that URL.
    let current = version
        .ok()
        .and_then(|Query(version)| version.v)
        .is_some_and(|v| asset.etag.trim_matches('"') == v);
    let cache = if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Ok(serve(asset, &headers, cache))
}

fn serve(asset: &Asset, request: &HeaderMap, cache: &'static str) -> Response {
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == asset.etag || tag.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.clone().into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(ETAG, etag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_digest_and_has_no_inline_code() {
        let page = String::from_utf8(CONSOLE.index.body.to_vec()).expect("utf-8");
        assert!(!page.contains("{{"), "a placeholder is left: {page}");
        for (name, asset) in &CONSOLE.assets {
            let url = format!("/ui/{name}?v={}", asset.etag.trim_matches('"'));
            assert!(page.contains(&url), "{url} missing");
        }
        // The CSP forbids inline code: the page must not need any.
        assert!(!page.contains("<script>") && !page.contains("<style"));
        assert!(!page.contains(" style=") && !page.contains(" onclick="));
    }
}
