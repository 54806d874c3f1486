//! Helpers for the group, conversation and presence tests: many users made
//! straight in the store (no argon2 per user), token logins, and typed
//! wrappers around the new requests.

use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, Platform};
use pigeon_server::service::accounts::hash_token;
use pigeon_server::store::TokenRecord;

use super::{login_body, RawClient, TestServer};

/// A user made in the store with a token for one device.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: u64,
    pub name: String,
    pub token: String,
    pub device: String,
}

/// Make `n` users named `{prefix}{i}` directly in the store, each with a
/// login token for device "d" (password login is not possible for them:
/// their hash is a placeholder).
pub fn bulk_users(server: &TestServer, prefix: &str, n: usize) -> Vec<Account> {
    let expires = pigeon_server::clock::now_ms() + 3_600_000;
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            let user = server
                .store
                .create_user(&name, "$placeholder", 1)
                .expect("store works")
                .expect("name is free");
            let token = format!("token-{name}");
            let record = TokenRecord {
                user_id: user.id,
                device_id: "d".into(),
                expires_at_ms: expires,
            };
            server
                .store
                .put_token(&hash_token(&token), &record)
                .expect("store works");
            Account {
                id: user.id,
                name,
                token,
                device: "d".into(),
            }
        })
        .collect()
}

/// A raw client logged in as `account` by token.
pub async fn token_login(server: &TestServer, account: &Account) -> RawClient {
    let mut client = server.raw().await;
    let body = login_body(
        "",
        &account.device,
        Platform::Desktop,
        Credential::Token(account.token.clone()),
    );
    match client.request(body).await {
        Body::LoggedIn(_) => client,
        other => panic!("token login of {}: {other:?}", account.name),
    }
}

/// The group from a group change answer, or a panic naming the request.
pub fn group_of(body: Body, what: &str) -> pb::GroupResponse {
    match body {
        Body::Group(g) => g,
        other => panic!("{what}: {other:?}"),
    }
}

pub async fn create_group(client: &mut RawClient, name: &str, members: &[u64]) -> pb::GroupInfo {
    let body = Body::GroupCreate(pb::GroupCreateRequest {
        name: name.into(),
        member_user_ids: members.to_vec(),
        member_usernames: Vec::new(),
    });
    group_of(client.request(body).await, "create group")
        .group
        .expect("answer has the group")
}

pub fn add_body(group_id: u64, users: &[u64]) -> Body {
    Body::GroupAdd(pb::GroupAddRequest {
        group_id,
        user_ids: users.to_vec(),
        usernames: Vec::new(),
    })
}

pub fn remove_body(group_id: u64, user_id: u64) -> Body {
    Body::GroupRemove(pb::GroupRemoveRequest {
        group_id,
        user_id,
        username: String::new(),
    })
}

pub fn revoke_body(device_id: &str) -> Body {
    Body::RevokeDevice(pb::RevokeDeviceRequest {
        device_id: device_id.into(),
    })
}

pub fn role_body(group_id: u64, user_id: u64, role: pb::GroupRole) -> Body {
    Body::GroupSetRole(pb::GroupSetRoleRequest {
        group_id,
        user_id,
        role: role as i32,
    })
}

pub fn group_send_body(group_id: u64, client_msg_id: &str, text: &str) -> Body {
    Body::Send(pb::SendRequest {
        group_id,
        client_msg_id: client_msg_id.into(),
        content: text.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

pub async fn group_send(
    client: &mut RawClient,
    group_id: u64,
    id: &str,
    text: &str,
) -> pb::SendResponse {
    match client.request(group_send_body(group_id, id, text)).await {
        Body::Sent(s) => s,
        other => panic!("group send {id}: {other:?}"),
    }
}

/// Every entry of the caller's queue above `after`, pulling page by page
/// (each page acknowledges the one before).
pub async fn pull_all(client: &mut RawClient, mut after: u64) -> Vec<pb::Message> {
    let mut all = Vec::new();
    loop {
        let page = client.pull(after, 1000).await;
        if let Some(last) = page.messages.last() {
            after = last.seq;
        }
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

/// Every timeline entry of a large group above `after` the caller may read.
pub async fn group_pull_all(
    client: &mut RawClient,
    group_id: u64,
    mut after: u64,
) -> Vec<pb::Message> {
    let mut all = Vec::new();
    loop {
        let body = Body::GroupPull(pb::GroupPullRequest {
            group_id,
            after_seq: after,
            limit: 1000,
        });
        let page = match client.request(body).await {
            Body::GroupPulled(p) => p,
            other => panic!("group pull: {other:?}"),
        };
        if let Some(last) = page.messages.last() {
            after = last.seq;
        }
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

/// The texts of the chat messages among `messages`, in order.
pub fn chat_texts(messages: &[pb::Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.kind == pb::MessageKind::Chat as i32)
        .map(|m| String::from_utf8(m.content.to_vec()).expect("test texts are UTF-8"))
        .collect()
}

/// The group event types among `messages`, in order.
pub fn event_types(messages: &[pb::Message]) -> Vec<pb::GroupEventType> {
    messages
        .iter()
        .filter_map(|m| m.group_event.as_ref())
        .map(|e| pb::GroupEventType::try_from(e.r#type).expect("known event type"))
        .collect()
}
