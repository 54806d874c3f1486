//! A real `pigeond` child process for the network fault tests (tls, pause):
//! started with a TOML config on an ephemeral loopback port, its JSON log
//! delivered as records so a test can wait for "tls certificate reloaded"
//! or "idle timeout" instead of sleeping, and signals (HUP, STOP, CONT).

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long to wait for any one expected log record.
const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A pigeond child, killed when dropped.
pub struct Pigeond {
    child: Child,
    /// The public listener.
    pub addr: SocketAddr,
    /// Log records after "serving", as they come.
    log: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Pigeond {
    /// `pigeond serve --config DIR/pigeond.toml --data DIR/data` with
    /// `config` as the file, on 127.0.0.1:0, admin off; waits until it serves.
    /// `rust_log` is its RUST_LOG (debug for the gateway to see idle closes).
    pub async fn start(dir: &Path, config: &str, rust_log: &str) -> Pigeond {
        let config_path = dir.join("pigeond.toml");
        std::fs::write(&config_path, config).expect("config file is written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pigeond"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--admin", "off", "--log-json"])
            .arg("--data")
            .arg(dir.join("data"))
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pigeond starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let (tx, mut log) = mpsc::unbounded_channel();
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) {
                    // The test may have stopped listening; that is fine.
                    let _ = tx.send(record);
                }
            }
        });
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(record) = log.recv().await {
                if record["fields"]["message"] == "serving" {
                    let addr = record["fields"]["addr"].as_str().expect("addr field");
                    return addr.parse().expect("addr parses");
                }
            }
            panic!("pigeond exited before serving");
        })
        .await
        .expect("pigeond reports its address");
        Pigeond { child, addr, log }
    }

    /// Send a signal by name (`HUP`, `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("pigeond still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// The next log record whose message is `message`, skipping others;
    /// fails after 20 s.
    pub async fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        self.wait_for(|record| record["fields"]["message"] == message)
            .await
            .unwrap_or_else(|| panic!("no log record {message:?} from pigeond"))
    }

    /// The next log record for which `matches` holds, or None after 20 s
    /// (or when pigeond exits).
    pub async fn wait_for(
        &mut self,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(record) = self.log.recv().await {
                if matches(&record) {
                    return Some(record);
                }
            }
            None
        });
        found.await.ok().flatten()
    }
}
