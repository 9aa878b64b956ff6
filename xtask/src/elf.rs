//! Just enough ELF64 reading for the guest boot files: a section's bytes (a module's
//! `.modinfo`), whether an executable is static (no `PT_INTERP`), whether a file is complete,
//! and whether it carries a given note (the PVH entry point of a vmlinux).
use anyhow::{Context as _, Result, bail};

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;

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
    let (shnum, shstrndx) = (
        usize::from(u16_at(data, 0x3c)?),
        usize::from(u16_at(data, 0x3e)?),
    );
    let header = |i: usize| shoff + i * shentsize;
    let strtab_off = u64_at(data, header(shstrndx) + 0x18)?;
    for i in 0..shnum {
        let name_off = strtab_off + u32_at(data, header(i))? as usize;
        let section_name = data.get(name_off..).context("section name out of range")?;
        if section_name.starts_with(name.as_bytes()) && section_name.get(name.len()) == Some(&0) {
            let (off, size) = (
                u64_at(data, header(i) + 0x18)?,
                u64_at(data, header(i) + 0x20)?,
            );
            return data.get(off..off + size).context("section out of range");
        }
    }
    bail!("no {name} section")
}

/// True if the executable has no program interpreter (is statically linked).
pub fn is_static(data: &[u8]) -> Result<bool> {
    Ok(program_headers(data)?
        .iter()
        .all(|(p_type, ..)| *p_type != PT_INTERP))
}

/// Program headers as `(p_type, p_offset, p_filesz)`.
fn program_headers(data: &[u8]) -> Result<Vec<(u32, usize, usize)>> {
    check_elf64(data)?;
    let (phoff, phentsize, phnum) = (
        u64_at(data, 0x20)?,
        usize::from(u16_at(data, 0x36)?),
        u16_at(data, 0x38)?,
    );
    (0..usize::from(phnum))
        .map(|i| {
            let ph = phoff + i * phentsize;
            Ok((
                u32_at(data, ph)?,
                u64_at(data, ph + 0x08)?,
                u64_at(data, ph + 0x20)?,
            ))
        })
        .collect()
}

/// True if the file reaches as far as its section header table (the end of a linked ELF file),
/// i.e. it was not cut short.
pub fn is_complete(data: &[u8]) -> Result<bool> {
    check_elf64(data)?;
    let (shoff, shentsize, shnum) = (
        u64_at(data, 0x28)?,
        usize::from(u16_at(data, 0x3a)?),
        u16_at(data, 0x3c)?,
    );
    Ok(data.len() >= shoff + shentsize * usize::from(shnum))
}

/// True if a `PT_NOTE` segment holds a note with this owner name and type.
pub fn has_note(data: &[u8], owner: &str, note_type: u32) -> Result<bool> {
    for (_, offset, size) in program_headers(data)?
        .into_iter()
        .filter(|(t, ..)| *t == PT_NOTE)
    {
        let notes = data
            .get(offset..offset + size)
            .context("note segment out of range")?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let (namesz, descsz) = (u32_at(notes, at)? as usize, u32_at(notes, at + 4)? as usize);
            let name = notes.get(at + 12..at + 12 + namesz).unwrap_or_default();
            if u32_at(notes, at + 8)? == note_type
                && name.strip_suffix(&[0]) == Some(owner.as_bytes())
            {
                return Ok(true);
            }
            at += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
    }
    Ok(false)
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
        assert!(is_complete(&exe).unwrap());
        assert!(!is_complete(&exe[..exe.len() - 1]).unwrap());
        assert!(has_note(&exe, "GNU", 1).unwrap() || has_note(&exe, "GNU", 3).unwrap());
        assert!(!has_note(&exe, "Xen", 18).unwrap());
    }
}
