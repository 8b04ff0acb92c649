//! The `edgejoin` command line: `run` ([`run`]), `check-config`
//! ([`check_config`]), `replay` ([`replay`]), `tail` ([`tail`], results as
//! [`show`] prints them) and `record` ([`record`]).

mod check_config;
mod record;
mod replay;
mod run;
pub mod show;
mod tail;

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
        /// Also say what of the state in this state_dir (its checkpoint) the
        /// config would keep and what it would start empty: before editing a
        /// running gateway's config
        #[arg(long, value_name = "STATE_DIR")]
        against: Option<PathBuf>,
    },
    /// Print the results a gateway publishes as they arrive (from its upstream broker).
    Tail {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the JSON rows as published instead of one readable line each.
        #[arg(long)]
        json: bool,
        /// Also print the gateway's stats messages.
        #[arg(long)]
        stats: bool,
    },
    /// Capture the config's stream topics from the source broker as a recording for `replay`.
    Record {
        #[arg(long, short)]
        config: PathBuf,
        /// How long to record, e.g. `10m` (Ctrl-C stops earlier and keeps what was recorded).
        #[arg(long, short)]
        duration: String,
        /// Where the recording goes, one JSON message per line (`-` for stdout).
        #[arg(long, short)]
        output: PathBuf,
        /// Stop after this many messages.
        #[arg(long)]
        max_messages: Option<u64>,
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
        Cmd::CheckConfig { config, portable, against } => {
            check_config::run(&config, portable, against.as_deref())
        }
        Cmd::Tail { config, json, stats } => tail::run(&config, json, stats),
        Cmd::Record { config, duration, output, max_messages } => {
            record::run(&config, &duration, &output, max_messages)
        }
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
