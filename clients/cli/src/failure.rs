//! Why a command failed, as a message for people and an exit code for
//! scripts (the codes are listed in `pigeon --help`).

use std::fmt;
use std::path::Path;

use pigeon_sdk::{ErrorCode, SdkError, TlsFailure};
use serde_json::json;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything not covered below.
    Generic = 1,
    /// Bad arguments (clap uses 2 as well).
    Usage = 2,
    /// Server down or unreachable, TLS failure, timeout, connection lost.
    Connect = 3,
    /// Wrong password, token refused, not logged in.
    Auth = 4,
    /// The server refused the request with an error code.
    Refused = 5,
    /// Another session took over.
    Kicked = 6,
}

/// A failed command.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// What to tell the user.
    pub message: String,
    /// The server's error code, when the server refused.
    pub code: Option<ErrorCode>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    /// A failure with no server code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
            code: None,
        }
    }

    /// The failure for a profile without a token.
    pub fn not_logged_in() -> Failure {
        Failure::new(Exit::Auth, "not logged in: run `pigeon login NAME`")
    }

    /// Translate an sdk error, naming the server and CA file where it helps.
    pub fn from_sdk(error: SdkError, server: &str, ca: &Path) -> Failure {
        let (exit, message) = match &error {
            SdkError::Connect { addr, source }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                (
                    Exit::Connect,
                    format!("cannot connect to {addr}: connection refused — is pigeond running?"),
                )
            }
            SdkError::Connect { addr, source } => {
                (Exit::Connect, format!("cannot connect to {addr}: {source}"))
            }
            SdkError::Tls {
                kind: TlsFailure::UntrustedCertificate,
                detail,
            } => (
                Exit::Connect,
                format!(
                    "TLS: server certificate not trusted by CA {} ({detail})",
                    ca.display()
                ),
            ),
            SdkError::Tls { .. } => (Exit::Connect, error.to_string()),
            SdkError::Timeout { .. } | SdkError::Closed { .. } | SdkError::NotConnected => {
                (Exit::Connect, format!("{server}: {error}"))
            }
            SdkError::NotLoggedIn => return Failure::not_logged_in(),
            SdkError::Server { code, .. } => {
                let exit = if *code == ErrorCode::AuthFailed {
                    Exit::Auth
                } else {
                    Exit::Refused
                };
                return Failure {
                    exit,
                    message: error.to_string(),
                    code: Some(*code),
                };
            }
            SdkError::Protocol(_) | SdkError::Io(_) | SdkError::Profile { .. } => {
                (Exit::Generic, error.to_string())
            }
        };
        Failure::new(exit, message)
    }

    /// Add a hint after the message.
    pub fn hint(mut self, hint: &str) -> Failure {
        self.message = format!("{} — {hint}", self.message);
        self
    }

    /// The error as one JSON line for `--json`.
    pub fn to_json(&self) -> String {
        let mut value = json!({
            "error": self.message,
            "exit_code": self.exit as i32,
        });
        if let Some(code) = self.code {
            value["code"] = json!(code.as_str_name());
        }
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_sdk::pb;

    fn map(error: SdkError) -> Failure {
        Failure::from_sdk(error, "127.0.0.1:7443", Path::new("certs/ca.pem"))
    }

    #[test]
    fn refused_connection_suggests_the_server_is_down() {
        let failure = map(SdkError::Connect {
            addr: "127.0.0.1:7443".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(failure.exit, Exit::Connect);
        assert_eq!(
            failure.message,
            "cannot connect to 127.0.0.1:7443: connection refused — is pigeond running?"
        );
    }

    #[test]
    fn untrusted_certificate_names_the_ca_file() {
        let failure = map(SdkError::Tls {
            kind: TlsFailure::UntrustedCertificate,
            detail: "UnknownIssuer".into(),
        });
        assert_eq!(failure.exit, Exit::Connect);
        assert!(
            failure
                .message
                .starts_with("TLS: server certificate not trusted by CA certs/ca.pem"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn auth_failed_and_refusals_have_their_own_codes() {
        let auth = map(SdkError::from_wire(pb::Error::new(
            ErrorCode::AuthFailed,
            "wrong username or password",
        )));
        assert_eq!(auth.exit, Exit::Auth);
        assert!(auth.message.contains("AUTH_FAILED"), "{}", auth.message);
        let refused = map(SdkError::from_wire(pb::Error::new(
            ErrorCode::UnknownUser,
            "no such user bob",
        )));
        assert_eq!(refused.exit, Exit::Refused);
        assert_eq!(
            refused.message,
            "server refused: UNKNOWN_USER: no such user bob"
        );
    }

    #[test]
    fn json_error_carries_code_and_exit() {
        let failure = map(SdkError::from_wire(pb::Error::new(
            ErrorCode::UnknownUser,
            "no such user bob",
        )));
        let value: serde_json::Value = serde_json::from_str(&failure.to_json()).unwrap();
        assert_eq!(value["code"], "UNKNOWN_USER");
        assert_eq!(value["exit_code"], 5);
    }

    #[test]
    fn missing_token_says_how_to_log_in() {
        let failure = map(SdkError::NotLoggedIn);
        assert_eq!(failure.exit, Exit::Auth);
        assert_eq!(failure.message, "not logged in: run `pigeon login NAME`");
    }
}
