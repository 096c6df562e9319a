//! Coalesces what the WebSocket library writes while it reads.
//!
//! tungstenite answers every ping with a pong, and before each read it writes and flushes
//! the pong still pending, so a flood of pings costs a `write` system call per ping
//! (BENCHMARKS.md A1, ping-flood: the server's tail latency for everyone else). Between the
//! socket and tungstenite, [`Replies`] holds what is written while a read is in progress
//! (up to [`MAX_HELD`] bytes, past that it writes through) and lets the flushes made during
//! reads pass without writing; the next flush outside a read writes everything at once. The
//! driver flushes after each pass that read a WebSocket control message, so a pong waits at
//! most for the rest of that pass. Outside reads it passes writes straight through.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a connection holds back: a few hundred pongs, far below its other buffers.
pub(crate) const MAX_HELD: usize = 4096;

/// Set by the transport while the WebSocket library reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reading(Arc<AtomicBool>);

impl Reading {
    pub(crate) fn set(&self, reading: bool) {
        self.0.store(reading, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// An `AsyncRead + AsyncWrite` that holds back the writes made during reads.
#[derive(Debug)]
pub(crate) struct Replies<S> {
    inner: S,
    held: Vec<u8>,
    reading: Reading,
}

impl<S> Replies<S> {
    pub(crate) fn new(inner: S, reading: Reading) -> Self {
        Replies {
            inner,
            held: Vec::new(),
            reading,
        }
    }
}

impl<S: AsyncWrite + Unpin> Replies<S> {
    /// Writes out what is held; the buffer is freed once empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.held) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.held.drain(..n.min(self.held.len()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.held.capacity() > 0 {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replies<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.reading.get() && this.held.len().saturating_add(buf.len()) <= MAX_HELD {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.reading.get() {
            // The driver's flush after the read writes it.
            return Poll::Ready(Ok(()));
        }
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_during_a_read_wait_for_the_next_flush_and_keep_their_order() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let reading = Reading::default();
        let mut replies = Replies::new(ours, reading.clone());
        reading.set(true);
        replies.write_all(b"pong1").await.unwrap();
        replies.flush().await.unwrap();
        replies.write_all(b"pong2").await.unwrap();
        replies.flush().await.unwrap();
        assert_eq!(replies.held, b"pong1pong2");
        reading.set(false);
        replies.write_all(b"data").await.unwrap();
        replies.flush().await.unwrap();
        assert_eq!(replies.held.capacity(), 0, "freed once written");
        let mut got = [0u8; 14];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong1pong2data");
    }

    #[tokio::test]
    async fn past_the_bound_writes_go_through_during_reads_too() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let reading = Reading::default();
        let mut replies = Replies::new(ours, reading.clone());
        reading.set(true);
        let pong = [7u8; 100];
        for _ in 0..100 {
            replies.write_all(&pong).await.unwrap();
            assert!(replies.held.len() <= MAX_HELD);
        }
        reading.set(false);
        replies.flush().await.unwrap();
        let mut got = vec![0u8; 10_000];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
    }
}
