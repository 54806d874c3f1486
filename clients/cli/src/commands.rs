//! The commands: each connects through the sdk, does its one thing, prints
//! the result and keeps the profile (token, cursors) up to date. Account
//! and 1:1 commands are here; receiving (`pull`, `listen`), groups, the
//! conversation, recall and device commands, and push tokens have their
//! own modules.

mod groups;
mod push;
mod receive;
mod social;

pub use groups::group;
pub use push::push;
pub use receive::{listen, pull};
pub use social::{conversations, devices, read, recall};

use std::path::PathBuf;
use std::sync::Arc;

use pigeon_sdk::sync::resume_cursor;
use pigeon_sdk::{
    ConnectOptions, Connection, Credential, KickReason, LoginParams, Platform, Profile, Recipient,
    SdkError,
};
use rand::Rng;
use serde_json::{json, Value};

use crate::args::{GlobalArgs, SendTo};
use crate::failure::{Exit, Failure};
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
        // One-shot commands pull what they print.
        inline_messages: false,
    }
}

/// Connect and log in with the profile's token (falling back to
/// PIGEON_PASSWORD when the token is refused), and record the login.
pub(crate) async fn resume_session(
    ctx: &Ctx,
    profile: &mut Profile,
) -> Result<(Connection, String), Failure> {
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

/// `pigeon send USER TEXT` and `pigeon send --group GROUP TEXT`
pub async fn send(
    ctx: &Ctx,
    to: SendTo<'_>,
    text: &str,
    content_type: Option<&str>,
) -> Result<(), Failure> {
    let mut profile = ctx.logged_in_profile()?;
    let (conn, server) = resume_session(ctx, &mut profile).await?;
    let client_msg_id = new_client_msg_id();
    let content_type = content_type.unwrap_or("text/plain");
    let content = text.as_bytes().to_vec();
    let (sent, to_json) = match to {
        SendTo::User(user) => {
            let recipient = Recipient::Name(user.to_owned());
            let sent = conn.send(recipient, client_msg_id.as_str(), content_type, content);
            (sent.await, json!({"to": user}))
        }
        SendTo::Group(group) => {
            let group_id = groups::resolve(ctx, &conn, &server, group).await?;
            let sent = conn.send_group(group_id, client_msg_id.as_str(), content_type, content);
            (sent.await, json!({"group": group_id}))
        }
    };
    let sent = sent.map_err(|e| ctx.fail(&server, e))?;
    conn.close().await;
    let mut object = json!({
        "event": "sent",
        "msg_id": sent.msg_id,
        "seq": sent.seq,
        "conv_seq": sent.conv_seq,
        "client_msg_id": client_msg_id,
        "ts": sent.sent_at_ms,
        "duplicate": sent.duplicate,
    });
    for (key, value) in to_json.as_object().into_iter().flatten() {
        object[key] = value.clone();
    }
    ctx.print(&sent.msg_id.to_string(), object);
    Ok(())
}

/// A fresh id for one send: 32 random hex digits.
pub fn new_client_msg_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
