//! The queue probe: how long an arrival waits before the node's runtime gets to it.
//!
//! A thread of its own, off every runtime, sends a datagram stamped with its send time
//! every [`PROBE_EVERY`] down one socket pair per runtime; a task on that runtime reads
//! it. The datagram takes the path a request takes (the socket turns readable, the
//! runtime's I/O driver notices, the task waits its turn in the run queue), so its
//! delay is what a request arriving then waited before the node started on it, without
//! a clock read on the request path. An idle runtime answers in microseconds; a closed
//! loop of N connections keeps about N requests ahead of it.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a probe is sent: 20 to an interval.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(5);

/// What one runtime's reader leaves for the probe thread: the delays read since the
/// probe thread last took them, in nanoseconds (a few dozen an interval; the lock is
/// taken by those two alone).
#[derive(Debug, Default)]
struct Slot {
    delays: Mutex<Vec<u64>>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.delays.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The probe's socket pairs, one per runtime.
pub(super) struct Probe {
    epoch: Instant,
    pairs: Mutex<Vec<(UnixDatagram, Arc<Slot>)>>,
}

impl Probe {
    pub fn new() -> Probe {
        Probe {
            epoch: Instant::now(),
            pairs: Mutex::new(Vec::new()),
        }
    }

    /// Starts measuring the runtime this is called on: a socket pair, and a task on
    /// this runtime that reads its end. Must be called within a Tokio runtime.
    pub fn attach(&self) -> std::io::Result<()> {
        let (tx, rx) = UnixDatagram::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let rx = tokio::net::UnixDatagram::from_std(rx)?;
        let slot = Arc::new(Slot::default());
        tokio::spawn(read(rx, slot.clone(), self.epoch));
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((tx, slot));
        Ok(())
    }

    /// Sends one probe down every pair (a full socket, a runtime far behind, skips
    /// this one: its reader will find the older ones).
    pub fn send(&self) {
        let stamp = nanos(self.epoch.elapsed()).to_le_bytes();
        for (tx, _) in self.pairs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = tx.send(&stamp);
        }
    }

    /// The longest of the runtimes' median delays since the last call: a runtime
    /// whose queue held through most of the interval counts, however idle the others.
    /// The median, not CoDel's minimum: the runtime serves in rounds (every socket the
    /// I/O driver found ready, then the next poll), and with a queue of hundreds a probe
    /// now and then lands at the head of a round and waits nothing (measured: a 256-
    /// connection closed loop on one core gave minima of 0.03-3.3 ms over intervals
    /// whose median was 3.4-4.5 ms). `None` when some runtime read no probe at all, or
    /// none is attached.
    pub fn take(&self) -> Option<Duration> {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let mut worst = None;
        for (_, slot) in pairs.iter() {
            let mut delays = std::mem::take(&mut *slot.lock());
            if delays.is_empty() {
                return None;
            }
            let mid = delays.len() / 2;
            let median = *delays.select_nth_unstable(mid).1;
            worst = Some(worst.unwrap_or(0).max(median));
        }
        worst.map(Duration::from_nanos)
    }

    /// Whether any runtime is attached.
    pub fn attached(&self) -> bool {
        !self
            .pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Reads probes until the probe thread's end closes, keeping their delays.
async fn read(rx: tokio::net::UnixDatagram, slot: Arc<Slot>, epoch: Instant) {
    let mut buf = [0u8; 16];
    loop {
        if rx.readable().await.is_err() {
            return;
        }
        // Every datagram waiting, each timed from its own stamp.
        loop {
            match rx.try_recv(&mut buf) {
                Ok(8) => {
                    let mut stamp = [0u8; 8];
                    stamp.copy_from_slice(&buf[..8]);
                    let sent = u64::from_le_bytes(stamp);
                    let delay = nanos(epoch.elapsed()).saturating_sub(sent);
                    slot.lock().push(delay);
                }
                // Zero bytes: the other end is gone (the node stops).
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_runtime_answers_at_once_and_a_blocked_one_late() {
        let probe = Probe::new();
        assert!(!probe.attached());
        assert_eq!(probe.take(), None, "nothing attached");
        probe.attach().unwrap();
        probe.send();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let idle = probe.take().expect("a probe was read");
        assert!(idle < Duration::from_millis(10), "{idle:?}");
        assert_eq!(probe.take(), None, "taken: none read since");
        // The runtime's one thread is held for 50 ms as a probe arrives.
        probe.send();
        std::thread::sleep(Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let held = probe.take().expect("read once the runtime was free");
        assert!(held >= Duration::from_millis(50), "{held:?}");
    }
}
