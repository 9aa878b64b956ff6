//! Turning paths into inode keys: the real filesystem ([`FsResolver`]) or an in-memory tree
//! ([`MemResolver`], for tests and dry runs).
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use gate_common::InodeKey;

/// A path resolved to the inode it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The path with symlinks and `..` resolved.
    pub canonical: PathBuf,
    pub key: InodeKey,
    pub is_dir: bool,
}

/// What a bounded walk for hard-linked files found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardlinkScan {
    /// Regular files below the directory with more than one link.
    pub files: Vec<Resolved>,
    /// The walk stopped at its entry limit: files beyond it were not looked at.
    pub truncated: bool,
    /// Directories below it that could not be read.
    pub unreadable: Vec<PathBuf>,
}

/// Resolves policy paths to inodes.
pub trait Resolver {
    /// Follows symlinks and `..` to the inode `path` names. A missing path is an error of kind
    /// `NotFound` (or `NotADirectory` when a component is a file).
    fn resolve(&self, path: &Path) -> io::Result<Resolved>;

    /// Regular files with more than one link below the directory `dir` (not following symlinks),
    /// visiting at most `limit` directory entries.
    fn hardlinked_files_under(&self, dir: &Path, limit: usize) -> io::Result<HardlinkScan>;
}

/// The kernel's internal device number (`MKDEV`: major << 20 | minor) for a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

fn key_of(meta: &fs::Metadata) -> InodeKey {
    InodeKey {
        dev: kernel_dev(meta.dev()),
        slot: 0,
        ino: meta.ino(),
    }
}

/// The real filesystem: `canonicalize`, then `metadata`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsResolver;

impl Resolver for FsResolver {
    fn resolve(&self, path: &Path) -> io::Result<Resolved> {
        let canonical = fs::canonicalize(path)?;
        let meta = fs::metadata(&canonical)?;
        Ok(Resolved {
            key: key_of(&meta),
            is_dir: meta.is_dir(),
            canonical,
        })
    }

    fn hardlinked_files_under(&self, dir: &Path, limit: usize) -> io::Result<HardlinkScan> {
        let mut scan = HardlinkScan::default();
        let mut stack = vec![dir.to_path_buf()];
        let mut visited = 0usize;
        while let Some(d) = stack.pop() {
            let entries = match fs::read_dir(&d) {
                Ok(entries) => entries,
                Err(e) if d == dir => return Err(e),
                Err(_) => {
                    scan.unreadable.push(d);
                    continue;
                }
            };
            for entry in entries.flatten() {
                visited += 1;
                if visited > limit {
                    scan.truncated = true;
                    return Ok(scan);
                }
                // DirEntry::metadata does not follow symlinks.
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() && meta.nlink() > 1 {
                    scan.files.push(Resolved {
                        canonical: entry.path(),
                        key: key_of(&meta),
                        is_dir: false,
                    });
                }
            }
        }
        Ok(scan)
    }
}

#[derive(Clone, Debug)]
enum Node {
    Dir(u64),
    File(u64),
    Symlink(PathBuf),
}

/// An in-memory filesystem tree on one device, built with [`MemResolver::dir`],
/// [`MemResolver::file`], [`MemResolver::hardlink`] and [`MemResolver::symlink`]. Inode numbers
/// are handed out in creation order from 2 (`/`). Missing parents are created as directories.
#[derive(Clone, Debug)]
pub struct MemResolver {
    dev: u32,
    next_ino: u64,
    nodes: BTreeMap<PathBuf, Node>,
}

impl Default for MemResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl MemResolver {
    /// Device of every inode: 8:1 in the kernel's encoding.
    pub const DEV: u32 = (8 << 20) | 1;
    /// Symlinks followed while resolving one path before giving up (like the kernel's 40).
    const MAX_SYMLINKS: usize = 40;

