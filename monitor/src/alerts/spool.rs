//! Durable per-sink alert spool: takes alerts from the pipeline (append), gives them to the sink's worker in order (read, ack), survives restarts and is bounded in bytes.
//!
//! Every alert goes through the spool, not only when a sink is down: delivery is then the same
//! code path in good times and bad, and a restart resumes exactly at the last acknowledged alert
//! (at-least-once; receivers drop repeats by `dedup_key`). Segments are append-only files
//! `NNNNNNNNNNNNNNNN.log`, one alert per line; `cursor` holds the acknowledged position.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use super::Outgoing;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {0} is full")]
    Full(String),
}

/// A position in the spool: segment number and byte offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

struct Writer {
    file: File,
    segment: u64,
    len: u64,
    /// (segment, bytes) of every segment on disk, oldest first; the last is the one written.
    segments: VecDeque<(u64, u64)>,
    /// Bytes not yet acknowledged, and how many alerts they hold.
    unacked_bytes: u64,
    unacked: u64,
    acked: Position,
    /// The acknowledged position last written to `cursor`, and when.
    saved: Position,
    saved_at: std::time::Instant,
    dirty: bool,
    /// Segments the writer left since the last sync: the worker syncs them (and the directory,
    /// which holds the new segment's name), never the pipeline thread that appends.
    retired: Vec<File>,
}

