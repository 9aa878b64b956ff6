//! [`AuditLog`]: appends records to the chain, signs checkpoints, survives restarts and rotation.
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::chain::{EncodeError, Encoder, GENESIS, Hash, Rfc3339, hash_line, parse_hash};
use super::record::{Checkpoint, CheckpointReason, Gap, RecordBody};
use super::sign::{KeyError, PublicKey, SigningKey};

/// Default: a checkpoint at least every this many records.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Default: a checkpoint at most this long after the oldest unsigned record.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1000);
/// Where the daemon writes its audit log unless told otherwise.
pub const DEFAULT_LOG_PATH: &str = "/var/log/gate/audit.jsonl";
/// Where the daemon keeps its signing key unless told otherwise (public half: `gate.pub`).
pub const DEFAULT_KEY_PATH: &str = "/var/lib/gate/gate.key";

const WRITE_BUFFER: usize = 64 * 1024;
const TAIL_WINDOW: u64 = 64 * 1024;
const TAIL_WINDOW_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
    #[error("encoding a record: {0}")]
    Encode(#[from] EncodeError),
    #[error(
        "{path}: an earlier write failed ({cause}); records after it were not written; open the log again"
    )]
    Broken { path: PathBuf, cause: String },
    #[error(
        "{path}: the last line is not an audit record ({reason}); move the file aside and reopen"
    )]
    CorruptTail { path: PathBuf, reason: String },
    #[error("checkpoint records are written by the log itself")]
    CheckpointBody,
    #[error(
        "{path} is being written by another process ({holder}); two writers would break its \
         chain: stop that writer, or give this one another log"
    )]
    Locked { path: PathBuf, holder: String },
}

/// How an [`AuditLog`] behaves. [`AuditConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// PKCS#8 Ed25519 key, created (mode 0600, with a `.pub` next to it) if missing.
    pub key_path: PathBuf,
    /// Sign a checkpoint after this many records (N).
    pub checkpoint_every: u64,
    /// ... or once the oldest unsigned record is this old (T), on the next append or `tick`.
    pub checkpoint_interval: Duration,
    /// Hand every record to the kernel (`write(2)`) before `append` returns. When false (the
    /// default), only `decision` records are buffered, until the next checkpoint (at most N
    /// records or T later) or `flush`: the daemon calls `flush` after each batch it drains from
    /// the kernel. A crash loses what is still buffered, like the events it had not drained; the
    /// restart shows up as a `recovery` checkpoint. Other kinds are always written at once.
    pub flush_each_record: bool,
    /// `host` field; default: the system host name.
    pub host: Option<String>,
    /// `boot_id` field; default: `/proc/sys/kernel/random/boot_id`.
    pub boot_id: Option<String>,
    /// Last position of the chain, for continuing after the log was rotated away while gate was
    /// down; default: `<log path>.state`.
    pub state_path: Option<PathBuf>,
    /// Mode of a newly created log file.
    pub file_mode: u32,
}

impl AuditConfig {
    pub fn new(key_path: impl Into<PathBuf>) -> Self {
        Self {
            key_path: key_path.into(),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            flush_each_record: false,
            host: None,
            boot_id: None,
            state_path: None,
            file_mode: 0o640,
        }
    }
}

/// Where the chain stands: the next record's seq and `prev`, and what is not yet signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    next_seq: u64,
    head: Hash,
    /// `first` of the next checkpoint.
    cp_first: u64,
    /// Records written since the last checkpoint.
    unsigned: u64,
}

const START: Position = Position {
    next_seq: 0,
    head: GENESIS,
    cp_first: 0,
    unsigned: 0,
};

/// One slot of the state file (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct State {
    next_seq: u64,
    head: String,
    cp_first: u64,
    unsigned: u64,
    /// Identity of the log file the position refers to.
    dev: u64,
    ino: u64,
}

/// Bytes per state slot (a `State` is at most about 250 bytes of JSON).
const STATE_SLOT: usize = 320;

/// The state file: two fixed-size slots of space-padded JSON, written alternately in place, so
/// that saving is one `pwrite` (cheap enough for every checkpoint) and a save cut short leaves
/// the other slot intact. Advisory (the log itself is authoritative): failures are logged.
struct StateFile {
    path: PathBuf,
    file: Option<File>,
    saves: u64,
}

