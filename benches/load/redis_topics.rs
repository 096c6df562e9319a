//! `topics-redis`: the topic bench across nodes. The same subscribers (sessions over
//! loopback WebSockets, in this process) and the same publishes, side by side in
//! alternating rounds: all on one node with `LocalHub`, and split over two nodes joined by
//! a `mux_redis::RedisHub` (publishing on the first), through one Redis. Reports
//! publish-to-receive latency, deliveries per second, CPU, and Redis's own count of the
//! commands each publish cost (`INFO commandstats`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mux_redis::testing::{self, RedisServer};
use mux_redis::{RedisHub, RedisOptions};
use mux_tokio::quota::QuotaPolicy;
use mux_tokio::topic::{Hub, LocalHub, SubscribeOptions};
use mux_tokio::{
    AllowAll, Client, HandshakeRate, OriginPolicy, Server, ServerConfig, ServerHandle, Session,
};

use crate::echo::connect_all;
use crate::server::{self, TOPIC};
use crate::sys::{self, Role};
use crate::topics::{message, patience, record, subscriber, wait_until, WARMUP};
use crate::{histogram, median, RedisTopicArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Local,
    Redis,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Local => "1 node, LocalHub",
            Side::Redis => "2 nodes, RedisHub",
        }
    }
}

/// One round of one side.
struct Outcome {
    latency: Histogram<u64>,
    deliveries_per_sec: f64,
    cpu_per_million: f64,
    redis_cpu_per_million: Option<f64>,
    complete: bool,
    /// Redis commands per publish, by name (Redis side only).
    calls: HashMap<String, f64>,
}

/// A server whose every `topic` session is attached to `hub`.
async fn node<H: Hub + Clone>(hub: H) -> Result<(SocketAddr, ServerHandle), String> {
    let mut config = ServerConfig::default()
        .origins(OriginPolicy::allow(["http://localhost"]).allow_missing(true))
        .connection_limits(20_000, 20_000, 20_000)
        .protocol(server::protocol());
    config.accept_queue = 16_384;
    // A load generator connects a thousand times from one address as one principal.
    config.handshake_rate_per_ip = HandshakeRate::UNLIMITED;
    config.quotas = QuotaPolicy::none();
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut server = Server::bind(addr, config, AllowAll, AllowAll)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(async move {
        while let Some(mut session) = server.accept().await {
            let hub = hub.clone();
            tokio::spawn(async move {
                let options = SubscribeOptions::default().queue_capacity(256);
                let Ok(_subscription) = hub.attach(&session, options).await else {
                    return;
                };
                while session.recv().await.is_some() {}
            });
        }
    });
    Ok((addr, handle))
}

fn per_million(cpu: Duration, deliveries: f64) -> f64 {
    cpu.as_secs_f64() / (deliveries / 1e6)
}

