//! How full the kernel's event ring buffer gets: its producer and consumer positions, read
//! from read-only mappings of their pages (the layout of `BPF_MAP_TYPE_RINGBUF`'s mmap: the
//! consumer position on page 0, the producer position on page 1).

use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicU64, Ordering},
};

pub struct RingFill {
    /// The two position pages, or None where they could not be mapped (then no figures).
    pages: Option<(usize, usize)>,
    page: usize,
    pub size: u64,
    /// Bytes waiting when last sampled, and the most seen since the daemon started.
    pub now: AtomicU64,
    pub max: AtomicU64,
}

// SAFETY: the mappings are read-only and only read with atomic loads.
unsafe impl Send for RingFill {}
// SAFETY: as above.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the position pages of the ring buffer `fd` of `size` bytes.
    pub fn new(fd: RawFd, size: u64) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map = |offset: usize| {
            // SAFETY: a new read-only shared mapping of one page of the map's fd.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    offset as libc::off_t,
                )
            };
            (p != libc::MAP_FAILED).then_some(p as usize)
        };
        let pages = match (map(0), map(page)) {
            (Some(c), Some(p)) => Some((c, p)),
            (c, p) => {
                for a in [c, p].into_iter().flatten() {
                    // SAFETY: unmapping what was mapped above.
                    unsafe { libc::munmap(a as *mut libc::c_void, page) };
                }
                tracing::warn!("cannot map the ring buffer's positions: no fill figures");
                None
            }
        };
        RingFill {
            pages,
            page,
            size,
            now: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Reads the bytes waiting now (before the consumer drains them).
    pub fn sample(&self) {
        let Some((c, p)) = self.pages else {
            return;
        };
        // SAFETY: both pages are mapped for the life of self; the kernel updates the
        // positions atomically (u64, aligned at the start of each page).
        let (cons, prod) = unsafe {
            (
                (*(c as *const AtomicU64)).load(Ordering::Acquire),
                (*(p as *const AtomicU64)).load(Ordering::Acquire),
            )
        };
        let used = prod.saturating_sub(cons).min(self.size);
        self.now.store(used, Ordering::Relaxed);
        self.max.fetch_max(used, Ordering::Relaxed);
    }

    /// Whether figures are available.
    pub fn known(&self) -> bool {
        self.pages.is_some()
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        if let Some((c, p)) = self.pages.take() {
            for a in [c, p] {
                // SAFETY: unmapping what new() mapped.
                unsafe { libc::munmap(a as *mut libc::c_void, self.page) };
            }
        }
    }
}
