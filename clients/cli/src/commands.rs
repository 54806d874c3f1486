//! The commands: each connects through the sdk, does its one thing, prints
//! the result and keeps the profile (token, cursor) up to date.

use std::path::PathBuf;
use std::sync::Arc;

use pigeon_sdk::sync::{resume_cursor, sync_to_end, SyncSink};
use pigeon_sdk::{
    pb, Client, ClientConfig, ClientEvent, ConnectOptions, Connection, Credential, KickReason,
    LoginParams, Platform, Profile, Recipient, SdkError,
};
use rand::Rng;
use serde_json::{json, Value};

use crate::args::GlobalArgs;
use crate::failure::{Exit, Failure};
use crate::output;
use crate::password;

/// What every command needs: the global options, resolved.
pub struct Ctx {
    /// The parsed global options.
    pub global: GlobalArgs,
    /// Where the profile lives.
    pub profile_dir: PathBuf,
}

impl Ctx {
    /// Print a result: the human text, or the JSON object with `--json`.
    fn print(&self, human: &str, json: Value) {
        if self.global.json {
            println!("{json}");
        } else {
            println!("{human}");
        }
    }

    /// A status note: a JSON line on stdout with `--json`, else on stderr
    /// (so stdout carries only messages and results).
    fn note(&self, human: &str, json: Value) {
        if self.global.json {
            println!("{json}");
        } else {
            eprintln!("{human}");
        }
    }

    fn fail(&self, server: &str, error: SdkError) -> Failure {
        Failure::from_sdk(error, server, &self.global.ca)
    }

    fn connect_options(&self, server: &str) -> Result<ConnectOptions, Failure> {
        let tls = pigeon_sdk::tls::client_config_from_ca_file(&self.global.ca)
            .map_err(|e| self.fail(server, e))?;
        Ok(ConnectOptions::new(server, Arc::clone(&tls)))
    }

    async fn connect(&self, server: &str) -> Result<Connection, Failure> {
        let options = self.connect_options(server)?;
        Connection::connect(&options)
            .await
            .map_err(|e| self.fail(server, e))
    }

    fn open_profile(&self) -> Result<Profile, Failure> {
        Profile::open(&self.profile_dir).map_err(|e| Failure::new(Exit::Generic, e.to_string()))
    }

    fn logged_in_profile(&self) -> Result<Profile, Failure> {
        let profile = Profile::load(&self.profile_dir)
            .map_err(|e| Failure::new(Exit::Generic, e.to_string()))?;
        profile
            .filter(Profile::is_logged_in)
            .ok_or_else(Failure::not_logged_in)
    }
}

fn save(profile: &Profile) -> Result<(), Failure> {
    profile
        .save()
        .map_err(|e| Failure::new(Exit::Generic, e.to_string()))
}

/// `pigeon register NAME`
pub async fn register(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let server = ctx.global.server(None);
    let password = password::read(&format!("Choose a password for {name}: "), true)?;
    let conn = ctx.connect(&server).await?;
    let user_id = conn
        .register(name, &password)
        .await
        .map_err(|e| ctx.fail(&server, e))?;
    conn.close().await;
    ctx.print(
        &format!("registered {name} (user id {user_id}); now run `pigeon login {name}`"),
        json!({"event": "registered", "username": name, "user_id": user_id, "server": server}),
    );
    Ok(())
}

/// `pigeon login NAME`
pub async fn login(ctx: &Ctx, name: &str) -> Result<(), Failure> {
    let mut profile = ctx.open_profile()?;
    let server = ctx.global.server(profile.server.as_deref());
    let password = password::read(&format!("Password for {name}: "), false)?;
    let conn = ctx.connect(&server).await?;
    let answer = conn
        .login(login_params(&profile, name, Credential::Password(password)))
        .await
        .map_err(|e| ctx.fail(&server, e))?;
    conn.close().await;
    profile.record_login(&server, name, &answer);
    profile.cursor = resume_cursor(profile.cursor, &answer);
    save(&profile)?;
    let waiting = answer.max_seq.saturating_sub(profile.cursor);
    ctx.print(
        &format!(
            "logged in as {name} (user id {}) on device {}; {waiting} message(s) waiting",
            answer.user_id, profile.device_id
        ),
        json!({
            "event": "logged_in",
            "username": name,
            "user_id": answer.user_id,
            "device_id": profile.device_id,
            "server": server,
            "max_seq": answer.max_seq,
            "cursor": profile.cursor,
            "token_expires_at_ms": answer.token_expires_at_ms,
        }),
    );
    Ok(())
}

fn login_params(profile: &Profile, username: &str, credential: Credential) -> LoginParams {
    LoginParams {
        username: username.to_owned(),
        device_id: profile.device_id.clone(),
        platform: Platform::Cli,
        credential,
    }
}

