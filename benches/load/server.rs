//! The server side: a mux-tokio server on 127.0.0.1 (in this process, or as the `serve`
//! subcommand in another one), and a rust-yamux server for the P8 comparison.
//!
//! Sessions are served by kind: `echo` echoes every message, `sink` reads and drops,
//! `topic` is attached to the hub's `bench` topic; with `hold`, every session is kept
//! without a task (idle-memory measurement).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use mux_tokio::topic::{LocalHub, SubscribeOptions};
use mux_tokio::{AllowAll, OriginPolicy, Server, ServerConfig, ServerHandle, Session};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

use crate::sys;

/// The topic every `topic` session is attached to.
pub const TOPIC: &str = "topic";

/// The protocol limits of the load runs: defaults, except the limits that protect a
/// browser-facing server from one abusive client (open rate, control budget, session count,
/// pending opens), which a load generator trips by design.
pub fn protocol() -> mux_proto::Config {
    let mut c = mux_proto::Config::default();
    c.limits.max_sessions = 10_016;
    c.limits.max_pending_opens = 1024;
    c.limits.opens_per_sec = 1_000_000;
    c.limits.opens_burst = 1_000_000;
    c.limits.control_budget = 10_000_000;
    // Accounting only (the sum of all windows); memory is used only as data arrives.
    c.limits.max_recv_buffer = 1 << 40;
    // For measuring window growth (BENCHMARKS.md, P11); the default is the library's.
    if let Some(g) = std::env::var("MUX_BENCH_GROWTH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.limits.max_window_growth = g;
    }
    c
}

/// Bytes received so far by every sink in this process (mux `sink` sessions, yamux `s`
/// streams, and the `compare` mode's WebSocket and TCP sinks).
pub static SUNK: AtomicU64 = AtomicU64::new(0);

/// Counts `n` bytes received by a sink.
pub fn sunk(n: usize) {
    SUNK.fetch_add(n as u64, Ordering::Relaxed);
}

/// Sessions held by a `hold` server.
pub type Held = Arc<Mutex<Vec<Session>>>;

pub struct Running {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub held: Held,
}

/// Server knobs the load modes vary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Keep every session's handle without a task.
    pub hold: bool,
    /// tungstenite's per-connection read buffer (default: ServerConfig's, 1 KiB).
    pub read_buffer: Option<usize>,
    /// The library's defaults (`ServerConfig::default()` and `mux_proto::Config::default()`,
    /// only the Origin policy set) instead of the load runs' lifted limits: what an attack
    /// meets on a server configured as shipped.
    pub defaults: bool,
    /// `serve` only: return freed heap to the OS with glibc's `malloc_trim(0)` this often.
    pub trim_every: Option<Duration>,
}

