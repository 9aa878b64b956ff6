//! Ed25519 keys and checkpoint signatures.
//!
//! The private key is a PKCS#8 document in a file of mode 0600, created on first use. Its
//! public half is exported next to it (`gate.key` → `gate.pub`) as one line of standard base64
//! of the raw 32-byte key. The key id is the hex of the first 8 bytes of SHA-256 of those 32
//! bytes.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use thiserror::Error;

use super::chain::{Hash, hash_line};
use super::record::CheckpointReason;

/// Domain separation prefix of the signed checkpoint message.
pub const CHECKPOINT_DOMAIN: &[u8] = b"gate-audit-checkpoint-v1\0";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: the signing key is accessible to group or others (mode {mode:04o}); it must be 0600"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not an Ed25519 PKCS#8 key: {reason}")]
    InvalidKey { path: PathBuf, reason: String },
    #[error("not an Ed25519 public key (expected base64 or hex of 32 bytes): {0}")]
    InvalidPublicKey(String),
    #[error("generating a key: {0}")]
    Generate(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Key id: first 8 bytes of SHA-256 of the raw public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub fn of(public: &[u8; 32]) -> Self {
        let mut id = [0; 8];
        id.copy_from_slice(&hash_line(public)[..8]);
        Self(id)
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut id = [0; 8];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(Self(id))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The bytes a checkpoint signature covers:
/// `"gate-audit-checkpoint-v1\0" || head (32) || last (u64 BE) || first (u64 BE) || key id (8)
/// || len(reason) (1 byte) || reason (ASCII)`.
pub fn checkpoint_message(
    head: &Hash,
    last: u64,
    first: u64,
    key: KeyId,
    reason: CheckpointReason,
) -> Vec<u8> {
    let reason = reason.as_str().as_bytes();
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 32 + 8 + 8 + 8 + 1 + reason.len());
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(head);
    m.extend_from_slice(&last.to_be_bytes());
    m.extend_from_slice(&first.to_be_bytes());
    m.extend_from_slice(&key.0);
    m.push(reason.len() as u8);
    m.extend_from_slice(reason);
    m
}

/// An Ed25519 public key with its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
    id: KeyId,
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes,
            id: KeyId::of(&bytes),
        }
    }

    /// Parses base64 (standard, padded or not) or hex of the raw 32 bytes; whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let s: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut bytes = [0; 32];
        if s.len() == 64 && hex::decode_to_slice(&s, &mut bytes).is_ok() {
            return Ok(Self::from_bytes(bytes));
        }
        let raw = B64
            .decode(&s)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&s))
            .map_err(|e| KeyError::InvalidPublicKey(e.to_string()))?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|r: Vec<u8>| KeyError::InvalidPublicKey(format!("{} bytes", r.len())))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Reads a public key file (`gate.pub`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(&text)
    }

    /// Writes the key as one line of base64, mode 0644, replacing any file there atomically.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let tmp = sibling(path, ".tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(self.to_base64().as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.bytes)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// Checks an Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, sig)
            .is_ok()
    }
}

/// The private signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.id)
            .finish_non_exhaustive()
    }
}

/// Where the public half of `key_path` is exported: same name, extension `pub`.
pub fn public_key_path(key_path: &Path) -> PathBuf {
    key_path.with_extension("pub")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{suffix}.{}", std::process::id()))
}

impl SigningKey {
    /// Loads the key at `path`, or creates it (and its `.pub`) if there is none.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Ok(k) => Ok((k, false)),
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create(path).map(|k| (k, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing key, refusing one that group or others can access.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let mut f = File::open(path).map_err(io_err(path))?;
        let mode = f.metadata().map_err(io_err(path))?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut der = Vec::new();
        f.read_to_end(&mut der).map_err(io_err(path))?;
        Self::from_pkcs8(&der).map_err(|reason| KeyError::InvalidKey {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses a PKCS#8 v2 (ring) or v1 (OpenSSL) Ed25519 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der))
            .map_err(|e| e.to_string())?;
        let bytes: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "public key length".to_string())?;
        Ok(Self {
            pair,
            public: PublicKey::from_bytes(bytes),
        })
    }

    /// Creates a new key at `path`. The key is written to a temporary file opened with
    /// `O_CREAT|O_EXCL` and mode 0600, synced, then hard-linked into place, so `path` never
    /// exists partially written or with a wider mode; an existing key is never replaced.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let tmp = sibling(path, ".new");
        let _ = fs::remove_file(&tmp);
        let written = write_exclusive(&tmp, der.as_ref()).and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => {}
            // Someone else created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Self::load(path),
            Err(e) => {
                return Err(KeyError::Io {
                    path: path.to_owned(),
                    source: e,
                });
            }
        }
        let key = Self::from_pkcs8(der.as_ref()).map_err(KeyError::Generate)?;
        key.public.write(&public_key_path(path))?;
        Ok(key)
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.public.id
    }

    /// Signs any message (approval statements; checkpoints use [`Self::sign_checkpoint`]).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }

    /// Signs a checkpoint (see [`checkpoint_message`]).
    pub fn sign_checkpoint(
        &self,
        head: &Hash,
        last: u64,
        first: u64,
        reason: CheckpointReason,
    ) -> [u8; 64] {
        let msg = checkpoint_message(head, last, first, self.public.id, reason);
        let mut sig = [0; 64];
        sig.copy_from_slice(self.pair.sign(&msg).as_ref());
        sig
    }
}

fn write_exclusive(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true) // O_CREAT | O_EXCL
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/gate.key");
        let (k, created) = SigningKey::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let (k2, created) = SigningKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k.public_key(), k2.public_key());
        let exported = PublicKey::load(&dir.path().join("keys/gate.pub")).unwrap();
        assert_eq!(exported, k.public_key());
        assert_eq!(exported.key_id().to_string().len(), 16);
    }

    #[test]
    fn refuses_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.key");
        SigningKey::create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            SigningKey::load(&path),
            Err(KeyError::Permissions { mode: 0o640, .. })
        ));
    }

    #[test]
    fn signature_covers_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::create(&dir.path().join("k")).unwrap();
        let pk = key.public_key();
        let head = [7; 32];
        let sig = key.sign_checkpoint(&head, 10, 3, CheckpointReason::Count);
        let msg = |h: &Hash, l, f, r| checkpoint_message(h, l, f, pk.key_id(), r);
        assert!(pk.verify(&msg(&head, 10, 3, CheckpointReason::Count), &sig));
        assert!(!pk.verify(&msg(&[8; 32], 10, 3, CheckpointReason::Count), &sig));
        assert!(!pk.verify(&msg(&head, 11, 3, CheckpointReason::Count), &sig));
        assert!(!pk.verify(&msg(&head, 10, 2, CheckpointReason::Count), &sig));
        assert!(!pk.verify(&msg(&head, 10, 3, CheckpointReason::Shutdown), &sig));
    }

    #[test]
    fn public_key_formats() {
        let pk = PublicKey::from_bytes([5; 32]);
        assert_eq!(PublicKey::parse(&pk.to_base64()).unwrap(), pk);
        assert_eq!(
            PublicKey::parse(&format!(" {}\n", hex::encode([5; 32]))).unwrap(),
            pk
        );
        assert!(PublicKey::parse("abcd").is_err());
    }
}
