//! Failure episodes for the log: takes the failures and successes of one operation, says when to log — once when it starts failing, then at most once per interval with the count since, and once when it works again.

use std::time::{Duration, Instant, SystemTime};

/// A failing operation repeated per alert (a full disk fails every append) must not log per
/// alert: the log would drown what it reports, and fill the disk the journal shares.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Episode {
    every: Duration,
    /// Set while failing: when it began (wall clock, for the log), and when last logged.
    since: Option<(SystemTime, Instant)>,
    /// Failures since the last line, and in the whole episode.
    unlogged: u64,
    total: u64,
}

/// What to log about a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Log {
    /// The first failure of an episode: say what fails, where and why.
    Start,
    /// `failures` more since the last line; the episode began at `since`.
    Summary { failures: u64, since: String },
    /// Nothing: a line went out less than an interval ago.
    Quiet,
}

impl Episode {
    pub fn new(every: Duration) -> Episode {
        Episode {
            every,
            since: None,
            unlogged: 0,
            total: 0,
        }
    }

    /// One failure.
    pub fn failed(&mut self) -> Log {
        self.total += 1;
        match &mut self.since {
            None => {
                self.since = Some((SystemTime::now(), Instant::now()));
                Log::Start
            }
            Some((began, last)) => {
                self.unlogged += 1;
                if last.elapsed() < self.every {
                    return Log::Quiet;
                }
                *last = Instant::now();
                let failures = std::mem::take(&mut self.unlogged);
                Log::Summary {
                    failures,
                    since: humantime::format_rfc3339_seconds(*began).to_string(),
                }
            }
        }
    }

    /// A success: `Some(failures in the episode)` when it ends one.
    pub fn succeeded(&mut self) -> Option<u64> {
        self.since.take()?;
        self.unlogged = 0;
        Some(std::mem::take(&mut self.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_episode_then_summaries_at_most_every_interval() {
        let mut e = Episode::new(Duration::from_secs(3600));
        assert_eq!(e.succeeded(), None);
        assert_eq!(e.failed(), Log::Start);
        for _ in 0..1000 {
            assert_eq!(e.failed(), Log::Quiet);
        }
        assert_eq!(e.succeeded(), Some(1001));
        assert_eq!(e.failed(), Log::Start, "a new episode");

        let mut e = Episode::new(Duration::ZERO);
        assert_eq!(e.failed(), Log::Start);
        assert!(matches!(e.failed(), Log::Summary { failures: 1, .. }));
        assert!(matches!(e.failed(), Log::Summary { failures: 1, .. }));
        assert_eq!(e.succeeded(), Some(3));
    }
}
