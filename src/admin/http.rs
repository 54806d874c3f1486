//! Just enough HTTP/1.1 for the admin listener: one request per
//! connection (`Connection: close`), a bounded head and body, one deadline
//! for the whole request. Hand-written because the admin API is a few
//! loopback routes; an HTTP framework would be most of the server's
//! dependency tree for them.
//!
//! It parses untrusted bytes (anything on the host can connect), so every
//! size is capped, chunked bodies are refused, and reading never waits past
//! the deadline. Owns parsing and writing only; routes live in `routes`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

/// Most bytes of a request line plus headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most bytes of a request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most header lines.
const MAX_HEADERS: usize = 64;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// "GET", "POST", ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string after '?', if any ("" if none).
    pub query: String,
    /// Header names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of one query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

/// Why a request could not be read; each maps to a status (or to a silent
/// close when the peer is gone).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// The peer closed or the socket failed before a whole request.
    #[error("connection closed before a whole request")]
    Closed,
    /// The deadline passed.
    #[error("request not received in time")]
    Timeout,
    /// Not HTTP/1.x as this parser reads it.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The head is above [`MAX_HEAD`] or has too many headers.
    #[error("request head too large")]
    HeadTooLarge,
    /// The body is above [`MAX_BODY`].
    #[error("request body too large")]
    BodyTooLarge,
    /// Transfer-Encoding (chunked) bodies are not accepted.
    #[error("transfer-encoding is not supported; send Content-Length")]
    Unsupported,
}

impl HttpError {
    /// The status to answer with, or `None` to just close.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Closed => None,
            HttpError::Timeout => Some(408),
            HttpError::Malformed(_) => Some(400),
            HttpError::HeadTooLarge => Some(431),
            HttpError::BodyTooLarge => Some(413),
            HttpError::Unsupported => Some(501),
        }
    }
}

/// Read one request, all of it before `deadline`.
pub async fn read_request<R: AsyncRead + Unpin>(
    stream: &mut R,
    deadline: Instant,
) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        let mut chunk = [0u8; 1024];
        let want = chunk.len().min(MAX_HEAD + 4 - buf.len());
        let n = read_by(stream, &mut chunk[..want], deadline).await?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let (mut request, length) = parse_head(&buf[..head_end])?;
    let mut body = buf.split_off(head_end + 4);
    if body.len() > length {
        // Pipelined bytes after the body: one request per connection.
        body.truncate(length);
    }
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(8192)];
        let n = read_by(stream, &mut chunk, deadline).await?;
        body.extend_from_slice(&chunk[..n]);
    }
    request.body = body;
    Ok(request)
}

async fn read_by<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, HttpError> {
    match timeout_at(deadline, stream.read(buf)).await {
        Err(_) => Err(HttpError::Timeout),
        Ok(Ok(0)) | Ok(Err(_)) => Err(HttpError::Closed),
        Ok(Ok(n)) => Ok(n),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses the request line and headers; returns the request (without
/// body) and the Content-Length.
fn parse_head(head: &[u8]) -> Result<(Request, usize), HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines
        .next()
        .ok_or(HttpError::Malformed("no request line"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("method"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    let mut length = 0usize;
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header line"))?;
        let name = name.to_ascii_lowercase();
        let value = value.trim().to_owned();
        match name.as_str() {
            "content-length" => {
                length = value
                    .parse()
                    .map_err(|_| HttpError::Malformed("content-length"))?;
                if length > MAX_BODY {
                    return Err(HttpError::BodyTooLarge);
                }
            }
            "transfer-encoding" => return Err(HttpError::Unsupported),
            _ => {}
        }
        headers.push((name, value));
    }
    let request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: Vec::new(),
    };
    Ok((request, length))
}

/// An answer: status, content type, body, and extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let body = serde_json::to_vec_pretty(value)
            .unwrap_or_else(|_| b"{\"error\":\"unserialisable answer\"}".to_vec());
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    /// A JSON error `{"error": message}`.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.to_string() }))
    }
}

/// Write a response and close the write side, all within `limit`.
pub async fn write_response<W: AsyncWrite + Unpin>(
    stream: &mut W,
    response: &Response,
    limit: Duration,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&response.body).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "admin response write timed out",
        )),
    }
}

/// The reason phrase of the statuses this API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Request, HttpError> {
        let mut input = bytes;
        read_request(&mut input, Instant::now() + Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn a_request_with_query_headers_and_body_parses() {
        let raw = b"POST /v1/users?after=3&x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: 4\r\n\r\nbodyEXTRA";
        let r = parse(raw).await.unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/users"));
        assert_eq!(r.query_param("after"), Some("3"));
        assert_eq!(r.query_param("x"), Some(""));
        assert_eq!(r.query_param("y"), None);
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.body, b"body");
    }

    #[tokio::test]
    async fn every_split_of_a_request_parses_the_same() {
        let raw: &[u8] = b"GET /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        let whole = parse(raw).await.unwrap();
        for at in 1..raw.len() {
            let (a, b) = raw.split_at(at);
            let mut input = tokio_test_reader(a, b);
            let r = read_request(&mut input, Instant::now() + Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(r, whole, "split at {at}");
        }
    }

    /// A reader that yields `a`, then `b`, in two reads.
    fn tokio_test_reader<'a>(a: &'a [u8], b: &'a [u8]) -> impl AsyncRead + Unpin + 'a {
        AsyncReadExt::chain(a, b)
    }

    #[tokio::test]
    async fn oversized_garbage_and_chunked_requests_are_refused() {
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(huge.as_bytes()).await, Err(HttpError::HeadTooLarge));
        let big_body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse(big_body.as_bytes()).await,
            Err(HttpError::BodyTooLarge)
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked).await, Err(HttpError::Unsupported));
        for bad in [
            &b"\xff\xfe\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad).await, Err(HttpError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n").await, Err(HttpError::Closed));
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort").await,
            Err(HttpError::Closed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            read_request(&mut server, deadline).await,
            Err(HttpError::Timeout)
        );
    }
}
