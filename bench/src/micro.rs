//! The per-operation loops. Each operation is timed in batches ("samples") of `n` operations
//! after `warmup` untimed ones; a sample is the batch's virtual ns divided by `n`. Every
//! operation's result is checked: a loop whose operations fail (a policy that denies what it
//! should allow) is an error, never a fast figure.
use std::{ffi::CString, path::Path};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::util::{cstring, errno, now_ns};

pub const TCP_PORT: u16 = 47123;
pub const UDP_PORT: u16 = 47124;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Exec,
    OpenWrite,
    OpenRead,
    Rename,
    TcpConnect,
    UdpSendto,
    MmapExec,
    UnixConnect,
    Signal,
}

impl Op {
    pub fn id(self) -> &'static str {
        match self {
            Op::Exec => "exec",
            Op::OpenWrite => "open_write",
            Op::OpenRead => "open_read",
            Op::Rename => "rename",
            Op::TcpConnect => "tcp_connect",
            Op::UdpSendto => "udp_sendto",
            Op::MmapExec => "mmap_exec",
            Op::UnixConnect => "unix_connect",
            Op::Signal => "signal",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Op::Exec => "fork + execve of a static busybox `true` + waitpid",
            Op::OpenWrite => "open(O_WRONLY|O_CREAT) of an existing file + close",
            Op::OpenRead => "open(O_RDONLY) + close",
            Op::Rename => "rename(2) within one directory (a→b, then b→a: one op each)",
            Op::TcpConnect => {
                "socket + connect to a 127.0.0.1 listener + accept + close both (RST, no TIME_WAIT)"
            }
            Op::UdpSendto => "sendto of 32 bytes to a bound 127.0.0.1 socket + recv of it",
            Op::MmapExec => {
                "mmap of a shared library's first page with PROT_READ|PROT_EXEC + munmap (what a \
                 dynamic loader does per segment; the descriptor stays open)"
            }
            Op::UnixConnect => {
                "socket(AF_UNIX) + connect to a listener of the benchmark's own (an abstract \
                 name) + accept + close both"
            }
            Op::Signal => "kill(2) of signal 0 to the benchmark's own process (checked, not sent)",
        }
    }
}

/// How many operations, per op: `warmup` untimed, then `samples` batches of `n`.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub warmup: usize,
    pub n: usize,
    pub samples: usize,
}

/// Paths the operations use (all in tmpfs, inside the workspace).
pub struct Fixture {
    pub busybox: CString,
    pub library: CString,
    pub write_file: CString,
    pub read_file: CString,
    pub rename_a: CString,
    pub rename_b: CString,
}

impl Fixture {
    pub fn new(ws: &Path) -> Fixture {
        let src = ws.join("src");
        Fixture {
            busybox: cstring(&ws.join("bin/busybox")),
            library: cstring(&ws.join("bin/libc.so.6")),
            write_file: cstring(&src.join("written.txt")),
            read_file: cstring(&src.join("read.txt")),
            rename_a: cstring(&src.join("rename-a.txt")),
            rename_b: cstring(&src.join("rename-b.txt")),
        }
    }
}

/// Runs every op of `plans` and returns `{op: [ns/op per sample]}`.
pub fn run_all(fx: &Fixture, plans: &[(Op, Plan)]) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (op, plan) in plans {
        let samples = run_op(fx, *op, *plan)?;
        out.insert(op.id().into(), json!(samples));
    }
    Ok(Value::Object(out))
}

fn run_op(fx: &Fixture, op: Op, plan: Plan) -> Result<Vec<f64>> {
    match op {
        Op::Exec => timed(plan, || exec_true(fx)),
        Op::OpenWrite => timed(plan, || {
            open_close(&fx.write_file, libc::O_WRONLY | libc::O_CREAT)
        }),
        Op::OpenRead => timed(plan, || open_close(&fx.read_file, libc::O_RDONLY)),
        Op::Rename => {
            // Leave the file as `a` whatever happened before.
            // SAFETY: plain syscall on valid C strings.
            unsafe { libc::rename(fx.rename_b.as_ptr(), fx.rename_a.as_ptr()) };
            let mut flip = false;
            timed(plan, || {
                flip = !flip;
                let (from, to) = if flip {
                    (&fx.rename_a, &fx.rename_b)
                } else {
                    (&fx.rename_b, &fx.rename_a)
                };
                // SAFETY: plain syscall on valid C strings.
                if unsafe { libc::rename(from.as_ptr(), to.as_ptr()) } != 0 {
                    bail!("rename failed: errno {}", errno());
                }
                Ok(())
            })
        }
        Op::TcpConnect => {
            let l = Tcp::listener()?;
            timed(plan, || l.connect_accept())
        }
        Op::UdpSendto => {
            let u = Udp::new()?;
            timed(plan, || u.send_recv())
        }
        Op::MmapExec => {
            // SAFETY: plain syscall on a valid C string.
            let fd = unsafe { libc::open(fx.library.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                bail!("open {:?} failed: errno {}", fx.library, errno());
            }
            let fd = Fd(fd);
            timed(plan, || map_exec(fd.0))
        }
        Op::UnixConnect => {
            let l = Unix::listener()?;
            timed(plan, || l.connect_accept())
        }
        Op::Signal => {
            // SAFETY: plain syscall.
            let me = unsafe { libc::getpid() };
            timed(plan, || {
                // SAFETY: signal 0 checks the permission and sends nothing.
                if unsafe { libc::kill(me, 0) } != 0 {
                    bail!("kill(self, 0) failed: errno {}", errno());
                }
                Ok(())
            })
        }
    }
}

/// A unix stream listener bound to an abstract name of this process's own.
struct Unix {
    listener: Fd,
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl Unix {
    fn listener() -> Result<Unix> {
        // SAFETY: an all-zero sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as u16;
        // SAFETY: plain syscall.
        let name = format!("gate-bench-{}", unsafe { libc::getpid() });
        for (d, b) in addr.sun_path[1..].iter_mut().zip(name.bytes()) {
            *d = b as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
        let listener = unix_socket()?;
        // SAFETY: valid address buffer of `len` bytes.
        unsafe {
            if libc::bind(listener.0, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                bail!("bind @{name} failed: errno {}", errno());
            }
            if libc::listen(listener.0, 64) != 0 {
                bail!("listen @{name} failed: errno {}", errno());
            }
        }
        Ok(Unix {
            listener,
            addr,
            len,
        })
    }

    fn connect_accept(&self) -> Result<()> {
        let c = unix_socket()?;
        // SAFETY: valid address buffer.
        unsafe {
            if libc::connect(
                c.0,
                (&self.addr as *const libc::sockaddr_un).cast(),
                self.len,
            ) != 0
            {
                bail!("unix connect failed: errno {}", errno());
            }
        }
        drop(accept(&self.listener)?);
        Ok(())
    }
}

fn unix_socket() -> Result<Fd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket(AF_UNIX) failed: errno {}", errno());
    }
    Ok(Fd(fd))
}

fn timed(plan: Plan, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..plan.warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        let t0 = now_ns();
        for _ in 0..plan.n {
            f()?;
        }
        samples.push((now_ns() - t0) as f64 / plan.n as f64);
    }
    Ok(samples)
}

