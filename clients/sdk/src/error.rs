//! The one error type of the sdk, [`SdkError`].
//!
//! Owns the mapping from a wire `Error` answer to a typed
//! [`SdkError::Server`]; knows nothing about sockets or profiles beyond the
//! shape of what can fail there.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use pigeon_protocol::{pb, ErrorCode};

/// Why a TLS setup or handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate does not chain to the configured CA, or is
    /// not valid for the server name (expired, wrong host, bad signature).
    UntrustedCertificate,
    /// The CA file could not be read or held no usable certificate.
    CaFile,
    /// The server name or the rustls configuration was not usable.
    Config,
    /// The handshake failed for another reason (protocol versions, alerts).
    Handshake,
}

/// Everything that can go wrong in the sdk.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address that was dialled, as given ("host:port").
        addr: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// TLS setup or the handshake failed.
    #[error("TLS: {}", tls_message(*.kind, .detail))]
    Tls {
        /// What kind of TLS failure it was.
        kind: TlsFailure,
        /// Detail from rustls or the file system, for logs and humans.
        detail: String,
    },
    /// A phase did not finish in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for ("tcp connect", "tls handshake", "answer to login").
        what: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// The connection is closed (by either side, or it was found dead).
    #[error("connection closed: {reason}")]
    Closed {
        /// Why, as far as known.
        reason: String,
    },
    /// There is no live connection right now, so the request was certainly
    /// not sent (unlike [`SdkError::Closed`], after which a request's outcome
    /// is unknown).
    #[error("not connected")]
    NotConnected,
    /// No token is stored and no password was given, so there is no way
    /// to log in.
    #[error("not logged in: no token stored and no password given")]
    NotLoggedIn,
    /// The server answered with an `Error`.
    #[error("server refused: {}: {message}", code.as_str_name())]
    Server {
        /// The typed error code (UNSPECIFIED if the server sent one this
        /// sdk does not know).
        code: ErrorCode,
        /// The server's human-readable detail.
        message: String,
        /// For RATE_LIMITED and UNAVAILABLE: wait at least this long (ms).
        retry_after_ms: u32,
        /// Whether the server closes the connection after this error.
        fatal: bool,
    },
    /// The server answered with something that does not fit the request.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Reading or writing on the connection failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The profile directory could not be read or written.
    #[error("profile {}: {message}", path.display())]
    Profile {
        /// The file or directory concerned.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

fn tls_message(kind: TlsFailure, detail: &str) -> String {
    match kind {
        TlsFailure::UntrustedCertificate => {
            format!("server certificate not trusted: {detail}")
        }
        TlsFailure::CaFile => format!("cannot load CA certificates: {detail}"),
        TlsFailure::Config => format!("bad TLS configuration: {detail}"),
        TlsFailure::Handshake => format!("handshake failed: {detail}"),
    }
}

impl SdkError {
    /// The typed error for a wire `Error` answer.
    pub fn from_wire(error: pb::Error) -> SdkError {
        let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified);
        let message = if code == ErrorCode::Unspecified && error.code != 0 {
            format!("{} (unknown error code {})", error.message, error.code)
        } else {
            error.message
        };
        SdkError::Server {
            code,
            message,
            retry_after_ms: error.retry_after_ms,
            fatal: error.fatal,
        }
    }

    /// The server error code, if this is a server refusal.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            SdkError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is an AUTH_FAILED answer (wrong password, bad token).
    pub fn is_auth_failed(&self) -> bool {
        self.server_code() == Some(ErrorCode::AuthFailed)
    }

    /// Whether trying again later (on a new connection, after a backoff)
    /// may succeed: network trouble, timeouts and retryable server codes.
    pub fn is_transient(&self) -> bool {
        match self {
            SdkError::Connect { .. }
            | SdkError::Timeout { .. }
            | SdkError::Closed { .. }
            | SdkError::NotConnected
            | SdkError::Io(_) => true,
            SdkError::Tls { kind, .. } => *kind == TlsFailure::Handshake,
            SdkError::Server { code, .. } => code.is_retryable(),
            SdkError::Protocol(_) | SdkError::Profile { .. } | SdkError::NotLoggedIn => false,
        }
    }

    pub(crate) fn profile(path: impl Into<PathBuf>, message: impl ToString) -> SdkError {
        SdkError::Profile {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn closed(reason: impl Into<String>) -> SdkError {
        SdkError::Closed {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_display_names_the_code() {
        let err = SdkError::from_wire(pb::Error::new(ErrorCode::UnknownUser, "no such user bob"));
        assert_eq!(
            err.to_string(),
            "server refused: UNKNOWN_USER: no such user bob"
        );
        assert_eq!(err.server_code(), Some(ErrorCode::UnknownUser));
    }

    #[test]
    fn unknown_wire_code_becomes_unspecified_but_keeps_the_number() {
        let err = SdkError::from_wire(pb::Error {
            code: 999,
            message: "new".into(),
            retry_after_ms: 0,
            fatal: false,
        });
        assert_eq!(err.server_code(), Some(ErrorCode::Unspecified));
        assert!(err.to_string().contains("999"), "{err}");
    }

    #[test]
    fn untrusted_certificate_says_so() {
        let err = SdkError::Tls {
            kind: TlsFailure::UntrustedCertificate,
            detail: "UnknownIssuer".into(),
        };
        assert!(err.to_string().contains("not trusted"), "{err}");
    }
}
