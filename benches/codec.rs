//! Frame codec benchmarks.
//!
//! - `header_decode/raw_load` reads 256 back-to-back 10-byte headers with plain big-endian
//!   loads at fixed offsets: the floor for any header decoder.
//! - `header_decode/parse_header` runs `Header::parse` (all header validation) over the same
//!   buffer, stopping at the first error as a decoder does, so the two figures are directly
//!   comparable.
//! - `header_encode` writes 256 headers; `decode_message` decodes a 64 KiB message of
//!   1 KiB DATA frames through `Frames`.
//!
//! After criterion, the bench prints the **header decode ratio** measured side by side:
//! `MUX_BENCH_ROUNDS` rounds (default 31) that each time 20,000 passes of `raw_load` and of
//! `parse_header` back to back, the order flipped every round, and reports the median
//! per-round ratio. That is the figure to quote; criterion measures the two one after the
//! other, so on a shared machine its two figures can see different loads. It also prints
//! the ratio of each side's fastest round, the estimate least disturbed by other work on
//! the machine (noise only ever adds time). Both are printed for two ways of consuming the
//! fields (see [`Consume`]): one running sum, as criterion measures, and one sum per field.
//!
//! Instructions per header, which do not drift with the machine's load: run the side-by-side
//! part alone under callgrind and divide each decoder's inclusive count by the calls and
//! headers the bench prints last (`.ci/header-icount` does this):
//! `MUX_BENCH_ROUNDS=1 valgrind --tool=callgrind target/release/deps/codec-* --bench none`,
//! then `callgrind_annotate --inclusive=yes callgrind.out.*`. Each decoder is compiled once
//! per consumer; callgrind reports both under one name, and the printed calls count both.
//!
//! Where the linker happens to place each loop moves the timed ratio by as much as a fifth
//! (a loop that straddles more 64-byte fetch blocks runs slower, with the same
//! instructions). To see the ratio with that taken out, align every loop:
//! `RUSTFLAGS="-C llvm-args=-align-loops=64" cargo bench --bench codec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, Criterion, Throughput};
use mux_proto::frame::{Data, Frame, FrameError, FrameType, Frames, Header, HEADER_LEN};
use mux_proto::SessionId;

const HEADERS: usize = 256;
/// Passes over the header buffer per timed round (and in the warm-up).
const PASSES: u32 = 20_000;

/// 256 valid headers of every frame type, with valid sessions and lengths, back to back.
fn headers() -> Vec<Header> {
    (0..HEADERS)
        .map(|i| {
            let n = u32::try_from(i).expect("small");
            let frame_type = FrameType::ALL[i % FrameType::ALL.len()];
            let (min, max) = frame_type.len_bounds();
            let (flags, len) = match frame_type {
                // END, END|FIN, and a 1 KiB fragment.
                FrameType::Data => match i % 3 {
                    0 => (0x01, n * 7),
                    1 => (0x03, n),
                    _ => (0x00, 1024 + n),
                },
                _ => (0, min + n % (max - min + 1)),
            };
            let session_id = if frame_type.is_connection_frame() {
                SessionId::CONTROL
            } else {
                SessionId(2 * n + 1)
            };
            Header {
                frame_type,
                flags,
                session_id,
                len,
            }
        })
        .collect()
}

fn header_buffer(headers: &[Header]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(headers.len() * HEADER_LEN);
    for h in headers {
        h.encode(&mut buf);
    }
    // Every header in the buffer is valid on its own.
    for (chunk, h) in buf.chunks_exact(HEADER_LEN).zip(headers) {
        assert_eq!(Header::parse(chunk).as_ref(), Ok(h));
    }
    buf
}

/// How a decoding loop consumes the four fields of each header.
///
/// Two ways, because the ratio depends on it: with one running sum, each header's adds wait
/// for the previous header's, so a loop can be bound by that chain (and by how the compiler
/// orders the adds) rather than by its own work; with one sum per field there is no chain
/// longer than one add per header and the loop runs at its instruction throughput.
trait Consume: Default {
    fn add(&mut self, frame_type: u8, flags: u8, session: u32, len: u32);
    fn total(&self) -> u64;
}

/// One running sum of every field.
#[derive(Default)]
struct RunningSum(u64);

impl Consume for RunningSum {
    #[inline(always)]
    fn add(&mut self, frame_type: u8, flags: u8, session: u32, len: u32) {
        self.0 = self
            .0
            .wrapping_add(u64::from(frame_type))
            .wrapping_add(u64::from(flags))
            .wrapping_add(u64::from(session))
            .wrapping_add(u64::from(len));
    }

    fn total(&self) -> u64 {
        self.0
    }
}

/// One sum per field.
#[derive(Default)]
struct FieldSums([u64; 4]);

impl Consume for FieldSums {
    #[inline(always)]
    fn add(&mut self, frame_type: u8, flags: u8, session: u32, len: u32) {
        let [a, b, c, d] = &mut self.0;
        *a = a.wrapping_add(u64::from(frame_type));
        *b = b.wrapping_add(u64::from(flags));
        *c = c.wrapping_add(u64::from(session));
        *d = d.wrapping_add(u64::from(len));
    }

    fn total(&self) -> u64 {
        self.0.iter().fold(0, |total, sum| total.wrapping_add(*sum))
    }
}

// Both decoders stay out of line, so that they are compiled alike and an instruction
// profiler (valgrind --tool=callgrind) attributes each one its own instructions.
#[inline(never)]
fn raw_load<C: Consume>(buf: &[u8]) -> u64 {
    let mut fields = C::default();
    for h in buf.chunks_exact(HEADER_LEN) {
        let ver_type = h[0];
        let flags = h[1];
        let session = u32::from_be_bytes([h[2], h[3], h[4], h[5]]);
        let len = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
        fields.add(ver_type & 0x0f, flags, session, len);
    }
    fields.total()
}

