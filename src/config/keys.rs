//! The one table of config keys: dotted name, what it means, and (for keys
//! unset by default) an example. `pigeond config default`, the environment
//! names and the unknown-key check all come from it, and a test holds it
//! equal to the keys `Config` actually serializes, so the documentation
//! cannot drift from the code.

use super::Config;

/// One documented key.
pub struct KeyDoc {
    /// Dotted name as written in TOML, e.g. `timeouts.idle`.
    pub key: &'static str,
    /// What it means; lines become `# ` comments.
    pub doc: &'static str,
    /// For a key that is unset by default: an example value (TOML), printed
    /// commented out.
    pub example: Option<&'static str>,
}

/// The TOML tables, in output order, with what each holds.
pub const SECTIONS: &[(&str, &str)] = &[
    (
        "tls",
        "Certificate and key (PEM): both or neither. Neither means the embedded\n\
         development certificate for localhost, which no real client should trust.",
    ),
    ("limits", "Size and count limits."),
    (
        "timeouts",
        "Deadlines of the connection lifecycle and of shutdown.",
    ),
    ("accounts", "Accounts and login."),
    (
        "messaging",
        "Message storage, dedupe and garbage collection.",
    ),
    (
        "store",
        "Giving the store's disk space back. sled never shrinks its files by\n\
         itself; a compaction copies the live data into fresh files while writes\n\
         go on, and deletes the old ones. It costs a full copy (CPU, I/O, and\n\
         room for the copy), not a pause.",
    ),
    (
        "admin",
        "The admin listener: /metrics, /healthz, /readyz and the admin API over\n\
         loopback HTTP with a bearer token. Never on the public port.",
    ),
    (
        "push",
        "Offline push: when none of a user's devices is connected, a push goes to\n\
         each device's provider (APNs, FCM, or the webhook). See docs/push.md.",
    ),
];

const fn key(key: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        doc,
        example: None,
    }
}

const fn unset(key: &'static str, doc: &'static str, example: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        doc,
        example: Some(example),
    }
}

