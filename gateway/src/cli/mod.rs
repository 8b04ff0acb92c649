//! The `edgejoin` command line: `run` ([`run`]), `check-config`
//! ([`check_config`]) and `replay` ([`replay`]).

mod check_config;
mod replay;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgejoin",
    version,
    about = "Edge stream-join gateway: event-time windows and joins of MQTT sensor streams"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway: MQTT in, results upstream (systemd runs this).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config; print the pipeline and the memory bound it implies.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// Check the file alone, not this machine (state_dir writable,
        /// password and TLS files readable): for a config meant for another host
        #[arg(long)]
        portable: bool,
    },
    /// Run the engine offline over a recording (one JSON message per line).
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// The recording (`-` for stdin).
        #[arg(long, short)]
        input: PathBuf,
        /// Where results go, one JSON object per line (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Print the engine's counters as JSON on stderr at the end.
        #[arg(long)]
        stats: bool,
    },
}

/// The `edgejoin` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run { config } => run::run(&config),
        Cmd::CheckConfig { config, portable } => check_config::run(&config, portable),
        Cmd::Replay { config, input, output, stats } => {
            replay::run(&config, &input, output.as_deref(), stats)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgejoin: {e}");
            ExitCode::FAILURE
        }
    }
}
