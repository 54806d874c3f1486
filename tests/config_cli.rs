//! `pigeond config default` and `pigeond config check FILE`, run as the real
//! binary: the printed default is the code's default, and every refused file
//! exits non-zero with a message naming the key and the problem.

use std::path::Path;
use std::process::{Command, Output};

use pigeon_server::config::Config;

fn pigeond(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pigeond"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("pigeond runs")
}

/// Write `text` as a config file and run `config check` on it.
fn check(dir: &Path, text: &str) -> Output {
    let path = dir.join("pigeond.toml");
    std::fs::write(&path, text).unwrap();
    pigeond(&["config", "check", path.to_str().unwrap()])
}

/// Assert `config check` refused the file and said all of `needles`.
#[track_caller]
fn assert_refused(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted; stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no `{needle}` in: {stderr}");
    }
}

#[test]
fn the_printed_default_config_is_the_default_and_passes_check() {
    let output = pigeond(&["config", "default"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let parsed = Config::from_toml(&text, Path::new("(stdout)")).unwrap();
    assert_eq!(parsed, Config::default());
    // Every section and documented key is in it, with comments.
    for doc in pigeon_server::config::keys::KEYS {
        let name = doc.key.rsplit('.').next().unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name} = "))
                    || l.starts_with(&format!("# {name} = "))),
            "{} missing",
            doc.key
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), &text);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok"));
}

#[test]
fn a_good_file_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let text = format!(
        "listen = \"0.0.0.0:7443\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [timeouts]\nshutdown = \"20s\"\n\
         [admin]\nlisten = \"off\"\n",
        certs.join("server.pem").display(),
        certs.join("server.key").display(),
    );
    let output = check(dir.path(), &text);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn the_packaged_example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/pigeond.toml");
    let config = Config::from_file(&path).unwrap();
    assert_eq!(config.data_dir, Path::new("/var/lib/pigeon"));
    // systemd must not SIGKILL before the shutdown timeout and the flush.
    let unit = std::fs::read_to_string(path.with_file_name("pigeond.service")).unwrap();
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    let stop = pigeon_server::config::duration_text::parse(stop).unwrap();
    assert!(config.timeouts.shutdown + std::time::Duration::from_secs(10) <= stop);
    // Its certificate paths exist only on a real host, so validate() is
    // not run here; everything else must be valid.
    let config = Config {
        tls: Default::default(),
        ..config
    };
    config.validate().unwrap();
}

#[test]
fn an_unknown_key_is_refused_by_its_dotted_name() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), "[timeouts]\nshutdwon = \"5s\"\n");
    assert_refused(&output, &["unknown key `timeouts.shutdwon`"]);
}

#[test]
fn a_bad_duration_is_refused_with_its_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), "[timeouts]\nshutdown = \"30\"\n");
    assert_refused(&output, &["config key `timeouts.shutdown`", "no unit"]);
}

#[test]
fn a_bad_address_is_refused_with_its_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), "listen = \"pigeon.example.com:7443\"\n");
    assert_refused(
        &output,
        &[
            "config key `listen`",
            "pigeon.example.com:7443",
            "invalid socket address",
        ],
    );
}

#[test]
fn a_missing_certificate_file_is_refused_with_its_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-cert.pem");
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/server.key");
    let text = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        missing.display(),
        key.display()
    );
    let output = check(dir.path(), &text);
    assert_refused(
        &output,
        &[
            "config key `tls.cert`",
            &missing.display().to_string(),
            "No such file",
        ],
    );
}

#[test]
fn a_non_loopback_admin_listener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), "[admin]\nlisten = \"0.0.0.0:7444\"\n");
    assert_refused(
        &output,
        &["config key `admin.listen`", "admin.allow_non_loopback"],
    );
}

#[test]
fn a_missing_config_file_is_refused_with_its_path() {
    let output = pigeond(&["config", "check", "/nonexistent/pigeond.toml"]);
    assert_refused(&output, &["/nonexistent/pigeond.toml"]);
}

#[tokio::test]
async fn serve_refuses_a_bad_environment_value_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pigeond"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--data",
        ])
        .arg(dir.path())
        .env("PIGEON_TIMEOUTS_SHUTDOWN", "soon")
        .env_remove("RUST_BACKTRACE")
        .kill_on_drop(true)
        .output();
    // Bounded: a pigeond that wrongly accepted the value would serve forever.
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), child)
        .await
        .expect("pigeond exits at once")
        .unwrap();
    assert_refused(
        &output,
        &["config key `timeouts.shutdown`", "PIGEON_TIMEOUTS_SHUTDOWN"],
    );
}
