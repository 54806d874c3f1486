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
    /// The admin listener (/metrics, /healthz, /readyz, admin API).
    pub admin: Admin,
}

/// The admin endpoint: loopback HTTP with a bearer token, never on the
/// public port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Where the admin listener binds; unset switches it off.
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
            admin: Admin::default(),
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
    /// The TOML did not parse or named an unknown key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// Dotted key name, e.g. `timeouts.idle`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl Config {
    /// Defaults, overridden by the TOML file if one is given, then by
    /// `PIGEON_*` variables from `env`.
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
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Apply the environment overrides: PIGEON_LISTEN, PIGEON_DATA_DIR,
    /// PIGEON_TLS_CERT, PIGEON_TLS_KEY, PIGEON_DURABILITY,
    /// PIGEON_REGISTRATION_ENABLED. Other PIGEON_* names are ignored here
    /// because clients (the CLI) share the prefix.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in env {
            match name.as_str() {
                "PIGEON_LISTEN" => self.listen = parse_value("listen", &value)?,
                "PIGEON_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "PIGEON_TLS_CERT" => self.tls.cert = Some(PathBuf::from(value)),
                "PIGEON_TLS_KEY" => self.tls.key = Some(PathBuf::from(value)),
                "PIGEON_DURABILITY" => {
                    self.messaging.durability = toml::Value::String(value.clone())
                        .try_into()
                        .map_err(|_| ConfigError::Invalid {
                            key: "messaging.durability",
                            problem: format!("`{value}` is not fsync, flush or buffered"),
                        })?
                }
                "PIGEON_REGISTRATION_ENABLED" => {
                    self.accounts.registration_enabled =
                        parse_value("accounts.registration_enabled", &value)?
                }
                _ => {}
            }
        }
        Ok(())
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
        if limits.outbound_queue == 0 || limits.max_connections == 0 || limits.max_pull == 0 {
            return invalid(
                "limits",
                "outbound_queue, max_connections and max_pull must be above 0",
            );
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
        if self.messaging.max_batch == 0 {
            return invalid("messaging.max_batch", "must be above 0");
        }
        if self.messaging.gc_interval.is_zero() {
            return invalid("messaging.gc_interval", "must be above zero");
        }
        if let Some(addr) = self.admin.listen {
            if !addr.ip().is_loopback() && !self.admin.allow_non_loopback {
                return invalid(
                    "admin.listen",
                    "is not a loopback address; set admin.allow_non_loopback = true to expose the admin API",
                );
            }
        }
        Ok(())
    }
}

fn parse_value<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Invalid {
        key,
        problem: format!("`{value}`: {e}"),
    })
}

/// Durations as human text ("250ms", "10s", "5m", "24h", "7d").
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parse "250ms", "10s", "5m", "24h" or "7d".
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit (ms, s, m, h or d)"))?;
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` does not start with a whole number"))?;
        let millis = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => return Err(format!("`{text}`: unit must be ms, s, m, h or d")),
        };
        millis
            .map(Duration::from_millis)
            .ok_or_else(|| format!("`{text}` is too long"))
    }

    /// The shortest exact text for a duration.
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis() as u64;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms != 0 && ms.is_multiple_of(size) {
                return format!("{}{unit}", ms / size);
            }
        }
        format!("{ms}ms")
    }

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7443");
        assert_eq!(c.data_dir, PathBuf::from("pigeon-data"));
        assert_eq!(c.messaging.durability, Durability::Fsync);
        assert_eq!(c.timeouts.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.timeouts.idle, Duration::from_secs(75));
        c.validate().unwrap();
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(
            duration_text::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            duration_text::parse("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(duration_text::parse("10").is_err());
        assert!(duration_text::parse("10y").is_err());
        assert!(duration_text::parse("99999999999999999d").is_err());
        assert_eq!(duration_text::format(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text::format(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn file_overrides_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pigeon.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[timeouts]\nidle = \"2m\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), []).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.timeouts.idle, Duration::from_secs(120));
        assert_eq!(c.timeouts.login, Duration::from_secs(10));

        std::fs::write(&path, "[timeouts]\nidel = \"2m\"\n").unwrap();
        let err = Config::load(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("idel"), "{err}");
    }

    #[test]
    fn env_overrides_the_file_and_bad_values_name_the_key() {
        let env = [("PIGEON_LISTEN".to_string(), "127.0.0.1:1".to_string())];
        assert_eq!(Config::load(None, env).unwrap().listen.port(), 1);
        let env = [("PIGEON_DURABILITY".to_string(), "sometimes".to_string())];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(err.contains("messaging.durability"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config::default();
        c.timeouts.idle = c.timeouts.heartbeat_interval;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("timeouts.idle"), "{err}");
        let mut c = Config::default();
        c.tls.cert = Some("x.pem".into());
        assert!(c.validate().unwrap_err().to_string().contains("tls.cert"));
    }
}
