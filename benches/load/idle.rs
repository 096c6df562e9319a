//! P7: the server's resident memory per idle connection (one idle session each) and per idle
//! session (all on one connection), with the server in another process (`serve --hold`: the
//! server keeps each session's handle and runs no task for it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mux_tokio::Session;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::server::{ChildServer, ChildStats};
use crate::{check_url, echo, sys, P7Args};

struct Probe {
    child: Option<ChildServer>,
    pid: u32,
}

impl Probe {
    /// The server's RSS (trimmed first when it is our child) and, from a child, its counts.
    fn stats(&mut self) -> Result<ChildStats, String> {
        match &mut self.child {
            Some(child) => child.stats(),
            None => Ok(ChildStats {
                rss: sys::rss(&self.pid.to_string()).ok_or("cannot read the server's RSS")?,
                ..ChildStats::default()
            }),
        }
    }

    /// Waits (at most `limit`) until the child reports `conns` connections.
    fn wait_conns(&mut self, conns: u64, limit: Duration) -> Result<ChildStats, String> {
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let s = self.stats()?;
            if self.child.is_none() || s.conns == conns || start.elapsed() > limit {
                return Ok(s);
            }
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

pub fn main(args: P7Args) -> Result<(), String> {
    let connections = args.connections.clamp(1, 15_000);
    let sessions = args.sessions.clamp(1, 10_000);
    let (url, mut probe) = match &args.url {
        Some(url) => {
            check_url(url)?;
            let pid = args
                .server_pid
                .ok_or("--url needs --server-pid for the server's RSS")?;
            (url.clone(), Probe { child: None, pid })
        }
        None => {
            let child = ChildServer::spawn(
                crate::server::Options {
                    hold: true,
                    read_buffer: args.read_buffer,
                    ..crate::server::Options::default()
                },
                1,
            )?;
            let pid = child.pid;
            (
                child.url(),
                Probe {
                    child: Some(child),
                    pid,
                },
            )
        }
    };
    let rt = crate::runtime(2, sys::Role::Client, "client")?;
    println!("{}", crate::machine_line());
    println!("P7: idle memory of the server (pid {}, {url})", probe.pid);

    // (a) connections, one idle session each.
    let base = probe.wait_conns(0, Duration::from_secs(5))?;
    let bar = crate::progress(0, args.quiet, "connecting");
    bar.enable_steady_tick(Duration::from_millis(200));
    let start = Instant::now();
    let clients = rt.block_on(echo::connect_all(&url, connections, 1, "idle"))?;
    bar.finish_and_clear();
    println!(
        "  (a) {connections} connections with one idle session each: connected in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let loaded = probe.wait_conns(connections as u64, Duration::from_secs(10))?;
    let per_conn = loaded.rss.saturating_sub(base.rss) as f64 / connections as f64;
    let heap_per_conn = loaded.heap.saturating_sub(base.heap) as f64 / connections as f64;
    println!(
        "      server RSS {:.1} MiB -> {:.1} MiB (server reports {} connections, {} sessions held): {:.0} B per idle connection",
        mib(base.rss),
        mib(loaded.rss),
        loaded.conns,
        loaded.sessions,
        per_conn
    );
    if probe.child.is_some() {
        println!("      of which live heap {heap_per_conn:.0} B per connection");
    }
    rt.block_on(async {
        let mut set = JoinSet::new();
        for (client, sessions) in clients {
            set.spawn(async move {
                drop(sessions);
                let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
            });
        }
        while set.join_next().await.is_some() {}
    });
    probe.wait_conns(0, Duration::from_secs(30))?;

    // (b) one connection, many idle sessions.
    let mut one = rt.block_on(echo::connect_all(&url, 1, 0, "idle"))?;
    let before = probe.wait_conns(1, Duration::from_secs(5))?;
    let (client, _) = one.pop().ok_or("no connection")?;
    let (client, held): (mux_tokio::Client, Vec<Session>) = rt.block_on(async {
        let mut client = client;
        let handle = client.connection().await.ok_or("connection lost")?;
        let gate = Arc::new(Semaphore::new(64));
        let mut set = JoinSet::new();
        for _ in 0..sessions {
            let handle = handle.clone();
            let gate = gate.clone();
            set.spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                handle
                    .open("idle", bytes::Bytes::new())
                    .await
                    .map_err(|e| format!("open: {e}"))
            });
        }
        let mut held = Vec::with_capacity(sessions);
        while let Some(joined) = set.join_next().await {
            held.push(joined.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>((client, held))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let after = probe.stats()?;
    let per_session = after.rss.saturating_sub(before.rss) as f64 / sessions as f64;
    let heap_per_session = after.heap.saturating_sub(before.heap) as f64 / sessions as f64;
    println!(
        "  (b) one connection with {sessions} idle sessions: server RSS {:.1} MiB -> {:.1} MiB ({} sessions held): {:.0} B per idle session",
        mib(before.rss),
        mib(after.rss),
        after.sessions,
        per_session
    );
    if probe.child.is_some() {
        println!("      of which live heap {heap_per_session:.0} B per session");
    }
    println!(
        "  per session / per connection = {:.4} (1/{:.0})",
        per_session / per_conn,
        per_conn / per_session.max(1.0)
    );
    drop(held);
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    });
    drop(probe);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