/// Starts a server on `addr` (which must be loopback) on the current runtime.
pub async fn start(
    addr: SocketAddr,
    options: Options,
    hub: Option<LocalHub>,
) -> std::io::Result<Running> {
    let hold = options.hold;
    assert!(addr.ip().is_loopback(), "the load tool binds loopback only");
    let origins = OriginPolicy::allow(["http://localhost"]).allow_missing(true);
    let mut config = if options.defaults {
        ServerConfig::default().origins(origins)
    } else {
        let mut config = ServerConfig::default()
            .origins(origins)
            .connection_limits(20_000, 20_000, 20_000)
            // Every connection of a run comes from one address (or one proxy) and principal.
            .handshake_rate(mux_tokio::HandshakeRate {
                per_second: 0,
                burst: 0,
            })
            .quotas(mux_tokio::quota::QuotaPolicy::none())
            .protocol(protocol());
        config.accept_queue = 16_384;
        config
    };
    if let Some(size) = options.read_buffer {
        config.read_buffer_size = size.clamp(256, 1 << 20);
    }
    let mut server = Server::bind(addr, config, AllowAll, AllowAll).await?;
    let addr = server.local_addr();
    let handle = server.handle();
    let held: Held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            if hold {
                lock(&keep).push(session);
                continue;
            }
            let hub = hub.clone();
            tokio::spawn(serve_session(session, hub));
        }
    });
    Ok(Running { addr, handle, held })
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn serve_session(mut session: Session, hub: Option<LocalHub>) {
    match session.kind() {
        "sink" => {
            while let Some(message) = session.recv().await {
                sunk(message.len());
            }
        }
        TOPIC => {
            let Some(hub) = hub else { return };
            let options = SubscribeOptions::default().queue_capacity(256);
            let Ok(_subscription) = hub.attach(&session, options) else {
                return;
            };
            while session.recv().await.is_some() {}
        }
        _ => {
            while let Some(message) = session.recv().await {
                if session.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// `mux-load serve`: prints `pid=<pid> port=<port>`, then answers `stats` lines on stdin
/// with `rss=<bytes> heap=<live heap bytes> conns=<n> sessions=<held>` (after returning
/// freed heap to the OS), and `peek` lines with the same as they are (nothing returned
/// first), until stdin closes or `lifetime` passes; glibc's own counters follow
/// (`glibc_used=`, `glibc_free=`, `glibc_mmap=`; zero with another allocator), and a
/// `malloc` line prints glibc's per-arena statistics on stderr. With `trim_every`, a thread calls
/// glibc's `malloc_trim(0)` that often and its cost is printed on stderr at exit.
pub fn serve_main(
    port: u16,
    options: Options,
    threads: usize,
    lifetime: Duration,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let running = rt
        .block_on(start(
            SocketAddr::from(([127, 0, 0, 1], port)),
            options,
            None,
        ))
        .map_err(|e| format!("bind: {e}"))?;
    println!(
        "pid={} port={} alloc={}",
        std::process::id(),
        running.addr.port(),
        sys::allocator()
    );
    let _ = std::io::stdout().flush();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let held = running.held.clone();
    let handle = running.handle.clone();
    let trimmer = options.trim_every.map(|every| {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let (mut calls, mut total, mut longest) = (0u32, Duration::ZERO, Duration::ZERO);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(every)
            {
                let started = std::time::Instant::now();
                sys::trim();
                let took = started.elapsed();
                calls += 1;
                total += took;
                longest = longest.max(took);
            }
            eprintln!(
                "serve: malloc_trim(0) every {every:?}: {calls} calls, {total:?} in all, longest {longest:?}"
            );
        });
        (stop_tx, thread)
    });
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let command = line.trim();
            if command == "malloc" {
                sys::print_malloc_stats();
                println!("ok");
                let _ = std::io::stdout().flush();
            } else if command == "stats" || command == "peek" {
                let sessions = {
                    let mut held = lock(&held);
                    held.retain(|s| s.close_reason().is_none());
                    held.shrink_to_fit();
                    held.len()
                };
                if command == "stats" {
                    sys::trim();
                }
                let rss = sys::rss("self").unwrap_or(0);
                let conns = handle.stats().connections;
                let heap = sys::live_heap();
                let (used, free, mapped) = sys::glibc_heap().unwrap_or_default();
                println!(
                    "rss={rss} heap={heap} conns={conns} sessions={sessions} \
                     glibc_used={used} glibc_free={free} glibc_mmap={mapped}"
                );
                let _ = std::io::stdout().flush();
            }
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(lifetime);
    drop(running);
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Some((stop, thread)) = trimmer {
        drop(stop);
        let _ = thread.join();
    }
    Ok(())
}

/// A `serve` child process and its control pipe.
pub struct ChildServer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: std::io::BufReader<ChildStdout>,
    pub pid: u32,
    pub port: u16,
    /// The allocator the child runs with (its banner's `alloc=`).
    pub allocator: String,
}

/// What a `serve` child reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildStats {
    pub rss: u64,
    /// Live heap bytes (the child's counting allocator).
    pub heap: u64,
    pub conns: u64,
    pub sessions: u64,
    /// glibc's bytes in use, free in its arenas, and in mmap'd chunks (zero with another
    /// allocator).
    pub glibc: (u64, u64, u64),
}

