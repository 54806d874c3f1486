//! On-disk encodings of the sled engine: keys and values.
//!
//! Owns how every key and value is laid out in bytes; knows nothing of trees,
//! transactions or sled. Keys are big-endian fixed-width integers so that
//! byte order (sled's order) is numeric order, and composite keys put the
//! user id first so one user's records form one contiguous range. Values are
//! protobuf messages derived by hand with prost (no `.proto` file): a record
//! can gain a field later and old data still decodes.

use bytes::Bytes;
use prost::Message;

use super::{DeviceRecord, MsgId, Seq, StoreError, TokenRecord, UserId, UserRecord};

/// Width of a user id (and of any u64) inside a key.
pub(crate) const U64_LEN: usize = 8;

/// A u64 as a key (or key part) whose byte order is its numeric order.
pub(crate) fn u64_key(value: u64) -> [u8; U64_LEN] {
    value.to_be_bytes()
}

/// Reads a key or value written by [`u64_key`]; anything but 8 bytes is
/// corrupt.
pub(crate) fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; U64_LEN] = bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!("{what}: expected 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(array))
}

/// The key of one queue entry: user (8 bytes BE) ++ seq (8 bytes BE).
pub(crate) fn user_seq_key(user: UserId, seq: Seq) -> [u8; 2 * U64_LEN] {
    let mut key = [0u8; 2 * U64_LEN];
    key[..U64_LEN].copy_from_slice(&u64_key(user));
    key[U64_LEN..].copy_from_slice(&u64_key(seq));
    key
}

/// Splits a queue key back into (user, seq).
pub(crate) fn split_user_seq(key: &[u8]) -> Result<(UserId, Seq), StoreError> {
    if key.len() != 2 * U64_LEN {
        return Err(StoreError::Corrupt(format!(
            "queue key of {} bytes",
            key.len()
        )));
    }
    let user = decode_u64("queue key user", &key[..U64_LEN])?;
    let seq = decode_u64("queue key seq", &key[U64_LEN..])?;
    Ok((user, seq))
}

/// A key of two u64s, e.g. group ++ user or user ++ peer: same layout as a
/// queue key, so records of the first id are one contiguous range.
pub(crate) fn pair_key(first: u64, second: u64) -> [u8; 2 * U64_LEN] {
    user_seq_key(first, second)
}

/// Splits a [`pair_key`].
pub(crate) fn split_pair(key: &[u8]) -> Result<(u64, u64), StoreError> {
    split_user_seq(key)
}

/// The key of a per-user string-named record (a device id, a client message
/// id): user (8 bytes BE) ++ the string's UTF-8 bytes. The fixed-width
/// prefix keeps it unambiguous and groups one user's records together.
pub(crate) fn user_str_key(user: UserId, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(U64_LEN + name.len());
    key.extend_from_slice(&u64_key(user));
    key.extend_from_slice(name.as_bytes());
    key
}

/// Splits a [`user_str_key`] back into (user, string).
pub(crate) fn split_user_str(key: &[u8]) -> Result<(UserId, String), StoreError> {
    if key.len() < U64_LEN {
        return Err(StoreError::Corrupt(format!(
            "user key of {} bytes",
            key.len()
        )));
    }
    let user = decode_u64("user key prefix", &key[..U64_LEN])?;
    let name = std::str::from_utf8(&key[U64_LEN..])
        .map_err(|_| StoreError::Corrupt("user key name is not UTF-8".into()))?;
    Ok((user, name.to_owned()))
}

/// Decodes a protobuf value; a value that does not decode is corrupt.
pub(crate) fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("{what} does not decode: {e}")))
}

/// Value of `userid_user` (the id is the key).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct UserValue {
    /// The unique name (also the key of `username_userid`).
    #[prost(string, tag = "1")]
    pub username: String,
    /// argon2id PHC string.
    #[prost(string, tag = "2")]
    pub password_hash: String,
    /// Creation time, ms since the epoch.
    #[prost(uint64, tag = "3")]
    pub created_at_ms: u64,
    /// A disabled user cannot log in.
    #[prost(bool, tag = "4")]
    pub disabled: bool,
}

impl UserValue {
    /// The value of a user record.
    pub(crate) fn from_record(user: &UserRecord) -> Self {
        UserValue {
            username: user.username.clone(),
            password_hash: user.password_hash.clone(),
            created_at_ms: user.created_at_ms,
            disabled: user.disabled,
        }
    }

    /// The record, given the id from the key.
    pub(crate) fn into_record(self, id: UserId) -> UserRecord {
        UserRecord {
            id,
            username: self.username,
            password_hash: self.password_hash,
            created_at_ms: self.created_at_ms,
            disabled: self.disabled,
        }
    }
}

