//! The web UI's files, built into the binary: a page, one script module, one stylesheet and
//! an icon from `ui/`, written without a build step or a framework (ARCHITECTURE.md says
//! why). This module owns which files exist, their content types and validators and the
//! headers every one of them is served with; `http::ui` serves them at `/ui/`.

use std::sync::LazyLock;

/// One file of the UI.
pub struct Asset {
    /// Its bytes.
    pub body: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its `ETag` (a quoted CRC-32 of the bytes): a browser revalidates with it and gets a
    /// 304 while the agent runs the same build.
    pub etag: String,
}

const FILES: [(&str, &[u8], &str); 4] = [
    (
        "index.html",
        include_bytes!("../ui/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "app.js",
        include_bytes!("../ui/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "style.css",
        include_bytes!("../ui/style.css"),
        "text/css; charset=utf-8",
    ),
    (
        "favicon.svg",
        include_bytes!("../ui/favicon.svg"),
        "image/svg+xml",
    ),
];

static ASSETS: LazyLock<Vec<(&'static str, Asset)>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(name, body, content_type)| {
            (
                *name,
                Asset {
                    body,
                    content_type,
                    etag: format!("\"{:08x}\"", crc32fast::hash(body)),
                },
            )
        })
        .collect()
});

/// The file at `path` under `/ui/` (empty: the page).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let name = if path.is_empty() { "index.html" } else { path };
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

/// Headers every UI answer carries: always revalidate (cheap with the `ETag`, and a new
/// build is never hidden behind a cached old one); the page runs only its own script and
/// style, talks only to this agent, and is never framed; no content sniffing.
pub const HEADERS: [(&str, &str); 5] = [
    ("Cache-Control", "no-cache"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_its_type_and_a_validator_and_unknown_paths_none() {
        assert!(asset("").unwrap().content_type.starts_with("text/html"));
        assert_eq!(asset("").unwrap().etag, asset("index.html").unwrap().etag);
        assert!(
            asset("app.js")
                .unwrap()
                .content_type
                .starts_with("text/javascript")
        );
        assert!(
            asset("style.css")
                .unwrap()
                .content_type
                .starts_with("text/css")
        );
        assert_eq!(asset("favicon.svg").unwrap().content_type, "image/svg+xml");
        for missing in ["nope.js", "../Cargo.toml", "index.html/", "/app.js"] {
            assert!(asset(missing).is_none(), "{missing}");
        }
        let page = std::str::from_utf8(asset("").unwrap().body).unwrap();
        // Nothing fetched from elsewhere, no inline script (the policy forbids both).
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<script>"));
    }
}
