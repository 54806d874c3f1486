//! The one typed, validated configuration of pigeond.
//!
//! Defaults are embedded (DESIGN.md: listen on 127.0.0.1:7443, data in
//! ./pigeon-data, the dev certificate); a TOML file, then `PIGEON_*`
//! environment variables, then command-line flags override them. Nothing
//! else in the server reads files or the environment for settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Durability;

pub mod duration_text;
pub mod keys;
pub mod push;

pub use push::Push;

/// Everything pigeond can be told.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The public TLS listener.
    pub listen: SocketAddr,
    /// Where the store keeps its files.
    pub data_dir: PathBuf,
    /// Certificate and key (PEM). Unset: the embedded development
    /// certificate for localhost, which no real client should trust.
    pub tls: TlsConfig,
    /// Socket and connection limits.
    pub limits: Limits,
    /// Timeouts of the connection lifecycle.
    pub timeouts: Timeouts,
    /// Accounts and login.
    pub accounts: Accounts,
    /// Message storage and garbage collection.
    pub messaging: Messaging,
    /// Giving the store's disk space back (online compaction).
    pub store: StoreSettings,
    /// The admin listener (/metrics, /healthz, /readyz, admin API).
    pub admin: Admin,
    /// Test only, never in a config file: from the environment variable
    /// [`TEST_POWERLOSS_SNAPSHOT_ENV`]. Makes the store copy its data
    /// directory here after every fsync, for the power-loss test
    /// (`tests/powerloss.rs`); costs a copy of the store per fsync.
    #[serde(skip)]
    pub test_powerloss_snapshot: Option<PathBuf>,
    /// Offline push to phones (APNs, FCM) and a webhook.
    pub push: Push,
}

/// The environment variable of [`Config::test_powerloss_snapshot`]. Not a
/// config key: it has no TOML name and `pigeond config default` does not
/// list it.
pub const TEST_POWERLOSS_SNAPSHOT_ENV: &str = "PIGEON_TEST_POWERLOSS_SNAPSHOT";

/// The admin endpoint: loopback HTTP with a bearer token, never on the
/// public port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Where the admin listener binds; `None` (written "off") switches it
    /// off.
    #[serde(with = "admin_listen")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token; created with a random token (mode
    /// 0600) if missing. Unset: `admin.token` in the data directory.
    pub token_file: Option<PathBuf>,
    /// Allow `listen` on an address other than loopback. Off by default so
    /// the admin API is never exposed to the network by accident.
    pub allow_non_loopback: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7444))),
            token_file: None,
            allow_non_loopback: false,
        }
    }
}

impl Admin {
    /// The token file in effect for a data directory.
    pub fn token_path(&self, data_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("admin.token"))
    }
}

/// Certificate files. Both set, or neither (the embedded dev certificate).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Size and count limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame body accepted or sent, in bytes.
    pub max_frame_bytes: u32,
    /// Largest message content, in bytes.
    pub max_content_bytes: u32,
    /// Connections beyond this are closed right after accept.
    pub max_connections: usize,
    /// The listen backlog.
    pub backlog: u32,
    /// Answers and pushes waiting to be written to one connection; when full,
    /// the connection stops reading requests until the peer catches up.
    pub outbound_queue: usize,
    /// Most entries one pull returns.
    pub max_pull: u32,
    /// Requests per second one connection may make, on average.
    pub requests_per_sec: u32,
    /// Requests one connection may make in a burst above that rate.
    pub request_burst: u32,
    /// Sends per second one connection may make, on average.
    pub sends_per_sec: u32,
    /// Sends one connection may make in a burst above that rate.
    pub send_burst: u32,
    /// TLS handshakes in progress at once from one peer address.
    pub handshakes_per_address: u32,
    /// Typing and presence requests per second per connection.
    pub ephemeral_per_sec: u32,
    /// Typing and presence requests at once above that rate.
    pub ephemeral_burst: u32,
}

/// Deadlines, written like "10s", "500ms", "2m", "24h", "30d".
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// From accept to the end of the TLS handshake.
    #[serde(with = "duration_text")]
    pub handshake: Duration,
    /// From the end of the handshake to a successful login.
    #[serde(with = "duration_text")]
    pub login: Duration,
    /// How often clients are told to send a Ping.
    #[serde(with = "duration_text")]
    pub heartbeat_interval: Duration,
    /// A connection that sent nothing for this long is closed.
    #[serde(with = "duration_text")]
    pub idle: Duration,
    /// Writing one batch of frames to a peer; a slower peer is disconnected.
    #[serde(with = "duration_text")]
    pub write: Duration,
    /// After SIGTERM: how long connections get to finish in-flight requests
    /// before they are dropped and the store is flushed.
    #[serde(with = "duration_text")]
    pub shutdown: Duration,
}

