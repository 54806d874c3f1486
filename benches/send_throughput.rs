//! Send throughput of a real pigeond: TLS, framing, the single writer and
//! the durable flush, measured end to end over loopback.
//!
//! One in-process server per durability mode (fresh temporary data dir), one
//! receiver and up to 100 sender users, each sender on its own connection.
//! Each run sends 100-byte messages to the receiver for a bounded time and a
//! bounded count, after a short warm-up:
//!
//! - closed loop, N = 1, 10, 100 senders: one send in flight per sender;
//! - pipelined, one sender with a window of 32 in-flight sends (answers come
//!   in request order), to show group commit on a single connection.
//!
//! The server's group-commit counters are read before and after each run, so
//! "sends per flush" is what the committer really did. Output: a markdown
//! table and one JSON line per run, on stdout; progress goes to stderr.
//!
//! ```text
//! cargo bench --bench send_throughput                 # 5 s runs, all durabilities
//! cargo bench --bench send_throughput -- --quick      # 1 s runs
//! PIGEON_BENCH_SECS=10 PIGEON_BENCH_MAX_SENDS=500000 PIGEON_BENCH_DURABILITY=fsync \
//!     cargo bench --bench send_throughput
//! ```
//!
//! Touches only loopback and a temporary directory; never a fixed port.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, Codec, Envelope, Platform, PROTOCOL_VERSION};
use pigeon_server::config::Config;
use pigeon_server::service::CommitStats;
use pigeon_server::store::Durability;
use pigeon_server::Server;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Bytes of content in every message.
const PAYLOAD_BYTES: usize = 100;
/// Sender counts of the closed-loop runs.
const SENDER_COUNTS: [usize; 3] = [1, 10, 100];
/// In-flight sends of the pipelined run.
const WINDOW: usize = 32;
/// A bound on any one network wait: a hang fails the bench instead of stalling it.
const WAIT: Duration = Duration::from_secs(20);
/// Connections registering and logging in at once (each login hashes a password).
const SETUP_CONCURRENCY: usize = 8;
const PASSWORD: &str = "bench password 123";

/// What to run, from the command line and `PIGEON_BENCH_*` variables.
struct Settings {
    run: Duration,
    warmup: Duration,
    max_sends: u64,
    durabilities: Vec<Durability>,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let quick = std::env::args().any(|a| a == "--quick")
            || std::env::var("PIGEON_BENCH_QUICK").is_ok_and(|v| v == "1");
        let secs: f64 = match std::env::var("PIGEON_BENCH_SECS") {
            Ok(v) => v
                .parse()
                .context("PIGEON_BENCH_SECS must be a number of seconds")?,
            Err(_) if quick => 1.0,
            Err(_) => 5.0,
        };
        if !(secs > 0.0 && secs <= 600.0) {
            bail!("PIGEON_BENCH_SECS must be above 0 and at most 600");
        }
        let max_sends = match std::env::var("PIGEON_BENCH_MAX_SENDS") {
            Ok(v) => v
                .parse()
                .context("PIGEON_BENCH_MAX_SENDS must be a whole number")?,
            Err(_) => 200_000,
        };
        let durabilities = match std::env::var("PIGEON_BENCH_DURABILITY") {
            Ok(v) => v.split(',').map(parse_durability).collect::<Result<_>>()?,
            Err(_) => vec![Durability::Fsync, Durability::Flush, Durability::Buffered],
        };
        let run = Duration::from_secs_f64(secs);
        Ok(Settings {
            run,
            warmup: (run / 10).clamp(Duration::from_millis(100), Duration::from_millis(500)),
            max_sends,
            durabilities,
        })
    }
}

fn parse_durability(text: &str) -> Result<Durability> {
    match text.trim() {
        "fsync" => Ok(Durability::Fsync),
        "flush" => Ok(Durability::Flush),
        "buffered" => Ok(Durability::Buffered),
        other => bail!("PIGEON_BENCH_DURABILITY: `{other}` is not fsync, flush or buffered"),
    }
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Fsync => "fsync",
        Durability::Flush => "flush",
        Durability::Buffered => "buffered",
    }
}

