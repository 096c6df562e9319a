//! Process facts: CPU time (getrusage, /proc/<pid>/stat), resident memory (/proc/*/status),
//! and a counting global allocator that attributes allocations to the thread's role.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Which counter a thread's allocations go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Other = 0,
    Server = 1,
    Client = 2,
}

thread_local! {
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

static ALLOCS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Bytes allocated and not yet freed, all threads.
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Heap bytes live now (requested sizes; the allocator's own overhead is not included).
pub fn live_heap() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// Tags the calling thread's allocations from now on.
pub fn set_role(role: Role) {
    ROLE.with(|r| r.set(role as u8));
}

/// Allocations (alloc and realloc calls) so far by threads of `role`.
pub fn allocations(role: Role) -> u64 {
    ALLOCS[role as usize].load(Ordering::Relaxed)
}

fn count() {
    // `try_with`: a thread being torn down has no thread-locals left; count it as Other.
    let role = ROLE.try_with(Cell::get).unwrap_or(0);
    if let Some(counter) = ALLOCS.get(usize::from(role)) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The system allocator with per-role allocation counters.
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only a const-initialised thread-local and atomics, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        LIVE.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// CPU time (user + system) of this process so far.
pub fn cpu_self() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (utime + stime) of another process, from /proc/<pid>/stat (clock ticks).
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// VmRSS in bytes of `/proc/<who>/status` (`who` = "self" or a pid).
pub fn rss(who: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Returns freed heap to the OS (glibc), so RSS reflects what is live.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
