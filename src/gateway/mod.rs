//! The network edge: listener and socket options, TLS (reloadable), and one
//! task per connection that turns frames into service calls. The gateway
//! never touches the store.

mod answers;
mod connection;
mod handlers;
pub mod limits;
pub mod tls;
mod tls_stream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Limits, Timeouts};
use crate::service::{Accounts, Messaging};
use crate::session::SessionRegistry;

/// Keepalive probes let the kernel find peers that vanished without a FIN
/// even when the application-level idle timer is long.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bind the public listener: SO_REUSEADDR (restart without waiting for
/// TIME_WAIT), the configured backlog, non-blocking for tokio.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Everything a connection task needs, shared by all of them.
pub struct Gateway {
    /// The certificate presented, swapped on reload; each connection takes
    /// the current config.
    pub tls: Arc<tls::ServerTls>,
    /// Register, login, logout.
    pub accounts: Arc<Accounts>,
    /// Send, pull, ack.
    pub messaging: Arc<Messaging>,
    /// Who is online.
    pub registry: Arc<SessionRegistry>,
    /// Size limits.
    pub limits: Limits,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Counters; only observed, never consulted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Failed logins per account name.
    pub login_failures_by_account: limits::FailureLimiter,
    /// Failed logins per peer address.
    pub login_failures_by_address: limits::FailureLimiter,
}

impl Gateway {
    /// Accept connections until `shutdown`, then wait for every connection
    /// task to finish its in-flight requests and close, for at most
    /// `timeouts.shutdown`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let handshakes = limits::HandshakeGate::new(self.limits.handshakes_per_address);
        let next_id = AtomicU64::new(1);
        // Cancelled when the shutdown grace runs out: drops what is left.
        let abandon = CancellationToken::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached; closing new connection");
                continue;
            };
            let Some(handshake) = handshakes.enter(peer.ip()) else {
                tracing::debug!(%peer, "too many handshakes in progress from this address; closing");
                continue;
            };
            configure(&stream);
            let conn_id = next_id.fetch_add(1, Ordering::Relaxed);
            let accepted = Box::new(connection::Accepted {
                stream,
                peer,
                handshake,
            });
            tracker.spawn(
                self.clone()
                    .connection_task(accepted, slot, conn_id, &shutdown, &abandon),
            );
        }
        drop(listener);
        tracker.close();
        self.drain(&tracker, &abandon).await;
    }

    /// After shutdown: give connections `timeouts.shutdown` to answer what
    /// they have read and send their kick, then drop the rest (a peer that
    /// does not read, a handshake that never ends) so the process can exit.
    async fn drain(&self, tracker: &TaskTracker, abandon: &CancellationToken) {
        let grace = self.timeouts.shutdown;
        tracing::info!(
            connections = tracker.len(),
            grace_ms = grace.as_millis() as u64,
            "stopped accepting; closing connections"
        );
        if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
            tracing::info!("all connections closed");
            return;
        }
        tracing::warn!(
            connections = tracker.len(),
            "connections still open after timeouts.shutdown; dropping them"
        );
        abandon.cancel();
        tracker.wait().await;
    }
}

impl Gateway {
    /// The task that serves one connection, in its span; `abandon` drops it
    /// when the shutdown grace runs out. Its size is most of what an idle
    /// connection costs (see `connection::run`).
    /// `slot` is its place under `limits.max_connections`, freed when the
    /// task ends.
    ///
    /// The span is at `debug`, the level of everything a connection logs
    /// but its login, logout and device revocation, which name the peer,
    /// user and device themselves: an enabled span costs ~400 bytes per
    /// connection for as long as it lives (the subscriber's slot and its
    /// formatted fields), 5 % of an idle connection (docs/performance.md).
    fn connection_task(
        self: Arc<Self>,
        accepted: Box<connection::Accepted>,
        slot: tokio::sync::OwnedSemaphorePermit,
        conn_id: u64,
        shutdown: &CancellationToken,
        abandon: &CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let span = tracing::debug_span!(
            "conn",
            conn_id,
            peer = %accepted.peer,
            user_id = tracing::field::Empty,
            device = tracing::field::Empty
        );
        let shutdown = shutdown.clone();
        let abandon = abandon.clone();
        async move {
            tokio::select! {
                _ = connection::run(accepted, self, shutdown) => {}
                _ = abandon.cancelled() => tracing::debug!("dropped at shutdown"),
            }
            drop(slot);
        }
        .instrument(span)
    }
}

fn configure(stream: &TcpStream) {
    // Failures here only cost latency or dead-peer detection; log and go on.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "set_tcp_keepalive failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's memory is mostly its task's future; every
    /// phase it is not in is boxed (`connection::run`). This holds the
    /// size where the idle-memory figures in docs/performance.md put it
    /// (6.8 KiB before the phases were boxed).
    #[tokio::test]
    async fn connection_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        config.admin.listen = None;
        let server = crate::Server::open(config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (stream, peer) = accepted.unwrap();
        let gate = limits::HandshakeGate::new(1);
        let accepted = Box::new(connection::Accepted {
            stream,
            peer,
            handshake: gate.enter(peer.ip()).unwrap(),
        });
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let token = CancellationToken::new();
        let task = server
            .gateway
            .clone()
            .connection_task(accepted, slot, 1, &token, &token);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1792, "a connection's future is {size} bytes");
        drop((task, client));
    }
}
