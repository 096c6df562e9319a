//! P8: a victim session's echo round trip (64 B at `--rate`/s) alone, then while a
//! neighbour session on the same connection floods 64 KiB messages as fast as credit
//! allows; over mux-tokio (WebSocket on loopback) and over rust-yamux (TCP on loopback),
//! phases alternating in the same run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use hdrhistogram::Histogram;
use tokio_util::compat::TokioAsyncReadCompatExt as _;

use crate::echo::{connect_all, Env};
use crate::{histogram, latency_line, seconds, server, yamux_drive, P8Args};

const PING: usize = 64;

fn paced(rate: u32) -> tokio::time::Interval {
    let mut t = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(rate.clamp(1, 100_000)),
    ));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

async fn mux_phase(url: &str, args: &P8Args, flood: bool) -> Result<Histogram<u64>, String> {
    let mut clients = connect_all(url, 1, 0, "echo").await?;
    let (mut client, _) = clients.pop().ok_or("no connection")?;
    let mut victim = client
        .open("echo", Bytes::new())
        .await
        .map_err(|e| format!("open: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = if flood {
        let sink = client
            .open("sink", Bytes::new())
            .await
            .map_err(|e| format!("open: {e}"))?;
        let stop = stop.clone();
        let big = Bytes::from(vec![0u8; args.flood_size.clamp(1, 64 * 1024)]);
        Some(tokio::spawn(async move {
            let mut sink = sink;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sink.send(big.clone()).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        }))
    } else {
        None
    };
    // Let the flood fill every queue before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latency = histogram();
    let mut tick = paced(args.rate);
    let end = Instant::now() + seconds(args.duration);
    let ping = Bytes::from(vec![1u8; PING]);
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        victim
            .send(ping.clone())
            .await
            .map_err(|e| format!("victim send: {e}"))?;
        let back = tokio::time::timeout(Duration::from_secs(30), victim.recv())
            .await
            .map_err(|_| "victim echo timed out")?
            .ok_or("victim session ended")?;
        debug_assert_eq!(back.len(), PING);
        latency.saturating_record((t0.elapsed().as_micros() as u64).max(1));
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        let sent = tokio::time::timeout(Duration::from_secs(10), f).await;
        if let Ok(Ok(sent)) = sent {
            println!(
                "      (flood session sent {sent} messages of {} B)",
                args.flood_size
            );
        }
    }
    drop(victim);
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    Ok(latency)
}

async fn yamux_phase(
    addr: std::net::SocketAddr,
    args: &P8Args,
    flood: bool,
) -> Result<Histogram<u64>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let conn = yamux::Connection::new(tcp.compat(), yamux::Config::default(), yamux::Mode::Client);
    let (opens_tx, opens_rx) = tokio::sync::mpsc::channel(16);
    let driver = tokio::spawn(yamux_drive::drive(conn, Some(opens_rx), None));
    let mut victim = yamux_drive::open(&opens_tx).await.ok_or("yamux open")?;
    victim.write_all(b"e").await.map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = if flood {
        let mut sink = yamux_drive::open(&opens_tx).await.ok_or("yamux open")?;
        sink.write_all(b"s").await.map_err(|e| e.to_string())?;
        let stop = stop.clone();
        let big = vec![0u8; args.flood_size.clamp(1, 64 * 1024)];
        Some(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sink.write_all(&big).await.is_err() {
                    break;
                }
                sent += 1;
            }
            let _ = sink.close().await;
            sent
        }))
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latency = histogram();
    let mut tick = paced(args.rate);
    let end = Instant::now() + seconds(args.duration);
    let ping = [1u8; PING];
    let mut back = [0u8; PING];
    while Instant::now() < end {
        tick.tick().await;
        let t0 = Instant::now();
        victim.write_all(&ping).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(30), victim.read_exact(&mut back))
            .await
            .map_err(|_| "yamux victim echo timed out")?
            .map_err(|e| e.to_string())?;
        latency.saturating_record((t0.elapsed().as_micros() as u64).max(1));
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        if let Ok(Ok(sent)) = tokio::time::timeout(Duration::from_secs(10), f).await {
            println!(
                "      (flood stream sent {sent} messages of {} B)",
                args.flood_size
            );
        }
    }
    let _ = victim.close().await;
    drop(opens_tx);
    driver.abort();
    Ok(latency)
}

pub fn main(args: P8Args) -> Result<(), String> {
    let env = Env::new(&args.target, false)?;
    let server_rt = crate::runtime(
        args.target.server_threads,
        crate::sys::Role::Server,
        "yamux-server",
    )?;
    let yamux_addr = server_rt
        .block_on(server::start_yamux())
        .map_err(|e| e.to_string())?;
    println!("{}", crate::machine_line());
    println!(
        "P8: victim 64 B echo at {}/s; neighbour floods {} B messages on the same connection; {:.1} s per phase, {} rounds; mux server {}, yamux server {yamux_addr}",
        args.rate,
        args.flood_size,
        seconds(args.duration).as_secs_f64(),
        args.rounds,
        env.url
    );
    let names = [
        "mux unloaded",
        "mux loaded",
        "yamux unloaded",
        "yamux loaded",
    ];
    let mut merged: Vec<Histogram<u64>> = (0..4).map(|_| histogram()).collect();
    for round in 0..args.rounds.clamp(1, 10) {
        for (i, name) in names.iter().enumerate() {
            let yamux = i >= 2;
            if yamux && args.no_yamux {
                continue;
            }
            let flood = i % 2 == 1;
            let h = if yamux {
                env.client_rt
                    .block_on(yamux_phase(yamux_addr, &args, flood))?
            } else {
                env.client_rt.block_on(mux_phase(&env.url, &args, flood))?
            };
            println!("  round {round} {name:<15} {}", latency_line(&h));
            if let Some(m) = merged.get_mut(i) {
                let _ = m.add(&h);
            }
        }
    }
    println!("P8 summary (all rounds):");
    for (name, h) in names.iter().zip(&merged) {
        if !h.is_empty() {
            println!("  {name:<15} {}", latency_line(h));
        }
    }
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
    if let [mu, ml, yu, yl] = merged.as_slice() {
        println!("  mux   p99 loaded/unloaded: {:.2}", p99(ml) / p99(mu));
        if !yl.is_empty() {
            println!("  yamux p99 loaded/unloaded: {:.2}", p99(yl) / p99(yu));
            println!("  loaded p99 mux/yamux: {:.3}", p99(ml) / p99(yl));
        }
    }
    Ok(())
}