fn open_close(path: &CString, flags: i32) -> Result<()> {
    // SAFETY: plain syscalls on a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        bail!("open {path:?} failed: errno {}", errno());
    }
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    Ok(())
}

fn map_exec(fd: i32) -> Result<()> {
    // SAFETY: a private read-only mapping of an open file, unmapped at once.
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            fd,
            0,
        );
        if m == libc::MAP_FAILED {
            bail!("mmap(PROT_EXEC) failed: errno {}", errno());
        }
        libc::munmap(m, 4096);
    }
    Ok(())
}

fn exec_true(fx: &Fixture) -> Result<()> {
    let argv = [c"busybox".as_ptr(), c"true".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: the child only calls execve and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed: errno {}", errno());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only.
        unsafe {
            libc::execve(fx.busybox.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(100 + *libc::__errno_location());
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("exec of busybox true failed: status {status:#x} (exit 100+errno = exec failed)");
    }
    Ok(())
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

const SOCKLEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing an fd we own.
        unsafe { libc::close(self.0) };
    }
}

/// The next connection on `listener`.
fn accept(listener: &Fd) -> Result<Fd> {
    // SAFETY: accepting on a listener we own, without the peer's address.
    let a = unsafe {
        libc::accept4(
            listener.0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if a < 0 {
        bail!("accept failed: errno {}", errno());
    }
    Ok(Fd(a))
}

fn socket(ty: i32) -> Result<Fd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket failed: errno {}", errno());
    }
    Ok(Fd(fd))
}

fn bind(fd: &Fd, port: u16) -> Result<()> {
    let one: i32 = 1;
    let addr = sockaddr(port);
    // SAFETY: valid option and address buffers.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const i32).cast(),
            4,
        );
        if libc::bind(fd.0, (&addr as *const libc::sockaddr_in).cast(), SOCKLEN) != 0 {
            bail!("bind 127.0.0.1:{port} failed: errno {}", errno());
        }
    }
    Ok(())
}

struct Tcp {
    listener: Fd,
}

impl Tcp {
    fn listener() -> Result<Tcp> {
        let l = socket(libc::SOCK_STREAM)?;
        bind(&l, TCP_PORT)?;
        // SAFETY: plain syscall.
        if unsafe { libc::listen(l.0, 64) } != 0 {
            bail!("listen failed: errno {}", errno());
        }
        Ok(Tcp { listener: l })
    }

    fn connect_accept(&self) -> Result<()> {
        let c = socket(libc::SOCK_STREAM)?;
        let addr = sockaddr(TCP_PORT);
        // SAFETY: valid address buffer.
        unsafe {
            if libc::connect(c.0, (&addr as *const libc::sockaddr_in).cast(), SOCKLEN) != 0 {
                bail!("connect 127.0.0.1:{TCP_PORT} failed: errno {}", errno());
            }
        }
        let a = accept(&self.listener)?;
        // SAFETY: fds we own.
        unsafe {
            // Abortive close: no TIME_WAIT, so thousands of connects do not exhaust ports.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            libc::setsockopt(
                c.0,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            drop(c);
            drop(a);
        }
        Ok(())
    }
}

struct Udp {
    tx: Fd,
    rx: Fd,
}

impl Udp {
    fn new() -> Result<Udp> {
        let rx = socket(libc::SOCK_DGRAM)?;
        bind(&rx, UDP_PORT)?;
        Ok(Udp {
            tx: socket(libc::SOCK_DGRAM)?,
            rx,
        })
    }

    fn send_recv(&self) -> Result<()> {
        let addr = sockaddr(UDP_PORT);
        let buf = [0x5au8; 32];
        let mut rbuf = [0u8; 64];
        // SAFETY: valid buffers; fds we own.
        unsafe {
            let n = libc::sendto(
                self.tx.0,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                SOCKLEN,
            );
            if n != buf.len() as isize {
                bail!("sendto failed: errno {}", errno());
            }
            let r = libc::recv(self.rx.0, rbuf.as_mut_ptr().cast(), rbuf.len(), 0);
            if r != buf.len() as isize {
                bail!("recv failed: errno {}", errno());
            }
        }
        Ok(())
    }
}
