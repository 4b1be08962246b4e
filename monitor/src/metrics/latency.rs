//! Latency quantiles: takes durations per label value into HdrHistograms, gives OpenMetrics summary text (quantiles, `_sum`, `_count`, in seconds).

use std::{
    fmt::Write as _,
    sync::{Mutex, RwLock},
};

use hdrhistogram::Histogram;

/// Quantiles exported for every label value.
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Trackable range in nanoseconds: 1 µs .. 1 h. Shorter values land in the lowest bucket, longer
/// ones are clamped to 1 h (the sum and count stay exact).
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 3_600_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latency quantiles kept in an HdrHistogram per label value (1 µs .. 1 h, 3 significant digits); exported
/// summary-shaped: NAME{LABEL="v",quantile="0.5|0.9|0.99|0.999"} + NAME_sum + NAME_count (seconds).
///
/// Quantiles are over everything recorded since the start, like a summary without a sliding window:
/// dashboards compare them over time, and `rate(_sum)/rate(_count)` gives a recent mean.
pub struct LatencyQuantiles {
    label: &'static str,
    /// Few label values (a stage, the configured sinks): a scan beats a map, and each value has its
    /// own lock so recording for one never waits for another.
    series: RwLock<Vec<(String, Mutex<Series>)>>,
}

struct Series {
    hist: Histogram<u64>,
    sum_ns: u128,
    count: u64,
}

impl Series {
    fn new() -> Series {
        Series {
            // The bounds are constants that satisfy the crate's preconditions.
            hist: Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("valid histogram bounds"),
            sum_ns: 0,
            count: 0,
        }
    }

    fn record(&mut self, nanos: u64) {
        self.hist.saturating_record(nanos);
        self.sum_ns += u128::from(nanos);
        self.count += 1;
    }
}

impl std::fmt::Debug for LatencyQuantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyQuantiles")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl LatencyQuantiles {
    pub fn new(label: &'static str) -> Self {
        LatencyQuantiles {
            label,
            series: RwLock::new(Vec::new()),
        }
    }

    pub fn record(&self, value: &str, nanos: u64) {
        {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, s)) = series.iter().find(|(v, _)| v == value) {
                s.lock().unwrap_or_else(|e| e.into_inner()).record(nanos);
                return;
            }
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        // Another thread may have added it between the two locks.
        if let Some((_, s)) = series.iter().find(|(v, _)| v == value) {
            s.lock().unwrap_or_else(|e| e.into_inner()).record(nanos);
            return;
        }
        let mut s = Series::new();
        s.record(nanos);
        series.push((value.to_owned(), Mutex::new(s)));
    }

    /// The `q` quantile of one label value's latencies, in seconds; None when nothing was recorded.
    pub fn quantile(&self, value: &str, q: f64) -> Option<f64> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        let (_, s) = series.iter().find(|(v, _)| v == value)?;
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        (s.count > 0).then(|| s.hist.value_at_quantile(q) as f64 / 1e9)
    }

    /// Appends one OpenMetrics summary family named `name` (a full name, prefix included).
    pub fn encode(&self, name: &str, help: &str, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} summary");
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        for (value, s) in series.iter() {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            let label = format!("{}=\"{}\"", self.label, escape_value(value));
            for q in QUANTILES {
                let v = s.hist.value_at_quantile(q) as f64 / 1e9;
                let _ = writeln!(out, "{name}{{{label},quantile=\"{q}\"}} {}", float(v));
            }
            let sum = s.sum_ns as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{label}}} {}", float(sum));
            let _ = writeln!(out, "{name}_count{{{label}}} {}", s.count);
        }
    }
}

/// Rust prints `1` for 1.0; OpenMetrics accepts it, but a float reads clearer and parsers agree.
fn float(v: f64) -> String {
    if v.fract() == 0.0 && v.is_finite() {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn escape_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    let _ = super::label::write_escaped(&mut s, v);
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_known_data() {
        let l = LatencyQuantiles::new("stage");
        assert_eq!(l.quantile("finding", 0.5), None);
        // 1..=1000 µs, once each: p50 = 500 µs, p90 = 900 µs, p99 = 990 µs, p99.9 = 999 µs.
        for us in 1..=1000u64 {
            l.record("finding", us * 1_000);
        }
        // Another value does not disturb the first.
        l.record("other", 3_000_000_000);
        for (q, want) in [
            (0.5, 500e-6),
            (0.9, 900e-6),
            (0.99, 990e-6),
            (0.999, 999e-6),
        ] {
            let got = l.quantile("finding", q).unwrap();
            // 3 significant digits: within 0.1 %.
            assert!((got - want).abs() <= want * 1e-3, "q{q}: {got} vs {want}");
        }
        assert!((l.quantile("other", 0.5).unwrap() - 3.0).abs() < 3e-3);
        // Beyond an hour is clamped, not lost.
        l.record("slow", 10 * HIGHEST_NS);
        assert!((l.quantile("slow", 0.99).unwrap() - 3600.0).abs() < 3.6);
    }

    #[test]
    fn summary_exposition() {
        let l = LatencyQuantiles::new("sink");
        l.record("siem", 2_000_000);
        l.record("siem", 4_000_000);
        l.record("a\"b", 1_000);
        let mut out = String::new();
        l.encode("nhiwatch_alert_latency_seconds", "Kernel to sink", &mut out);
        assert!(
            out.contains("# TYPE nhiwatch_alert_latency_seconds summary\n"),
            "{out}"
        );
        assert!(
            out.contains("nhiwatch_alert_latency_seconds{sink=\"siem\",quantile=\"0.5\"} 0.002"),
            "{out}"
        );
        assert!(
            out.contains("nhiwatch_alert_latency_seconds{sink=\"siem\",quantile=\"0.999\"} 0.004"),
            "{out}"
        );
        assert!(
            out.contains("nhiwatch_alert_latency_seconds_sum{sink=\"siem\"} 0.006\n"),
            "{out}"
        );
        assert!(
            out.contains("nhiwatch_alert_latency_seconds_count{sink=\"siem\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("{sink=\"a\\\"b\",quantile=\"0.9\"}"), "{out}");
    }

    /// Debian's promtool parses and lints the exposition as Prometheus would scrape it.
    #[test]
    fn promtool_accepts_the_exposition() {
        // The test set installs Debian's prometheus (xtask), which ships promtool.
        let promtool = std::path::Path::new("/usr/bin/promtool");
        assert!(
            promtool.exists(),
            "/usr/bin/promtool: apt-get install prometheus"
        );
        let l = LatencyQuantiles::new("stage");
        for n in [1_500u64, 80_000, 2_000_000, 7_000_000_000] {
            l.record("finding", n);
        }
        let mut out = String::new();
        l.encode(
            "nhiwatch_pipeline_latency_seconds",
            "Kernel timestamp to finding",
            &mut out,
        );
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(out.as_bytes())
            .unwrap();
        let r = child.wait_with_output().unwrap();
        assert!(
            r.status.success(),
            "promtool: {}{}\n{out}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
}