/// The cursor is written at most this often (and at every sync): a crash in between re-sends what
/// was delivered since, which at-least-once allows, and low alert rates do not pay a file write
/// and rename per alert.
const CURSOR_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    /// Held while the cursor file is written: the worker's acknowledgements and its background
    /// sync both write it, through the same temporary file.
    cursor: Mutex<()>,
    /// Wakes the worker when something was appended.
    pub notify: tokio::sync::Notify,
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.log"))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Spool {
    /// Opens (or creates, 0700) the spool in `dir`: finds the segments, reads the cursor, drops a
    /// torn last line left by a crash mid-write, and counts what is still to be delivered.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        Spool::open_with_segment(dir, max_bytes, (max_bytes / 8).clamp(64 << 10, 16 << 20))
    }

    pub fn open_with_segment(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let n = name.strip_suffix(".log")?;
                (n.len() == 16).then(|| n.parse().ok()).flatten()
            })
            .collect();
        numbers.sort_unstable();
        let mut acked = read_cursor(dir).map_err(io)?;
        // Segments wholly before the cursor were delivered; a crash may have left them behind.
        numbers.retain(|&n| {
            let keep = n >= acked.segment;
            if !keep {
                let _ = std::fs::remove_file(seg_path(dir, n));
            }
            keep
        });
        if numbers.is_empty() {
            numbers.push(acked.segment.max(1));
        }
        if acked.segment < numbers[0] {
            acked = Position {
                segment: numbers[0],
                offset: 0,
            };
        }
        let last = *numbers.last().unwrap_or(&1);
        // A crash can leave half a line at the end of the last segment: it was never whole, so
        // it was never delivered; cut it so the next alert starts on a line of its own.
        let last_path = seg_path(dir, last);
        let file = open_append(&last_path).map_err(io)?;
        let mut content = Vec::new();
        File::open(&last_path)
            .and_then(|mut f| f.read_to_end(&mut content))
            .map_err(io)?;
        let whole = content
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if whole < content.len() {
            file.set_len(whole as u64).map_err(io)?;
        }
        let mut segments = VecDeque::new();
        let (mut unacked_bytes, mut unacked) = (0u64, 0u64);
        for &n in &numbers {
            let (len, from) = if n == last {
                (
                    whole as u64,
                    if n == acked.segment { acked.offset } else { 0 },
                )
            } else {
                let len = std::fs::metadata(seg_path(dir, n)).map_err(io)?.len();
                (len, if n == acked.segment { acked.offset } else { 0 })
            };
            segments.push_back((n, len));
            let from = from.min(len);
            unacked_bytes += len - from;
            unacked += count_lines(&seg_path(dir, n), from).map_err(io)?;
        }
        if acked.segment == last && acked.offset > whole as u64 {
            acked.offset = whole as u64;
        }
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            writer: Mutex::new(Writer {
                file,
                segment: last,
                len: whole as u64,
                segments,
                unacked_bytes,
                unacked,
                acked,
                saved: acked,
                saved_at: std::time::Instant::now(),
                dirty: false,
                retired: Vec::new(),
            }),
            cursor: Mutex::new(()),
            notify: tokio::sync::Notify::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock leaves consistent counters (updated after the write).
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.display().to_string(),
            source,
        }
    }

    /// Appends one alert. `Full` when the undelivered alerts already take `max_bytes`.
    pub fn append(&self, o: &Outgoing) -> Result<(), SpoolError> {
        let mut line = Vec::with_capacity(o.body.len() + 96);
        o.encode(&mut line);
        let mut w = self.lock();
        if w.unacked_bytes + line.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full(self.dir.display().to_string()));
        }
        if w.len > 0 && w.len + line.len() as u64 > self.segment_bytes {
            let next = w.segment + 1;
            let old = std::mem::replace(
                &mut w.file,
                open_append(&seg_path(&self.dir, next)).map_err(|e| self.io(e))?,
            );
            w.retired.push(old);
            w.segment = next;
            w.len = 0;
            w.segments.push_back((next, 0));
        }
        // One write of a whole line: the reader never sees a line it cannot finish later.
        if let Err(e) = w.file.write_all(&line) {
            // A full disk can take part of the line: cut it, so the next alert that fits starts
            // on a line of its own rather than glued to half of this one.
            let len = w.len;
            let _ = w.file.set_len(len);
            return Err(self.io(e));
        }
        w.len += line.len() as u64;
        let len = w.len;
        if let Some(last) = w.segments.back_mut() {
            last.1 = len;
        }
        w.unacked_bytes += line.len() as u64;
        w.unacked += 1;
        w.dirty = true;
        drop(w);
        self.notify.notify_one();
        Ok(())
    }

    /// Pushes written alerts and the cursor to the disk (the sink's worker, every
    /// `alerts.sync_interval`, and at shutdown). The disk waits happen outside the lock, on a duplicate of the handle, so
    /// the pipeline thread appending alerts never waits for them.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let (file, retired) = {
            let mut w = self.lock();
            let retired = std::mem::take(&mut w.retired);
            if w.dirty {
                w.dirty = false;
                (Some(w.file.try_clone().map_err(|e| self.io(e))?), retired)
            } else {
                (None, retired)
            }
        };
        // Older segments first, then the directory (their successors' names), then the newest.
        // What fails is kept for the next sync.
        if !retired.is_empty() {
            let done = retired
                .iter()
                .try_for_each(|f| f.sync_data())
                .and_then(|()| File::open(&self.dir).and_then(|d| d.sync_all()));
            if let Err(e) = done {
                self.lock().retired.extend(retired);
                return Err(self.io(e));
            }
        }
        if let Some(f) = file {
            f.sync_data().map_err(|e| self.io(e))?;
        }
        self.save_cursor()
    }

    fn save_cursor(&self) -> Result<(), SpoolError> {
        let _writing = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let to = {
            let w = self.lock();
            if w.saved >= w.acked {
                return Ok(());
            }
            w.acked
        };
        write_cursor(&self.dir, to).map_err(|e| self.io(e))?;
        let mut gone = Vec::new();
        {
            let mut w = self.lock();
            w.saved = w.saved.max(to);
            w.saved_at = std::time::Instant::now();
            // Segments wholly before the saved cursor are never needed again.
            while w.segments.len() > 1
                && w.segments
                    .front()
                    .is_some_and(|&(s, _)| s < w.saved.segment)
            {
                if let Some((s, _)) = w.segments.pop_front() {
                    gone.push(s);
                }
            }
        }
        for s in gone {
            let _ = std::fs::remove_file(seg_path(&self.dir, s));
        }
        Ok(())
    }

    /// Alerts not yet acknowledged, and their bytes.
    pub fn pending(&self) -> (u64, u64) {
        let w = self.lock();
        (w.unacked, w.unacked_bytes)
    }

    pub fn acked(&self) -> Position {
        self.lock().acked
    }

    /// Marks everything before `to` delivered: counters drop, the cursor is written, wholly
    /// delivered segments are deleted. `n` alerts and `bytes` lie between the old cursor and `to`.
    pub fn ack(&self, to: Position, n: u64, bytes: u64) -> Result<(), SpoolError> {
        let mut w = self.lock();
        if to <= w.acked {
            return Ok(());
        }
        w.acked = to;
        w.unacked = w.unacked.saturating_sub(n);
        w.unacked_bytes = w.unacked_bytes.saturating_sub(bytes);
        let due = w.saved_at.elapsed() >= CURSOR_EVERY;
        drop(w);
        if due {
            self.save_cursor()?;
        }
        Ok(())
    }

    fn newest_segment(&self) -> u64 {
        self.lock().segment
    }

    /// A reader from the acknowledged position (the worker owns it).
    pub fn reader(&self) -> SpoolReader {
        SpoolReader {
            pos: self.acked(),
            file: None,
        }
    }
}

