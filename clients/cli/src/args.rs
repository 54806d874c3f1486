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
    /// Send a message to a user, or with --group to a group; prints the
    /// message id
    Send {
        /// The recipient's username, then the text (with --group: only the text)
        #[arg(value_name = "USER|TEXT")]
        first: String,
        /// The message text (not with --group)
        #[arg(
            value_name = "TEXT",
            required_unless_present = "group",
            conflicts_with = "group"
        )]
        second: Option<String>,
        /// Send to this group (id, or name among your groups) instead of a user
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
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
    /// Create, change and list groups
    #[command(subcommand)]
    Group(GroupCommand),
    /// The conversation list with unread counts, and the total (badge)
    Conversations {
        /// At most this many conversations (0: all)
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Mark a conversation read up to SEQ [default: its last message]
    Read {
        /// The 1:1 peer's username, then an optional SEQ (with --group:
        /// only the SEQ)
        #[arg(value_name = "USER|SEQ", num_args = 0..=2)]
        args: Vec<String>,
        /// Mark this group (id, or name among your groups) read instead
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Recall (unsend) a message by its id
    Recall {
        /// The message id (as printed by `send`)
        msg_id: u64,
    },
    /// List or revoke this account's devices
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Register or remove this device's push token (offline push)
    #[command(subcommand)]
    Push(PushCommand),
}

/// `pigeon group ...`. GROUP is a group id, or the name of one of your
/// groups; USER is a username.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group with you as owner; prints the group id
    Create {
        /// The group's name (1 to 64 bytes)
        name: String,
        /// The first members' usernames, comma separated
        #[arg(long, value_name = "USER[,USER...]", value_delimiter = ',', num_args = 1..)]
        members: Vec<String>,
    },
    /// Add members (owner or admin)
    Add {
        /// The group
        group: String,
        /// The users to add
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove a member (owner, or admin for plain members)
    Remove {
        /// The group
        group: String,
        /// The member to remove
        user: String,
    },
    /// Leave a group (an owner hands ownership over first)
    Leave {
        /// The group
        group: String,
    },
    /// Dissolve a group (owner only)
    Dissolve {
        /// The group
        group: String,
    },
    /// List your groups
    List,
    /// List a group's members
    Members {
        /// The group
        group: String,
    },
    /// Set a member's role (owner only); `owner` hands ownership over
    Role {
        /// The group
        group: String,
        /// The member
        user: String,
        /// The new role
        role: RoleArg,
    },
}

/// A role as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Sends and reads
    Member,
    /// Also adds and removes plain members, recalls any message
    Admin,
    /// Also removes admins, sets roles, dissolves (one per group)
    Owner,
}

/// `pigeon devices ...`
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List this account's devices
    List,
    /// Revoke another device: its token stops working, its session ends
    Revoke {
        /// The device id (as listed)
        device_id: String,
    },
}

/// `pigeon push ...`: the token belongs to this profile's device; the
/// server pushes to it while the device has no session.
#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Register a push token for this device, replacing any earlier one
    #[command(subcommand)]
    Register(PushProviderArg),
    /// Remove this device's push token (the server stops pushing to it)
    Remove,
}

/// `pigeon push register ...`: one subcommand per provider.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum PushProviderArg {
    /// Apple Push Notification service
    Apns {
        /// The APNs device token (hex)
        token: String,
        /// The app's bundle id (the apns-topic)
        #[arg(long, value_name = "BUNDLE_ID")]
        topic: String,
        /// The token is from a development build (APNs sandbox)
        #[arg(long)]
        sandbox: bool,
    },
    /// Firebase Cloud Messaging
    Fcm {
        /// The FCM registration token (after `--` if it starts with '-')
        token: String,
    },
    /// The server's webhook (configured on the server; no token)
    Webhook,
}

impl PushProviderArg {
    /// The registration the sdk sends.
    pub fn registration(&self) -> pigeon_sdk::PushRegistration {
        match self.clone() {
            PushProviderArg::Apns {
                token,
                topic,
                sandbox,
            } => pigeon_sdk::PushRegistration::Apns {
                token,
                topic,
                sandbox,
            },
            PushProviderArg::Fcm { token } => pigeon_sdk::PushRegistration::Fcm { token },
            PushProviderArg::Webhook => pigeon_sdk::PushRegistration::Webhook,
        }
    }
}

/// Where `send` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTo<'a> {
    /// A user, by username.
    User(&'a str),
    /// A group, as typed (id or name).
    Group(&'a str),
}

/// The recipient and the text of a `send`, from its two positionals (clap
/// has already checked that --group and a second positional exclude each
/// other and that one of them is there).
pub fn send_target<'a>(
    first: &'a str,
    second: Option<&'a str>,
    group: Option<&'a str>,
) -> (SendTo<'a>, &'a str) {
    match (group, second) {
        (Some(group), _) => (SendTo::Group(group), first),
        (None, Some(text)) => (SendTo::User(first), text),
        // Unreachable through clap; treat the lone word as the text to no one.
        (None, None) => (SendTo::User(""), first),
    }
}

/// What `read` marks: a peer or a group, and the seq if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadTarget<'a> {
    /// The conversation, as typed.
    pub to: SendTo<'a>,
    /// Up to this conv_seq; None: the conversation's last.
    pub seq: Option<u64>,
}

