//! The pigeon wire protocol: the prost types generated from `pigeon.proto`
//! and the length-prefixed frame [`codec`].
//!
//! This crate does no I/O and holds no state; the server, the sdk and the
//! tests all speak the protocol through it. A mobile build depends on this
//! crate and the sdk only.

pub mod codec;

/// The generated protobuf types, `pigeon.v1` in `pigeon.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pigeon.v1.rs"));
}

pub use codec::{Codec, CodecError, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
pub use pb::envelope::Body;
pub use pb::{Envelope, ErrorCode, KickReason, Platform, ProtocolVersion};

/// The protocol version this crate speaks, as carried in login and register.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::ProtocolVersion1;

impl Envelope {
    /// An envelope with the given request id and body.
    pub fn new(request_id: u64, body: Body) -> Self {
        Envelope {
            request_id,
            body: Some(body),
        }
    }
}

impl pb::Error {
    /// An error answer with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        pb::Error {
            code: code as i32,
            message: message.into(),
            retry_after_ms: 0,
            fatal: code.is_fatal(),
        }
    }
}

impl ErrorCode {
    /// Whether the server always closes the connection after this code.
    ///
    /// INVALID_ARGUMENT is fatal only when the frame could not be decoded at
    /// all; the server sets `Error.fatal` for that case itself.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::FrameTooLarge
                | ErrorCode::NotAuthenticated
                | ErrorCode::UnsupportedVersion
                | ErrorCode::ShuttingDown
                | ErrorCode::LoginTimeout
        )
    }

    /// Whether a client may retry the same request later and expect success.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::Internal
        )
    }
}

impl Platform {
    /// The kick-policy class of a platform: one session per class by default.
    pub fn class(self) -> PlatformClass {
        match self {
            Platform::Ios | Platform::Android => PlatformClass::Mobile,
            Platform::Desktop | Platform::Cli => PlatformClass::Desktop,
            Platform::Web | Platform::MiniProgram => PlatformClass::Web,
            Platform::Unspecified => PlatformClass::Desktop,
        }
    }
}

/// The platform classes of the kick policy (see DESIGN.md, "Identities and login").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlatformClass {
    /// iOS and Android.
    Mobile,
    /// Desktop apps and the CLI.
    Desktop,
    /// Browsers and mini-programs.
    Web,
}
