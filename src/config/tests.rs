//! Loading, precedence, validation and the generated default config.

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
    let env = [(
        "PIGEON_MESSAGING_DURABILITY".to_string(),
        "sometimes".to_string(),
    )];
    let err = Config::load(None, env).unwrap_err().to_string();
    assert!(err.contains("messaging.durability"), "{err}");
    assert!(err.contains("PIGEON_MESSAGING_DURABILITY"), "{err}");
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
    let mut c = Config::default();
    c.messaging.ack_write_interval = std::time::Duration::ZERO;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("messaging.ack_write_interval"), "{err}");
    let mut c = Config::default();
    c.messaging.commit_linger_us = 100_001;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("messaging.commit_linger_us"), "{err}");
    c.messaging.commit_linger_us = 0;
    c.validate().expect("0 turns the linger off");
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str) -> Result<Config, String> {
    Config::from_toml(text, Path::new("pigeond.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_printed_default_parses_back_to_the_defaults() {
    assert_eq!(parse(&keys::default_toml()).unwrap(), Config::default());
}

/// Every key `Config` serializes has a doc entry and every doc entry is a
/// real key, so `config default` and the env names cannot drift from the
/// structs. Options are unset by default; set them all here (a new optional
/// key must be added to this list).
#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let mut full = Config::default();
    full.tls.cert = Some("cert.pem".into());
    full.tls.key = Some("key.pem".into());
    full.admin.token_file = Some("admin.token".into());
    let p = &mut full.push;
    p.ca_file = Some("ca.pem".into());
    p.apns_key_file = Some("key.p8".into());
    p.apns_key_id = Some("K".into());
    p.apns_team_id = Some("T".into());
    p.apns_topic = Some("com.example".into());
    p.fcm_service_account_file = Some("sa.json".into());
    p.fcm_project_id = Some("p".into());
    p.fcm_token_endpoint = Some("https://t".into());
    p.webhook_url = Some("https://w".into());
    p.webhook_secret_file = Some("s".into());
    let table = toml::Table::try_from(&full).unwrap();
    let mut serialized = Vec::new();
    for (name, value) in &table {
        match value.as_table() {
            Some(section) => {
                assert!(keys::section(name).is_some(), "[{name}] has no doc");
                serialized.extend(section.keys().map(|k| format!("{name}.{k}")));
            }
            None => serialized.push(name.clone()),
        }
    }
    let mut documented: Vec<String> = keys::KEYS.iter().map(|k| k.key.to_owned()).collect();
    serialized.sort();
    documented.sort();
    assert_eq!(serialized, documented);

    let defaults = toml::Value::try_from(Config::default()).unwrap();
    for doc in keys::KEYS {
        // Unset-by-default keys are exactly those with an example, and the
        // example is a valid value.
        assert_eq!(
            lookup(&defaults, doc.key).is_none(),
            doc.example.is_some(),
            "{}",
            doc.key
        );
        if let Some(example) = doc.example {
            let value: toml::Value = example.parse().unwrap();
            Config::with_value(Config::default(), doc.key, value).unwrap();
        }
    }
}

#[test]
fn unknown_keys_are_named_with_their_table() {
    let err = parse("[timeouts]\nidel = \"2m\"\n").unwrap_err();
    assert!(err.contains("unknown key `timeouts.idel`"), "{err}");
    let err = parse("[metrics]\nport = 1\n").unwrap_err();
    assert!(err.contains("unknown key `metrics`"), "{err}");
    let err = parse("verbose = true\n").unwrap_err();
    assert!(err.contains("unknown key `verbose`"), "{err}");
    let err = parse("tls = \"x\"\n").unwrap_err();
    assert!(err.contains("`tls`: must be a table"), "{err}");
}

#[test]
fn bad_values_are_named_with_their_key_and_problem() {
    let err = parse("[timeouts]\nshutdown = \"10 parsecs\"\n").unwrap_err();
    assert!(err.contains("config key `timeouts.shutdown`"), "{err}");
    assert!(err.contains("unit must be ms, s, m, h or d"), "{err}");
    let err = parse("listen = \"localhost:7443\"\n").unwrap_err();
    assert!(err.contains("config key `listen`"), "{err}");
    assert!(err.contains("localhost:7443"), "{err}");
    let err = parse("[limits]\nbacklog = \"big\"\n").unwrap_err();
    assert!(err.contains("config key `limits.backlog`"), "{err}");
    let err = parse("[messaging]\ndurability = \"sometimes\"\n").unwrap_err();
    assert!(err.contains("config key `messaging.durability`"), "{err}");
    let err = parse("listen = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n").unwrap_err();
    assert!(err.contains("pigeond.toml"), "{err}");
}

#[test]
fn the_admin_listener_is_switched_off_with_off() {
    let c = parse("[admin]\nlisten = \"off\"\n").unwrap();
    assert_eq!(c.admin.listen, None);
    let text = toml::to_string(&c).unwrap();
    assert_eq!(parse(&text).unwrap(), c);
    let c = Config::load(None, env(&[("PIGEON_ADMIN_LISTEN", "off")])).unwrap();
    assert_eq!(c.admin.listen, None);
    let err = parse("[admin]\nlisten = \"of\"\n").unwrap_err();
    assert!(err.contains("config key `admin.listen`"), "{err}");
}

#[test]
fn a_non_loopback_admin_listener_needs_allow_non_loopback() {
    let c = parse("[admin]\nlisten = \"0.0.0.0:7444\"\n").unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("config key `admin.listen`"), "{err}");
    assert!(err.contains("allow_non_loopback"), "{err}");
    let c = parse("[admin]\nlisten = \"0.0.0.0:7444\"\nallow_non_loopback = true\n").unwrap();
    c.validate().unwrap();
}

