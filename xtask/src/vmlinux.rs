//! The uncompressed kernel, for booting through its PVH entry point. qemu boots an ELF vmlinux
//! with a PVH note directly, skipping the bzImage's self-decompression, which under TCG takes
//! about 9 s of a 15 s boot. Extracted from the bzImage payload (boot protocol >= 2.08 records
//! where it is), decompressed with the matching host tool, and cached beside the kernel.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{elf, initramfs::write_atomically, kernels::Kernel};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point qemu looks for.
const PVH_NOTE_TYPE: u32 = 18;

/// `<kernel dir>/vmlinux`, extracted first if missing. Returns `(path, extracted_now)`.
pub fn ensure(kernel: &Kernel) -> Result<(PathBuf, bool)> {
    let path = kernel.dir.join("vmlinux");
    if path.is_file() {
        return Ok((path, false));
    }
    let bzimage = std::fs::read(kernel.vmlinuz())
        .with_context(|| format!("reading {}", kernel.vmlinuz().display()))?;
    let vmlinux = extract(&bzimage)
        .with_context(|| format!("extracting vmlinux from {}", kernel.vmlinuz().display()))?;
    if !elf::has_note(&vmlinux, "Xen", PVH_NOTE_TYPE)? {
        bail!(
            "the {} kernel has no PVH entry point (CONFIG_PVH is off); qemu cannot boot its vmlinux",
            kernel.release
        );
    }
    write_atomically(&path, &vmlinux)?;
    Ok((path, true))
}

fn extract(bzimage: &[u8]) -> Result<Vec<u8>> {
    let payload = payload(bzimage)?;
    let tool: &[&str] = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => &["xz", "-dc", "--single-stream"],
        [0x28, 0xb5, 0x2f, 0xfd, ..] => &["zstd", "-dc"],
        [0x1f, 0x8b, ..] => &["gzip", "-dc"],
        _ => bail!(
            "unknown compression (magic {:02x?})",
            &payload[..payload.len().min(6)]
        ),
    };
    let vmlinux = decompress(tool, payload)?;
    if !elf::is_complete(&vmlinux).unwrap_or(false) {
        bail!("`{}` did not produce a complete ELF file", tool.join(" "));
    }
    Ok(vmlinux)
}

/// The compressed kernel inside a bzImage (setup header fields `payload_offset`/`_length`).
fn payload(bzimage: &[u8]) -> Result<&[u8]> {
    let field = |off: usize| -> Result<usize> {
        let bytes = bzimage
            .get(off..off + 4)
            .context("bzImage header truncated")?;
        Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS signature)");
    }
    let version = u16::from_le_bytes([bzimage[0x206], bzimage[0x207]]);
    if version < 0x208 {
        bail!("boot protocol {version:#x} predates payload_offset (2.08)");
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + field(0x248)?;
    bzimage
        .get(start..start + field(0x24c)?)
        .context("bzImage payload out of range")
}

/// Pipes `input` through `tool` and returns its output. Trailing bytes after the stream (the
/// kernel appends the decompressed size) can make the tool complain; the ELF checks decide.
fn decompress(tool: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}; run `cargo xtask setup`", tool[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", tool[0]))?;
    let _ = writer.join();
    Ok(out.stdout)
}
