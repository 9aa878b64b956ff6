//! Approvals of `ask` rules: durations, signed approval statements (tokens) and the store of
//! used nonces that makes every token good for one use.
//!
//! A token is one line of JSON: a [`Statement`] and an Ed25519 signature over
//! `gate approval v1\n` followed by the statement's JSON, as the token carries it. The
//! statement names everything the approval is for (request, agent run, operation, object,
//! rule, policy digest, scope) and until when it holds; the daemon checks each against the
//! request it is submitted for, so a token cannot be moved to another request, agent run or
//! policy, or used twice.
use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};

use crate::audit::{PublicKey, SigningKey};

/// What a signature covers, before the statement's JSON.
const DOMAIN: &[u8] = b"gate approval v1\n";

/// The longest approval or rejection a person can give.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses `90s`, `10m`, `2h`, `1d` (a bare number is seconds), between 1 s and [`MAX_TTL`].
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| {
        format!("cannot read the duration {s:?}: write a number and a unit, e.g. 90s, 10m, 2h, 1d")
    })?;
    let secs = match unit {
        "" | "s" => n,
        "m" | "min" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" | "day" => n.saturating_mul(86400),
        _ => {
            return Err(format!(
                "cannot read the duration {s:?}: unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    check_ttl(secs).map_err(|e| format!("the duration {s:?}: {e}"))
}

/// An answer's time in seconds, between 1 s and [`MAX_TTL`] (also checked by the daemon: a
/// client may send any number).
pub fn check_ttl(secs: u64) -> Result<Duration, String> {
    if secs == 0 || secs > MAX_TTL.as_secs() {
        return Err(format!(
            "{secs} s is out of range: between 1 s and {} days",
            MAX_TTL.as_secs() / 86400
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// A signed approval's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Format version: 1.
    pub v: u32,
    /// The request it approves.
    #[serde(rename = "for")]
    pub request: RequestFacts,
    /// `object` or `rule`.
    pub scope: String,
    /// Unix time (s) until which the approval holds; a token is refused after it.
    pub expires: u64,
    /// 16 random bytes, hex: each token is accepted once.
    pub nonce: String,
    /// The signer's public key (base64).
    pub key: String,
}

impl Statement {
    fn message(json: &str) -> Vec<u8> {
        let mut m = DOMAIN.to_vec();
        m.extend_from_slice(json.as_bytes());
        m
    }
}

/// A statement and its signature, as carried between machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The statement's JSON, exactly as signed.
    pub statement: String,
    /// Base64 of the Ed25519 signature.
    pub signature: String,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not an approval token: {0}")]
    Malformed(String),
    #[error("the signature does not verify (forged or altered token)")]
    BadSignature,
    #[error("the token is for request {0}, not this one")]
    WrongRequest(String),
    #[error(
        "the token is for another agent run ({0}); the agent was restarted or it is another agent"
    )]
    WrongRun(String),
    #[error("the token's {field} ({got}) differs from the request's ({want})")]
    Mismatch {
        field: &'static str,
        got: String,
        want: String,
    },
    #[error("the token expired at unix time {0}")]
    Expired(u64),
    #[error("the token was used before (replayed)")]
    Replayed,
    #[error("key {0} is not one of the group's approvers")]
    UnknownKey(String),
    #[error("key {0} signed this request already: a threshold needs distinct keys")]
    SameKey(String),
}

impl Refusal {
    /// A short word for records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::BadSignature => "bad-signature",
            Refusal::WrongRequest(_) => "wrong-request",
            Refusal::WrongRun(_) => "wrong-agent",
            Refusal::Mismatch { .. } => "mismatch",
            Refusal::Expired(_) => "expired",
            Refusal::Replayed => "replayed",
            Refusal::UnknownKey(_) => "unknown-key",
            Refusal::SameKey(_) => "same-key",
        }
    }
}

impl Token {
    /// Signs `st` (its `key` is set to the signer's).
    pub fn sign(mut st: Statement, key: &SigningKey) -> Token {
        st.key = key.public_key().to_base64();
        let json = serde_json::to_string(&st).expect("a statement serializes");
        let sig = key.sign(&Statement::message(&json));
        Token {
            statement: json,
            signature: B64.encode(sig),
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a token serializes")
    }

    pub fn parse(text: &str) -> Result<Token, Refusal> {
        serde_json::from_str(text.trim()).map_err(|e| Refusal::Malformed(e.to_string()))
    }

    /// The statement, once its signature is verified against the key it names.
    pub fn verify(&self) -> Result<(Statement, PublicKey), Refusal> {
        let st: Statement = serde_json::from_str(&self.statement)
            .map_err(|e| Refusal::Malformed(format!("statement: {e}")))?;
        if st.v != 1 {
            return Err(Refusal::Malformed(format!(
                "statement version {} (this gate reads 1)",
                st.v
            )));
        }
        let key = PublicKey::parse(&st.key).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let sig = B64
            .decode(self.signature.trim())
            .map_err(|_| Refusal::BadSignature)?;
        if !key.verify(&Statement::message(&self.statement), &sig) {
            return Err(Refusal::BadSignature);
        }
        Ok((st, key))
    }
}

/// What a request is, as a token must name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFacts {
    /// The request's id (`gate approvals`).
    pub request: String,
    /// The agent's name and its run (`boot id/cgroup id`).
    pub agent: String,
    pub run: String,
    pub op: String,
    pub object: String,
    pub rule: String,
    pub policy_digest: String,
}

/// Checks a verified statement against the request and the time (unix s); the signer's key
/// is checked by the caller (group membership, distinct keys, replay).
pub fn check_statement(
    st: &Statement,
    r: &RequestFacts,
    scope: &str,
    now: u64,
) -> Result<(), Refusal> {
    let q = &st.request;
    if q.request != r.request {
        return Err(Refusal::WrongRequest(q.request.clone()));
    }
    if q.run != r.run || q.agent != r.agent {
        return Err(Refusal::WrongRun(format!("{} {}", q.agent, q.run)));
    }
    for (field, got, want) in [
        ("operation", &q.op, &r.op),
        ("object", &q.object, &r.object),
        ("rule", &q.rule, &r.rule),
        ("policy digest", &q.policy_digest, &r.policy_digest),
        ("scope", &st.scope, &scope.to_owned()),
    ] {
        if got != want {
            return Err(Refusal::Mismatch {
                field,
                got: got.clone(),
                want: want.clone(),
            });
        }
    }
    if st.expires <= now {
        return Err(Refusal::Expired(st.expires));
    }
    Ok(())
}

/// Nonces of accepted tokens, kept until their tokens expire, in a file that is appended to
/// and synced before a token takes effect: a token is never accepted twice, also across
/// daemon restarts.
pub struct ReplayStore {
    /// None: kept in memory only (tests).
    path: Option<PathBuf>,
    used: HashMap<String, u64>,
}

impl ReplayStore {
    /// Opens the store (a missing file is an empty store; a line without a readable expiry
    /// keeps its nonce used for good).
    pub fn open(path: &Path) -> std::io::Result<ReplayStore> {
        let mut used = HashMap::new();
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line?;
                    let mut it = line.split_whitespace();
                    if let Some(nonce) = it.next() {
                        let exp = it.next().and_then(|e| e.parse().ok()).unwrap_or(u64::MAX);
                        used.insert(nonce.to_owned(), exp);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(ReplayStore {
            path: Some(path.to_owned()),
            used,
        })
    }

    /// A store that is not written anywhere (for tests).
    pub fn memory() -> ReplayStore {
        ReplayStore {
            path: None,
            used: HashMap::new(),
        }
    }

    pub fn seen(&self, nonce: &str) -> bool {
        self.used.contains_key(nonce)
    }

    /// Records a nonce as used (synced to disk before returning).
    pub fn mark(&mut self, nonce: &str, expires: u64) -> std::io::Result<()> {
        if let Some(path) = &self.path {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut f = OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{nonce} {expires}")?;
            f.sync_data()?;
        }
        self.used.insert(nonce.to_owned(), expires);
        Ok(())
    }

    /// Forgets nonces whose tokens expired before `now` (they are refused as expired anyway)
    /// and rewrites the file.
    pub fn prune(&mut self, now: u64) -> std::io::Result<()> {
        let before = self.used.len();
        self.used.retain(|_, e| *e >= now);
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.used.len() == before {
            return Ok(());
        }
        let tmp = path.with_extension("new");
        let mut f = File::create(&tmp)?;
        for (n, e) in &self.used {
            writeln!(f, "{n} {e}")?;
        }
        f.sync_all()?;
        fs::rename(&tmp, path)
    }
}

/// 16 random bytes, hex.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system's random source");
    hex::encode(b)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RequestFacts {
        RequestFacts {
            request: "a1b2c3".into(),
            agent: "agent-1".into(),
            run: "0f3c/1234".into(),
            op: "write".into(),
            object: "/srv/app/config.yml".into(),
            rule: "ask-config".into(),
            policy_digest: "ab".repeat(32),
        }
    }

    fn statement(f: &RequestFacts, expires: u64) -> Statement {
        Statement {
            v: 1,
            request: f.clone(),
            scope: "object".into(),
            expires,
            nonce: nonce(),
            key: String::new(),
        }
    }

    fn key(dir: &Path, name: &str) -> SigningKey {
        SigningKey::create(&dir.join(name)).unwrap()
    }

    #[test]
    fn durations_parse_with_units_and_limits() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1d").unwrap(), Duration::from_secs(86400));
        for bad in ["", "m", "10 parsecs", "0s", "8d", "-5m", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_ttl("10x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn a_signed_token_verifies_and_any_change_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path(), "alice.key");
        let f = facts();
        let t = Token::sign(statement(&f, unix_now() + 600), &k);
        let parsed = Token::parse(&t.to_line()).unwrap();
        let (st, pk) = parsed.verify().unwrap();
        assert_eq!(pk, k.public_key());
        check_statement(&st, &f, "object", unix_now()).unwrap();
        // Altered statement: the signature no longer matches.
        let mut forged = t.clone();
        forged.statement = forged.statement.replace("config.yml", "passwd");
        assert_eq!(forged.verify().unwrap_err(), Refusal::BadSignature);
        // A statement signed by another key but naming alice's key.
        let mallory = key(dir.path(), "mallory.key");
        let mut st2 = statement(&f, unix_now() + 600);
        st2.key = k.public_key().to_base64();
        let json = serde_json::to_string(&st2).unwrap();
        let bad = Token {
            statement: json.clone(),
            signature: B64.encode(mallory.sign(&Statement::message(&json))),
        };
        assert_eq!(bad.verify().unwrap_err(), Refusal::BadSignature);
        assert!(matches!(
            Token::parse("not json").unwrap_err(),
            Refusal::Malformed(_)
        ));
    }

    #[test]
    fn statements_are_bound_to_request_run_object_policy_scope_and_time() {
        let f = facts();
        let now = unix_now();
        let st = statement(&f, now + 60);
        check_statement(&st, &f, "object", now).unwrap();
        assert_eq!(
            check_statement(&st, &f, "rule", now).unwrap_err().code(),
            "mismatch"
        );
        assert_eq!(
            check_statement(&st, &f, "object", now + 61)
                .unwrap_err()
                .code(),
            "expired"
        );
        type Change = fn(&mut RequestFacts);
        let changes: [(Change, &str); 3] = [
            (|f| f.run = "0f3c/9999".into(), "wrong-agent"),
            (|f| f.request = "ffffff".into(), "wrong-request"),
            (|f| f.policy_digest = "cd".repeat(32), "mismatch"),
        ];
        for (change, code) in changes {
            let mut other = f.clone();
            change(&mut other);
            let e = check_statement(&st, &other, "object", now).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[test]
    fn used_nonces_survive_a_restart_and_expired_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("used");
        let mut s = ReplayStore::open(&p).unwrap();
        assert!(!s.seen("n1"));
        s.mark("n1", 100).unwrap();
        s.mark("n2", 300).unwrap();
        let mut s = ReplayStore::open(&p).unwrap();
        assert!(s.seen("n1") && s.seen("n2"));
        s.prune(200).unwrap();
        let s = ReplayStore::open(&p).unwrap();
        assert!(!s.seen("n1") && s.seen("n2"));
    }
}