/// Value of `tokenhash_token` (the token's SHA-256 is the key).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct TokenValue {
    /// Whose token.
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    /// The device it was issued to.
    #[prost(string, tag = "2")]
    pub device_id: String,
    /// Expiry, ms since the epoch.
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
}

impl TokenValue {
    /// The value of a token record.
    pub(crate) fn from_record(token: &TokenRecord) -> Self {
        TokenValue {
            user_id: token.user_id,
            device_id: token.device_id.clone(),
            expires_at_ms: token.expires_at_ms,
        }
    }

    /// The record.
    pub(crate) fn into_record(self) -> TokenRecord {
        TokenRecord {
            user_id: self.user_id,
            device_id: self.device_id,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// Value of `userdevice_device` (user ++ device id is the key).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct DeviceValue {
    /// The protocol's platform number.
    #[prost(int32, tag = "1")]
    pub platform: i32,
    /// First login, ms since the epoch.
    #[prost(uint64, tag = "2")]
    pub created_at_ms: u64,
    /// Last login or ack, ms since the epoch.
    #[prost(uint64, tag = "3")]
    pub last_active_ms: u64,
    /// The device's cursor.
    #[prost(uint64, tag = "4")]
    pub acked_seq: u64,
}

impl DeviceValue {
    /// The record, given the device id from the key.
    pub(crate) fn into_record(self, device_id: String) -> DeviceRecord {
        DeviceRecord {
            device_id,
            platform: self.platform,
            created_at_ms: self.created_at_ms,
            last_active_ms: self.last_active_ms,
            acked_seq: self.acked_seq,
        }
    }
}

/// Value of `msgid_body` (the message id is the key): the message stored
/// once, with the number of queue entries that still point at it.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct BodyValue {
    /// Queue entries referencing this body; it is deleted at zero.
    #[prost(uint32, tag = "1")]
    pub refcount: u32,
    /// The sender.
    #[prost(uint64, tag = "2")]
    pub from: u64,
    /// The recipient.
    #[prost(uint64, tag = "3")]
    pub to: u64,
    /// The sender's device.
    #[prost(string, tag = "4")]
    pub from_device: String,
    /// The sender's idempotency key.
    #[prost(string, tag = "5")]
    pub client_msg_id: String,
    /// Opaque label.
    #[prost(string, tag = "6")]
    pub content_type: String,
    /// Opaque body (cleared on recall).
    #[prost(bytes = "bytes", tag = "7")]
    pub content: Bytes,
    /// The group, for a group message or event (0 for 1:1).
    #[prost(uint64, tag = "8")]
    pub group: u64,
    /// 0 chat, 2 group event, 3 recall (the wire's MessageKind numbers;
    /// bodies of schema 2 have none and are chat).
    #[prost(uint32, tag = "9")]
    pub kind: u32,
    /// For a group event.
    #[prost(message, optional, tag = "10")]
    pub event: Option<EventValue>,
    /// Position in its conversation.
    #[prost(uint64, tag = "11")]
    pub conv_seq: u64,
    /// For a recall entry: the recalled message.
    #[prost(uint64, tag = "12")]
    pub recalled_msg_id: u64,
    /// The message was recalled: content and type are cleared.
    #[prost(bool, tag = "13")]
    pub recalled: bool,
}

/// A group event inside a [`BodyValue`].
#[derive(Clone, PartialEq, Message)]
pub(crate) struct EventValue {
    /// The wire's GroupEventType number.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// Who did it.
    #[prost(uint64, tag = "2")]
    pub actor: u64,
    /// Whom it concerns.
    #[prost(uint64, repeated, tag = "3")]
    pub targets: Vec<u64>,
    /// The new role of a RoleChanged event.
    #[prost(uint32, tag = "4")]
    pub role: u32,
    /// The group's name at the time.
    #[prost(string, tag = "5")]
    pub group_name: String,
    /// For BecameLarge.
    #[prost(uint64, tag = "6")]
    pub timeline_from_seq: u64,
}

/// Value of `groupid_group`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct GroupValue {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The owner.
    #[prost(uint64, tag = "2")]
    pub owner: u64,
    /// Creation, ms since the epoch.
    #[prost(uint64, tag = "3")]
    pub created_at_ms: u64,
    /// Current members.
    #[prost(uint32, tag = "4")]
    pub member_count: u32,
    /// Large group.
    #[prost(bool, tag = "5")]
    pub large: bool,
    /// First timeline seq.
    #[prost(uint64, tag = "6")]
    pub timeline_from_seq: u64,
    /// Highest group seq.
    #[prost(uint64, tag = "7")]
    pub max_seq: u64,
    /// Dissolved.
    #[prost(bool, tag = "8")]
    pub dissolved: bool,
    /// Last message or event.
    #[prost(uint64, tag = "9")]
    pub last_msg_id: u64,
    /// Its sender.
    #[prost(uint64, tag = "10")]
    pub last_from: u64,
    /// Last activity, ms.
    #[prost(uint64, tag = "11")]
    pub last_activity_ms: u64,
}

