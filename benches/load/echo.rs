//! Echo load (the default mode) and P3 (one WebSocket with many sessions vs many WebSockets).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mux_tokio::{Client, ClientConfig, Session};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::server::{self, ChildServer, Running};
use crate::sys;
use crate::{
    age_us, check_url, histogram, latency_line, median, seconds, stamped, EchoArgs, P3Args, Target,
};

/// Where the clients connect, and what keeps the server alive.
pub struct Env {
    pub url: String,
    /// The server's pid if it is another process.
    pub server_pid: Option<u32>,
    pub client_rt: tokio::runtime::Runtime,
    _server_rt: Option<tokio::runtime::Runtime>,
    _running: Option<Running>,
    _child: Option<ChildServer>,
}

impl Env {
    /// The server from `--url`, a `serve` child (`separate`), or one in this process.
    pub fn new(target: &Target, separate: bool) -> Result<Env, String> {
        let client_rt = crate::runtime(target.client_threads, sys::Role::Client, "client")?;
        if let Some(url) = &target.url {
            check_url(url)?;
            return Ok(Env {
                url: url.clone(),
                server_pid: target.server_pid,
                client_rt,
                _server_rt: None,
                _running: None,
                _child: None,
            });
        }
        if separate {
            let child = ChildServer::spawn(server::Options::default(), target.server_threads)?;
            return Ok(Env {
                url: child.url(),
                server_pid: Some(child.pid),
                client_rt,
                _server_rt: None,
                _running: None,
                _child: Some(child),
            });
        }
        let server_rt = crate::runtime(target.server_threads, sys::Role::Server, "server")?;
        let running = server_rt
            .block_on(server::start(
                ([127, 0, 0, 1], 0).into(),
                server::Options::default(),
                None,
            ))
            .map_err(|e| format!("bind: {e}"))?;
        Ok(Env {
            url: format!("ws://{}/", running.addr),
            server_pid: None,
            client_rt,
            _server_rt: Some(server_rt),
            _running: Some(running),
            _child: None,
        })
    }

    /// The server's RSS: its own process, or this one when it runs here.
    pub fn server_rss(&self) -> Option<u64> {
        match self.server_pid {
            Some(pid) => sys::rss(&pid.to_string()),
            None if self._running.is_some() => sys::rss("self"),
            None => None,
        }
    }
}

/// The shape of one echo run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub sessions: usize,
    pub size: usize,
    pub inflight: usize,
    pub rate: u32,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one echo run measured.
pub struct Outcome {
    pub messages: u64,
    pub bytes: u64,
    pub secs: f64,
    /// CPU of this process during the measurement (client, and the server if in-process).
    pub cpu_self: Duration,
    /// CPU of the server process, if it is another one.
    pub cpu_server: Option<Duration>,
    pub latency: Histogram<u64>,
    /// Allocations during the measurement by the in-process server's and the clients'
    /// runtime threads.
    pub server_allocs: u64,
    pub client_allocs: u64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    /// CPU seconds (this process plus a separate server) per million echoes.
    pub fn cpu_per_million(&self) -> f64 {
        let cpu = self.cpu_self + self.cpu_server.unwrap_or_default();
        cpu.as_secs_f64() / (self.messages.max(1) as f64 / 1e6)
    }
}

#[derive(Default)]
struct Counters {
    measuring: AtomicBool,
    messages: AtomicU64,
    bytes: AtomicU64,
}

