//! The attacks of `mux-load attack` in the default test run: every class of
//! benches/load/attack/catalogue.rs, through the same code, against an in-process server
//! with the library's defaults (only the Origin policy set, and the three deadlines the
//! attacks wait for shortened: handshake 500 ms, message 500 ms, write 1 s). Each test
//! asserts that every attacking connection got the cut its class expects (the WebSocket
//! Close code, or the TCP connection dropped), no sooner than the deadline that makes it,
//! and that the server's accounting returns to idle once the attackers have gone: no
//! connection, no per-IP or per-principal key, no task beyond the accept loop's.
//!
//! Latency and memory under attack are the benchmark's (`mux-load attack`, BENCHMARKS.md);
//! nothing here bounds wall-clock time except the hang guard.

#[allow(dead_code)]
#[path = "../benches/load/attack/raw.rs"]
mod raw;

#[allow(dead_code)]
#[path = "../benches/load/attack/catalogue.rs"]
mod catalogue;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalogue::{Class, Expect, Target, CLASSES};
use mux_tokio::{AllowAll, OriginPolicy, Server, ServerConfig, ServerHandle, ServerStats, Session};
use raw::{Cut, Ended, Stop};

const HANDSHAKE: Duration = Duration::from_millis(500);
const MESSAGE: Duration = Duration::from_millis(500);
const WRITE: Duration = Duration::from_secs(1);

/// The hang guard: nothing here legitimately takes this long.
const WAIT: Duration = Duration::from_secs(60);

