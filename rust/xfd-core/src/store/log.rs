//! `records.log`: append-only JSON lines, one [`Op`] each, replayed in order into a map destination ->
//! [`Entry`]. Callers hold the store's log lock around [`Log::append`] and [`Log::compact`], so lines of
//! two processes never interleave and no append lands in a file being replaced.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Entry, Op};

/// Compaction starts once the log holds this many lines more than twice its live entries: rare enough
/// to cost nothing on small nodes, soon enough that the log stays a few times its live size.
const SLACK_LINES: u64 = 1000;

pub(super) struct Log {
    path: PathBuf,
    file: Arc<File>,
    /// (device, inode) of `file`: another one at `path` means the log was compacted (or removed).
    id: (u64, u64),
    /// Bytes of the file replayed so far: always the end of a complete line.
    read_to: u64,
    lines: u64,
    pub(super) entries: HashMap<PathBuf, Entry>,
}

impl Log {
    pub(super) fn open(path: &Path) -> io::Result<Log> {
        let (file, id) = open_file(path)?;
        let mut log = Log {
            path: path.to_owned(),
            file,
            id,
            read_to: 0,
            lines: 0,
            entries: HashMap::new(),
        };
        log.read_tail()?;
        Ok(log)
    }

    pub(super) fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Replays what other runs appended since the last look; re-reads the whole log when it was replaced
    /// (compacted by another run). Lines this log appended itself are replayed again: each op sets what
    /// it names, so replaying a suffix of the log in order gives the same state.
    pub(super) fn refresh(&mut self) -> io::Result<()> {
        let current = fs::metadata(&self.path).map(|m| (m.dev(), m.ino())).ok();
        if current != Some(self.id) {
            let (file, id) = open_file(&self.path)?;
            (self.file, self.id, self.read_to, self.lines) = (file, id, 0, 0);
            self.entries.clear();
        }
        self.read_tail()
    }

    /// Appends `ops` as one write (the caller holds the log lock) and applies them here.
    pub(super) fn append(&mut self, ops: &[Op]) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.refresh()?;
        let size = self.file.metadata()?.len();
        let mut buffer = Vec::with_capacity(256 * ops.len());
        if size > 0 && !self.ends_with_newline(size)? {
            buffer.push(b'\n'); // a line torn by a crash stays alone (and unreadable), never merged with ours
        }
        for op in ops {
            serde_json::to_writer(&mut buffer, op).map_err(io::Error::other)?;
            buffer.push(b'\n');
        }
        (&*self.file).write_all(&buffer)?;
        if self.read_to == size {
            // Nothing of other runs in between: no need to read these lines back (they are counted then).
            self.read_to += buffer.len() as u64;
            self.lines += ops.len() as u64;
        }
        for op in ops {
            super::apply(&mut self.entries, op.clone());
        }
        Ok(())
    }

    pub(super) fn needs_compaction(&self) -> bool {
        self.lines > 2 * self.entries.len() as u64 + SLACK_LINES
    }

    /// Rewrites the log with one set of lines per live entry: to a temporary file, synced, renamed over
    /// the log, directory synced. A crash at any point leaves the old log or the new one, both complete.
    pub(super) fn compact(&mut self) -> io::Result<()> {
        self.refresh()?;
        let temporary = self.path.with_extension("log.compacting");
        let mut out = io::BufWriter::new(
            File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temporary)?,
        );
        let mut lines = 0u64;
        let mut uses = Vec::new();
        for (destination, entry) in &self.entries {
            for op in entry.ops(destination) {
                serde_json::to_writer(&mut out, &op).map_err(io::Error::other)?;
                out.write_all(b"\n")?;
                lines += 1;
            }
            if let Some(used) = &entry.used {
                uses.push((used.at_ns, used.artifact.clone(), destination.clone()));
            }
        }
        // After the records they refer to (a use of a destination with nothing published is dropped),
        // grouped as runs write them: a few lines for 100,000 files.
        uses.sort();
        for group in uses.chunk_by(|a, b| (a.0, &a.1) == (b.0, &b.1)) {
            let (at_ns, artifact) = (group[0].0, group[0].1.clone());
            let dests: Vec<PathBuf> = group.iter().map(|u| u.2.clone()).collect();
            for op in super::used_ops(at_ns, dests.into_iter().map(|d| (artifact.clone(), d)).collect()) {
                serde_json::to_writer(&mut out, &op).map_err(io::Error::other)?;
                out.write_all(b"\n")?;
                lines += 1;
            }
        }
        let written = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        written.sync_all()?;
        fs::rename(&temporary, &self.path)?;
        let directory = self.path.parent().unwrap_or(Path::new("/"));
        File::open(directory)?.sync_all()?;
        let (file, id) = open_file(&self.path)?;
        let size = file.metadata()?.len();
        (self.file, self.id, self.read_to, self.lines) = (file, id, size, lines);
        Ok(())
    }

    fn ends_with_newline(&self, size: u64) -> io::Result<bool> {
        let mut last = [0u8];
        self.file.read_exact_at(&mut last, size - 1)?;
        Ok(last[0] == b'\n')
    }

    /// Replays the complete lines after `read_to`. An incomplete last line (being written, or torn by a
    /// crash) is left for later; a line that does not parse (torn, then followed by others) is skipped.
    fn read_tail(&mut self) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        if size <= self.read_to {
            return Ok(());
        }
        let mut bytes = vec![0u8; (size - self.read_to) as usize];
        self.file.read_exact_at(&mut bytes, self.read_to)?;
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        for line in bytes[..end].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            self.lines += 1;
            if let Ok(op) = serde_json::from_slice::<Op>(line) {
                super::apply(&mut self.entries, op);
            }
        }
        self.read_to += end as u64 + 1;
        Ok(())
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish()
    }
}

fn open_file(path: &Path) -> io::Result<(Arc<File>, (u64, u64))> {
    let file = File::options()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((Arc::new(file), (meta.dev(), meta.ino())))
}
