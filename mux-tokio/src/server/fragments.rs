//! A cap on WebSocket frames per message, enforced on the raw bytes a client sends.
//!
//! tungstenite bounds a message's size but not how many frames make it up, so a client
//! could send a non-final frame followed by empty continuation frames forever: work for the
//! server with no message ever delivered and no byte of it charged anywhere. This reader
//! sits between the socket and tungstenite, follows the frame headers as the bytes pass
//! (after the HTTP request head), and fails the read once a data message has more than
//! `max` frames or more than `max` control frames arrive in the middle of one, or when a
//! fragmented message has not completed within its deadline (pings do not extend it). The
//! error ends the connection; honest clients (browsers, this crate's) send each message
//! whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::future::Future as _;
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::budget::{Charge, Part};

/// Frames a WebSocket message may have by default, and control frames amid one.
pub(crate) const DEFAULT_MAX_FRAGMENTS: u32 = 64;

/// Where the parser is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In the HTTP request head; the count says how much of `\r\n\r\n` has been seen.
    Head(u8),
    /// Collecting a frame header (`have` of `need` bytes in `header`).
    Header { have: usize, need: usize },
    /// Skipping `left` bytes of payload.
    Payload { left: u64 },
}

/// Follows frame boundaries; counts frames of the message in progress.
#[derive(Debug)]
struct Meter {
    phase: Phase,
    header: [u8; 14],
    /// A data message is in progress (a non-final frame was seen).
    in_message: bool,
    /// Frames of the message in progress, and control frames since it began.
    frames: u32,
    max: u32,
    /// The frame being read is a data frame (not control), and whether it is final.
    data_frame: bool,
    final_frame: bool,
    /// Payload bytes of the data message in progress received so far: what the WebSocket
    /// library holds for it, charged to the memory budget.
    partial: u64,
}

impl Meter {
    fn new(max: u32) -> Meter {
        Meter {
            phase: Phase::Head(0),
            header: [0; 14],
            in_message: false,
            frames: 0,
            max,
            data_frame: false,
            final_frame: false,
            partial: 0,
        }
    }

    /// Feeds bytes read from the client; an error once the cap is passed.
    fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while let Some((&first, rest)) = bytes.split_first() {
            match self.phase {
                Phase::Head(seen) => {
                    let next = match (seen, first) {
                        (0 | 2, b'\r') => seen.saturating_add(1),
                        (1 | 3, b'\n') => seen.saturating_add(1),
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                    self.phase = if next == 4 {
                        Phase::Header { have: 0, need: 2 }
                    } else {
                        Phase::Head(next)
                    };
                    bytes = rest;
                }
                Phase::Header { have, need } => {
                    let take = need.saturating_sub(have).min(bytes.len());
                    let (chunk, rest) = bytes.split_at(take);
                    if let Some(slot) = self.header.get_mut(have..have.saturating_add(take)) {
                        slot.copy_from_slice(chunk);
                    }
                    bytes = rest;
                    self.header_progress(have.saturating_add(take), need)?;
                }
                Phase::Payload { left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = bytes.get(take..).unwrap_or_default();
                    let taken = u64::try_from(take).unwrap_or(u64::MAX);
                    if self.data_frame {
                        self.partial = self.partial.saturating_add(taken);
                    }
                    let left = left.saturating_sub(taken);
                    self.phase = if left == 0 {
                        self.frame_done();
                        Phase::Header { have: 0, need: 2 }
                    } else {
                        Phase::Payload { left }
                    };
                }
            }
        }
        Ok(())
    }

    /// `have` header bytes of the `need` known so far: learns the full header length from
    /// the first two bytes, then counts the frame when the header is complete.
    fn header_progress(&mut self, have: usize, need: usize) -> io::Result<()> {
        let [b0, b1, ..] = self.header;
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let extended = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let full = 2usize.saturating_add(mask).saturating_add(extended);
        if have < need || (need == 2 && full > 2 && have < full) {
            self.phase = Phase::Header {
                have,
                need: if have >= 2 { full } else { need },
            };
            return Ok(());
        }
        let len = match b1 & 0x7f {
            126 => {
                let [_, _, hi, lo, ..] = self.header;
                u64::from(u16::from_be_bytes([hi, lo]))
            }
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(self.header.get(2..10).unwrap_or(&[0; 8]));
                u64::from_be_bytes(be)
            }
            n => u64::from(n),
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        self.count(fin, opcode)?;
        self.data_frame = opcode & 0x08 == 0;
        self.final_frame = fin;
        self.phase = if len == 0 {
            self.frame_done();
            Phase::Header { have: 0, need: 2 }
        } else {
            Phase::Payload { left: len }
        };
        Ok(())
    }

    /// A frame's payload has passed: a final data frame completes its message, which the
    /// WebSocket library then hands on.
    fn frame_done(&mut self) {
        if self.data_frame && self.final_frame {
            self.partial = 0;
        }
    }

    fn count(&mut self, fin: bool, opcode: u8) -> io::Result<()> {
        let control = opcode & 0x08 != 0;
        if control {
            if self.in_message {
                self.frames = self.frames.saturating_add(1);
            }
        } else if opcode == 0 {
            self.frames = self.frames.saturating_add(1);
        } else {
            // A new data message: its first frame.
            self.frames = 1;
            self.in_message = true;
        }
        if self.frames > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                crate::transport::MessageTooFragmented,
            ));
        }
        if !control && fin {
            self.in_message = false;
            self.frames = 0;
        }
        Ok(())
    }
}

