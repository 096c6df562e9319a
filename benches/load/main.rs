//! `mux-load`: a load tool for mux-tokio, over loopback only.
//!
//! ```text
//! cargo run --release --features load --bin mux-load -- [MODE] [OPTIONS]
//! ```
//!
//! Modes: `echo` (default: N connections × M sessions × rate × size × duration), `p3`
//! (100 sessions over one WebSocket vs 100 WebSockets, alternating), `p7` (idle memory at
//! 10,000 connections and at 10,000 sessions on one connection, server in a child process),
//! `p8` (victim echo latency while a neighbour session floods, mux and rust-yamux), `topics`
//! (publish-to-receive latency and allocations per recipient), `topics-redis` (the same
//! across two nodes through Redis, against one node, side by side), and `serve` (a server in this
//! process, for the client modes' `--url` and `--server-pid`), and `compare` (issue 16:
//! mux-tokio vs yamux over one WebSocket vs one WebSocket per session vs raw TCP, through
//! the public APIs on loopback, alternating), and `attack` (the threat catalogue's attacks
//! against a `serve` child with the library's defaults: the server's RSS and an honest
//! client's latency during and after each, and how each attacker was cut).
//!
//! Every loop is bounded in count and time, every address is loopback, and a `--url` that
//! is not a loopback address is refused.

mod attack;
mod compare;
mod echo;
mod flood;
mod idle;
mod redis_topics;
mod scale;
mod server;
mod sys;
mod topics;
mod yamux_drive;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;

#[global_allocator]
static GLOBAL: sys::Counting = sys::Counting;

