//! Ring-buffer reader: drains kernel records in batches (on wakeup or on a timer) into a record handler.

use std::{os::fd::AsRawFd, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

/// Something that takes raw records one at a time and is told when a batch ends.
pub trait RecordHandler {
    fn record(&mut self, rec: &[u8]);
    fn batch_done(&mut self) {}
    /// Called on every poll tick, records or not.
    fn tick(&mut self) {}
}

/// Reads until `stop` resolves. The kernel only wakes us once `wakeup_bytes` are
/// waiting, so the timer bounds how long a small batch can sit in the ring.
pub async fn run<H: RecordHandler>(
    ring: RingBuf<MapData>,
    poll_interval: Duration,
    handler: &mut H,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let fd = ring.as_raw_fd();
    // SAFETY: the ring buffer (and so its fd) is moved into the AsyncFd and
    // lives exactly as long as the registration.
    let mut afd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(format!("registering ring buffer fd {fd}: {e}")))?;
    let mut tick = tokio::time::interval(poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            guard = afd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), handler);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain(afd.get_mut(), handler);
                handler.tick();
            }
            () = &mut stop => {
                drain(afd.get_mut(), handler);
                return Ok(());
            }
        }
    }
}

fn drain<H: RecordHandler>(ring: &mut RingBuf<MapData>, handler: &mut H) {
    let mut n = 0usize;
    while let Some(item) = ring.next() {
        handler.record(&item);
        n += 1;
    }
    if n > 0 {
        handler.batch_done();
    }
}
