//! The state directory as the service holds it: one gateway per directory
//! (an exclusive lock, refused when another process holds it), files only
//! the gateway's user can read (umask 077, as systemd's `UMask=0077`), and a
//! start-up probe that proves the gateway can write there before it says
//! READY.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::error::ServiceError;

extern "C" {
    fn flock(fd: i32, operation: i32) -> i32;
    fn umask(mask: u32) -> u32;
}
const LOCK_EX: i32 = 2;
const LOCK_NB: i32 = 4;

/// New files 0600, new directories 0700.
pub fn restrict_umask() {
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        umask(0o077);
    }
}

/// Takes the directory's lock (`state_dir/lock`), held as long as the file stays open.
pub fn lock(dir: &Path) -> Result<File, ServiceError> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ServiceError::StateDir { path: path.clone(), source })?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { flock(f.as_raw_fd(), LOCK_EX | LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(ServiceError::Locked { path, source: e });
    }
    let mut w = &f;
    let _ = f.set_len(0);
    let _ = writeln!(w, "{}", std::process::id());
    Ok(f)
}

/// Writes and fsyncs a small file and removes it: fails when the directory
/// is full or not writable, before the service says READY.
pub fn probe(dir: &Path) -> Result<(), ServiceError> {
    let path = dir.join(".probe");
    let res = (|| {
        let mut f = File::create(&path)?;
        f.write_all(&[0u8; 16 << 10])?;
        f.sync_all()
    })();
    let _ = fs::remove_file(&path);
    res.map_err(|source| {
        if super::frame::is_storage_full(&source) {
            ServiceError::StateDirFull { path: dir.to_path_buf(), source }
        } else {
            ServiceError::StateDir { path: dir.to_path_buf(), source }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_gateway_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let second = lock(dir.path()).unwrap_err();
        assert!(second.to_string().contains("another edgejoin"), "{second}");
        drop(first);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn the_probe_writes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        probe(dir.path()).unwrap();
        assert!(!dir.path().join(".probe").exists());
        assert!(probe(&dir.path().join("missing")).is_err());
    }
}
