//! What the supervisor's catch-up works on: the backlog of sources known
//! to be behind, and the sink that turns synced inbox messages and timeline
//! entries into `ClientEvent`s and commits their cursors to the profile.

use std::collections::BTreeSet;
use std::sync::Arc;

use pigeon_protocol::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::supervisor::save_profile;
use super::{ClientEvent, ClientShared};
use crate::error::SdkError;
use crate::sync::SyncSink;
use crate::timeline::{SeenEvents, TimelineSink};

/// What is known to be behind and waits for a catch-up.
pub(super) struct Backlog {
    /// The inbox is ahead of the cursor.
    pub(super) inbox: bool,
    /// The group list must be read again (login, a group event, a
    /// GroupNotify for a group without a cursor).
    pub(super) group_list: bool,
    /// Large groups with a cursor whose timeline is ahead of it.
    pub(super) groups: BTreeSet<u64>,
}

impl Backlog {
    pub(super) fn is_pending(&self) -> bool {
        self.inbox || self.group_list || !self.groups.is_empty()
    }
}

/// Delivers synced inbox messages and timeline entries as events and
/// commits the cursors to the profile.
pub(super) struct EventSink {
    pub(super) events: mpsc::Sender<ClientEvent>,
    pub(super) stop: CancellationToken,
    pub(super) shared: Arc<ClientShared>,
    /// Whether the inbox delivered a group event in this catch-up.
    pub(super) saw_group_event: bool,
    /// Group events the inbox delivered (their timeline copies are dropped).
    pub(super) seen_events: SeenEvents,
}

impl EventSink {
    async fn emit(&mut self, event: ClientEvent) -> Result<(), SdkError> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(SdkError::closed("client stopped")),
            sent = self.events.send(event) => {
                sent.map_err(|_| SdkError::closed("the application stopped listening"))
            }
        }
    }
}

impl SyncSink for EventSink {
    async fn deliver(&mut self, message: pb::Message) -> Result<(), SdkError> {
        self.saw_group_event |= message.kind() == pb::MessageKind::GroupEvent;
        self.seen_events.note(&message);
        self.emit(ClientEvent::Message(message)).await
    }

    async fn commit(&mut self, cursor: u64) -> Result<(), SdkError> {
        self.shared
            .profile
            .lock()
            .expect("profile lock poisoned")
            .cursor = cursor;
        save_profile(&self.shared).await
    }
}

impl TimelineSink for EventSink {
    async fn deliver(&mut self, _group_id: u64, message: pb::Message) -> Result<(), SdkError> {
        if self.seen_events.is_duplicate(&message) {
            return Ok(());
        }
        self.emit(ClientEvent::GroupMessage(message)).await
    }

    async fn commit(&mut self, group_id: u64, cursor: u64) -> Result<(), SdkError> {
        self.shared
            .profile
            .lock()
            .expect("profile lock poisoned")
            .group_cursors
            .insert(group_id, cursor);
        save_profile(&self.shared).await
    }
}