impl StateFile {
    fn open(path: PathBuf) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path);
        let file = file
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot keep the audit chain state"))
            .ok();
        Self {
            path,
            file,
            saves: 0,
        }
    }

    fn save(&mut self, state: &State) {
        let Some(f) = &self.file else { return };
        let mut slot = serde_json::to_vec(state).expect("serializing plain data");
        debug_assert!(slot.len() < STATE_SLOT);
        slot.resize(STATE_SLOT - 1, b' ');
        slot.push(b'\n');
        let at = (self.saves % 2) * STATE_SLOT as u64;
        if let Err(e) = f.write_all_at(&slot, at) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the audit chain state");
        }
        self.saves += 1;
    }
}

/// The append side of the audit chain. Single writer: wrap it in a mutex to share it.
///
/// Time-based checkpoints are taken on `append` and on [`AuditLog::tick`]; a daemon calls `tick`
/// from its event loop (at the latest at [`AuditLog::next_checkpoint_due`]) so that a quiet log
/// still gets its last records signed within `checkpoint_interval`.
pub struct AuditLog {
    path: PathBuf,
    state: StateFile,
    cfg: AuditConfig,
    key: SigningKey,
    encoder: Encoder,
    /// `None` once a write failed: nothing more is written until the log is reopened.
    out: Option<BufWriter<File>>,
    file_id: (u64, u64),
    pos: Position,
    unsigned_since: Option<Instant>,
    buf: Vec<u8>,
    broken: Option<String>,
    /// `<log>.lock`, held (flock) while the log is open: one writer per stream.
    _lock: File,
}

/// `<log path>.lock`
fn lock_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    log.with_file_name(name)
}

/// Takes the stream's writer lock, or says who holds it.
fn take_lock(log: &Path) -> Result<File, AuditError> {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let path = lock_path(log);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "pid unknown".to_string(),
            h => format!("pid {h}"),
        };
        return Err(AuditError::Locked {
            path: log.to_owned(),
            holder,
        });
    }
    let _ = f.set_len(0);
    let _ = f.seek(io::SeekFrom::Start(0));
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `<log path>.state`
pub fn default_state_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_owned();
    name.push(".state");
    log.with_file_name(name)
}

fn system_host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn system_boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn open_log_file(path: &Path, mode: u32) -> Result<File, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io_at(dir))?;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io_at(path))
}

fn file_id(f: &File, path: &Path) -> Result<(u64, u64), AuditError> {
    let m = f.metadata().map_err(io_at(path))?;
    Ok((m.dev(), m.ino()))
}

impl AuditLog {
    /// Opens (or creates) the log at `path` and continues its chain: from the file's last record,
    /// or, if the file is new or empty (rotated away), from the state file next to it. A record
    /// cut in half by a crash is removed and replaced by a `gap` record; records the previous
    /// writer left unsigned get a `recovery` checkpoint.
    pub fn open(path: &Path, cfg: AuditConfig) -> Result<Self, AuditError> {
        let lock = take_lock(path)?;
        let (key, _) = SigningKey::load_or_create(&cfg.key_path)?;
        let state_path = cfg
            .state_path
            .clone()
            .unwrap_or_else(|| default_state_path(path));
        let file = open_log_file(path, cfg.file_mode)?;
        let file_id = file_id(&file, path)?;
        let (pos, partial) = discover(&file, path, &state_path, file_id)?;
        if partial > 0 {
            let len = file.metadata().map_err(io_at(path))?.len();
            file.set_len(len - partial).map_err(io_at(path))?;
        }
        let host = cfg.host.clone().unwrap_or_else(system_host);
        let boot_id = cfg.boot_id.clone().unwrap_or_else(system_boot_id);
        let mut log = AuditLog {
            path: path.to_owned(),
            state: StateFile::open(state_path),
            encoder: Encoder::new(&host, &boot_id),
            key,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            file_id,
            pos,
            unsigned_since: None,
            buf: Vec::with_capacity(1024),
            broken: None,
            cfg,
            _lock: lock,
        };
        log.recover(partial)?;
        Ok(log)
    }

