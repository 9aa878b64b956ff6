//! `cargo xtask bench`: not written yet (it will boot guests with `-icount shift=0,sleep=off`,
//! see `guest::RunOptions::icount`).
use anyhow::{Result, bail};

pub fn run() -> Result<()> {
    bail!("`cargo xtask bench` is not implemented yet")
}
