//! pigeon-sdk: the async Rust client library for the pigeon messaging
//! server.
//!
//! Two levels:
//! - [`Connection`]: one live TLS connection with typed requests
//!   (register, login, send, pull, ack, push tokens, ...), server pushes as
//!   [`ServerEvent`]s and a heartbeat. No reconnects.
//! - [`Client`]: a supervisor that keeps a connection logged in, syncs the
//!   inbox (cursor, dedupe by seq, ack) and the timelines of large groups
//!   (a cursor per group, see [`timeline`]), persists a [`Profile`], and
//!   reconnects with jittered exponential [`Backoff`].
//!
//! The sdk depends on the protocol crate only, never on the server.

pub mod backoff;
pub mod client;
pub mod connection;
pub mod error;
pub mod profile;
pub mod sync;
pub mod timeline;
pub mod tls;

pub use backoff::Backoff;
pub use client::{Client, ClientConfig, ClientEvent};
pub use connection::{
    ConnectOptions, Connection, Credential, LoginParams, Peer, PushRegistration, Recipient,
    ServerEvent,
};
pub use error::{SdkError, TlsFailure};
pub use profile::Profile;
pub use sync::{sync_to_end, SyncReport, SyncSink};
pub use timeline::{
    follow_large_groups, follow_listed_groups, sync_group_to_end, SeenEvents, TimelineSink,
};

/// The protocol crate, re-exported so applications need one dependency.
pub use pigeon_protocol as protocol;
pub use pigeon_protocol::{pb, Body, ErrorCode, KickReason, Platform};