/// One measured run, as printed in the table and as a JSON line.
#[derive(Debug, Serialize)]
struct Report {
    durability: &'static str,
    mode: &'static str,
    senders: usize,
    window: usize,
    secs: f64,
    sends: u64,
    sends_per_sec: f64,
    /// Deltas of the server's CommitStats over the run.
    server_sends: u64,
    batches: u64,
    syncs: u64,
    sends_per_flush: f64,
    mean_sync_us: f64,
    mean_us: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
}

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    let mut reports = Vec::new();
    for &durability in &settings.durabilities {
        reports.extend(runtime.block_on(bench_durability(durability, &settings))?);
    }
    print_table(&reports);
    Ok(())
}

/// Start a server with `durability`, run every workload on it, stop it.
async fn bench_durability(durability: Durability, settings: &Settings) -> Result<Vec<Report>> {
    let bench = Bench::start(durability).await?;
    let mut reports = Vec::new();
    for n in SENDER_COUNTS {
        reports.push(bench.run(settings, "closed", n, 1).await?);
    }
    reports.push(bench.run(settings, "pipelined", 1, WINDOW).await?);
    bench.stop().await?;
    Ok(reports)
}

/// A running server with its users logged in.
struct Bench {
    durability: Durability,
    stats: Arc<CommitStats>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    receiver_id: u64,
    receiver_drain: JoinHandle<()>,
    senders: tokio::sync::Mutex<Vec<Client>>,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start(durability: Durability) -> Result<Bench> {
        let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
        let server = Server::open(bench_config(dir.path(), durability))?;
        let listener = server.bind()?;
        let addr = listener.local_addr()?;
        let stats = server.commit_stats();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(server.serve(listener, shutdown.clone()));
        let connector = tls_connector()?;

        let (mut receiver, receiver_id) =
            Client::register_and_login(addr, &connector, "receiver".into()).await?;
        // The receiver only reads: Notify pushes must not back up in its socket.
        let receiver_drain =
            tokio::spawn(async move { while let Some(Ok(_)) = receiver.frames.next().await {} });

        let started = Instant::now();
        let max = *SENDER_COUNTS
            .iter()
            .max()
            .expect("sender counts are not empty");
        let permits = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
        let logins: Vec<_> = (0..max)
            .map(|i| {
                let (permits, connector) = (permits.clone(), connector.clone());
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await?;
                    Client::register_and_login(addr, &connector, format!("sender{i:03}")).await
                })
            })
            .collect();
        let mut senders = Vec::with_capacity(max);
        for login in logins {
            senders.push(login.await??.0);
        }
        eprintln!(
            "[{}] server up on {addr}, {} senders logged in in {:.1?}",
            durability_name(durability),
            senders.len(),
            started.elapsed()
        );
        Ok(Bench {
            durability,
            stats,
            shutdown,
            server,
            receiver_id,
            receiver_drain,
            senders: tokio::sync::Mutex::new(senders),
            _dir: dir,
        })
    }

    /// Warm up, then measure `n` senders with `window` sends in flight each.
    async fn run(
        &self,
        settings: &Settings,
        mode: &'static str,
        n: usize,
        window: usize,
    ) -> Result<Report> {
        self.drive(n, window, settings.warmup, settings.max_sends)
            .await?;
        let before = Snapshot::of(&self.stats);
        let started = Instant::now();
        let mut latencies = self
            .drive(n, window, settings.run, settings.max_sends)
            .await?;
        let secs = started.elapsed().as_secs_f64();
        let delta = Snapshot::of(&self.stats).minus(&before);
        latencies.sort_unstable();
        let sends = latencies.len() as u64;
        let per_sync = |x: f64| {
            if delta.syncs == 0 {
                0.0
            } else {
                x / delta.syncs as f64
            }
        };
        let report = Report {
            durability: durability_name(self.durability),
            mode,
            senders: n,
            window,
            secs,
            sends,
            sends_per_sec: sends as f64 / secs,
            server_sends: delta.sends,
            batches: delta.batches,
            syncs: delta.syncs,
            sends_per_flush: per_sync(delta.sends as f64),
            mean_sync_us: per_sync(delta.sync_micros as f64),
            mean_us: latencies.iter().map(|&l| l as f64).sum::<f64>() / sends.max(1) as f64,
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
            max_us: latencies.last().copied().unwrap_or(0),
        };
        println!("{}", serde_json::to_string(&report)?);
        Ok(report)
    }

    /// Let the first `n` senders send until `run` passes or `max_sends` (in
    /// total) are issued; returns every answered send's latency in µs.
    async fn drive(
        &self,
        n: usize,
        window: usize,
        run: Duration,
        max_sends: u64,
    ) -> Result<Vec<u32>> {
        let mut senders = self.senders.lock().await;
        let budget = Arc::new(Budget {
            issued: AtomicU64::new(0),
            max: max_sends,
        });
        let deadline = Instant::now() + run;
        let to = self.receiver_id;
        let tasks: Vec<_> = senders
            .drain(..n)
            .map(|mut client| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    let result = client.send_until(to, window, deadline, &budget).await;
                    (client, result)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            let (client, result) = task.await?;
            latencies.extend(result?);
            senders.push(client);
        }
        Ok(latencies)
    }

    async fn stop(self) -> Result<()> {
        self.receiver_drain.abort();
        drop(self.senders);
        self.shutdown.cancel();
        timeout(WAIT, self.server)
            .await
            .context("the server did not stop in time")?
            .context("the server task failed")?;
        Ok(())
    }
}