async fn worker(
    mut session: Session,
    shape: Shape,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let sender = session.sender();
    let window = Arc::new(Semaphore::new(shape.inflight.max(1)));
    let send_window = window.clone();
    let mut send_stop = stop.clone();
    let size = shape.size;
    let rate = shape.rate;
    let send_task = tokio::spawn(async move {
        let mut tick = (rate > 0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        });
        loop {
            if let Some(t) = tick.as_mut() {
                tokio::select! {
                    _ = t.tick() => {}
                    _ = send_stop.changed() => break,
                }
            }
            let permit = tokio::select! {
                p = send_window.acquire() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = send_stop.changed() => break,
            };
            permit.forget();
            if sender.send(stamped(size)).await.is_err() || *send_stop.borrow() {
                break;
            }
        }
    });
    let mut latency = histogram();
    loop {
        tokio::select! {
            message = session.recv() => {
                let Some(message) = message else { break };
                window.add_permits(1);
                if counters.measuring.load(Ordering::Relaxed) {
                    if let Some(us) = age_us(&message) {
                        latency.saturating_record(us.max(1));
                    }
                    counters.messages.fetch_add(1, Ordering::Relaxed);
                    counters.bytes.fetch_add(message.len() as u64, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => break,
        }
    }
    window.close();
    send_task.abort();
    let _ = send_task.await;
    latency
}

/// The load runs' client configuration: no reconnects, the load protocol limits.
pub fn client_config() -> ClientConfig {
    ClientConfig::default()
        .reconnect(false)
        .protocol(server::protocol())
}

/// Connects `connections` clients with `sessions` sessions each (64 connects at a time).
pub async fn connect_all(
    url: &str,
    connections: usize,
    sessions: usize,
    kind: &str,
) -> Result<Vec<(Client, Vec<Session>)>, String> {
    connect_all_with(url, connections, sessions, kind, client_config()).await
}

/// [`connect_all`] with a client configuration of the caller's (TLS, say).
pub async fn connect_all_with(
    url: &str,
    connections: usize,
    sessions: usize,
    kind: &str,
    config: ClientConfig,
) -> Result<Vec<(Client, Vec<Session>)>, String> {
    let gate = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for _ in 0..connections {
        let gate = gate.clone();
        let url = url.to_owned();
        let kind = kind.to_owned();
        let config = config.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut client = Client::connect(&url, config)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut opened = Vec::with_capacity(sessions);
            for _ in 0..sessions {
                opened.push(
                    client
                        .open(&kind, bytes::Bytes::new())
                        .await
                        .map_err(|e| format!("open: {e}"))?,
                );
            }
            Ok::<_, String>((client, opened))
        });
    }
    let mut out = Vec::with_capacity(connections);
    while let Some(joined) = set.join_next().await {
        out.push(joined.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

/// One echo run: connect, warm up, measure, tear down.
pub async fn run(
    url: &str,
    server_pid: Option<u32>,
    shape: Shape,
    bar: &indicatif::ProgressBar,
) -> Result<Outcome, String> {
    run_with(url, client_config(), server_pid, shape, bar).await
}

/// [`run`] with a client configuration of the caller's.
pub async fn run_with(
    url: &str,
    config: ClientConfig,
    server_pid: Option<u32>,
    shape: Shape,
    bar: &indicatif::ProgressBar,
) -> Result<Outcome, String> {
    let clients = connect_all_with(url, shape.connections, shape.sessions, "echo", config).await?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    let mut keep = Vec::with_capacity(clients.len());
    for (client, sessions) in clients {
        for session in sessions {
            workers.spawn(worker(session, shape, counters.clone(), stop_rx.clone()));
        }
        keep.push(client);
    }
    tokio::time::sleep(shape.warmup).await;
    let cpu0 = sys::cpu_self();
    let server0 = server_pid.and_then(sys::cpu_of);
    let allocs0 = (
        sys::allocations(sys::Role::Server),
        sys::allocations(sys::Role::Client),
    );
    counters.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let total = shape.measure;
    while start.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(100).min(total)).await;
        let secs = start.elapsed().as_secs_f64();
        bar.set_position((secs * 1000.0) as u64);
        let n = counters.messages.load(Ordering::Relaxed);
        bar.set_message(format!("{:.0} msgs/s", n as f64 / secs.max(1e-3)));
    }
    counters.measuring.store(false, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let server_allocs = sys::allocations(sys::Role::Server).saturating_sub(allocs0.0);
    let client_allocs = sys::allocations(sys::Role::Client).saturating_sub(allocs0.1);
    let cpu_self = sys::cpu_self().saturating_sub(cpu0);
    let cpu_server = match (server0, server_pid.and_then(sys::cpu_of)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let _ = stop_tx.send(true);
    let mut latency = histogram();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, workers.join_next()).await {
        if let Ok(h) = joined {
            let _ = latency.add(&h);
        }
    }
    workers.abort_all();
    for client in keep {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    }
    Ok(Outcome {
        messages: counters.messages.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        secs,
        cpu_self,
        cpu_server,
        latency,
        server_allocs,
        client_allocs,
    })
}

pub fn main(args: EchoArgs) -> Result<(), String> {
    if args.connections == 0
        || args.connections > 10_000
        || args.sessions == 0
        || args.sessions > 10_000
    {
        return Err("--connections and --sessions must be within 1..=10000".into());
    }
    let env = Env::new(&args.target, false)?;
    let shape = Shape {
        connections: args.connections,
        sessions: args.sessions,
        size: args.size.clamp(8, 64 * 1024),
        inflight: args.inflight.clamp(1, 64),
        rate: args.rate,
        warmup: Duration::from_secs(1),
        measure: seconds(args.duration),
    };
    println!("{}", crate::machine_line());
    println!(
        "echo: {} connections x {} sessions, {} B, {} in flight per session, rate {}, {:.1} s, server {}",
        shape.connections,
        shape.sessions,
        shape.size,
        shape.inflight,
        if shape.rate == 0 { "unlimited".to_owned() } else { format!("{}/s per session", shape.rate) },
        shape.measure.as_secs_f64(),
        env.url
    );
    let bar = crate::progress(shape.measure.as_millis() as u64, args.quiet, "echo");
    let outcome = env
        .client_rt
        .block_on(run(&env.url, env.server_pid, shape, &bar))?;
    bar.finish_and_clear();
    report(&outcome, &env);
    Ok(())
}

fn report(o: &Outcome, env: &Env) {
    println!(
        "  delivered     {} echoes in {:.2} s = {:.0} msgs/s",
        o.messages,
        o.secs,
        o.rate()
    );
    println!(
        "  throughput    {:.2} MB/s of echoed payload",
        o.bytes as f64 / o.secs / 1e6
    );
    println!("  round trip    {}", latency_line(&o.latency));
    let where_ = if env.server_pid.is_some() {
        "this process + server process"
    } else {
        "this process (client and server)"
    };
    println!(
        "  cpu           {:.3} s per million echoes ({where_}; client {:.2} s{})",
        o.cpu_per_million(),
        o.cpu_self.as_secs_f64(),
        o.cpu_server
            .map(|c| format!(", server {:.2} s", c.as_secs_f64()))
            .unwrap_or_default()
    );
    // Each echo is two deliveries (there and back); the client's own per-message payload
    // allocation (the timestamped `Bytes` it sends) is part of the client figure.
    let deliveries = (o.messages as f64 * 2.0).max(1.0);
    println!(
        "  allocations   server {:.3}, clients {:.3} per delivered message{}",
        o.server_allocs as f64 / deliveries,
        o.client_allocs as f64 / deliveries,
        if env.server_pid.is_some() {
            " (server in another process: not counted)"
        } else {
            ""
        }
    );
    match env.server_rss() {
        Some(rss) => println!("  server rss    {:.1} MiB", rss as f64 / (1 << 20) as f64),
        None => println!("  server rss    unknown (pass --server-pid)"),
    }
}

pub fn p3_main(args: P3Args) -> Result<(), String> {
    let n = args.sessions.clamp(1, 1000);
    let env = Env::new(&args.target, args.separate)?;
    let size = args.size.clamp(8, 64 * 1024);
    let measure = seconds(args.duration);
    println!("{}", crate::machine_line());
    println!(
        "P3: A = 1 WebSocket x {n} sessions, B = {n} WebSockets x 1 session; {size} B, {} in flight per session, {:.1} s per phase, {} rounds, server {}{}",
        args.inflight,
        measure.as_secs_f64(),
        args.rounds,
        env.url,
        if env.server_pid.is_some() { " (separate process)" } else { " (in process)" }
    );
    let mut a_rates = Vec::new();
    let mut b_rates = Vec::new();
    let mut rate_ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    let mut a_lat = histogram();
    let mut b_lat = histogram();
    for round in 0..args.rounds.clamp(1, 20) {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut results: [Option<Outcome>; 2] = [None, None];
        for one_socket in order {
            let shape = Shape {
                connections: if one_socket { 1 } else { n },
                sessions: if one_socket { n } else { 1 },
                size,
                inflight: args.inflight.clamp(1, 64),
                rate: 0,
                warmup: Duration::from_millis(500),
                measure,
            };
            let label = if one_socket { "A 1xWS" } else { "B NxWS" };
            let bar = crate::progress(measure.as_millis() as u64, args.quiet, label);
            let o = env
                .client_rt
                .block_on(run(&env.url, env.server_pid, shape, &bar))?;
            bar.finish_and_clear();
            println!(
                "  round {round} {label}: {:>9.0} msgs/s  {:.3} CPU-s/M  {}",
                o.rate(),
                o.cpu_per_million(),
                latency_line(&o.latency)
            );
            results[usize::from(!one_socket)] = Some(o);
        }
        if let [Some(a), Some(b)] = &results {
            a_rates.push(a.rate());
            b_rates.push(b.rate());
            rate_ratios.push(a.rate() / b.rate());
            cpu_ratios.push(a.cpu_per_million() / b.cpu_per_million());
            let _ = a_lat.add(&a.latency);
            let _ = b_lat.add(&b.latency);
        }
    }
    println!("P3 summary ({size} B):");
    println!(
        "  A one WebSocket, {n} sessions: median {:.0} msgs/s; {}",
        median(&a_rates),
        latency_line(&a_lat)
    );
    println!(
        "  B {n} WebSockets:             median {:.0} msgs/s; {}",
        median(&b_rates),
        latency_line(&b_lat)
    );
    println!(
        "  msgs/s ratio A/B: median {:.2} (per round: {:?})",
        median(&rate_ratios),
        round2(&rate_ratios)
    );
    println!(
        "  CPU per message A/B: median {:.2} (per round: {:?})",
        median(&cpu_ratios),
        round2(&cpu_ratios)
    );
    Ok(())
}

fn round2(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}
