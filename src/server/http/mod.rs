//! HTTP/1.1 on the one TCP port: HTTP-FLV players, the player page and its script, and
//! what browsers need to reach the relay over WebTransport (`/webtransport.json`).
//! The TCP accept loop sends a connection here when its first byte is an ASCII capital
//! (RTMP starts with 0x03, TLS with 0x16), and so does the TLS side when the first byte
//! inside TLS is one (no ALPN needed). One request per connection: every answer closes
//! it (see [`crate::http::response_head`]). HEAD gets GET's head and no body.
//!
//! Bad input: the head is read within the handshake deadline and capped in size and
//! header count (431 past the caps, 400 when malformed), unknown paths get 404 with the
//! reason, and each refusal is counted under its reason.

mod flv;
pub(crate) mod route;

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::connection::{drain_for, ConnContext, ConnError, SessionWriter};
use crate::http::{parse_head, response_head, RequestHead, MAX_HEAD_BYTES};
use crate::reason::Reason;
use route::{route, Route};

/// How long an answered client may go on sending before the connection closes anyway.
const ANSWER_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// CORS headers for players and pages on other origins: everything here is public
/// (tokens travel in the URL, never in cookies), so any origin may read it.
const CORS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
    ("Access-Control-Expose-Headers", flv::CLOCK_HEADER),
];

/// Serves one HTTP request to its end.
pub(super) async fn serve_http<R, W>(
    mut reader: R,
    mut writer: W,
    ctx: &ConnContext,
    peer: (SocketAddr, &'static str),
    deadline: Instant,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: SessionWriter,
{
    let head = match read_head(&mut reader, deadline).await? {
        Ok(head) => head,
        Err(e) => {
            let (status, phrase) = e.status();
            answer(&mut reader, &mut writer, status, phrase, e.to_string().as_bytes(), true).await?;
            return Err(ConnError::Refused(Reason::BadHttpRequest, e.to_string()));
        }
    };
    tracing::debug!(method = %head.method, path = %head.path, "http request");
    match route(&head) {
        Route::Flv { app, key } => flv::play(reader, writer, ctx, peer, &head, app, key).await,
        Route::Asset(asset) => {
            respond(&mut writer, 200, "OK", asset.content_type, asset.body.as_bytes(), head.method != "HEAD")
                .await
        }
        Route::WebTransport => {
            let json = ctx.webtransport.json(std::time::SystemTime::now());
            respond(&mut writer, 200, "OK", "application/json", json.as_bytes(), head.method != "HEAD").await
        }
        Route::Preflight => {
            let mut headers = CORS.to_vec();
            headers.push(("Access-Control-Max-Age", "86400"));
            write_all(&mut writer, response_head(204, "No Content", &headers).into_bytes()).await
        }
        Route::NotFound(why) => {
            answer(&mut reader, &mut writer, 404, "Not Found", why.as_bytes(), head.method != "HEAD").await?;
            Err(ConnError::Refused(Reason::HttpNotFound, why.to_owned()))
        }
        Route::MethodNotAllowed => {
            let why = "only GET, HEAD and OPTIONS are served here";
            answer(&mut reader, &mut writer, 405, "Method Not Allowed", why.as_bytes(), true).await?;
            Err(ConnError::Refused(Reason::HttpNotFound, why.to_owned()))
        }
    }
}

/// Reads until a whole request head is in (its body, if any, is never read: nothing
/// served here takes one). The outer error is the socket's or the deadline's; the inner
/// one is the request's (answered with its status).
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    deadline: Instant,
) -> Result<Result<RequestHead, crate::http::HttpError>, ConnError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        match parse_head(&buf) {
            Ok(Some((head, _))) => return Ok(Ok(head)),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        let n = tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await.map_err(|_| {
            ConnError::Timeout("no whole HTTP request head in time", Reason::HandshakeTimeout)
        })??;
        if n == 0 {
            return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        // Never more than the cap plus one read: parse_head refuses past the cap.
        buf.extend_from_slice(&chunk[..n.min(MAX_HEAD_BYTES + 1 - buf.len().min(MAX_HEAD_BYTES))]);
    }
}

/// A whole response (its body unless `send_body` is false: HEAD gets the length alone),
/// then the write side closed.
async fn respond<W: SessionWriter>(
    writer: &mut W,
    status: u16,
    phrase: &str,
    content_type: &str,
    body: &[u8],
    send_body: bool,
) -> Result<(), ConnError> {
    let len = body.len().to_string();
    let mut headers = CORS.to_vec();
    headers.extend([("Content-Type", content_type), ("Content-Length", &len), ("Cache-Control", "no-cache")]);
    let mut out = response_head(status, phrase, &headers).into_bytes();
    if send_body {
        out.extend_from_slice(body);
    }
    write_all(writer, out).await
}

/// A whole answer, then the write side closed and what the client still sends read
/// away for a moment, so the close does not reset the connection before the answer is
/// read (see `drain_until_closed`). The moment is short: the request was read whole, so
/// only a client that goes on sending (garbage, a body nobody asked for) has more.
async fn answer<R: AsyncRead + Unpin, W: SessionWriter>(
    reader: &mut R,
    writer: &mut W,
    status: u16,
    phrase: &str,
    body: &[u8],
    send_body: bool,
) -> Result<(), ConnError> {
    respond(writer, status, phrase, "text/plain; charset=utf-8", body, send_body).await?;
    drain_for(reader, &mut [0u8; 1024], ANSWER_LINGER).await;
    Ok(())
}

async fn write_all<W: SessionWriter>(writer: &mut W, bytes: Vec<u8>) -> Result<(), ConnError> {
    writer.write_batch(&mut [Bytes::from(bytes)]).await?;
    let _ = writer.shutdown().await;
    Ok(())
}
