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

/// Where in the config file a value was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// An error about the value written here.
    pub fn error(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: self.line,
            column: self.column,
            reason: reason.into(),
        }
    }
}

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Checker<'_> {
    pub(super) fn at(&self, span: Range<usize>) -> Location {
        let (line, column) = line_col(self.text, span.start);
        Location { path: self.path.to_path_buf(), line, column }
    }

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

/// ` (did you mean `x`?)` for the candidate nearest to `name`, when one is
/// near enough to be a slip (an edit for every three letters, at least one).
pub(super) fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map_or(String::new(), |(_, c)| format!(" (did you mean `{c}`?)"))
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diag + usize::from(ca != cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A TOML or serde message, with a suggestion when it names an unknown
/// field among the expected ones (serde: "unknown field `x`, expected one of `a`, `b`").
pub(super) fn suggest_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.to_string() };
    let Some((field, expected)) = rest.split_once('`') else { return message.to_string() };
    let names = expected.split('`').skip(1).step_by(2);
    format!("{message}{}", did_you_mean(field, names))
}

/// Where a syntax error belongs: the TOML parser often reports a line's
/// mistake (an unclosed array or string) at the start of the next line;
/// such a position moves back to the end of the previous non-blank line.
pub(super) fn syntax_error_offset(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    if offset != line_start || offset == 0 {
        return offset;
    }
    let before = text[..offset].trim_end();
    before.chars().last().map_or(offset, |c| before.len() - c.len_utf8())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_come_only_for_slips() {
        assert_eq!(did_you_mean("sizee", ["size", "slide", "name"]), " (did you mean `size`?)");
        assert_eq!(did_you_mean("temprature", ["temperature", "humidity"]), " (did you mean `temperature`?)");
        assert_eq!(did_you_mean("xyz", ["size", "name"]), "");
        let m = suggest_field("unknown field `latenes`, expected one of `name`, `topics`, `lateness`");
        assert!(m.ends_with("(did you mean `lateness`?)"), "{m}");
    }

    #[test]
    fn a_syntax_error_at_a_line_start_moves_to_the_line_before() {
        let text = "a = 1\nb = [1, 2\n\nc = 3\n";
        let at = text.find("c =").unwrap();
        assert_eq!(line_col(text, syntax_error_offset(text, at)).0, 2);
        let mid = text.find("2").unwrap();
        assert_eq!(syntax_error_offset(text, mid), mid, "inside a line: unchanged");
    }
}
