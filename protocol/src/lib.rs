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

impl Body {
    /// A short, stable name for the body's kind, for logs, metrics labels
    /// and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Register(_) => "register",
            Body::Login(_) => "login",
            Body::Logout(_) => "logout",
            Body::Ping(_) => "ping",
            Body::Send(_) => "send",
            Body::Pull(_) => "pull",
            Body::Ack(_) => "ack",
            Body::GroupCreate(_) => "group_create",
            Body::GroupAdd(_) => "group_add",
            Body::GroupRemove(_) => "group_remove",
            Body::GroupLeave(_) => "group_leave",
            Body::GroupDissolve(_) => "group_dissolve",
            Body::GroupList(_) => "group_list",
            Body::GroupMembers(_) => "group_members",
            Body::GroupSetRole(_) => "group_set_role",
            Body::GroupPull(_) => "group_pull",
            Body::Conversations(_) => "conversations",
            Body::Read(_) => "read",
            Body::ReadCount(_) => "read_count",
            Body::Recall(_) => "recall",
            Body::Devices(_) => "devices",
            Body::RevokeDevice(_) => "revoke_device",
            Body::Typing(_) => "typing",
            Body::Presence(_) => "presence",
            Body::PushToken(_) => "push_token",
            Body::AppState(_) => "app_state",
            Body::Registered(_) => "registered",
            Body::LoggedIn(_) => "logged_in",
            Body::LoggedOut(_) => "logged_out",
            Body::Pong(_) => "pong",
            Body::Sent(_) => "sent",
            Body::Pulled(_) => "pulled",
            Body::Acked(_) => "acked",
            Body::Group(_) => "group",
            Body::GroupListed(_) => "group_listed",
            Body::GroupMembersListed(_) => "group_members_listed",
            Body::GroupPulled(_) => "group_pulled",
            Body::ConversationsListed(_) => "conversations_listed",
            Body::ReadSet(_) => "read_set",
            Body::ReadCounted(_) => "read_counted",
            Body::Recalled(_) => "recalled",
            Body::DevicesListed(_) => "devices_listed",
            Body::DeviceRevoked(_) => "device_revoked",
            Body::TypingSent(_) => "typing_sent",
            Body::PresenceListed(_) => "presence_listed",
            Body::PushTokenSet(_) => "push_token_set",
            Body::AppStateSet(_) => "app_state_set",
            Body::Error(_) => "error",
            Body::Notify(_) => "notify",
            Body::Kick(_) => "kick",
            Body::GroupNotify(_) => "group_notify",
            Body::ReadReceipt(_) => "read_receipt",
            Body::TypingEvent(_) => "typing_event",
            Body::PresenceEvent(_) => "presence_event",
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
