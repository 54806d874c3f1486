//! `pigeond admin ...` and `pigeond backup`: the command-line side of the
//! admin endpoint. Arguments are parsed here (main.rs only hooks them
//! into its command enum); each command is one request to the running
//! server, whose JSON answer is printed to stdout.
//!
//! sled lets one process open a data directory, so while the server runs
//! everything goes through it. `backup` alone also works on a stopped
//! server: when nothing listens on the admin address (or `--offline`), it
//! opens the data directory itself (taking its lock, so it refuses a
//! directory a running pigeond holds) and copies it.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::client::AdminClient;
use super::{token, AdminError};
use crate::config::Config;
use crate::store::{Durability, SledStore, Store};

/// The environment variable a new password may come from.
pub const PASSWORD_ENV: &str = "PIGEON_PASSWORD";
/// Deadline of a backup or a compaction through the server.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Which server to talk to: the same config as `serve` finds it.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// TOML config file, as given to `serve`; PIGEON_* variables apply too.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (the token file is in it by default).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The running server's admin address (default: admin.listen).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// The admin token file (default: admin.token_file, or admin.token in
    /// the data directory).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `pigeond admin`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Users: add, list, show, disable, enable, reset-password.
    #[command(subcommand)]
    Users(UsersCommand),
    /// A user's devices: list, revoke.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Sessions by platform, the deepest queues, store size.
    Stats {
        /// How many of the deepest queues to show (at most 100).
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Rewrite the store into fresh files holding only its live data, and
    /// give the rest of the disk space back. Writes go on during the copy.
    Compact {
        /// Compact even above `store.compact_max_live_bytes` of live data
        /// (the copy takes about 1 s per 10 MB of it, competing with traffic).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum UsersCommand {
    /// Create a user (even with registration off). The password comes from
    /// PIGEON_PASSWORD, a prompt, or one line of standard input.
    Add {
        /// The username.
        name: String,
    },
    /// List users in id order, a page at a time.
    List {
        /// Start after this user id.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Users per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One user: record, devices, queue.
    Show {
        /// The username.
        name: String,
    },
    /// Refuse the user's logins and kick their live sessions.
    Disable {
        /// The username.
        name: String,
    },
    /// Allow the user to log in again.
    Enable {
        /// The username.
        name: String,
    },
    /// Set a new password (from PIGEON_PASSWORD or a prompt), revoke every
    /// token and kick every session.
    ResetPassword {
        /// The username.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// The user's devices with cursors and whether they are online.
    List {
        /// The username.
        user: String,
    },
    /// Revoke the device's tokens and kick its live session.
    Revoke {
        /// The username.
        user: String,
        /// The device id.
        device: String,
    },
}

/// `pigeond backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    target: Target,
    /// A new directory to write the copy into (must not exist).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Copy the data directory directly; the server must be stopped.
    #[arg(long)]
    offline: bool,
}

/// Run `pigeond admin ...`.
pub fn run_admin(args: AdminArgs) -> Result<(), AdminError> {
    let config = load_config(&args.target)?;
    let (method, path, body) = match args.command {
        AdminCommand::Users(UsersCommand::Add { name }) => {
            let password = read_password(&format!("Password for {name}: "))?;
            (
                "POST",
                "/v1/users".to_owned(),
                Some(json!({ "username": name, "password": password })),
            )
        }
        AdminCommand::Users(UsersCommand::List { after, limit }) => (
            "GET",
            format!("/v1/users?after={after}&limit={limit}"),
            None,
        ),
        AdminCommand::Users(UsersCommand::Show { name }) => {
            ("GET", format!("/v1/users/{}", segment(&name)?), None)
        }
        AdminCommand::Users(UsersCommand::Disable { name }) => (
            "POST",
            format!("/v1/users/{}/disable", segment(&name)?),
            None,
        ),
        AdminCommand::Users(UsersCommand::Enable { name }) => (
            "POST",
            format!("/v1/users/{}/enable", segment(&name)?),
            None,
        ),
        AdminCommand::Users(UsersCommand::ResetPassword { name }) => {
            let password = read_password(&format!("New password for {name}: "))?;
            let path = format!("/v1/users/{}/password", segment(&name)?);
            ("POST", path, Some(json!({ "password": password })))
        }
        AdminCommand::Devices(DevicesCommand::List { user }) => (
            "GET",
            format!("/v1/users/{}/devices", segment(&user)?),
            None,
        ),
        AdminCommand::Devices(DevicesCommand::Revoke { user, device }) => {
            let path = format!(
                "/v1/users/{}/devices/{}/revoke",
                segment(&user)?,
                segment(&device)?
            );
            ("POST", path, None)
        }
        AdminCommand::Stats { top } => ("GET", format!("/v1/stats?top={top}"), None),
        AdminCommand::Compact { force } => ("POST", format!("/v1/compact?force={force}"), None),
    };
    let mut client = client_for(&config, &args.target)?;
    if path.starts_with("/v1/compact") {
        client = client.with_timeout(BACKUP_TIMEOUT);
    }
    let answer = runtime()?.block_on(client.call(method, &path, body.as_ref()))?;
    print_json(&answer.ok()?.json()?);
    Ok(())
}

/// Run `pigeond backup --to DIR`: through the running server, or offline.
pub fn run_backup(args: BackupArgs) -> Result<(), AdminError> {
    let config = load_config(&args.target)?;
    let to = std::path::absolute(&args.to)
        .map_err(|e| AdminError::Usage(format!("--to {}: {e}", args.to.display())))?;
    if to.exists() {
        return Err(AdminError::Usage(format!(
            "{} already exists; back up into a new directory",
            to.display()
        )));
    }
    if !args.offline {
        match online_backup(&config, &args.target, &to) {
            Ok(report) => {
                print_json(&report);
                return Ok(());
            }
            Err(AdminError::Unreachable {
                refused: true,
                addr,
                ..
            }) => {
                eprintln!(
                    "pigeond: nothing listens on {addr}; backing up the stopped data directory"
                );
            }
            Err(AdminError::TokenFile { ref source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                eprintln!("pigeond: no admin token file; backing up the stopped data directory");
            }
            Err(AdminError::Usage(message)) if message.contains("admin listener is off") => {
                eprintln!("pigeond: {message}; backing up the stopped data directory");
            }
            Err(e) => return Err(e),
        }
    }
    print_json(&offline_backup(&config.data_dir, &to)?);
    Ok(())
}

fn online_backup(
    config: &Config,
    target: &Target,
    to: &Path,
) -> Result<serde_json::Value, AdminError> {
    let client = client_for(config, target)?.with_timeout(BACKUP_TIMEOUT);
    let body = json!({ "to": to });
    let answer = runtime()?.block_on(client.call("POST", "/v1/backup", Some(&body)))?;
    let mut report = answer.ok()?.json()?;
    report["mode"] = json!("online");
    Ok(report)
}

/// Copy a stopped server's data directory. Taking the store's lock makes
/// this refuse a directory that a running pigeond holds.
pub fn offline_backup(data_dir: &Path, to: &Path) -> Result<serde_json::Value, AdminError> {
    if !crate::store::holds_store(data_dir) {
        return Err(AdminError::Usage(format!(
            "{} holds no pigeon store",
            data_dir.display()
        )));
    }
    let store = SledStore::open(data_dir, Durability::Fsync)?;
    let report = store.backup(to)?;
    Ok(json!({
        "mode": "offline",
        "path": to,
        "trees": report.trees,
        "records": report.records,
        "bytes": report.bytes,
    }))
}

fn load_config(target: &Target) -> Result<Config, AdminError> {
    let mut config = Config::load(target.config.as_deref(), std::env::vars())?;
    if let Some(data) = &target.data {
        config.data_dir = data.clone();
    }
    if let Some(addr) = target.admin {
        config.admin.listen = Some(addr);
    }
    if let Some(file) = &target.token_file {
        config.admin.token_file = Some(file.clone());
    }
    Ok(config)
}

fn client_for(config: &Config, target: &Target) -> Result<AdminClient, AdminError> {
    let Some(addr) = target.admin.or(config.admin.listen) else {
        return Err(AdminError::Usage(
            "the admin listener is off in this config; pass --admin ADDR".into(),
        ));
    };
    let token = token::read(&config.admin.token_path(&config.data_dir))?;
    Ok(AdminClient::new(addr, token))
}

fn runtime() -> Result<tokio::runtime::Runtime, AdminError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::Usage(format!("cannot start the async runtime: {e}")))
}

/// A username or device id as a path segment: only the characters both
/// allow, so nothing needs escaping.
fn segment(text: &str) -> Result<&str, AdminError> {
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if ok {
        Ok(text)
    } else {
        Err(AdminError::Usage(format!(
            "`{text}` is not a valid username or device id"
        )))
    }
}

/// From PIGEON_PASSWORD, else a prompt without echo on a terminal, else
/// one line of standard input. Never from argv.
fn read_password(prompt: &str) -> Result<String, AdminError> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    let unreadable =
        |e: std::io::Error| AdminError::Usage(format!("cannot read the password: {e}"));
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).map_err(unreadable);
    }
    let mut line = String::new();
    if std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(unreadable)?
        == 0
    {
        return Err(AdminError::Usage(format!(
            "no password: set {PASSWORD_ENV} or pass it on standard input"
        )));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{value}"),
    }
}
