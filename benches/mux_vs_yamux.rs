//! Side-by-side throughput over one in-memory `tokio::io::duplex(1 MiB)` (see
//! benches/common/mod.rs for the workloads), on one `current_thread` runtime:
//!
//! - **P1** `p1/{sessions}x{size}/{mux,mux-ws,yamux}`: {1, 10, 100} sessions × {64 B, 1 KiB,
//!   64 KiB} messages, one direction; criterion reports messages per second.
//! - **P2** `p2/{size}/{mux,mux-ws,raw}`: one session against the same bytes written raw to
//!   the duplex in the same chunks.
//! - **P10** `p10/churn/{mux,yamux}`: open → first byte → close, 16 sessions in flight;
//!   criterion reports opens per second.
//!
//! After criterion, the bench prints a **ratio table**: each case runs its sides alternately
//! (A, B, A, B, ..., the order flipped every round) for `MUX_BENCH_ROUNDS` rounds (default
//! 7), and reports the median per-round ratio. That table is the figure to quote: criterion's
//! per-side numbers are measured minutes apart on a shared machine. A filter argument
//! (`cargo bench --bench mux_vs_yamux -- p1/10x`) applies to both. `MUX_BENCH_RATIOS_ONLY=1`
//! skips criterion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{median, mux_bulk, mux_churn, raw_bulk, yamux_bulk, yamux_churn, Framing};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

const SESSIONS: [usize; 3] = [1, 10, 100];
const SIZES: [usize; 3] = [64, 1024, 64 * 1024];
const CHURN_TOTAL: u64 = 10_000;
const CHURN_WINDOW: u64 = 16;

/// Messages per P1/P2 run: 8 MiB of payload, at least 2,048 messages, a multiple of the
/// session count.
fn messages(size: usize, sessions: usize) -> u64 {
    let n = (8usize << 20) / size;
    let n = n.max(2048) as u64;
    n / sessions as u64 * sessions as u64
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One side of a comparison.
#[derive(Clone, Copy)]
enum Side {
    Mux(Framing),
    Yamux,
    Raw,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Mux(f) => f.name(),
            Side::Yamux => "yamux",
            Side::Raw => "raw",
        }
    }
}

/// A case: a workload with a fixed amount of work (`units`: messages or opens).
#[derive(Clone, Copy)]
enum Case {
    Bulk { sessions: usize, size: usize },
    Churn,
}

impl Case {
    fn units(self) -> u64 {
        match self {
            Case::Bulk { sessions, size } => messages(size, sessions),
            Case::Churn => CHURN_TOTAL,
        }
    }

    fn run(self, rt: &tokio::runtime::Runtime, side: Side) -> Duration {
        match (self, side) {
            (Case::Bulk { sessions, size }, Side::Mux(f)) => {
                let n = messages(size, sessions);
                rt.block_on(mux_bulk(f, sessions, n / sessions as u64, size))
            }
            (Case::Bulk { sessions, size }, Side::Yamux) => {
                let n = messages(size, sessions);
                rt.block_on(yamux_bulk(sessions, n / sessions as u64, size))
            }
            (Case::Bulk { sessions, size }, Side::Raw) => {
                rt.block_on(raw_bulk(messages(size, sessions), size))
            }
            (Case::Churn, Side::Mux(_)) => rt.block_on(mux_churn(CHURN_TOTAL, CHURN_WINDOW)),
            (Case::Churn, Side::Yamux) => rt.block_on(yamux_churn(CHURN_TOTAL, CHURN_WINDOW)),
            (Case::Churn, Side::Raw) => unreachable!("no raw churn"),
        }
    }
}

struct Comparison {
    name: String,
    case: Case,
    /// The first side is the numerator of every ratio.
    sides: Vec<Side>,
}

