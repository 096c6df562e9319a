//! `mux-load attack`: the hostile suite as a standing benchmark. A `serve --defaults` child
//! (the library's defaults, only the Origin policy set) is attacked, class after class
//! (`catalogue::CLASSES`), from a runtime of this process, while an honest victim on its
//! own runtime (the public `mux_tokio::Client`, 4 connections of one echo session each)
//! measures its echo latency. Per attack: the server's RSS before, at its peak and `--after`
//! seconds after the attackers left (sampled every 50 ms from /proc/<pid>/status), its live
//! heap and connections then, the victim's p50/p99 against its unloaded figures, and how
//! each attacking connection was cut and after how long.
//!
//! The unloaded figures an attack is compared with are the victim's last `--unloaded`
//! seconds before it (the start, or the quiet end of the previous attack's `--after`
//! window): loaded and unloaded windows alternate, so load from outside the run (other
//! processes on the machine) weighs on both alike rather than on one baseline taken once.
//!
//! The attacks run against the defaults on purpose: when a default changes or a defence is
//! added to the library, rerunning this shows its effect.

mod catalogue;
mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use mux_tokio::{Client, ClientConfig, Session};

use crate::server::{self, lock, ChildServer, ChildStats};
use crate::{histogram, seconds, sys, AttackArgs};
use catalogue::{Class, Target, CLASSES};
use raw::{Cut, Ended, Stop};

/// How often the server's RSS is sampled.
const SAMPLE: Duration = Duration::from_millis(50);

/// The server's memory and connections at one moment.
#[derive(Debug, Clone, Copy)]
struct Mem {
    /// VmRSS.
    rss: u64,
    /// RssAnon: VmRSS without the binary's file-backed pages.
    anon: u64,
    /// Live heap bytes (the server's counting allocator).
    heap: u64,
    conns: u64,
    /// glibc's bytes in use and free in its arenas (zero with another allocator).
    glibc_used: u64,
    glibc_free: u64,
}

