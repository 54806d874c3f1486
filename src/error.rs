//! Errors the services return, and the one place that maps each to the
//! wire's `ErrorCode`. Store and I/O detail never reaches a peer.

use pigeon_protocol::{pb, ErrorCode};

use crate::store::StoreError;

/// How long a client should wait before retrying after UNAVAILABLE.
const UNAVAILABLE_RETRY_MS: u32 = 1000;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A field broke its rules.
    #[error("{0}")]
    InvalidArgument(String),
    /// The client speaks another protocol version.
    #[error("protocol version {0} is not supported; this server speaks version 1")]
    UnsupportedVersion(i32),
    /// Wrong credentials of any kind (deliberately not saying which).
    #[error("wrong username, password or token")]
    AuthFailed,
    /// Sign-up is switched off.
    #[error("registration is disabled on this server")]
    RegistrationDisabled,
    /// The username exists.
    #[error("username {0} is taken")]
    UsernameTaken(String),
    /// The recipient does not exist.
    #[error("no such user: {0}")]
    UnknownUser(String),
    /// Content above the configured maximum.
    #[error("content of {len} bytes is above the maximum of {max}")]
    ContentTooLarge {
        /// The content's size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// An ack or pull anchor above the queue's top.
    #[error("seq {seq} is above the queue's max_seq {max_seq}")]
    AckBeyondMaxSeq {
        /// What the client asked for.
        seq: u64,
        /// The top of the queue.
        max_seq: u64,
    },
    /// Not a member of the group.
    #[error("{0}")]
    NotAMember(String),
    /// The caller's role (or ownership of the message) does not allow it.
    #[error("{0}")]
    PermissionDenied(String),
    /// No such group, or it was dissolved.
    #[error("no such group: {0}")]
    UnknownGroup(u64),
    /// No such message visible to the caller.
    #[error("no such message: {0}")]
    UnknownMessage(u64),
    /// The recall window has passed.
    #[error("message {0} is past the recall window")]
    RecallWindowPassed(u64),
    /// The group would pass the maximum size.
    #[error("a group has at most {0} members")]
    GroupFull(u32),
    /// The caller has no such device.
    #[error("no such device: {0}")]
    UnknownDevice(String),
    /// The store failed; nothing of the request was stored (or, for a send
    /// that was stored but not made durable, a retry is deduplicated).
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ServiceError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ServiceError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ServiceError::AuthFailed => ErrorCode::AuthFailed,
            ServiceError::RegistrationDisabled => ErrorCode::RegistrationDisabled,
            ServiceError::UsernameTaken(_) => ErrorCode::UsernameTaken,
            ServiceError::UnknownUser(_) => ErrorCode::UnknownUser,
            ServiceError::ContentTooLarge { .. } => ErrorCode::ContentTooLarge,
            ServiceError::AckBeyondMaxSeq { .. } => ErrorCode::AckBeyondMaxSeq,
            ServiceError::NotAMember(_) => ErrorCode::NotAMember,
            ServiceError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            ServiceError::UnknownGroup(_) => ErrorCode::UnknownGroup,
            ServiceError::UnknownMessage(_) => ErrorCode::UnknownMessage,
            ServiceError::RecallWindowPassed(_) => ErrorCode::RecallWindowPassed,
            ServiceError::GroupFull(_) => ErrorCode::GroupFull,
            ServiceError::UnknownDevice(_) => ErrorCode::UnknownDevice,
            ServiceError::Store(StoreError::Io(_)) => ErrorCode::Unavailable,
            ServiceError::Store(_) => ErrorCode::Internal,
            ServiceError::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }

    /// The error frame body a peer gets: code, a message without internal
    /// detail, and a retry hint where one applies.
    pub fn to_wire(&self) -> pb::Error {
        let code = self.code();
        let message = match self {
            ServiceError::Store(StoreError::Io(_)) => {
                "the server cannot store right now; retry later".to_owned()
            }
            ServiceError::Store(_) => "internal server error".to_owned(),
            other => other.to_string(),
        };
        let mut error = pb::Error::new(code, message);
        if code == ErrorCode::Unavailable {
            error.retry_after_ms = UNAVAILABLE_RETRY_MS;
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_detail_never_reaches_the_wire() {
        let e = ServiceError::Store(StoreError::Io("/var/lib/pigeon: ENOSPC".into()));
        let wire = e.to_wire();
        assert_eq!(wire.code, ErrorCode::Unavailable as i32);
        assert!(!wire.message.contains("ENOSPC"));
        assert_eq!(wire.retry_after_ms, UNAVAILABLE_RETRY_MS);
        assert!(!wire.fatal);
        let e = ServiceError::Store(StoreError::Corrupt("bad record in msgid_body".into()));
        assert!(!e.to_wire().message.contains("msgid_body"));
    }

    #[test]
    fn fatal_flag_follows_the_code() {
        assert!(ServiceError::UnsupportedVersion(9).to_wire().fatal);
        assert!(ServiceError::ShuttingDown.to_wire().fatal);
        assert!(!ServiceError::AuthFailed.to_wire().fatal);
    }
}