/// Value of `groupuser_member` (group ++ user is the key).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct MemberValue {
    /// The wire's GroupRole number; 0 for a former member.
    #[prost(uint32, tag = "1")]
    pub role: u32,
    /// The group seq before the join event.
    #[prost(uint64, tag = "2")]
    pub joined_seq: u64,
    /// Join time, ms.
    #[prost(uint64, tag = "3")]
    pub joined_at_ms: u64,
    /// The seq of the event that removed a former member.
    #[prost(uint64, tag = "4")]
    pub left_seq: u64,
    /// Read position.
    #[prost(uint64, tag = "5")]
    pub read_seq: u64,
    /// Timeline cursor.
    #[prost(uint64, tag = "6")]
    pub acked_seq: u64,
    /// Last activity, ms.
    #[prost(uint64, tag = "7")]
    pub last_active_ms: u64,
}

/// Value of `userdevice_push` (user ++ device id is the key).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PushTokenValue {
    /// The wire's PushProvider number.
    #[prost(uint32, tag = "1")]
    pub provider: u32,
    /// The provider's token.
    #[prost(string, tag = "2")]
    pub token: String,
    /// APNs topic.
    #[prost(string, tag = "3")]
    pub topic: String,
    /// APNs sandbox.
    #[prost(bool, tag = "4")]
    pub sandbox: bool,
    /// Last accepted push, ms.
    #[prost(uint64, tag = "5")]
    pub last_pushed_ms: u64,
}

/// Value of `userdevice_pushjob` (user ++ device id is the key).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PushJobValue {
    /// The registration the job goes to.
    #[prost(message, optional, tag = "1")]
    pub token: Option<PushTokenValue>,
    /// Unread count.
    #[prost(uint64, tag = "2")]
    pub badge: u64,
    /// 1:1 peer of the latest message.
    #[prost(uint64, tag = "3")]
    pub peer: u64,
    /// Group of the latest message.
    #[prost(uint64, tag = "4")]
    pub group: u64,
    /// Queue top.
    #[prost(uint64, tag = "5")]
    pub max_seq: u64,
    /// Preview, when enabled.
    #[prost(string, optional, tag = "6")]
    pub preview: Option<String>,
    /// Attempts so far.
    #[prost(uint32, tag = "7")]
    pub attempts: u32,
    /// Not before, ms.
    #[prost(uint64, tag = "8")]
    pub not_before_ms: u64,
    /// Generation.
    #[prost(uint64, tag = "9")]
    pub generation: u64,
}

/// Value of `pair_conv`: one 1:1 conversation, both users' view of it. The
/// key is the lower user id ++ the higher (the same id twice for notes to
/// self); `userpeer_conv` indexes it from both sides.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PairConvValue {
    /// The last message's conv seq.
    #[prost(uint64, tag = "1")]
    pub last_seq: u64,
    /// The lower user id's read position.
    #[prost(uint64, tag = "2")]
    pub low_read_seq: u64,
    /// The higher user id's read position (0 in a note-to-self record).
    #[prost(uint64, tag = "3")]
    pub high_read_seq: u64,
    /// The last message.
    #[prost(uint64, tag = "4")]
    pub last_msg_id: u64,
    /// Its sender.
    #[prost(uint64, tag = "5")]
    pub last_from: u64,
    /// Last activity, ms.
    #[prost(uint64, tag = "6")]
    pub last_activity_ms: u64,
}

/// Value of `userpeer_conv` (user ++ peer is the key) up to schema 4, when
/// each user of a pair had a record of their own; read only to migrate
/// (schema 5 keeps the keys, with empty values, as the index of
/// `pair_conv`).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ConvValue {
    /// The last message's conv seq.
    #[prost(uint64, tag = "1")]
    pub last_seq: u64,
    /// The user's read position.
    #[prost(uint64, tag = "2")]
    pub read_seq: u64,
    /// The peer's read position.
    #[prost(uint64, tag = "3")]
    pub peer_read_seq: u64,
    /// The last message.
    #[prost(uint64, tag = "4")]
    pub last_msg_id: u64,
    /// Its sender.
    #[prost(uint64, tag = "5")]
    pub last_from: u64,
    /// Last activity, ms.
    #[prost(uint64, tag = "6")]
    pub last_activity_ms: u64,
}

