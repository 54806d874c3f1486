//! `pigeond`: reads the command line and config, starts tracing, and runs
//! the server until SIGTERM or Ctrl-C (SIGHUP reloads the certificate, in
//! `pigeon_server::run`). No logic lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pigeon_server::config::{self, Config, Overrides};
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
    /// Check a config file, or print the default one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Administer the running server through its admin endpoint.
    Admin(pigeon_server::admin::cli::AdminArgs),
    /// Copy the store consistently into a new directory (running or stopped).
    Backup(pigeon_server::admin::cli::BackupArgs),
    /// Check a stopped store for damage (on a copy; the directory is not
    /// written): exit 0 if clean, otherwise list the problems and exit 1.
    Verify {
        /// Data directory.
        #[arg(long, default_value_os_t = Config::default().data_dir)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check FILE as `serve --config FILE` would (without the environment):
    /// exit 0 if it is usable, otherwise print what is wrong and exit 1.
    Check {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Print the complete default config, every key commented.
    Default,
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
    /// Admin listener address, or "off".
    #[arg(long, value_name = "ADDR|off", value_parser = parse_admin)]
    admin: Option<AdminListen>,
    /// Log as JSON lines instead of human text.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    keep_large_blocks_out_of_the_heap();
    // Errors are for operators: the message chain, not a backtrace.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("pigeond: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// glibc's malloc raises its mmap threshold to the size of any large block
/// that is freed, so after the first password hash (argon2id: one ~19 MiB
/// buffer) every later hash buffer is carved from the heap, and the holes
/// they leave between other allocations are not given back: 1,000
/// registrations and logins left pigeond at ~770 MiB resident, 21,000 at
/// 2.6 GiB (docs/performance.md, "Memory after registration"). A fixed
/// 1 MiB threshold serves such blocks with mmap and unmaps them when freed
/// (38 MiB after the same 1,000). An operator's own
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…` wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_blocks_out_of_the_heap() {
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold")) {
        return;
    }
    // SAFETY: mallopt only changes malloc's tuning; it is called once, first
    // thing in main, before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_blocks_out_of_the_heap() {}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Admin(args) => Ok(pigeon_server::admin::cli::run_admin(args)?),
        Command::Backup(args) => Ok(pigeon_server::admin::cli::run_backup(args)?),
        Command::Verify { data } => {
            let report = pigeon_server::store::verify(&data)?;
            print!("{}", report.render(&data));
            anyhow::ensure!(
                report.is_clean(),
                "{} problem(s) in {}",
                report.problem_count,
                data.display()
            );
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::from_file(&file)?;
            config.validate()?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::keys::default_toml());
            Ok(())
        }
    }
}

/// `--admin`'s value: an address or off (clap treats a bare
/// `Option<Option<_>>` as an optional flag value, hence the wrapper).
#[derive(Clone)]
struct AdminListen(Option<SocketAddr>);

fn parse_admin(text: &str) -> Result<AdminListen, String> {
    config::parse_admin_listen(text).map(AdminListen)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_json);
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    Overrides {
        listen: args.listen,
        data_dir: args.data,
        tls_cert: args.cert,
        tls_key: args.key,
        admin_listen: args.admin.map(|a| a.0),
    }
    .apply(&mut config);
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
