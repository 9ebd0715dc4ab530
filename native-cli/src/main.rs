//! `apr`: the command line face of apr. Each subcommand lives in `commands/`, resolves its flags
//! and calls `apr-core`; this file only dispatches and turns errors into exit codes
//! (0 ok, 1 failure, 2 usage).

mod args;
mod atomic;
mod chart;
mod commands;
mod hub;
mod output;
mod server;
mod system;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, EvalCommand, GpuCommand, RosettaCommand};

fn main() -> ExitCode {
    system::fix_mmap_threshold();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import(args) => commands::import::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Rosetta {
            command: RosettaCommand::Convert(args),
        }
        | Command::Convert(args) => commands::convert::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Trace(args) => commands::trace::run(args),
        Command::Showcase(args) => commands::showcase::run(args),
        Command::Profile(args) => commands::profile::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Detokenize(args) => commands::tokenize::run_detokenize(args),
        Command::Eval {
            command: EvalCommand::Perplexity(args),
        } => commands::eval::perplexity(args),
        Command::Gpu {
            command: GpuCommand::List(args),
        } => commands::gpu::list(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`apr inspect x | head`) is the reader's choice, not a failure.
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        // Ctrl-C: the temporary output was dropped on the way out.
        Err(err)
            if err
                .chain()
                .any(|c| matches!(c.downcast_ref(), Some(apr_core::Error::Cancelled))) =>
        {
            eprintln!("error: cancelled; no output was written");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
