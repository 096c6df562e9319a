//! Network partitions between a real client and server: each runs on a thread of its own
//! moved into its own network namespace, the two joined by a veth pair (169.254.77.1 and
//! .2, link-local addresses that exist only inside these namespaces). The test cuts the
//! link (the server's end down) for longer than the keepalive deadline, then heals it:
//! the client notices within the deadline, backs off while the link is down, reconnects
//! after the heal and its sessions work again; the server frees the dead connection within
//! its own deadline. A topic subscription rides through it: the messages published while the
//! link was down arrive after the heal, resumed from the topic's history, each exactly once. Then 20 % loss and 200 ms of delay on the server's egress (tc netem
//! where the kernel has it, otherwise the same impairment applied by a userspace wire over
//! TUN devices that the server's packets are routed through): sessions keep working, slower.
//!
//! Keepalive is scaled down from 15 s + 10 s to 1 s + 4 s. Waits are in real time and
//! bounded. Without root, or where `ip netns` fails, the test prints why and passes.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mux_tokio::topic::{LocalHub, SubscribeOptions, TopicEvent, TopicOptions, TopicStream};
use mux_tokio::{
    AllowAll, Backoff, Client, ClientConfig, ClientEvent, OriginPolicy, Server, ServerConfig,
    ServerHandle, Session,
};
use tokio::sync::oneshot;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);
const KEEPALIVE: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
/// What a protocol deadline may overrun by on a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

/// Runs `ip` with `args`; the error is its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Two namespaces and the veth pair between them; deleted on drop.
struct Topology {
    client_ns: String,
    server_ns: String,
}

impl Topology {
    /// `Err(reason)` when this machine cannot run the test.
    fn new() -> Result<Topology, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
        }
        let id = std::process::id();
        let topology = Topology {
            client_ns: format!("muxc{id}"),
            server_ns: format!("muxs{id}"),
        };
        ip(&["netns", "add", &topology.client_ns])?;
        ip(&["netns", "add", &topology.server_ns])?;
        let (c, s) = (&topology.client_ns, &topology.server_ns);
        ip(&[
            "link", "add", "muxvc", "netns", c, "type", "veth", "peer", "name", "muxvs", "netns", s,
        ])?;
        for (ns, dev, addr) in [(c, "muxvc", CLIENT_IP), (s, "muxvs", SERVER_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(topology)
    }

    fn cut(&self) {
        must(&["-n", &self.server_ns, "link", "set", "muxvs", "down"]);
    }

    fn heal(&self) {
        must(&["-n", &self.server_ns, "link", "set", "muxvs", "up"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the devices in it (both veth ends, the TUN devices).
        let _ = ip(&["netns", "del", &self.client_ns]);
        let _ = ip(&["netns", "del", &self.server_ns]);
    }
}

/// Runs `f` on a new thread moved into network namespace `ns`: sockets it creates belong
/// to that namespace, wherever they are used from later.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the namespace");
        f()
    })
}

/// A current-thread runtime on a thread in `ns` that runs `start`, hands back its output,
/// and keeps driving the tasks it spawned until `stop` fires.
async fn side<T, F>(
    ns: &str,
    start: impl FnOnce() -> F + Send + 'static,
) -> (T, oneshot::Sender<()>)
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let (out_tx, out_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let _thread = in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _ = out_tx.send(start().await);
            let _ = stop_rx.await;
        });
    });
    (out_rx.await.expect("the side started"), stop_tx)
}

fn protocol() -> mux_tokio::Config {
    let mut c = mux_tokio::Config::default();
    c.timeouts.keepalive_interval = Some(KEEPALIVE);
    c.timeouts.keepalive_timeout = KEEPALIVE_TIMEOUT;
    c
}

async fn within<T>(d: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {d:?} waiting for {what}"))
}