/// A client stream whose reads are metered by frames per message.
#[derive(Debug)]
pub(crate) struct FragmentCapped<S> {
    inner: S,
    meter: Meter,
    /// How long a fragmented message may take to complete; frames arriving (pings
    /// included) do not extend it.
    deadline: Duration,
    /// Armed when a fragmented message starts; allocated on the first one.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Where the bytes of a message received in part are charged.
    charge: Option<Arc<Charge>>,
    charged: u64,
}

impl<S> FragmentCapped<S> {
    pub(crate) fn new(inner: S, max: u32, deadline: Duration) -> Self {
        FragmentCapped {
            inner,
            meter: Meter::new(max.max(1)),
            deadline,
            timer: None,
            armed: false,
            charge: None,
            charged: 0,
        }
    }

    /// Charges the message received in part to `charge` from now on.
    pub(crate) fn charge_to(&mut self, charge: Arc<Charge>) {
        self.charge = Some(charge);
    }

    /// The stream underneath.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FragmentCapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled().get(before..).unwrap_or_default();
                if let Err(e) = this.meter.feed(new) {
                    return Poll::Ready(Err(e));
                }
                if this.meter.partial != this.charged {
                    this.charged = this.meter.partial;
                    if let Some(charge) = &this.charge {
                        charge.set(
                            Part::Partial,
                            usize::try_from(this.charged).unwrap_or(usize::MAX),
                        );
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        };
        this.track_deadline(cx)?;
        polled
    }
}

impl<S> FragmentCapped<S> {
    /// Arms the completion deadline when a fragmented message has begun and disarms it when
    /// it ends; fails the read once it has passed (1008, see `MessageTooSlow`).
    fn track_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.meter.in_message {
            self.armed = false;
            return Ok(());
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::ZERO)));
        if !self.armed {
            self.armed = true;
            let at = tokio::time::Instant::now()
                .checked_add(self.deadline)
                .unwrap_or_else(far_future);
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                crate::transport::MessageTooSlow,
            ));
        }
        Ok(())
    }
}

/// An instant no deadline reaches (about 30 years ahead, as tokio's own far future).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now()
        .checked_add(Duration::from_secs(86_400 * 365 * 30))
        .unwrap_or_else(tokio::time::Instant::now)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FragmentCapped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        out
    }

    /// Feeds `bytes` in chunks of `chunk` bytes.
    fn feed(meter: &mut Meter, bytes: &[u8], chunk: usize) -> io::Result<()> {
        bytes.chunks(chunk).try_for_each(|c| meter.feed(c))
    }

    #[test]
    fn whole_messages_of_any_size_pass_at_every_split() {
        let mut stream = HEAD.to_vec();
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            stream.extend(frame(true, 2, &vec![7; len]));
            stream.extend(frame(true, 9, b"ping"));
        }
        for chunk in [1, 2, 3, 7, 1000, usize::MAX] {
            let mut meter = Meter::new(2);
            feed(&mut meter, &stream, chunk).unwrap();
            assert_eq!(
                meter.phase,
                Phase::Header { have: 0, need: 2 },
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_message_of_exactly_max_frames_passes_and_one_more_fails() {
        let mut ok = HEAD.to_vec();
        ok.extend(frame(false, 2, b"a"));
        ok.extend(frame(false, 0, b""));
        ok.extend(frame(true, 0, b"b"));
        for chunk in [1, 5, usize::MAX] {
            let mut meter = Meter::new(3);
            feed(&mut meter, &ok, chunk).unwrap();
            // The next message starts a fresh count.
            feed(&mut meter, &ok[HEAD.len()..], chunk).unwrap();
        }
        let mut flood = HEAD.to_vec();
        flood.extend(frame(false, 2, b"a"));
        for _ in 0..3 {
            flood.extend(frame(false, 0, b""));
        }
        let mut meter = Meter::new(3);
        assert_eq!(
            feed(&mut meter, &flood, 4).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn the_partial_message_counts_payload_as_it_arrives() {
        let mut meter = Meter::new(8);
        feed(&mut meter, HEAD, 7).unwrap();
        let first = frame(false, 2, &[1; 300]);
        feed(&mut meter, &first[..100], 7).unwrap();
        // Header (2 + 2 length + 4 mask) then 92 payload bytes.
        assert_eq!(meter.partial, 92);
        feed(&mut meter, &first[100..], 7).unwrap();
        feed(&mut meter, &frame(true, 9, b"ping"), 7).unwrap();
        assert_eq!(meter.partial, 300);
        feed(&mut meter, &frame(true, 0, &[2; 50]), 7).unwrap();
        assert_eq!(meter.partial, 0);
        // A single-frame message counts while it arrives: 6 header bytes, 3 of payload.
        feed(&mut meter, &frame(true, 2, &[3; 10])[..9], 7).unwrap();
        assert_eq!(meter.partial, 3);
    }

    #[test]
    fn pings_inside_a_message_count_and_outside_do_not() {
        let mut stream = HEAD.to_vec();
        for _ in 0..10 {
            stream.extend(frame(true, 9, b""));
        }
        let mut meter = Meter::new(2);
        feed(&mut meter, &stream, 3).unwrap();
        let mut inside = frame(false, 2, b"a");
        inside.extend(frame(true, 9, b""));
        inside.extend(frame(true, 9, b""));
        assert!(feed(&mut meter, &inside, 3).is_err());
    }
}
