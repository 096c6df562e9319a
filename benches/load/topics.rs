//! Issue #5's topic bench: the server application publishes to a topic with N subscribers
//! (sessions over loopback WebSockets, in this process); each subscriber measures
//! publish-to-receive latency. Allocations are counted per publish per recipient, split by
//! the server's and the clients' runtime threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use mux_tokio::topic::{decode, LocalHub, TopicEvent};
use mux_tokio::Session;

use crate::echo::connect_all;
use crate::server::{self, TOPIC};
use crate::sys::{self, Role};
use crate::{age_us, histogram, latency_line, now_ns, TopicArgs};

pub const WARMUP: u32 = 10;

pub fn message(seq: u32, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(12));
    b.put_u64(now_ns());
    b.put_u32(seq);
    b.resize(size.max(12), 0x5a);
    b.freeze()
}

/// How long a subscriber waits for all of a run's messages: the run's length plus a margin,
/// a guard against a run that hangs, not a measurement.
pub fn patience(interval: Duration, total: u32) -> Duration {
    interval.saturating_mul(total) + Duration::from_secs(30)
}

/// One subscriber: receives `total` messages and returns the latency of each measured one,
/// in µs. The samples go into a vector sized up front and the histogram is built once the
/// run is over, so recording one is a store into memory the task already touched (a
/// histogram per subscriber is ~150 KB, and 1,000 of them missed the cache on every
/// message). One deadline for the whole run guards against a hang, rather than a timer
/// armed and cancelled around every receive.
pub async fn subscriber(
    mut session: Session,
    total: u32,
    delivered: Arc<AtomicU64>,
    patience: Duration,
) -> Vec<u32> {
    let mut samples = Vec::with_capacity(total.saturating_sub(WARMUP) as usize);
    let mut seen = 0u32;
    let give_up = tokio::time::sleep(patience);
    tokio::pin!(give_up);
    while seen < total {
        let m = tokio::select! {
            biased;
            m = session.recv() => m,
            () = &mut give_up => break,
        };
        let Some(m) = m else {
            break;
        };
        if let Ok(TopicEvent::Message { payload: body, .. }) = decode(&m) {
            let seq = body
                .get(8..12)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u32::from_be_bytes);
            if seq >= WARMUP {
                if let Some(us) = age_us(&body) {
                    samples.push(u32::try_from(us.max(1)).unwrap_or(u32::MAX));
                }
            }
            seen += 1;
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    samples
}

/// Adds a subscriber's samples to `latency`.
pub fn record(latency: &mut Histogram<u64>, samples: &[u32]) {
    for &us in samples {
        latency.saturating_record(u64::from(us));
    }
}

pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

pub fn main(args: TopicArgs) -> Result<(), String> {
    let server_rt = crate::runtime(args.server_threads, Role::Server, "server")?;
    let client_rt = crate::runtime(args.client_threads, Role::Client, "client")?;
    let publishes = args.publishes.clamp(1, 100_000) as u32;
    let interval = Duration::from_millis(args.interval_ms.clamp(1, 10_000));
    let per = args.per_connection.clamp(1, 1000);
    println!("{}", crate::machine_line());
    for &wanted in &args.subscribers {
        let wanted = wanted.clamp(1, 10_000);
        let connections = wanted.div_ceil(per);
        let subscribers = connections * per;
        let hub = LocalHub::new();
        let running = server_rt
            .block_on(server::start(
                ([127, 0, 0, 1], 0).into(),
                server::Options::default(),
                Some(hub.clone()),
            ))
            .map_err(|e| format!("bind: {e}"))?;
        let url = format!("ws://{}/", running.addr);
        let clients = client_rt.block_on(connect_all(&url, connections, per, TOPIC))?;
        if !wait_until(Duration::from_secs(20), || {
            hub.subscriber_count(TOPIC) == subscribers
        }) {
            return Err(format!(
                "only {} of {subscribers} subscribers attached",
                hub.subscriber_count(TOPIC)
            ));
        }
        let delivered = Arc::new(AtomicU64::new(0));
        let total = WARMUP + publishes;
        let mut keep = Vec::new();
        let mut tasks = Vec::new();
        for (client, sessions) in clients {
            for session in sessions {
                tasks.push(client_rt.spawn(subscriber(
                    session,
                    total,
                    delivered.clone(),
                    patience(interval, total),
                )));
            }
            keep.push(client);
        }
        let size = args.size.clamp(12, 60 * 1024);
        // Warm-up publishes, then measured ones; allocations counted from the first measured
        // publish until the last delivery.
        // Time inside `publish` for the measured publishes: the hub's fan-out into the
        // sessions, without the connections' writes that follow it.
        let in_publish = Arc::new(AtomicU64::new(0));
        let publish = |from: u32, to: u32| {
            let hub = hub.clone();
            let in_publish = in_publish.clone();
            server_rt.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for seq in from..to {
                    tick.tick().await;
                    let called = Instant::now();
                    hub.publish(TOPIC, message(seq, size));
                    if seq >= WARMUP {
                        let ns = u64::try_from(called.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        in_publish.fetch_add(ns, Ordering::Relaxed);
                    }
                }
            })
        };
        let warm = (WARMUP as u64) * subscribers as u64;
        drop(publish(0, WARMUP));
        if !wait_until(Duration::from_secs(20), || {
            delivered.load(Ordering::Relaxed) >= warm
        }) {
            return Err("warm-up messages were not all delivered".into());
        }
        let server0 = sys::allocations(Role::Server);
        let client0 = sys::allocations(Role::Client);
        let cpu0 = sys::cpu_self();
        let start = Instant::now();
        drop(publish(WARMUP, total));
        let goal = u64::from(total) * subscribers as u64;
        let limit = interval * publishes + Duration::from_secs(30);
        let complete = wait_until(limit, || delivered.load(Ordering::Relaxed) >= goal);
        let secs = start.elapsed().as_secs_f64();
        let cpu = sys::cpu_self().saturating_sub(cpu0);
        let server_allocs = sys::allocations(Role::Server) - server0;
        let client_allocs = sys::allocations(Role::Client) - client0;
        let mut latency = histogram();
        for t in tasks {
            if let Ok(Ok(samples)) =
                client_rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), t).await })
            {
                record(&mut latency, &samples);
            }
        }
        let deliveries = (u64::from(publishes) * subscribers as u64) as f64;
        println!(
            "topics: {subscribers} subscribers ({connections} connections x {per}), {publishes} publishes of {size} B every {} ms{}",
            interval.as_millis(),
            if complete { "" } else { " -- NOT ALL DELIVERED" }
        );
        println!("  publish-to-receive  {}", latency_line(&latency));
        println!(
            "  allocations per publish per recipient: server {:.2}, clients {:.2}, total {:.2}",
            server_allocs as f64 / deliveries,
            client_allocs as f64 / deliveries,
            (server_allocs + client_allocs) as f64 / deliveries
        );
        let in_publish = in_publish.load(Ordering::Relaxed) as f64;
        println!(
            "  inside publish: {:.0} µs per publish, {:.0} ns per recipient",
            in_publish / f64::from(publishes) / 1e3,
            in_publish / deliveries
        );
        println!(
            "  {:.0} deliveries/s over {:.2} s; CPU {:.2} s ({:.2} CPU-s per million deliveries)",
            deliveries / secs,
            secs,
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / (deliveries / 1e6)
        );
        client_rt.block_on(async {
            for client in keep {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
            }
        });
        server_rt.block_on(running.handle.shutdown(Duration::from_secs(2)));
    }
    Ok(())
}