    fn recover(&mut self, partial: u64) -> Result<(), AuditError> {
        if partial > 0 {
            let reason = format!(
                "a partially written record ({partial} bytes) was discarded when the log was reopened"
            );
            self.write_record(
                &RecordBody::Gap(Gap {
                    lost: 1,
                    cpu: None,
                    reason,
                }),
                SystemTime::now(),
            )?;
            self.pos.unsigned += 1;
        }
        if self.pos.unsigned > 0 {
            self.checkpoint_with(CheckpointReason::Recovery, false)?;
        } else {
            self.write_state();
        }
        Ok(())
    }

    /// Appends a record stamped now; returns its seq. Checkpoints are taken as configured.
    /// An error means the record may not be in the file, and the log refuses further writes.
    pub fn append(&mut self, body: &RecordBody) -> Result<u64, AuditError> {
        self.append_at(body, SystemTime::now())
    }

    /// Appends a record with the given time (e.g. when the kernel saw the event).
    pub fn append_at(&mut self, body: &RecordBody, time: SystemTime) -> Result<u64, AuditError> {
        if matches!(body, RecordBody::Checkpoint(_)) {
            return Err(AuditError::CheckpointBody);
        }
        let seq = self.write_record(body, time)?;
        self.pos.unsigned += 1;
        let now = Instant::now();
        let since = *self.unsigned_since.get_or_insert(now);
        if self.pos.unsigned >= self.cfg.checkpoint_every {
            self.checkpoint_with(CheckpointReason::Count, false)?;
        } else if now.duration_since(since) >= self.cfg.checkpoint_interval {
            self.checkpoint_with(CheckpointReason::Time, false)?;
        } else if self.cfg.flush_each_record || !matches!(body, RecordBody::Decision(_)) {
            self.flush()?;
        }
        Ok(seq)
    }

    /// Records that `lost` events never reached the log (e.g. the ring buffer was full on `cpu`),
    /// then signs a checkpoint at once. Returns the gap record's seq.
    pub fn append_gap(
        &mut self,
        lost: u64,
        cpu: Option<u32>,
        reason: &str,
    ) -> Result<u64, AuditError> {
        let body = RecordBody::Gap(Gap {
            lost,
            cpu,
            reason: reason.to_owned(),
        });
        let seq = self.write_record(&body, SystemTime::now())?;
        self.pos.unsigned += 1;
        self.checkpoint_with(CheckpointReason::Gap, false)?;
        Ok(seq)
    }

    /// Signs a checkpoint now if any record is unsigned; returns its seq.
    pub fn checkpoint(&mut self) -> Result<Option<u64>, AuditError> {
        self.checkpoint_with(CheckpointReason::Manual, false)
    }

    /// Takes the time-based checkpoint if it is due. Call it from the event loop.
    pub fn tick(&mut self) -> Result<Option<u64>, AuditError> {
        match self.unsigned_since {
            Some(since) if since.elapsed() >= self.cfg.checkpoint_interval => {
                self.checkpoint_with(CheckpointReason::Time, false)
            }
            _ => Ok(None),
        }
    }

    /// When the next time-based checkpoint is due, if any record is unsigned.
    pub fn next_checkpoint_due(&self) -> Option<Instant> {
        self.unsigned_since
            .map(|s| s + self.cfg.checkpoint_interval)
    }

    fn checkpoint_with(
        &mut self,
        reason: CheckpointReason,
        force: bool,
    ) -> Result<Option<u64>, AuditError> {
        self.usable()?;
        if self.pos.next_seq == 0 || (self.pos.unsigned == 0 && !force) {
            return Ok(None);
        }
        let (head, last, first) = (self.pos.head, self.pos.next_seq - 1, self.pos.cp_first);
        let sig = self.key.sign_checkpoint(&head, last, first, reason);
        let body = RecordBody::Checkpoint(Checkpoint {
            first,
            last,
            head: hex::encode(head),
            key_id: self.key.key_id().to_string(),
            reason,
            sig: hex::encode(sig),
        });
        let seq = self.write_record(&body, SystemTime::now())?;
        self.pos.cp_first = seq;
        self.pos.unsigned = 0;
        self.unsigned_since = None;
        self.flush()?;
        self.write_state();
        Ok(Some(seq))
    }

