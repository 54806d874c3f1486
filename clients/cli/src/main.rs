//! `pigeon`: the command-line client for the pigeon messaging server, built
//! on pigeon-sdk. Parses arguments, runs one command, and turns failures
//! into a message and a documented exit code (see `pigeon --help`).

mod args;
mod commands;
mod failure;
mod names;
mod output;
mod password;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::commands::Ctx;
use crate::failure::{Exit, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pigeon: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Generic as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if json {
                eprintln!("{}", failure.to_json());
            } else {
                eprintln!("pigeon: {failure}");
            }
            ExitCode::from(failure.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let Some(profile_dir) = cli.global.profile_dir() else {
        return Err(Failure::new(
            Exit::Usage,
            "no home directory to keep the profile in: pass --profile DIR",
        ));
    };
    let ctx = Ctx {
        global: cli.global,
        profile_dir,
    };
    match &cli.command {
        Command::Register { name } => commands::register(&ctx, name).await,
        Command::Login { name } => commands::login(&ctx, name).await,
        Command::Send {
            first,
            second,
            group,
            content_type,
        } => {
            let (to, text) = args::send_target(first, second.as_deref(), group.as_deref());
            commands::send(&ctx, to, text, content_type.as_deref()).await
        }
        Command::Pull { limit } => commands::pull(&ctx, *limit).await,
        Command::Listen => commands::listen(&ctx).await,
        Command::Logout => commands::logout(&ctx).await,
        Command::Group(command) => commands::group(&ctx, command).await,
        Command::Conversations { limit } => commands::conversations(&ctx, *limit).await,
        Command::Read { args, group } => {
            let target = args::read_target(args, group.as_deref())
                .map_err(|message| Failure::new(Exit::Usage, message))?;
            commands::read(&ctx, target).await
        }
        Command::Recall { msg_id } => commands::recall(&ctx, *msg_id).await,
        Command::Devices(command) => commands::devices(&ctx, command).await,
        Command::Push(command) => commands::push(&ctx, command).await,
    }
}
