//! Builds the eBPF object (gate-ebpf, for bpfel-unknown-none, with the nightly toolchain and
//! bpf-linker) and leaves it in OUT_DIR, where `include_bytes_aligned!` picks it up.
//! `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // With AYA_BUILD_SKIP (host-only unit tests, or a machine without the eBPF toolchain) an empty
    // object is left in its place; the engine refuses to run with it and says why.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    {
        let out = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
        for name in ["gate", "gate-null"] {
            std::fs::write(std::path::Path::new(&out).join(name), b"")
                .context("writing the placeholder eBPF object")?;
        }
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("gate-userspace has no parent directory"))?
        .join("gate-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gate-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         rust-src component and bpf-linker, then read the `warning:` lines above",
    )
}
