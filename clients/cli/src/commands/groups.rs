//! `pigeon group ...`: create, change and list groups, and how a GROUP
//! argument (an id, or the name of one of the caller's groups) becomes a
//! group id.

use pigeon_sdk::{pb, Connection, Recipient};
use serde_json::json;

use super::{resume_session, Ctx};
use crate::args::{GroupCommand, RoleArg};
use crate::failure::{Exit, Failure};
use crate::names::NameCache;
use crate::output;

/// The group id for a GROUP argument: a number is an id as is; anything
/// else must be the name of exactly one of the caller's groups.
pub(crate) async fn resolve(
    ctx: &Ctx,
    conn: &Connection,
    server: &str,
    group: &str,
) -> Result<u64, Failure> {
    if let Ok(id) = group.parse::<u64>() {
        return Ok(id);
    }
    let groups = conn.group_list().await.map_err(|e| ctx.fail(server, e))?;
    pick_by_name(&groups, group)
}

/// The one group named `name` among `groups`, or a usage failure that says
/// why not.
pub(crate) fn pick_by_name(groups: &[pb::GroupInfo], name: &str) -> Result<u64, Failure> {
    let ids: Vec<u64> = groups
        .iter()
        .filter(|g| g.name == name)
        .map(|g| g.group_id)
        .collect();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(Failure::new(
            Exit::Usage,
            format!(
                "none of your groups is named {name:?}: give the group id (`pigeon group list`)"
            ),
        )),
        many => {
            let list = many
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Err(Failure::new(
                Exit::Usage,
                format!(
                    "{} of your groups are named {name:?} (ids {list}): give the id",
                    many.len()
                ),
            ))
        }
    }
}

/// The user id of `user` (a username) in a group, from its member list.
async fn member_id(
    ctx: &Ctx,
    conn: &Connection,
    server: &str,
    group_id: u64,
    user: &str,
) -> Result<u64, Failure> {
    let members = conn
        .group_members(group_id)
        .await
        .map_err(|e| ctx.fail(server, e))?;
    members
        .iter()
        .find(|m| m.username == user)
        .map(|m| m.user_id)
        .ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!("{user} is not a member of group {group_id}"),
            )
        })
}

/// Keep the names of a group's members for printing its events later
/// (members who are removed before then are no longer listed anywhere).
/// Best effort: the command has already succeeded.
async fn remember_members(ctx: &Ctx, conn: &Connection, group_id: u64) {
    let Ok(members) = conn.group_members(group_id).await else {
        return;
    };
    let mut names = NameCache::load(&ctx.profile_dir);
    for member in &members {
        names.learn(member.user_id, &member.username);
    }
    // Only a cache: without it, output shows #ids instead of names.
    drop(names.save());
}

fn role_of(role: RoleArg) -> pb::GroupRole {
    match role {
        RoleArg::Member => pb::GroupRole::Member,
        RoleArg::Admin => pb::GroupRole::Admin,
        RoleArg::Owner => pb::GroupRole::Owner,
    }
}

fn users(names: &[String]) -> Vec<Recipient> {
    names.iter().map(|n| Recipient::Name(n.clone())).collect()
}

/// `pigeon group ...`
pub async fn group(ctx: &Ctx, command: &GroupCommand) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let result = run(ctx, &conn, &server, command).await;
    conn.close().await;
    result
}

async fn run(
    ctx: &Ctx,
    conn: &Connection,
    server: &str,
    command: &GroupCommand,
) -> Result<(), Failure> {
    let fail = |e| ctx.fail(server, e);
    let (action, answer, detail) = match command {
        GroupCommand::Create { name, members } => {
            let answer = conn
                .group_create(name, &users(members))
                .await
                .map_err(fail)?;
            let info = answer.group.clone().unwrap_or_default();
            remember_members(ctx, conn, info.group_id).await;
            ctx.print(
                &info.group_id.to_string(),
                json!({"event": "group_created", "group": info.group_id, "name": info.name,
                       "member_count": info.member_count, "large": info.large,
                       "event_seq": answer.event_seq}),
            );
            return Ok(());
        }
        GroupCommand::List => {
            let groups = conn.group_list().await.map_err(fail)?;
            for info in &groups {
                ctx.print(&output::group_line(info), output::group_json(info));
            }
            if groups.is_empty() && !ctx.global.json {
                eprintln!("you are in no group");
            }
            return Ok(());
        }
        GroupCommand::Members { group } => {
            let group_id = resolve(ctx, conn, server, group).await?;
            let members = conn.group_members(group_id).await.map_err(fail)?;
            let mut names = NameCache::load(&ctx.profile_dir);
            for member in &members {
                names.learn(member.user_id, &member.username);
                ctx.print(
                    &output::member_line(member),
                    output::member_json(group_id, member),
                );
            }
            // Only a cache: without it, output shows #ids instead of names.
            drop(names.save());
            return Ok(());
        }
        GroupCommand::Add {
            group,
            users: names,
        } => {
            let group_id = resolve(ctx, conn, server, group).await?;
            let answer = conn
                .group_add(group_id, &users(names))
                .await
                .map_err(fail)?;
            remember_members(ctx, conn, group_id).await;
            ("add", answer, format!("added {}", names.join(", ")))
        }
        GroupCommand::Remove { group, user } => {
            let group_id = resolve(ctx, conn, server, group).await?;
            let answer = conn
                .group_remove(group_id, user.as_str())
                .await
                .map_err(fail)?;
            ("remove", answer, format!("removed {user}"))
        }
        GroupCommand::Leave { group } => {
            let group_id = resolve(ctx, conn, server, group).await?;
            let answer = conn.group_leave(group_id).await.map_err(fail)?;
            ("leave", answer, "left".to_owned())
        }
        GroupCommand::Dissolve { group } => {
            let group_id = resolve(ctx, conn, server, group).await?;
            let answer = conn.group_dissolve(group_id).await.map_err(fail)?;
            ("dissolve", answer, "dissolved".to_owned())
        }
        GroupCommand::Role { group, user, role } => {
            let group_id = resolve(ctx, conn, server, group).await?;
            let user_id = member_id(ctx, conn, server, group_id, user).await?;
            let role = role_of(*role);
            let answer = conn
                .group_set_role(group_id, user_id, role)
                .await
                .map_err(fail)?;
            let detail = format!("{user} is now {}", output::role_name(role));
            ("role", answer, detail)
        }
    };
    let info = answer.group.unwrap_or_default();
    let unchanged = if answer.event_seq == 0 {
        " (nothing changed)"
    } else {
        ""
    };
    ctx.print(
        &format!(
            "{}: {detail}{unchanged}",
            output::escape_controls(&format!("{} (group {})", info.name, info.group_id))
        ),
        json!({"event": "group_changed", "action": action, "group": info.group_id,
               "name": info.name, "event_seq": answer.event_seq,
               "member_count": info.member_count, "role": output::role_name(info.my_role()),
               "dissolved": info.dissolved}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(group_id: u64, name: &str) -> pb::GroupInfo {
        pb::GroupInfo {
            group_id,
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_group_name_must_match_exactly_one_group() {
        let groups = [group(1, "team"), group(2, "family"), group(3, "family")];
        assert_eq!(pick_by_name(&groups, "team").unwrap(), 1);
        let none = pick_by_name(&groups, "work").unwrap_err();
        assert_eq!(none.exit, Exit::Usage);
        assert!(none.message.contains("group list"), "{}", none.message);
        let many = pick_by_name(&groups, "family").unwrap_err();
        assert!(many.message.contains("ids 2, 3"), "{}", many.message);
    }
}
