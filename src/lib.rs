//! pigeond, the pigeon instant-messaging server, as a library.
//!
//! The data path, one module per step:
//!
//! ```text
//! frame in → gateway (TLS, framing, one task per connection)
//!          → service (rules: accounts, send, pull, ack; single writer)
//!          → store (sled, durable, group commit)
//!          → session registry (who is online) → Notify out
//! ```
//!
//! When push is on, a background worker (`push`) drains the outbox that
//! the store writes with each message for offline devices.
//!
//! [`Server::open`] wires the modules together; it is the only place that
//! knows them all. `main.rs` and the integration tests both go through it.

pub mod admin;
pub mod clock;
pub mod config;
pub mod error;
pub mod gateway;
pub mod lifecycle;
pub mod metrics;
pub mod push;
pub mod service;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::Config;
use gateway::limits::FailureLimiter;
use gateway::Gateway;
use metrics::Metrics;
use push::Providers;
use service::outbox::StoreOutbox;
use service::{
    Accounts, Batching, CommitStats, Committer, CommitterThread, Messaging, MessagingRules,
    PushSettings,
};
use session::{Notifier, SessionRegistry};
use store::{Durability, SledStore, Store, StoreError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store would not open.
    #[error("cannot open the store in {dir}")]
    Store {
        /// The data directory.
        dir: String,
        /// Why.
        source: store::StoreError,
    },
    /// The certificate or key would not load.
    #[error(transparent)]
    Tls(#[from] gateway::tls::TlsError),
    /// The admin listener would not start.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// The password-hashing threads would not start.
    #[error("cannot start the password-hashing threads: {0}")]
    Threads(std::io::Error),
    /// The listener would not bind.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A server whose store is open and whose writer runs, ready to serve.
pub struct Server {
    gateway: Arc<Gateway>,
    messaging: Arc<Messaging>,
    store: Arc<dyn Store>,
    committer_thread: CommitterThread,
    config: Config,
    metrics: Arc<Metrics>,
    /// True while the public listener accepts (readiness).
    serving: Arc<AtomicBool>,
    admin: Option<admin::AdminServer>,
    /// The push worker's outbox and provider clients, when push is on.
    push: Option<(Arc<StoreOutbox>, Arc<Providers>)>,
}

/// Opens the store, with the power-loss test hook when the config asks.
fn open_store(config: &Config) -> Result<SledStore, StoreError> {
    let store = SledStore::open(&config.data_dir, config.messaging.durability)?;
    let Some(target) = &config.test_powerloss_snapshot else {
        return Ok(store);
    };
    tracing::warn!(
        snapshots = %target.display(),
        "test only: copying the data directory after every fsync (power-loss injector)"
    );
    store.with_powerloss_snapshots(target)
}

impl Server {
    /// Validate the config, open the store, load TLS and start the writer.
    pub fn open(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let tls = Arc::new(gateway::tls::ServerTls::load(&config.tls)?);
        let store: Arc<dyn Store> =
            Arc::new(open_store(&config).map_err(|source| ServerError::Store {
                dir: config.data_dir.display().to_string(),
                source,
            })?);
        let registry = Arc::new(SessionRegistry::new(config.accounts.kick_policy));
        let notifier: Arc<dyn Notifier> = registry.clone();
        let metrics = Arc::new(Metrics::default());
        // Provider keys are read now, so a bad key stops the start.
        let providers = match config.push.enabled {
            true => Some(Arc::new(
                Providers::from_config(&config.push).map_err(config::ConfigError::from)?,
            )),
            false => None,
        };
        let push_settings = providers.as_ref().map(|_| PushSettings {
            coalesce: config.push.coalesce_window,
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        let (committer, committer_thread) = Committer::start(
            store.clone(),
            notifier.clone(),
            Batching {
                max_ops: config.messaging.max_batch,
                // Without a flush per batch there is nothing to spread.
                linger: match config.messaging.durability {
                    Durability::Buffered => Duration::ZERO,
                    _ => Duration::from_micros(config.messaging.commit_linger_us),
                },
            },
            metrics.clone(),
            push_settings.clone(),
        )
        .map_err(|source| ServerError::Store {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
        let m = &config.messaging;
        let rules = MessagingRules {
            max_content_bytes: config.limits.max_content_bytes as usize,
            max_pull: config.limits.max_pull as usize,
            dedupe_window: m.dedupe_window,
            history_retention: m.history_retention,
            device_inactive_after: m.device_inactive_after,
            recall_window: m.recall_window,
            large_group_threshold: m.large_group_threshold,
            max_group_members: m.max_group_members,
            push_preview: config.push.content_preview,
            ack_write_interval: m.ack_write_interval,
        };
        let push = match (providers, push_settings) {
            (Some(providers), Some(settings)) => {
                let outbox =
                    StoreOutbox::new(store.clone(), committer.clone(), notifier, settings.wake);
                Some((Arc::new(outbox), providers))
            }
            _ => None,
        };
        let messaging = Arc::new(Messaging::new(store.clone(), committer, rules));
        let a = &config.accounts;
        let accounts = Arc::new(
            Accounts::new(
                store.clone(),
                a.registration_enabled,
                a.token_ttl,
                a.max_concurrent_hashes,
            )
            .map_err(ServerError::Threads)?,
        );
        let gateway = Arc::new(Gateway {
            tls,
            accounts,
            messaging: messaging.clone(),
            registry,
            limits: config.limits.clone(),
            timeouts: config.timeouts.clone(),
            metrics: metrics.clone(),
            login_failures_by_account: FailureLimiter::new(
                config.accounts.login_failures_per_account,
                config.accounts.login_failure_window,
            ),
            login_failures_by_address: FailureLimiter::new(
                config.accounts.login_failures_per_address,
                config.accounts.login_failure_window,
            ),
        });
        Ok(Server {
            gateway,
            messaging,
            store,
            committer_thread,
            config,
            metrics,
            serving: Arc::new(AtomicBool::new(false)),
            admin: None,
            push,
        })
    }

    /// Start the admin listener if `admin.listen` is set, creating the
    /// token file if it is missing; returns the bound address. Before
    /// [`Server::serve`] runs, `/readyz` answers 503. Calling it again
    /// returns the running listener's address.
    pub async fn start_admin(&mut self) -> Result<Option<SocketAddr>, ServerError> {
        if let Some(admin) = &self.admin {
            return Ok(Some(admin.addr()));
        }
        let Some(addr) = self.config.admin.listen else {
            return Ok(None);
        };
        let token_path = self.config.admin.token_path(&self.config.data_dir);
        let token = admin::token::load_or_create(&token_path)?;
        let mut context = admin::Context::new(
            self.store.clone(),
            self.gateway.accounts.clone(),
            self.messaging.clone(),
            self.gateway.registry.clone(),
            self.metrics.clone(),
            self.serving.clone(),
            token,
        );
        context.compact_max_live_bytes = self.config.store.compact_max_live_bytes;
        let server = admin::AdminServer::start(addr, Arc::new(context)).await?;
        let bound = server.addr();
        self.admin = Some(server);
        Ok(Some(bound))
    }

    /// The admin listener's address, once [`Server::start_admin`] bound it.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(admin::AdminServer::addr)
    }

    /// The certificate the server presents; [`gateway::tls::ServerTls::reload`]
    /// swaps it for the one now in the configured files.
    pub fn tls(&self) -> Arc<gateway::tls::ServerTls> {
        self.gateway.tls.clone()
    }

    /// The server's counters (what `/metrics` renders).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Bind the configured listen address with the configured backlog.
    pub fn bind(&self) -> Result<TcpListener, ServerError> {
        let addr = self.config.listen;
        gateway::bind(addr, self.config.limits.backlog)
            .map_err(|source| ServerError::Bind { addr, source })
    }

    /// Group-commit counters (sends per flush = sends / syncs).
    pub fn commit_stats(&self) -> Arc<CommitStats> {
        self.messaging.committer().stats()
    }

    /// Writes the acknowledgements pulls recorded, on demand (for tools and
    /// tests that inspect the store while serving).
    pub fn ack_writer(&self) -> service::acks::AckWriter {
        service::acks::AckWriter::new(&self.messaging)
    }

    /// The store, for tools and tests that inspect it while serving.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Serve on `listener` until `shutdown` is cancelled: stop accepting,
    /// let every connection finish its in-flight requests and close (with a
    /// SERVER_SHUTDOWN kick) within `timeouts.shutdown`, drop those that
    /// did not, then drain the writer and sync the store. Tells systemd
    /// READY=1 once serving and STOPPING=1 when shutdown begins.
    pub async fn serve(mut self, listener: TcpListener, shutdown: CancellationToken) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, data_dir = %self.config.data_dir.display(), "serving");
        }
        let collector = tokio::spawn(service::collector::run(
            self.messaging.clone(),
            self.store.clone(),
            self.config.messaging.gc_interval,
            self.config.messaging.dedupe_window,
            self.config.store.clone(),
            shutdown.clone(),
        ));
        // Writes the acknowledgements pulls record. It stops after the last
        // connection, so that what the last pulls recorded is written too.
        let acks_stop = CancellationToken::new();
        let ack_writer = tokio::spawn(service::acks::run(
            self.messaging.clone(),
            self.messaging.ack_write_interval(),
            acks_stop.clone(),
        ));
        // The worker only reads the outbox and writes through the committer,
        // so it never holds up the message path.
        let pusher = self.push.take().map(|(outbox, providers)| {
            tokio::spawn(push::worker::run(
                outbox,
                providers,
                push::worker::WorkerSettings::from_config(&self.config.push),
                self.metrics.clone(),
                shutdown.clone(),
            ))
        });
        // Ready from here until shutdown begins (the admin's /readyz).
        self.serving.store(true, Ordering::Release);
        let serving = self.serving.clone();
        let unready = shutdown.clone();
        tokio::spawn(async move {
            unready.cancelled().await;
            serving.store(false, Ordering::Release);
        });
        lifecycle::notify_ready();
        let stopping = shutdown.clone();
        let announce_stopping = async move {
            stopping.cancelled().await;
            lifecycle::notify_stopping();
        };
        // Returns once every connection has closed, or was dropped when
        // timeouts.shutdown ran out.
        let gateway = self.gateway.clone().serve(listener, shutdown);
        tokio::join!(gateway, announce_stopping);
        acks_stop.cancel();
        if let Err(e) = ack_writer.await {
            tracing::error!(error = %e, "the ack writer failed");
        }
        // The collector stops on the same token; a panic in it is a bug to log.
        if let Err(e) = collector.await {
            tracing::error!(error = %e, "the collector task failed");
        }
        // The worker records outcomes through the committer: stop it (it
        // gives deliveries in flight push.request_timeout) before the writer.
        if let Some(pusher) = pusher {
            if let Err(e) = pusher.await {
                tracing::error!(error = %e, "the push worker failed");
            }
        }
        // The admin holds the message path too: stop it before the writer.
        if let Some(admin) = self.admin.take() {
            admin.stop().await;
        }
        let Server {
            gateway,
            messaging,
            committer_thread,
            store,
            ..
        } = self;
        // The writer thread exits when the last committer handle is dropped.
        drop(gateway);
        drop(messaging);
        let joined = tokio::task::spawn_blocking(move || committer_thread.join()).await;
        if joined.is_err() {
            tracing::error!("waiting for the committer failed");
        }
        release_store(store).await;
        tracing::info!("stopped");
    }
}

/// How long a stopping server waits for the last reads (a blocking task
/// that outlived its connection, a login's hash job) to let go of the store.
const STORE_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Drops the server's store once nothing else holds it, so the data
/// directory's lock is free when `serve` returns (a restart in the same
/// process, `pigeond backup` right after a stop).
async fn release_store(store: Arc<dyn Store>) {
    let deadline = tokio::time::Instant::now() + STORE_RELEASE_WAIT;
    while Arc::strong_count(&store) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("the store is still in use; it closes when the last reader ends");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Open, bind the configured address and serve until `shutdown`; reload
/// the TLS certificate and key on SIGHUP meanwhile.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let mut server = Server::open(config)?;
    let listener = server.bind()?;
    server.start_admin().await?;
    tokio::spawn(gateway::tls::reload_on_sighup(
        server.tls(),
        shutdown.clone(),
    ));
    server.serve(listener, shutdown).await;
    Ok(())
}
