//! The `--log` file: JSON lines, and matching decision events against what a test expects.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// A parsed log file.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Every line that parsed as a JSON object, in order.
    pub lines: Vec<Value>,
    /// Lines that did not (line number from 1, text).
    pub bad_lines: Vec<(usize, String)>,
}

impl Log {
    pub fn parse(text: &str) -> Self {
        let mut log = Log::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v @ Value::Object(_)) => log.lines.push(v),
                _ => log.bad_lines.push((i + 1, line.to_string())),
            }
        }
        log
    }

    /// Reads a log file; a missing file is an empty log.
    pub fn read(path: &Path) -> Self {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(_) => Log::default(),
        }
    }

    /// Decision lines (`"kind":"decision"`).
    pub fn decisions(&self) -> impl Iterator<Item = &Value> {
        self.lines
            .iter()
            .filter(|v| v.get("kind").and_then(Value::as_str) == Some("decision"))
    }

    /// Splits the decisions among steps that ran one after the other, each starting with an exec
    /// by the pid given for it: a step's part runs from its first exec decision (after the
    /// previous step's start) to the next step's start. A step whose start is not found gets an
    /// empty part (and the previous step's part runs on).
    pub fn segments(&self, pids: &[Option<u32>]) -> Vec<Log> {
        let lines: Vec<&Value> = self.decisions().collect();
        let is_start = |v: &Value, pid: u32| {
            v.get("op").and_then(Value::as_str) == Some("exec")
                && v.get("pid").and_then(Value::as_u64) == Some(u64::from(pid))
        };
        let mut starts: Vec<Option<usize>> = Vec::with_capacity(pids.len());
        let mut from = 0;
        for pid in pids {
            let s = pid.and_then(|p| (from..lines.len()).find(|&i| is_start(lines[i], p)));
            if let Some(i) = s {
                from = i + 1;
            }
            starts.push(s);
        }
        (0..pids.len())
            .map(|k| {
                let Some(s) = starts[k] else {
                    return Log::default();
                };
                let e = starts[k + 1..]
                    .iter()
                    .flatten()
                    .next()
                    .copied()
                    .unwrap_or(lines.len());
                Log {
                    lines: lines[s..e].iter().map(|v| (*v).clone()).collect(),
                    bad_lines: Vec::new(),
                }
            })
            .collect()
    }

    pub fn find(&self, m: &EventMatcher) -> Option<&Value> {
        self.decisions().find(|e| m.matches(e))
    }

    /// Decision lines as compact JSON, at most `max`, for failure messages.
    pub fn excerpt(&self, max: usize) -> Vec<String> {
        let all: Vec<String> = self.decisions().map(|v| v.to_string()).collect();
        let mut out: Vec<String> = all.iter().take(max).cloned().collect();
        if all.len() > max {
            out.push(format!("… {} more decision lines", all.len() - max));
        }
        if all.is_empty() {
            out.push(format!(
                "(no decision lines; {} other lines)",
                self.lines.len()
            ));
        }
        for (n, l) in self.bad_lines.iter().take(3) {
            out.push(format!("(line {n} is not a JSON object: {l})"));
        }
        out
    }
}

/// Fields an expected decision event must have; unset fields are not checked.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventMatcher {
    pub op: Option<String>,
    pub hook: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub enforced: Option<bool>,
    /// Exact path.
    pub path: Option<String>,
    /// The path ends with this (compared at a `/` boundary when it starts with one or is a name).
    pub path_suffix: Option<String>,
    pub addr: Option<String>,
    pub port: Option<u16>,
    pub comm: Option<String>,
    /// A refused socket: `family type protocol N` (e.g. `packet raw protocol 768`).
    pub socket: Option<String>,
    /// A system call refused as a whole: `bpf BPF_MAP_CREATE`.
    pub syscall: Option<String>,
    /// A capability a confined task was refused: `CAP_CHOWN`.
    pub capability: Option<String>,
    /// Another process reached: what was tried (`signal SIGCONT`, `ptrace attach`) and the
    /// target's command name.
    pub action: Option<String>,
    pub target_comm: Option<String>,
}

fn str_field<'a>(e: &'a Value, k: &str) -> Option<&'a str> {
    e.get(k).and_then(Value::as_str)
}

