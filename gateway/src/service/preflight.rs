//! What `edgejoin run` needs from this machine, checked before it touches
//! the network — and by `check-config`, so that a config `check-config`
//! passes does not make `run` refuse at once (the unit runs it as
//! `ExecStartPre`): the state directory can be created and written,
//! password files can be read, TLS files parse as the connection will use
//! them. Each error names the file and the config line that names it.

use std::path::Path;

use super::mqtt;
use crate::config::{Config, ConfigError, FileKey};

/// Checks every file and directory the config at `path` names, and that
/// this build can run it.
pub fn preflight(path: &Path, c: &Config) -> Result<(), ConfigError> {
    let files = &c.deployment.files;
    let whole =
        |reason: String| ConfigError::Invalid { path: path.to_path_buf(), line: 0, column: 0, reason };
    #[cfg(not(feature = "i2c"))]
    if let Some(s) = c.deployment.i2c.first() {
        return Err(whole(format!(
            "stream `{}` reads an I2C sensor, and this build has no I2C support: build with `cargo build --release --features i2c`",
            c.plan.streams[s.stream].name
        )));
    }
    for f in files {
        match f.key {
            FileKey::StateDir => {
                writable(&f.path).map_err(|e| f.at.error(format!("state_dir {}: {e}", f.path.display())))?
            }
            FileKey::PasswordFile => {
                let p = mqtt::password_path(&f.path);
                std::fs::read_to_string(&p)
                    .map_err(|e| f.at.error(format!("password_file {}: {e}", p.display())))?;
            }
            FileKey::Tls => {
                std::fs::File::open(&f.path).map_err(|e| f.at.error(format!("{}: {e}", f.path.display())))?;
            }
        }
    }
    let d = &c.deployment;
    // the TLS settings as each connection makes them (certificates, keys, the broker's name)
    let source = d.source.tls.as_ref().map(|t| (t, mqtt::client_tls(&d.source.broker, t).err()));
    let upstream = d.upstream.tls.as_ref().map(|t| (t, mqtt::client_tls(&d.upstream.broker, t).err()));
    for (t, err) in [source, upstream].into_iter().flatten() {
        if let Some(e) = err {
            let at = files
                .iter()
                .find(|f| f.key == FileKey::Tls && Some(&f.path) == t.ca_file.as_ref())
                .map(|f| f.at.clone());
            let reason = match e {
                super::error::ServiceError::Config(m) => m,
                other => other.to_string(),
            };
            return Err(match at {
                Some(at) => at.error(reason),
                None => whole(reason),
            });
        }
    }
    Ok(())
}

/// Whether the service can create (if missing) and write `dir`: a file is
/// created and removed in it, or in its nearest existing parent.
fn writable(dir: &Path) -> std::io::Result<()> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", at.display())));
    }
    let probe = at.join(format!(".edgejoin-check-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| {
        if at == dir {
            e
        } else {
            std::io::Error::new(e.kind(), format!("cannot be created in {}: {e}", at.display()))
        }
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_state_dir_under_a_writable_parent_passes_and_is_not_created() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        assert!(writable(&d).is_ok());
        assert!(!d.exists());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0, "the probe is gone");
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(writable(&f.join("state")).unwrap_err().to_string().contains("not a directory"));
    }
}