/// Like the tests' config: ephemeral loopback port, a temporary dir, the dev
/// certificate. Idle and login deadlines are stretched so 100 parked
/// senders survive the other runs, and the collector stays out of the way.
fn bench_config(data_dir: &Path, durability: Durability) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("a valid socket address"),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.accounts.max_concurrent_hashes = SETUP_CONCURRENCY;
    config.messaging.durability = durability;
    config.messaging.gc_interval = Duration::from_secs(3600);
    // The bench is the hot sender on purpose: lift the per-connection limits.
    config.limits.sends_per_sec = 1_000_000;
    config.limits.send_burst = 1_000_000;
    config.limits.requests_per_sec = 1_000_000;
    config.limits.request_burst = 1_000_000;
    config.timeouts.login = Duration::from_secs(60);
    config.timeouts.heartbeat_interval = Duration::from_secs(600);
    config.timeouts.idle = Duration::from_secs(3600);
    // Never bind the default admin port next to a running pigeond or test.
    config.admin.listen = None;
    config
}

/// Sends left to issue in a run, shared by its senders.
struct Budget {
    issued: AtomicU64,
    max: u64,
}

impl Budget {
    fn take(&self) -> bool {
        self.issued.fetch_add(1, Ordering::Relaxed) < self.max
    }
}

/// The counters of [`CommitStats`] at one moment.
struct Snapshot {
    batches: u64,
    syncs: u64,
    sends: u64,
    sync_micros: u64,
}

impl Snapshot {
    fn of(stats: &CommitStats) -> Snapshot {
        Snapshot {
            batches: stats.batches.load(Ordering::Relaxed),
            syncs: stats.syncs.load(Ordering::Relaxed),
            sends: stats.sends.load(Ordering::Relaxed),
            sync_micros: stats.sync_micros.load(Ordering::Relaxed),
        }
    }

    fn minus(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            batches: self.batches - earlier.batches,
            syncs: self.syncs - earlier.syncs,
            sends: self.sends - earlier.sends,
            sync_micros: self.sync_micros - earlier.sync_micros,
        }
    }
}

/// Nearest-rank percentile of sorted values; 0 when empty.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One logged-in connection speaking raw frames.
struct Client {
    frames: Framed<TlsStream<TcpStream>, Codec>,
    next_id: u64,
}

impl Client {
    async fn connect(addr: SocketAddr, connector: &TlsConnector) -> Result<Client> {
        let tcp = timeout(WAIT, TcpStream::connect(addr)).await??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost")?;
        let tls = timeout(WAIT, connector.connect(name, tcp)).await??;
        Ok(Client {
            frames: Framed::new(tls, Codec::default()),
            next_id: 1,
        })
    }

