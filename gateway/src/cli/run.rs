//! `edgejoin run`: logging set up for a terminal or journald, the config
//! loaded and checked, then the live service ([`crate::service::run`]).

use std::path::Path;

use crate::config::{self, Config, Deployment, LogFormat};

pub fn run(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    // the log's format is the config's: a file that does not load is said on stderr as is
    let loaded = config::load(path);
    let format = loaded.as_ref().map_or(LogFormat::Text, |c| c.deployment.service.log_format);
    init_tracing(format);
    let c = checked(path, loaded?)?;
    tracing::info!("edgejoin {} starting: {}", env!("CARGO_PKG_VERSION"), outline(&c));
    // SIGHUP: the same checks on the file as it is now
    let reload = || {
        let c = config::load(path)
            .map_err(Into::into)
            .and_then(|c| checked(path, c))
            .map_err(|e| e.to_string())?;
        if c.deployment.service.log_format != format {
            tracing::warn!("log_format changes at the next start, not on a reload");
        }
        tracing::info!("reloading {}: {}", path.display(), outline(&c));
        Ok(c)
    };
    crate::service::run(c, reload)?;
    Ok(())
}

/// `3 streams, 2 windows, 1 joins, state in /var/lib/edgejoin`.
fn outline(c: &Config) -> String {
    format!(
        "{} streams, {} windows, {} joins, state in {}",
        c.plan.streams.len(),
        c.plan.windows.len(),
        c.plan.joins.len(),
        c.deployment.gateway.state_dir.display()
    )
}

/// The config (loaded from `path`) put through what check-config checks on
/// this machine, before the network; its warnings logged.
fn checked(path: &Path, c: Config) -> Result<Config, Box<dyn std::error::Error>> {
    crate::service::preflight::preflight(path, &c)?;
    warn_on_readable_secrets(&c.deployment);
    for w in crate::cli::check_config::warnings(&c) {
        tracing::warn!("{w}");
    }
    Ok(c)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("EDGEJOIN_LOG").unwrap_or_else(|_| EnvFilter::new("info,rumqttc=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == LogFormat::Json {
        // one object per line, with its timestamp, also under journald
        b.json().with_ansi(false).init();
        return;
    }
    // colours only for a person at a terminal, not in a file or a pipe
    let b = b.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
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