/// Value of `userclientmsgid_dedupe` (sender ++ client_msg_id is the key):
/// the first answer to a send, returned again for a resend. The record's age
/// is its message id's time ([`super::msg_id_time_ms`]).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct DedupeValue {
    /// The first message's id.
    #[prost(uint64, tag = "1")]
    pub msg_id: MsgId,
    /// Its seq in the sender's queue.
    #[prost(uint64, tag = "2")]
    pub sender_seq: Seq,
    /// Its seq in the recipient's queue.
    #[prost(uint64, tag = "3")]
    pub recipient_seq: Seq,
    /// Its position in its conversation.
    #[prost(uint64, tag = "4")]
    pub conv_seq: Seq,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_keys_sort_numerically() {
        let values = [0u64, 1, 255, 256, 65_535, 1 << 32, u64::MAX - 1, u64::MAX];
        for pair in values.windows(2) {
            assert!(u64_key(pair[0]) < u64_key(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn queue_keys_sort_by_user_then_seq() {
        let keys = [
            (1, 0),
            (1, 1),
            (1, 256),
            (1, u64::MAX),
            (2, 0),
            (256, 1),
            (u64::MAX, 0),
        ];
        for pair in keys.windows(2) {
            let (a, b) = (
                user_seq_key(pair[0].0, pair[0].1),
                user_seq_key(pair[1].0, pair[1].1),
            );
            assert!(a < b, "{pair:?}");
        }
        assert_eq!(split_user_seq(&user_seq_key(7, 9)).unwrap(), (7, 9));
    }

    #[test]
    fn user_string_keys_group_by_user_and_round_trip() {
        // A long name of user 1 still sorts before any name of user 2.
        assert!(user_str_key(1, "zzzzzzzzzzzzzzzz") < user_str_key(2, ""));
        assert!(user_str_key(1, "a") < user_str_key(1, "b"));
        assert_eq!(
            split_user_str(&user_str_key(3, "phone")).unwrap(),
            (3, "phone".to_string())
        );
    }

    #[test]
    fn malformed_keys_and_values_are_corrupt() {
        assert!(matches!(
            decode_u64("x", &[1, 2, 3]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            split_user_seq(&[0; 15]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            split_user_str(&[0; 7]),
            Err(StoreError::Corrupt(_))
        ));
        let mut bad = user_str_key(1, "");
        bad.push(0xff);
        assert!(matches!(split_user_str(&bad), Err(StoreError::Corrupt(_))));
        // A length-delimited field that runs past the end of the buffer.
        let truncated = [0x22, 0x10, b'a'];
        assert!(matches!(
            decode::<BodyValue>("body", &truncated),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn records_round_trip() {
        let user = UserRecord {
            id: 4,
            username: "ann".into(),
            password_hash: "$argon2id$x".into(),
            created_at_ms: 17,
            disabled: true,
        };
        let bytes = UserValue::from_record(&user).encode_to_vec();
        assert_eq!(
            decode::<UserValue>("user", &bytes).unwrap().into_record(4),
            user
        );

        let token = TokenRecord {
            user_id: 4,
            device_id: "d".into(),
            expires_at_ms: 99,
        };
        let bytes = TokenValue::from_record(&token).encode_to_vec();
        assert_eq!(
            decode::<TokenValue>("token", &bytes).unwrap().into_record(),
            token
        );

        let device = DeviceValue {
            platform: 3,
            created_at_ms: 1,
            last_active_ms: 2,
            acked_seq: 5,
        };
        let decoded: DeviceValue = decode("device", &device.encode_to_vec()).unwrap();
        assert_eq!(decoded, device);

        let body = BodyValue {
            refcount: 2,
            from: 1,
            to: 2,
            from_device: "phone".into(),
            client_msg_id: "c1".into(),
            content_type: "text/plain".into(),
            content: Bytes::from_static(b"\x00hello\xff"),
            group: 9,
            kind: 2,
            event: Some(EventValue {
                kind: 2,
                actor: 1,
                targets: vec![2, 3],
                role: 0,
                group_name: "g".into(),
                timeline_from_seq: 0,
            }),
            conv_seq: 4,
            recalled_msg_id: 0,
            recalled: false,
        };
        assert_eq!(
            decode::<BodyValue>("body", &body.encode_to_vec()).unwrap(),
            body
        );

        let dedupe = DedupeValue {
            msg_id: 1 << 40,
            sender_seq: 3,
            recipient_seq: 8,
            conv_seq: 2,
        };
        assert_eq!(
            decode::<DedupeValue>("dedupe", &dedupe.encode_to_vec()).unwrap(),
            dedupe
        );
    }
}
