//! `scale`: N connections (default 5,000) through nginx running `deploy/nginx.conf` (TLS
//! ends there, a certificate made at start) to two `serve` nodes in child processes, one
//! session per connection sending a stamped 64 B message at 10 Hz: delivered rate against
//! offered, round trip p50/p99, and the nodes' and nginx's resident memory per connection
//! (sampled in the middle of the measurement, less what they held before connecting).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mux_tokio::rustls;

use crate::echo::{self, Shape};
use crate::server::{self, ChildServer};
use crate::{latency_line, seconds, sys, ScaleArgs};

#[path = "../../mux-tokio/tests/proxy/harness.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod harness;

/// Descriptors per process (`ulimit -n`): nginx holds two per connection.
const MAX_CONNECTIONS: usize = 9_000;

/// A self-signed certificate for 127.0.0.1 and the client configuration that trusts it.
fn tls() -> Result<(String, String, Arc<rustls::ClientConfig>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((cert.pem(), key.serialize_pem(), Arc::new(config)))
}

fn rss_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| sys::rss(&p.to_string())).sum()
}

fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| sys::cpu_of(*p)).sum()
}

pub fn main(args: ScaleArgs) -> Result<(), String> {
    let n = args.connections;
    if n == 0 || n > MAX_CONNECTIONS {
        return Err(format!(
            "--connections must be within 1..={MAX_CONNECTIONS}"
        ));
    }
    let mut a = ChildServer::spawn(server::Options::default(), args.server_threads)?;
    let mut b = ChildServer::spawn(server::Options::default(), args.server_threads)?;
    let nodes = [a.pid, b.pid];
    let idle_nodes = a.stats()?.rss.saturating_add(b.stats()?.rss);
    let (cert_pem, key_pem, client_tls) = tls()?;
    let options = harness::Options {
        nodes: [
            ([127, 0, 0, 1], a.port).into(),
            ([127, 0, 0, 1], b.port).into(),
        ],
        cert_pem,
        key_pem,
        overrides: Vec::new(),
        // Two per client (the client and the node), with room: nginx starts reusing
        // connections, resetting them, once it runs short.
        max_connections: n.saturating_mul(3).saturating_add(256),
    };
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let proxy = harness::Proxy::start(harness::Kind::Nginx, &deploy, &options);
    let proxy_pid = proxy.pid();
    let idle_proxy = sys::rss(&proxy_pid.to_string()).unwrap_or(0);
    let shape = Shape {
        connections: n,
        sessions: 1,
        size: 64,
        inflight: 4,
        rate: args.rate.max(1),
        warmup: Duration::from_secs(2),
        measure: seconds(args.duration),
    };
    println!("{}", crate::machine_line());
    println!(
        "scale: {n} connections x 1 session through nginx (TLS) to 2 nodes, 64 B at {} Hz each \
         (offered {} msgs/s), {:.0} s measured, {} client thread(s), {} thread(s) per node",
        shape.rate,
        n.saturating_mul(shape.rate as usize),
        shape.measure.as_secs_f64(),
        args.client_threads,
        args.server_threads,
    );
    // The memory sample: once the nodes hold every connection, in the middle of the
    // measurement that follows the warm-up. The thread keeps the nodes until it returns.
    let after_connect = shape.warmup.saturating_add(shape.measure / 2);
    let sampler = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(300) {
            let conns = match (a.stats(), b.stats()) {
                (Ok(x), Ok(y)) => x.conns.saturating_add(y.conns),
                _ => break,
            };
            if conns >= n as u64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(after_connect);
        let rss = rss_of(&nodes);
        let proxy = sys::rss(&proxy_pid.to_string()).unwrap_or(0);
        (a, b, rss, proxy)
    });
    let rt = crate::runtime(args.client_threads, sys::Role::Client, "client")?;
    let config = echo::client_config().tls(client_tls);
    let cpu0 = (cpu_of(&nodes), sys::cpu_of(proxy_pid), sys::cpu_self());
    let connect_started = Instant::now();
    let bar = crate::progress(shape.measure.as_millis() as u64, args.quiet, "scale");
    let outcome = rt.block_on(echo::run_with(&proxy.url(), config, None, shape, &bar))?;
    bar.finish_and_clear();
    let total = connect_started.elapsed();
    let cpu_nodes = cpu_of(&nodes).saturating_sub(cpu0.0);
    let cpu_proxy = sys::cpu_of(proxy_pid)
        .zip(cpu0.1)
        .map(|(b, a)| b.saturating_sub(a));
    let cpu_client = sys::cpu_self().saturating_sub(cpu0.2);
    let (a, b, rss_nodes, rss_proxy) = sampler.join().map_err(|_| "sampler panicked")?;
    let offered = n as f64 * f64::from(shape.rate);
    println!(
        "  delivered     {:.0} echoes/s of {offered:.0} offered ({:.1} %), {} in {:.1} s",
        outcome.rate(),
        100.0 * outcome.rate() / offered,
        outcome.messages,
        outcome.secs
    );
    println!("  round trip    {}", latency_line(&outcome.latency));
    let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / n as f64 / 1024.0;
    println!(
        "  nodes rss     {:.1} MiB for {n} connections: {:.1} KiB per connection (idle {:.1} MiB)",
        rss_nodes as f64 / (1 << 20) as f64,
        per(rss_nodes, idle_nodes),
        idle_nodes as f64 / (1 << 20) as f64
    );
    println!(
        "  nginx rss     {:.1} MiB: {:.1} KiB per connection",
        rss_proxy as f64 / (1 << 20) as f64,
        per(rss_proxy, idle_proxy)
    );
    println!(
        "  cpu           nodes {:.1} s, nginx {:.1} s, clients {:.1} s over {:.1} s (connect, warm-up, measure)",
        cpu_nodes.as_secs_f64(),
        cpu_proxy.unwrap_or_default().as_secs_f64(),
        cpu_client.as_secs_f64(),
        total.as_secs_f64()
    );
    drop(proxy);
    drop((a, b));
    Ok(())
}
