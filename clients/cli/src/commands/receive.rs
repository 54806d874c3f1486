//! `pigeon pull` and `pigeon listen`: receive the inbox and the timelines
//! of the user's large groups, print every entry (messages, group events,
//! recalls) and keep the cursors in the profile.

use std::collections::HashSet;
use std::path::Path;

use pigeon_sdk::sync::{sync_to_end, SyncSink};
use pigeon_sdk::timeline::{follow_listed_groups, SeenEvents, TimelineSink};
use pigeon_sdk::{
    pb, Client, ClientConfig, ClientEvent, Connection, ErrorCode, Platform, Profile, SdkError,
};
use serde_json::json;

use super::{kick_name, kicked, resume_session, save, Ctx};
use crate::failure::Failure;
use crate::names::NameCache;
use crate::output::{self, Directory, Source};
use crate::password;

/// Prints entries, learning names as it goes: from the entries, the group
/// list, and (once per group per run) a group's member list when a group
/// event names users not seen yet.
pub(crate) struct Printer {
    json: bool,
    directory: Directory,
    /// Group events printed from the inbox, whose timeline copies are skipped.
    seen: SeenEvents,
    /// Groups whose member list was already asked for.
    looked_up: HashSet<u64>,
    /// Names kept between runs, for users entries name only by id.
    names: NameCache,
}

impl Printer {
    fn new(json: bool, profile: &Profile, profile_dir: &Path) -> Printer {
        let names = NameCache::load(profile_dir);
        let mut directory = Directory::new(profile.user_id, profile.username.as_deref());
        for (id, name) in names.iter() {
            directory.learn_user(id, name);
        }
        Printer {
            json,
            directory,
            seen: SeenEvents::default(),
            looked_up: HashSet::new(),
            names,
        }
    }

    fn learn_user(&mut self, id: u64, name: &str) {
        self.directory.learn_user(id, name);
        self.names.learn(id, name);
    }

    /// Keep the names learnt so far for later runs.
    fn save_names(&mut self) {
        // Only a cache: without it, output shows #ids instead of names.
        if let Err(e) = self.names.save() {
            warn_unsaved_names(&e);
        }
    }

    fn learn_groups(&mut self, groups: &[pb::GroupInfo]) {
        for group in groups {
            self.directory.learn_group(group.group_id, &group.name);
        }
    }

    /// Print one entry (unless it is the timeline copy of a group event
    /// already printed from the inbox).
    async fn print(&mut self, conn: Option<&Connection>, message: &pb::Message, source: Source) {
        if source == Source::Timeline && self.seen.is_duplicate(message) {
            return;
        }
        self.seen.note(message);
        self.directory.learn_message(message);
        self.learn_user(message.from_user_id, &message.from_username);
        self.learn_user(message.to_user_id, &message.to_username);
        if let (Some(conn), Some(event)) = (conn, &message.group_event) {
            let unknown = !self.directory.knows_users(&event.target_user_ids);
            if unknown && self.looked_up.insert(message.group_id) {
                // Best effort: a group we are no longer in keeps #ids.
                if let Ok(members) = conn.group_members(message.group_id).await {
                    for member in members {
                        self.learn_user(member.user_id, &member.username);
                    }
                }
            }
        }
        if self.json {
            println!("{}", output::entry_json(message, source, &self.directory));
        } else {
            println!("{}", output::entry_line(message, source, &self.directory));
        }
    }

    fn user(&self, id: u64) -> String {
        match self.directory.user_name(id) {
            Some(name) => output::escape_controls(name),
            None => format!("#{id}"),
        }
    }
}

fn warn_unsaved_names(error: &std::io::Error) {
    eprintln!("pigeon: warning: cannot save the name cache: {error}");
}

/// The caller's groups, or an empty list from a server that does not
/// know group requests.
async fn list_groups(conn: &Connection) -> Result<Vec<pb::GroupInfo>, SdkError> {
    match conn.group_list().await {
        Err(e) if e.server_code() == Some(ErrorCode::UnknownRequest) => Ok(Vec::new()),
        other => other,
    }
}

/// Prints synced entries and commits the inbox and timeline cursors.
struct PullSink<'a> {
    conn: &'a Connection,
    printer: &'a mut Printer,
    profile: &'a mut Profile,
    saw_group_event: bool,
}

impl SyncSink for PullSink<'_> {
    async fn deliver(&mut self, message: pb::Message) -> Result<(), SdkError> {
        self.saw_group_event |= message.kind() == pb::MessageKind::GroupEvent;
        self.printer
            .print(Some(self.conn), &message, Source::Inbox)
            .await;
        Ok(())
    }

    async fn commit(&mut self, cursor: u64) -> Result<(), SdkError> {
        self.profile.cursor = cursor;
        self.profile.save()
    }
}

impl TimelineSink for PullSink<'_> {
    async fn deliver(&mut self, _group_id: u64, message: pb::Message) -> Result<(), SdkError> {
        self.printer
            .print(Some(self.conn), &message, Source::Timeline)
            .await;
        Ok(())
    }

    async fn commit(&mut self, group_id: u64, cursor: u64) -> Result<(), SdkError> {
        self.profile.group_cursors.insert(group_id, cursor);
        self.profile.save()
    }
}

/// `pigeon pull`: the inbox, then every large group's timeline.
pub async fn pull(ctx: &Ctx, limit: u32) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let mut printer = Printer::new(ctx.global.json, &profile, &ctx.profile_dir);
    let result = pull_all(&conn, limit, &mut printer, &mut profile).await;
    conn.close().await;
    printer.save_names();
    let (inbox, timeline) = result.map_err(|e| ctx.fail(&server, e))?;
    save(&profile)?;
    if !ctx.global.json {
        eprintln!(
            "{} new message(s); acknowledged up to seq {}{}",
            inbox.delivered,
            inbox.cursor,
            match timeline {
                0 => String::new(),
                n => format!("; {n} from large groups"),
            }
        );
    }
    Ok(())
}

