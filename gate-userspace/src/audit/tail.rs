//! `gate audit tail`: follow the log for a person (coloured columns) or a pipe (raw lines),
//! across rotations, optionally verifying the chain as it goes.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::record::{Decision, Record, RecordBody, Verdict};
use super::sign::{KeyError, PublicKey};
use super::verify::{ChainVerifier, Severity, printable};

/// Records shown from the end of the file when tailing starts.
pub const DEFAULT_BACKLOG: usize = 10;
/// How often a followed file is checked for new data and rotation.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Error)]
pub enum TailError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error("public key: {0}")]
    Key(#[from] KeyError),
    #[error("the audit chain is broken ({errors} errors)")]
    ChainBroken { errors: usize },
}

#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Keep reading as the file grows and is rotated.
    pub follow: bool,
    /// Print the raw lines (byte-exact) instead of columns.
    pub json: bool,
    /// ANSI colours in the columns.
    pub color: bool,
    /// ANSI colours in the alerts.
    pub alert_color: bool,
    /// Records shown from before the end of the file at start (`None`: all of them).
    pub backlog: Option<usize>,
    /// Check the chain (and, with `pubkey`, the checkpoint signatures) as records arrive.
    pub verify: bool,
    pub pubkey: Option<PublicKey>,
}

/// Reads a log incrementally: each [`Tailer::poll`] prints what arrived since the last one.
pub struct Tailer {
    path: PathBuf,
    opts: TailOptions,
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
    partial: Vec<u8>,
    line_no: u64,
    catching_up: bool,
    backlog: VecDeque<Vec<u8>>,
    verifier: Option<ChainVerifier>,
    errors: usize,
}

impl Tailer {
    pub fn new(path: &Path, opts: TailOptions) -> Self {
        let verifier = opts.verify.then(|| ChainVerifier::new(opts.pubkey));
        Self {
            path: path.to_owned(),
            opts,
            file: None,
            id: (0, 0),
            offset: 0,
            partial: Vec::new(),
            line_no: 0,
            catching_up: true,
            backlog: VecDeque::new(),
            verifier,
            errors: 0,
        }
    }

    /// Chain errors seen so far.
    pub fn errors(&self) -> usize {
        self.errors
    }

    fn io(&self) -> impl FnOnce(io::Error) -> TailError + '_ {
        |source| TailError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads what is new (following a rotation), prints it; returns the lines read.
    pub fn poll(
        &mut self,
        out: &mut dyn Write,
        alerts: &mut dyn Write,
    ) -> Result<usize, TailError> {
        if self.file.is_none() && !self.open_current(self.catching_up && !self.opts.verify)? {
            return Ok(0);
        }
        let mut n = self.read_available(out)?;
        if self.catching_up {
            self.catching_up = false;
            while let Some(line) = self.backlog.pop_front() {
                print_line(out, &line, &self.opts)?;
            }
        }
        if self.opts.follow && self.replaced()? {
            n += self.read_available(out)?;
            self.end_of_file();
            self.open_current(false)?;
            n += self.read_available(out)?;
        }
        if let Some(v) = self.verifier.as_mut() {
            v.settle();
        }
        self.alert(alerts)?;
        Ok(n)
    }

    /// Ends a non-following tail: a partial last line counts as a cut.
    pub fn finish(mut self, alerts: &mut dyn Write) -> Result<usize, TailError> {
        self.end_of_file();
        if let Some(v) = self.verifier.as_mut() {
            v.settle();
        }
        self.alert(alerts)?;
        Ok(self.errors)
    }

