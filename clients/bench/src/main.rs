//! pigeon-bench: the load generator for pigeond, with mosquitto (MQTT 3.1.1
//! QoS 1 over TLS) as the comparison peer in the same run.
//!
//! One subcommand per workload; every run is bounded by count and time and
//! prints a markdown table and one JSON line on stdout (progress on
//! stderr). The servers are started separately (docs/performance.md shows
//! how); give their pids to read CPU seconds and RSS from /proc. Only
//! loopback addresses are accepted.

mod mqtt;
mod net;
mod payload;
mod pigeon;
mod report;
mod sys;
mod tls_server;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};

use workload::{drain, fanout, hotsender, idle, pairs, store, storm, Ctx, Side};

#[derive(Parser)]
#[command(
    name = "pigeon-bench",
    about = "Load generator for pigeond (and mosquitto)"
)]
struct Cli {
    /// pigeond's TLS address.
    #[arg(long, global = true, default_value = "127.0.0.1:7443")]
    pigeon: SocketAddr,
    /// pigeond's pid (CPU seconds and RSS from /proc).
    #[arg(long, global = true)]
    pigeon_pid: Option<u32>,
    /// mosquitto's TLS listener.
    #[arg(long, global = true, default_value = "127.0.0.1:8883")]
    mqtt: SocketAddr,
    /// mosquitto's pid.
    #[arg(long, global = true)]
    mqtt_pid: Option<u32>,
    /// Which server(s) to run against; `both` prints pigeon / mosquitto ratios.
    #[arg(long, global = true, value_enum, default_value_t = Target::Pigeon)]
    target: Target,
    /// The CA that signs both servers' certificates.
    #[arg(long, global = true, default_value = "certs/ca.pem")]
    ca: PathBuf,
    /// The name the certificates must carry.
    #[arg(long, global = true, default_value = "localhost")]
    server_name: String,
    /// Dial from 127.0.0.1 ..= 127.0.0.N (ephemeral ports run short past
    /// ~28,000 connections per source address).
    #[arg(long, global = true, default_value_t = 4)]
    sources: u8,
    /// Where registered accounts and their tokens are kept between runs.
    #[arg(long, global = true, default_value = "/tmp/pigeon-bench-accounts.json")]
    accounts: PathBuf,
    /// Password registrations/logins at once (each costs the server an argon2 hash).
    #[arg(long, global = true, default_value_t = 8)]
    setup_concurrency: usize,
    /// Connections opened at once (token logins, MQTT connects).
    #[arg(long, global = true, default_value_t = 256)]
    connect_concurrency: usize,
    /// No run goes on past this many seconds, set-up included.
    #[arg(long, global = true, default_value_t = 1800.0)]
    max_secs: f64,
    /// pigeon receivers log in without `inline_messages` and pull every
    /// message after its Notify (the plain push-pull path).
    #[arg(long, global = true)]
    pull_only: bool,
    /// throughput and latency also print, to stderr as one JSON line per
    /// side, deliveries by intended send time in 100 ms buckets: count,
    /// count slower than 10 ms, slowest (µs).
    #[arg(long, global = true)]
    timeline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Pigeon,
    Mosquitto,
    Both,
}

#[derive(Subcommand)]
enum Command {
    /// (1) N logged-in idle TLS connections: server RSS per connection.
    Idle(idle::IdleArgs),
    /// (2) 1:1 durable throughput over sender/receiver pairs, max rate.
    Throughput(pairs::PairArgs),
    /// (3) send → received latency at a fixed total rate (open loop).
    Latency {
        #[command(flatten)]
        pairs: pairs::PairArgs,
        /// Messages per second over all pairs.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
    },
    /// (4) offline drain: queued messages to reconnecting receivers.
    Drain(drain::DrainArgs),
    /// (5) group fan-out: one sender, every member of one group online.
    Fanout(fanout::FanoutArgs),
    /// (6) reconnect storm: all clients reconnect at once (pigeon only).
    Storm(storm::StormArgs),
    /// (7) disk bytes per queued message and space back after ack (pigeon only).
    Store(store::StoreArgs),
    /// Overload: hot senders at a multiple of the allowed send rate next to
    /// ordinary pairs; their latency without and with (pigeon only).
    Hotsender(hotsender::HotArgs),
    /// A bare tokio-rustls server (the storm's baseline).
    TlsServer {
        /// Where to listen (loopback).
        #[arg(long, default_value = "127.0.0.1:7450")]
        listen: SocketAddr,
        /// Certificate chain (PEM).
        #[arg(long, default_value = "certs/server.pem")]
        cert: PathBuf,
        /// Private key (PEM).
        #[arg(long, default_value = "certs/server.key")]
        key: PathBuf,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 3600.0)]
        secs: f64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::TlsServer {
        listen,
        cert,
        key,
        secs,
    } = &cli.command
    {
        return tls_server::serve(*listen, cert, key, *secs).await;
    }
    if cli.max_secs.is_nan() || cli.max_secs <= 0.0 {
        bail!("--max-secs must be above 0");
    }
    let dialer = net::Dialer::new(&cli.ca, &cli.server_name, cli.sources, 65_536)?;
    let run_tag = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let ctx = Ctx {
        dialer: Arc::new(dialer),
        pigeon: cli.pigeon,
        pigeon_pid: cli.pigeon_pid,
        mqtt: cli.mqtt,
        mqtt_pid: cli.mqtt_pid,
        accounts: tokio::sync::Mutex::new(pigeon::Accounts::load(&cli.accounts, cli.pigeon)?),
        setup_concurrency: cli.setup_concurrency,
        connect_concurrency: cli.connect_concurrency,
        run_tag: format!("b{run_tag}"),
        inline: !cli.pull_only,
        timeline: cli.timeline,
        hard_deadline: Instant::now() + Duration::from_secs_f64(cli.max_secs),
    };
    let sides: &[Side] = match cli.target {
        Target::Pigeon => &[Side::Pigeon],
        Target::Mosquitto => &[Side::Mosquitto],
        Target::Both => &[Side::Pigeon, Side::Mosquitto],
    };
    let work = async {
        match &cli.command {
            Command::Idle(args) => idle::idle(&ctx, sides, args).await,
            Command::Throughput(args) => pairs::throughput(&ctx, sides, args).await,
            Command::Latency { pairs: args, rate } => {
                pairs::latency(&ctx, sides, args, *rate).await
            }
            Command::Drain(args) => drain::drain(&ctx, sides, args).await,
            Command::Fanout(args) => fanout::fanout(&ctx, sides, args).await,
            Command::Storm(args) => storm::storm(&ctx, args).await,
            Command::Store(args) => store::store(&ctx, args).await,
            Command::Hotsender(args) => hotsender::hotsender(&ctx, args).await,
            Command::TlsServer { .. } => unreachable!("handled above"),
        }
    };
    let budget = Duration::from_secs_f64(cli.max_secs) + Duration::from_secs(60);
    let outcome = tokio::time::timeout(budget, work)
        .await
        .map_err(|_| anyhow::anyhow!("the run passed --max-secs"))??;
    outcome.print();
    Ok(())
}