impl Drop for Spool {
    /// An orderly end saves the cursor, so the next start sends nothing twice.
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// Reads alerts in order from the spool; positions advance only when the worker acknowledges.
pub struct SpoolReader {
    pos: Position,
    file: Option<BufReader<File>>,
}

/// A batch read from the spool: the alerts, where it ends, and its byte size.
pub struct Batch {
    pub alerts: Vec<Outgoing>,
    pub end: Position,
    pub lines: u64,
    pub bytes: u64,
}

impl SpoolReader {
    /// Up to `max` alerts after the reader's position. Lines that do not decode (disk damage)
    /// are skipped but counted in `lines` so acknowledging them moves past; `bad` counts them.
    pub fn read(&mut self, spool: &Spool, max: usize, bad: &mut u64) -> Result<Batch, SpoolError> {
        let mut batch = Batch {
            alerts: Vec::new(),
            end: self.pos,
            lines: 0,
            bytes: 0,
        };
        let mut line = Vec::new();
        while batch.alerts.len() < max {
            if self.file.is_none() {
                let path = seg_path(&spool.dir, self.pos.segment);
                match File::open(&path) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(self.pos.offset))
                            .map_err(|e| spool.io(e))?;
                        self.file = Some(BufReader::with_capacity(64 << 10, f));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if spool.newest_segment() > self.pos.segment {
                            self.next_segment();
                            continue;
                        }
                        break;
                    }
                    Err(e) => return Err(spool.io(e)),
                }
            }
            let Some(f) = self.file.as_mut() else { break };
            line.clear();
            let n = f.read_until(b'\n', &mut line).map_err(|e| spool.io(e))?;
            if n > 0 && line.last() == Some(&b'\n') {
                self.pos.offset += n as u64;
                batch.end = self.pos;
                batch.lines += 1;
                batch.bytes += n as u64;
                match std::str::from_utf8(&line[..n - 1])
                    .ok()
                    .and_then(Outgoing::decode)
                {
                    Some(o) => batch.alerts.push(o),
                    None => *bad += 1,
                }
                continue;
            }
            // End of what is written (or half a line being written): re-read from here later.
            let moved_on = spool.newest_segment() > self.pos.segment;
            if n > 0 || moved_on {
                // Reopened at the position: a half line is read again whole, or the next
                // segment is looked for. A plain end of file keeps the reader open.
                self.file = None;
            }
            if n > 0 {
                if moved_on {
                    // Half a line in a segment the writer left: damage, never to be finished.
                    *bad += 1;
                    self.next_segment();
                    batch.end = self.pos;
                    continue;
                }
                break;
            }
            if moved_on {
                // The writer moved on; whatever it wrote here came before, so look once more.
                if !self.has_more(spool)? {
                    self.next_segment();
                    batch.end = self.pos;
                }
                continue;
            }
            break;
        }
        Ok(batch)
    }

    fn has_more(&self, spool: &Spool) -> Result<bool, SpoolError> {
        match std::fs::metadata(seg_path(&spool.dir, self.pos.segment)) {
            Ok(m) => Ok(m.len() > self.pos.offset),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(spool.io(e)),
        }
    }

    fn next_segment(&mut self) {
        self.pos = Position {
            segment: self.pos.segment + 1,
            offset: 0,
        };
        self.file = None;
    }

    /// Back to `pos` (a batch that was not delivered is read again).
    pub fn rewind(&mut self, pos: Position) {
        self.pos = pos;
        self.file = None;
    }

    pub fn position(&self) -> Position {
        self.pos
    }
}