impl ChildServer {
    /// Spawns `mux-load serve --port 0 [--hold]` and reads its pid and port.
    pub fn spawn(options: Options, threads: usize) -> Result<ChildServer, String> {
        ChildServer::spawn_with(options, threads, &[])
    }

    /// [`ChildServer::spawn`] with environment variables set for the child (such as
    /// `MUX_LOAD_ALLOCATOR`, read before its first allocation).
    pub fn spawn_with(
        options: Options,
        threads: usize,
        env: &[(&str, &str)],
    ) -> Result<ChildServer, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--port", "0", "--threads", &threads.to_string()]);
        cmd.envs(env.iter().copied());
        if options.hold {
            cmd.arg("--hold");
        }
        if options.defaults {
            cmd.arg("--defaults");
        }
        if let Some(every) = options.trim_every {
            cmd.args(["--trim-ms", &every.as_millis().to_string()]);
        }
        if let Some(size) = options.read_buffer {
            cmd.args(["--read-buffer", &size.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn serve: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let (Some(pid), Some(port)) = (field("pid="), field("port=")) else {
            let _ = child.kill();
            return Err(format!("unexpected serve banner: {line:?}"));
        };
        let allocator = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("alloc="))
            .unwrap_or("glibc")
            .to_owned();
        Ok(ChildServer {
            child,
            stdin: Some(stdin),
            stdout,
            pid,
            port: port as u16,
            allocator,
        })
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Asks the child for its RSS (after trimming), connection and held-session counts.
    pub fn stats(&mut self) -> Result<ChildStats, String> {
        self.ask("stats")
    }

    /// The same as [`ChildServer::stats`] without trimming first: the RSS as it is.
    pub fn peek(&mut self) -> Result<ChildStats, String> {
        self.ask("peek")
    }

    fn ask(&mut self, command: &str) -> Result<ChildStats, String> {
        let stdin = self.stdin.as_mut().ok_or("child closed")?;
        writeln!(stdin, "{command}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(ChildStats {
            rss: field("rss="),
            heap: field("heap="),
            conns: field("conns="),
            sessions: field("sessions="),
            glibc: (
                field("glibc_used="),
                field("glibc_free="),
                field("glibc_mmap="),
            ),
        })
    }

    /// Has the child print glibc's per-arena statistics on its stderr.
    pub fn print_malloc_stats(&mut self) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("child closed")?;
        writeln!(stdin, "malloc").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // Closing stdin ends the child; kill it if it has not gone within 5 s.
        drop(self.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- yamux over loopback TCP (P8) ---------------------------------------------------

/// A yamux server on 127.0.0.1: each inbound stream's first byte picks its role:
/// `e` echoes, `s` reads and drops.
pub async fn start_yamux() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_yamux(tcp.compat()));
        }
    });
    Ok(addr)
}

/// Serves one yamux connection over `io`: each inbound stream's first byte picks its role:
/// `e` echoes, `s` reads and drops (counted in [`SUNK`]).
pub async fn serve_yamux<T>(io: T)
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
{
    let conn = yamux::Connection::new(io, yamux::Config::default(), yamux::Mode::Server);
    let (in_tx, mut in_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::yamux_drive::drive(conn, None, Some(in_tx)));
    while let Some(mut stream) = in_rx.recv().await {
        tokio::spawn(async move {
            let mut role = [0u8; 1];
            if stream.read_exact(&mut role).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if role[0] == b'e' {
                    let Some(chunk) = buf.get(..n) else { return };
                    if stream.write_all(chunk).await.is_err() {
                        return;
                    }
                } else {
                    sunk(n);
                }
            }
        });
    }
}
