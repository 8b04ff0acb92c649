//! How the service stops, in order: the engine stops taking input (it sends
//! the acknowledgements it owes, checkpoints), then the uplink drains the
//! spool for at most `shutdown_timeout`. One watch channel carries the stage
//! to the engine thread and the uplink task, and wakes them when it changes.

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Running,
    /// The engine takes no more messages; what the broker still holds it sends again next time.
    StopIntake,
    /// The engine is done: the uplink sends what the spool holds, then disconnects.
    DrainUplink,
}

pub struct Shutdown(watch::Sender<Stage>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(watch::Sender::new(Stage::Running))
    }
}

impl Shutdown {
    /// Moves to `stage` (never back).
    pub fn advance(&self, stage: Stage) {
        self.0.send_if_modified(|s| {
            let later = stage > *s;
            if later {
                *s = stage;
            }
            later
        });
    }

    pub fn watch(&self) -> watch::Receiver<Stage> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_only_move_forward() {
        let s = Shutdown::default();
        let w = s.watch();
        s.advance(Stage::DrainUplink);
        s.advance(Stage::StopIntake);
        assert_eq!(*w.borrow(), Stage::DrainUplink);
    }
}