    /// Opens the file at the path, at its start or `backlog` lines before its end.
    fn open_current(&mut self, seek_back: bool) -> Result<bool, TailError> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.opts.follow => return Ok(false),
            Err(e) => {
                return Err(TailError::Io {
                    path: self.path.clone(),
                    source: e,
                });
            }
        };
        let m = f.metadata().map_err(self.io())?;
        self.id = (m.dev(), m.ino());
        self.offset = match self.opts.backlog {
            Some(n) if seek_back => start_of_last_lines(&f, m.len(), n).map_err(self.io())?,
            _ => 0,
        };
        f.seek(SeekFrom::Start(self.offset)).map_err(self.io())?;
        self.file = Some(f);
        self.line_no = 0;
        self.partial.clear();
        if let Some(v) = self.verifier.as_mut() {
            v.begin_file(&self.path);
        }
        Ok(true)
    }

    /// Whether the path now names another file (rotated) or the file shrank (truncated).
    fn replaced(&mut self) -> Result<bool, TailError> {
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != self.id => Ok(true),
            Ok(m) if m.len() < self.offset => Ok(true),
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(TailError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    fn end_of_file(&mut self) {
        if !self.partial.is_empty() {
            self.line_no += 1;
            if let Some(v) = self.verifier.as_mut() {
                v.cut_line(self.line_no, self.partial.len());
            }
            self.partial.clear();
        }
    }

    fn read_available(&mut self, out: &mut dyn Write) -> Result<usize, TailError> {
        let mut buf = vec![0; 64 * 1024];
        let mut lines = 0;
        loop {
            let Some(f) = self.file.as_mut() else {
                return Ok(lines);
            };
            let got = f.read(&mut buf).map_err(|source| TailError::Io {
                path: self.path.clone(),
                source,
            })?;
            if got == 0 {
                return Ok(lines);
            }
            self.offset += got as u64;
            let mut rest = &buf[..got];
            while let Some(i) = rest.iter().position(|&b| b == b'\n') {
                self.partial.extend_from_slice(&rest[..i]);
                rest = &rest[i + 1..];
                let line = std::mem::take(&mut self.partial);
                self.line(out, line)?;
                lines += 1;
            }
            self.partial.extend_from_slice(rest);
        }
    }

    fn line(&mut self, out: &mut dyn Write, line: Vec<u8>) -> Result<(), TailError> {
        self.line_no += 1;
        if let Some(v) = self.verifier.as_mut() {
            v.push_line(self.line_no, &line);
        }
        if !self.catching_up {
            return print_line(out, &line, &self.opts);
        }
        match self.opts.backlog {
            None => print_line(out, &line, &self.opts)?,
            Some(0) => {}
            Some(n) => {
                if self.backlog.len() == n {
                    self.backlog.pop_front();
                }
                self.backlog.push_back(line);
            }
        }
        Ok(())
    }

    /// Shouts about chain errors found since the last call.
    fn alert(&mut self, alerts: &mut dyn Write) -> Result<(), TailError> {
        let Some(v) = self.verifier.as_mut() else {
            return Ok(());
        };
        let (on, off) = if self.opts.alert_color {
            ("\x1b[1;31m", "\x1b[0m")
        } else {
            ("", "")
        };
        for f in v
            .new_findings()
            .iter()
            .filter(|f| f.severity == Severity::Error)
        {
            writeln!(
                alerts,
                "{on}CHAIN BROKEN: {}{off}",
                printable(&f.to_string())
            )
            .map_err(TailError::Output)?;
            self.errors += 1;
        }
        alerts.flush().map_err(TailError::Output)
    }
}

/// Offset of the start of the last `n` complete lines.
fn start_of_last_lines(f: &File, len: u64, n: usize) -> io::Result<u64> {
    let mut pos = len;
    let mut seen = 0;
    let mut buf = vec![0u8; 64 * 1024];
    // The newline ending the last line does not start a line.
    let mut skip_last = true;
    while pos > 0 {
        let take = buf.len().min(pos as usize);
        pos -= take as u64;
        f.read_exact_at(&mut buf[..take], pos)?;
        for i in (0..take).rev() {
            if buf[i] != b'\n' {
                continue;
            }
            if std::mem::take(&mut skip_last) && pos + i as u64 + 1 == len {
                continue;
            }
            seen += 1;
            if seen > n {
                return Ok(pos + i as u64 + 1);
            }
        }
        skip_last = false;
    }
    Ok(0)
}

fn print_line(out: &mut dyn Write, line: &[u8], opts: &TailOptions) -> Result<(), TailError> {
    let r = if opts.json {
        out.write_all(line).and_then(|()| out.write_all(b"\n"))
    } else {
        match Record::parse(line) {
            Ok(rec) => writeln!(out, "{}", format_record(&rec, opts.color)),
            Err(_) => writeln!(out, "?? {}", printable(&String::from_utf8_lossy(line))),
        }
    };
    r.map_err(TailError::Output)
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD_RED: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";

/// One record as a line of columns: time, decision, op, object, rule, `comm[pid]`.
pub fn format_record(rec: &Record, color: bool) -> String {
    let time = short_time(&rec.time);
    let (label, colour, rest) = match &rec.body {
        RecordBody::Decision(d) => return format_decision(&time, d, color),
        RecordBody::Gap(g) => {
            let cpu = g.cpu.map(|c| format!(" on cpu {c}")).unwrap_or_default();
            (
                "GAP",
                BOLD_RED,
                format!("{} events lost{cpu}: {}", g.lost, g.reason),
            )
        }
        RecordBody::Flow(f) => (
            "flow",
            DIM,
            format!(
                "{} {} {} more, rule {}, process {}",
                f.op.as_str(),
                printable(&f.object.to_string()),
                f.count,
                printable(&f.rule),
                f.tgid
            ),
        ),
        RecordBody::Checkpoint(c) => (
            "signed",
            DIM,
            format!(
                "seq {}..={} by key {} ({})",
                c.first,
                c.last,
                c.key_id,
                c.reason.as_str()
            ),
        ),
        RecordBody::PolicyLoad(p) => {
            let digest = p.policy_digest.get(..12).unwrap_or(&p.policy_digest);
            (
                "policy",
                YELLOW,
                format!(
                    "loaded {digest} from {} ({:?}, {} rules)",
                    p.source, p.mode, p.rules
                ),
            )
        }
        RecordBody::Approval(a) => (
            "approval",
            YELLOW,
            match (&a.step, &a.object) {
                (Some(step), Some(obj)) => format!(
                    "{step} {} {} {obj} by {}{}",
                    a.correlation,
                    a.op.as_deref().unwrap_or(""),
                    a.by,
                    a.expires.map(|e| format!(" until {e}")).unwrap_or_default()
                ),
                _ => format!("{} {} by {}", a.decision.as_str(), a.correlation, a.by),
            },
        ),
        RecordBody::Start(l) | RecordBody::Stop(l) => {
            let label = if matches!(rec.body, RecordBody::Start(_)) {
                "start"
            } else {
                "stop"
            };
            let agent = l.agent.as_deref().unwrap_or("");
            let pid = l.pid.map(|p| format!(" pid {p}")).unwrap_or_default();
            let code = l
                .exit_code
                .map(|c| format!(" exit {c}"))
                .unwrap_or_default();
            (
                label,
                DIM,
                format!("{:?} {agent}{pid}{code}", l.scope).to_lowercase(),
            )
        }
    };
    let (time, rest) = (printable(&time), printable(&rest));
    paint(color, colour, &format!("{time}  {label:<10}  {rest}"))
}

fn format_decision(time: &str, d: &Decision, color: bool) -> String {
    let (label, colour) = match (d.decision, d.enforced) {
        (Verdict::Allow, _) => ("allow", GREEN),
        (Verdict::Deny, true) => ("deny", RED),
        (Verdict::Deny, false) => ("would-deny", RED),
        (Verdict::Ask, _) => ("ask", YELLOW),
    };
    let label = paint(color, colour, &format!("{label:<10}"));
    let object = d.object.to_string();
    let object = printable(&object);
    format!(
        "{}  {label}  {:<7}  {object:<40}  {:<16}  {}[{}]",
        printable(time),
        d.op.as_str(),
        printable(&d.rule),
        printable(&d.comm),
        d.pid
    )
}

fn paint(color: bool, colour: &str, s: &str) -> String {
    if color {
        format!("{colour}{s}{RESET}")
    } else {
        s.to_owned()
    }
}

/// `2026-05-01T12:34:56.123456789Z` → `2026-05-01 12:34:56.123`
fn short_time(t: &str) -> String {
    match t.get(..23) {
        Some(s) if t.len() >= 24 => s.replacen('T', " ", 1),
        _ => t.to_owned(),
    }
}

/// `gate audit tail [--follow] [--json] [--verify [--pubkey KEY]] PATH`.
/// Shows the last records, then (with `follow`) new ones as they come, across rotations.
/// With `verify`, chain errors are shouted on stderr; without `follow` they make it fail.
pub fn tail_cmd(
    path: &Path,
    follow: bool,
    json: bool,
    verify: bool,
    pubkey: Option<&Path>,
) -> Result<(), TailError> {
    let pubkey = pubkey.map(PublicKey::load).transpose()?;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let opts = TailOptions {
        follow,
        json,
        color: !json && !no_color && io::stdout().is_terminal(),
        alert_color: !no_color && io::stderr().is_terminal(),
        backlog: Some(DEFAULT_BACKLOG),
        verify,
        pubkey,
    };
    if verify && pubkey.is_none() {
        eprintln!(
            "note: no public key given: checking links and seqs only, not checkpoint signatures"
        );
    }
    match run_tail(path, opts) {
        Err(TailError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn run_tail(path: &Path, opts: TailOptions) -> Result<(), TailError> {
    let follow = opts.follow;
    let mut tailer = Tailer::new(path, opts);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut alerts = io::stderr().lock();
    loop {
        let n = tailer.poll(&mut out, &mut alerts)?;
        out.flush().map_err(TailError::Output)?;
        if !follow {
            break;
        }
        if n == 0 {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    match tailer.finish(&mut alerts)? {
        0 => Ok(()),
        errors => Err(TailError::ChainBroken { errors }),
    }
}
