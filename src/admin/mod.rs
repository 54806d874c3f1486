//! The admin listener: loopback HTTP/1.1 beside the public TLS port, for
//! operators and their tools, never for clients.
//!
//! ```text
//!  GET  /healthz                          no token: the process answers
//!  GET  /readyz                           no token: listener up, writer running, store writable
//!  GET  /metrics                          token: Prometheus text
//!  GET  /v1/users?after=ID&limit=N        token: list users
//!  POST /v1/users {username,password}     token: add a user
//!  GET  /v1/users/NAME                    token: show a user (devices, queue)
//!  POST /v1/users/NAME/disable|enable     token: disabling kicks live sessions
//!  POST /v1/users/NAME/password {password} token: new password, tokens revoked, sessions kicked
//!  GET  /v1/users/NAME/devices            token: devices with cursors and online state
//!  POST /v1/users/NAME/devices/DEV/revoke token: the device's tokens revoked, its session kicked
//!  GET  /v1/stats?top=N                   token: sessions by platform, deepest queues, store size
//!  POST /v1/backup {to}                   token: consistent copy of the store into a new directory
//!  POST /v1/compact[?force=true]          token: rewrite the store into fresh files, give space back
//! ```
//!
//! Every route but the two probes needs `Authorization: Bearer <token>`,
//! the token from the token file (see [`token`]). The listener refuses
//! non-loopback addresses unless the config allows them. Owns the listener,
//! the routes and the admin's client and command line; it reaches the
//! services and the session registry, never sockets of clients.

pub mod cli;
pub mod client;
pub mod http;
mod routes;
mod stats;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::service::{Accounts, CommitStats, Messaging};
use crate::session::SessionRegistry;
use crate::store::{Store, StoreStats};

/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 16;
/// Reading one whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing one response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After refusing a malformed request: how long, and how many bytes, the
/// rest of it is read and dropped before closing.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;
/// After stop: how long requests in flight (a backup) get to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the admin side can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token file could not be read or written.
    #[error("admin token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file holds no usable token.
    #[error("{0}")]
    BadToken(String),
    /// The admin listener would not bind.
    #[error("cannot listen for admin on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin endpoint could not be reached or did not answer in time.
    #[error("admin endpoint {addr}: {message}")]
    Unreachable {
        /// Where it was tried.
        addr: SocketAddr,
        /// What happened.
        message: String,
        /// True if nothing listens there (the server is stopped).
        refused: bool,
    },
    /// The server answered with an error.
    #[error("the server refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// A command-line problem (bad flags, no password).
    #[error("{0}")]
    Usage(String),
    /// The config could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store failed (offline commands).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Everything the routes reach.
pub struct Context {
    /// The store, for reads, stats and backups.
    pub store: Arc<dyn Store>,
    /// Account changes (hashing, disabling, revoking).
    pub accounts: Arc<Accounts>,
    /// The message path (its committer's queue and liveness).
    pub messaging: Arc<Messaging>,
    /// Who is online, to kick.
    pub registry: Arc<SessionRegistry>,
    /// The server's counters.
    pub metrics: Arc<Metrics>,
    /// The committer's counters.
    pub commit_stats: Arc<CommitStats>,
    /// True while the public listener accepts (false before `serve` and
    /// once shutdown begins).
    pub serving: Arc<AtomicBool>,
    /// The bearer token.
    pub token: String,
    /// Store counters from the last scrape; `len()` walks trees, so
    /// scrapes reuse a recent value.
    pub(crate) store_stats: Mutex<Option<(Instant, StoreStats)>>,
    /// Above this much live data a compaction must be forced (the copy
    /// costs CPU and I/O in proportion); `store.compact_max_live_bytes`.
    pub compact_max_live_bytes: u64,
}

impl Context {
    /// A context over the server's parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        accounts: Arc<Accounts>,
        messaging: Arc<Messaging>,
        registry: Arc<SessionRegistry>,
        metrics: Arc<Metrics>,
        serving: Arc<AtomicBool>,
        token: String,
    ) -> Context {
        let commit_stats = messaging.committer().stats();
        Context {
            store,
            accounts,
            messaging,
            registry,
            metrics,
            commit_stats,
            serving,
            token,
            store_stats: Mutex::new(None),
            compact_max_live_bytes: crate::config::StoreSettings::default().compact_max_live_bytes,
        }
    }
}

/// A running admin listener.
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Bind `addr` and serve in the background.
    pub async fn start(addr: SocketAddr, context: Arc<Context>) -> Result<AdminServer, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, context, stop.clone()));
        tracing::info!(%addr, "admin listener up");
        Ok(AdminServer { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, give requests in flight a moment, and release the
    /// context (so the committer can stop).
    pub async fn stop(self) {
        self.stop.cancel();
        if self.task.await.is_err() {
            tracing::error!("the admin listener task failed");
        }
    }
}

async fn serve(listener: TcpListener, context: Arc<Context>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let abandon = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many admin connections; closing one");
            continue;
        };
        let context = context.clone();
        let abandon = abandon.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = handle(stream, &context) => {}
                _ = abandon.cancelled() => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(STOP_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("admin requests still running at shutdown; dropping them");
        abandon.cancel();
        tracker.wait().await;
    }
}

async fn handle(mut stream: TcpStream, context: &Context) {
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let (response, unread) = match http::read_request(&mut stream, deadline).await {
        Ok(request) => (routes::route(context, request).await, false),
        Err(e) => match e.status() {
            Some(status) => (http::Response::error(status, &e), true),
            None => return,
        },
    };
    if let Err(e) = http::write_response(&mut stream, &response, WRITE_TIMEOUT).await {
        tracing::debug!(error = %e, "admin response not written");
        return;
    }
    if unread {
        // Closing with unread input makes the kernel send RST, which can
        // destroy the error answer before the peer reads it: take (and
        // drop) a bounded amount of what it is still sending first.
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        let until = tokio::time::Instant::now() + LINGER;
        while left > 0 {
            match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    }
}
