//! `pigeond`: reads the command line and config, starts tracing, and runs
//! the server until SIGTERM or Ctrl-C. No logic lives here.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pigeon_server::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pigeond",
    version,
    about = "The pigeon instant-messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients. With no flags: 127.0.0.1:7443, data in ./pigeon-data,
    /// the embedded development certificate.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and PIGEON_* variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the public TLS listener.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// PEM certificate chain (needs --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key (needs --cert).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Log as JSON lines instead of human text.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_json);
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    if let (Some(cert), Some(key)) = (args.cert, args.key) {
        config.tls.cert = Some(cert);
        config.tls.key = Some(key);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        pigeon_server::run(config, shutdown).await
    })?;
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::error!("cannot listen for SIGTERM");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    shutdown.cancel();
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
