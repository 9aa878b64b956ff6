//! A writer for the cpio "newc" format the kernel unpacks as an initramfs. Writing it here
//! (rather than staging a directory for `cpio -o`) lets us add device nodes without root and
//! keeps archives byte-for-byte reproducible. Archives may be concatenated: the kernel unpacks
//! each in turn, later entries overriding earlier ones.
const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Default)]
pub struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.buf
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        self.next_ino += 1;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, for reproducible archives
            u32::try_from(data.len()).expect("initramfs entries are far below 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short path"),
            0, // check
        ];
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_end_with_the_trailer() {
        let mut a = Archive::new();
        a.dir("bin", 0o755);
        a.file("/init", 0o755, b"#!/bin/sh\n");
        a.symlink("bin/sh", "busybox");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("init\0"));
        assert!(
            !text.contains("/init"),
            "paths are stored without a leading slash"
        );
        assert!(text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn header_is_110_bytes_then_the_name() {
        let mut a = Archive::new();
        a.file("x", 0o644, b"hello");
        let bytes = a.finish();
        // 110-byte header, "x\0" → padded to 112, 5 data bytes → padded to 120.
        assert_eq!(&bytes[110..112], b"x\0");
        assert_eq!(&bytes[112..117], b"hello");
        assert_eq!(&bytes[120..126], b"070701");
    }
}
