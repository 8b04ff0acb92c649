//! What every section's checks share: the error type with file:line:column,
//! the checker that turns a span into a line, the limits a config may not
//! pass, and the checks of single values (durations, counts).

use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::units::parse_duration_ms;

/// A value as written, with where it was written.
pub(super) type S<T> = Spanned<T>;

/// The most engine state a config may imply (it is all allocated at start).
pub const MAX_STATE_BYTES: u64 = 2 << 30;
/// Largest `capacity` (slots per key) accepted.
pub const MAX_CAPACITY: u32 = 1 << 20;
/// Largest `max_keys` accepted.
pub const MAX_KEYS: u32 = 1 << 22;

pub(super) const DEFAULT_MAX_DEVICES: NonZeroU32 = match NonZeroU32::new(1024) {
    Some(n) => n,
    None => unreachable!(),
};

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {reason}")]
    Invalid { path: PathBuf, line: usize, column: usize, reason: String },
}

impl ConfigError {
    /// The 1-based line the error points at (0 when it has none).
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::Invalid { line, .. } => *line,
        }
    }
}

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Checker<'_> {
    pub(super) fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid { path: self.path.to_path_buf(), line, column, reason: reason.into() }
    }

    pub(super) fn duration(&self, s: &S<String>, what: &str) -> Result<i64, ConfigError> {
        parse_duration_ms(s.get_ref()).map_err(|e| self.err(s.span(), format!("{what}: {e}")))
    }

    pub(super) fn count(&self, s: &S<i64>, what: &str, max: u32) -> Result<NonZeroU32, ConfigError> {
        let v = *s.get_ref();
        if v < 1 {
            return Err(self.err(s.span(), format!("{what} = {v}: it must be at least 1")));
        }
        if v > max as i64 {
            return Err(self.err(s.span(), format!("{what} = {v}: at most {max} is accepted")));
        }
        Ok(NonZeroU32::new(v as u32).expect("checked >= 1"))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

pub(super) fn nonneg(ck: &Checker<'_>, s: &S<String>, what: &str) -> Result<i64, ConfigError> {
    let v = ck.duration(s, what)?;
    if v < 0 {
        return Err(ck.err(s.span(), format!("{what} may not be negative")));
    }
    Ok(v)
}

pub(super) fn positive(ck: &Checker<'_>, s: &S<String>, what: &str) -> Result<i64, ConfigError> {
    let v = ck.duration(s, what)?;
    if v <= 0 {
        return Err(ck.err(s.span(), format!("{what} must be longer than 0")));
    }
    Ok(v)
}