impl Mem {
    fn read(child: &mut ChildServer) -> Result<Mem, String> {
        let ChildStats {
            rss,
            heap,
            conns,
            glibc: (glibc_used, glibc_free, _),
            ..
        } = child.peek()?;
        Ok(Mem {
            rss,
            anon: sys::rss_anon(&child.pid.to_string()).unwrap_or(0),
            heap,
            conns,
            glibc_used,
            glibc_free,
        })
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

pub fn main(args: AttackArgs) -> Result<(), String> {
    if args.list {
        for class in CLASSES {
            println!(
                "{:<17} row {:<6} {} x{} for {} s: {}; expected: {}",
                class.name,
                class.rows,
                if class.repeat { "loops" } else { "conns" },
                class.attackers,
                class.seconds,
                class.what,
                class.expected
            );
        }
        return Ok(());
    }
    let classes: Vec<&'static Class> = CLASSES
        .iter()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| c.name.contains(o.as_str())))
        .collect();
    if classes.is_empty() {
        return Err(format!("no attack matches {:?} (see --list)", args.only));
    }
    let (allocator, trim_every) = match args.allocator.as_str() {
        "glibc" => ("glibc", None),
        "glibc-trim" => (
            "glibc",
            Some(Duration::from_millis(args.trim_ms.clamp(10, 600_000))),
        ),
        "jemalloc" => ("jemalloc", None),
        "mimalloc" => ("mimalloc", None),
        other => return Err(format!("unknown allocator {other:?}")),
    };
    let options = server::Options {
        defaults: true,
        trim_every,
        ..server::Options::default()
    };
    let mut child = ChildServer::spawn_with(
        options,
        args.server_threads,
        &[("MUX_LOAD_ALLOCATOR", allocator)],
    )?;
    if child.allocator != allocator {
        return Err(format!(
            "the server runs with {} instead of {allocator}: build with --features alloc-{allocator}",
            child.allocator
        ));
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], child.port));
    println!("{}", crate::machine_line());
    let pinning = Pinning::parse(&args.server_cpus)?;
    if let Some(p) = &pinning {
        if !sys::pin_process(child.pid, &p.server) || !sys::pin_thread(0, &p.others) {
            return Err("could not pin the server or this tool to its CPUs".into());
        }
        println!(
            "pinned: server on CPU {:?}, victim, attackers (nice {}) and the tool on CPU {:?}",
            p.server, args.attacker_nice, p.others
        );
    }
    println!(
        "attack: server pid {} on {addr} (library defaults, {} worker thread(s)), allocator {}{}; attackers at nice {}",
        child.pid,
        args.server_threads,
        args.allocator,
        trim_every.map_or(String::new(), |d| format!(" every {d:?}")),
        args.attacker_nice
    );

    let victim = Victim::start(
        &child.url(),
        args.victim_rate,
        pinning.as_ref().map(|p| p.others.clone()),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let _ = victim.take();
    std::thread::sleep(seconds(args.unloaded));
    let (unloaded, _) = victim.take();
    let idle = Mem::read(&mut child)?;
    println!(
        "victim unloaded: p50 {:.3} ms, p99 {:.3} ms ({} echoes); server idle: RSS {:.1} MiB (anon {:.1}), heap {:.1} MiB (glibc: {:.1} in use, {:.1} free), {} connections",
        ms(unloaded.value_at_quantile(0.5)),
        ms(unloaded.value_at_quantile(0.99)),
        unloaded.len(),
        mib(idle.rss),
        mib(idle.anon),
        mib(idle.heap),
        mib(idle.glibc_used),
        mib(idle.glibc_free),
        idle.conns
    );
    let nice = args.attacker_nice;
    let attack_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("attack")
        .on_thread_start(move || {
            sys::set_role(sys::Role::Client);
            sys::set_thread_nice(nice);
        })
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let target = Target::new(addr);
    if !args.json {
        println!("{}", Row::header());
    }
    let mut rows = Vec::new();
    let mut baseline = unloaded.clone();
    let mut pooled = unloaded.clone();
    for class in classes {
        let (row, quiet) = run_one(
            class, &args, &attack_rt, &target, &victim, &mut child, &baseline,
        )?;
        let _ = pooled.add(&quiet);
        baseline = quiet;
        if args.json {
            println!("{}", row.json());
        } else {
            println!("{}", row.line());
        }
        rows.push(row);
    }
    println!(
        "victim unloaded, every quiet window pooled: p50 {:.3} ms, p99 {:.3} ms ({} echoes)",
        ms(pooled.value_at_quantile(0.5)),
        ms(pooled.value_at_quantile(0.99)),
        pooled.len()
    );
    let end = Mem::read(&mut child)?;
    let limit = idle.rss + idle.rss / 10;
    println!(
        "after the last attack: RSS {:.1} MiB against {:.1} MiB idle ({:.2}x; target idle + 10 % = {:.1} MiB: {}); anon {:.1} against {:.1} MiB ({:.2}x); heap {:.1} MiB (glibc: {:.1} in use, {:.1} free)",
        mib(end.rss),
        mib(idle.rss),
        end.rss as f64 / idle.rss.max(1) as f64,
        mib(limit),
        if end.rss <= limit { "met" } else { "missed" },
        mib(end.anon),
        mib(idle.anon),
        end.anon as f64 / idle.anon.max(1) as f64,
        mib(end.heap),
        mib(end.glibc_used),
        mib(end.glibc_free)
    );
    if args.malloc_stats {
        child.print_malloc_stats()?;
    }
    let unexpected: Vec<&str> = rows
        .iter()
        .filter(|r| !r.as_expected)
        .map(|r| r.name)
        .collect();
    if !unexpected.is_empty() {
        println!("not cut as expected: {}", unexpected.join(", "));
    }
    victim.stop();
    drop(attack_rt);
    Ok(())
}

/// Which CPUs the server (with the victim) and everything else run on.
struct Pinning {
    server: Vec<usize>,
    others: Vec<usize>,
}

