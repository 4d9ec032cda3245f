//! The CRI container log writer: turns a container's stdout/stderr bytes into kubelet's log
//! format, one record per line:
//!
//! ```text
//! 2026-12-01T20:54:55.123456789Z stdout F hello world
//! ```
//!
//! `F` marks the last (or only) piece of a line, `P` a partial piece: a line longer than the
//! max line size is split into `P` records of exactly that size followed by an `F` with the
//! rest. The newline itself is never part of the content; every other byte is written as-is,
//! UTF-8 or not. kubelet rotates the file by renaming it and then asks for a reopen.
//!
//! Used by the single-threaded pod monitor, which reads both pipes of a container and hands
//! every chunk here; this module only formats and writes, it never reads the pipes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// kubelet's (and containerd's) default max line size.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream's name as it appears in a record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("max line size must be at least one byte")]
    ZeroMaxLine,
    #[error("open log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {stream} record to log file {path}")]
    Write {
        path: PathBuf,
        stream: Stream,
        #[source]
        source: io::Error,
    },
}

/// The record's tag: `P` for a partial piece of a line, `F` for its final piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Partial,
    Full,
}

impl Tag {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Tag::Partial => b"P",
            Tag::Full => b"F",
        }
    }
}

/// One container's log file, with a partial-line buffer per stream.
#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: File,
    max_line: usize,
    /// The start of a line not yet ended by a newline, per stream; never longer than
    /// `max_line` between calls.
    pending: [Vec<u8>; 2],
    /// Scratch space for one record, reused so the hot path does not allocate.
    record: Vec<u8>,
}

impl CriLog {
    /// Opens (creates 0640) path for appending, O_NOFOLLOW|O_CLOEXEC: a symlink at path is refused.
    pub fn open(path: &Path, max_line: usize) -> Result<CriLog, LogError> {
        if max_line == 0 {
            return Err(LogError::ZeroMaxLine);
        }
        let file = open_append(path)?;
        Ok(CriLog {
            path: path.to_path_buf(),
            file,
            max_line,
            pending: [Vec::new(), Vec::new()],
            record: Vec::new(),
        })
    }

    /// Appends chunk read from `stream`: complete lines are written as F records, over-long ones
    /// split into P records.
    ///
    /// The whole chunk is always consumed, even when a write fails: the records that could not
    /// be written are lost, the first error is returned, and the partial-line state stays
    /// consistent so logging resumes cleanly once the disk has room again.
    pub fn write(&mut self, stream: Stream, chunk: &[u8]) -> Result<(), LogError> {
        let mut first_err = None;
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            let buffered = std::mem::take(&mut self.pending[stream.index()]);
            if buffered.is_empty() {
                // The common case: the whole line is in this chunk, write it from there.
                self.emit_line(stream, line, &mut first_err);
                self.pending[stream.index()] = buffered;
            } else {
                let mut whole = buffered;
                whole.extend_from_slice(line);
                self.emit_line(stream, &whole, &mut first_err);
                whole.clear();
                self.pending[stream.index()] = whole;
            }
        }
        if !rest.is_empty() {
            let mut buffered = std::mem::take(&mut self.pending[stream.index()]);
            buffered.extend_from_slice(rest);
            // Like containerd, a P record is cut only once more than max_line bytes are known:
            // a line of exactly max_line bytes whose newline is still to come stays one F record
            // instead of a P followed by an empty F.
            let mut start = 0;
            while buffered.len() - start > self.max_line {
                let piece = &buffered[start..start + self.max_line];
                self.emit(stream, Tag::Partial, piece, &mut first_err);
                start += self.max_line;
            }
            buffered.drain(..start);
            self.pending[stream.index()] = buffered;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The stream reached EOF: write out its buffered remainder.
    ///
    /// The remainder was not ended by a newline, so it is written as a P record, as
    /// containerd's CRI logger (`redirectLogs` in internal/cri/io/logger.go) does at EOF: kubelet
    /// then shows exactly what the container wrote, without inventing a newline. Nothing is
    /// written when nothing is buffered.
    pub fn finish(&mut self, stream: Stream) -> Result<(), LogError> {
        let mut buffered = std::mem::take(&mut self.pending[stream.index()]);
        let mut first_err = None;
        if !buffered.is_empty() {
            self.emit(stream, Tag::Partial, &buffered, &mut first_err);
            buffered.clear();
        }
        self.pending[stream.index()] = buffered;
        first_err.map_or(Ok(()), Err)
    }

    /// kubelet renamed the file to rotate it: open path again (creating it), keeping buffered
    /// partial lines, so no line is lost or duplicated.
    ///
    /// If the new file cannot be opened, the old one stays in use and the error is returned.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        self.file = open_append(&self.path)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one complete line: P records of max_line bytes while more remains, then the F.
    fn emit_line(&mut self, stream: Stream, line: &[u8], first_err: &mut Option<LogError>) {
        let mut rest = line;
        while rest.len() > self.max_line {
            let (piece, tail) = rest.split_at(self.max_line);
            self.emit(stream, Tag::Partial, piece, first_err);
            rest = tail;
        }
        self.emit(stream, Tag::Full, rest, first_err);
    }

    /// Formats one record and appends it with a single write(2) (O_APPEND makes the append
    /// atomic, so a concurrent reader never sees half a record unless the disk fills mid-write).
    fn emit(&mut self, stream: Stream, tag: Tag, content: &[u8], first_err: &mut Option<LogError>) {
        let mut record = std::mem::take(&mut self.record);
        record.clear();
        record.extend_from_slice(format_timestamp(SystemTime::now()).as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.push(b' ');
        record.extend_from_slice(tag.as_bytes());
        record.push(b' ');
        record.extend_from_slice(content);
        record.push(b'\n');
        if let Err(source) = self.file.write_all(&record)
            && first_err.is_none()
        {
            *first_err = Some(LogError::Write {
                path: self.path.clone(),
                stream,
                source,
            });
        }
        self.record = record;
    }
}

/// Opens the log file for appending: created 0640 (before umask), never through a symlink
/// (O_NOFOLLOW makes that fail with ELOOP), close-on-exec (std always sets O_CLOEXEC) so no
/// container process inherits it.
fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// RFC3339Nano in UTC with all nine fractional digits: `2026-12-01T20:54:55.123456789Z`.
pub fn format_timestamp(t: SystemTime) -> String {
    // Seconds since the epoch (negative before it) and a non-negative nanosecond part.
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = -(d.as_secs() as i64);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard Hinnant's
/// `civil_from_days`: shift the epoch to 0000-03-01 so leap days fall at the end of a year,
/// then split into 400-year eras, years of the era, and days of the year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;

    const MAX: usize = DEFAULT_MAX_LINE;

    /// One parsed record: (stream, tag, content).
    type Record = (String, String, Vec<u8>);

    fn records(path: &Path) -> Vec<Record> {
        let data = std::fs::read(path).unwrap();
        assert!(
            data.is_empty() || data.ends_with(b"\n"),
            "file ends mid-record"
        );
        data.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut parts = l.splitn(4, |&b| b == b' ');
                let ts = std::str::from_utf8(parts.next().unwrap()).unwrap();
                assert_eq!(ts.len(), 30, "timestamp {ts:?}");
                assert!(ts.ends_with('Z'), "timestamp {ts:?}");
                let stream = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                let tag = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                let content = parts.next().unwrap().to_vec();
                (stream, tag, content)
            })
            .collect()
    }

