//! Range checks for settings: takes a key as it stands in the file, a value and its bounds, gives the sentence `check-config` prints when the value is out of range.
//!
//! A zero window or interval is a busy loop or a detector that never fires; a huge count is memory
//! the node does not have. Each stage's `validate()` states its ranges with these.

use std::time::Duration;

/// `key` must lie in `min..=max`.
pub fn duration(key: &str, v: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if v < min || v > max {
        return Err(format!(
            "{key} must be between {} and {}, got {}",
            humantime::format_duration(min),
            humantime::format_duration(max),
            humantime::format_duration(v)
        ));
    }
    Ok(())
}

/// `key` must lie in `min..=max`.
pub fn count<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    min: T,
    max: T,
) -> Result<(), String> {
    if v < min || v > max {
        return Err(format!("{key} must be between {min} and {max}, got {v}"));
    }
    Ok(())
}

pub const SECOND: Duration = Duration::from_secs(1);
pub const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86_400);
