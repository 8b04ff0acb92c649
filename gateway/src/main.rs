//! The `edgejoin` command line: `run`, `check-config` and `replay`.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use edgejoin::{config, describe, engine::Engine, replay, stats};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgejoin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("EDGEJOIN_LOG").unwrap_or_else(|_| EnvFilter::new("info,rumqttc=warn"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // colours only for a person at a terminal, not in a file or a pipe
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if journald {
        // journald adds its own timestamps
        b.without_time().with_ansi(false).init();
    } else {
        b.init();
    }
}

/// Secrets must not be readable by everyone.
fn warn_on_readable_secrets(p: &edgejoin::pipeline::Pipeline) {
    use std::os::unix::fs::PermissionsExt;
    let files = [&p.source.credentials, &p.upstream.credentials]
        .into_iter()
        .flatten()
        .filter_map(|c| c.password_file.clone())
        .chain(p.upstream.tls.iter().filter_map(|t| t.key_file.clone()));
    for f in files {
        if let Ok(m) = std::fs::metadata(&f) {
            if m.permissions().mode() & 0o004 != 0 {
                tracing::warn!("{} holds a secret and is readable by every user: chmod o-r it", f.display());
            }
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.cmd {
        Cmd::Run { config } => {
            init_tracing();
            let p = config::load(&config)?;
            warn_on_readable_secrets(&p);
            for w in describe::warnings(&p) {
                tracing::warn!("{w}");
            }
            tracing::info!(
                "edgejoin {} starting: {} streams, {} windows, {} joins, state in {}",
                env!("CARGO_PKG_VERSION"),
                p.streams.len(),
                p.windows.len(),
                p.joins.len(),
                p.gateway.state_dir.display()
            );
            edgejoin::service::run(p)?;
            Ok(())
        }
        Cmd::CheckConfig { config } => {
            let p = config::load(&config)?;
            Engine::new(p.clone(), 0)?;
            // a closed pipe (`| head`) is not an error worth a panic
            let mut out = io::stdout().lock();
            let mut text = describe::describe(&p);
            for w in describe::warnings(&p) {
                text.push_str(&format!("\nwarning: {w}\n"));
            }
            let _ = write!(out, "{text}").and_then(|_| writeln!(out, "{}: OK", config.display()));
            Ok(())
        }
        Cmd::Replay { config, input, output, stats: want_stats } => {
            let p = config::load(&config)?;
            // replay needs no protection against crafted keys: a fixed seed keeps runs identical
            let mut engine = Engine::new(p, 0x6564_67656a6f696e)?;
            let reader: Box<dyn io::BufRead> = if input.as_os_str() == "-" {
                Box::new(io::stdin().lock())
            } else {
                Box::new(BufReader::new(File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?))
            };
            let writer: Box<dyn Write> = match &output {
                Some(o) => Box::new(File::create(o).map_err(|e| format!("{}: {e}", o.display()))?),
                None => Box::new(io::stdout().lock()),
            };
            let mut reported = 0;
            let name = input.display().to_string();
            let st = replay::replay(&mut engine, reader, writer, |line, why| {
                reported += 1;
                if reported <= 10 {
                    eprintln!("edgejoin: {name}:{line}: skipped: {why}");
                }
            })?;
            if st.bad_lines > 10 {
                eprintln!("edgejoin: {name}: {} lines skipped in all", st.bad_lines);
            }
            if want_stats {
                let mut s = stats::snapshot(&engine);
                s["replay"] = serde_json::json!({
                    "lines": st.lines, "messages": st.messages, "bad_lines": st.bad_lines, "results": st.results,
                });
                eprintln!("{}", serde_json::to_string_pretty(&s)?);
            }
            Ok(())
        }
    }
}