/// Stops at the first header that breaks a rule and returns its error, as a decoder does
/// (every `FrameError` is a connection error, so nothing after it is read).
#[inline(never)]
fn parse_headers<C: Consume>(buf: &[u8]) -> Result<u64, FrameError> {
    let mut fields = C::default();
    for chunk in buf.chunks_exact(HEADER_LEN) {
        let h = Header::parse(chunk)?;
        fields.add(h.frame_type as u8, h.flags, h.session_id.get(), h.len);
    }
    Ok(fields.total())
}

fn header_decode(c: &mut Criterion) {
    let buf = header_buffer(&headers());
    assert_eq!(
        Ok(raw_load::<RunningSum>(&buf)),
        parse_headers::<RunningSum>(&buf)
    );
    assert_eq!(
        Ok(raw_load::<FieldSums>(&buf)),
        parse_headers::<FieldSums>(&buf)
    );
    let mut group = c.benchmark_group("header_decode");
    group.throughput(Throughput::Elements(HEADERS as u64));
    group.bench_function("raw_load", |b| {
        b.iter(|| raw_load::<RunningSum>(black_box(&buf)))
    });
    group.bench_function("parse_header", |b| {
        b.iter(|| parse_headers::<RunningSum>(black_box(&buf)))
    });
    group.finish();
}

fn header_encode(c: &mut Criterion) {
    let headers = headers();
    let mut out = BytesMut::with_capacity(HEADERS * HEADER_LEN);
    let mut group = c.benchmark_group("header_encode");
    group.throughput(Throughput::Elements(HEADERS as u64));
    group.bench_function("encode_header", |b| {
        b.iter(|| {
            out.clear();
            for h in black_box(&headers) {
                h.encode(&mut out);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

fn decode_message(c: &mut Criterion) {
    const FRAME_PAYLOAD: usize = 1024;
    const FRAMES: usize = 64;
    let mut out = BytesMut::new();
    for i in 0..FRAMES {
        Frame::Data(Data {
            session_id: SessionId(1),
            end: i + 1 == FRAMES,
            fin: false,
            payload: Bytes::from(vec![u8::try_from(i).expect("small"); FRAME_PAYLOAD]),
        })
        .encode(&mut out);
    }
    let message = out.freeze();
    assert_eq!(
        Frames::new(message.clone()).filter(Result::is_ok).count(),
        FRAMES
    );

    let mut group = c.benchmark_group("decode_message");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("data_64x1KiB", |b| {
        b.iter(|| {
            let mut payload_bytes = 0usize;
            for frame in Frames::new(black_box(message.clone())) {
                if let Ok(Frame::Data(d)) = frame {
                    payload_bytes += d.payload.len();
                }
            }
            black_box(payload_bytes)
        })
    });
    group.finish();
}

criterion_group!(benches, header_decode, header_encode, decode_message);

/// Nanoseconds per header for `passes` passes of `decode` over `buf`.
fn ns_per_header<T>(decode: fn(&[u8]) -> T, buf: &[u8], passes: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..passes {
        black_box(decode(black_box(buf)));
    }
    let elapsed: Duration = start.elapsed();
    elapsed.as_secs_f64() * 1e9 / f64::from(passes) / HEADERS as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn fastest(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The side-by-side header decode ratio for one way of consuming the fields (see the crate
/// docs).
fn header_decode_ratio<C: Consume>(name: &str, rounds: usize) {
    let buf = header_buffer(&headers());
    let raw_side: fn(&[u8]) -> u64 = raw_load::<C>;
    let parse_side: fn(&[u8]) -> Result<u64, FrameError> = parse_headers::<C>;
    // Warm-up, discarded.
    ns_per_header(raw_side, &buf, PASSES);
    ns_per_header(parse_side, &buf, PASSES);
    let (mut raw, mut parse, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (r, p) = if round % 2 == 0 {
            let r = ns_per_header(raw_side, &buf, PASSES);
            (r, ns_per_header(parse_side, &buf, PASSES))
        } else {
            let p = ns_per_header(parse_side, &buf, PASSES);
            (ns_per_header(raw_side, &buf, PASSES), p)
        };
        raw.push(r);
        parse.push(p);
        ratio.push(p / r);
    }
    let (best_raw, best_parse) = (fastest(&raw), fastest(&parse));
    println!();
    println!("== header decode, side by side, {name}: {rounds} alternating rounds ==");
    println!(
        "raw_load {:.3} ns/header, parse_header {:.3} ns/header (medians); \
         parse/raw median {:.2}",
        median(&mut raw),
        median(&mut parse),
        median(&mut ratio),
    );
    println!(
        "fastest rounds: raw_load {best_raw:.3}, parse_header {best_parse:.3} ns/header; \
         parse/raw {:.2}",
        best_parse / best_raw
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rounds = std::env::var("MUX_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(31);
    header_decode_ratio::<RunningSum>("one running sum", rounds);
    header_decode_ratio::<FieldSums>("one sum per field", rounds);
    // For instruction counts (.ci/header-icount): per consumer, the check in
    // `header_decode`, the warm-up and the rounds.
    let rounds = u64::try_from(rounds).expect("rounds fit in u64");
    let calls = 2 * (1 + (rounds + 1) * u64::from(PASSES));
    println!("header decode calls: {calls} per decoder, {HEADERS} headers each");
}
