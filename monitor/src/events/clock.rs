//! Kernel boot-clock timestamps → wall-clock time.

use std::time::{Duration, SystemTime};

/// Converts kernel boot-clock timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_to_unix_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Clock {
            boot_to_unix_ns: unix - boot,
        }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let unix = (i128::from(ktime_ns) + self.boot_to_unix_ns).max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(unix)
    }
}

/// CLOCK_BOOTTIME, the clock of the kernel's timestamps.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