/// Interpret `read`'s positionals: `USER [SEQ]`, or `[SEQ]` with --group.
pub fn read_target<'a>(
    args: &'a [String],
    group: Option<&'a str>,
) -> Result<ReadTarget<'a>, String> {
    let parse_seq = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("SEQ must be a number, not {text:?}"))
    };
    match (group, args) {
        (Some(group), []) => Ok(ReadTarget {
            to: SendTo::Group(group),
            seq: None,
        }),
        (Some(group), [seq]) => Ok(ReadTarget {
            to: SendTo::Group(group),
            seq: Some(parse_seq(seq)?),
        }),
        (Some(_), _) => Err("with --group, `read` takes at most a SEQ".into()),
        (None, []) => Err("`read` needs a USER or --group GROUP".into()),
        (None, [user]) => Ok(ReadTarget {
            to: SendTo::User(user),
            seq: None,
        }),
        (None, [user, seq]) => Ok(ReadTarget {
            to: SendTo::User(user),
            seq: Some(parse_seq(seq)?),
        }),
        (None, _) => Err("`read` takes USER and at most a SEQ".into()),
    }
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
            first,
            second,
            group,
            content_type,
        } = cli.command
        else {
            panic!("not send: {:?}", cli.command);
        };
        let (to, text) = send_target(&first, second.as_deref(), group.as_deref());
        assert_eq!((to, text), (SendTo::User("bob"), "hi"));
        assert_eq!(content_type, None);
    }

    #[test]
    fn send_to_a_group_takes_only_the_text() {
        let cli = parse(&["send", "--group", "team", "hello all"]).unwrap();
        let Command::Send {
            first,
            second,
            group,
            ..
        } = cli.command
        else {
            panic!("not send: {:?}", cli.command);
        };
        let (to, text) = send_target(&first, second.as_deref(), group.as_deref());
        assert_eq!((to, text), (SendTo::Group("team"), "hello all"));
        assert!(parse(&["send", "--group", "5", "bob", "hi"]).is_err());
        assert!(parse(&["send", "--group", "5"]).is_err());
    }

    #[test]
    fn group_commands_parse() {
        let cli = parse(&["group", "create", "team", "--members", "bob,carol"]).unwrap();
        let Command::Group(GroupCommand::Create { name, members }) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(
            (name.as_str(), members),
            ("team", vec!["bob".into(), "carol".into()])
        );
        let cli = parse(&["group", "add", "7", "bob", "carol"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Group(GroupCommand::Add { group, users }) if group == "7" && users.len() == 2
        ));
        assert!(parse(&["group", "add", "7"]).is_err(), "add needs a user");
        let cli = parse(&["group", "role", "7", "bob", "admin"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Group(GroupCommand::Role {
                role: RoleArg::Admin,
                ..
            })
        ));
        assert!(parse(&["group", "role", "7", "bob", "king"]).is_err());
        assert!(parse(&["devices", "revoke", "d1"]).is_ok());
        assert!(parse(&["recall", "not-a-number"]).is_err());
    }

    #[test]
    fn push_commands_parse() {
        use pigeon_sdk::PushRegistration;
        let registration = |args: &[&str]| match parse(args).unwrap().command {
            Command::Push(PushCommand::Register(provider)) => provider.registration(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            registration(&[
                "push",
                "register",
                "apns",
                "ab12",
                "--topic",
                "com.example.chat",
                "--sandbox"
            ]),
            PushRegistration::Apns {
                token: "ab12".into(),
                topic: "com.example.chat".into(),
                sandbox: true
            }
        );
        assert_eq!(
            registration(&["push", "register", "apns", "ab12", "--topic", "t"]),
            PushRegistration::Apns {
                token: "ab12".into(),
                topic: "t".into(),
                sandbox: false
            }
        );
        assert_eq!(
            registration(&["push", "register", "fcm", "f1"]),
            PushRegistration::Fcm { token: "f1".into() }
        );
        assert_eq!(
            registration(&["push", "register", "fcm", "--", "-f1_x"]),
            PushRegistration::Fcm {
                token: "-f1_x".into()
            }
        );
        assert_eq!(
            registration(&["--json", "push", "register", "webhook"]),
            PushRegistration::Webhook
        );
        assert!(matches!(
            parse(&["push", "remove"]).unwrap().command,
            Command::Push(PushCommand::Remove)
        ));
        // APNs needs its topic; FCM takes no topic; the webhook no token.
        let usage = |args: &[&str]| parse(args).unwrap_err().exit_code();
        assert_eq!(usage(&["push", "register", "apns", "ab12"]), 2);
        assert_eq!(usage(&["push", "register", "fcm", "f1", "--topic", "t"]), 2);
        assert_eq!(usage(&["push", "register", "webhook", "x"]), 2);
        assert_eq!(usage(&["push", "register"]), 2);
        assert_eq!(usage(&["push", "register", "fcm"]), 2);
    }

    #[test]
    fn read_takes_a_user_or_a_group_and_an_optional_seq() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let bob = args(&["bob"]);
        assert_eq!(
            read_target(&bob, None),
            Ok(ReadTarget {
                to: SendTo::User("bob"),
                seq: None
            })
        );
        let bob7 = args(&["bob", "7"]);
        assert_eq!(read_target(&bob7, None).unwrap().seq, Some(7));
        let seq = args(&["9"]);
        assert_eq!(
            read_target(&seq, Some("team")),
            Ok(ReadTarget {
                to: SendTo::Group("team"),
                seq: Some(9)
            })
        );
        assert!(read_target(&[], None).is_err());
        assert!(read_target(&bob7, Some("team")).is_err());
        assert!(read_target(&args(&["bob", "x"]), None).is_err());
        let cli = parse(&["read", "--group", "5"]).unwrap();
        assert!(
            matches!(cli.command, Command::Read { args, group: Some(g) } if args.is_empty() && g == "5")
        );
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
