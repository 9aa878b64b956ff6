//! Kernel modules for the guest's initramfs: find each module in an unpacked Debian kernel,
//! read its dependencies from the `depends=` string in its `.modinfo` section (there is no
//! modules.dep: depmod runs only when the package is installed), and order them so that every
//! module comes after what it depends on. Compressed modules are decompressed here, because
//! busybox's insmod cannot.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::elf;

/// A module ready for insmod.
pub struct Module {
    pub name: String,
    /// The uncompressed .ko.
    pub data: Vec<u8>,
}

/// `roots` and everything they depend on, dependencies first. Built-in modules are left out.
pub fn resolve(modules_dir: &Path, roots: &[&str]) -> Result<Vec<Module>> {
    let index = index(modules_dir)?;
    let builtin = builtin(modules_dir)?;
    let mut ordered = Vec::new();
    let mut visiting = HashSet::new();
    let mut done = HashSet::new();
    for root in roots {
        let ctx = Resolver {
            index: &index,
            builtin: &builtin,
            modules_dir,
        };
        ctx.visit(&normalize(root), &mut visiting, &mut done, &mut ordered)?;
    }
    Ok(ordered)
}

struct Resolver<'a> {
    index: &'a BTreeMap<String, PathBuf>,
    builtin: &'a HashSet<String>,
    modules_dir: &'a Path,
}

impl Resolver<'_> {
    fn visit(
        &self,
        name: &str,
        visiting: &mut HashSet<String>,
        done: &mut HashSet<String>,
        ordered: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_owned()) {
            bail!("module dependency cycle through {name}");
        }
        let path = self.index.get(name).with_context(|| {
            format!(
                "module {name} is neither a .ko nor built in under {}",
                self.modules_dir.display()
            )
        })?;
        let data = read_module(path)?;
        for dep in depends(&data)
            .with_context(|| format!("reading the dependencies of {}", path.display()))?
        {
            self.visit(&dep, visiting, done, ordered)?;
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        ordered.push(Module {
            name: name.to_owned(),
            data,
        });
        Ok(())
    }
}

/// Module names use `_` where file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `foo.ko`, `foo.ko.xz`, `foo.ko.zst` → `foo`.
fn module_name(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    Some(normalize(stem))
}

/// Every module file under `modules_dir/kernel`, by module name.
fn index(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| module_name(&n.to_string_lossy()))
            {
                found.insert(name, path);
            }
        }
    }
    Ok(found)
}

/// Names listed in `modules.builtin` (missing file: nothing is built in).
fn builtin(modules_dir: &Path) -> Result<HashSet<String>> {
    let path = modules_dir.join("modules.builtin");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(HashSet::new());
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            Path::new(line.trim())
                .file_name()
                .and_then(|n| module_name(&n.to_string_lossy()))
        })
        .collect())
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let decompressor = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match decompressor {
        None => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| {
                    format!(
                        "running `{tool} -dc` on {}; is {tool} installed?",
                        path.display()
                    )
                })?;
            if !out.status.success() {
                bail!(
                    "`{tool} -dc {}` failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out.stdout)
        }
    }
}

/// The module names in the `depends=` entry of a module's `.modinfo`.
fn depends(module: &[u8]) -> Result<Vec<String>> {
    let modinfo = elf::section(module, ".modinfo")?;
    let entry = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(entry)
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalize)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_modules_like_the_kernel() {
        assert_eq!(
            module_name("9pnet_virtio.ko").as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(
            module_name("virtio-rng.ko.xz").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(module_name("netfs.ko.zst").as_deref(), Some("netfs"));
        assert_eq!(module_name("README"), None);
    }
}