/// Every key, in output order: top-level keys first, then by section.
pub const KEYS: &[KeyDoc] = &[
    key("listen", "Address of the public TLS listener (--listen)."),
    key(
        "data_dir",
        "Where the store keeps its files; one pigeond per directory (--data).",
    ),
    unset(
        "tls.cert",
        "PEM certificate chain, leaf first (--cert). Must be readable at start.",
        "\"/etc/pigeon/fullchain.pem\"",
    ),
    unset(
        "tls.key",
        "PEM private key: PKCS#8, PKCS#1 or SEC1 (--key). Must be readable at start.",
        "\"/etc/pigeon/privkey.pem\"",
    ),
    key(
        "limits.max_frame_bytes",
        "Largest frame accepted or sent, in bytes; a bigger frame is refused\n\
         before its body is read.",
    ),
    key(
        "limits.max_content_bytes",
        "Largest message content, in bytes; at least 1 KiB below max_frame_bytes.",
    ),
    key(
        "limits.max_connections",
        "Connections beyond this are closed right after accept.",
    ),
    key("limits.backlog", "The listen backlog."),
    key(
        "limits.outbound_queue",
        "Answers queued per connection; when full, the connection stops reading\n\
         requests until the peer catches up.",
    ),
    key("limits.max_pull", "Most entries one pull returns."),
    key(
        "limits.requests_per_sec",
        "Requests per second one connection may make on average; above it\n\
         (after the burst) requests get RATE_LIMITED with retry_after_ms.",
    ),
    key(
        "limits.request_burst",
        "Requests one connection may make at once above that rate.",
    ),
    key(
        "limits.sends_per_sec",
        "Sends per second one connection may make on average (RATE_LIMITED above).",
    ),
    key(
        "limits.send_burst",
        "Sends one connection may make at once above that rate.",
    ),
    key(
        "limits.handshakes_per_address",
        "TLS handshakes in progress at once from one peer address; more are\n\
         closed at accept.",
    ),
    key(
        "limits.ephemeral_per_sec",
        "Typing and presence requests per second one connection may make\n\
         (RATE_LIMITED above).",
    ),
    key(
        "limits.ephemeral_burst",
        "Typing and presence requests one connection may make at once above that rate.",
    ),
    key(
        "timeouts.handshake",
        "From accept to the end of the TLS handshake.",
    ),
    key(
        "timeouts.login",
        "From the end of the handshake to a successful login.",
    ),
    key(
        "timeouts.heartbeat_interval",
        "How often clients are told to send a Ping.",
    ),
    key(
        "timeouts.idle",
        "A connection silent for this long is closed; above heartbeat_interval.",
    ),
    key(
        "timeouts.write",
        "A peer that does not take a write this fast is dropped.",
    ),
    key(
        "timeouts.shutdown",
        "After SIGTERM: how long connections get to finish the requests they\n\
         already sent before they are dropped; then the store is flushed.\n\
         Keep systemd's TimeoutStopSec above it.",
    ),
    key(
        "accounts.registration_enabled",
        "Whether clients may create accounts.",
    ),
    key("accounts.token_ttl", "Lifetime of a login token."),
    key(
        "accounts.kick_policy",
        "Which older sessions a new login replaces: \"platform_class\" (one per\n\
         device id and one per mobile/desktop/web) or \"device\" (one per device id).",
    ),
    key(
        "accounts.max_concurrent_hashes",
        "Password hashes computed at once (each ~19 MiB and a core for tens of\n\
         milliseconds); further logins wait their turn.",
    ),
    key(
        "accounts.login_failures_per_account",
        "Failed logins per account name within login_failure_window before\n\
         further attempts on it get RATE_LIMITED (unknown names count the same).",
    ),
    key(
        "accounts.login_failures_per_address",
        "Failed logins per peer address within login_failure_window before\n\
         further attempts from it get RATE_LIMITED.",
    ),
    key(
        "accounts.login_failure_window",
        "The window of the two login-failure limits.",
    ),
    key(
        "messaging.durability",
        "When a send is answered: \"fsync\" (after an fsync: survives power loss),\n\
         \"flush\" (survives a process crash) or \"buffered\" (may lose ~0.5 s).",
    ),
    key(
        "messaging.dedupe_window",
        "A resend with the same client_msg_id within this window gets the first answer.",
    ),
    key(
        "messaging.history_retention",
        "Acknowledged entries younger than this stay, so a new device can sync\n\
         recent history.",
    ),
    key(
        "messaging.device_inactive_after",
        "A device silent for this long no longer holds back garbage collection.",
    ),
    key(
        "messaging.gc_interval",
        "How often the background collector sweeps every queue.",
    ),
    key(
        "messaging.max_batch",
        "Most writes committed in one batch (one flush).",
    ),
    key(
        "messaging.commit_linger_us",
        "Microseconds a small durable batch (under 64 writes) waits, once, for\n\
         more writes before its flush; 0 never waits. Fewer, larger flushes\n\
         cost less CPU per message at moderate load; each write may wait this\n\
         much longer. Ignored with durability = \"buffered\".",
    ),
    key(
        "messaging.recall_window",
        "How long after sending a message its sender (or a group's owner or\n\
         admin) may recall it.",
    ),
    key(
        "messaging.ack_write_interval",
        "How often the acknowledgements that pulls carry are written, one cursor\n\
         write per device however many pulls it made. A crash can take back the\n\
         last interval's: those devices are sent those entries again.",
    ),
    key(
        "messaging.large_group_threshold",
        "Groups with more members than this keep one timeline that members read\n\
         (a send costs the same whatever the size) instead of an entry in every\n\
         member's queue.",
    ),
    key(
        "messaging.max_group_members",
        "No group grows above this many members (GROUP_FULL).",
    ),
    key(
        "store.auto_compact",
        "Compact after a collector sweep when the limits below say it pays\n\
         (`pigeond admin compact` compacts on demand).",
    ),
    key(
        "store.compact_min_disk_bytes",
        "No automatic compaction while the store's files take less than this.",
    ),
    key(
        "store.compact_ratio",
        "Compact when the files take more than this many times the live data\n\
         (sled's freshly written files are already 3-5 times it), and again only\n\
         once they have doubled since the last compaction.",
    ),
    key(
        "store.compact_max_live_bytes",
        "No automatic compaction above this much live data, and `admin compact`\n\
         only with --force: the copy takes about 1 s of CPU and I/O per 10 MB\n\
         of it on a 2-core VM, competing with traffic.",
    ),
    key(
        "admin.listen",
        "Where the admin listener binds, or \"off\" (--admin).",
    ),
    unset(
        "admin.token_file",
        "File holding the admin bearer token; created with a random token\n\
         (mode 0600) if missing. Unset: admin.token in data_dir.",
        "\"/etc/pigeon/admin.token\"",
    ),
    key(
        "admin.allow_non_loopback",
        "Allow admin.listen on a non-loopback address. Off so the admin API is\n\
         never exposed to the network by accident.",
    ),
    key(
        "push.enabled",
        "Run the push worker. Needs at least one provider below.",
    ),
    key(
        "push.content_preview",
        "Put the message text in the notification. Off: no content leaves the\n\
         server (a generic title, the badge, the conversation id and max seq).",
    ),
    key(
        "push.alert_title",
        "The notification title shown on the phone.",
    ),
    key(
        "push.coalesce_window",
        "Pushes to one device are at least this far apart; messages in between\n\
         only raise the badge of the one pending push.",
    ),
    key(
        "push.concurrency",
        "Deliveries in flight at once, per provider.",
    ),
    key(
        "push.backoff_base",
        "First retry delay after a 429, 5xx, timeout or connection error;\n\
         doubles per attempt, with full jitter.",
    ),
    key(
        "push.backoff_cap",
        "Longest retry delay (a provider's Retry-After may ask for more, up to 1h).",
    ),
    key(
        "push.max_attempts",
        "Deliveries tried for one push before it is dropped (and logged).",
    ),
    key(
        "push.request_timeout",
        "One provider request, connecting included; a slower one is retried.",
    ),
    key(
        "push.poll_interval",
        "How often the outbox is checked for pushes whose retry time came.",
    ),
    unset(
        "push.ca_file",
        "Trust only this CA (PEM) for provider endpoints instead of the system's\n\
         roots (a TLS-inspecting proxy, or tests).",
        "\"/etc/pigeon/proxy-ca.pem\"",
    ),
    unset(
        "push.apns_key_file",
        "APNs token-auth key (.p8) from the Apple developer account. Setting it\n\
         turns APNs on; apns_key_id and apns_team_id must be set with it.",
        "\"/etc/pigeon/AuthKey_ABC123DEFG.p8\"",
    ),
    unset(
        "push.apns_key_id",
        "The APNs key's id (10 characters).",
        "\"ABC123DEFG\"",
    ),
    unset(
        "push.apns_team_id",
        "The Apple developer team id (10 characters).",
        "\"DEF123GHIJ\"",
    ),
    unset(
        "push.apns_topic",
        "The app's bundle id, for devices that registered without a topic.",
        "\"com.example.chat\"",
    ),
    key("push.apns_endpoint", "Production APNs base URL."),
    key(
        "push.apns_sandbox_endpoint",
        "Sandbox APNs base URL, for tokens of development builds.",
    ),
    unset(
        "push.fcm_service_account_file",
        "Google service-account key (JSON) allowed to send with Firebase Cloud\n\
         Messaging. Setting it turns FCM on.",
        "\"/etc/pigeon/firebase-service-account.json\"",
    ),
    unset(
        "push.fcm_project_id",
        "Firebase project id. Unset: the service account's project_id.",
        "\"example-chat\"",
    ),
    key(
        "push.fcm_endpoint",
        "FCM HTTP v1 base URL (/v1/projects/ID/messages:send is appended).",
    ),
    unset(
        "push.fcm_token_endpoint",
        "OAuth2 token URL. Unset: the service account's token_uri.",
        "\"https://oauth2.googleapis.com/token\"",
    ),
    unset(
        "push.webhook_url",
        "HTTPS URL that gets a signed JSON POST per push for devices registered\n\
         for the webhook. Set with webhook_secret_file.",
        "\"https://push-relay.example.com/pigeon\"",
    ),
    unset(
        "push.webhook_secret_file",
        "File holding the webhook's HMAC-SHA256 secret (trailing newline ignored).",
        "\"/etc/pigeon/webhook.secret\"",
    ),
];

