//! The `edgejoin` command line: `run` ([`run`]), `check-config`
//! ([`check_config`]), `replay` ([`replay`]), `tail` ([`tail`], results as
//! [`show`] prints them), `record` ([`record`]) and `export` ([`export`]).

pub(crate) mod check_config;
mod export;
mod record;
mod replay;
mod run;
pub mod show;
mod subscriber;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgejoin",
    version,
    about = "Edge stream-join gateway: event-time windows and joins of MQTT sensor streams",
    long_about = "Edge stream-join gateway: event-time windows and joins of MQTT sensor streams.\n\n\
        `edgejoin run` is the service (systemd runs it as edgejoin.service): SIGTERM stops it after a \
        checkpoint; SIGHUP (`systemctl reload edgejoin`) applies an edited config, keeping the state of \
        every stream, window and join whose definition did not change. The config is \
        /etc/edgejoin/gateway.toml, the state /var/lib/edgejoin. `check-config` says whether a config \
        will run, `replay` runs it over a recording, `record` makes one from live traffic, `tail` shows \
        the results as they are published.\n\n\
        Docs: /usr/share/doc/edgejoin/docs/ (GETTING-STARTED.md, CONFIG.md, SERVICE.md, \
        TROUBLESHOOTING.md). Exit status: 0 on success, 1 on an error (said on stderr)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway: MQTT in, results upstream (systemd runs this).
    Run {
        /// The gateway's config file (TOML; `man edgejoin` lists the docs).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config; print the pipeline and the memory bound it implies.
    CheckConfig {
        /// The gateway's config file (TOML; `man edgejoin` lists the docs).
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
        /// The gateway's config file (TOML; `man edgejoin` lists the docs).
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
        /// The gateway's config file (TOML; `man edgejoin` lists the docs).
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
        /// The gateway's config file (TOML; `man edgejoin` lists the docs).
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
        /// Draw each corrected device clock: one SVG per device and an index.html in DIR.
        #[arg(long, value_name = "DIR")]
        clock_report: Option<PathBuf>,
    },
    /// Write the config's pipeline as another engine's job (a site that outgrows one gateway).
    #[command(subcommand)]
    Export(ExportCmd),
}

#[derive(Subcommand)]
enum ExportCmd {
    /// A PySpark Structured Streaming job computing the same results (docs/FLEET.md).
    Spark {
        /// The gateway's config file (TOML; `man edgejoin` lists the docs).
        #[arg(long, short)]
        config: PathBuf,
        /// Where the job goes (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `check-config`'s report of a config (for the fuzz targets).
pub fn describe_config(c: &crate::config::Config) -> String {
    check_config::describe(c)
}

/// Replays a recording into `engine` as `edgejoin replay` does (for the fuzz targets).
pub fn replay_into(
    engine: &mut edgejoin_engine::Engine,
    input: &[u8],
    out: impl std::io::Write,
) -> std::io::Result<replay::ReplayStats> {
    replay::replay(engine, input, out, None, |_, _| {})
}

/// The command line's definition (for the man pages).
pub fn command() -> clap::Command {
    Cli::command()
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
        Cmd::Replay { config, input, output, stats, clock_report } => {
            replay::run(&config, &input, output.as_deref(), stats, clock_report.as_deref())
        }
        Cmd::Export(ExportCmd::Spark { config, output }) => export::spark(&config, output.as_deref()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgejoin: {e}");
            ExitCode::FAILURE
        }
    }
}
