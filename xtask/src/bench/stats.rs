//! Medians, paired comparisons against the bare baseline, and the Markdown tables built from them.

use std::fmt::Write as _;

pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The `q` quantile (0..=1) by nearest rank: the smallest value with at least q of all at or
/// below it, so p99 of 2,000 samples is the 1,980th smallest.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// One variant of an overhead benchmark, summarised against the bare runs of the same rounds.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median over rounds of (this round's value − the same round's bare value).
    pub added: f64,
    /// Median over rounds of (this round's value / the same round's bare value).
    pub ratio: f64,
}

/// Rows for `variants` (label, samples by round); the first one is the bare baseline.
/// Pairing each round with its own bare run cancels slow drift of the machine.
pub fn compare(variants: &[(String, Vec<f64>)]) -> Vec<Row> {
    let bare = &variants[0].1;
    variants
        .iter()
        .map(|(label, xs)| {
            let n = xs.len().min(bare.len());
            let diffs: Vec<f64> = (0..n).map(|i| xs[i] - bare[i]).collect();
            let ratios: Vec<f64> = (0..n).map(|i| xs[i] / bare[i]).collect();
            Row {
                label: label.clone(),
                samples: xs.clone(),
                median: median(xs),
                min: xs.iter().copied().fold(f64::INFINITY, f64::min),
                max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                added: median(&diffs),
                ratio: median(&ratios),
            }
        })
        .collect()
}

/// A target's margin per round (≤ 0: the target held in that round), computed from each
/// round's values of every variant (in variant order, bare first).
pub fn margins(rows: &[Row], margin: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let rounds = rows.iter().map(|r| r.samples.len()).min().unwrap_or(0);
    (0..rounds)
        .map(|i| {
            let v: Vec<f64> = rows.iter().map(|r| r.samples[i]).collect();
            margin(&v)
        })
        .collect()
}

/// "held in k of n rounds", and whether that is so split that the verdict is within the
/// round-to-round noise.
pub fn held(margins: &[f64]) -> (String, bool) {
    let n = margins.len();
    let k = margins.iter().filter(|m| **m <= 0.0).count();
    let noisy = 4 * k > n && 4 * k < 3 * n;
    (format!("held in {k} of {n} rounds"), noisy)
}

/// "**met**" or "**missed**" from the median margin, qualified by how often it held.
pub fn verdict(margins: &[f64]) -> String {
    let (held, noisy) = held(margins);
    let word = if median(margins) <= 0.0 {
        "**met**"
    } else {
        "**missed**"
    };
    if noisy {
        format!("{word}, within round-to-round noise ({held})")
    } else {
        format!("{word} ({held})")
    }
}

/// Formats with `decimals` digits after the point.
pub fn num(x: f64, decimals: usize) -> String {
    format!("{x:.decimals$}")
}

/// Formats a count with groups of three digits: 1234567 → "1,234,567".
pub fn count(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A large number to two or three significant digits: 4386296 → "4.4 million".
pub fn approx(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1} million", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0} thousand", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// The Markdown table of an overhead benchmark.
pub fn table(rows: &[Row], unit: &str, decimals: usize) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| Variant | Median ({unit}) | Min – max ({unit}) | Added vs bare ({unit}) | Ratio vs bare |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|");
    for (i, r) in rows.iter().enumerate() {
        let (added, ratio) = if i == 0 {
            ("—".to_owned(), "1.00×".to_owned())
        } else {
            (
                format!(
                    "{}{}",
                    if r.added >= 0.0 { "+" } else { "" },
                    num(r.added, decimals)
                ),
                format!("{:.2}×", r.ratio),
            )
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} – {} | {added} | {ratio} |",
            r.label,
            num(r.median, decimals),
            num(r.min, decimals),
            num(r.max, decimals),
        );
    }
    t
}

/// Every round's value, for whoever wants to check the medians.
pub fn raw(rows: &[Row], decimals: usize) -> String {
    let mut t = String::from("Per-round values, in run order:\n\n");
    for r in rows {
        let xs: Vec<String> = r.samples.iter().map(|x| num(*x, decimals)).collect();
        let _ = writeln!(t, "- {}: {}", r.label, xs.join(", "));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=2000).rev().map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 1000.0);
        assert_eq!(quantile(&xs, 0.99), 1980.0);
        assert_eq!(quantile(&xs, 0.999), 1998.0);
        assert_eq!(quantile(&xs, 1.0), 2000.0);
        assert_eq!(quantile(&xs, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn compare_pairs_rounds() {
        let rows = compare(&[
            ("bare".into(), vec![10.0, 20.0, 10.0]),
            ("tool".into(), vec![12.0, 22.0, 13.0]),
        ]);
        assert_eq!(rows[0].added, 0.0);
        assert_eq!(rows[0].ratio, 1.0);
        assert_eq!(rows[1].added, 2.0);
        assert_eq!(rows[1].median, 13.0);
        assert_eq!(rows[1].min, 12.0);
        assert_eq!(rows[1].max, 22.0);
        assert!((rows[1].ratio - 1.2).abs() < 1e-9);
    }

    #[test]
    fn verdicts_count_rounds() {
        assert_eq!(
            verdict(&[-1.0, -2.0, -3.0]),
            "**met** (held in 3 of 3 rounds)"
        );
        assert_eq!(
            verdict(&[1.0, 2.0, 3.0, -1.0]),
            "**missed** (held in 1 of 4 rounds)"
        );
        assert_eq!(
            verdict(&[1.0, -2.0, 3.0, 4.0, -1.0, 5.0, -3.0, 6.0]),
            "**missed**, within round-to-round noise (held in 3 of 8 rounds)"
        );
        let rows = compare(&[
            ("bare".into(), vec![10.0, 10.0]),
            ("a".into(), vec![12.0, 15.0]),
        ]);
        assert_eq!(margins(&rows, |v| v[1] - v[0] - 3.0), vec![-1.0, 2.0]);
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(0.0), "0");
    }
}
