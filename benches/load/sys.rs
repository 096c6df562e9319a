//! Process facts: CPU time (getrusage, /proc/<pid>/stat), resident memory (/proc/*/status),
//! and a counting global allocator that attributes allocations to the thread's role and
//! forwards them to the allocator `MUX_LOAD_ALLOCATOR` names.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

// ---- which allocator ----------------------------------------------------------------------

/// The allocators [`Counting`] can forward to. One is chosen before the first allocation
/// (a global allocator cannot change once memory has come from it) from the environment
/// variable `MUX_LOAD_ALLOCATOR`: `glibc` (the default), `jemalloc` (builds with the
/// `alloc-jemalloc` feature) or `mimalloc` (`alloc-mimalloc`). `mux-load attack` sets it
/// for the server it spawns (`--allocator`); an unknown or unbuilt name means glibc, and the
/// `serve` banner says which one runs.
const UNSET: u8 = 0;
const GLIBC: u8 = 1;
#[cfg(feature = "alloc-jemalloc")]
const JEMALLOC: u8 = 2;
#[cfg(feature = "alloc-mimalloc")]
const MIMALLOC: u8 = 3;

static BACKEND: AtomicU8 = AtomicU8::new(UNSET);

/// jemalloc's options when it is the allocator (read by jemalloc at its initialisation;
/// `_RJEM_MALLOC_CONF` in the environment overrides them): background threads purge unused
/// pages without waiting for the application to allocate again, dirty pages are purged
/// within 1 s, and purging skips the lazy `MADV_FREE` stage (muzzy pages still count in the
/// RSS until the kernel needs the memory).
#[cfg(feature = "alloc-jemalloc")]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn backend() -> u8 {
    match BACKEND.load(Ordering::Relaxed) {
        UNSET => {
            // Only the main thread allocates this early, so there is no race to choose.
            let chosen = from_env();
            BACKEND.store(chosen, Ordering::Relaxed);
            chosen
        }
        chosen => chosen,
    }
}

fn from_env() -> u8 {
    // SAFETY: the name is a NUL-terminated literal; getenv allocates nothing and returns
    // NULL or a NUL-terminated string that stays valid while the environment is unchanged
    // (it is read here once, before anything could change it).
    let value = unsafe { libc::getenv(c"MUX_LOAD_ALLOCATOR".as_ptr()) };
    if value.is_null() {
        return GLIBC;
    }
    // SAFETY: non-NULL and NUL-terminated, as above.
    match unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() {
        #[cfg(feature = "alloc-jemalloc")]
        b"jemalloc" => JEMALLOC,
        #[cfg(feature = "alloc-mimalloc")]
        b"mimalloc" => MIMALLOC,
        _ => GLIBC,
    }
}

/// The allocator this process runs with.
pub fn allocator() -> &'static str {
    match backend() {
        #[cfg(feature = "alloc-jemalloc")]
        JEMALLOC => "jemalloc",
        #[cfg(feature = "alloc-mimalloc")]
        MIMALLOC => "mimalloc",
        _ => "glibc",
    }
}

/// Calls `$method` on the chosen allocator.
macro_rules! forward {
    ($method:ident($($arg:expr),*)) => {
        match backend() {
            #[cfg(feature = "alloc-jemalloc")]
            // SAFETY: forwarded as is; every allocation and free of this process goes to
            // the same allocator, chosen once.
            JEMALLOC => unsafe { tikv_jemallocator::Jemalloc.$method($($arg),*) },
            #[cfg(feature = "alloc-mimalloc")]
            // SAFETY: as above.
            MIMALLOC => unsafe { mimalloc::MiMalloc.$method($($arg),*) },
            // SAFETY: as above.
            _ => unsafe { System.$method($($arg),*) },
        }
    };
}

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

/// The chosen allocator with per-role allocation counters.
pub struct Counting;

// SAFETY: every method forwards to the one allocator chosen before the first allocation,
// with the caller's arguments unchanged; choosing reads the environment without allocating,
// and counting touches only a const-initialised thread-local and atomics, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        forward!(alloc(layout))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        forward!(alloc_zeroed(layout))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        forward!(dealloc(ptr, layout))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        LIVE.fetch_add(new_size as u64, Ordering::Relaxed);
        forward!(realloc(ptr, layout, new_size))
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
    status_bytes(who, "VmRSS:")
}

/// RssAnon in bytes: the resident memory that is not file-backed (the heap, stacks), as
/// opposed to the binary's code and data pages, which grow as new code paths first run.
pub fn rss_anon(who: &str) -> Option<u64> {
    status_bytes(who, "RssAnon:")
}

fn status_bytes(who: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sets the calling thread's nice value (on Linux a thread's own, not the process's), so
/// that the scheduler gives it the CPU only when nothing of normal priority wants it.
pub fn set_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory preconditions; `who` 0 is the calling thread.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`; false if the kernel refused.
pub fn pin_thread(tid: i32, cpus: &[usize]) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: `set` is a plain bitmask owned by this frame; CPU_SET ignores indexes past
    // its size, and sched_setaffinity only reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tid, cpus);
        false
    }
}

/// Restricts every thread of process `pid` to `cpus` (threads it starts later inherit it
/// from the thread that starts them); false if any thread could not be pinned.
pub fn pin_process(pid: u32, cpus: &[usize]) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut all = true;
    for task in tasks.flatten() {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        {
            all &= pin_thread(tid, cpus);
        }
    }
    all
}

/// Returns freed heap to the OS (glibc's `malloc_trim(0)`: the top of every arena, and
/// every free page inside one), so RSS reflects what is live. Nothing to do for jemalloc and
/// mimalloc, which purge by themselves.
pub fn trim() {
    if backend() != GLIBC {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc's own view of its heap (`mallinfo2`): bytes in use in chunks it handed out
/// (`uordblks`, which includes each chunk's header and rounding, unlike [`live_heap`]),
/// free bytes it keeps in its arenas (`fordblks`) and bytes in chunks served by `mmap`
/// (`hblkhd`). `None` with another allocator.
pub fn glibc_heap() -> Option<(u64, u64, u64)> {
    if backend() != GLIBC {
        return None;
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 has no preconditions and returns a plain struct.
        let info = unsafe { libc::mallinfo2() };
        Some((
            info.uordblks as u64,
            info.fordblks as u64,
            info.hblkhd as u64,
        ))
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// Prints glibc's per-arena statistics on stderr (`malloc_stats`, then `malloc_info`'s
/// XML: each arena's free chunks by size, its top chunk, and the mmap'd chunks): which
/// arenas hold the memory, how much of it is in use, and whether what is free is top or
/// fragments. Nothing with another allocator.
pub fn print_malloc_stats() {
    if backend() != GLIBC {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_stats has no preconditions and writes to stderr. The stream for
    // malloc_info is opened on a duplicate of stderr's descriptor (so closing it leaves
    // stderr open), checked for NULL, and closed once.
    unsafe {
        libc::malloc_stats();
        let fd = libc::dup(2);
        if fd < 0 {
            return;
        }
        let stream = libc::fdopen(fd, c"w".as_ptr());
        if stream.is_null() {
            libc::close(fd);
            return;
        }
        libc::malloc_info(0, stream);
        libc::fclose(stream);
    }
}