/// The next client event matching `want`, skipping others, within `d`; the events seen.
async fn event(
    client: &mut Client,
    d: Duration,
    what: &str,
    want: impl Fn(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    within(d, what, async {
        let mut seen = Vec::new();
        loop {
            let e = client.next_event().await.expect("client events");
            let done = want(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    })
    .await
}

/// Echoes numbers `from..to` one at a time on `session`, opening a new session (after a
/// reconnect) whenever it ends and resending what had no echo; the round trips.
async fn echo_numbers(
    client: &mut Client,
    session: &mut Option<Session>,
    from: u64,
    to: u64,
) -> Vec<Duration> {
    let mut rtts = Vec::new();
    let mut next = from;
    while next < to {
        if session.is_none() {
            *session = Some(loop {
                match client.open("echo", Bytes::new()).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            });
        }
        let s = session.as_mut().unwrap();
        let sent = Instant::now();
        let ok = s
            .send(Bytes::from(next.to_be_bytes().to_vec()))
            .await
            .is_ok();
        match if ok { s.recv().await } else { None } {
            Some(echo) => {
                assert_eq!(echo.as_ref(), next.to_be_bytes(), "out of order");
                rtts.push(sent.elapsed());
                next += 1;
            }
            None => *session = None,
        }
    }
    rtts
}

/// The topic the subscriber follows through the partition.
const NEWS: &str = "news";

/// The next `n` messages of `stream`, skipping position events (each new subscription
/// starts with one) and failing on a gap: with the history holding everything, none is due.
async fn news(stream: &mut TopicStream, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        match stream.next().await {
            Ok(TopicEvent::Message { payload, .. }) => {
                got.push(u64::from_be_bytes(payload.as_ref().try_into().unwrap()));
            }
            Ok(TopicEvent::Position(_)) => {}
            Ok(other) => panic!("unexpected topic event {other:?}"),
            // A refused or ended subscription is retried by the next call.
            Err(e) => println!("partition: topic: {e}"),
        }
    }
    got
}

fn publish(hub: &LocalHub, numbers: std::ops::Range<u64>) {
    for n in numbers {
        hub.publish(NEWS, Bytes::from(n.to_be_bytes().to_vec()));
    }
}

/// 20 % loss and 200 ms delay on the server's egress: netem if the kernel has it, else the
/// userspace wire. The wire's task is returned to keep it running.
async fn impair(t: &Topology) -> Option<tokio::task::JoinHandle<()>> {
    let netem = ip(&[
        "netns",
        "exec",
        &t.server_ns,
        "tc",
        "qdisc",
        "add",
        "dev",
        "muxvs",
        "root",
        "netem",
        "loss",
        "20%",
        "delay",
        "200ms",
    ]);
    match netem {
        Ok(()) => {
            println!("partition: impairment by tc netem");
            None
        }
        Err(e) => {
            println!("partition: no netem here ({e}); impairment by a userspace wire over TUN");
            Some(wire(t).await)
        }
    }
}

/// Routes the server's packets to the client through TUN devices (`muxts` in the server's
/// namespace, `muxtc` in the client's) joined by a task that drops 20 % of them and
/// delays the rest by 200 ms. The devices are made here and moved into the namespaces; the
/// open descriptors keep working there.
async fn wire(t: &Topology) -> tokio::task::JoinHandle<()> {
    let make = |name: &str| {
        tokio_tun::Tun::builder()
            .name(name)
            .build()
            .unwrap_or_else(|e| panic!("TUN {name}: {e}"))
            .pop()
            .unwrap()
    };
    let from_server = make("muxts");
    let to_client = make("muxtc");
    let (c, s) = (&t.client_ns, &t.server_ns);
    must(&["link", "set", "muxts", "netns", s]);
    must(&["link", "set", "muxtc", "netns", c]);
    for (ns, dev, addr) in [
        (s, "muxts", "169.254.78.2/32"),
        (c, "muxtc", "169.254.78.1/32"),
    ] {
        must(&["-n", ns, "addr", "add", addr, "dev", dev]);
        must(&["-n", ns, "link", "set", dev, "up"]);
    }
    // Packets from the server arrive on a device the client would not route back through.
    for key in ["all", "muxtc"] {
        let path = format!("/proc/sys/net/ipv4/conf/{key}/rp_filter");
        let set = format!("echo 0 > {path}");
        must(&["netns", "exec", c, "sh", "-c", &set]);
    }
    must(&[
        "-n",
        s,
        "route",
        "add",
        &format!("{CLIENT_IP}/32"),
        "dev",
        "muxts",
    ]);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut queue: VecDeque<(tokio::time::Instant, Vec<u8>)> = VecDeque::new();
        let mut seed = u64::from(std::process::id()) | 1;
        loop {
            let due = queue.front().map(|(at, _)| *at);
            tokio::select! {
                read = from_server.recv(&mut buf) => {
                    let Ok(n) = read else { return };
                    // xorshift64: a fifth of the packets are lost.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed % 5 != 0 {
                        let at = tokio::time::Instant::now() + Duration::from_millis(200);
                        queue.push_back((at, buf[..n].to_vec()));
                    }
                }
                () = async { tokio::time::sleep_until(due.unwrap()).await }, if due.is_some() => {
                    let (_, packet) = queue.pop_front().unwrap();
                    let _ = to_client.send(&packet).await;
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_detected_healed_and_survived() {
    let topology = match Topology::new() {
        Ok(t) => t,
        Err(reason) => {
            println!("partition: skipped: {reason}");
            return;
        }
    };
    // The server, in its namespace.
    let ((addr, handle, hub), stop_server) = side(&topology.server_ns, || async {
        let hub = LocalHub::new();
        hub.configure_topic(
            NEWS,
            TopicOptions::default().history(1_000, Duration::from_secs(600)),
        );
        let config = ServerConfig::default()
            .origins(OriginPolicy::default().allow_missing(true))
            .protocol(protocol());
        let mut server = Server::bind(SocketAddr::from((SERVER_IP, 0)), config, AllowAll, AllowAll)
            .await
            .expect("bind in the server namespace");
        let out: (SocketAddr, ServerHandle, LocalHub) =
            (server.local_addr(), server.handle(), hub.clone());
        tokio::spawn(async move {
            while let Some(mut session) = server.accept().await {
                let hub = hub.clone();
                tokio::spawn(async move {
                    if session.kind() != "echo" {
                        // A topic session: subscribed for as long as it lives.
                        let _subscription = hub.attach(&session, SubscribeOptions::default());
                        while session.recv().await.is_some() {}
                        return;
                    }
                    while let Some(m) = session.recv().await {
                        if session.send(m).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        out
    })
    .await;
    // The client, in its namespace; used from here, its connections live there.
    let url = format!("ws://{addr}/");
    let (client, stop_client) = side(&topology.client_ns, move || async move {
        let mut config = ClientConfig::default()
            .protocol(protocol())
            .backoff(Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(2),
                None,
            ));
        config.connect_timeout = Duration::from_secs(1);
        Client::connect(&url, config).await
    })
    .await;
    let mut client = client.unwrap_or_else(|e| panic!("connect across the veth pair: {e}"));
    let handle = Arc::new(handle);
    let mut session = None;
    echo_numbers(&mut client, &mut session, 0, 10).await;
    assert_eq!(handle.stats().connections, 1);
    let mut topic = within(Duration::from_secs(10), "the subscription", async {
        client.subscribe(NEWS, Bytes::new()).await
    })
    .await
    .expect("subscribe");
    // Subscribed once the server side has attached it (its open completes before that).
    within(Duration::from_secs(10), "the server to attach", async {
        while hub.subscriber_count(NEWS) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    publish(&hub, 0..5);
    assert_eq!(
        within(Duration::from_secs(10), "live news", news(&mut topic, 5)).await,
        (0..5).collect::<Vec<_>>()
    );

    // Cut: nothing passes either way, and nothing says so.
    topology.cut();
    let cut_at = Instant::now();
    let deadline = KEEPALIVE + KEEPALIVE_TIMEOUT + SLACK;
    event(&mut client, deadline, "the client to notice", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    let noticed = cut_at.elapsed();
    println!("partition: the client noticed after {noticed:?}");
    // It backs off between attempts that cannot succeed while the link is down.
    let seen = event(
        &mut client,
        Duration::from_secs(10),
        "two reconnect attempts",
        |e| matches!(e, ClientEvent::Reconnecting { attempt, .. } if *attempt >= 2),
    )
    .await;
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ClientEvent::Connected { .. })),
        "{seen:?}"
    );
    // The server frees the dead connection by its own keepalive deadline.
    within(
        deadline.saturating_sub(cut_at.elapsed()) + SLACK,
        "the server to free the dead connection",
        async {
            while handle.stats().connections != 0 || handle.tracked_keys() != (0, 0) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    println!(
        "partition: the server freed it after {:?}",
        cut_at.elapsed()
    );
    // Published while the subscriber cannot hear: kept in the topic's history.
    publish(&hub, 5..25);

    // Heal: the next attempt connects and sessions work again.
    topology.heal();
    event(
        &mut client,
        Duration::from_secs(15),
        "the reconnect",
        |e| matches!(e, ClientEvent::Connected { generation, .. } if *generation >= 2),
    )
    .await;
    session = None;
    let clean = echo_numbers(&mut client, &mut session, 10, 30).await;
    // The subscription resumes from its position: what the cut hid, then live messages,
    // each exactly once and in order.
    assert_eq!(
        within(
            Duration::from_secs(15),
            "the missed news",
            news(&mut topic, 20)
        )
        .await,
        (5..25).collect::<Vec<_>>()
    );
    publish(&hub, 25..30);
    assert_eq!(
        within(
            Duration::from_secs(10),
            "news after the heal",
            news(&mut topic, 5)
        )
        .await,
        (25..30).collect::<Vec<_>>()
    );

    // Loss and delay: slower, still working.
    let wire = impair(&topology).await;
    let lossy = within(
        Duration::from_secs(120),
        "echoes through loss and delay",
        echo_numbers(&mut client, &mut session, 30, 60),
    )
    .await;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (clean, lossy) = (median(clean), median(lossy));
    println!("partition: median round trip {clean:?} clean, {lossy:?} with 20 % loss and 200 ms");
    assert!(
        lossy >= Duration::from_millis(200),
        "the delay was not applied"
    );

    drop(topic);
    drop(session);
    drop(client);
    if let Some(wire) = wire {
        wire.abort();
    }
    let _ = stop_client.send(());
    let _ = stop_server.send(());
}
