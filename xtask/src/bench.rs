//! `cargo xtask bench`: what gate's enforcement costs, measured in guests booted with
//! `-icount shift=0,sleep=off` (guest virtual time = guest instructions, repeatable run to run)
//! on each kernel. Builds `gate-bench` (bench/), runs `gate-bench suite` in one guest per
//! kernel through `cargo xtask guest` (the kernels in parallel: under icount the host's speed
//! does not change the figures), takes the JSON document the guest prints between marker lines,
//! and writes `benchmarks.json` and `BENCHMARKS.md` at the repository root.
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::kernels::Series;
use crate::{paths, setup, workspace};

const JSON_BEGIN: &str = "=====GATE-BENCH-JSON-BEGIN=====";
const JSON_END: &str = "=====GATE-BENCH-JSON-END=====";

pub struct Options {
    pub kernels: Vec<Series>,
    /// Fewer rounds and iterations (a smoke run; the figures are not for publishing).
    pub quick: bool,
    /// One guest after the other instead of side by side.
    pub sequential: bool,
    pub timeout: Duration,
    /// Extra arguments for `gate-bench suite` (e.g. `--only micro`).
    pub suite_args: Vec<String>,
    /// Re-render BENCHMARKS.md (and the summaries in benchmarks.json) from this earlier
    /// benchmarks.json instead of running guests.
    pub from_json: Option<std::path::PathBuf>,
}

