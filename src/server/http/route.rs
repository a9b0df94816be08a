//! Which answer an HTTP request gets, from its head alone (sans-IO).
//!
//! - `GET /{app}/{key}.flv[?query]`: an HTTP-FLV player. The app may have several
//!   segments (`/a/b/key.flv` is app `a/b`), as over RTMP; the query goes with the key,
//!   as RTMP's `key?token=` does, so tokens and hooks see the same request.
//! - `GET /play/{app}/{key}[?query]`: the player page for that stream.
//! - `GET /player.js`: the player element (an ES module).
//! - `GET /webtransport.json`: where and how browsers reach the relay over WebTransport
//!   (the UDP port and the certificate hashes for `serverCertificateHashes`).
//! - `OPTIONS` anything: a CORS preflight.
//!
//! Paths are not percent-decoded: a session ID is compared byte for byte, whatever
//! carried it. Empty, `.` and `..` segments and control characters are refused.

use crate::http::RequestHead;

/// A static file the relay serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asset {
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static str,
}

/// The player element.
pub(crate) const PLAYER_JS: Asset =
    Asset { content_type: "text/javascript; charset=utf-8", body: include_str!("assets/player.js") };
/// The player page (it reads the stream from its own URL).
pub(crate) const PLAYER_PAGE: Asset =
    Asset { content_type: "text/html; charset=utf-8", body: include_str!("assets/player.html") };

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Play `app`/`key` as HTTP-FLV; `key` carries the request's query.
    Flv { app: String, key: String },
    /// A static file.
    Asset(Asset),
    /// The WebTransport port and certificate hashes (JSON).
    WebTransport,
    /// A CORS preflight.
    Preflight,
    /// Nothing here; the reason is told to the client.
    NotFound(&'static str),
    /// A method this path does not take.
    MethodNotAllowed,
}

/// The route of `head`.
pub(crate) fn route(head: &RequestHead) -> Route {
    match head.method.as_str() {
        "OPTIONS" => return Route::Preflight,
        "GET" | "HEAD" => {}
        _ => return Route::MethodNotAllowed,
    }
    let path = head.path.as_str();
    if path == "/player.js" {
        return Route::Asset(PLAYER_JS);
    }
    if path == "/webtransport.json" {
        return Route::WebTransport;
    }
    if let Some(stream) = path.strip_prefix("/play/") {
        return match crate::http::split_stream(stream) {
            Ok(_) => Route::Asset(PLAYER_PAGE),
            Err(why) => Route::NotFound(why),
        };
    }
    let Some(stream) = path.strip_prefix('/').and_then(|p| p.strip_suffix(".flv")) else {
        return Route::NotFound("no such path: players ask for /{app}/{key}.flv or /play/{app}/{key}");
    };
    match crate::http::split_stream(stream) {
        Ok((app, key)) => {
            let key = if head.query.is_empty() { key.to_owned() } else { format!("{key}?{}", head.query) };
            Route::Flv { app: app.to_owned(), key }
        }
        Err(why) => Route::NotFound(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn route_of(request: &str) -> Route {
        let (head, _) = parse_head(request.as_bytes()).unwrap().unwrap();
        route(&head)
    }

    #[test]
    fn flv_paths_split_like_rtmp_urls() {
        assert_eq!(
            route_of("GET /live/cam1.flv HTTP/1.1\r\n\r\n"),
            Route::Flv { app: "live".into(), key: "cam1".into() }
        );
        assert_eq!(
            route_of("GET /a/b/cam.flv?token=x&y=1 HTTP/1.1\r\n\r\n"),
            Route::Flv { app: "a/b".into(), key: "cam?token=x&y=1".into() }
        );
    }

    #[test]
    fn pages_and_preflights() {
        assert_eq!(route_of("GET /player.js HTTP/1.1\r\n\r\n"), Route::Asset(PLAYER_JS));
        assert_eq!(route_of("GET /webtransport.json HTTP/1.1\r\n\r\n"), Route::WebTransport);
        assert_eq!(route_of("GET /play/live/cam1?token=t HTTP/1.1\r\n\r\n"), Route::Asset(PLAYER_PAGE));
        assert_eq!(route_of("OPTIONS /live/cam1.flv HTTP/1.1\r\n\r\n"), Route::Preflight);
        assert_eq!(route_of("POST /live/cam1.flv HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
    }

    #[test]
    fn odd_paths_are_not_found_with_a_reason() {
        for path in [
            "/",
            "/cam1.flv",
            "/live/.flv",
            "/live//cam.flv",
            "/../x/cam.flv",
            "/live/...flv",
            "/play/x",
            "/x",
        ] {
            let r = route_of(&format!("GET {path} HTTP/1.1\r\n\r\n"));
            assert!(matches!(r, Route::NotFound(_)), "{path}: {r:?}");
        }
    }
}
