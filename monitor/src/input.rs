//! Bounded input: takes a path of a configuration, rules or replay file, gives its text or a clear error naming the file, the limit and the value — never a blocked open, unbounded growth or a quadratic parse.
//!
//! Every file nhiwatch reads as input goes through here: a FIFO would block `open` for ever, a
//! device such as /dev/zero never ends, a 50 MB rules file or 100,000 nested brackets cost
//! gigabytes or minutes before any of our checks would run.

use std::{
    fs::File,
    io::{BufRead, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// The daemon configuration file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// One rules file: a Kubernetes ConfigMap holds at most 1 MiB.
pub const MAX_RULES_FILE_BYTES: u64 = 1 << 20;
/// All rules files of one load together.
pub const MAX_RULES_TOTAL_BYTES: u64 = 4 << 20;
/// Nesting of YAML collections (block indentation levels plus flow brackets). Ours need fewer
/// than 10; the YAML parser's cost grows with the square of the depth.
pub const MAX_YAML_DEPTH: usize = 64;
/// A token file (webhook, kubelet or API server bearer token): projected tokens are ~1–2 KB.
pub const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// A PEM certificate bundle or key (a system CA bundle is ~200 KB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// One line of a replay file (an observation is a few hundred bytes).
pub const MAX_REPLAY_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file ({kind}); give a file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: {size} bytes is larger than the limit for {what} of {limit} bytes")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{path}: not UTF-8 text")]
    NotUtf8 { path: PathBuf },
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Opens `path` for reading without ever blocking: the type is checked before opening (a FIFO's
/// `open` waits for a writer), the open is non-blocking in case it was swapped meanwhile, and the
/// opened file is checked again. `allow_fifo` lets a pipe through (replay reads `<(…)`); only
/// then may the open wait, for the pipe's writer, as any reader of a pipe does.
pub fn open_file(path: &Path, allow_fifo: bool) -> Result<File, InputError> {
    let io = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    let ok = |t: std::fs::FileType| t.is_file() || allow_fifo && t.is_fifo();
    let meta = std::fs::metadata(path).map_err(io)?;
    if !ok(meta.file_type()) {
        return Err(InputError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    // A pipe the caller accepts is opened like `cat` opens it: waiting for its writer, else a
    // FIFO whose writer comes later would read as empty.
    let flags = if meta.file_type().is_fifo() {
        0
    } else {
        libc::O_NONBLOCK
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !ok(meta.file_type()) {
        return Err(InputError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    if meta.file_type().is_fifo() {
        // Swapped for a FIFO after the check: reads wait for data like any pipe from here on.
        // SAFETY: fcntl on a descriptor we own; no memory is passed.
        unsafe {
            use std::os::fd::AsRawFd;
            let fd = f.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    Ok(f)
}

/// The whole text of a regular file of at most `limit` bytes; `what` names the limit in the error.
pub fn read_text(path: &Path, limit: u64, what: &'static str) -> Result<String, InputError> {
    let f = open_file(path, false)?;
    let io = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    let too_large = |size| InputError::TooLarge {
        path: path.to_owned(),
        what,
        size,
        limit,
    };
    let size = f.metadata().map_err(io)?.len();
    if size > limit {
        return Err(too_large(size));
    }
    // The file may grow between the stat and the read: read one byte more than allowed to tell.
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limit + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > limit {
        return Err(too_large(buf.len() as u64));
    }
    String::from_utf8(buf).map_err(|_| InputError::NotUtf8 {
        path: path.to_owned(),
    })
}

/// Gives the memory freed after a large input (a rules load, accepted or refused) back to the
/// system. glibc keeps freed heap in its arenas, so one 1 MiB rules file used to raise the daemon's
/// RSS for good even after smaller rules replaced it. A few milliseconds; called once per reload.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own arenas; it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where a YAML text nests deeper than allowed: the 1-based line and column, and the depth there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub line: usize,
    pub column: usize,
    pub depth: usize,
}

/// Refuses YAML nested deeper than `max` before the parser sees it. A cheap scan, linear in the
/// text: block nesting is the stack of indentations (a sequence at its key's indentation and
/// each `- ` entry on one line count as levels), flow nesting counts `[` and `{`, both outside
/// comments, block scalars and quoted scalars (within their line). It counts more than the
/// parser in odd places (a scalar after `- `, lines of a multi-line quoted scalar), never less
/// (`the_scan_never_counts_less_than_the_parser`), so a text it passes parses in time linear in
/// its length.
pub fn yaml_depth(text: &str, max: usize) -> Result<(), TooDeep> {
    // Open block collections: (indentation, is a sequence). A sequence may sit at its parent
    // key's indentation (`a:` then `- x`), so both are kept to count it as a level of its own.
    let mut indents: Vec<(usize, bool)> = Vec::new();
    let mut flow = 0usize;
    // Lines more indented than this belong to a block scalar (`|` or `>`).
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let indent = b.iter().take_while(|&&c| c == b' ').count();
        // A quoted scalar is followed to the end of its line only: whether a quote on a later
        // line opens one or is text inside a plain scalar (`it\n  's`) takes the parser's
        // context, and a wrong guess could hide structure. Text lines of a multi-line quoted
        // scalar are scanned as if they were structure: more than the parser sees, never less.
        let mut quote: Option<u8> = None;
        let mut i = 0;
        if flow == 0 {
            if b[indent..].iter().all(|c| c.is_ascii_whitespace()) {
                continue;
            }
            if let Some(parent) = block_scalar {
                if indent > parent {
                    continue;
                }
                block_scalar = None;
            }
            if b[indent] == b'#' {
                continue;
            }
            let marker =
                |m: &[u8]| b.starts_with(m) && b.get(3).is_none_or(|c| c.is_ascii_whitespace());
            if marker(b"...") {
                indents.clear();
                continue;
            }
            if marker(b"---") {
                // A new document; a node may follow on the same line (`--- [`).
                indents.clear();
                i = 3;
            } else {
                while indents.last().is_some_and(|&(top, _)| top > indent) {
                    indents.pop();
                }
                let entry = matches!(b[indent], b'-' | b'?')
                    && b.get(indent + 1).is_none_or(|c| c.is_ascii_whitespace());
                if entry {
                    if indents.last() != Some(&(indent, true)) {
                        indents.push((indent, true));
                    }
                } else {
                    // A key at a sequence's indentation ends the sequence.
                    if indents.last() == Some(&(indent, true)) {
                        indents.pop();
                    }
                    if indents.last() != Some(&(indent, false)) {
                        indents.push((indent, false));
                    }
                }
                i = indent;
            }
        }
        // At the start of a node: a quote or bracket here opens a quoted scalar or a collection;
        // elsewhere it is part of a plain scalar (`don't`, `a[0]`).
        let mut at_start = true;
        // Where the node a block scalar would belong to begins: the `-` of an entry, or the
        // first character of a key.
        let mut token = i;
        let mut parent = i;
        while i < b.len() {
            let c = b[i];
            if quote.is_none() && at_start && c != b' ' && c != b'\t' {
                token = i;
            }
            if let Some(q) = quote {
                if q == b'"' && c == b'\\' {
                    i += 2;
                    continue;
                }
                if c == q {
                    if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                    at_start = false;
                }
                i += 1;
                continue;
            }
            let next_blank = b.get(i + 1).is_none_or(|c| c.is_ascii_whitespace());
            match c {
                b' ' | b'\t' => {}
                b'#' if i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t' => break,
                b'"' | b'\'' if at_start => quote = Some(c),
                // An anchor or tag before a node (`&a [`, `!!seq [`): the node still starts after it.
                b'&' | b'!' if at_start => {
                    // Their names end at a blank or a flow indicator (`&a[` is `&a` then `[`).
                    while i + 1 < b.len()
                        && !b[i + 1].is_ascii_whitespace()
                        && !matches!(b[i + 1], b'[' | b']' | b'{' | b'}' | b',')
                    {
                        i += 1;
                    }
                }
                b'[' | b'{' if at_start || flow > 0 => {
                    flow += 1;
                    if indents.len() + flow > max {
                        return Err(TooDeep {
                            line: n + 1,
                            column: i + 1,
                            depth: indents.len() + flow,
                        });
                    }
                    at_start = true;
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    at_start = false;
                }
                b',' if flow > 0 => at_start = true,
                b'-' | b'?' if at_start && flow == 0 && next_blank => {
                    // A compact nested entry (`- - x`, `- key: v`): one level deeper, at the
                    // column after the indicator.
                    indents.push((i + 2, false));
                    at_start = true;
                    parent = i;
                }
                b':' if next_blank || flow > 0 && at_start => {
                    at_start = true;
                    parent = token;
                }
                b'|' | b'>' if at_start && flow == 0 => {
                    // A block scalar: its lines are text, whatever their indentation, as long
                    // as it is more than the node it is the value of (`- |`: the `-`; `- a: |`:
                    // the key `a`).
                    block_scalar = Some(parent);
                    break;
                }
                _ => at_start = false,
            }
            i += 1;
        }
        if indents.len() + flow > max {
            return Err(TooDeep {
                line: n + 1,
                column: indent + 1,
                depth: indents.len() + flow,
            });
        }
    }
    Ok(())
}

/// Reads lines of at most `max` bytes (the newline not counted) with a buffer that never grows
/// beyond it: a longer line is reported as too long and skipped up to its newline without being
/// kept, so a file without newlines (or a stream of zeros) costs `max` bytes, not all it holds.
pub struct BoundedLines<R> {
    inner: R,
    max: usize,
}

/// One line from [`BoundedLines`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Its bytes, newline included when there was one.
    Text,
    /// Longer than the limit: this many bytes (newline not counted) were skipped.
    TooLong(u64),
    End,
}

impl<R: BufRead> BoundedLines<R> {
    pub fn new(inner: R, max: usize) -> Self {
        BoundedLines { inner, max }
    }

    /// Reads the next line into `buf` (cleared first).
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Line> {
        buf.clear();
        let mut skipped: Option<u64> = None;
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                return Ok(match skipped {
                    Some(n) => Line::TooLong(n),
                    None if buf.is_empty() => Line::End,
                    None => Line::Text,
                });
            }
            let (chunk, done) = match avail.iter().position(|&c| c == b'\n') {
                Some(p) => (&avail[..=p], true),
                None => (avail, false),
            };
            let used = chunk.len();
            let content = chunk.len() - usize::from(done);
            match skipped.as_mut() {
                Some(n) => *n += content as u64,
                None if buf.len() + content > self.max => {
                    skipped = Some((buf.len() + content) as u64);
                    buf.clear();
                    buf.shrink_to(self.max);
                }
                None => buf.extend_from_slice(chunk),
            }
            self.inner.consume(used);
            if done {
                return Ok(match skipped {
                    Some(n) => Line::TooLong(n),
                    None => Line::Text,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_block_and_flow_nesting() {
        assert_eq!(yaml_depth("a: 1\nb: {c: [1, 2]}\n", 3), Ok(()));
        assert!(yaml_depth("a: 1\nb: {c: [1, 2]}\n", 2).is_err());
        let mut deep = String::new();
        for i in 0..10 {
            deep.push_str(&" ".repeat(2 * i));
            deep.push_str("a:\n");
        }
        assert_eq!(yaml_depth(&deep, 10), Ok(()));
        assert_eq!(yaml_depth(&deep, 9).unwrap_err().line, 10);
        // The scalar after the last `- ` counts as a level: more than the parser, never less.
        assert!(yaml_depth("- - - - x\n", 4).is_err());
        assert_eq!(yaml_depth("- - - - x\n", 5), Ok(()));
        let flow = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            yaml_depth(&flow, 64).unwrap_err(),
            TooDeep {
                line: 1,
                column: 4 + 63,
                depth: 65
            }
        );
    }

    #[test]
    fn depth_ignores_text_that_only_looks_nested() {
        let text = "a: \"[[[[\"\nb: '{{{{'\nc: don't [[[[\n# [[[[\nd: |\n  [[[[\n      x:\n        y:\ne: x # [[[[\nf: \"multi\n line\"\n";
        assert_eq!(yaml_depth(text, 2), Ok(()));
        // A quote on a later line may be text of a plain scalar: it hides nothing after it.
        let plain = "a: it\n  's\nb: [[[]]]\n";
        assert!(yaml_depth(plain, 3).is_err());
        // Nor does a document marker.
        assert!(yaml_depth("--- [[[]]]\n", 2).is_err());
        assert_eq!(yaml_depth("a: 1\n--- [[[]]]\n...\n", 3), Ok(()));
        // Found by the property test below.
        assert!(yaml_depth("a:\n- a: 0\n", 2).is_err());
        assert!(yaml_depth("- a: |2+\n\n  b: []\n", 2).is_err());
        assert!(yaml_depth("- |-\n  :\n  \"\n- - []\n", 2).is_err());
        // Anchors and tags do not hide what follows them.
        let hidden = format!("a: &x !!seq {}{}\n", "[".repeat(10), "]".repeat(10));
        assert!(yaml_depth(&hidden, 10).is_err());
        assert_eq!(yaml_depth(&hidden, 11), Ok(()));
        let glued = format!("a: &x{}{}\n", "[".repeat(10), "]".repeat(10));
        assert!(yaml_depth(&glued, 10).is_err());
        let flow_over_lines = "a: [\n  1,\n  {b: [2]},\n]\nc: 1\n";
        assert_eq!(yaml_depth(flow_over_lines, 4), Ok(()));
        assert!(yaml_depth(flow_over_lines, 3).is_err());
    }

    #[test]
    fn long_lines_are_skipped_without_being_kept() {
        let mut text = b"short\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 5000));
        text.extend(b"\nok\n");
        text.extend(std::iter::repeat_n(b'y', 5000));
        let mut r = BoundedLines::new(std::io::BufReader::with_capacity(64, &text[..]), 100);
        let mut buf = Vec::new();
        assert_eq!(r.next_line(&mut buf).unwrap(), Line::Text);
        assert_eq!(buf, b"short\n");
        assert_eq!(r.next_line(&mut buf).unwrap(), Line::TooLong(5000));
        assert!(buf.capacity() <= 200, "{}", buf.capacity());
        assert_eq!(r.next_line(&mut buf).unwrap(), Line::Text);
        assert_eq!(buf, b"ok\n");
        assert_eq!(r.next_line(&mut buf).unwrap(), Line::TooLong(5000));
        assert_eq!(r.next_line(&mut buf).unwrap(), Line::End);
        // Exactly at the limit is fine.
        let at = [vec![b'z'; 100], b"\n".to_vec()].concat();
        let mut r = BoundedLines::new(&at[..], 100);
        assert_eq!(r.next_line(&mut buf).unwrap(), Line::Text);
        assert_eq!(buf.len(), 101);
    }

    /// The nesting depth of a parsed value: what the parser's cost depends on.
    fn depth(v: &serde_yaml_ng::Value) -> usize {
        use serde_yaml_ng::Value;
        match v {
            Value::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
            Value::Mapping(m) => 1 + m.values().map(depth).max().unwrap_or(0),
            Value::Tagged(t) => depth(&t.value),
            _ => 0,
        }
    }

    /// Flow style, written by hand (the serializer writes block style only).
    fn flow(v: &serde_yaml_ng::Value) -> String {
        use serde_yaml_ng::Value;
        match v {
            Value::Sequence(s) => {
                format!("[{}]", s.iter().map(flow).collect::<Vec<_>>().join(", "))
            }
            Value::Mapping(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            // A JSON string is a YAML double-quoted scalar, valid inside brackets too.
            Value::String(t) => serde_json::to_string(t).unwrap(),
            other => serde_yaml_ng::to_string(other)
                .unwrap()
                .trim_end()
                .to_owned(),
        }
    }

    fn value() -> impl proptest::strategy::Strategy<Value = serde_yaml_ng::Value> {
        use proptest::prelude::*;
        use serde_yaml_ng::Value;
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            "[a-z\\n #'\"\\[\\]{}:|>&!-]{0,12}".prop_map(Value::String),
            Just(Value::Null),
        ];
        leaf.prop_recursive(12, 200, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
                proptest::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|kv| {
                    Value::Mapping(kv.into_iter().map(|(k, v)| (Value::String(k), v)).collect())
                }),
            ]
        })
    }

    proptest::proptest! {
        /// Never less than the parser sees, in block and in flow style (an undercount would let
        /// the quadratic parse through), and at most twice it plus two.
        #[test]
        fn the_scan_never_counts_less_than_the_parser(v in value()) {
            for text in [serde_yaml_ng::to_string(&v).unwrap(), format!("x: {}\n", flow(&v))] {
                let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
                let real = depth(&parsed);
                if real > 0 {
                    proptest::prop_assert!(yaml_depth(&text, real - 1).is_err(), "{text}");
                }
                proptest::prop_assert!(yaml_depth(&text, 2 * real + 2).is_ok(), "{real}: {text}");
            }
        }
    }
}
