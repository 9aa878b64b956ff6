//! What a run reports: the decision log (`--log`) and the summary printed at the end.
use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use gate_common::counter;

use crate::{events::Decision, policy::CompiledPolicy};

/// The decision log: one JSON object per line.
pub struct LogSink {
    out: BufWriter<File>,
    agent: String,
    digest: String,
}

impl LogSink {
    pub fn open(path: &Path, policy: &CompiledPolicy, agent: &str) -> io::Result<Self> {
        let out = BufWriter::new(File::options().create(true).append(true).open(path)?);
        Ok(LogSink { out, agent: agent.to_owned(), digest: hex::encode(policy.digest) })
    }

    pub fn decision(&mut self, d: &Decision) -> io::Result<()> {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            kind: &'static str,
            agent: &'a str,
            policy_digest: &'a str,
            #[serde(flatten)]
            d: &'a Decision,
        }
        let line = Line { kind: "decision", agent: &self.agent, policy_digest: &self.digest, d };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Counts for the end-of-run summary.
#[derive(Debug, Default)]
pub struct Summary {
    pub exit_code: i32,
    /// (op, decision) → count.
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    /// Distinct denials (op, object, rule) → count, for the list a person reads.
    pub denials: BTreeMap<(&'static str, String, String), u64>,
    pub counters: [u64; counter::COUNT as usize],
}

impl Summary {
    pub fn add(&mut self, d: &Decision) {
        *self.counts.entry((d.op, d.decision)).or_default() += 1;
        if d.denied() {
            *self.denials.entry((d.op, d.object(), d.rule.clone())).or_default() += 1;
        }
    }

    pub fn render(&self, command: &[OsString]) -> String {
        let cmd = command.first().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        let mut s = format!("gate: {cmd} exited with status {}\n", self.exit_code);
        let mut ops: Vec<String> = Vec::new();
        for op in ["exec", "write", "read", "connect"] {
            let n = |d| self.counts.get(&(op, d)).copied().unwrap_or(0);
            let (a, d) = (n("allow"), n("deny") + n("ask"));
            if a + d > 0 {
                ops.push(format!("{op} {a} allowed/{d} denied"));
            }
        }
        if ops.is_empty() {
            s.push_str("gate: no reported decisions\n");
        } else {
            s.push_str(&format!("gate: reported decisions: {}\n", ops.join(", ")));
        }
        for (i, ((op, obj, rule), n)) in self.denials.iter().enumerate() {
            if i == 10 {
                s.push_str(&format!("gate:   … and {} more\n", self.denials.len() - 10));
                break;
            }
            s.push_str(&format!("gate:   denied {op:<7} {obj} (rule {rule}){}\n", times(*n)));
        }
        let lost = self.counters[counter::RINGBUF_FULL as usize];
        if lost > 0 {
            s.push_str(&format!(
                "gate: {lost} events were lost because the ring buffer was full \
                 (the decisions were still enforced); raise --ringbuf-bytes\n"
            ));
        }
        let internal = self.counters[counter::INTERNAL_ERROR as usize]
            + self.counters[counter::DEPTH_EXCEEDED as usize];
        if internal > 0 {
            s.push_str(&format!("gate: {internal} actions were denied by internal errors (fail-closed)\n"));
        }
        s
    }
}

fn times(n: u64) -> String {
    if n > 1 { format!(" ×{n}") } else { String::new() }
}
