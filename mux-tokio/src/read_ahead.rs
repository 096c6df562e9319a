//! A read-ahead buffer under tungstenite that exists only while bytes are arriving.
//!
//! tungstenite reads into its own buffer, at most `read_buffer_size` bytes per read, and
//! keeps that buffer for the life of the connection. A large one costs every idle
//! connection its size (P7: 8 KiB of the 17 KB per idle connection); a small one costs a
//! bulk transfer a system call per few bytes. [`ReadAhead`] splits the difference: the
//! server gives tungstenite a small buffer, and this reader, between it and the socket,
//! reads straight into tungstenite's buffer until one read fills it (more is probably
//! waiting), then reads the socket in [`CHUNK`]-byte gulps into a buffer of its own and hands
//! them out as tungstenite asks. Once that buffer is drained by a read that did not fill it
//! (the socket has caught up) it is freed, so an idle connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once while a burst lasts.
pub(crate) const CHUNK: usize = 64 * 1024;

/// An `AsyncRead + AsyncWrite` whose reads go through a buffer allocated for a burst.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read ahead: `buf[start..end]` are not handed out yet. Empty while idle.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read from the socket filled what it was given: more is likely waiting.
    busy: bool,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            busy: false,
        }
    }

    /// Bytes read ahead and not yet handed out.
    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Hands out what is read ahead; frees the buffer once drained unless a burst goes on.
    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = self.pending().len().min(out.remaining());
        if let Some(bytes) = self.buf.get(self.start..self.start.saturating_add(n)) {
            out.put_slice(bytes);
        }
        self.start = self.start.saturating_add(n);
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
            if !self.busy {
                self.buf = Vec::new();
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.pending().is_empty() {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        if !this.busy || out.remaining() >= CHUNK {
            // Quiet so far: read straight into the caller's buffer, copying nothing.
            let wanted = out.remaining();
            let before = out.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = polled {
                this.busy = wanted > 0 && out.filled().len().saturating_sub(before) == wanted;
            }
            return polled;
        }
        // A burst: read a chunk ahead.
        if this.buf.len() < CHUNK {
            this.buf = vec![0; CHUNK];
        }
        let mut chunk = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(())) => {
                let n = chunk.filled().len();
                this.busy = n == CHUNK;
                this.start = 0;
                this.end = n;
                this.hand_out(out);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // The socket caught up: the burst is over.
                this.busy = false;
                this.buf = Vec::new();
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_copy_nothing_and_keep_no_buffer() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut reader = ReadAhead::new(ours);
        peer.write_all(b"hello").await.unwrap();
        let mut out = [0u8; 1024];
        let n = reader.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], b"hello");
        assert!(!reader.busy);
        assert_eq!(reader.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_burst_reads_ahead_and_frees_the_buffer_once_drained() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut reader = ReadAhead::new(ours);
        let sent: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        let mut out = [0u8; 1024];
        let mut read_ahead = false;
        loop {
            let n = reader.read(&mut out).await.unwrap();
            if n == 0 {
                break;
            }
            read_ahead |= reader.buf.capacity() > 0;
            got.extend_from_slice(&out[..n]);
        }
        assert_eq!(got, sent);
        assert!(read_ahead, "a burst is read in chunks");
        assert_eq!(reader.buf.capacity(), 0, "freed once the socket caught up");
    }
}
