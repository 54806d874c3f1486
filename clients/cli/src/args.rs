//! Command-line arguments (clap) and how their defaults resolve: the
//! server from the flag, then the profile, then 127.0.0.1:7443; the profile
//! directory from the flag or PIGEON_PROFILE, then ~/.pigeon.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The server used when neither the flag nor the profile names one.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7443";

const EXIT_CODES: &str = "\
Passwords are read from PIGEON_PASSWORD, or prompted for (without echo on a
terminal; otherwise one line is read from standard input). Never from argv.

Exit codes:
  0  success
  1  other failure (profile unreadable, protocol error, ...)
  2  usage error (bad arguments)
  3  cannot connect: server down or unreachable, TLS failure (certificate
     not trusted by the CA), timeout, connection lost
  4  authentication: wrong password, token refused, or not logged in
  5  the server refused the request (the error code is in the message,
     e.g. UNKNOWN_USER, USERNAME_TAKEN, RATE_LIMITED)
  6  kicked: another session of this device or platform class took over";

/// pigeon: the command-line client for the pigeon messaging server.
#[derive(Debug, Parser)]
#[command(name = "pigeon", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Server address [default: the profile's server, else 127.0.0.1:7443]
    #[arg(long, global = true, env = "PIGEON_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// CA certificate (PEM) that must have signed the server's certificate
    #[arg(
        long,
        global = true,
        env = "PIGEON_CA",
        value_name = "FILE",
        default_value = "certs/ca.pem"
    )]
    pub ca: PathBuf,
    /// Profile directory: device id, token, cursor [default: ~/.pigeon]
    #[arg(long, global = true, env = "PIGEON_PROFILE", value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// Print one JSON object per line
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account (when the server allows it)
    Register {
        /// The username: 3 to 32 of [a-z0-9_.-]
        name: String,
    },
    /// Log in and keep the token in the profile
    Login {
        /// The username
        name: String,
    },
    /// Send a message; prints the message id
    Send {
        /// The recipient's username
        user: String,
        /// The message text
        text: String,
        /// Content type label [default: text/plain]
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// Print waiting messages in order, then acknowledge them
    Pull {
        /// Messages per page (1 to 1000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Stay connected and print messages as they arrive (Ctrl-C exits)
    Listen,
    /// Revoke this device's token and forget it
    Logout,
}

impl GlobalArgs {
    /// The profile directory: the flag (or PIGEON_PROFILE), else ~/.pigeon.
    pub fn profile_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.profile {
            return Some(dir.clone());
        }
        home_dir().map(|home| home.join(".pigeon"))
    }

    /// The server: the flag (or PIGEON_SERVER), else the profile's, else
    /// the default.
    pub fn server(&self, profile_server: Option<&str>) -> String {
        self.server
            .clone()
            .or_else(|| profile_server.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
    }
}

fn home_dir() -> Option<PathBuf> {
    let var = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pigeon").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let cli = parse(&[
            "--json", "send", "bob", "hi", "--server", "h:1", "--ca", "x.pem",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.server.as_deref(), Some("h:1"));
        assert_eq!(cli.global.ca, PathBuf::from("x.pem"));
        let Command::Send {
            user,
            text,
            content_type,
        } = cli.command
        else {
            panic!("not send: {:?}", cli.command);
        };
        assert_eq!((user.as_str(), text.as_str()), ("bob", "hi"));
        assert_eq!(content_type, None);
    }

    #[test]
    fn send_takes_a_content_type() {
        let cli = parse(&["send", "bob", "{}", "--content-type", "application/json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Send { content_type: Some(t), .. } if t == "application/json"
        ));
    }

    #[test]
    fn server_falls_back_to_profile_then_default() {
        let cli = parse(&["pull"]).unwrap();
        if cli.global.server.is_none() {
            assert_eq!(cli.global.server(None), DEFAULT_SERVER);
            assert_eq!(cli.global.server(Some("p:9")), "p:9");
        }
        let cli = parse(&["pull", "--server", "f:1"]).unwrap();
        assert_eq!(cli.global.server(Some("p:9")), "f:1");
    }

    #[test]
    fn explicit_profile_dir_wins() {
        let cli = parse(&["listen", "--profile", "/tmp/p"]).unwrap();
        assert_eq!(cli.global.profile_dir(), Some(PathBuf::from("/tmp/p")));
    }

    #[test]
    fn passwords_are_not_accepted_on_the_command_line() {
        assert!(parse(&["login", "alice", "--password", "x"]).is_err());
        assert!(parse(&["login", "alice", "secret"]).is_err());
    }

    #[test]
    fn usage_errors_exit_with_code_2() {
        let err = parse(&["send", "bob"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["pull", "--limit", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes"), "{help}");
        assert!(help.contains("PIGEON_PASSWORD"), "{help}");
    }
}