#[allow(clippy::too_many_lines)]
fn run(
    side: Side,
    round: usize,
    args: &RedisTopicArgs,
    redis_url: &str,
    redis_pid: Option<u32>,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
) -> Result<Outcome, String> {
    let per = args.per_connection.clamp(1, 1000);
    let connections = args.subscribers.clamp(2, 10_000).div_ceil(per).max(2);
    let subscribers = connections * per;
    let publishes = args.publishes.clamp(1, 100_000) as u32;
    let interval = Duration::from_millis(args.interval_ms.clamp(1, 10_000));
    let size = args.size.clamp(12, 60 * 1024);

    // The nodes, and how the publisher and the attach count reach them.
    let local = LocalHub::new();
    let mut redis_hubs = Vec::new();
    let mut handles = Vec::new();
    let mut urls = Vec::new();
    match side {
        Side::Local => {
            let (addr, handle) = server_rt.block_on(node(local.clone()))?;
            urls.push(format!("ws://{addr}/"));
            handles.push(handle);
        }
        Side::Redis => {
            let options = RedisOptions::default().prefix(format!("bench{round}:"));
            for _ in 0..2 {
                let hub = server_rt
                    .block_on(RedisHub::connect(redis_url, options.clone()))
                    .map_err(|e| e.to_string())?;
                let (addr, handle) = server_rt.block_on(node(hub.clone()))?;
                urls.push(format!("ws://{addr}/"));
                handles.push(handle);
                redis_hubs.push(hub);
            }
            let linked = server_rt.block_on(async {
                for hub in &redis_hubs {
                    tokio::time::timeout(Duration::from_secs(10), hub.linked())
                        .await
                        .map_err(|_| "a RedisHub did not link to Redis within 10 s".to_owned())?;
                }
                Ok::<_, String>(())
            });
            linked?;
        }
    }
    let attached = || match side {
        Side::Local => local.subscriber_count(TOPIC),
        Side::Redis => redis_hubs
            .iter()
            .map(|h| h.local().subscriber_count(TOPIC))
            .sum(),
    };
    // The subscribers, split evenly over the nodes.
    let mut clients: Vec<(Client, Vec<Session>)> = Vec::new();
    let share = connections / urls.len();
    for (i, url) in urls.iter().enumerate() {
        let n = if i + 1 == urls.len() {
            connections - share * i
        } else {
            share
        };
        clients.extend(client_rt.block_on(connect_all(url, n, per, TOPIC))?);
    }
    if !wait_until(Duration::from_secs(30), || attached() == subscribers) {
        return Err(format!(
            "only {} of {subscribers} subscribers attached",
            attached()
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
    let publish = |from: u32, to: u32| {
        let (local, redis) = (local.clone(), redis_hubs.first().cloned());
        server_rt.spawn(async move {
            let mut inflight = Vec::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for seq in from..to {
                tick.tick().await;
                match &redis {
                    None => {
                        local.publish(TOPIC, message(seq, size));
                    }
                    Some(hub) => {
                        // Not awaited here, so a slow round trip does not lower the offered
                        // rate; one connection to Redis keeps them in order.
                        let hub = hub.clone();
                        let m = message(seq, size);
                        inflight.push(tokio::spawn(async move {
                            if let Err(e) = hub.publish_to(TOPIC, m).await {
                                eprintln!("publish {seq}: {e}");
                            }
                        }));
                    }
                }
            }
            for publish in inflight {
                let _ = publish.await;
            }
        })
    };
    let warm = u64::from(WARMUP) * subscribers as u64;
    drop(publish(0, WARMUP));
    if !wait_until(Duration::from_secs(30), || {
        delivered.load(Ordering::Relaxed) >= warm
    }) {
        return Err("warm-up messages were not all delivered".into());
    }
    if side == Side::Redis {
        testing::reset_stats(redis_url);
    }
    let cpu0 = sys::cpu_self();
    let redis_cpu0 = redis_pid.and_then(sys::cpu_of);
    let start = Instant::now();
    let publisher = publish(WARMUP, total);
    let limit = interval * publishes + Duration::from_secs(30);
    let published = server_rt
        .block_on(async { tokio::time::timeout(limit, publisher).await })
        .is_ok();
    // Redis's counts now, before subscribers that are done leave (and their node unsubscribes).
    let calls = if side == Side::Redis {
        testing::command_calls(redis_url)
            .into_iter()
            .filter(|(name, _)| !name.starts_with("config"))
            .map(|(name, n)| (name, n as f64 / f64::from(publishes)))
            .collect()
    } else {
        HashMap::new()
    };
    let goal = u64::from(total) * subscribers as u64;
    let complete = published
        && wait_until(Duration::from_secs(30), || {
            delivered.load(Ordering::Relaxed) >= goal
        });
    let secs = start.elapsed().as_secs_f64();
    let cpu = sys::cpu_self().saturating_sub(cpu0);
    let redis_cpu = match (redis_cpu0, redis_pid.and_then(sys::cpu_of)) {
        (Some(a), Some(b)) if side == Side::Redis => Some(b.saturating_sub(a)),
        _ => None,
    };
    let mut latency = histogram();
    for t in tasks {
        if let Ok(Ok(samples)) =
            client_rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), t).await })
        {
            record(&mut latency, &samples);
        }
    }
    let deliveries = f64::from(publishes) * subscribers as f64;
    client_rt.block_on(async {
        for client in keep {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
        }
    });
    for handle in handles {
        server_rt.block_on(handle.shutdown(Duration::from_secs(2)));
    }
    drop(redis_hubs);
    Ok(Outcome {
        latency,
        deliveries_per_sec: deliveries / secs,
        cpu_per_million: per_million(cpu, deliveries),
        redis_cpu_per_million: redis_cpu.map(|c| per_million(c, deliveries)),
        complete,
        calls,
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn main(args: RedisTopicArgs) -> Result<(), String> {
    let server_rt = crate::runtime(args.server_threads, Role::Server, "server")?;
    let client_rt = crate::runtime(args.client_threads, Role::Client, "client")?;
    let spawned;
    let (url, pid) = match &args.redis_url {
        Some(url) => {
            check_redis_url(url)?;
            (url.clone(), None)
        }
        None => {
            if std::process::Command::new("redis-server")
                .arg("--version")
                .output()
                .is_err()
            {
                return Err(
                    "redis-server not found: install Debian's redis-server package \
                            (apt-get install redis-server) or pass --redis-url"
                        .into(),
                );
            }
            spawned = RedisServer::start();
            (spawned.url(), spawned.pid())
        }
    };
    println!("{}", crate::machine_line());
    let subscribers = args.subscribers.clamp(2, 10_000);
    println!(
        "topics-redis: {subscribers} subscribers ({} per connection), {} publishes of {} B every {} ms, {} rounds alternating; Redis at {url}",
        args.per_connection,
        args.publishes,
        args.size,
        args.interval_ms,
        args.rounds
    );
    let rounds = args.rounds.clamp(1, 20);
    let mut outcomes: HashMap<&'static str, Vec<Outcome>> = HashMap::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Side::Local, Side::Redis]
        } else {
            [Side::Redis, Side::Local]
        };
        for side in order {
            let o = run(side, round, &args, &url, pid, &server_rt, &client_rt)?;
            println!(
                "  round {round} {:<18} p50 {:7.3} ms  p99 {:7.3} ms  {:>9.0} deliveries/s  {:.2} CPU-s/M{}{}",
                side.name(),
                ms(o.latency.value_at_quantile(0.5)),
                ms(o.latency.value_at_quantile(0.99)),
                o.deliveries_per_sec,
                o.cpu_per_million,
                o.redis_cpu_per_million
                    .map_or(String::new(), |c| format!(" (+ redis-server {c:.2})")),
                if o.complete { "" } else { "  NOT ALL DELIVERED" }
            );
            outcomes.entry(side.name()).or_default().push(o);
        }
    }
    println!();
    println!(
        "| side | p50 ms | p99 ms | p99.9 ms | deliveries/s | CPU-s per M deliveries | complete |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for side in [Side::Local, Side::Redis] {
        let Some(runs) = outcomes.get(side.name()) else {
            continue;
        };
        let mut all = histogram();
        for o in runs {
            let _ = all.add(&o.latency);
        }
        let rate: Vec<f64> = runs.iter().map(|o| o.deliveries_per_sec).collect();
        let cpu: Vec<f64> = runs.iter().map(|o| o.cpu_per_million).collect();
        let redis_cpu: Vec<f64> = runs
            .iter()
            .filter_map(|o| o.redis_cpu_per_million)
            .collect();
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.2}{} | {} |",
            side.name(),
            ms(all.value_at_quantile(0.5)),
            ms(all.value_at_quantile(0.99)),
            ms(all.value_at_quantile(0.999)),
            median(&rate),
            median(&cpu),
            if redis_cpu.is_empty() {
                String::new()
            } else {
                format!(" + redis-server {:.2}", median(&redis_cpu))
            },
            runs.iter().all(|o| o.complete)
        );
    }
    if let Some(runs) = outcomes.get(Side::Redis.name()) {
        let mut names: Vec<&String> = runs.iter().flat_map(|o| o.calls.keys()).collect();
        names.sort();
        names.dedup();
        let per: Vec<String> = names
            .iter()
            .map(|name| {
                let v: Vec<f64> = runs
                    .iter()
                    .map(|o| o.calls.get(*name).copied().unwrap_or(0.0))
                    .collect();
                format!("{name} {:.3}", median(&v))
            })
            .collect();
        println!();
        println!(
            "Redis commands per publish (INFO commandstats over the measured publishes, median of rounds; \
             evalsha is the one client round trip, the others run inside the script): {}",
            per.join(", ")
        );
    }
    Ok(())
}

/// The tool talks to loopback only: `redis://127.0.0.1...`, `redis://localhost...`,
/// `redis://[::1]...`.
fn check_redis_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url}: only redis:// URLs on loopback are accepted"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        Ok(())
    } else {
        Err(format!("{url}: refusing a non-loopback Redis"))
    }
}