    fn rec(stream: &str, tag: &str, content: &[u8]) -> Record {
        (stream.to_string(), tag.to_string(), content.to_vec())
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        (dir, path)
    }

    #[test]
    fn one_line() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"hello world\n").unwrap();
        assert_eq!(records(&path), vec![rec("stdout", "F", b"hello world")]);
        assert_eq!(log.path(), path);
    }

    #[test]
    fn many_lines_in_one_chunk() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stderr, b"a\nbb\n\nccc\n").unwrap();
        assert_eq!(
            records(&path),
            vec![
                rec("stderr", "F", b"a"),
                rec("stderr", "F", b"bb"),
                rec("stderr", "F", b""),
                rec("stderr", "F", b"ccc"),
            ]
        );
    }

    #[test]
    fn line_split_across_chunks() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"hel").unwrap();
        log.write(Stream::Stdout, b"lo wo").unwrap();
        assert_eq!(records(&path), vec![], "nothing written before the newline");
        log.write(Stream::Stdout, b"rld\nnext").unwrap();
        log.write(Stream::Stdout, b"\n").unwrap();
        assert_eq!(
            records(&path),
            vec![
                rec("stdout", "F", b"hello world"),
                rec("stdout", "F", b"next")
            ]
        );
    }

    fn long_line() -> Vec<u8> {
        (0..100 * 1024).map(|i| b'a' + (i % 26) as u8).collect()
    }

    fn assert_long_line_records(path: &Path, line: &[u8]) {
        let recs = records(path);
        let tags: Vec<&str> = recs.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(tags, ["P", "P", "P", "P", "P", "P", "F"]);
        for r in &recs[..6] {
            assert_eq!(r.2.len(), MAX);
        }
        assert_eq!(recs[6].2.len(), 100 * 1024 - 6 * MAX);
        let joined: Vec<u8> = recs.iter().flat_map(|r| r.2.clone()).collect();
        assert_eq!(joined, line);
    }

    #[test]
    fn long_line_in_one_chunk_is_split_into_partials() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        let mut chunk = long_line();
        chunk.push(b'\n');
        log.write(Stream::Stdout, &chunk).unwrap();
        assert_long_line_records(&path, &long_line());
    }

    #[test]
    fn long_line_in_uneven_chunks_is_split_into_partials() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        let mut input = long_line();
        input.push(b'\n');
        for chunk in input.chunks(7000) {
            log.write(Stream::Stdout, chunk).unwrap();
            assert!(log.pending[0].len() <= MAX, "buffer bounded by max line");
        }
        assert_long_line_records(&path, &long_line());
    }

    #[test]
    fn line_of_exactly_max_is_one_full_record() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, 4).unwrap();
        log.write(Stream::Stdout, b"abcd").unwrap();
        log.write(Stream::Stdout, b"\nabcdefgh\n").unwrap();
        assert_eq!(
            records(&path),
            vec![
                rec("stdout", "F", b"abcd"),
                rec("stdout", "P", b"abcd"),
                rec("stdout", "F", b"efgh"),
            ]
        );
    }

    #[test]
    fn streams_keep_their_own_partials() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"out-").unwrap();
        log.write(Stream::Stderr, b"err-").unwrap();
        log.write(Stream::Stdout, b"line\nout2-").unwrap();
        log.write(Stream::Stderr, b"line\n").unwrap();
        log.write(Stream::Stdout, b"end\n").unwrap();
        assert_eq!(
            records(&path),
            vec![
                rec("stdout", "F", b"out-line"),
                rec("stderr", "F", b"err-line"),
                rec("stdout", "F", b"out2-end"),
            ]
        );
    }

    #[test]
    fn finish_flushes_the_remainder_as_partial() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"done\nno newline").unwrap();
        log.write(Stream::Stderr, b"err tail").unwrap();
        log.finish(Stream::Stdout).unwrap();
        assert_eq!(
            records(&path),
            vec![
                rec("stdout", "F", b"done"),
                rec("stdout", "P", b"no newline")
            ]
        );
        log.finish(Stream::Stdout).unwrap();
        log.finish(Stream::Stderr).unwrap();
        log.finish(Stream::Stderr).unwrap();
        assert_eq!(
            records(&path),
            vec![
                rec("stdout", "F", b"done"),
                rec("stdout", "P", b"no newline"),
                rec("stderr", "P", b"err tail"),
            ],
            "finish writes the remainder once and nothing when empty"
        );
    }

    #[test]
    fn reopen_after_rename_loses_and_duplicates_nothing() {
        let (dir, path) = setup();
        let rotated = dir.path().join("0.log.20261201-205455");
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"before\nhalf ").unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Written between kubelet's rename and its ReopenContainerLog: goes to the old file.
        log.write(Stream::Stdout, b"way").unwrap();
        log.write(Stream::Stderr, b"between\n").unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b" there\nafter\n").unwrap();
        assert_eq!(
            records(&rotated),
            vec![
                rec("stdout", "F", b"before"),
                rec("stderr", "F", b"between")
            ]
        );
        assert_eq!(
            records(&path),
            vec![
                rec("stdout", "F", b"half way there"),
                rec("stdout", "F", b"after")
            ]
        );
    }

    #[test]
    fn symlink_at_path_is_refused() {
        let (dir, path) = setup();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = CriLog::open(&path, MAX).unwrap_err();
        match &err {
            LogError::Open { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ELOOP))
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("0.log"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn reopen_refuses_a_symlink_and_keeps_the_old_file() {
        let (dir, path) = setup();
        let rotated = dir.path().join("rotated");
        let mut log = CriLog::open(&path, MAX).unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        std::os::unix::fs::symlink(dir.path().join("x"), &path).unwrap();
        assert!(log.reopen().is_err());
        log.write(Stream::Stdout, b"kept\n").unwrap();
        assert_eq!(records(&rotated), vec![rec("stdout", "F", b"kept")]);
    }

    #[test]
    fn existing_file_is_appended_and_mode_is_at_most_0640() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"one\n").unwrap();
        drop(log);
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"two\n").unwrap();
        assert_eq!(
            records(&path),
            vec![rec("stdout", "F", b"one"), rec("stdout", "F", b"two")]
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
    }

    #[test]
    fn bytes_are_written_as_is() {
        let (_dir, path) = setup();
        let mut log = CriLog::open(&path, MAX).unwrap();
        log.write(Stream::Stdout, b"\xff\xfe bin\r\x00 \n").unwrap();
        assert_eq!(
            records(&path),
            vec![rec("stdout", "F", b"\xff\xfe bin\r\x00 ")]
        );
    }

    #[test]
    fn zero_max_line_is_refused() {
        let (_dir, path) = setup();
        assert!(matches!(CriLog::open(&path, 0), Err(LogError::ZeroMaxLine)));
    }

    #[test]
    fn timestamps() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(
            format_timestamp(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            format_timestamp(at(1_796_158_495, 123_456_789)),
            "2026-12-01T20:54:55.123456789Z"
        );
        assert_eq!(
            format_timestamp(at(1_709_210_096, 1)),
            "2024-02-29T12:34:56.000000001Z"
        );
        assert_eq!(
            format_timestamp(at(951_782_400, 0)),
            "2000-02-29T00:00:00.000000000Z"
        );
        // 2100 is not a leap year: the day after 2100-02-28 is March 1st.
        assert_eq!(
            format_timestamp(at(4_107_542_400 - 86_400, 999_999_999)),
            "2100-02-28T00:00:00.999999999Z"
        );
        assert_eq!(
            format_timestamp(at(4_107_542_400, 0)),
            "2100-03-01T00:00:00.000000000Z"
        );
        assert_eq!(
            format_timestamp(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59.500000000Z"
        );
        assert_eq!(
            format_timestamp(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59.000000000Z"
        );
    }
}
