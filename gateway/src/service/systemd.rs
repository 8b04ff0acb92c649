//! What the service tells systemd (sd_notify): ready, reloading, stopping, a status
//! line, and the watchdog's keep-alive. Harmless when not run by systemd.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// A reload began (`READY=1` follows when the new config runs).
pub fn reloading() {
    let mut state = vec![NotifyState::Reloading];
    state.extend(NotifyState::monotonic_usec_now().ok());
    let _ = sd_notify::notify(&state);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// The one-line status `systemctl status` shows.
pub fn status(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(text)]);
}

/// Pings the watchdog at half its interval, when the unit has one (`WatchdogSec=`).
pub struct Watchdog {
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    pub fn from_env() -> Self {
        Watchdog { every: sd_notify::watchdog_enabled().map(|d| d / 2), last: Instant::now() }
    }

    pub fn ping(&mut self) {
        if let Some(every) = self.every {
            if self.last.elapsed() >= every {
                self.last = Instant::now();
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        }
    }
}
