//! Label values from strings a process controls (executable paths, SPIFFE IDs, library files): escaped for the exposition so no value can end its label, its line or the scrape.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Longest label value kept, in bytes; longer ones are cut at a character boundary and end in
/// `…`. A 4 KiB path in a label helps nobody and every scrape carries it.
pub const MAX_LABEL_BYTES: usize = 512;

/// A label value that is escaped when encoded: `\` `"` and newline as the exposition formats
/// define, every other control character (NUL included) as U+FFFD, and at most
/// [`MAX_LABEL_BYTES`]. prometheus-client 0.23 writes label values verbatim, so a process named
/// `x"} 1⏎nhiwatch_forged{a="b` could otherwise add lines to the scrape or break it whole.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelText(String);

impl LabelText {
    pub fn new(s: &str) -> LabelText {
        LabelText(s.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for LabelText {
    fn from(s: &str) -> Self {
        LabelText::new(s)
    }
}

impl From<String> for LabelText {
    fn from(s: String) -> Self {
        LabelText(s)
    }
}

/// Writes `v` escaped and bounded (the rules of [`LabelText`]).
pub fn write_escaped(out: &mut impl std::fmt::Write, v: &str) -> std::fmt::Result {
    let mut end = v.len().min(MAX_LABEL_BYTES);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    for c in v[..end].chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c if c.is_control() => out.write_char('\u{FFFD}')?,
            c => out.write_char(c)?,
        }
    }
    if end < v.len() {
        out.write_char('…')?;
    }
    Ok(())
}

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write_escaped(encoder, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family},
    };

    use super::*;
    use crate::metrics::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct L {
        identity: LabelText,
    }

    /// A sample's name and its (label, value) pairs.
    type Sample = (String, Vec<(String, String)>);

    /// Every sample line of an exposition: `name{labels} value`, with labels parsed by the
    /// exposition's own rules. None when a line does not parse.
    fn samples(text: &str) -> Option<Vec<Sample>> {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let brace = line.find(['{', ' '])?;
            let name = line[..brace].to_owned();
            let mut rest = &line[brace..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    if let Some(r) = rest.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    let eq = rest.find('=')?;
                    let key = rest[..eq].trim_start_matches(',').to_owned();
                    let mut chars = rest[eq + 1..].strip_prefix('"')?.char_indices();
                    let mut value = String::new();
                    let close = loop {
                        match chars.next()? {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                _ => return None,
                            },
                            (_, c) => value.push(c),
                        }
                    };
                    labels.push((key, value));
                    rest = &rest[eq + 1..][close + 2..];
                }
            }
            let value = rest.strip_prefix(' ')?;
            value.parse::<f64>().ok()?;
            out.push((name, labels));
        }
        Some(out)
    }

    fn render(values: &[&str]) -> String {
        let r = Registry::new();
        let f = Family::<L, Counter>::default();
        r.register("api_calls_by_identity", "calls", f.clone());
        for v in values {
            f.get_or_create(&L {
                identity: LabelText::new(v),
            })
            .inc();
        }
        r.render()
    }

    #[test]
    fn hostile_values_stay_inside_their_label() {
        let long = "/a".repeat(2048);
        let hostile = [
            "x\"} 1\nnhiwatch_forged{a=\"b",
            "back\\slash\\",
            "quote\"",
            "new\nline",
            "nul\0byte",
            "bell\u{7}esc\u{1b}[31m",
            "lossy \u{FFFD} utf-8",
            long.as_str(),
        ];
        let text = render(&hostile);
        let samples = samples(&text).unwrap_or_else(|| panic!("unparsable:\n{text}"));
        assert!(samples.iter().all(|(n, _)| !n.contains("forged")), "{text}");
        let values: Vec<&str> = samples
            .iter()
            .filter(|(n, _)| n == "nhiwatch_api_calls_by_identity_total")
            .map(|(_, l)| l[0].1.as_str())
            .collect();
        assert_eq!(values.len(), hostile.len(), "{text}");
        assert!(
            values.contains(&"x\"} 1\nnhiwatch_forged{a=\"b"),
            "{values:?}"
        );
        assert!(values.contains(&"back\\slash\\"), "{values:?}");
        assert!(values.contains(&"nul\u{FFFD}byte"), "{values:?}");
        let cut = values.iter().find(|v| v.starts_with("/a/a")).unwrap();
        assert!(cut.len() <= MAX_LABEL_BYTES + '…'.len_utf8() && cut.ends_with('…'));
        assert!(!text.contains('\u{1b}') && !text.contains('\0'));
    }

    #[test]
    fn the_cut_respects_characters() {
        let v = "é".repeat(MAX_LABEL_BYTES);
        let mut out = String::new();
        write_escaped(&mut out, &v).unwrap();
        assert!(out.ends_with('…'));
        assert!(out.len() <= MAX_LABEL_BYTES + 3);
    }
}