fn comparisons() -> Vec<Comparison> {
    let mut out = Vec::new();
    for sessions in SESSIONS {
        for size in SIZES {
            out.push(Comparison {
                name: format!("p1/{sessions}x{}", size_name(size)),
                case: Case::Bulk { sessions, size },
                sides: vec![Side::Mux(Framing::Len), Side::Yamux, Side::Mux(Framing::Ws)],
            });
        }
    }
    for size in SIZES {
        out.push(Comparison {
            name: format!("p2/{}", size_name(size)),
            case: Case::Bulk { sessions: 1, size },
            sides: vec![Side::Mux(Framing::Len), Side::Raw, Side::Mux(Framing::Ws)],
        });
    }
    out.push(Comparison {
        name: "p10/churn".into(),
        case: Case::Churn,
        sides: vec![Side::Mux(Framing::Len), Side::Yamux],
    });
    out
}

/// The first non-flag argument, as criterion reads it.
fn filter() -> Option<String> {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .filter(|a| !a.is_empty())
}

fn criterion_phase(list: &[Comparison]) {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let rt = runtime();
    for cmp in list {
        let (group_name, _) = cmp.name.split_once('/').unwrap_or((&cmp.name, ""));
        let mut group = c.benchmark_group(group_name);
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(cmp.case.units()));
        let case_name = cmp.name.split_once('/').map_or("", |(_, c)| c);
        for &side in &cmp.sides {
            group.bench_function(BenchmarkId::new(case_name, side.name()), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| cmp.case.run(&rt, side)).sum());
            });
        }
        group.finish();
    }
    c.final_summary();
}

fn ratio_phase(list: &[Comparison], rounds: usize) {
    let rt = runtime();
    println!();
    println!("== side-by-side ratios: {rounds} alternating rounds, median per-round ratio ==");
    println!(
        "{:<16} {:>14} {:>14} {:>10} {:>10}  {:>14} {:>10}",
        "case", "A units/s", "B units/s", "A/B", "A/B min", "C units/s", "C/B"
    );
    for cmp in list {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cmp.sides.len()];
        let units = cmp.case.units() as f64;
        // Warm-up: one run of each side, discarded.
        for &side in &cmp.sides {
            cmp.case.run(&rt, side);
        }
        for round in 0..rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..cmp.sides.len()).collect()
            } else {
                (0..cmp.sides.len()).rev().collect()
            };
            for i in order {
                let t = cmp.case.run(&rt, cmp.sides[i]);
                rates[i].push(units / t.as_secs_f64());
            }
        }
        let mut ab: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| a / b).collect();
        let ab_min = ab.iter().copied().fold(f64::INFINITY, f64::min);
        let ab_med = median(&mut ab);
        let a = median(&mut rates[0].clone());
        let b = median(&mut rates[1].clone());
        let (c, cb) = if cmp.sides.len() > 2 {
            let mut cb: Vec<f64> = rates[2].iter().zip(&rates[1]).map(|(c, b)| c / b).collect();
            (
                format!("{:.0}", median(&mut rates[2].clone())),
                format!("{:.2}", median(&mut cb)),
            )
        } else {
            ("-".into(), "-".into())
        };
        let names: Vec<&str> = cmp.sides.iter().map(|s| s.name()).collect();
        println!(
            "{:<16} {:>14.0} {:>14.0} {:>10.2} {:>10.2}  {:>14} {:>10}   ({})",
            cmp.name,
            a,
            b,
            ab_med,
            ab_min,
            c,
            cb,
            names.join(" / ")
        );
    }
}

fn main() {
    let filter = filter();
    let list: Vec<Comparison> = comparisons()
        .into_iter()
        .filter(|c| {
            filter
                .as_deref()
                .is_none_or(|f| c.name.contains(f) || f.starts_with(&c.name))
        })
        .collect();
    let listing = std::env::args().any(|a| a == "--list");
    if std::env::var_os("MUX_BENCH_RATIOS_ONLY").is_none() || listing {
        criterion_phase(&list);
    }
    if listing || std::env::args().any(|a| a == "--test") {
        // `cargo test --benches` / `--list`: criterion ran each once; no ratio table.
        return;
    }
    let rounds = std::env::var("MUX_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    ratio_phase(&list, rounds);
}
