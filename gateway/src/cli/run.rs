//! `edgejoin run`: logging set up for a terminal or journald, the config
//! loaded and checked, then the live service ([`crate::service::run`]).

use std::path::Path;

use crate::config::{self, Deployment};

pub fn run(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    init_tracing();
    let c = config::load(path)?;
    // what check-config checks on this machine, before the network
    crate::service::preflight::preflight(path, &c)?;
    warn_on_readable_secrets(&c.deployment);
    for w in crate::cli::check_config::warnings(&c) {
        tracing::warn!("{w}");
    }
    tracing::info!(
        "edgejoin {} starting: {} streams, {} windows, {} joins, state in {}",
        env!("CARGO_PKG_VERSION"),
        c.plan.streams.len(),
        c.plan.windows.len(),
        c.plan.joins.len(),
        c.deployment.gateway.state_dir.display()
    );
    crate::service::run(c)?;
    Ok(())
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
fn warn_on_readable_secrets(p: &Deployment) {
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
