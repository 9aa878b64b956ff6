//! Just enough ELF64 reading for the initramfs: a section's bytes (a module's `.modinfo`) and
//! whether an executable is static (no `PT_INTERP`).
use anyhow::{Context as _, Result, bail};

const PT_INTERP: u32 = 3;

fn check_elf64(data: &[u8]) -> Result<()> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        bail!("not a little-endian ELF64 file");
    }
    Ok(())
}

fn u16_at(data: &[u8], off: usize) -> Result<u16> {
    let bytes = data.get(off..off + 2).context("ELF header truncated")?;
    Ok(u16::from_le_bytes(bytes.try_into()?))
}

fn u32_at(data: &[u8], off: usize) -> Result<u32> {
    let bytes = data.get(off..off + 4).context("ELF header truncated")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

fn u64_at(data: &[u8], off: usize) -> Result<usize> {
    let bytes = data.get(off..off + 8).context("ELF header truncated")?;
    Ok(usize::try_from(u64::from_le_bytes(bytes.try_into()?))?)
}

/// The bytes of the section called `name`.
pub fn section<'a>(data: &'a [u8], name: &str) -> Result<&'a [u8]> {
    check_elf64(data)?;
    let (shoff, shentsize) = (u64_at(data, 0x28)?, usize::from(u16_at(data, 0x3a)?));
    let (shnum, shstrndx) = (usize::from(u16_at(data, 0x3c)?), usize::from(u16_at(data, 0x3e)?));
    let header = |i: usize| shoff + i * shentsize;
    let strtab_off = u64_at(data, header(shstrndx) + 0x18)?;
    for i in 0..shnum {
        let name_off = strtab_off + u32_at(data, header(i))? as usize;
        let section_name = data.get(name_off..).context("section name out of range")?;
        if section_name.starts_with(name.as_bytes()) && section_name.get(name.len()) == Some(&0) {
            let (off, size) = (u64_at(data, header(i) + 0x18)?, u64_at(data, header(i) + 0x20)?);
            return data.get(off..off + size).context("section out of range");
        }
    }
    bail!("no {name} section")
}

/// True if the executable has no program interpreter (is statically linked).
pub fn is_static(data: &[u8]) -> Result<bool> {
    check_elf64(data)?;
    let (phoff, phentsize, phnum) = (u64_at(data, 0x20)?, usize::from(u16_at(data, 0x36)?), u16_at(data, 0x38)?);
    for i in 0..usize::from(phnum) {
        if u32_at(data, phoff + i * phentsize)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_binary_is_dynamic_and_has_sections() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static(&exe).unwrap());
        assert!(!section(&exe, ".text").unwrap().is_empty());
        assert!(section(&exe, ".no-such-section").is_err());
    }
}
