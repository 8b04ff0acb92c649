//! Why the service could not start or had to stop: one error type with
//! messages that say what to do.

use std::io;

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("state_dir {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state_dir {path} is full ({source}): free some space; the service starts again by itself under systemd")]
    StateDirFull {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is locked by another edgejoin using the same state_dir ({source}); stop it, or give this one its own state_dir")]
    Locked {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Config(String),
}

pub(super) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServiceError {
    move |source| ServiceError::Io { what, source }
}