    /// Encodes, hashes and writes one record; advances the chain.
    fn write_record(&mut self, body: &RecordBody, time: SystemTime) -> Result<u64, AuditError> {
        self.usable()?;
        self.buf.clear();
        let seq = self.pos.next_seq;
        self.encoder.encode(
            &mut self.buf,
            seq,
            Rfc3339::new(time).as_str(),
            &self.pos.head,
            body,
        )?;
        let hash = hash_line(&self.buf);
        self.buf.push(b'\n');
        let out = self.out.as_mut().expect("usable() checked");
        if let Err(e) = out.write_all(&self.buf) {
            return Err(self.fail(e));
        }
        self.pos.head = hash;
        self.pos.next_seq = seq + 1;
        Ok(seq)
    }

    fn usable(&self) -> Result<(), AuditError> {
        match &self.broken {
            None => Ok(()),
            Some(cause) => Err(AuditError::Broken {
                path: self.path.clone(),
                cause: cause.clone(),
            }),
        }
    }

    /// Marks the log broken and drops whatever is still buffered, unwritten.
    fn fail(&mut self, e: io::Error) -> AuditError {
        self.broken = Some(e.to_string());
        if let Some(out) = self.out.take() {
            drop(out.into_parts());
        }
        AuditError::Io {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Writes buffered records to the file.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.usable()?;
        let out = self.out.as_mut().expect("usable() checked");
        if let Err(e) = out.flush() {
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Flushes and `fdatasync`s the file.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.flush()?;
        let out = self.out.as_mut().expect("flush() checked");
        if let Err(e) = out.get_ref().sync_data() {
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Saves the position for a restart after rotation.
    fn write_state(&mut self) {
        let state = State {
            next_seq: self.pos.next_seq,
            head: hex::encode(self.pos.head),
            cp_first: self.pos.cp_first,
            unsigned: self.pos.unsigned,
            dev: self.file_id.0,
            ino: self.file_id.1,
        };
        self.state.save(&state);
    }

    /// If the log file was renamed or removed (logrotate), ends the old file with a signed
    /// `rotate` checkpoint and continues the chain in a new file at the original path.
    /// Returns whether a new file was opened.
    pub fn reopen(&mut self) -> Result<bool, AuditError> {
        self.usable()?;
        match fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.file_id => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AuditError::Io {
                    path: self.path.clone(),
                    source: e,
                });
            }
        }
        self.checkpoint_with(CheckpointReason::Rotate, true)?;
        self.sync()?;
        let file = open_log_file(&self.path, self.cfg.file_mode)?;
        self.file_id = file_id(&file, &self.path)?;
        self.out = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
        self.write_state();
        Ok(true)
    }

    /// Renames the current file to `to` and continues in a new file at the original path.
    pub fn rotate_to(&mut self, to: &Path) -> Result<(), AuditError> {
        self.usable()?;
        fs::rename(&self.path, to).map_err(io_at(to))?;
        self.reopen().map(|_| ())
    }

    /// Clean shutdown: a final `shutdown` checkpoint, flushed and synced.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.checkpoint_with(CheckpointReason::Shutdown, true)?;
        self.sync()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.pos.next_seq
    }

    /// Hash of the last record written (the `prev` of the next one).
    pub fn head(&self) -> Hash {
        self.pos.head
    }

    /// Records written since the last checkpoint.
    pub fn unsigned(&self) -> u64 {
        self.pos.unsigned
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.flush()
        {
            tracing::error!(path = %self.path.display(), error = %e, "audit records lost while closing the log");
        }
    }
}

/// Where to continue the chain, and how many bytes of a cut record end the file.
fn discover(
    file: &File,
    path: &Path,
    state_path: &Path,
    id: (u64, u64),
) -> Result<(Position, u64), AuditError> {
    let len = file.metadata().map_err(io_at(path))?.len();
    let scan = scan_tail(file, len).map_err(|e| match e {
        TailError::Io(source) => AuditError::Io {
            path: path.to_owned(),
            source,
        },
        TailError::Bad(reason) => AuditError::CorruptTail {
            path: path.to_owned(),
            reason,
        },
    })?;
    let state = read_state(state_path);
    if let Some((pos, partial)) = scan {
        if let Some((st, _)) = &state
            && st.next_seq > pos.next_seq
        {
            tracing::warn!(path = %path.display(), file_next = pos.next_seq, state_next = st.next_seq,
                "the audit log is behind its state file; continuing from the log");
        }
        return Ok((pos, partial));
    }
    let pos = match state {
        None => START,
        Some((st, st_id)) if st_id == id => st,
        Some((st, st_id)) => from_rotated(path, st_id)
            .filter(|p| p.next_seq >= st.next_seq)
            .unwrap_or(st),
    };
    Ok((pos, len))
}