impl Pinning {
    /// `none`, or a comma-separated CPU list; `None` also when no CPU would be left over.
    fn parse(spec: &str) -> Result<Option<Pinning>, String> {
        if spec.trim() == "none" {
            return Ok(None);
        }
        let server = spec
            .split(',')
            .map(|c| c.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--server-cpus {spec}: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let others: Vec<usize> = (0..cores).filter(|c| !server.contains(c)).collect();
        if others.is_empty() || server.iter().any(|&c| c >= cores) {
            return Ok(None);
        }
        Ok(Some(Pinning { server, others }))
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One attack: run it, stop it, watch the server for `--after` seconds. Returns its row
/// (the victim compared with `unloaded`, its figures just before) and the victim's figures
/// over the last `--unloaded` seconds of the watch, the next attack's unloaded ones.
fn run_one(
    class: &'static Class,
    args: &AttackArgs,
    attack_rt: &tokio::runtime::Runtime,
    target: &Arc<Target>,
    victim: &Victim,
    child: &mut ChildServer,
    unloaded: &Histogram<u64>,
) -> Result<(Row, Histogram<u64>), String> {
    let attackers = args.attackers.unwrap_or(class.attackers).clamp(1, 10_000);
    let limit = seconds(args.duration.unwrap_or(class.seconds));
    let pid = child.pid.to_string();
    let before = Mem::read(child)?;
    let mut peak = before.rss;
    let mut sample = || {
        if let Some(rss) = sys::rss(&pid) {
            peak = peak.max(rss);
        }
        std::thread::sleep(SAMPLE);
    };
    let (stop_tx, stop) = Stop::new();
    let _ = victim.take();
    let started = Instant::now();
    // A repeating attack runs for `limit`; one that holds its connections holds each for
    // `limit` from its own start (so one that waited for a SYN retry is held as long), and
    // the attack ends when the last has been cut or has run out of time.
    let hold = (!class.repeat).then_some(limit);
    let phase = if class.repeat {
        limit
    } else {
        limit + Duration::from_secs(60)
    };
    let attack = attack_rt.spawn(catalogue::run(
        class,
        target.clone(),
        attackers,
        true,
        hold,
        stop,
    ));
    while started.elapsed() < phase && !attack.is_finished() {
        sample();
    }
    let ran = started.elapsed();
    let _ = stop_tx.send(true);
    let leaving = Instant::now();
    while !attack.is_finished() && leaving.elapsed() < Duration::from_secs(15) {
        sample();
    }
    let ended = if attack.is_finished() {
        attack_rt.block_on(attack).map_err(|e| e.to_string())?
    } else {
        attack.abort();
        return Err(format!("{}: the attackers did not stop", class.name));
    };
    let (loaded, victim_errors) = victim.take();
    let left = Instant::now();
    let quiet_from = seconds(args.after).saturating_sub(seconds(args.unloaded));
    let mut quiet = false;
    while left.elapsed() < seconds(args.after) {
        if !quiet && left.elapsed() >= quiet_from {
            let _ = victim.take();
            quiet = true;
        }
        sample();
    }
    let (quiet, _) = victim.take();
    let after = Mem::read(child)?;
    peak = peak.max(after.rss);
    let row = Row::new(
        class,
        attackers,
        ran,
        &ended,
        before,
        peak,
        after,
        unloaded,
        &loaded,
        victim_errors,
    );
    Ok((row, quiet))
}

/// What one attack did to the server and the victim.
struct Row {
    name: &'static str,
    attackers: usize,
    ran: Duration,
    connections: usize,
    before: Mem,
    peak: u64,
    after: Mem,
    p50: f64,
    p99: f64,
    p50_ratio: f64,
    p99_ratio: f64,
    /// The victim's unloaded p99 this attack is compared with.
    unloaded_p99: f64,
    victim_echoes: u64,
    victim_errors: u64,
    /// Cuts by kind: how many, and their times from each connection's attack start.
    cuts: BTreeMap<Cut, Vec<Duration>>,
    /// Connections of a repeating attack still going when it stopped.
    in_flight: usize,
    expected: &'static str,
    as_expected: bool,
}

impl Row {
    #[allow(clippy::too_many_arguments)]
    fn new(
        class: &'static Class,
        attackers: usize,
        ran: Duration,
        ended: &[Ended],
        before: Mem,
        peak: u64,
        after: Mem,
        unloaded: &Histogram<u64>,
        loaded: &Histogram<u64>,
        victim_errors: u64,
    ) -> Row {
        let mut cuts: BTreeMap<Cut, Vec<Duration>> = BTreeMap::new();
        let mut in_flight = 0;
        for e in ended {
            if class.repeat && e.cut == Cut::Held {
                in_flight += 1;
            } else {
                cuts.entry(e.cut).or_default().push(e.after);
            }
        }
        for times in cuts.values_mut() {
            times.sort();
        }
        let as_expected = !cuts.is_empty() && cuts.keys().all(|&cut| class.expect.admits(cut));
        let q = |h: &Histogram<u64>, q: f64| ms(h.value_at_quantile(q));
        let (p50, p99) = (q(loaded, 0.5), q(loaded, 0.99));
        Row {
            name: class.name,
            attackers,
            ran,
            connections: ended.len(),
            before,
            peak,
            after,
            p50,
            p99,
            p50_ratio: p50 / q(unloaded, 0.5).max(0.001),
            p99_ratio: p99 / q(unloaded, 0.99).max(0.001),
            unloaded_p99: q(unloaded, 0.99),
            victim_echoes: loaded.len(),
            victim_errors,
            cuts,
            in_flight,
            expected: class.expected,
            as_expected,
        }
    }

    /// The most frequent cut, how many connections had it, and its median and longest time.
    fn main_cut(&self) -> Option<(Cut, usize, Duration, Duration)> {
        self.cuts
            .iter()
            .max_by_key(|(_, times)| times.len())
            .map(|(&cut, times)| {
                let median = times.get(times.len() / 2).copied().unwrap_or_default();
                let longest = times.last().copied().unwrap_or_default();
                (cut, times.len(), median, longest)
            })
    }

    fn header() -> String {
        format!(
            "{:<17} {:>5} {:>22} {:>6} {:>11} {:>11} {:>5} {:>17} {:>8} {:>17} {:<24} {:<22} ok",
            "attack",
            "conns",
            "RSS before/peak/+10s",
            "ratio",
            "anon b/+10s",
            "heap b/+10s",
            "+10s",
            "victim p50 (x)",
            "base p99",
            "victim p99 (x)",
            "cut",
            "after (median, max)",
        )
    }

    fn duration(d: Duration) -> String {
        if d >= Duration::from_secs(1) {
            format!("{:.2} s", d.as_secs_f64())
        } else {
            format!("{:.1} ms", d.as_secs_f64() * 1000.0)
        }
    }

    fn line(&self) -> String {
        let (cut, after) = match self.main_cut() {
            Some((cut, n, median, longest)) => {
                let mut text = format!("{cut} x{n}");
                for (other, times) in self.cuts.iter().filter(|(&c, _)| c != cut) {
                    text.push_str(&format!(", {other} x{}", times.len()));
                    if *other == Cut::Held {
                        let longest = times.last().copied().unwrap_or_default();
                        text.push_str(&format!(" (held up to {})", Row::duration(longest)));
                    }
                }
                if self.in_flight > 0 {
                    text.push_str(&format!(" ({} live)", self.in_flight));
                }
                let after = if cut == Cut::Held {
                    format!("held {}", Row::duration(median))
                } else {
                    format!("{}, {}", Row::duration(median), Row::duration(longest))
                };
                (text, after)
            }
            None => ("none".to_owned(), String::new()),
        };
        let mut line = format!(
            "{:<17} {:>5} {:>22} {:>6.2} {:>11} {:>11} {:>5} {:>17} {:>8} {:>17} {:<24} {:<22} {}",
            self.name,
            self.connections,
            format!(
                "{:.1}/{:.1}/{:.1} MiB",
                mib(self.before.rss),
                mib(self.peak),
                mib(self.after.rss)
            ),
            self.after.rss as f64 / self.before.rss.max(1) as f64,
            format!("{:.1}/{:.1}", mib(self.before.anon), mib(self.after.anon)),
            format!("{:.1}/{:.1}", mib(self.before.heap), mib(self.after.heap)),
            self.after.conns,
            format!("{:.3} ms ({:.2})", self.p50, self.p50_ratio),
            format!("{:.3}", self.unloaded_p99),
            format!("{:.3} ms ({:.2})", self.p99, self.p99_ratio),
            cut,
            after,
            if self.as_expected { "yes" } else { "NO" },
        );
        if self.victim_errors > 0 {
            line.push_str(&format!("  [victim errors: {}]", self.victim_errors));
        }
        if !self.as_expected {
            line.push_str(&format!("  [expected: {}]", self.expected));
        }
        line
    }

    fn json(&self) -> String {
        let (cut, count, median, longest) =
            self.main_cut()
                .unwrap_or((Cut::Failed, 0, Duration::ZERO, Duration::ZERO));
        let all: Vec<String> = self
            .cuts
            .iter()
            .map(|(cut, times)| format!("\"{cut}\":{}", times.len()))
            .collect();
        format!(
            "{{\"attack\":\"{}\",\"attackers\":{},\"connections\":{},\"ran_s\":{:.2},\
             \"rss_before_mib\":{:.2},\"rss_peak_mib\":{:.2},\"rss_after_mib\":{:.2},\
             \"rss_after_over_before\":{:.3},\"anon_before_mib\":{:.2},\"anon_after_mib\":{:.2},\
             \"heap_before_mib\":{:.2},\"heap_after_mib\":{:.2},\
             \"glibc_used_after_mib\":{:.2},\"glibc_free_after_mib\":{:.2},\
             \"connections_after\":{},\"victim_p50_ms\":{:.3},\"victim_p99_ms\":{:.3},\
             \"victim_p50_ratio\":{:.2},\"victim_p99_ratio\":{:.2},\"victim_unloaded_p99_ms\":{:.3},\"victim_echoes\":{},\
             \"victim_errors\":{},\"cut\":\"{cut}\",\"cut_count\":{count},\"cuts\":{{{}}},\
             \"in_flight\":{},\"cut_after_ms_median\":{:.1},\"cut_after_ms_max\":{:.1},\
             \"expected\":\"{}\",\"as_expected\":{}}}",
            self.name,
            self.attackers,
            self.connections,
            self.ran.as_secs_f64(),
            mib(self.before.rss),
            mib(self.peak),
            mib(self.after.rss),
            self.after.rss as f64 / self.before.rss.max(1) as f64,
            mib(self.before.anon),
            mib(self.after.anon),
            mib(self.before.heap),
            mib(self.after.heap),
            mib(self.after.glibc_used),
            mib(self.after.glibc_free),
            self.after.conns,
            self.p50,
            self.p99,
            self.p50_ratio,
            self.p99_ratio,
            self.unloaded_p99,
            self.victim_echoes,
            self.victim_errors,
            all.join(","),
            self.in_flight,
            median.as_secs_f64() * 1000.0,
            longest.as_secs_f64() * 1000.0,
            self.expected,
            self.as_expected,
        )
    }
}

// ---- the victim --------------------------------------------------------------------------

/// Connections (one echo session each) the victim spreads its echoes over.
const VICTIM_CONNECTIONS: usize = 4;

/// An honest client on its own runtime: 64-byte echoes at a fixed rate, one in flight,
/// round-robin over its sessions; a session that fails is counted and reconnected.
struct Victim {
    rt: tokio::runtime::Runtime,
    samples: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Victim {
    fn start(url: &str, rate: u32, cpus: Option<Vec<usize>>) -> Result<Victim, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("victim")
            .on_thread_start(move || {
                sys::set_role(sys::Role::Client);
                if let Some(cpus) = &cpus {
                    sys::pin_thread(0, cpus);
                }
            })
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut slots = Vec::with_capacity(VICTIM_CONNECTIONS);
        for _ in 0..VICTIM_CONNECTIONS {
            slots.push(rt.block_on(victim_session(url))?);
        }
        let samples = Arc::new(Mutex::new(histogram()));
        let errors = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        rt.spawn(victim_loop(
            url.to_owned(),
            slots,
            rate,
            samples.clone(),
            errors.clone(),
            stopped,
        ));
        Ok(Victim {
            rt,
            samples,
            errors,
            stop,
        })
    }

    /// The latencies (µs) recorded since the last call, and the failures.
    fn take(&self) -> (Histogram<u64>, u64) {
        let taken = std::mem::replace(&mut *lock(&self.samples), histogram());
        (taken, self.errors.swap(0, Ordering::Relaxed))
    }

    fn stop(self) {
        let _ = self.stop.send(true);
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

async fn victim_session(url: &str) -> Result<(Client, Session), String> {
    let connect = async {
        let mut client = Client::connect(url, ClientConfig::default().reconnect(false))
            .await
            .map_err(|e| format!("victim connect: {e}"))?;
        let session = client
            .open("echo", Bytes::new())
            .await
            .map_err(|e| format!("victim open: {e}"))?;
        Ok((client, session))
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "victim connect timed out".to_owned())?
}

async fn victim_loop(
    url: String,
    mut slots: Vec<(Client, Session)>,
    rate: u32,
    samples: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(rate.clamp(1, 100_000)),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let message = Bytes::from(vec![0x42u8; 64]);
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        let i = next % slots.len().max(1);
        next = next.wrapping_add(1);
        let Some((_, session)) = slots.get_mut(i) else {
            break;
        };
        let started = Instant::now();
        let echo = async {
            session.send(message.clone()).await.ok()?;
            session.recv().await
        };
        match tokio::time::timeout(Duration::from_secs(10), echo).await {
            Ok(Some(back)) if back == message => {
                let us = started.elapsed().as_micros() as u64;
                lock(&samples).saturating_record(us.max(1));
            }
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
                // Reconnect this slot (the server may have shed the connection).
                match victim_session(&url).await {
                    Ok(fresh) => {
                        if let Some(slot) = slots.get_mut(i) {
                            *slot = fresh;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
    for (client, session) in slots {
        drop(session);
        let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    }
}
