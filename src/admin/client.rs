//! The admin endpoint's client, for `pigeond admin` and `pigeond backup`:
//! one HTTP/1.1 request per connection to the loopback listener, the
//! bearer token from the token file, a deadline on the whole exchange and
//! a cap on the answer's size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AdminError;

/// Largest answer read.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Deadline of an ordinary request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one admin endpoint.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
    timeout: Duration,
}

/// An answer.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl AdminResponse {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, AdminError> {
        serde_json::from_slice(&self.body).map_err(|e| AdminError::Refused {
            status: self.status,
            message: format!("the answer is not JSON: {e}"),
        })
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Self if 2xx; otherwise the server's error message as an error.
    pub fn ok(self) -> Result<AdminResponse, AdminError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let message = self
            .json()
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| self.text().trim().to_owned());
        Err(AdminError::Refused {
            status: self.status,
            message,
        })
    }
}

impl AdminClient {
    /// A client of `addr` presenting `token`. An unspecified listen address
    /// (0.0.0.0, ::) is reached over loopback.
    pub fn new(addr: SocketAddr, token: String) -> AdminClient {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        AdminClient {
            addr: SocketAddr::new(ip, addr.port()),
            token,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another deadline (a backup of a large store
    /// takes longer than a listing).
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Send one request (with a JSON body if given) and read the answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<AdminResponse, AdminError> {
        let exchange = self.exchange(method, path, body);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.unreachable(format!("no answer within {:?}", self.timeout), false)),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<AdminResponse, AdminError> {
        let mut stream = TcpStream::connect(self.addr).await.map_err(|e| {
            let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
            self.unreachable(format!("cannot connect: {e}"), refused)
        })?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| self.unreachable(format!("cannot send: {e}"), false))?;
        let mut raw = Vec::new();
        let mut limited = (&mut stream).take(MAX_RESPONSE as u64 + 1);
        limited
            .read_to_end(&mut raw)
            .await
            .map_err(|e| self.unreachable(format!("cannot read the answer: {e}"), false))?;
        if raw.len() > MAX_RESPONSE {
            return Err(self.unreachable("the answer is too large".into(), false));
        }
        parse_response(&raw).ok_or_else(|| self.unreachable("the answer is not HTTP".into(), false))
    }

    fn unreachable(&self, message: String, refused: bool) -> AdminError {
        AdminError::Unreachable {
            addr: self.addr,
            message,
            refused,
        }
    }
}

/// Status and body of a whole `Connection: close` response.
fn parse_response(raw: &[u8]) -> Option<AdminResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let mut body = raw[end + 4..].to_vec();
    let length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    if let Some(length) = length {
        body.truncate(length);
    }
    Some(AdminResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_and_errors_carry_the_message() {
        let raw =
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 17\r\n\r\n{\"error\":\"taken\"}  trailing";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 409);
        match r.ok() {
            Err(AdminError::Refused {
                status: 409,
                message,
            }) => assert_eq!(message, "taken"),
            other => panic!("{other:?}"),
        }
        assert!(parse_response(b"garbage").is_none());
        assert!(parse_response(b"SPDY 200\r\n\r\n").is_none());
    }

    #[test]
    fn an_unspecified_listen_address_is_reached_over_loopback() {
        let c = AdminClient::new("0.0.0.0:7444".parse().unwrap(), "t".into());
        assert_eq!(c.addr().to_string(), "127.0.0.1:7444");
    }
}