/// Connect and log in with the profile's token (falling back to
/// PIGEON_PASSWORD when the token is refused), and record the login.
async fn resume_session(ctx: &Ctx, profile: &mut Profile) -> Result<(Connection, String), Failure> {
    let token = profile.token.clone().ok_or_else(Failure::not_logged_in)?;
    let username = profile.username.clone().unwrap_or_default();
    let server = ctx.global.server(profile.server.as_deref());
    let conn = ctx.connect(&server).await?;
    let mut answer = conn
        .login(login_params(profile, &username, Credential::Token(token)))
        .await;
    if let (Err(e), Some(password)) = (&answer, password::from_env()) {
        if e.is_auth_failed() && !username.is_empty() {
            let credential = Credential::Password(password);
            answer = conn
                .login(login_params(profile, &username, credential))
                .await;
        }
    }
    let answer = answer.map_err(|e| {
        let failure = ctx.fail(&server, e);
        match failure.exit {
            Exit::Auth => failure.hint("the stored token was refused: run `pigeon login NAME`"),
            _ => failure,
        }
    })?;
    profile.record_login(&server, &username, &answer);
    profile.cursor = resume_cursor(profile.cursor, &answer);
    save(profile)?;
    Ok((conn, server))
}

/// `pigeon send USER TEXT`
pub async fn send(
    ctx: &Ctx,
    user: &str,
    text: &str,
    content_type: Option<&str>,
) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let client_msg_id = new_client_msg_id();
    let content_type = content_type.unwrap_or("text/plain");
    let sent = conn
        .send(
            Recipient::Name(user.to_owned()),
            client_msg_id.as_str(),
            content_type,
            text.as_bytes().to_vec(),
        )
        .await
        .map_err(|e| ctx.fail(&server, e))?;
    conn.close().await;
    ctx.print(
        &sent.msg_id.to_string(),
        json!({
            "event": "sent",
            "msg_id": sent.msg_id,
            "seq": sent.seq,
            "to": user,
            "client_msg_id": client_msg_id,
            "ts": sent.sent_at_ms,
            "duplicate": sent.duplicate,
        }),
    );
    Ok(())
}

/// A fresh id for one send: 32 random hex digits.
pub fn new_client_msg_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints synced messages and commits the cursor to the profile.
struct PrintSink<'a> {
    json: bool,
    profile: &'a mut Profile,
}

impl SyncSink for PrintSink<'_> {
    async fn deliver(&mut self, message: pb::Message) -> Result<(), SdkError> {
        print_message(self.json, &message);
        Ok(())
    }

    async fn commit(&mut self, cursor: u64) -> Result<(), SdkError> {
        self.profile.cursor = cursor;
        self.profile.save()
    }
}

fn print_message(json: bool, message: &pb::Message) {
    if json {
        println!("{}", output::message_json(message));
    } else {
        println!("{}", output::message_line(message));
    }
}

/// `pigeon pull`
pub async fn pull(ctx: &Ctx, limit: u32) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let cursor = profile.cursor;
    let mut sink = PrintSink {
        json: ctx.global.json,
        profile: &mut profile,
    };
    let report = sync_to_end(&conn, cursor, limit, &mut sink)
        .await
        .map_err(|e| ctx.fail(&server, e))?;
    conn.close().await;
    if !ctx.global.json {
        eprintln!(
            "{} new message(s); acknowledged up to seq {}",
            report.delivered, report.cursor
        );
    }
    Ok(())
}

/// `pigeon logout`
pub async fn logout(ctx: &Ctx) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let result = conn.logout().await;
    conn.close().await;
    profile.clear_token();
    save(&profile)?;
    result.map_err(|e| ctx.fail(&server, e))?;
    ctx.print("logged out", json!({"event": "logged_out"}));
    Ok(())
}

/// `pigeon listen`: stays connected (reconnecting with backoff) until
/// Ctrl-C. Fails fast if the very first connection cannot be made.
pub async fn listen(ctx: &Ctx) -> Result<(), Failure> {
    let profile = ctx.logged_in_profile()?;
    let server = ctx.global.server(profile.server.as_deref());
    let username = profile.username.clone().unwrap_or_default();
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
        match event {
            ClientEvent::Message(message) => print_message(ctx.global.json, &message),
            ClientEvent::Connected {
                user_id,
                cursor,
                max_seq,
                ..
            } => {
                ever_connected = true;
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

/// "SAME_DEVICE" rather than the enum's "KICK_REASON_SAME_DEVICE".
fn kick_name(reason: KickReason) -> &'static str {
    let name = reason.as_str_name();
    name.strip_prefix("KICK_REASON_").unwrap_or(name)
}

fn kicked(reason: KickReason, message: &str) -> Failure {
    let why = match reason {
        KickReason::SameDevice => "another session of this device logged in",
        KickReason::SamePlatformClass => "another desktop/CLI session of this user logged in",
        KickReason::Revoked => "this device was revoked",
        _ => "the server ended the session",
    };
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    Failure::new(
        Exit::Kicked,
        format!("kicked: {}: {why}{detail}", kick_name(reason)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_are_fresh_and_valid() {
        let a = new_client_msg_id();
        let b = new_client_msg_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn kick_message_names_the_reason() {
        let failure = kicked(KickReason::SameDevice, "");
        assert_eq!(failure.exit, Exit::Kicked);
        assert!(
            failure.message.contains("SAME_DEVICE"),
            "{}",
            failure.message
        );
    }
}
