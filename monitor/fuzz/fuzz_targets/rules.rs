#![no_main]
//! Arbitrary text as a rules file → contracts::load_str: never a panic, errors placed inside the file, deterministic, and an accepted set is consistent.

use nhiwatch::contracts::{load_str, Matcher};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count().max(1);
    match load_str("f.yaml", &text) {
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(e.line >= 1 && e.line <= lines + 1, "{e} (file has {lines} lines)");
                assert!(e.column >= 1, "{e}");
                assert!(!e.what.is_empty() && !e.expected.is_empty(), "{e}");
            }
            let again: Vec<String> = load_str("f.yaml", &text)
                .err()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            let first: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert_eq!(first, again);
        }
        Ok(set) => {
            let names: Vec<&str> = set.data_sources.iter().map(|d| d.name.as_str()).collect();
            for c in &set.contracts {
                for d in c
                    .allow
                    .data_sources
                    .iter()
                    .chain(c.allow.combinations.iter().flatten())
                    .chain(c.allow.endpoints.iter().map(|e| &e.data_source))
                    .chain(c.limits.iter().map(|l| &l.data_source))
                {
                    assert!(names.contains(&d.as_str()), "{} names unknown {d}", c.name);
                }
                assert!(c.version.starts_with("sha256:"));
            }
            for d in &set.data_sources {
                assert!(!d.matchers.is_empty());
                for m in &d.matchers {
                    if let Matcher::Http { paths, .. } = m {
                        assert!(!paths.is_empty());
                    }
                }
            }
            // Every file data source becomes a watch pattern the sensors accept.
            for p in nhiwatch::contracts::watch_patterns(&set) {
                assert!(p.starts_with('/'), "{p}");
            }
        }
    }
});
