//! Domain rules: accounts, sending, pulling, acknowledging, collecting.
//! Assign ids, persist through the single writer, then notify. No protocol
//! types and no sockets: the gateway translates frames into these calls.

pub mod accounts;
pub mod acks;
pub mod collector;
pub mod committer;
pub mod compactor;
pub mod hash_pool;
pub mod messaging;
pub mod outbox;

pub use accounts::{Accounts, Authenticated, Credential};
pub use committer::{Batching, CommitStats, Committer, CommitterThread, PushSettings};
pub use messaging::{
    Caller, Delivered, Messaging, MessagingRules, Outgoing, PulledPage, Receipt, Recipient,
};