async fn pull_all(
    conn: &Connection,
    limit: u32,
    printer: &mut Printer,
    profile: &mut Profile,
) -> Result<(pigeon_sdk::SyncReport, usize), SdkError> {
    // Listed first for the group names; listed again below if the inbox
    // brought a group event (a group may have become large or been joined).
    let mut groups = list_groups(conn).await?;
    printer.learn_groups(&groups);
    let cursor = profile.cursor;
    let mut sink = PullSink {
        conn,
        printer,
        profile,
        saw_group_event: false,
    };
    let inbox = sync_to_end(conn, cursor, limit, &mut sink).await?;
    if sink.saw_group_event {
        groups = list_groups(conn).await?;
        sink.printer.learn_groups(&groups);
    }
    let cursors = sink.profile.group_cursors.clone();
    let followed = follow_listed_groups(conn, &groups, &cursors, limit, &mut sink).await?;
    for group_id in &followed.gone {
        sink.profile.group_cursors.remove(group_id);
    }
    Ok((inbox, followed.delivered))
}

/// `pigeon listen`: stays connected (reconnecting with backoff) until
/// Ctrl-C. Fails fast if the very first connection cannot be made.
pub async fn listen(ctx: &Ctx) -> Result<(), Failure> {
    let profile = ctx.logged_in_profile()?;
    let server = ctx.global.server(profile.server.as_deref());
    let username = profile.username.clone().unwrap_or_default();
    let mut printer = Printer::new(ctx.global.json, &profile, &ctx.profile_dir);
    let mut config = ClientConfig::new(ctx.connect_options(&server)?, username);
    config.platform = Platform::Cli;
    config.password = password::from_env();
    let mut client = Client::start(config, profile);
    let mut ever_connected = false;
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                client.shutdown().await;
                return Ok(());
            }
            event = client.next_event() => event,
        };
        let Some(event) = event else { return Ok(()) };
        let conn = client.connection();
        match event {
            ClientEvent::Message(message) => {
                printer.print(conn.as_ref(), &message, Source::Inbox).await
            }
            ClientEvent::GroupMessage(message) => {
                printer
                    .print(conn.as_ref(), &message, Source::Timeline)
                    .await
            }
            ClientEvent::ReadReceipt(receipt) => {
                let peer = printer.user(receipt.peer_user_id);
                ctx.print(
                    &format!("{peer} read your messages up to {}", receipt.read_seq),
                    json!({"event": "read_receipt", "peer": peer,
                           "peer_user_id": receipt.peer_user_id, "read_seq": receipt.read_seq}),
                );
            }
            ClientEvent::Typing(typing) => {
                let who = printer.user(typing.from_user_id);
                let place = match typing.group_id {
                    0 => String::new(),
                    group => format!(" in {}", printer.directory.group(group)),
                };
                let doing = if typing.typing {
                    "is typing"
                } else {
                    "stopped typing"
                };
                let mut object = json!({"event": "typing", "from": who,
                    "from_user_id": typing.from_user_id, "typing": typing.typing});
                if typing.group_id != 0 {
                    object["group"] = json!(typing.group_id);
                }
                ctx.print(&format!("{who} {doing}{place}"), object);
            }
            ClientEvent::Presence(presence) => {
                let who = printer.user(presence.user_id);
                let state = if presence.online { "online" } else { "offline" };
                ctx.print(
                    &format!("{who} is {state}"),
                    json!({"event": "presence", "user": who, "user_id": presence.user_id,
                           "online": presence.online, "last_seen_ms": presence.last_seen_ms}),
                );
            }
            ClientEvent::Connected {
                user_id,
                cursor,
                max_seq,
                ..
            } => {
                ever_connected = true;
                if let Some(conn) = &conn {
                    // Only for group names in what gets printed; the
                    // client follows the groups itself.
                    if let Ok(groups) = list_groups(conn).await {
                        printer.learn_groups(&groups);
                    }
                }
                ctx.note(
                    &format!("connected to {server} as user {user_id}; listening (Ctrl-C to stop)"),
                    json!({"event": "connected", "server": server, "user_id": user_id,
                           "cursor": cursor, "max_seq": max_seq}),
                );
            }
            ClientEvent::CaughtUp { cursor } => {
                if ctx.global.json {
                    println!("{}", json!({"event": "caught_up", "cursor": cursor}));
                }
            }
            ClientEvent::Disconnected {
                reason,
                error,
                retry_in,
            } => {
                if let (false, Some(error)) = (ever_connected, error) {
                    client.shutdown().await;
                    return Err(ctx.fail(&server, error));
                }
                let retry_ms = retry_in.map(|d| d.as_millis() as u64);
                let human = match retry_in {
                    Some(delay) => format!("disconnected: {reason}; reconnecting in {delay:.1?}"),
                    None => format!("disconnected: {reason}"),
                };
                ctx.note(
                    &human,
                    json!({"event": "disconnected", "reason": reason, "retry_in_ms": retry_ms}),
                );
            }
            ClientEvent::Kicked {
                reason,
                message,
                reconnecting,
            } => {
                if !reconnecting {
                    return Err(kicked(reason, &message));
                }
                ctx.note(
                    &format!("kicked by the server ({}); reconnecting", kick_name(reason)),
                    json!({"event": "kicked", "reason": kick_name(reason), "message": message}),
                );
            }
            ClientEvent::Stopped { error } => return Err(ctx.fail(&server, error)),
        }
    }
}