/// Who may sign up and how long logins last.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Accounts {
    /// Whether clients may create accounts with RegisterRequest.
    pub registration_enabled: bool,
    /// Lifetime of a login token.
    #[serde(with = "duration_text")]
    pub token_ttl: Duration,
    /// Which older sessions a new login replaces.
    pub kick_policy: KickPolicy,
    /// Password hashes computed at once (each takes ~19 MiB and a core for
    /// tens of milliseconds); further logins wait their turn.
    pub max_concurrent_hashes: usize,
    /// Failed logins per account name within the window before further
    /// attempts on it are refused with RATE_LIMITED (unknown names count
    /// the same, so the answer does not tell which names exist).
    pub login_failures_per_account: u32,
    /// Failed logins per peer address within the window before further
    /// attempts from it are refused with RATE_LIMITED.
    pub login_failures_per_address: u32,
    /// The window of the two limits above.
    #[serde(with = "duration_text")]
    pub login_failure_window: Duration,
}

/// Which sessions a login replaces (DESIGN.md, "Kick policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KickPolicy {
    /// One session per device id and one per platform class
    /// (mobile, desktop, web).
    PlatformClass,
    /// One session per device id; any number of devices per class.
    Device,
}

/// Storage, dedupe and garbage-collection rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Messaging {
    /// How sends are made durable before they are answered.
    pub durability: Durability,
    /// A resend with the same client_msg_id within this window is answered
    /// with the first answer.
    #[serde(with = "duration_text")]
    pub dedupe_window: Duration,
    /// Acknowledged entries younger than this stay, so a new device can sync
    /// recent history.
    #[serde(with = "duration_text")]
    pub history_retention: Duration,
    /// A device silent for this long no longer holds back garbage collection.
    #[serde(with = "duration_text")]
    pub device_inactive_after: Duration,
    /// How often the background collector sweeps every queue.
    #[serde(with = "duration_text")]
    pub gc_interval: Duration,
    /// Most writes committed in one batch (one flush).
    pub max_batch: usize,
    /// Microseconds a small durable batch waits once for more writes
    /// before its flush (0: never).
    pub commit_linger_us: u64,
    /// How long after sending a message may be recalled.
    #[serde(with = "duration_text")]
    pub recall_window: Duration,
    /// How often the acknowledgements that pulls carry are written.
    #[serde(with = "duration_text")]
    pub ack_write_interval: Duration,
    /// Groups with more members than this keep a timeline instead of
    /// fanning out into every member's queue.
    pub large_group_threshold: u32,
    /// No group grows above this many members.
    pub max_group_members: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            data_dir: PathBuf::from("pigeon-data"),
            tls: TlsConfig::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            accounts: Accounts::default(),
            messaging: Messaging::default(),
            store: StoreSettings::default(),
            admin: Admin::default(),
            test_powerloss_snapshot: None,
            push: Push::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1024 * 1024,
            max_content_bytes: 64 * 1024,
            max_connections: 1_000_000,
            backlog: 4096,
            outbound_queue: 64,
            max_pull: 1000,
            requests_per_sec: 200,
            request_burst: 400,
            sends_per_sec: 50,
            send_burst: 100,
            handshakes_per_address: 256,
            ephemeral_per_sec: 5,
            ephemeral_burst: 10,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            login: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            idle: Duration::from_secs(75),
            write: Duration::from_secs(10),
            shutdown: Duration::from_secs(30),
        }
    }
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            registration_enabled: true,
            token_ttl: Duration::from_secs(30 * 86_400),
            kick_policy: KickPolicy::PlatformClass,
            max_concurrent_hashes: 4,
            login_failures_per_account: 10,
            login_failures_per_address: 100,
            login_failure_window: Duration::from_secs(15 * 60),
        }
    }
}

impl Default for Messaging {
    fn default() -> Self {
        Messaging {
            durability: Durability::Fsync,
            dedupe_window: Duration::from_secs(86_400),
            history_retention: Duration::from_secs(7 * 86_400),
            device_inactive_after: Duration::from_secs(30 * 86_400),
            gc_interval: Duration::from_secs(60),
            max_batch: 1024,
            commit_linger_us: 300,
            recall_window: Duration::from_secs(120),
            ack_write_interval: Duration::from_secs(1),
            large_group_threshold: 500,
            max_group_members: 100_000,
        }
    }
}