fn count_lines(path: &Path, from: u64) -> std::io::Result<u64> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

fn read_cursor(dir: &Path) -> std::io::Result<Position> {
    match std::fs::read_to_string(dir.join("cursor")) {
        Ok(s) => {
            let mut it = s.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok(Position { segment, offset }),
                // A damaged cursor: start over from the oldest segment (repeats, never losses).
                _ => Ok(Position::default()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Position::default()),
        Err(e) => Err(e),
    }
}

/// Atomically replaces the cursor (temp file + rename), so a crash leaves the old or the new one.
fn write_cursor(dir: &Path, p: Position) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{} {}", p.segment, p.offset)?;
    }
    std::fs::rename(tmp, dir.join("cursor"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::finding::Severity;

    fn alert(i: u64) -> Outgoing {
        Outgoing {
            time_ns: i as i64,
            fresh: true,
            severity: Severity::High,
            rule: "NHI-010".into(),
            dedup_key: format!("{i:016x}"),
            body: format!("{{\"n\":{i},\"text\":\"a b\\nc\"}}"),
        }
    }

    fn drain(s: &Spool, r: &mut SpoolReader, max: usize) -> Vec<u64> {
        let mut bad = 0;
        let b = r.read(s, max, &mut bad).unwrap();
        assert_eq!(bad, 0);
        s.ack(b.end, b.lines, b.bytes).unwrap();
        b.alerts.iter().map(|a| a.time_ns as u64).collect()
    }

    #[test]
    fn in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open_with_segment(dir.path(), 1 << 20, 300).unwrap();
        for i in 0..50 {
            s.append(&alert(i)).unwrap();
        }
        assert_eq!(s.pending().0, 50);
        let mut r = s.reader();
        assert_eq!(drain(&s, &mut r, 20), (0..20).collect::<Vec<_>>());
        // Read but not acknowledged: a restart must deliver them again.
        let mut bad = 0;
        let b = r.read(&s, 5, &mut bad).unwrap();
        assert_eq!(b.alerts.len(), 5);
        s.sync().unwrap();
        drop(s);
        let s = Spool::open_with_segment(dir.path(), 1 << 20, 300).unwrap();
        assert_eq!(s.pending().0, 30);
        let mut r = s.reader();
        let rest = drain(&s, &mut r, 1000);
        assert_eq!(rest, (20..50).collect::<Vec<_>>());
        assert_eq!(s.pending(), (0, 0));
        s.sync().unwrap();
        // Delivered segments are gone; one remains to write into.
        let logs = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert_eq!(logs, 1);
        s.append(&alert(99)).unwrap();
        assert_eq!(drain(&s, &mut r, 10), vec![99]);
    }

    #[test]
    fn bounded_and_frees_space_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let mut v = Vec::new();
            alert(0).encode(&mut v);
            v.len() as u64
        };
        let s = Spool::open_with_segment(dir.path(), one * 10, one * 3).unwrap();
        let mut ok = 0;
        for i in 0..20 {
            match s.append(&alert(i)) {
                Ok(()) => ok += 1,
                Err(SpoolError::Full(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 10);
        let mut r = s.reader();
        assert_eq!(drain(&s, &mut r, 4).len(), 4);
        for i in 0..4 {
            s.append(&alert(i)).unwrap();
        }
        assert!(matches!(s.append(&alert(200)), Err(SpoolError::Full(_))));
    }

    #[test]
    fn torn_last_line_is_cut_and_later_alerts_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(dir.path(), 1 << 20).unwrap();
            s.append(&alert(1)).unwrap();
        }
        let seg = seg_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"5 1 high NHI-010 00ff {\"half").unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.pending().0, 1);
        s.append(&alert(2)).unwrap();
        let mut r = s.reader();
        assert_eq!(drain(&s, &mut r, 10), vec![1, 2]);
        let mode = std::fs::metadata(&seg).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn damaged_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&alert(1)).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(seg_path(dir.path(), 1))
            .unwrap();
        f.write_all(b"garbage\n").unwrap();
        s.append(&alert(3)).unwrap();
        let mut r = s.reader();
        let mut bad = 0;
        let b = r.read(&s, 10, &mut bad).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(b.lines, 3);
        assert_eq!(b.alerts.len(), 2);
    }
}