#[test]
fn precedence_is_defaults_then_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pigeon.toml");
    let file = "listen = \"127.0.0.1:1001\"\ndata_dir = \"from-file\"\n\
                [timeouts]\nshutdown = \"5s\"\n[limits]\nbacklog = 10\n";
    std::fs::write(&path, file).unwrap();
    let vars = env(&[
        ("PIGEON_LISTEN", "127.0.0.1:1002"),
        ("PIGEON_TIMEOUTS_SHUTDOWN", "7s"),
        ("PIGEON_LIMITS_MAX_PULL", "5"),
        ("PIGEON_ACCOUNTS_REGISTRATION_ENABLED", "false"),
        ("PIGEON_PASSWORD", "a client's variable, ignored"),
    ]);
    let mut c = Config::load(Some(&path), vars).unwrap();
    Overrides {
        listen: Some("127.0.0.1:1003".parse().unwrap()),
        admin_listen: Some(None),
        ..Overrides::default()
    }
    .apply(&mut c);
    assert_eq!(c.listen.port(), 1003, "flag over env over file");
    assert_eq!(c.data_dir, PathBuf::from("from-file"), "file over default");
    assert_eq!(c.timeouts.shutdown, Duration::from_secs(7), "env over file");
    assert_eq!(c.limits.backlog, 10);
    assert_eq!(c.limits.max_pull, 5);
    assert!(!c.accounts.registration_enabled);
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.timeouts.login, Duration::from_secs(10), "default kept");
}

#[test]
fn bad_environment_values_name_the_key_and_the_variable() {
    let err = Config::load(None, env(&[("PIGEON_LIMITS_BACKLOG", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("config key `limits.backlog`"), "{err}");
    assert!(err.contains("PIGEON_LIMITS_BACKLOG"), "{err}");
    let err = Config::load(None, env(&[("PIGEON_TIMEOUTS_IDLE", "5")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("config key `timeouts.idle`"), "{err}");
}

#[test]
fn certificate_files_must_exist_and_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    let missing = dir.path().join("missing.pem");
    c.tls.cert = Some(missing.clone());
    c.tls.key = Some(dir.path().to_owned());
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("config key `tls.cert`"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not checked here").unwrap();
    c.tls.cert = Some(cert);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("config key `tls.key`"), "{err}");
    assert!(err.contains("is not a file"), "{err}");
}

#[test]
fn push_is_off_by_default_without_content() {
    let c = Config::default();
    assert!(!c.push.enabled);
    assert!(!c.push.content_preview);
    assert_eq!(c.push.coalesce_window, Duration::from_secs(10));
}

#[test]
fn push_validation_names_the_key() {
    let check = |tweak: &dyn Fn(&mut Config)| {
        let mut c = Config::default();
        tweak(&mut c);
        c.validate().unwrap_err().to_string()
    };
    let err = check(&|c| c.push.enabled = true);
    assert!(err.contains("push.enabled"), "{err}");
    let err = check(&|c| c.push.apns_key_id = Some("K".into()));
    assert!(err.contains("push.apns_key_file"), "{err}");
    let err = check(&|c| c.push.webhook_url = Some("http://plain".into()));
    assert!(err.contains("push.webhook_url"), "{err}");
    let err = check(&|c| c.push.fcm_endpoint = "ftp://x".into());
    assert!(err.contains("push.fcm_endpoint"), "{err}");
    let err = check(&|c| c.push.backoff_cap = Duration::from_millis(1));
    assert!(err.contains("push.backoff_cap"), "{err}");
    let err = check(&|c| c.push.concurrency = 0);
    assert!(err.contains("push.concurrency"), "{err}");
    let err = check(&|c| {
        c.push.webhook_url = Some("https://example.com/hook".into());
        c.push.webhook_secret_file = Some("/nonexistent/secret".into());
    });
    assert!(err.contains("push.webhook_secret_file"), "{err}");
}

#[test]
fn push_keys_come_from_the_environment() {
    let env = [
        ("PIGEON_PUSH_ENABLED".to_string(), "true".to_string()),
        ("PIGEON_PUSH_COALESCE_WINDOW".to_string(), "3s".to_string()),
        ("PIGEON_PUSH_APNS_KEY_ID".to_string(), "ABC".to_string()),
    ];
    let c = Config::load(None, env).unwrap();
    assert!(c.push.enabled);
    assert_eq!(c.push.coalesce_window, Duration::from_secs(3));
    assert_eq!(c.push.apns_key_id.as_deref(), Some("ABC"));
}