/// Load generator for mux over WebSocket (loopback only).
#[derive(Parser, Debug)]
#[command(
    name = "mux-load",
    version,
    about = "Load generator for mux over WebSocket (loopback only)."
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Options of the default `echo` mode.
    #[command(flatten)]
    echo: EchoArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Echo load: N connections × M sessions (the default mode).
    Echo(EchoArgs),
    /// P3: 100 sessions over one WebSocket vs 100 WebSockets of one session, alternating.
    P3(P3Args),
    /// P7: idle memory per connection and per session (server in a child process).
    P7(P7Args),
    /// P8: victim echo latency while a neighbour session floods, vs unloaded; mux and yamux.
    P8(P8Args),
    /// Issue #5: publish to N subscribers; publish-to-receive latency, allocations.
    Topics(TopicArgs),
    /// Topics across nodes: N subscribers over two nodes through Redis (mux-redis) vs on
    /// one node with LocalHub, alternating rounds; latency, deliveries/s, Redis commands.
    TopicsRedis(RedisTopicArgs),
    /// Issue 16: mux-tokio vs yamux over one WebSocket vs a WebSocket per session (and raw
    /// TCP for bulk), public APIs on loopback, alternating rounds, ratios.
    Compare(CompareArgs),
    /// The threat catalogue's attacks against a server with the library's defaults (in a
    /// child process): its RSS and an honest client's echo latency during and after each.
    Attack(AttackArgs),
    /// Runs a server on 127.0.0.1 and prints `pid=<pid> port=<port> alloc=<allocator>`.
    Serve(ServeArgs),
    /// N connections through nginx (deploy/nginx.conf, TLS) to two nodes at 10 Hz each:
    /// delivered rate, round trip p50/p99, resident memory per connection.
    Scale(ScaleArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Connections, one session each (nginx holds two descriptors per connection).
    #[arg(short = 'n', long, default_value_t = 5_000)]
    connections: usize,
    /// Messages per second per session.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Measured seconds (after connecting and a 2 s warm-up).
    #[arg(short = 'd', long, default_value_t = 20.0)]
    duration: f64,
    /// Worker threads of each node.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Where the server is.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// A server to load (`ws://127.0.0.1:PORT/`); loopback addresses only. Default: start
    /// one in this process.
    #[arg(long)]
    url: Option<String>,
    /// The server's pid, for its RSS and CPU time (with `--url`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads of the in-process server's runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    #[command(flatten)]
    target: Target,
    /// WebSocket connections.
    #[arg(short = 'n', long, default_value_t = 10)]
    connections: usize,
    /// Sessions per connection.
    #[arg(short = 'm', long, default_value_t = 10)]
    sessions: usize,
    /// Messages per second per session (0: as fast as the in-flight window allows).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Message size in bytes (at least 8: the send timestamp).
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Measured seconds (after a 1 s warm-up).
    #[arg(short = 'd', long, default_value_t = 5.0)]
    duration: f64,
    /// Messages in flight per session.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct P3Args {
    #[command(flatten)]
    target: Target,
    /// Run the server in a child process (`serve`), as P3 specifies.
    #[arg(long)]
    separate: bool,
    /// Sessions (on one connection) and connections (of one session each).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Messages in flight per session.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Measured seconds per phase.
    #[arg(short = 'd', long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds of (one WebSocket, many WebSockets), the order flipped every round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct P7Args {
    /// A running `serve --hold` server (loopback only); default: spawn one.
    #[arg(long)]
    url: Option<String>,
    /// Its pid (required with `--url`), for /proc/<pid>/status.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Idle connections (one idle session each) for part (a).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Idle sessions on one connection for part (b).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// The spawned server's tungstenite read buffer per connection (default: ServerConfig's, 1 KiB).
    #[arg(long)]
    read_buffer: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct P8Args {
    #[command(flatten)]
    target: Target,
    /// Seconds per phase.
    #[arg(short = 'd', long, default_value_t = 3.0)]
    duration: f64,
    /// Victim pings per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Flood message size.
    #[arg(long, default_value_t = 65_536)]
    flood_size: usize,
    /// Rounds of the four phases.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Skip the rust-yamux phases.
    #[arg(long)]
    no_yamux: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TopicArgs {
    /// Subscriber counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    subscribers: Vec<usize>,
    /// Subscriber sessions per WebSocket connection.
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Publishes per run.
    #[arg(long, default_value_t = 200)]
    publishes: usize,
    /// Milliseconds between publishes.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Worker threads of the server runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
}

#[derive(Args, Debug, Clone)]
pub struct RedisTopicArgs {
    /// Subscribers in all (split evenly over the two nodes on the Redis side).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Subscriber sessions per WebSocket connection.
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Measured publishes per round and side.
    #[arg(long, default_value_t = 200)]
    publishes: usize,
    /// Milliseconds between publishes.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Rounds of (one node, two nodes), the order flipped every round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A Redis on loopback (`redis://127.0.0.1:6379/`); default: start a throwaway
    /// `redis-server` (Debian package redis-server) on a free port.
    #[arg(long)]
    redis_url: Option<String>,
    /// Worker threads of the servers' runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Worker threads of the one runtime that runs every client and server.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured seconds per phase.
    #[arg(short = 'd', long, default_value_t = 2.0)]
    duration: f64,
    /// Warm-up seconds per phase (connections open, load running, not counted).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Rounds of every side, the order flipped every round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run only the cases whose name contains this (`echo`, `echo-64B`, `bulk`, `churn`).
    #[arg(long)]
    only: Option<String>,
    /// Run only this side (`mux`, `yamux-ws`, ...), for profiling one of them; no ratios.
    #[arg(long)]
    side: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct AttackArgs {
    /// Run only the attacks whose names contain one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds each attack runs (a flood), or each attacking connection is held at most
    /// (default: each attack's own, 4-13 s).
    #[arg(short = 'd', long)]
    duration: Option<f64>,
    /// Attackers per attack (default: each attack's own; sockets for slowloris and
    /// conn-flood).
    #[arg(long)]
    attackers: Option<usize>,
    /// Seconds of the victim's unloaded measurement: at the start, and at the end of each
    /// attack's `--after` window; each attack is compared with the window just before it.
    #[arg(long, default_value_t = 3.0)]
    unloaded: f64,
    /// Seconds the server is watched after each attack's connections are gone.
    #[arg(long, default_value_t = 10.0)]
    after: f64,
    /// The server's allocator: glibc-trim (glibc with malloc_trim(0) every --trim-ms, what
    /// BENCHMARKS.md A1 chose), glibc, jemalloc, mimalloc (the last two need the
    /// alloc-jemalloc / alloc-mimalloc features).
    #[arg(long, default_value = "glibc-trim")]
    allocator: String,
    /// Milliseconds between malloc_trim(0) calls with `--allocator glibc-trim`.
    #[arg(long, default_value_t = 1000)]
    trim_ms: u64,
    /// Worker threads of the server's runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// The nice value of the attacking threads. Attackers are other machines in a
    /// deployment; on one machine their own CPU use would compete with the server and the
    /// victim for the same cores, so by default they run at the lowest priority (19) and
    /// only the work they cause the server is measured. 0 runs them like any other thread.
    #[arg(long, default_value_t = 19)]
    attacker_nice: i32,
    /// CPUs (comma-separated) the server process runs on; the victim, the attackers and
    /// this tool's other threads get the rest, so that what the attack costs the server is
    /// the work it causes there, not CPU time the attacking processes take from it (they
    /// are other machines in a deployment). `none` leaves every thread to the scheduler.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// Victim echoes per second (64 B, one in flight, over 2 connections x 2 sessions).
    #[arg(long, default_value_t = 500)]
    victim_rate: u32,
    /// One JSON object per attack on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// At the end, have the server print glibc's per-arena statistics (`malloc_stats`) on
    /// stderr: where the memory it keeps sits.
    #[arg(long)]
    malloc_stats: bool,
    /// List the attacks and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0: any).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Keep every session without a task (for idle-memory runs).
    #[arg(long)]
    hold: bool,
    /// tungstenite's read buffer per connection in bytes (default: ServerConfig's, 1 KiB).
    #[arg(long)]
    read_buffer: Option<usize>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Exit after this many seconds at most (or when stdin closes).
    #[arg(long, default_value_t = 1800)]
    lifetime: u64,
    /// The library's default limits (ServerConfig and mux_proto::Config defaults; only
    /// the Origin policy set) instead of the load runs' lifted ones.
    #[arg(long)]
    defaults: bool,
    /// Call glibc's malloc_trim(0) every this many milliseconds.
    #[arg(long)]
    trim_ms: Option<u64>,
}

/// Longest run any option may ask for.
pub const MAX_SECONDS: f64 = 600.0;

fn main() {
    let cli = Cli::parse();
    let result = match cli.mode {
        None => echo::main(cli.echo),
        Some(Mode::Echo(args)) => echo::main(args),
        Some(Mode::P3(args)) => echo::p3_main(args),
        Some(Mode::P7(args)) => idle::main(args),
        Some(Mode::P8(args)) => flood::main(args),
        Some(Mode::Topics(args)) => topics::main(args),
        Some(Mode::TopicsRedis(args)) => redis_topics::main(args),
        Some(Mode::Compare(args)) => compare::main(args),
        Some(Mode::Attack(args)) => attack::main(args),
        Some(Mode::Scale(args)) => scale::main(args),
        Some(Mode::Serve(args)) => server::serve_main(
            args.port,
            server::Options {
                hold: args.hold,
                read_buffer: args.read_buffer,
                defaults: args.defaults,
                trim_every: args
                    .trim_ms
                    .map(|ms| Duration::from_millis(ms.clamp(10, 600_000))),
            },
            args.threads,
            Duration::from_secs(args.lifetime.min(24 * 3600)),
        ),
    };
    if let Err(e) = result {
        eprintln!("mux-load: {e}");
        std::process::exit(2);
    }
}

/// Accepts `ws://HOST:PORT/...` only if HOST is a loopback address (127.0.0.0/8, ::1,
/// localhost).
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs on loopback are accepted"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(()),
        _ => Err(format!(
            "{url}: refusing a non-loopback address; this tool loads 127.0.0.1/::1 only"
        )),
    }
}

/// Clamps a duration option to (0, MAX_SECONDS].
pub fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() {
        s.clamp(0.05, MAX_SECONDS)
    } else {
        1.0
    })
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process epoch.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A message of `size` bytes (at least 8) starting with the send time.
pub fn stamped(size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(8));
    b.put_u64(now_ns());
    b.resize(size.max(8), 0x5a);
    b.freeze()
}

/// Microseconds since the stamp at the start of `message`.
pub fn age_us(message: &[u8]) -> Option<u64> {
    let stamp = u64::from_be_bytes(message.get(..8)?.try_into().ok()?);
    Some(now_ns().saturating_sub(stamp) / 1000)
}

/// A latency histogram in µs, 1 µs to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| {
        // The bounds are constants that hdrhistogram accepts; this never runs.
        Histogram::new(3).unwrap_or_else(|_| unreachable!())
    })
}

/// `p50/p99/p99.9/max` in ms.
pub fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (n={})",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len()
    )
}

/// A runtime whose threads count their allocations as `role`.
pub fn runtime(
    threads: usize,
    role: sys::Role,
    name: &str,
) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .on_thread_start(move || sys::set_role(role))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// A progress bar over `total` ticks, hidden with `quiet` (or when stderr is no terminal).
pub fn progress(total: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style =
        indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_owned());
    bar
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("machine: {cores} cores, {cpu}")
}
