//! A real `pigeond` child process, for tests that kill, stop or signal it.
//! It logs JSON to a pipe that is drained all the time (so the child never
//! blocks on it); the address comes from its "serving" log record.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::WAIT;

/// A pigeond child, killed when dropped.
pub struct Pigeond {
    pub child: Child,
}

/// `pigeond serve --log-json --admin off --data DIR --listen ADDR` plus `extra`.
pub fn serve_args(data: &Path, listen: &str, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "serve",
        "--log-json",
        "--admin",
        "off",
        "--listen",
        listen,
        "--data",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(data.as_os_str().to_owned());
    args.extend(extra.iter().map(OsString::from));
    args
}

impl Pigeond {
    /// Spawn without waiting; the receiver yields the address once it serves.
    pub fn spawn(args: Vec<OsString>) -> (Pigeond, oneshot::Receiver<SocketAddr>) {
        Pigeond::spawn_with_env(args, &[])
    }

    /// [`Pigeond::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        args: Vec<OsString>,
        env: &[(&str, &OsStr)],
    ) -> (Pigeond, oneshot::Receiver<SocketAddr>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pigeond"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pigeond starts");
        let (serving_tx, serving) = oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        tokio::spawn(async move {
            let mut serving_tx = Some(serving_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if record["fields"]["message"] != "serving" {
                    continue;
                }
                let addr = record["fields"]["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok());
                if let (Some(tx), Some(addr)) = (serving_tx.take(), addr) {
                    // The test may have stopped waiting; nothing to do then.
                    let _ = tx.send(addr);
                }
            }
        });
        (Pigeond { child }, serving)
    }

    /// Spawn and wait until it serves; returns it with its address.
    pub async fn start(args: Vec<OsString>) -> (Pigeond, SocketAddr) {
        Pigeond::start_with_env(args, &[]).await
    }

    /// [`Pigeond::start`] with extra environment variables.
    pub async fn start_with_env(
        args: Vec<OsString>,
        env: &[(&str, &OsStr)],
    ) -> (Pigeond, SocketAddr) {
        let (process, serving) = Pigeond::spawn_with_env(args, env);
        let addr = tokio::time::timeout(WAIT, serving)
            .await
            .expect("pigeond serves in time")
            .expect("pigeond serves before exiting");
        (process, addr)
    }

    /// SIGKILL, and reap it.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL is delivered");
        self.child.wait().await.expect("pigeond is reaped");
    }
}