/// When the collector compacts the store to give disk space back (see
/// `Store::compact`): after a sweep, if the store's files take at least
/// `compact_min_disk_bytes` and more than `compact_ratio` times its live
/// data, and the live data is at most `compact_max_live_bytes` (the copy
/// costs CPU and I/O in proportion to it).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Compact automatically after a collector sweep when it pays.
    pub auto_compact: bool,
    /// No automatic compaction while the files take less than this.
    pub compact_min_disk_bytes: u64,
    /// Compact when the files take more than this many times the live data.
    pub compact_ratio: u32,
    /// No automatic compaction when the live data is above this.
    pub compact_max_live_bytes: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            auto_compact: true,
            compact_min_disk_bytes: 64 * 1024 * 1024,
            compact_ratio: 8,
            compact_max_live_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A configuration that cannot be used, naming the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the line).
        message: String,
    },
    /// The file names a key pigeond does not have.
    #[error("config file {path}: unknown key `{key}` (`pigeond config default` lists every key)")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// Dotted key name as written.
        key: String,
    },
    /// A value is malformed or out of its allowed range.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// Dotted key name, e.g. `timeouts.idle`.
        key: &'static str,
        /// What is wrong with it (and where it came from, if not the file).
        problem: String,
    },
}

/// Settings given as command-line flags: the last word over the file and
/// the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `tls.cert`.
    pub tls_cert: Option<PathBuf>,
    /// `tls.key`.
    pub tls_key: Option<PathBuf>,
    /// `admin.listen`; `Some(None)` switches the admin listener off.
    pub admin_listen: Option<Option<SocketAddr>>,
}

impl Overrides {
    /// Write every flag that was given over `config`.
    pub fn apply(self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(cert) = self.tls_cert {
            config.tls.cert = Some(cert);
        }
        if let Some(key) = self.tls_key {
            config.tls.key = Some(key);
        }
        if let Some(admin) = self.admin_listen {
            config.admin.listen = admin;
        }
    }
}

