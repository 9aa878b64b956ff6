//! gate-bench: what gate's enforcement costs, measured inside a guest booted with
//! `-icount shift=0,sleep=off` (virtual ns = guest instructions). `cargo xtask bench` boots the
//! guests, runs `gate-bench suite` in each and turns the JSON it prints into BENCHMARKS.md.
//!
//! Subcommands:
//! - `suite [--quick] [--only PARTS] …`: everything; prints one JSON document between marker
//!   lines (see `suite::Options`).
mod agents;
mod approvals;
mod daemon;
mod fsprep;
mod gatecond;
mod lockdown;
mod micro;
mod pysuite;
mod suite;
mod userspace;
mod util;
mod workload;

use anyhow::{Result, bail};

pub const JSON_BEGIN: &str = "=====GATE-BENCH-JSON-BEGIN=====";
pub const JSON_END: &str = "=====GATE-BENCH-JSON-END=====";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("gate-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("suite") => {
            let opts = suite::Options::from_args(&args[1..])?;
            let doc = suite::run(&opts)?;
            println!("{JSON_BEGIN}");
            println!("{}", serde_json::to_string(&doc)?);
            println!("{JSON_END}");
            Ok(())
        }
        _ => bail!(
            "usage: gate-bench suite [--quick] [--repo DIR] [--gate PATH] [--stamp PATH] \
             [--asker PATH] [--only micro,workload,gate,events,agents,daemon,approvals,pysuite]"
        ),
    }
}
