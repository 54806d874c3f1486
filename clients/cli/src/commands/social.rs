//! `pigeon conversations`, `read`, `recall` and `devices ...`: the
//! conversation list and read positions, unsending, and the account's
//! devices.

use pigeon_sdk::{pb, Connection, Peer};
use serde_json::json;

use super::{groups, resume_session, Ctx};
use crate::args::{DevicesCommand, ReadTarget, SendTo};
use crate::failure::{Exit, Failure};
use crate::output;

/// `pigeon conversations`: one line per conversation, then the total.
pub async fn conversations(ctx: &Ctx, limit: u32) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let answer = conn
        .conversations(limit)
        .await
        .map_err(|e| ctx.fail(&server, e));
    conn.close().await;
    let answer = answer?;
    for conversation in &answer.conversations {
        ctx.print(
            &output::conversation_line(conversation),
            output::conversation_json(conversation),
        );
    }
    ctx.print(
        &output::total_line(answer.total_unread),
        output::total_json(answer.total_unread, answer.conversations.len()),
    );
    Ok(())
}

/// The conversation `read` means, found in the conversation list (which
/// also gives the peer's id and the last seq).
fn find_conversation<'a>(
    list: &'a [pb::Conversation],
    to: &SendTo<'_>,
    group_id: Option<u64>,
) -> Option<&'a pb::Conversation> {
    list.iter().find(|c| match (to, group_id) {
        (SendTo::Group(_), Some(id)) => c.group_id == id,
        (SendTo::User(user), _) => c.group_id == 0 && c.peer_username == *user,
        _ => false,
    })
}

/// `pigeon read USER|--group GROUP [SEQ]`
pub async fn read(ctx: &Ctx, target: ReadTarget<'_>) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let result = mark_read(ctx, &conn, &server, target).await;
    conn.close().await;
    result
}

async fn mark_read(
    ctx: &Ctx,
    conn: &Connection,
    server: &str,
    target: ReadTarget<'_>,
) -> Result<(), Failure> {
    let group_id = match target.to {
        SendTo::Group(group) => Some(groups::resolve(ctx, conn, server, group).await?),
        SendTo::User(_) => None,
    };
    let list = conn
        .conversations(0)
        .await
        .map_err(|e| ctx.fail(server, e))?
        .conversations;
    let conversation = find_conversation(&list, &target.to, group_id);
    let (peer, name) = match (&target.to, group_id, conversation) {
        (SendTo::Group(_), Some(id), _) => (Peer::Group(id), format!("group {id}")),
        (SendTo::User(user), _, Some(c)) => (Peer::User(c.peer_user_id), (*user).to_owned()),
        (SendTo::User(user), _, None) | (SendTo::Group(user), None, _) => {
            return Err(Failure::new(
                Exit::Usage,
                format!("no conversation with {user} (see `pigeon conversations`)"),
            ))
        }
    };
    let seq = target
        .seq
        .or_else(|| conversation.map(|c| c.last_seq))
        .unwrap_or(0);
    let answer = conn
        .read(peer, seq)
        .await
        .map_err(|e| ctx.fail(server, e))?;
    let mut object = json!({"event": "read", "read_seq": answer.read_seq, "unread": answer.unread});
    match peer {
        Peer::Group(id) => object["group"] = json!(id),
        Peer::User(id) => {
            object["peer"] = json!(name);
            object["peer_user_id"] = json!(id);
        }
    }
    ctx.print(
        &format!(
            "read {} up to {}; {} unread left",
            output::escape_controls(&name),
            answer.read_seq,
            answer.unread
        ),
        object,
    );
    Ok(())
}

/// `pigeon recall MSG_ID`
pub async fn recall(ctx: &Ctx, msg_id: u64) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let result = conn.recall(msg_id).await.map_err(|e| ctx.fail(&server, e));
    conn.close().await;
    result?;
    ctx.print(
        &format!("recalled message {msg_id}"),
        json!({"event": "recalled", "msg_id": msg_id}),
    );
    Ok(())
}

/// `pigeon devices list|revoke DEVICE_ID`
pub async fn devices(ctx: &Ctx, command: &DevicesCommand) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let result = match command {
        DevicesCommand::List => conn.devices().await.map(|devices| {
            for device in &devices {
                ctx.print(&output::device_line(device), output::device_json(device));
            }
        }),
        DevicesCommand::Revoke { device_id } => conn.revoke_device(device_id).await.map(|()| {
            ctx.print(
                &format!("revoked device {}", output::escape_controls(device_id)),
                json!({"event": "device_revoked", "device_id": device_id}),
            );
        }),
    };
    conn.close().await;
    result.map_err(|e| ctx.fail(&server, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_finds_the_peer_or_the_group_in_the_conversation_list() {
        let list = [
            pb::Conversation {
                peer_user_id: 8,
                peer_username: "bob".into(),
                last_seq: 4,
                ..Default::default()
            },
            pb::Conversation {
                group_id: 8,
                group_name: "bob".into(),
                last_seq: 9,
                ..Default::default()
            },
        ];
        let bob = find_conversation(&list, &SendTo::User("bob"), None).unwrap();
        assert_eq!((bob.peer_user_id, bob.last_seq), (8, 4));
        let group = find_conversation(&list, &SendTo::Group("8"), Some(8)).unwrap();
        assert_eq!(group.last_seq, 9);
        assert!(find_conversation(&list, &SendTo::User("carol"), None).is_none());
    }
}
