//! Volume: takes each API call to a data source (requests, bytes) per identity, gives NHI-040 (a time bucket far above the learned baseline, median + k·MAD) and NHI-041 (the contract's fixed-window limits exceeded); keeps the baselines and the settings they use.

use serde::Deserialize;

use super::{Call, Cx, Seen, Subject};
use crate::detect::{
    finding::{Evidence, Rule},
    state::VolumeBaseline,
    MAX_KEYS,
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeConfig {
    #[serde(with = "humantime_serde")]
    pub bucket: std::time::Duration,
    /// Closed buckets kept as the baseline.
    pub history: usize,
    /// Closed buckets needed before spikes are judged.
    pub warmup: usize,
    /// A bucket below these is never a spike, whatever the baseline.
    pub min_requests: u64,
    #[serde(deserialize_with = "crate::detect::size")]
    pub min_bytes: u64,
    /// How many robust standard deviations above the median is a spike.
    pub sensitivity: f64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            bucket: std::time::Duration::from_secs(60),
            history: 60,
            warmup: 30,
            min_requests: 30,
            min_bytes: 10 << 20,
            sensitivity: 6.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Requests,
    Bytes,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::Bytes => "bytes",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Excess {
    pub metric: Metric,
    /// The window's count when the threshold was crossed.
    pub observed: u64,
    /// Baseline median (spikes) or the limit (limits).
    pub expected: f64,
    pub threshold: u64,
    pub window_seconds: u64,
}

const MINUTE: i64 = 60_000_000_000;
const HOUR: i64 = 60 * MINUTE;

impl VolumeBaseline {
    /// Adds one call at `t` (ns); returns what crossed its baseline threshold in this bucket
    /// (each metric at most once per bucket).
    pub fn add(&mut self, cfg: &VolumeConfig, t: i64, requests: u64, bytes: u64) -> Vec<Excess> {
        let bucket = i64::try_from(cfg.bucket.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1);
        self.roll(cfg, bucket, t);
        self.requests += requests;
        self.bytes += bytes;
        let mut out = Vec::new();
        let secs = (bucket / 1_000_000_000) as u64;
        if let Some(thr) = self.threshold_requests {
            if self.flagged & 1 == 0 && self.requests > thr {
                self.flagged |= 1;
                out.push(Excess {
                    metric: Metric::Requests,
                    observed: self.requests,
                    expected: self.expected_requests,
                    threshold: thr,
                    window_seconds: secs,
                });
            }
        }
        if let Some(thr) = self.threshold_bytes {
            if self.flagged & 2 == 0 && self.bytes > thr {
                self.flagged |= 2;
                out.push(Excess {
                    metric: Metric::Bytes,
                    observed: self.bytes,
                    expected: self.expected_bytes,
                    threshold: thr,
                    window_seconds: secs,
                });
            }
        }
        out
    }

    /// Requests in the current bucket (for the inventory's peak rate).
    pub fn current_requests(&self) -> u64 {
        self.requests
    }

    fn roll(&mut self, cfg: &VolumeConfig, bucket: i64, t: i64) {
        let start = t - t.rem_euclid(bucket);
        if self.bucket_start == 0 {
            self.bucket_start = start;
            self.recompute(cfg);
            return;
        }
        if start <= self.bucket_start {
            return;
        }
        let closed = ((start - self.bucket_start) / bucket) as u64;
        let (r, b) = (self.requests, self.bytes);
        self.push(cfg, r, b);
        // Quiet buckets are part of the baseline; more than the history's worth all look alike.
        for _ in 1..closed.min(cfg.history as u64 + 1) {
            self.push(cfg, 0, 0);
        }
        self.requests = 0;
        self.bytes = 0;
        self.flagged = 0;
        self.bucket_start = start;
        self.recompute(cfg);
    }

    fn push(&mut self, cfg: &VolumeConfig, r: u64, b: u64) {
        self.history_requests.push_back(r);
        self.history_bytes.push_back(b);
        while self.history_requests.len() > cfg.history.max(1) {
            self.history_requests.pop_front();
        }
        while self.history_bytes.len() > cfg.history.max(1) {
            self.history_bytes.pop_front();
        }
    }

    fn recompute(&mut self, cfg: &VolumeConfig) {
        if self.history_requests.len() < cfg.warmup.max(1) {
            self.threshold_requests = None;
            self.threshold_bytes = None;
            return;
        }
        let (mr, dr) = median_mad(self.history_requests.iter().copied());
        let (mb, db) = median_mad(self.history_bytes.iter().copied());
        // A floor on the spread: a perfectly flat history (MAD 0) must not make one extra call a spike.
        let sr = (1.4826 * dr).max(mr.sqrt()).max(1.0);
        let sb = (1.4826 * db).max(0.1 * mb).max(1.0);
        self.expected_requests = mr;
        self.expected_bytes = mb;
        self.threshold_requests =
            Some(((mr + cfg.sensitivity * sr).ceil() as u64).max(cfg.min_requests));
        self.threshold_bytes = Some(((mb + cfg.sensitivity * sb).ceil() as u64).max(cfg.min_bytes));
    }

    /// Contract limits over fixed windows (a minute for requests, an hour for bytes); each at most
    /// once per window.
    pub fn limits(
        &mut self,
        t: i64,
        requests: u64,
        bytes: u64,
        requests_per_minute: Option<u64>,
        bytes_per_hour: Option<u64>,
    ) -> Vec<Excess> {
        let minute = t - t.rem_euclid(MINUTE);
        if minute != self.minute_start {
            self.minute_start = minute;
            self.minute_requests = 0;
            self.limit_flagged &= !1;
        }
        let hour = t - t.rem_euclid(HOUR);
        if hour != self.hour_start {
            self.hour_start = hour;
            self.hour_bytes = 0;
            self.limit_flagged &= !2;
        }
        self.minute_requests += requests;
        self.hour_bytes += bytes;
        let mut out = Vec::new();
        if let Some(l) = requests_per_minute {
            if self.limit_flagged & 1 == 0 && self.minute_requests > l {
                self.limit_flagged |= 1;
                out.push(Excess {
                    metric: Metric::Requests,
                    observed: self.minute_requests,
                    expected: l as f64,
                    threshold: l,
                    window_seconds: 60,
                });
            }
        }
        if let Some(l) = bytes_per_hour {
            if self.limit_flagged & 2 == 0 && self.hour_bytes > l {
                self.limit_flagged |= 2;
                out.push(Excess {
                    metric: Metric::Bytes,
                    observed: self.hour_bytes,
                    expected: l as f64,
                    threshold: l,
                    window_seconds: 3600,
                });
            }
        }
        out
    }
}

#[inline(always)]
pub(in crate::detect) fn detect(cx: &mut Cx<'_>, id: &mut Subject<'_>, seen: &Seen<'_>) {
    if let Some(c) = &seen.call {
        judge(cx, id, c);
    }
}

fn judge(cx: &mut Cx<'_>, id: &mut Subject<'_>, call: &Call<'_>) {
    let (contract, record, hot) = (id.contract, &mut *id.record, &mut *id.hot);
    let (ds, bytes) = (call.ds, call.call.request_bytes + call.call.response_bytes);
    let name = cx.rules.ds_name(ds);
    let limits = cx
        .contract(contract)
        .and_then(|c| c.limits.get(&ds).copied());
    let mut h = hot.ds(ds);
    if let Some((v, peak)) = h.as_mut().and_then(|h| h.volume.as_mut()) {
        let spikes = v.add(&cx.cfg.volume, cx.t, 1, bytes);
        let over = match limits {
            Some((rpm, bph)) => v.limits(cx.t, 1, bytes, rpm, bph),
            None => Vec::new(),
        };
        *peak = (*peak).max(v.current_requests());
        return findings(cx, contract, name, spikes, over);
    }
    if !record.volume.contains_key(name) {
        if record.volume.len() >= MAX_KEYS {
            record.dropped += 1;
            return;
        }
        record.volume.insert(name.to_owned(), Default::default());
    }
    let Some(v) = record.volume.get_mut(name) else {
        return;
    };
    let spikes = v.add(&cx.cfg.volume, cx.t, 1, bytes);
    let over = match limits {
        Some((rpm, bph)) => v.limits(cx.t, 1, bytes, rpm, bph),
        None => Vec::new(),
    };
    let current = v.current_requests();
    // Per-minute peaks: with another bucket size the current bucket still approximates it.
    match record.peak_requests_per_minute.get_mut(name) {
        Some(p) => *p = (*p).max(current),
        None => {
            record
                .peak_requests_per_minute
                .insert(name.to_owned(), current);
        }
    }
    if let Some(h) = h {
        // From now on this data source's baseline is updated in the cache.
        let peak = record
            .peak_requests_per_minute
            .get(name)
            .copied()
            .unwrap_or(current);
        h.volume = Some((v.clone(), peak));
    }
    findings(cx, contract, name, spikes, over);
}

fn findings(
    cx: &mut Cx<'_>,
    contract: Option<usize>,
    name: &str,
    spikes: Vec<Excess>,
    over: Vec<Excess>,
) {
    if spikes.is_empty() && over.is_empty() {
        return;
    }
    let who = cx.who();
    for e in spikes {
        let Excess {
            metric,
            observed,
            expected,
            threshold,
            window_seconds,
        } = e;
        cx.raise(
            Rule::VolumeSpike,
            format!("{name}\0{}", metric.name()),
            format!(
                "{who} made {observed} {} to {name} within {window_seconds}s; its baseline is {expected:.0} (threshold {threshold})",
                if metric == Metric::Requests { "requests" } else { "bytes of traffic" }
            ),
            contract,
            Evidence {
                data_source: Some(name.to_owned()),
                metric: Some(metric.name().into()),
                observed: Some(observed as f64),
                expected: Some(expected),
                limit: Some(threshold as f64),
                window_seconds: Some(window_seconds),
                ..Evidence::default()
            },
        );
    }
    for e in over {
        let Excess {
            metric,
            observed,
            threshold,
            window_seconds,
            ..
        } = e;
        cx.raise(
            Rule::LimitExceeded,
            format!("{name}\0{}", metric.name()),
            format!(
                "{who} exceeded its contract's limit of {threshold} {} per {} on {name}",
                metric.name(),
                if window_seconds == 60 {
                    "minute"
                } else {
                    "hour"
                }
            ),
            contract,
            Evidence {
                data_source: Some(name.to_owned()),
                metric: Some(metric.name().into()),
                observed: Some(observed as f64),
                expected: Some(threshold as f64),
                limit: Some(threshold as f64),
                window_seconds: Some(window_seconds),
                ..Evidence::default()
            },
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_mad(values: impl Iterator<Item = u64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.map(|x| x as f64).collect();
    let m = median(&mut v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    (m, median(&mut dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn cfg() -> VolumeConfig {
        VolumeConfig {
            bucket: std::time::Duration::from_secs(60),
            history: 60,
            warmup: 10,
            min_requests: 30,
            min_bytes: 1 << 20,
            sensitivity: 6.0,
        }
    }

    /// `per_minute` calls of 1 KiB in each of `minutes` minutes from `start`.
    fn steady(b: &mut VolumeBaseline, start: i64, minutes: i64, per_minute: i64) -> Vec<Excess> {
        let mut out = Vec::new();
        for m in 0..minutes {
            for i in 0..per_minute {
                let t = start + m * 60 * S + i * (60 * S / per_minute.max(1));
                out.extend(b.add(&cfg(), t, 1, 1024));
            }
        }
        out
    }

    #[test]
    fn steady_traffic_with_noise_is_quiet() {
        let mut b = VolumeBaseline::default();
        let start = 1_795_000_000 * S;
        let mut out = Vec::new();
        for m in 0..120 {
            // 40–60 calls a minute.
            let n = 40 + (m * 7) % 21;
            out.extend(steady(&mut b, start + m * 60 * S, 1, n));
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn burst_after_quiet_baseline_is_a_spike_once_per_bucket() {
        let mut b = VolumeBaseline::default();
        let start = 1_795_000_000 * S;
        assert!(steady(&mut b, start, 30, 5).is_empty());
        let t = start + 30 * 60 * S;
        let mut out = Vec::new();
        for i in 0..500 {
            out.extend(b.add(&cfg(), t + i * 10_000_000, 1, 1024));
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let e = &out[0];
        assert_eq!(e.metric, Metric::Requests);
        assert_eq!(e.expected, 5.0);
        assert_eq!(e.observed, e.threshold + 1);
        assert_eq!(
            e.threshold, 30,
            "the minimum volume dominates a small baseline"
        );
        assert_eq!(e.window_seconds, 60);
        // The bytes threshold (1 MiB floor) is crossed by a large response.
        let out = b.add(&cfg(), t + 6 * S, 1, 2 << 20);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].metric, Metric::Bytes);
    }

    #[test]
    fn no_judgement_during_warmup_and_gaps_count_as_quiet() {
        let mut b = VolumeBaseline::default();
        let start = 1_795_000_000 * S;
        // Warm-up: a burst in the first minutes is not judged.
        let mut out = Vec::new();
        for i in 0..1000 {
            out.extend(b.add(&cfg(), start + i * 1_000_000, 1, 10));
        }
        assert!(out.is_empty());
        // A day later: the history is all quiet minutes now.
        let t = start + 86_400 * S;
        b.add(&cfg(), t, 1, 10);
        assert_eq!(b.history_requests.len(), 60);
        assert!(b.history_requests.iter().all(|&r| r == 0));
        assert_eq!(b.threshold_requests, Some(30));
    }

    #[test]
    fn limits_per_fixed_window() {
        let mut b = VolumeBaseline::default();
        let t = 1_795_000_020 * S;
        let mut hits = Vec::new();
        for i in 0..20 {
            hits.extend(b.limits(t + i * S, 1, 100, Some(10), Some(1500)));
        }
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert_eq!(
            (hits[0].metric, hits[0].observed, hits[0].threshold),
            (Metric::Requests, 11, 10)
        );
        assert_eq!((hits[1].metric, hits[1].observed), (Metric::Bytes, 1600));
        // The next minute starts afresh for requests; bytes stay over for the hour without repeating.
        let next = t - t.rem_euclid(MINUTE) + MINUTE;
        let mut hits = Vec::new();
        for i in 0..11 {
            hits.extend(b.limits(next + i * S, 1, 100, Some(10), Some(1500)));
        }
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].metric, Metric::Requests);
    }
}