/// The documented key with this dotted name.
pub fn find(key: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|k| k.key == key)
}

/// The TOML table of the config with this name.
pub fn section(name: &str) -> Option<&'static str> {
    SECTIONS.iter().map(|(s, _)| *s).find(|s| *s == name)
}

/// The environment variable for a key: `PIGEON_` and the dotted name in
/// capitals with dots as underscores (`timeouts.idle` → `PIGEON_TIMEOUTS_IDLE`).
pub fn env_name(key: &str) -> String {
    format!("PIGEON_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The key an environment variable sets, if it is one of ours.
pub fn by_env(name: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|k| env_name(k.key) == name)
}

/// The complete default config file, commented, values taken from
/// [`Config::default`] serialized the same way a file is read.
pub fn default_toml() -> String {
    let defaults = toml::Table::try_from(Config::default())
        .expect("the default config serializes to a TOML table");
    let mut out = String::from(HEADER);
    let mut section = "";
    for doc in KEYS {
        let (table, name) = doc.key.split_once('.').unwrap_or(("", doc.key));
        if table != section {
            section = table;
            let (_, about) = SECTIONS
                .iter()
                .find(|(s, _)| *s == table)
                .expect("every key's table is in SECTIONS");
            out.push('\n');
            comment(&mut out, about);
            out.push_str(&format!("[{table}]\n"));
        }
        out.push('\n');
        comment(&mut out, doc.doc);
        comment(&mut out, &format!("env {}", env_name(doc.key)));
        let value = if table.is_empty() {
            defaults.get(name)
        } else {
            defaults.get(table).and_then(|t| t.get(name))
        };
        match (value, doc.example) {
            (Some(value), _) => out.push_str(&format!("{name} = {value}\n")),
            (None, Some(example)) => out.push_str(&format!("# {name} = {example}\n")),
            (None, None) => unreachable!("{} has neither a default nor an example", doc.key),
        }
    }
    out
}

const HEADER: &str = "\
# pigeond configuration, printed by `pigeond config default` with every key
# at its default value. Check a file with `pigeond config check FILE`.
#
# Precedence: built-in defaults < this file < PIGEON_* environment variables
# < command-line flags. A key's variable is PIGEON_ and its dotted name in
# capitals, dots as underscores: timeouts.shutdown is PIGEON_TIMEOUTS_SHUTDOWN.
# Durations are written \"500ms\", \"10s\", \"5m\", \"24h\" or \"7d\".
# Unknown keys are an error.
";

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
}
