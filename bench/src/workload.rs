//! The real workload: `make` building a small C project (20 generated .c files + a header,
//! compiled by gcc 12 and linked, then the program run), the loop an agent repeats.
//!
//! Every file it touches must be in tmpfs: a guest under `-icount sleep=off` that waits for
//! the host (the 9p root) jumps its clock to the next timer, which would swamp what we measure.
//! So the toolchain (make, gcc, cc1, as, ld, their libraries, the C headers the sources
//! include) is copied into a root inside the workspace, and the build runs chrooted there.
use std::{
    collections::BTreeSet,
    ffi::CString,
    fmt::Write as _,
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::{cstring, errno, now_ns};

pub const FILES: usize = 8;
const PROGRAMS: &[&str] = &[
    "/usr/bin/make",
    "/usr/bin/gcc",
    "/usr/bin/as",
    "/usr/bin/ld",
    "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
    "/usr/lib/gcc/x86_64-linux-gnu/12/collect2",
    "/usr/lib/gcc/x86_64-linux-gnu/12/lto-wrapper",
    "/usr/lib/gcc/x86_64-linux-gnu/12/liblto_plugin.so",
];
const DATA: &[&str] = &[
    "/usr/lib/gcc/x86_64-linux-gnu/12/crtbegin.o",
    "/usr/lib/gcc/x86_64-linux-gnu/12/crtbeginS.o",
    "/usr/lib/gcc/x86_64-linux-gnu/12/crtend.o",
    "/usr/lib/gcc/x86_64-linux-gnu/12/crtendS.o",
    "/usr/lib/gcc/x86_64-linux-gnu/12/libgcc.a",
    "/usr/lib/gcc/x86_64-linux-gnu/12/libgcc_eh.a",
    "/usr/lib/gcc/x86_64-linux-gnu/12/libgcc_s.so",
    "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "/usr/lib/x86_64-linux-gnu/crt1.o",
    "/usr/lib/x86_64-linux-gnu/Scrt1.o",
    "/usr/lib/x86_64-linux-gnu/crti.o",
    "/usr/lib/x86_64-linux-gnu/crtn.o",
    "/usr/lib/x86_64-linux-gnu/libc.so",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libc_nonshared.a",
    "/usr/lib64/ld-linux-x86-64.so.2",
];

pub struct Workload {
    pub root: PathBuf,
    pub info: Value,
}

/// Builds the tool root and the project below `ws`.
pub fn prepare(ws: &Path) -> Result<Workload> {
    let root = ws.join("toolroot");
    let build = root.join("build");
    fs::create_dir_all(&build)?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        fs::create_dir_all(root.join(target))?;
        let _ = symlink(target, root.join(link));
    }
    fs::create_dir_all(root.join("tmp"))?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::create_dir_all(root.join("dev"))?;
    write_project(&build)?;

    let mut files: BTreeSet<PathBuf> = DATA.iter().map(PathBuf::from).collect();
    for p in PROGRAMS {
        files.insert(PathBuf::from(p));
        files.extend(shared_libs(p)?);
    }
    files.extend(headers(&build)?);
    let mut bytes = 0u64;
    for f in &files {
        bytes += copy_in(&root, f)?;
    }
    // make runs recipes with /bin/sh: the static busybox is the shell.
    copy_big(Path::new("/bin/busybox"), &root.join("usr/bin/busybox"))?;
    let _ = symlink("busybox", root.join("usr/bin/sh"));
    let _ = symlink("busybox", root.join("usr/bin/rm"));
    // /dev/null for the tools: the guest's device node (same inode, so policies see /dev/null).
    fs::write(root.join("dev/null"), b"")?;
    nix::mount::mount(
        Some("/dev/null"),
        &root.join("dev/null"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("bind-mounting /dev/null into the tool root")?;
    Ok(Workload {
        info: json!({
            "description": format!(
                "make -j1: gcc -O1 compiles {FILES} generated C files and a main.c (each includes stdio.h, \
                 string.h and a project header) and links them; the program is then run once; \
                 chrooted in a tmpfs copy of the toolchain inside the workspace"
            ),
            "files_copied": files.len(),
            "bytes_copied": bytes,
        }),
        root,
    })
}

fn write_project(build: &Path) -> Result<()> {
    let mut header = String::from("#ifndef PROJ_H\n#define PROJ_H\n#include <stddef.h>\n");
    let mut main = String::from(
        "#include <stdio.h>\n#include \"proj.h\"\nint main(void) {\n  unsigned long s = 0;\n",
    );
    for i in 0..FILES {
        let _ = writeln!(header, "unsigned long f{i:02}(const char *s, size_t n);");
        let _ = writeln!(main, "  s += f{i:02}(\"gate benchmark\", {});", 5 + i);
        let src = format!(
            "#include <stdio.h>\n#include <string.h>\n#include \"proj.h\"\n\n\
             static unsigned long mix{i}(unsigned long h, unsigned char c) {{\n\
             \x20 return (h ^ c) * 1099511628211UL + {i};\n}}\n\n\
             unsigned long f{i:02}(const char *s, size_t n) {{\n\
             \x20 char buf[64];\n  unsigned long h = 14695981039346656037UL;\n\
             \x20 snprintf(buf, sizeof buf, \"%s-%zu-%d\", s, n, {i});\n\
             \x20 for (size_t k = 0; k < strlen(buf); k++) h = mix{i}(h, (unsigned char)buf[k]);\n\
             \x20 for (size_t k = 0; k < n * 100; k++) h = mix{i}(h, (unsigned char)k);\n\
             \x20 return h;\n}}\n"
        );
        fs::write(build.join(format!("f{i:02}.c")), src)?;
    }
    header.push_str("#endif\n");
    main.push_str("  printf(\"%lu\\n\", s);\n  return 0;\n}\n");
    fs::write(build.join("proj.h"), header)?;
    fs::write(build.join("main.c"), main)?;
    let objs: Vec<String> = (0..FILES)
        .map(|i| format!("f{i:02}.o"))
        .chain(["main.o".into()])
        .collect();
    let makefile = format!(
        "CC = gcc\nCFLAGS = -O1 -Wall\nOBJS = {}\n\napp: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n\
         %.o: %.c proj.h\n\t$(CC) $(CFLAGS) -c $<\n\nclean:\n\trm -f $(OBJS) app\n",
        objs.join(" ")
    );
    fs::write(build.join("Makefile"), makefile)?;
    Ok(())
}

/// Absolute paths of the shared libraries `ldd` lists for `program`.
fn shared_libs(program: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect())
}

/// The system headers the sources include, as gcc's dependency output lists them.
fn headers(build: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("gcc")
        .args(["-M", "-O1"])
        .arg(build.join("f00.c"))
        .arg(build.join("main.c"))
        .current_dir(build)
        .output()
        .context("running gcc -M")?;
    if !out.status.success() {
        bail!("gcc -M failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/') && w.ends_with(".h"))
        .map(PathBuf::from)
        .collect())
}

/// Copies `file` (following symlinks) to the same path below `root`; returns its size.
fn copy_in(root: &Path, file: &Path) -> Result<u64> {
    let dir = file.parent().context("file without a parent")?;
    let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let dest_dir = root.join(dir.strip_prefix("/").unwrap_or(&dir));
    fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join(file.file_name().context("no file name")?);
    if dest.exists() {
        return Ok(0);
    }
    copy_big(file, &dest).with_context(|| format!("copying {}", file.display()))
}

/// Copies with 1 MiB reads: the host root is 9p, where small reads cost a round trip each.
pub fn copy_big(from: &Path, to: &Path) -> Result<u64> {
    use std::io::{Read, Write};
    let mut src = fs::File::open(from)?;
    let mode = src.metadata()?.permissions().mode();
    let mut dst = fs::File::create(to)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(total)
}

/// One build: chroot into the tool root, `make -s`, run the program, then clean (untimed).
/// Runs in a worker that is already confined as its condition requires. Returns virtual ns.
pub fn run_once(root: &Path) -> Result<u64> {
    let root_c = cstring(root);
    // SAFETY: plain syscalls on valid C strings.
    unsafe {
        if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/build".as_ptr()) != 0 {
            bail!("chroot into the tool root failed: errno {}", errno());
        }
    }
    let t0 = now_ns();
    spawn_wait(&["/usr/bin/make", "-s", "-j1"])?;
    spawn_wait(&["/build/app"])?;
    let t = now_ns() - t0;
    spawn_wait(&["/usr/bin/make", "-s", "clean"])?;
    Ok(t)
}

fn spawn_wait(argv: &[&str]) -> Result<()> {
    let args: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let env = [
        c"PATH=/usr/bin:/bin".as_ptr(),
        c"LANG=C".as_ptr(),
        c"TMPDIR=/tmp".as_ptr(),
        std::ptr::null(),
    ];
    // Output goes to /dev/null (the console would cost time and bytes).
    // SAFETY: the child only makes async-signal-safe calls before execve.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed: errno {}", errno());
    }
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::dup2(fd, 1);
            }
            libc::execve(ptrs[0], ptrs.as_ptr(), env.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{} failed in the workload: status {status:#x}",
            argv.join(" ")
        );
    }
    Ok(())
}

/// Unmounts what [`prepare`] mounted.
pub fn cleanup(w: &Workload) {
    let _ = nix::mount::umount(&w.root.join("dev/null"));
}