impl Config {
    /// Defaults, overridden by the TOML file if one is given, then by
    /// `PIGEON_*` variables from `env`. Flags come last: [`Overrides::apply`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Parse a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parse TOML text read from `path`. Every key is checked on its own
    /// first, so an error names the dotted key rather than a parser position.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let mut leaves = Vec::new();
        for (name, value) in &table {
            let Some(section) = keys::section(name) else {
                leaves.push((name.clone(), value));
                continue;
            };
            let Some(entries) = value.as_table() else {
                return Err(ConfigError::Invalid {
                    key: section,
                    problem: format!("must be a table, written [{section}]"),
                });
            };
            leaves.extend(entries.iter().map(|(k, v)| (format!("{name}.{k}"), v)));
        }
        for (key, value) in leaves {
            let Some(doc) = keys::find(&key) else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key,
                });
            };
            Config::with_value(Config::default(), doc.key, value.clone()).map_err(|problem| {
                ConfigError::Invalid {
                    key: doc.key,
                    problem,
                }
            })?;
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.message().to_owned(),
            })
    }

    /// Apply the environment: each key's variable (see [`keys::env_name`],
    /// e.g. `PIGEON_TIMEOUTS_SHUTDOWN`) overrides it. Other `PIGEON_*`
    /// names are ignored because the clients (the CLI) share the prefix.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        // Kept aside: the round trip through TOML below drops the field.
        let mut powerloss_snapshot = self.test_powerloss_snapshot.clone();
        for (name, text) in env {
            if name == TEST_POWERLOSS_SNAPSHOT_ENV {
                powerloss_snapshot = Some(PathBuf::from(text));
                continue;
            }
            let Some(doc) = keys::by_env(&name) else {
                continue;
            };
            let value = self.env_value(doc.key, &text);
            *self = Config::with_value(self.clone(), doc.key, value).map_err(|problem| {
                ConfigError::Invalid {
                    key: doc.key,
                    problem: format!("{problem} (from {name})"),
                }
            })?;
        }
        self.test_powerloss_snapshot = powerloss_snapshot;
        Ok(())
    }

    /// An environment string as the TOML value the key expects: numbers and
    /// booleans where the key holds one, text everywhere else.
    fn env_value(&self, key: &str, text: &str) -> toml::Value {
        let current = toml::Value::try_from(self.clone())
            .ok()
            .and_then(|v| lookup(&v, key).cloned());
        let parsed = match current {
            Some(toml::Value::Integer(_)) => text.trim().parse().map(toml::Value::Integer).ok(),
            Some(toml::Value::Boolean(_)) => text.trim().parse().map(toml::Value::Boolean).ok(),
            _ => None,
        };
        // Unparsable numbers stay text, so the error below says what was given.
        parsed.unwrap_or_else(|| toml::Value::String(text.to_owned()))
    }

    /// `config` with one dotted key replaced; the error is the problem with
    /// the value.
    fn with_value(config: Config, key: &str, value: toml::Value) -> Result<Config, String> {
        let mut table = toml::Table::try_from(config).map_err(|e| e.to_string())?;
        match key.split_once('.') {
            Some((section, name)) => {
                let section = table
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(section) = section.as_table_mut() else {
                    return Err(format!("`{section}` must be a table"));
                };
                section.insert(name.to_owned(), value.clone());
            }
            None => {
                table.insert(key.to_owned(), value.clone());
            }
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("{value}: {}", e.message().trim()))
    }

    /// Check every value's range; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_owned(),
            })
        };
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert", "tls.cert and tls.key must be set together");
        }
        for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
            if let Some(path) = path {
                readable_file(path).map_err(|problem| ConfigError::Invalid { key, problem })?;
            }
        }
        let limits = &self.limits;
        if limits.max_frame_bytes < 1024 {
            return invalid("limits.max_frame_bytes", "must be at least 1024");
        }
        if limits.max_content_bytes == 0 || limits.max_content_bytes + 1024 > limits.max_frame_bytes
        {
            return invalid(
                "limits.max_content_bytes",
                "must be above 0 and at least 1 KiB below limits.max_frame_bytes",
            );
        }
        for (key, value) in [
            ("limits.outbound_queue", limits.outbound_queue),
            ("limits.max_connections", limits.max_connections),
            ("limits.max_pull", limits.max_pull as usize),
            ("limits.requests_per_sec", limits.requests_per_sec as usize),
            ("limits.request_burst", limits.request_burst as usize),
            ("limits.sends_per_sec", limits.sends_per_sec as usize),
            ("limits.send_burst", limits.send_burst as usize),
            (
                "limits.ephemeral_per_sec",
                limits.ephemeral_per_sec as usize,
            ),
            ("limits.ephemeral_burst", limits.ephemeral_burst as usize),
            (
                "limits.handshakes_per_address",
                limits.handshakes_per_address as usize,
            ),
            (
                "accounts.login_failures_per_account",
                self.accounts.login_failures_per_account as usize,
            ),
            (
                "accounts.login_failures_per_address",
                self.accounts.login_failures_per_address as usize,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be above 0");
            }
        }
        let t = &self.timeouts;
        for (key, value) in [
            ("timeouts.handshake", t.handshake),
            ("timeouts.login", t.login),
            ("timeouts.heartbeat_interval", t.heartbeat_interval),
            ("timeouts.write", t.write),
            ("timeouts.shutdown", t.shutdown),
        ] {
            if value.is_zero() {
                return invalid(key, "must be above zero");
            }
        }
        if t.idle <= t.heartbeat_interval {
            return invalid(
                "timeouts.idle",
                "must be longer than timeouts.heartbeat_interval",
            );
        }
        if self.accounts.max_concurrent_hashes == 0 {
            return invalid("accounts.max_concurrent_hashes", "must be above 0");
        }
        if self.messaging.large_group_threshold == 0 {
            return invalid("messaging.large_group_threshold", "must be above 0");
        }
        if self.messaging.max_group_members < 2 {
            return invalid("messaging.max_group_members", "must be at least 2");
        }
        if self.messaging.max_batch == 0 {
            return invalid("messaging.max_batch", "must be above 0");
        }
        if self.messaging.gc_interval.is_zero() {
            return invalid("messaging.gc_interval", "must be above zero");
        }
        if self.messaging.commit_linger_us > 100_000 {
            return invalid(
                "messaging.commit_linger_us",
                "must be at most 100000 (every durable write may wait this long)",
            );
        }
        if self.messaging.ack_write_interval.is_zero() {
            return invalid("messaging.ack_write_interval", "must be above zero");
        }
        if self.store.compact_ratio < 2 {
            return invalid("store.compact_ratio", "must be at least 2");
        }
        if let Some(addr) = self.admin.listen {
            if !addr.ip().is_loopback() && !self.admin.allow_non_loopback {
                return invalid(
                    "admin.listen",
                    "is not a loopback address; set admin.allow_non_loopback = true to expose the admin API",
                );
            }
        }
        self.push.validate()
    }
}

/// Whether `path` is a file this process can open for reading; the error
/// names the path.
fn readable_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    Ok(())
}

/// A dotted key's value inside a serialized config.
fn lookup<'a>(config: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.')
        .try_fold(config, |value, part| value.get(part))
}

/// Parse an admin listen value: an address, or "off".
pub fn parse_admin_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        ADMIN_OFF => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|e| format!("neither an address (IP:PORT) nor \"{ADMIN_OFF}\": {e}")),
    }
}

/// How `admin.listen` is switched off in TOML, the environment and `--admin`.
pub const ADMIN_OFF: &str = "off";

/// `admin.listen` as text: an address, or "off" for none (TOML has no null,
/// and the default is on).
mod admin_listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(super::ADMIN_OFF),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_admin_listen(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