/// Recomputes every kernel's summary from its raw guest data and rewrites both files.
fn rerender(path: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: Value = serde_json::from_str(&text).context("parsing benchmarks.json")?;
    if let Some(kernels) = doc["kernels"].as_object_mut() {
        for k in kernels.values_mut() {
            k["summary"] = summarize(&k["guest"]);
        }
    }
    let root = paths::repo_root();
    std::fs::write(
        root.join("benchmarks.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    std::fs::write(root.join("BENCHMARKS.md"), render(&doc))?;
    println!(
        "re-rendered BENCHMARKS.md and benchmarks.json from {}",
        path.display()
    );
    Ok(())
}

pub fn run(options: &Options) -> Result<()> {
    if let Some(path) = &options.from_json {
        return rerender(path);
    }
    let started = Instant::now();
    let load_before = loadavg();
    // Builds the kernels' guest images if needed (quietly when everything is there).
    setup::run(&setup::Options {
        quiet: true,
        update_kernels: false,
    })?;
    workspace::release(&["gate-bench", "gate-userspace"])?;
    let bench = workspace::release_binary(
        "gate-bench",
        "the benchmark crate in bench/ (package gate-bench) should provide it",
    )?;
    let gate = workspace::release_binary("gate", "package gate-userspace should provide it")?;
    let stamp = build_static("stamp.c", "gate-stamp")?;
    let asker = build_static("asker.c", "gate-asker")?;
    let python = python_archive()?;
    let mut suite_cmd = vec![bench.to_string_lossy().into_owned(), "suite".to_owned()];
    suite_cmd.extend([
        "--repo".to_owned(),
        paths::repo_root().to_string_lossy().into_owned(),
        "--gate".to_owned(),
        gate.to_string_lossy().into_owned(),
        "--stamp".to_owned(),
        stamp.to_string_lossy().into_owned(),
        "--asker".to_owned(),
        asker.to_string_lossy().into_owned(),
        "--python-tar".to_owned(),
        python.to_string_lossy().into_owned(),
    ]);
    if options.quick {
        suite_cmd.push("--quick".to_owned());
    }
    suite_cmd.extend(options.suite_args.iter().cloned());

    let results: Vec<(Series, Result<GuestRun>)> = if options.sequential {
        options
            .kernels
            .iter()
            .map(|&k| (k, run_guest(k, &suite_cmd, options.timeout)))
            .collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = options
                .kernels
                .iter()
                .map(|&k| {
                    let cmd = &suite_cmd;
                    (k, s.spawn(move || run_guest(k, cmd, options.timeout)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(k, h)| {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the guest thread panicked")));
                    (k, r)
                })
                .collect()
        })
    };

    let mut kernels = serde_json::Map::new();
    let mut failures = Vec::new();
    for (series, result) in results {
        match result {
            Ok(run) => {
                let summary = summarize(&run.doc);
                kernels.insert(
                    series.name().to_owned(),
                    json!({
                        "wall_seconds": run.wall.as_secs_f64(),
                        "host_marks": run.marks,
                        "summary": summary,
                        "guest": run.doc,
                    }),
                );
            }
            Err(e) => {
                eprintln!("error: the {} benchmark failed: {e:#}", series.name());
                failures.push(format!("{}: {e:#}", series.name()));
            }
        }
    }
    if kernels.is_empty() {
        bail!("no benchmark finished: {}", failures.join("; "));
    }
    if let Some(parts) = only_separate_parts(&options.suite_args) {
        return merge_parts(kernels, &parts, &failures);
    }
    keep_earlier_parts(&mut kernels);
    let doc = json!({
        "generated_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "date": utc_date(),
        "command": "cargo xtask bench",
        "quick": options.quick,
        "suite_args": options.suite_args,
        "wall_seconds": started.elapsed().as_secs_f64(),
        "parallel_guests": !options.sequential,
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        },
        "method": METHOD,
        "failures": failures,
        "kernels": kernels,
    });
    let root = paths::repo_root();
    std::fs::write(
        root.join("benchmarks.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )
    .context("writing benchmarks.json")?;
    std::fs::write(root.join("BENCHMARKS.md"), render(&doc)).context("writing BENCHMARKS.md")?;
    println!(
        "wrote BENCHMARKS.md and benchmarks.json ({:.0} s wall)",
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("some kernels failed: {}", failures.join("; "));
    }
    Ok(())
}

/// Parts of the benchmark that can be run on their own (`-- --only pysuite`, `-- --only
/// approvals`, or both): such a run updates their figures in the existing benchmarks.json, and
/// a run that leaves them out keeps their earlier figures, with their date and host marks
/// (the CPython suite takes most of an hour per kernel).
const SEPARATE_PARTS: [&str; 2] = ["pysuite", "approvals"];

/// A run that left a separate part out keeps its earlier figures from benchmarks.json.
fn keep_earlier_parts(kernels: &mut serde_json::Map<String, Value>) {
    let path = paths::repo_root().join("benchmarks.json");
    let Some(old) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        return;
    };
    for (name, k) in kernels.iter_mut() {
        let earlier = &old["kernels"][name];
        for part in SEPARATE_PARTS {
            if !k["guest"][part].is_null() || earlier["guest"][part].is_null() {
                continue;
            }
            k["guest"][part] = earlier["guest"][part].clone();
            let date = format!("{part}_date");
            k[&date] = earlier[&date].clone();
            if let (Some(marks), Some(old_marks)) = (
                k["host_marks"].as_object_mut(),
                earlier["host_marks"].as_object(),
            ) {
                let prefix = format!("{part}-");
                for (m, v) in old_marks.iter().filter(|(m, _)| m.starts_with(&prefix)) {
                    marks.insert(m.clone(), v.clone());
                }
            }
        }
    }
}

/// The separate parts the run measured, when it measured nothing else (`-- --only …`).
fn only_separate_parts(args: &[String]) -> Option<Vec<String>> {
    let only = args.windows(2).find(|w| w[0] == "--only")?;
    let parts: Vec<String> = only[1].split(',').map(|p| p.trim().to_owned()).collect();
    parts
        .iter()
        .all(|p| SEPARATE_PARTS.contains(&p.as_str()))
        .then_some(parts)
}

/// A run of separate parts only updates their figures in the existing benchmarks.json (and
/// re-renders BENCHMARKS.md) instead of replacing every other figure with nothing.
fn merge_parts(
    kernels: serde_json::Map<String, Value>,
    parts: &[String],
    failures: &[String],
) -> Result<()> {
    let root = paths::repo_root();
    let path = root.join("benchmarks.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "`--only {}` updates {}, which is missing: run the whole `cargo xtask bench` first",
            parts.join(","),
            path.display()
        )
    })?;
    let mut doc: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    for (k, new) in kernels {
        let Some(old) = doc["kernels"].get_mut(&k) else {
            bail!("benchmarks.json has no Linux {k} results to add these figures to");
        };
        for part in parts {
            old["guest"][part] = new["guest"][part].clone();
            old[format!("{part}_date")] = json!(utc_date());
            let prefix = format!("{part}-");
            if !old["host_marks"].is_object() {
                old["host_marks"] = json!({});
            }
            if let (Some(marks), Some(new_marks)) = (
                old["host_marks"].as_object_mut(),
                new["host_marks"].as_object(),
            ) {
                marks.retain(|m, _| !m.starts_with(&prefix));
                for (m, v) in new_marks.iter().filter(|(m, _)| m.starts_with(&prefix)) {
                    marks.insert(m.clone(), v.clone());
                }
            }
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .context("writing benchmarks.json")?;
    std::fs::write(root.join("BENCHMARKS.md"), render(&doc)).context("writing BENCHMARKS.md")?;
    println!(
        "updated the figures of {} in BENCHMARKS.md and benchmarks.json",
        parts.join(" and ")
    );
    if !failures.is_empty() {
        bail!("some kernels failed: {}", failures.join("; "));
    }
    Ok(())
}

/// The CPython suite's runs: virtual time (icount) and host wall time per condition.
fn render_pysuite(md: &mut String, k: &Value) {
    let p = &k["guest"]["pysuite"];
    let runs = p["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Third-party test suite\n");
    let _ = writeln!(
        md,
        "{}{}. The same modules run in the kernel suite (`workload/cpython`), where every test \
         that passes unconfined must pass confined.\n",
        p["info"]["description"].as_str().unwrap_or(""),
        k["pysuite_date"]
            .as_str()
            .map(|d| format!(" (measured {d})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "| condition | runs | virtual s (median) | each run | overhead | wall s per run (host, icount guest) | regrtest |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|---:|---|---|");
    // The runs of one condition, in the order they ran (`round` 1, 2, …; older records have
    // one run and no round).
    let mut conds: Vec<&str> = Vec::new();
    for r in &runs {
        let c = r["condition"].as_str().unwrap_or("?");
        if !conds.contains(&c) {
            conds.push(c);
        }
    }
    let of = |cond: &str| -> Vec<&Value> {
        runs.iter()
            .filter(|r| r["condition"].as_str() == Some(cond))
            .collect()
    };
    let median_of = |cond: &str| -> Option<f64> {
        let mut v: Vec<f64> = of(cond)
            .iter()
            .filter_map(|r| r["virtual_ns"].as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    let base = median_of("none");
    for cond in conds {
        let label = CONDITIONS
            .iter()
            .find(|(c, _)| *c == cond)
            .map_or(cond, |(_, l)| *l);
        let these = of(cond);
        let marks = &k["host_marks"];
        let each = these
            .iter()
            .map(|r| format!("{:.2}", r["virtual_ns"].as_f64().unwrap_or(0.0) / 1e9))
            .collect::<Vec<_>>()
            .join(", ");
        let walls = these
            .iter()
            .map(|r| {
                let key = |end: &str| match r["round"].as_u64() {
                    Some(round) => format!("pysuite-{cond}-{round}-{end}"),
                    None => format!("pysuite-{cond}-{end}"),
                };
                match (marks[key("begin")].as_f64(), marks[key("end")].as_f64()) {
                    (Some(a), Some(b)) => format!("{:.0}", b - a),
                    _ => "—".to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let verdicts: Vec<String> = these.iter().map(|r| regrtest_summary(r)).collect();
        let verdict = if verdicts.windows(2).all(|w| w[0] == w[1]) {
            verdicts.first().cloned().unwrap_or_default()
        } else {
            verdicts.join("; ")
        };
        let v = median_of(cond).unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {label} | {} | {:.2} | {each} | {} | {walls} | {verdict} |",
            these.len(),
            v / 1e9,
            match (cond, base) {
                ("none", _) => "—".to_owned(),
                (_, Some(b)) => pct(Some(v / b - 1.0)),
                _ => "—".to_owned(),
            }
        );
    }
    let _ = writeln!(md);
}

/// regrtest's verdict from the last lines it printed: "All 14 tests OK.", or "13 tests OK. 1
/// test failed: test_subprocess" (its progress lines, which begin with the elapsed time, and
/// its banners left out).
fn regrtest_summary(run: &Value) -> String {
    run["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::trim)
        .filter(|l| {
            let progress = l
                .split_once(':')
                .is_some_and(|(h, _)| !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit()));
            !progress
                && !l.starts_with("Total duration")
                && !l.starts_with("==")
                && !l.starts_with("Tests result")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python 3.11 and its library (tests included) as one uncompressed archive, made on the host:
/// the guest unpacks it into its tmpfs with 1 MiB reads, where copying ~8,000 files over 9p
/// one by one takes half an hour of an icount guest's time.
fn python_archive() -> Result<std::path::PathBuf> {
    let out = paths::target_dir()?.join("release/python3.11.tar");
    crate::cmd::run(
        Command::new("tar")
            .args(["-C", "/", "-b", "2048", "-cf"])
            .arg(&out)
            .args(["usr/lib/python3.11", "usr/bin/python3.11"]),
    )
    .context(
        "archiving /usr/lib/python3.11 for the CPython suite benchmark (`cargo xtask setup` \
         installs its tests, Debian's libpython3.11-testsuite)",
    )?;
    Ok(out)
}

/// `gate-stamp` (bench/src/stamp.c): a static program without libc that prints its clock at
/// its first instruction, for the time from `gate run` to the command's start.
/// Compiles one of the benchmark's libc-free helpers (bench/src/`src`) into target/release/`name`.
fn build_static(src: &str, name: &str) -> Result<std::path::PathBuf> {
    let src = paths::repo_root().join("bench/src").join(src);
    let out = paths::target_dir()?.join("release").join(name);
    crate::cmd::run(
        Command::new("cc")
            .args([
                "-static",
                "-nostdlib",
                "-O2",
                "-fno-stack-protector",
                "-fno-builtin",
                "-o",
            ])
            .arg(&out)
            .arg(&src),
    )
    .with_context(|| {
        format!(
            "compiling {} (gcc is installed by `cargo xtask setup`)",
            src.display()
        )
    })?;
    Ok(out)
}

struct GuestRun {
    doc: Value,
    wall: Duration,
    marks: Value,
}

/// Boots one guest with icount through `cargo xtask guest` (this binary's own `guest`
/// command), echoing its console and keeping the JSON document.
fn run_guest(series: Series, suite_cmd: &[String], timeout: Duration) -> Result<GuestRun> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut child = Command::new(exe)
        .args(["guest", "--kernel", series.name(), "--icount", "--timeout"])
        .arg(timeout.as_secs().to_string())
        .arg("--")
        .args(suite_cmd)
        .current_dir(paths::repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `cargo xtask guest`")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut json_text: Option<String> = None;
    let mut inside = false;
    // Host wall-clock seconds (since boot started) at each `GATE-BENCH-MARK id` line.
    let mut marks = serde_json::Map::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the guest's output")?;
        // The guest runner prefixes every console line with `[series] `.
        let body = line
            .split_once("] ")
            .map_or(line.as_str(), |(_, b)| b)
            .trim_end();
        if body == JSON_BEGIN {
            inside = true;
            json_text = Some(String::new());
            continue;
        }
        if body == JSON_END {
            inside = false;
            continue;
        }
        if inside {
            json_text.get_or_insert_with(String::new).push_str(body);
            continue;
        }
        if let Some((_, id)) = body.split_once("GATE-BENCH-MARK ") {
            marks.insert(id.trim().to_owned(), json!(started.elapsed().as_secs_f64()));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
    let status = child.wait().context("waiting for `cargo xtask guest`")?;
    if !status.success() {
        bail!(
            "the {} guest's benchmark failed ({status}); its output is above",
            series.name()
        );
    }
    let text = json_text.context("the guest printed no benchmark results")?;
    let doc: Value = serde_json::from_str(&text).context("parsing the guest's benchmark JSON")?;
    Ok(GuestRun {
        doc,
        wall: started.elapsed(),
        marks: Value::Object(marks),
    })
}

/// Conditions in display order: id, short label.
const CONDITIONS: &[(&str, &str)] = &[
    ("none", "no BPF program"),
    ("null", "empty BPF LSM programs"),
    ("gate_unconfined", "gate loaded, not confined"),
    ("gate_coding_agent", "confined: coding-agent"),
    ("gate_1k", "confined: +1,000 rules"),
    ("gate_10k", "confined: +10,000 rules"),
    ("landlock", "Landlock, same job"),
];

/// The many-agents block's conditions (one engine with room for 100 agents), shown in a table
/// of their own.
const AGENT_CONDITIONS: &[(&str, &str)] = &[
    ("agents_1", "1 agent"),
    ("agents_10", "10 agents"),
    ("agents_100", "100 agents"),
    ("agents_n_confined", "confined: one of 100 agents"),
];

const OPS: &[(&str, &str)] = &[
    ("exec", "exec"),
    ("open_write", "open for write + close"),
    ("open_read", "open for read + close"),
    ("rename", "rename"),
    ("tcp_connect", "TCP connect (loopback)"),
    ("udp_sendto", "UDP sendto (loopback)"),
    ("mmap_exec", "mmap PROT_EXEC (a library)"),
    ("unix_connect", "unix connect (own listener)"),
    ("signal", "kill(own pid, 0)"),
];

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    q1: f64,
    q3: f64,
    min: f64,
    max: f64,
    count: usize,
}

fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    Some(Stats {
        median: q(0.5),
        q1: q(0.25),
        q3: q(0.75),
        min: v[0],
        max: v[v.len() - 1],
        count: v.len(),
    })
}

fn stats_json(s: &Stats) -> Value {
    json!({ "median": s.median, "q1": s.q1, "q3": s.q3, "min": s.min, "max": s.max, "samples": s.count })
}

/// Samples of `kind` runs for one condition and key, warm-up runs excluded.
fn samples(doc: &Value, kind: &str, cond: &str, key: &str) -> Vec<f64> {
    doc["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == kind && r["condition"] == cond && r["block"] != "warm-up")
        .flat_map(|r| r["samples"][key].as_array().cloned().unwrap_or_default())
        .filter_map(|x| x.as_f64())
        .collect()
}

/// Per condition and op: stats, overhead against "none" (ratio of medians − 1), op counts.
fn summarize(doc: &Value) -> Value {
    let mut micro = serde_json::Map::new();
    for (op, _) in OPS {
        let n_per_sample = doc["plans"][op]["n"].as_u64().unwrap_or(0);
        let base = stats(&samples(doc, "micro", "none", op));
        let mut per_cond = serde_json::Map::new();
        for (cond, _) in CONDITIONS.iter().chain(AGENT_CONDITIONS) {
            let Some(s) = stats(&samples(doc, "micro", cond, op)) else {
                continue;
            };
            let mut v = stats_json(&s);
            v["ops_timed"] = json!(s.count as u64 * n_per_sample);
            if let Some(b) = base {
                v["overhead"] = json!(s.median / b.median - 1.0);
            }
            per_cond.insert((*cond).to_owned(), v);
        }
        micro.insert((*op).to_owned(), Value::Object(per_cond));
    }
    let mut workload = serde_json::Map::new();
    let wl_base = stats(&samples(doc, "workload", "none", "workload"));
    for (cond, _) in CONDITIONS {
        let Some(s) = stats(&samples(doc, "workload", cond, "workload")) else {
            continue;
        };
        let mut v = stats_json(&s);
        if let Some(b) = wl_base {
            v["overhead"] = json!(s.median / b.median - 1.0);
        }
        workload.insert((*cond).to_owned(), v);
    }
    json!({ "micro": micro, "workload": workload, "daemon": summarize_daemon(&doc["daemon"]) })
}

/// The daemon's launch times (stats, p99, first and last tenth) and the `--no-daemon` runs.
fn summarize_daemon(d: &Value) -> Value {
    let ns = |list: &Value| -> Vec<f64> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ns"].as_f64())
            .collect()
    };
    let launches = ns(&d["launches"]);
    let Some(s) = stats(&launches) else {
        return Value::Null;
    };
    let mut v = stats_json(&s);
    v["p99"] = json!(quantile(&launches, 0.99));
    let tenth = (launches.len() / 10).max(1);
    v["first_tenth_median"] = json!(quantile(&launches[..tenth], 0.5));
    v["last_tenth_median"] = json!(quantile(&launches[launches.len() - tenth..], 0.5));
    let no_daemon = ns(&d["no_daemon"]);
    json!({
        "launch": v,
        "no_daemon": stats(&no_daemon).map(|s| stats_json(&s)),
    })
}

/// The `p` quantile of `values` (interpolated, as [`stats`] does).
fn quantile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let pos = p * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn overhead(summary: &Value, op: &str, cond: &str) -> Option<f64> {
    summary["micro"][op][cond]["overhead"].as_f64()
}

fn pct(x: Option<f64>) -> String {
    match x {
        Some(x) => format!("{:+.1} %", x * 100.0),
        None => "—".to_owned(),
    }
}

fn ns(x: f64) -> String {
    if x >= 100_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        let s = format!("{x:.0}");
        // thousands separator
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

/// One goal's verdict on one kernel.
struct Verdict {
    text: String,
    met: Option<bool>,
}

fn verdict_cell(v: &Verdict) -> String {
    match v.met {
        Some(true) => format!("met: {}", v.text),
        Some(false) => format!("**missed**: {}", v.text),
        None => "not measured".to_owned(),
    }
}

/// Goal 1: unconfined ≤ 1.5 × the empty programs' overhead, and ≤ 2 % on open+close.
fn goal_unconfined(s: &Value) -> Verdict {
    let mut worst: Option<(String, f64, f64)> = None;
    let mut met = true;
    let mut any = false;
    for (op, _) in OPS {
        let (Some(u), Some(n)) = (overhead(s, op, "gate_unconfined"), overhead(s, op, "null"))
        else {
            continue;
        };
        any = true;
        // Within 0.3 points of the floor counts as at the floor (below the spread).
        let ok = u <= 1.5 * n.max(0.0) + 0.003;
        if !ok {
            met = false;
            if worst.as_ref().is_none_or(|w| u - 1.5 * n > w.1 - 1.5 * w.2) {
                worst = Some(((*op).to_owned(), u, n));
            }
        }
    }
    let open: Vec<f64> = ["open_write", "open_read"]
        .iter()
        .filter_map(|op| overhead(s, op, "gate_unconfined"))
        .collect();
    let open_ok = open.iter().all(|&o| o <= 0.02);
    let open_txt = open
        .iter()
        .map(|o| pct(Some(*o)))
        .collect::<Vec<_>>()
        .join(" / ");
    let text = match &worst {
        Some((op, u, n)) => format!(
            "open+close {open_txt} (write / read); worst op {op}: {} vs empty programs {}",
            pct(Some(*u)),
            pct(Some(*n))
        ),
        None => {
            format!("open+close {open_txt} (write / read); every op within 1.5× the empty programs")
        }
    };
    Verdict {
        text,
        met: any.then_some(met && open_ok),
    }
}

/// Goal 2: confined with 10,000 rules ≤ Landlock and ≤ 5 % per op.
fn goal_confined(s: &Value) -> Verdict {
    let mut misses = Vec::new();
    let mut any = false;
    for (op, _) in OPS {
        let Some(g) = overhead(s, op, "gate_10k") else {
            continue;
        };
        any = true;
        let l = overhead(s, op, "landlock");
        let over_5 = g > 0.05;
        let over_ll = l.is_some_and(|l| g > l.max(0.0) + 0.003);
        if over_5 || over_ll {
            misses.push(format!("{op} {} (Landlock {})", pct(Some(g)), pct(l)));
        }
    }
    let text = if misses.is_empty() {
        "every op ≤ 5 % and ≤ Landlock".to_owned()
    } else {
        misses.join("; ")
    };
    Verdict {
        text,
        met: any.then_some(misses.is_empty()),
    }
}

/// Goal 3: the real workload confined ≤ 2 %.
fn goal_workload(s: &Value) -> Verdict {
    let w = &s["workload"];
    let vals: Vec<(&str, f64)> = ["gate_coding_agent", "gate_10k"]
        .iter()
        .filter_map(|c| w[*c]["overhead"].as_f64().map(|o| (*c, o)))
        .collect();
    if vals.is_empty() {
        return Verdict {
            text: String::new(),
            met: None,
        };
    }
    let text = vals
        .iter()
        .map(|(c, o)| format!("{} {}", label(c), pct(Some(*o))))
        .collect::<Vec<_>>()
        .join("; ");
    Verdict {
        text,
        met: Some(vals.iter().all(|(_, o)| *o <= 0.02)),
    }
}

/// Goal 4: unconfined open+close does not grow with the number of agents (100 agents within
/// 0.5 points of 1 agent, both in one engine with room for 100).
fn goal_agents(s: &Value) -> Verdict {
    let mut parts = Vec::new();
    let mut met = true;
    let mut any = false;
    for (op, what) in [("open_write", "write"), ("open_read", "read")] {
        let o: Vec<Option<f64>> = ["agents_1", "agents_10", "agents_100"]
            .iter()
            .map(|c| overhead(s, op, c))
            .collect();
        let (Some(one), Some(hundred)) = (o[0], o[2]) else {
            continue;
        };
        any = true;
        met &= hundred - one <= 0.005;
        parts.push(format!(
            "{what} {}",
            o.iter().map(|x| pct(*x)).collect::<Vec<_>>().join(" / ")
        ));
    }
    if !any {
        return Verdict {
            text: String::new(),
            met: None,
        };
    }
    let confined = match (
        overhead(s, "open_write", "agents_n_confined"),
        overhead(s, "open_write", "gate_coding_agent"),
    ) {
        (Some(c), Some(a)) => format!(
            "; confined open for write as one of 100: {} (alone in its engine: {})",
            pct(Some(c)),
            pct(Some(a))
        ),
        _ => String::new(),
    };
    Verdict {
        text: format!(
            "open+close with 1 / 10 / 100 agents: {}{confined}",
            parts.join("; ")
        ),
        met: Some(met),
    }
}

fn label(cond: &str) -> &str {
    CONDITIONS
        .iter()
        .find(|(c, _)| *c == cond)
        .map_or(cond, |(_, l)| l)
}

fn render(doc: &Value) -> String {
    let mut md = String::new();
    let kernels = doc["kernels"].as_object().cloned().unwrap_or_default();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "What gate's enforcement costs, against no enforcement, empty BPF LSM programs and \
         Landlock, measured in one boot per kernel. Generated by `cargo xtask bench` on {} \
         ({:.0} s wall for {} kernel(s){}, host load average {} before and {} after, on {} CPUs); \
         raw data in `benchmarks.json`.{}\n",
        doc["date"].as_str().unwrap_or("?"),
        doc["wall_seconds"].as_f64().unwrap_or(0.0),
        kernels.len(),
        if doc["parallel_guests"] == true {
            ", guests side by side"
        } else {
            ""
        },
        doc["host"]["loadavg_before"],
        doc["host"]["loadavg_after"],
        doc["host"]["cpus"],
        if doc["quick"] == true {
            " **This was a `--quick` smoke run: too few iterations to publish.**"
        } else {
            ""
        }
    );
    for f in doc["failures"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "> **Failed:** {}\n", f.as_str().unwrap_or("?"));
    }

    // Goals.
    let _ = writeln!(md, "## Goals\n");
    let _ = writeln!(
        md,
        "| goal | {} |",
        kernels
            .keys()
            .map(|k| format!("Linux {k}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---|".repeat(kernels.len()));
    type GoalFn = fn(&Value) -> Verdict;
    let goals: [(&str, GoalFn); 4] = [
        (
            "unconfined processes: at most 1.5× the empty programs' overhead, ≤ 2 % on open+close",
            goal_unconfined,
        ),
        (
            "confined, 10,000 rules: no worse than Landlock doing the same job, ≤ 5 % per op",
            goal_confined,
        ),
        ("real workload confined: ≤ 2 %", goal_workload),
        (
            "many agents: unconfined open+close with 100 agents within 0.5 points of 1 agent",
            goal_agents,
        ),
    ];
    for (name, f) in goals {
        let cells: Vec<String> = kernels
            .values()
            .map(|k| verdict_cell(&f(&k["summary"])))
            .collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
    md.push('\n');

    for (kname, k) in &kernels {
        let g = &k["guest"];
        let s = &k["summary"];
        let _ = writeln!(
            md,
            "## Linux {kname} (`{}`)\n",
            g["kernel"].as_str().unwrap_or("?")
        );
        let settle = &g["settle"];
        let _ = writeln!(
            md,
            "Settled after {} baseline runs ({}converged within {:.1} %: {}); {} virtual s in the guest, {:.0} s wall.\n",
            settle["open_write_median_ns"]
                .as_array()
                .map_or(0, Vec::len),
            if settle["converged"] == true {
                ""
            } else {
                "**not** "
            },
            settle["tolerance"].as_f64().unwrap_or(0.0) * 100.0,
            settle["open_write_median_ns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .map(ns)
                .collect::<Vec<_>>()
                .join(" → "),
            (g["total_virtual_ns"].as_f64().unwrap_or(0.0) / 1e9).round(),
            k["wall_seconds"].as_f64().unwrap_or(0.0)
        );
        let present: Vec<&(&str, &str)> = CONDITIONS
            .iter()
            .filter(|(c, _)| OPS.iter().any(|(op, _)| s["micro"][op][c].is_object()))
            .collect();
        if !present.is_empty() {
            let _ = writeln!(md, "### Per operation: overhead against no BPF program\n");
            let _ = writeln!(
                md,
                "Median virtual ns per operation for \"no BPF program\", then each condition's median as \
                 overhead against it. Below each: [q1 – q3] of the condition's samples.\n"
            );
            let _ = writeln!(
                md,
                "| op | {} |",
                present
                    .iter()
                    .map(|(_, l)| *l)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(md, "|---|{}", "---:|".repeat(present.len()));
            for (op, oplabel) in OPS {
                let mut cells = Vec::new();
                for (c, _) in &present {
                    let v = &s["micro"][op][c];
                    let (Some(m), Some(q1), Some(q3)) =
                        (v["median"].as_f64(), v["q1"].as_f64(), v["q3"].as_f64())
                    else {
                        cells.push("—".to_owned());
                        continue;
                    };
                    let head = if *c == "none" {
                        format!("{} ns", ns(m))
                    } else {
                        pct(v["overhead"].as_f64())
                    };
                    cells.push(format!("{head}<br><sub>[{} – {}]</sub>", ns(q1), ns(q3)));
                }
                let _ = writeln!(md, "| {oplabel} | {} |", cells.join(" | "));
            }
            let _ = writeln!(md);
            let _ = writeln!(
                md,
                "Samples per figure (a sample is the mean of one batch of `batch` operations) / \
                 operations timed in all:\n"
            );
            let _ = writeln!(
                md,
                "| op | batch | {} |",
                present
                    .iter()
                    .map(|(_, l)| *l)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(md, "|---|---:|{}", "---:|".repeat(present.len()));
            for (op, oplabel) in OPS {
                let cells: Vec<String> = present
                    .iter()
                    .map(|(c, _)| {
                        let v = &s["micro"][op][c];
                        match (v["samples"].as_u64(), v["ops_timed"].as_u64()) {
                            (Some(n), Some(o)) => format!("{n} / {o}"),
                            _ => "—".to_owned(),
                        }
                    })
                    .collect();
                let _ = writeln!(
                    md,
                    "| {oplabel} | {} | {} |",
                    g["plans"][op]["n"].as_u64().unwrap_or(0),
                    cells.join(" | ")
                );
            }
            let _ = writeln!(md);
        }
        render_agents(&mut md, g, s);
        let wl = s["workload"].as_object().cloned().unwrap_or_default();
        if !wl.is_empty() {
            let _ = writeln!(md, "### Real workload\n");
            let _ = writeln!(
                md,
                "{}\n",
                g["workload"]["description"].as_str().unwrap_or("")
            );
            let _ = writeln!(
                md,
                "| condition | runs | median (virtual s) | min – max | overhead |"
            );
            let _ = writeln!(md, "|---|---:|---:|---:|---:|");
            for (c, l) in CONDITIONS {
                let Some(v) = wl.get(*c) else { continue };
                let _ = writeln!(
                    md,
                    "| {l} | {} | {:.4} | {:.4} – {:.4} | {} |",
                    v["samples"],
                    v["median"].as_f64().unwrap_or(0.0) / 1e9,
                    v["min"].as_f64().unwrap_or(0.0) / 1e9,
                    v["max"].as_f64().unwrap_or(0.0) / 1e9,
                    if *c == "none" {
                        "—".to_owned()
                    } else {
                        pct(v["overhead"].as_f64())
                    }
                );
            }
            let _ = writeln!(md);
        }
        render_pysuite(&mut md, k);
        render_userspace(&mut md, g);
        render_daemon(&mut md, g, s);
        render_approvals(&mut md, k);
    }
    let _ = writeln!(md, "## Where we are short, and why\n");
    md.push_str(&shortfalls(&kernels));
    let _ = writeln!(md, "\n## Method\n");
    md.push_str(METHOD);
    md.push('\n');
    md
}

/// Many agents in one engine: per op, the overhead against no BPF program of the reference
/// conditions and of the many-agents block's.
fn render_agents(md: &mut String, g: &Value, s: &Value) {
    let a = &g["agents"];
    if !AGENT_CONDITIONS
        .iter()
        .any(|(c, _)| s["micro"]["open_write"][c].is_object())
    {
        return;
    }
    let _ = writeln!(
        md,
        "### Many agents in one engine
"
    );
    let _ = writeln!(
        md,
        "gate loaded once through its library with room for {} agents, each its own cgroup under \
         `gate/` and its own compiled policy ({} × coding-agent, {} × ci-runner, each with a \
         workspace of its own: {} inode entries in all), as the daemon holds them; agents are added \
         and removed between runs while the programs stay attached. \"N agents\" is an unconfined \
         worker while N agents are confined; \"confined: one of 100\" is a worker in agent 0's \
         cgroup (coding-agent, the benchmark's workspace) while all 100 are. The first columns \
         repeat the reference conditions from the table above. Median overhead against no BPF \
         program, [q1 – q3] below, then samples / operations timed.\n",
        a["agents"], a["policies"]["coding-agent"], a["policies"]["ci-runner"], a["inode_entries"],
    );
    let cols: Vec<(&str, &str)> = [
        ("none", "no BPF program"),
        ("null", "empty BPF LSM programs"),
        ("gate_unconfined", "not confined, 1 agent (above)"),
    ]
    .into_iter()
    .chain(AGENT_CONDITIONS.iter().take(3).copied())
    .chain([
        ("gate_coding_agent", "confined: coding-agent (above)"),
        AGENT_CONDITIONS[3],
    ])
    .collect();
    let _ = writeln!(
        md,
        "| op | {} |",
        cols.iter().map(|(_, l)| *l).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---:|".repeat(cols.len()));
    for (op, oplabel) in OPS {
        let cells: Vec<String> = cols
            .iter()
            .map(|(c, _)| {
                let v = &s["micro"][op][c];
                let (Some(m), Some(q1), Some(q3)) =
                    (v["median"].as_f64(), v["q1"].as_f64(), v["q3"].as_f64())
                else {
                    return "—".to_owned();
                };
                let head = if *c == "none" {
                    format!("{} ns", ns(m))
                } else {
                    pct(v["overhead"].as_f64())
                };
                format!(
                    "{head}<br><sub>[{} – {}]<br>{} / {}</sub>",
                    ns(q1),
                    ns(q3),
                    v["samples"],
                    v["ops_timed"]
                )
            })
            .collect();
        let _ = writeln!(md, "| {oplabel} | {} |", cells.join(" | "));
    }
    let _ = writeln!(md);
    let mem = |k: &str| {
        (
            a[k]["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            a[k]["bpf_map_memlock_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        )
    };
    let (r1, m1) = mem("memory_1");
    let (rn, mn) = mem("memory_n");
    let switches: Vec<f64> = a["switches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["changed"].as_u64().is_some_and(|c| c > 0))
        .filter_map(|v| Some(v["ns"].as_f64()? / v["changed"].as_f64()?))
        .collect();
    let _ = writeln!(
        md,
        "Set-up (virtual s): compiling agent 0's policy {:.3} s (its paths are looked up in the \
         host root over 9p, uncached: the guest's clock jumps while it waits for the host, so \
         this one depends on the host's load), the other {} policies {:.3} s (chrooted in the \
         tmpfs root described under \"The daemon\"), load {:.3} s, attach {:.3} s; adding \
         the other {} agents {:.3} s{}. The process holding the engine: {:.1} MiB RSS and {:.2} MiB \
         of BPF maps with 1 agent, {:.1} MiB and {:.2} MiB with {}.\n",
        a["compile_first_ns"].as_f64().unwrap_or(0.0) / 1e9,
        a["agents"].as_u64().unwrap_or(1).saturating_sub(1),
        a["compile_rest_ns"].as_f64().unwrap_or(0.0) / 1e9,
        a["load_ns"].as_f64().unwrap_or(0.0) / 1e9,
        a["attach_ns"].as_f64().unwrap_or(0.0) / 1e9,
        a["add_agents"]["changed"],
        a["add_agents"]["ns"].as_f64().unwrap_or(0.0) / 1e9,
        match stats(&switches) {
            Some(st) => format!(
                " (per agent added or removed between runs: median {:.2} virtual ms)",
                st.median / 1e6
            ),
            None => String::new(),
        },
        r1,
        m1,
        rn,
        mn,
        a["agents"],
    );
}

/// The numbers of a JSON array (nothing for anything else).
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

/// The ask round trip through the daemon and what a connect costs under quotas and approvals
/// (bench/src/approvals.rs), from the raw samples.
fn render_approvals(md: &mut String, k: &Value) {
    let a = &k["guest"]["approvals"];
    if !a.is_object() {
        return;
    }
    let v = |key: &str| floats(&a[key]);
    let date = k["approvals_date"]
        .as_str()
        .map(|d| format!(" (measured {d})"))
        .unwrap_or_default();
    let _ = writeln!(md, "### Approvals and quotas{date}\n");
    let _ = writeln!(
        md,
        "The release `gate daemon` (in the tmpfs root described under \"The daemon\") with one \
         agent, `gate run --name bench-approvals -- gate-asker` (bench/src/asker.c: static, no \
         libc, UDP connects on command). {} round trips, each on a port of its own so each is a \
         new request: the agent's connect is denied (EPERM) by an `ask` rule; the daemon raises \
         the request and sends its notice, which `gate run` prints on the agent's stderr; the \
         benchmark, as the approver (root on the control socket), sends `Approve` for that id as \
         soon as the notice arrives and waits for `Answered` (the verdict is in the kernel's map \
         and the approval record in the audit stream); the agent's retry is then allowed by the \
         kernel. Virtual time:\n",
        a["n"]
    );
    let _ = writeln!(md, "| leg | p50 | p99 | max |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (key, what) in [
        (
            "notice_ns",
            "denied connect → notice on the agent's terminal",
        ),
        (
            "approve_call_ns",
            "`Approve` sent → `Answered` (verdict in the kernel)",
        ),
        ("retry_ns", "`Answered` → the retried connect returned 0"),
        ("round_trip_ns", "**denied → allowed retry**"),
    ] {
        let x = v(key);
        if x.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {what} | {:.2} ms | {:.2} ms | {:.2} ms |",
            quantile(&x, 0.5) / 1e6,
            quantile(&x, 0.99) / 1e6,
            quantile(&x, 1.0) / 1e6,
        );
    }
    let _ = writeln!(md);
    let calls = v("approve_call_ns");
    if calls.len() >= 200 {
        let tenth = calls.len() / 10;
        let first = stats(&calls[..tenth]).map_or(0.0, |s| s.median);
        let last = stats(&calls[calls.len() - tenth..]).map_or(0.0, |s| s.median);
        let _ = writeln!(
            md,
            "The answers stay in force through the run (one hour each): median of the first \
             {tenth} `Approve` calls {:.2} ms, of the last {tenth} (over {} answers in force) \
             {:.2} ms. Each answer is one line appended to the daemon's answers file \
             (`/run/gate/daemon/answers.jsonl`, from which a restarted daemon learns every \
             verdict's expiry).\n",
            first / 1e6,
            calls.len() - tenth,
            last / 1e6
        );
    }
    let c = &a["connect_ns"];
    let med = |name: &str| stats(&floats(&c[name])).map(|s| s.median);
    let (Some(base), Some(allowed)) = (med("unconfined"), med("allowed")) else {
        return;
    };
    let _ = writeln!(
        md,
        "What the kernel's decision costs: a UDP `connect` repeated on one socket ({} per \
         sample, {} rounds, the order rotated every round; median of the rounds' ns per \
         connect). The process's first allowed connect to a destination is an audit event \
         (ring buffer, daemon); the kernel counts the rest of that flow (`flow` records).\n",
        a["per_sample"], a["rounds"]
    );
    let _ = writeln!(
        md,
        "| condition | ns per connect | vs unconfined | vs plain allow rule |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (name, what) in [
        ("unconfined", "not an agent (gate loaded)"),
        ("allowed", "agent, plain allow rule"),
        (
            "limited",
            "agent, allow rule with a `limit` (counted, never reached)",
        ),
        (
            "approved_object",
            "agent, `ask` rule approved for this address",
        ),
        ("approved_rule", "agent, `ask` rule approved rule-wide"),
    ] {
        if let Some(x) = med(name) {
            let _ = writeln!(
                md,
                "| {what} | {x:.0} | {:+.1} % | {:+.1} % |",
                (x / base - 1.0) * 100.0,
                (x / allowed - 1.0) * 100.0
            );
        }
    }
    let _ = writeln!(md);
}

/// The real daemon: start-up, memory with 0/1/10/100 agents, `gate run` to first instruction.
fn render_daemon(md: &mut String, g: &Value, s: &Value) {
    let d = &g["daemon"];
    if !d.is_object() {
        return;
    }
    let _ = writeln!(
        md,
        "### The daemon
"
    );
    let _ = writeln!(
        md,
        "The release `gate daemon` with its default capacity ({}), started as root in the guest \
         chrooted with its clients in a root built in tmpfs (the loader and libraries, \
         /etc/passwd, the directories and files the policies name; /proc, /sys, /dev, /run, \
         /root and /tmp bound in), so that nothing it looks up waits for the host over 9p; \
         ready (control socket answering) {:.2} virtual s after it was spawned. Its memory (VmRSS \
         from `/proc/PID/status`) and the `memlock` of the BPF maps it holds (`/proc/PID/fdinfo`; \
         the maps are sized for the configured capacity; maps the kernel fills on demand, \
         such as the LPM tries, grow with their entries), as `gate run` clients add agents:\n",
        d["config"].as_str().unwrap_or("?"),
        d["ready_ns"].as_f64().unwrap_or(0.0) / 1e9,
    );
    let _ = writeln!(md, "| agents | daemon RSS | BPF map memory |");
    let _ = writeln!(md, "|---:|---:|---:|");
    for m in d["memory"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {:.1} MiB | {:.2} MiB |",
            m["agents"],
            m["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            m["bpf_map_memlock_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        );
    }
    let _ = writeln!(md);
    let l = &s["daemon"]["launch"];
    if l.is_object() {
        let ms = |k: &str| l[k].as_f64().unwrap_or(0.0) / 1e6;
        let mut para = format!(
            "From `gate run` to the command's first instruction, through the daemon: \
             **p50 {:.1} ms, p99 {:.1} ms** (virtual: instructions executed by the whole guest, \
             not wall time) [q1 – q3: {:.1} – {:.1} ms; min – max: {:.1} – {:.1} ms; {} launches]. \
             Timed from the benchmark's clock read just before it spawns `gate run --policy P \
             --workspace W --name N -- W/bin/gate-stamp` to the first instructions of \
             `gate-stamp` (static, no libc), which read `CLOCK_MONOTONIC`: the client starts, \
             asks the daemon over the socket, the daemon compiles the policy, creates the \
             agent's cgroup, adds the agent to its engine and moves the client in, the client \
             starts the command as its child. Launch k runs with k − 1 agents already confined (policies \
             alternating coding-agent and ci-runner): the first tenth's median {:.1} ms, the \
             last tenth's {:.1} ms.",
            ms("median"),
            ms("p99"),
            ms("q1"),
            ms("q3"),
            ms("min"),
            ms("max"),
            l["samples"],
            ms("first_tenth_median"),
            ms("last_tenth_median"),
        );
        let nd = &s["daemon"]["no_daemon"];
        if nd.is_object() {
            let v: Vec<String> = d["no_daemon"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["ns"].as_f64())
                .map(|x| format!("{:.2}", x / 1e9))
                .collect();
            let _ = write!(
                para,
                " `gate run --no-daemon` (its own engine: reads the kernel's BTF, loads and \
                 verifies the programs, attaches them) takes {:.2} virtual s to the same point \
                 (median of {} runs: {} s).",
                nd["median"].as_f64().unwrap_or(0.0) / 1e9,
                nd["samples"],
                v.join(", ")
            );
        }
        let _ = writeln!(md, "{para}\n");
    }
}

fn render_userspace(md: &mut String, g: &Value) {
    let setups = g["gate_setups"].as_object().cloned().unwrap_or_default();
    if setups.is_empty() && g["events"].is_null() {
        return;
    }
    let _ = writeln!(md, "### Userspace\n");
    if !setups.is_empty() {
        let _ = writeln!(
            md,
            "Setting gate up through its library as `gate run` does (virtual s; under TCG the verifier's \
             wall time is far longer). RSS is the process that loaded gate, after attaching; map memory \
             is the `memlock` of every BPF map it holds (`/proc/self/fdinfo`).\n"
        );
        let _ = writeln!(
            md,
            "| policy | rules | inode entries | compile | load + fill maps | attach (verify) | RSS | BPF map memory |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (_, s) in &setups {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} s | {:.3} s | {:.3} s | {:.1} MiB | {:.2} MiB |",
                s["block"].as_str().unwrap_or("?"),
                s["rules"],
                s["inode_entries"],
                s["compile_ns"].as_f64().unwrap_or(0.0) / 1e9,
                s["load_ns"].as_f64().unwrap_or(0.0) / 1e9,
                s["attach_ns"].as_f64().unwrap_or(0.0) / 1e9,
                s["loader_rss_kib_after"].as_f64().unwrap_or(0.0) / 1024.0,
                s["bpf_map_memlock_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            );
        }
        let _ = writeln!(md);
    }
    let e = &g["events"];
    if e.is_object() {
        let _ = writeln!(
            md,
            "Events, kernel → audit file: {} denied opens by a confined process, drained from the ring \
             buffer into the signed, hash-chained log through `gate::report::LogSink` (as `gate run --log`): \
             **{:.0} events per virtual second** ({:.3} virtual s from the first open to the last record \
             flushed; the opens alone took {:.3} s). {} decision records in the log, {} events lost in the \
             kernel, {} log bytes.\n",
            e["n"],
            e["events_per_second"].as_f64().unwrap_or(0.0),
            e["kernel_to_log_ns"].as_f64().unwrap_or(0.0) / 1e9,
            e["loop_ns"].as_f64().unwrap_or(0.0) / 1e9,
            e["decision_records_in_log"],
            e["lost_in_kernel"],
            e["log_bytes"],
        );
    }
    if let Some(n) = g["null_attach_ns"].as_array().filter(|a| !a.is_empty()) {
        let v: Vec<String> = n
            .iter()
            .filter_map(Value::as_f64)
            .map(|x| format!("{:.2}", x / 1e9))
            .collect();
        let _ = writeln!(
            md,
            "Attaching the empty programs took {} virtual s (each phase-A round).\n",
            v.join(", ")
        );
    }
}

/// The goals missed, with the figures and the reasons the design gives.
fn shortfalls(kernels: &serde_json::Map<String, Value>) -> String {
    let mut out = String::new();
    for (kname, k) in kernels {
        let s = &k["summary"];
        let mut lines = Vec::new();
        let u = goal_unconfined(s);
        if u.met == Some(false) {
            lines.push(format!(
                "- Unconfined processes: {}. Every gate program first asks whether the task is in a \
                 confined cgroup (`bpf_get_current_ancestor_cgroup_id` at the configured level, one array \
                 lookup for the config); that check is what gate adds to the empty programs' floor.",
                u.text
            ));
        }
        let c = goal_confined(s);
        if c.met == Some(false) {
            lines.push(format!(
                "- Confined, 10,000 rules: {}. A confined file operation walks the path from the file up \
                 to the root (deny overrides allow, so the walk cannot stop at the first allow). The size \
                 of the policy hardly matters (compare the coding-agent column: a Bloom filter in front \
                 of a hash map); the walk's depth does. Measured with `kernel.bpf_stats_enabled` in icount \
                 guests, per call of the `file_open` program for a confined open-for-write: each \
                 level in the object's own file system (BTF-typed loads, one `bpf_loop` iteration) \
                 about 125 virtual ns on 6.1 and 6.12; each level above the first mount point, \
                 where a `struct mount` is only reachable by `container_of` and the walk needs \
                 helper reads, about 330 ns. A file three levels down a tmpfs mounted on `/` \
                 costs about 3,900 ns in all, so most of the cost is per call, not per level: \
                 the mount crossings (two helper reads each: the parent mount's fields and \
                 its device), the helper read that hides the request from the verifier before the \
                 event code, and the verdict. Landlock keeps \
                 its rules on the inodes' security blobs and walks with plain loads. Next steps: \
                 a per-directory verdict cache in inode storage (invalidated on rename, link and \
                 mount), and `bpf_rdonly_cast` (6.2+) to stay on typed loads across mount \
                 points. \
                 Network operations and exec pay for their record instead: every allowed connect, \
                 sendto with a destination and exec is an audit event (a ring-buffer reservation, \
                 the task's identity, the addresses or the path's names), by design; a UDP sender \
                 pays it per datagram. Recording the first datagram per socket and destination \
                 only is the obvious next step.",
                c.text
            ));
        }
        let w = goal_workload(s);
        if w.met == Some(false) {
            lines.push(format!("- Real workload: {}.", w.text));
        }
        let a = goal_agents(s);
        if a.met == Some(false) {
            lines.push(format!(
                "- Many agents: {}. An unconfined task's cost should not depend on the number of \
                 agents: each program asks for the task's ancestor cgroup at each level where \
                 agents sit (one level here) and looks it up in the `AGENTS` hash map.",
                a.text
            ));
        }
        let unmeasured: Vec<&str> = [
            ("unconfined", &u),
            ("10,000 rules", &c),
            ("workload", &w),
            ("many agents", &a),
        ]
        .iter()
        .filter(|(_, v)| v.met.is_none())
        .map(|(n, _)| *n)
        .collect();
        if !unmeasured.is_empty() {
            lines.push(format!(
                "- Not measured in this run: {}.",
                unmeasured.join(", ")
            ));
        }
        if lines.is_empty() {
            let _ = writeln!(out, "Linux {kname}: every goal met.\n");
        } else {
            let _ = writeln!(out, "Linux {kname}:\n\n{}\n", lines.join("\n"));
        }
    }
    out
}

const METHOD: &str = "\
- **Where.** Each kernel boots in its own qemu TCG guest with `-icount shift=0,sleep=off`: guest \
virtual time advances one ns per guest instruction (summed over the guest's 2 vCPUs), and an idle \
guest jumps to its next timer instead of waiting. Figures are instruction counts, repeatable from \
boot to boot, independent of the host's load; they do not model caches or the real speed of a \
CPU. The guests run side by side. Every file a timed loop touches is in tmpfs (the 9p host root is \
only read while preparing: waiting for the host would make the guest clock jump).
- **Who measures.** `gate-bench suite` (bench/) runs as root in the guest, pinned to CPU 0. Each \
measurement is a freshly forked worker of that small process, which confines itself as its \
condition says (joins gate's cgroup by writing its pid to `cgroup.procs`, or applies Landlock) and \
first proves it: a write outside the allowed places must fail (EPERM for gate, EACCES for \
Landlock) or succeed (unconfined). Every timed operation is checked too: a denied operation aborts \
the run. BPF programs are loaded in separate holder processes, so the measuring process stays \
the same size in every condition (fork cost grows with the forking process's memory). Time is \
`clock_gettime(CLOCK_MONOTONIC)`.
- **Conditions.** No BPF program; the empty BPF LSM programs on gate's hooks \
(`gate::engine::NullEngine`, which only pass the previous verdict on: the floor any BPF LSM \
enforcer pays); gate loaded and attached, the worker not in its cgroup; the worker confined by \
`policies/coding-agent.toml` (`${workspace}` = the benchmark's directory); confined by the same \
policy plus 1,000 or 10,000 rules allowing writes below as many directories created in tmpfs; \
Landlock doing the same job as far as it can (exec below /usr /bin /sbin /lib /lib64 and the \
workspace; writes below the workspace, /tmp, /var/tmp, /dev/shm and to /dev/null; reads handled \
and allowed everywhere, because Landlock cannot deny the secrets below an allowed parent; TCP \
connect to the benchmark's port only where Landlock has ABI ≥ 4; UDP is outside Landlock's reach).
- **Operations.** exec = fork + execve of a static busybox `true` (copied into the workspace) + \
waitpid; open for write = `open(O_WRONLY|O_CREAT)` of an existing file + close; open for read = \
`open(O_RDONLY)` + close; rename = one `rename(2)` in the workspace; TCP connect = socket + \
connect to a 127.0.0.1 listener + accept + abortive close of both; UDP sendto = `sendto` of 32 \
bytes to a bound 127.0.0.1 socket + `recv`. Each op runs untimed warm-up iterations, then batches \
of N timed operations; a sample is one batch's ns divided by N. The tables give the median and \
the interquartile range of the samples, and how many samples and operations each figure has.
- **Settling and order.** After boot the guest repeats a no-BPF open+close run (median of 5 \
batches of 1,000) until two runs in a row agree within 0.5 %, then makes one discarded pass of \
everything. Phase A interleaves no BPF / empty programs / Landlock in rounds, reversing the order \
every other round (A B C, C B A, …); the empty programs are attached and detached every round. \
Phase B loads gate once per policy (the kernel's verifier takes about 5 virtual s per load) \
and interleaves \"loaded, not confined\" and \"confined\" in rounds, then detaches and measures \
no-BPF again. Overheads are ratios of medians against all no-BPF samples of the same boot.
- **Real workload.** `make` builds a small generated C project with gcc 12 (chrooted in a tmpfs \
copy of the toolchain inside the workspace, so nothing waits for the host) and runs the result; \
timed from the start of make to the program's exit.
- **Userspace.** Policy compile, engine load (maps filled) and attach (the kernel verifies the \
programs) timed in the holder for every policy; its RSS and the `memlock` of its BPF maps from \
`/proc/self/status` and `/proc/self/fdinfo`. Events per second: a confined worker makes N opens \
the policy denies while the holder drains gate's ring buffer into a signed audit log through \
`gate::report::LogSink` (what `gate run --log` does), counted from the first open to the \
flush that wrote the N-th decision record.
- **Many agents.** After phase B, gate is loaded once more through its library with room for 100 \
agents (one engine, as the daemon holds it): 100 cgroups under `gate/`, 100 policies compiled \
(alternately coding-agent and ci-runner, each with its own workspace; agent 0 is coding-agent with \
the benchmark's workspace). Rounds of unconfined workers with 1, 10 and 100 agents confined \
(`Engine::add_agent` / `remove_agent` between runs, the programs attached throughout; the order \
reversed every other round), and of a worker in agent 0's cgroup while all 100 are confined; then \
detach and one no-BPF run.
- **The daemon.** Last, the release `gate daemon` (copied into tmpfs with its config, default \
capacity) is started and 100 `gate run` clients are launched one after the other through its \
control socket, each running `gate-stamp` (bench/src/stamp.c, static, no libc) from its own \
workspace, which prints `CLOCK_MONOTONIC` at its first instruction and then waits for end of file \
on stdin, so all 100 agents stay alive. A launch's time is that stamp minus the clock read just \
before spawning the client; p50 and p99 over the 100 launches. The daemon's VmRSS and the \
`memlock` of its BPF maps are read from `/proc` with 0, 1, 10 and 100 agents. Then the stamps end, \
the daemon is stopped (SIGTERM) and `gate unload` detaches its programs, and a few `gate run \
--no-daemon` runs are timed the same way.
- **Approvals and quotas.** A fresh daemon in the same kind of root, one agent running \
`gate-asker` (bench/src/asker.c, static, no libc) under a policy of `ask` rules on loopback ports. \
1,000 round trips, one new request each: denied connect, the notice `gate run` prints on the \
agent's stderr (read by the benchmark as it arrives), `Approve` over the control socket as root, \
the retried connect; each leg timed with the guest's clock, p50 and p99. Then the cost of a \
decision: a UDP `connect` repeated 2,000 times on one socket per sample, in 5 rounds with the order \
of the conditions rotated (a process outside the agent, the agent under a plain allow rule, under \
a rule with a `limit` it never reaches, under an `ask` rule approved for that address and one \
approved rule-wide). `cargo xtask bench -- --only approvals` measures this part alone and updates \
its figures in place.
";

/// The host's 1-minute load average (wall times depend on it; the figures do not).
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn utc_date() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let hms = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        hms / 3600,
        (hms / 60) % 60
    )
}