fn suffix_matches(path: &str, suffix: &str) -> bool {
    if suffix.starts_with('/') {
        return path.ends_with(suffix);
    }
    path == suffix || path.ends_with(&format!("/{suffix}"))
}

impl EventMatcher {
    pub fn matches(&self, e: &Value) -> bool {
        let eq = |k: &str, want: &Option<String>| {
            want.as_deref().is_none_or(|w| str_field(e, k) == Some(w))
        };
        eq("op", &self.op)
            && eq("hook", &self.hook)
            && eq("decision", &self.decision)
            && eq("rule", &self.rule)
            && eq("path", &self.path)
            && eq("addr", &self.addr)
            && eq("comm", &self.comm)
            && eq("socket", &self.socket)
            && eq("syscall", &self.syscall)
            && eq("capability", &self.capability)
            && eq("action", &self.action)
            && eq("target_comm", &self.target_comm)
            && self
                .enforced
                .is_none_or(|w| e.get("enforced").and_then(Value::as_bool) == Some(w))
            && self
                .port
                .is_none_or(|w| e.get("port").and_then(Value::as_u64) == Some(u64::from(w)))
            && self
                .path_suffix
                .as_deref()
                .is_none_or(|s| str_field(e, "path").is_some_and(|p| suffix_matches(p, s)))
    }

    /// Applies `${…}` substitution to the string fields.
    pub fn expand(&self, vars: &crate::subst::Vars) -> Result<Self, String> {
        let x = |f: &Option<String>| f.as_deref().map(|s| vars.expand(s, true)).transpose();
        Ok(Self {
            op: x(&self.op)?,
            hook: x(&self.hook)?,
            decision: x(&self.decision)?,
            rule: x(&self.rule)?,
            enforced: self.enforced,
            path: x(&self.path)?,
            path_suffix: x(&self.path_suffix)?,
            addr: x(&self.addr)?,
            port: self.port,
            comm: x(&self.comm)?,
            socket: x(&self.socket)?,
            action: x(&self.action)?,
            target_comm: x(&self.target_comm)?,
            syscall: x(&self.syscall)?,
            capability: x(&self.capability)?,
        })
    }
}

impl fmt::Display for EventMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut s = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        s("op", &self.op);
        s("hook", &self.hook);
        s("decision", &self.decision);
        s("rule", &self.rule);
        s("path", &self.path);
        s("path_suffix", &self.path_suffix);
        s("addr", &self.addr);
        s("comm", &self.comm);
        s("socket", &self.socket);
        s("syscall", &self.syscall);
        s("capability", &self.capability);
        s("action", &self.action);
        s("target_comm", &self.target_comm);
        if let Some(p) = self.port {
            parts.push(format!("port={p}"));
        }
        if let Some(b) = self.enforced {
            parts.push(format!("enforced={b}"));
        }
        write!(f, "{{{}}}", parts.join(" "))
    }
}

/// Builder shorthand for tests written in Rust.
pub fn ev(op: &str, decision: &str) -> EventMatcher {
    EventMatcher {
        op: Some(op.into()),
        decision: Some(decision.into()),
        ..Default::default()
    }
}