fn config() -> ServerConfig {
    let mut config = ServerConfig::default()
        .origins(OriginPolicy::default().allow_missing(true))
        .handshake_timeout(HANDSHAKE)
        .write_timeout(WRITE);
    config.message_deadline = MESSAGE;
    config
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls server state (which has no event to await) until `condition` holds.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn echo(mut session: Session) {
    while let Some(message) = session.recv().await {
        if session.send(message).await.is_err() {
            break;
        }
    }
}

/// One attack on a fresh echo server.
struct Attack {
    class: &'static Class,
    attackers: usize,
    handle: ServerHandle,
    /// Alive tasks with the server idle (its accept loop).
    idle_tasks: usize,
    stop: tokio::sync::watch::Sender<bool>,
    run: tokio::task::JoinHandle<Vec<Ended>>,
}

impl Attack {
    /// Starts `attackers` of the class `name`, one connection each.
    async fn start(name: &str, attackers: usize) -> Attack {
        let class = catalogue::find(name).unwrap_or_else(|| panic!("no attack {name}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = Server::bind(addr, config(), AllowAll, AllowAll)
            .await
            .expect("bind");
        let target = Target::new(server.local_addr());
        let handle = server.handle();
        tokio::spawn(async move {
            while let Some(session) = server.accept().await {
                tokio::spawn(echo(session));
            }
        });
        let idle_tasks = alive_tasks();
        let (stop, stopped) = Stop::new();
        let run = tokio::spawn(catalogue::run(
            class, target, attackers, false, None, stopped,
        ));
        Attack {
            class,
            attackers,
            handle,
            idle_tasks,
            stop,
            run,
        }
    }

    /// Waits for every attacking connection's end, asserts each is the one its class
    /// expects, and that the server's accounting is back to idle; returns the ends and the
    /// server's counters.
    async fn finish(self) -> (Vec<Ended>, ServerStats) {
        let name = self.class.name;
        let ended = within("every attacker to be cut", self.run)
            .await
            .expect("the attack task");
        assert_eq!(ended.len(), self.attackers, "{name}: {ended:?}");
        for e in &ended {
            assert!(
                self.class.expect.admits(e.cut),
                "{name}: expected {:?} ({}), got {e:?}",
                self.class.expect,
                self.class.expected
            );
        }
        let handle = self.handle;
        let idle_tasks = self.idle_tasks;
        wait_until("the server's accounting to return to idle", || {
            handle.stats().connections == 0
                && handle.tracked_keys() == (0, 0)
                && alive_tasks() <= idle_tasks
        })
        .await;
        drop(self.stop);
        (ended, handle.stats())
    }

    /// For an attack the server does not cut: once `ready` holds, stop it.
    async fn stop_when(&self, what: &str, ready: impl FnMut() -> bool) {
        wait_until(what, ready).await;
        let _ = self.stop.send(true);
    }
}

fn at_least(ended: &[Ended], deadline: Duration) {
    for e in ended {
        assert!(
            e.after >= deadline,
            "cut after {:?}, before {deadline:?}",
            e.after
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_continuations_are_closed_with_1009_at_the_frame_cap() {
    let (ended, stats) = Attack::start("ws-continuations", 4).await.finish().await;
    assert!(ended.iter().all(|e| e.cut == Cut::Close(1009)));
    assert_eq!(stats.upgraded, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_message_kept_alive_by_pings_is_closed_with_1008_at_its_deadline() {
    let (ended, stats) = Attack::start("ws-partial-ping", 4).await.finish().await;
    at_least(&ended, MESSAGE);
    assert_eq!(stats.upgraded, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_dropped_at_the_handshake_deadline() {
    let (ended, stats) = Attack::start("slowloris", 32).await.finish().await;
    at_least(&ended, HANDSHAKE);
    assert_eq!(
        (stats.upgraded, stats.handshake_failed),
        (0, 32),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_dropped_at_the_write_deadline() {
    let (ended, stats) = Attack::start("slow-readers", 2).await.finish().await;
    at_least(&ended, WRITE);
    assert_eq!(stats.upgraded, 2);
}

/// Not cut under the defaults (each connection holds 6.4 MiB of unfinished messages, within
/// its 16 MiB receive cap): stopped once the server holds every byte of them, after which
/// the server must let all of it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_received_messages_are_held_within_the_receive_cap_and_released() {
    let attack = Attack::start("half-messages", 2).await;
    assert_eq!(attack.class.expect, Expect::NotCut);
    let handle = attack.handle.clone();
    // (bytes held by all connections, most held by one): the per-connection stats are
    // async, so a task samples them for the predicate below.
    let held = Arc::new(Mutex::new((0u64, 0u64)));
    let sampled = held.clone();
    let sampler = tokio::spawn(async move {
        loop {
            let (mut sum, mut most) = (0, 0);
            for conn in handle.connections() {
                if let Some(stats) = conn.stats().await {
                    sum += stats.recv_buffered;
                    most = most.max(stats.recv_buffered);
                }
            }
            {
                let mut held = sampled.lock().unwrap();
                *held = (sum, held.1.max(most));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let want = 2 * 100 * 65_535;
    attack
        .stop_when("the server to hold every half message", || {
            held.lock().unwrap().0 >= want
        })
        .await;
    sampler.abort();
    let _ = sampler.await;
    let most = held.lock().unwrap().1;
    assert!(
        most <= 16 * 1024 * 1024,
        "a connection held {most} B, past its 16 MiB receive cap"
    );
    let (_, stats) = attack.finish().await;
    assert_eq!(stats.upgraded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_floods_are_closed_with_1008() {
    let (_, stats) = Attack::start("rapid-reset", 2).await.finish().await;
    assert_eq!(stats.upgraded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_are_closed_with_1008() {
    let (_, stats) = Attack::start("ping-flood", 2).await.finish().await;
    assert_eq!(stats.upgraded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_session_errors_are_closed_with_1008() {
    let (_, stats) = Attack::start("forced-errors", 2).await.finish().await;
    assert_eq!(stats.upgraded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_handshake_heads_are_dropped() {
    let (_, stats) = Attack::start("handshake-parse", 4).await.finish().await;
    assert_eq!(
        (stats.upgraded, stats.handshake_failed),
        (0, 4),
        "{stats:?}"
    );
}

/// Not cut under the defaults (32 idle connections, far under the 10,000 cap): stopped
/// once the server holds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_floods_are_held_and_released() {
    let attack = Attack::start("conn-flood", 32).await;
    let handle = attack.handle.clone();
    attack
        .stop_when("the server to hold every connection", || {
            handle.stats().upgraded == 32 && handle.stats().connections == 32
        })
        .await;
    let (_, stats) = attack.finish().await;
    assert_eq!(stats.upgraded, 32);
}

/// Every class of the benchmark has a test above.
#[test]
fn every_attack_class_is_tested_here() {
    let tested = [
        "ws-continuations",
        "ws-partial-ping",
        "slowloris",
        "slow-readers",
        "half-messages",
        "rapid-reset",
        "ping-flood",
        "forced-errors",
        "handshake-parse",
        "conn-flood",
    ];
    let classes: Vec<&str> = CLASSES.iter().map(|c| c.name).collect();
    assert_eq!(
        classes, tested,
        "a class without a test, or a test without a class"
    );
}
