#![no_main]
//! Arbitrary bytes (as a process could name itself) → the metrics label encoder: the value never leaves its quotes, carries no control character, is bounded, and unescapes to what it was given.

use nhiwatch::metrics::{write_escaped, MAX_LABEL_BYTES};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let given = String::from_utf8_lossy(data);
    let mut out = String::new();
    write_escaped(&mut out, &given).unwrap();
    // Each kept byte becomes at most 3 (a control character's U+FFFD), plus the cut mark.
    assert!(out.len() <= 3 * MAX_LABEL_BYTES + '…'.len_utf8());
    let mut back = String::new();
    let mut chars = out.chars();
    while let Some(c) = chars.next() {
        assert!(c != '"' && !c.is_control(), "raw {c:?} in {out:?}");
        if c == '\\' {
            match chars.next() {
                Some('n') => back.push('\n'),
                Some(e @ ('\\' | '"')) => back.push(e),
                other => panic!("bad escape {other:?} in {out:?}"),
            }
        } else {
            back.push(c);
        }
    }
    let cut = back.strip_suffix('…').filter(|_| given.len() > MAX_LABEL_BYTES);
    let back = cut.unwrap_or(&back);
    let kept: String = given
        .chars()
        .scan(0usize, |n, c| {
            *n += c.len_utf8();
            (*n <= MAX_LABEL_BYTES).then_some(c)
        })
        .map(|c| if c.is_control() && c != '\n' { '\u{FFFD}' } else { c })
        .collect();
    assert_eq!(back, kept);
});