impl EventMatcher {
    pub fn rule(mut self, r: &str) -> Self {
        self.rule = Some(r.into());
        self
    }
    pub fn hook(mut self, h: &str) -> Self {
        self.hook = Some(h.into());
        self
    }
    pub fn path_suffix(mut self, p: &str) -> Self {
        self.path_suffix = Some(p.into());
        self
    }
    pub fn path(mut self, p: &str) -> Self {
        self.path = Some(p.into());
        self
    }
    pub fn addr(mut self, a: &str) -> Self {
        self.addr = Some(a.into());
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }
    pub fn enforced(mut self, b: bool) -> Self {
        self.enforced = Some(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"kind":"start","pid":10}
{"kind":"decision","op":"write","hook":"open","decision":"deny","enforced":true,"rule":"ssh","path":"/root/.ssh/id_rsa","pid":11,"ppid":10,"uid":0,"comm":"gate-probe"}
not json
{"kind":"decision","op":"connect","hook":"connect","decision":"allow","enforced":true,"rule":"loopback","addr":"127.0.0.1","port":8080,"pid":12,"ppid":10,"uid":0,"comm":"gate-probe"}

{"kind":"decision","op":"exec","hook":"exec","decision":"deny","enforced":false,"rule":"default","path":"/usr/bin/curl","pid":13,"ppid":10,"uid":0,"comm":"sh"}
"#;

    #[test]
    fn parses_and_filters() {
        let log = Log::parse(LOG);
        assert_eq!(log.lines.len(), 4);
        assert_eq!(log.bad_lines, vec![(3, "not json".to_string())]);
        assert_eq!(log.decisions().count(), 3);
    }

    #[test]
    fn matching() {
        let log = Log::parse(LOG);
        assert!(
            log.find(&ev("write", "deny").rule("ssh").path_suffix(".ssh/id_rsa"))
                .is_some()
        );
        assert!(
            log.find(&ev("write", "deny").path_suffix("id_rsa").hook("open"))
                .is_some()
        );
        assert!(
            log.find(&ev("write", "deny").path_suffix("d_rsa"))
                .is_none(),
            "suffix at / boundary"
        );
        assert!(
            log.find(&ev("write", "deny").path_suffix("/root/.ssh/id_rsa"))
                .is_some()
        );
        assert!(log.find(&ev("write", "allow")).is_none());
        assert!(
            log.find(&ev("connect", "allow").addr("127.0.0.1").port(8080))
                .is_some()
        );
        assert!(log.find(&ev("connect", "allow").port(8081)).is_none());
        assert!(
            log.find(&ev("exec", "deny").enforced(false).path("/usr/bin/curl"))
                .is_some()
        );
        assert!(log.find(&ev("exec", "deny").enforced(true)).is_none());
        // The start line has no op and is not a decision.
        assert!(log.find(&EventMatcher::default()).is_some());
        assert_eq!(log.find(&EventMatcher::default()).unwrap()["op"], "write");
    }

    #[test]
    fn matcher_from_toml() {
        let m: EventMatcher = toml::from_str(
            r#"op = "write"
decision = "deny"
path_suffix = "${home}/x""#,
        )
        .unwrap();
        let mut vars = crate::subst::Vars::new();
        vars.set("home", "/root");
        assert_eq!(
            m.expand(&vars).unwrap().path_suffix.as_deref(),
            Some("/root/x")
        );
        assert!(toml::from_str::<EventMatcher>("opp = \"write\"").is_err());
        assert_eq!(
            m.to_string(),
            "{op=write decision=deny path_suffix=${home}/x}"
        );
    }

    #[test]
    fn segments_by_first_exec() {
        let line = |op: &str, pid: u32, path: &str| {
            format!("{{\"kind\":\"decision\",\"op\":\"{op}\",\"pid\":{pid},\"path\":\"{path}\"}}\n")
        };
        let mut text = String::from("{\"kind\":\"start\"}\n");
        text += &line("exec", 1, "/driver");
        text += &line("exec", 10, "/probe");
        text += &line("write", 10, "/a");
        text += &line("exec", 20, "/bin/sh");
        text += &line("exec", 21, "/usr/bin/git");
        text += &line("write", 21, "/b");
        text += &line("exec", 30, "/probe");
        let log = Log::parse(&text);
        let seg = log.segments(&[Some(10), Some(20), None, Some(99), Some(30)]);
        assert_eq!(seg.len(), 5);
        let paths = |l: &Log| {
            l.decisions()
                .map(|v| v["path"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&seg[0]), ["/probe", "/a"]);
        assert_eq!(paths(&seg[1]), ["/bin/sh", "/usr/bin/git", "/b"]);
        assert!(paths(&seg[2]).is_empty());
        assert!(paths(&seg[3]).is_empty());
        assert_eq!(paths(&seg[4]), ["/probe"]);
        // A pid reused later is found after the previous start only.
        let seg = log.segments(&[Some(20), Some(10)]);
        assert_eq!(paths(&seg[0]).len(), 4);
        assert!(paths(&seg[1]).is_empty());
    }

    #[test]
    fn excerpt_mentions_bad_lines() {
        let ex = Log::parse(LOG).excerpt(2);
        assert_eq!(ex.len(), 4, "{ex:?}");
        assert!(ex[2].contains("1 more"));
        assert!(ex[3].contains("not a JSON object"));
    }
}