/// The most advanced valid slot of the state file.
fn read_state(path: &Path) -> Option<(Position, (u64, u64))> {
    let text = fs::read(path).ok()?;
    let best = text
        .split(|&b| b == b'\n')
        .filter(|slot| slot.iter().any(|b| !b.is_ascii_whitespace()))
        .filter_map(|slot| {
            serde_json::from_slice::<State>(slot)
                .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged audit state slot"))
                .ok()
        })
        .max_by_key(|st| st.next_seq)?;
    let head = parse_hash(&best.head)?;
    let pos = Position {
        next_seq: best.next_seq,
        head,
        cp_first: best.cp_first,
        unsigned: best.unsigned,
    };
    Some((pos, (best.dev, best.ino)))
}

/// The position at the end of the file the state refers to, if it is still in the directory
/// under another name (rename keeps the inode) and was written after the state was saved.
fn from_rotated(path: &Path, id: (u64, u64)) -> Option<Position> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let entry = fs::read_dir(dir).ok()?.flatten().find(|e| {
        e.metadata()
            .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == id)
    })?;
    let f = File::open(entry.path()).ok()?;
    let len = f.metadata().ok()?.len();
    match scan_tail(&f, len) {
        Ok(Some((pos, _))) => Some(pos),
        _ => None,
    }
}

enum TailError {
    Io(io::Error),
    Bad(String),
}

#[derive(Deserialize)]
struct LineHead {
    seq: u64,
    kind: String,
}

fn line_head(line: &[u8]) -> Result<LineHead, TailError> {
    serde_json::from_slice(line).map_err(|e| TailError::Bad(e.to_string()))
}

/// Reads the end of a log: the position after its last complete record and the length of a
/// trailing partial line. `None` when the file holds no complete line.
fn scan_tail(file: &File, len: u64) -> Result<Option<(Position, u64)>, TailError> {
    let mut window = TAIL_WINDOW;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; (len - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(TailError::Io)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(None);
            }
            window *= 2;
            continue;
        };
        let partial = (buf.len() - end - 1) as u64;
        let mut lines: Vec<&[u8]> = buf[..end].split(|&b| b == b'\n').collect();
        if start > 0 {
            lines.remove(0); // may begin mid-line
        }
        let exhausted = start == 0 || window >= TAIL_WINDOW_MAX;
        if let Some(pos) = position_from_lines(&lines, exhausted)? {
            return Ok(Some((pos, partial)));
        }
        window *= 2;
    }
}

/// The chain position after `lines` (complete lines, oldest first). Needs the last checkpoint
/// among them unless `exhausted` (then the first line stands in for it).
fn position_from_lines(lines: &[&[u8]], exhausted: bool) -> Result<Option<Position>, TailError> {
    let Some(last) = lines.last() else {
        return Ok(None);
    };
    let head = line_head(last)?;
    let next_seq = head.seq + 1;
    for line in lines.iter().rev() {
        if let Ok(h) = line_head(line)
            && h.kind == "checkpoint"
        {
            let unsigned = head.seq - h.seq.min(head.seq);
            return Ok(Some(Position {
                next_seq,
                head: hash_line(last),
                cp_first: h.seq,
                unsigned,
            }));
        }
    }
    if !exhausted {
        return Ok(None);
    }
    let first = lines
        .iter()
        .find_map(|l| line_head(l).ok())
        .map_or(head.seq, |h| h.seq);
    let unsigned = head.seq - first.min(head.seq) + 1;
    Ok(Some(Position {
        next_seq,
        head: hash_line(last),
        cp_first: first,
        unsigned,
    }))
}