    /// A tree holding only `/`.
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(PathBuf::from("/"), Node::Dir(2));
        MemResolver {
            dev: Self::DEV,
            next_ino: 3,
            nodes,
        }
    }

    /// Adds the directory `path` (and its missing parents).
    pub fn dir(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        self.parents(path);
        if !self.nodes.contains_key(path) {
            let ino = self.ino();
            self.nodes.insert(path.to_path_buf(), Node::Dir(ino));
        }
        self
    }

    /// Adds the regular file `path` (and its missing parent directories).
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        self.parents(path);
        let ino = self.ino();
        self.nodes.insert(path.to_path_buf(), Node::File(ino));
        self
    }

    /// Adds `new` as another name of the existing regular file `existing`.
    ///
    /// # Panics
    /// If `existing` is not a file of this tree.
    pub fn hardlink(mut self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> Self {
        let Some(Node::File(ino)) = self.nodes.get(existing.as_ref()).cloned() else {
            panic!(
                "MemResolver::hardlink: {} is not a file",
                existing.as_ref().display()
            );
        };
        self.parents(new.as_ref());
        self.nodes
            .insert(new.as_ref().to_path_buf(), Node::File(ino));
        self
    }

    /// Adds the symlink `link` pointing at `target` (absolute, or relative to `link`'s parent).
    pub fn symlink(mut self, link: impl AsRef<Path>, target: impl AsRef<Path>) -> Self {
        self.parents(link.as_ref());
        self.nodes.insert(
            link.as_ref().to_path_buf(),
            Node::Symlink(target.as_ref().to_path_buf()),
        );
        self
    }

    fn ino(&mut self) -> u64 {
        self.next_ino += 1;
        self.next_ino - 1
    }

    fn parents(&mut self, path: &Path) {
        assert!(
            path.is_absolute(),
            "MemResolver paths must be absolute: {}",
            path.display()
        );
        let missing: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .filter(|a| !self.nodes.contains_key(*a))
            .map(Path::to_path_buf)
            .collect();
        for dir in missing.into_iter().rev() {
            let ino = self.ino();
            self.nodes.insert(dir, Node::Dir(ino));
        }
    }

    fn key(&self, ino: u64) -> InodeKey {
        InodeKey {
            dev: self.dev,
            slot: 0,
            ino,
        }
    }

    /// Walks `path` component by component, following symlinks, like `realpath`.
    fn canonical(&self, path: &Path) -> io::Result<PathBuf> {
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, path);
        let mut out = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            match name.to_str() {
                Some("/") => out = PathBuf::from("/"),
                Some(".") => {}
                Some("..") => {
                    out.pop();
                }
                _ => {
                    if let Some(Node::File(_)) = self.nodes.get(&out) {
                        return Err(io::Error::from(io::ErrorKind::NotADirectory));
                    }
                    let next = out.join(&name);
                    match self.nodes.get(&next) {
                        None => return Err(io::Error::from(io::ErrorKind::NotFound)),
                        Some(Node::Symlink(target)) => {
                            hops += 1;
                            if hops > Self::MAX_SYMLINKS {
                                return Err(io::Error::other("too many levels of symbolic links"));
                            }
                            push_components(&mut pending, target);
                        }
                        Some(_) => out = next,
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Pushes `path`'s components onto a stack so that the first one is popped first.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let names: Vec<OsString> = path
        .components()
        .map(|c| match c {
            Component::RootDir | Component::Prefix(_) => OsString::from("/"),
            other => other.as_os_str().to_os_string(),
        })
        .collect();
    stack.extend(names.into_iter().rev());
}

impl Resolver for MemResolver {
    fn resolve(&self, path: &Path) -> io::Result<Resolved> {
        let canonical = self.canonical(path)?;
        match self.nodes.get(&canonical) {
            Some(Node::Dir(ino)) => Ok(Resolved {
                key: self.key(*ino),
                is_dir: true,
                canonical,
            }),
            Some(Node::File(ino)) => Ok(Resolved {
                key: self.key(*ino),
                is_dir: false,
                canonical,
            }),
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn hardlinked_files_under(&self, dir: &Path, limit: usize) -> io::Result<HardlinkScan> {
        let mut scan = HardlinkScan::default();
        let mut links: BTreeMap<u64, usize> = BTreeMap::new();
        for node in self.nodes.values() {
            if let Node::File(ino) = node {
                *links.entry(*ino).or_default() += 1;
            }
        }
        let below = self
            .nodes
            .range(dir.to_path_buf()..)
            .filter(|(p, _)| p.as_path() != dir)
            .take_while(|(p, _)| p.starts_with(dir));
        for (visited, (path, node)) in below.enumerate() {
            if visited >= limit {
                scan.truncated = true;
                break;
            }
            if let Node::File(ino) = node
                && links.get(ino).is_some_and(|&n| n > 1)
            {
                scan.files.push(Resolved {
                    canonical: path.clone(),
                    key: self.key(*ino),
                    is_dir: false,
                });
            }
        }
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        // st_dev 0x0801 is 8:1; the kernel keeps it as (8 << 20) | 1.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 3)), (259 << 20) | 3);
        assert_eq!(kernel_dev(libc::makedev(0, 0x2a)), 0x2a);
    }

    #[test]
    fn fs_resolver_matches_stat() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        fs::hard_link(&file, tmp.path().join("g")).unwrap();
        std::os::unix::fs::symlink(&file, tmp.path().join("l")).unwrap();
        let r = FsResolver.resolve(&tmp.path().join("l")).unwrap();
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(r.key.ino, meta.ino());
        assert_eq!(r.key.dev, kernel_dev(meta.dev()));
        assert!(!r.is_dir);
        assert_eq!(r.canonical, fs::canonicalize(&file).unwrap());
        let scan = FsResolver.hardlinked_files_under(tmp.path(), 100).unwrap();
        assert_eq!(scan.files.len(), 2, "f and g, not the symlink");
        assert!(!scan.truncated);
        let cut = FsResolver.hardlinked_files_under(tmp.path(), 1).unwrap();
        assert!(cut.truncated);
        let missing = FsResolver.resolve(&tmp.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn mem_resolver_follows_symlinks_and_dotdot() {
        let r = MemResolver::new()
            .dir("/usr/bin")
            .file("/usr/bin/nc.openbsd")
            .symlink("/bin", "usr/bin")
            .symlink("/etc/alternatives/nc", "/bin/nc.openbsd")
            .symlink("/usr/bin/nc", "/etc/alternatives/nc")
            .symlink("/loop", "/loop");
        let nc = r.resolve(Path::new("/usr/bin/nc")).unwrap();
        assert_eq!(nc.canonical, Path::new("/usr/bin/nc.openbsd"));
        let via_bin = r.resolve(Path::new("/bin/../bin/./nc.openbsd")).unwrap();
        assert_eq!(via_bin.key, nc.key);
        assert!(r.resolve(Path::new("/bin")).unwrap().is_dir);
        let not_dir = r.resolve(Path::new("/usr/bin/nc.openbsd/x")).unwrap_err();
        assert_eq!(not_dir.kind(), io::ErrorKind::NotADirectory);
        assert_eq!(
            r.resolve(Path::new("/nope")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(r.resolve(Path::new("/loop")).is_err());
    }
}
