//! The names the printed output uses for ids the entries do not name:
//! who "you" are, users seen in entries and member lists, group names
//! from the group list.

use std::collections::HashMap;

use pigeon_sdk::pb;

use super::escape_controls;

/// Names for ids, learnt from what the CLI has seen: who "you" are, users'
/// names (from messages and member lists) and group names (from the group
/// list).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// The logged-in user, shown as "you" in group events.
    pub me: Option<u64>,
    users: HashMap<u64, String>,
    groups: HashMap<u64, String>,
}

impl Directory {
    /// A directory that knows who "you" are.
    pub fn new(me: Option<u64>, my_name: Option<&str>) -> Directory {
        let mut directory = Directory {
            me,
            ..Directory::default()
        };
        if let (Some(id), Some(name)) = (me, my_name) {
            directory.learn_user(id, name);
        }
        directory
    }

    /// Remember a user's name (empty names are ignored).
    pub fn learn_user(&mut self, id: u64, name: &str) {
        if id != 0 && !name.is_empty() {
            self.users.insert(id, name.to_owned());
        }
    }

    /// Remember a group's name.
    pub fn learn_group(&mut self, id: u64, name: &str) {
        if id != 0 && !name.is_empty() {
            self.groups.insert(id, name.to_owned());
        }
    }

    /// Remember the names an entry carries: its sender and recipient, and
    /// the group's name on a group event.
    pub fn learn_message(&mut self, message: &pb::Message) {
        self.learn_user(message.from_user_id, &message.from_username);
        self.learn_user(message.to_user_id, &message.to_username);
        if let Some(event) = &message.group_event {
            self.learn_group(message.group_id, &event.group_name);
        }
    }

    /// Whether every user id is known by name.
    pub fn knows_users(&self, ids: &[u64]) -> bool {
        ids.iter().all(|id| self.users.contains_key(id))
    }

    /// A user's name, if known.
    pub fn user_name(&self, id: u64) -> Option<&str> {
        self.users.get(&id).map(String::as_str)
    }

    /// A group's name, if known.
    pub fn group_name(&self, id: u64) -> Option<&str> {
        self.groups.get(&id).map(String::as_str)
    }

    /// A user for people: the name, or `#id`.
    pub(super) fn user(&self, id: u64) -> String {
        match self.user_name(id) {
            Some(name) => escape_controls(name),
            None => format!("#{id}"),
        }
    }

    /// A user as the subject of a sentence: "you" for the logged-in user.
    pub(super) fn subject(&self, id: u64) -> String {
        if self.me == Some(id) {
            "you".into()
        } else {
            self.user(id)
        }
    }

    /// A group for people: `team (group 5)`, or `group 5`.
    pub fn group(&self, id: u64) -> String {
        match self.group_name(id) {
            Some(name) => format!("{} (group {id})", escape_controls(name)),
            None => format!("group {id}"),
        }
    }
}