    /// Connect, register `name` and log in as a CLI device; returns the user id.
    async fn register_and_login(
        addr: SocketAddr,
        connector: &TlsConnector,
        name: String,
    ) -> Result<(Client, u64)> {
        let mut client = Client::connect(addr, connector).await?;
        let register = Body::Register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION as i32,
            username: name.clone(),
            password: PASSWORD.into(),
        });
        match client.request(register).await? {
            Body::Registered(_) => {}
            other => bail!("register {name}: {other:?}"),
        }
        let login = Body::Login(pb::LoginRequest {
            protocol_version: PROTOCOL_VERSION as i32,
            username: name.clone(),
            device_id: "bench".into(),
            platform: Platform::Cli as i32,
            credential: Some(Credential::Password(PASSWORD.into())),
            inline_messages: false,
        });
        match client.request(login).await? {
            Body::LoggedIn(r) => Ok((client, r.user_id)),
            other => bail!("login {name}: {other:?}"),
        }
    }

    /// Queue a request without flushing; returns its id.
    async fn feed(&mut self, body: Body) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        timeout(WAIT, self.frames.feed(Envelope::new(id, body))).await??;
        Ok(id)
    }

    async fn flush(&mut self) -> Result<()> {
        timeout(WAIT, SinkExt::<Envelope>::flush(&mut self.frames)).await??;
        Ok(())
    }

    /// The next answer (pushes, with id 0, are skipped).
    async fn answer(&mut self) -> Result<(u64, Body)> {
        loop {
            let envelope = timeout(WAIT, self.frames.next())
                .await
                .context("no frame from the server in time")?
                .ok_or_else(|| anyhow!("the server closed the connection"))??;
            if envelope.request_id != 0 {
                let body = envelope
                    .body
                    .ok_or_else(|| anyhow!("an answer without a body"))?;
                return Ok((envelope.request_id, body));
            }
        }
    }

    async fn request(&mut self, body: Body) -> Result<Body> {
        let id = self.feed(body).await?;
        self.flush().await?;
        let (answered, body) = self.answer().await?;
        if answered != id {
            bail!("answer to request {answered} while waiting for {id}");
        }
        Ok(body)
    }

    /// Send to user `to` with up to `window` sends in flight until
    /// `deadline` or the budget runs out; returns each send's latency in µs.
    async fn send_until(
        &mut self,
        to: u64,
        window: usize,
        deadline: Instant,
        budget: &Budget,
    ) -> Result<Vec<u32>> {
        let content = bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
        let mut latencies = Vec::new();
        loop {
            let mut fed = false;
            while in_flight.len() < window && Instant::now() < deadline && budget.take() {
                let body = Body::Send(pb::SendRequest {
                    group_id: 0,
                    to_user_id: to,
                    to_username: String::new(),
                    // Request ids never repeat on a connection, so neither do these.
                    client_msg_id: format!("m{}", self.next_id),
                    content_type: "text/plain".into(),
                    content: content.clone(),
                });
                let id = self.feed(body).await?;
                in_flight.push_back((id, Instant::now()));
                fed = true;
            }
            if fed {
                self.flush().await?;
            }
            let Some((expected, sent_at)) = in_flight.pop_front() else {
                return Ok(latencies);
            };
            let (id, body) = self.answer().await?;
            if id != expected {
                bail!("answer to request {id} while waiting for {expected}");
            }
            if !matches!(body, Body::Sent(_)) {
                bail!("send refused: {body:?}");
            }
            latencies.push(u32::try_from(sent_at.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
}

/// A TLS client trusting the dev CA that signs the server's dev certificate.
fn tls_connector() -> Result<TlsConnector> {
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn print_table(reports: &[Report]) {
    println!();
    println!(
        "| durability | mode | senders | window | sends | secs | sends/s | sends/flush | mean sync ms | mean ms | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let ms = |us: f64| us / 1000.0;
    for r in reports {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.durability,
            r.mode,
            r.senders,
            r.window,
            r.sends,
            r.secs,
            r.sends_per_sec,
            r.sends_per_flush,
            ms(r.mean_sync_us),
            ms(r.mean_us),
            ms(r.p50_us as f64),
            ms(r.p99_us as f64),
            ms(r.max_us as f64),
        );
    }
}
