//! Drives a rust-yamux `Connection` from one task: outbound-open requests in, inbound
//! streams out.

use std::future::poll_fn;
use std::task::Poll;

use futures::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

pub type OpenRequests = mpsc::Sender<oneshot::Sender<yamux::Stream>>;

/// Runs until the connection ends.
pub async fn drive<T: AsyncRead + AsyncWrite + Unpin>(
    mut conn: yamux::Connection<T>,
    mut opens: Option<mpsc::Receiver<oneshot::Sender<yamux::Stream>>>,
    inbound: Option<mpsc::UnboundedSender<yamux::Stream>>,
) {
    let mut pending: Option<oneshot::Sender<yamux::Stream>> = None;
    poll_fn(|cx| {
        loop {
            if pending.is_some() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(reply) = pending.take() {
                            let _ = reply.send(stream);
                        }
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            let Some(rx) = opens.as_mut() else { break };
            match rx.poll_recv(cx) {
                Poll::Ready(Some(reply)) => pending = Some(reply),
                Poll::Ready(None) => opens = None,
                Poll::Pending => break,
            }
        }
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    if let Some(tx) = &inbound {
                        let _ = tx.send(stream);
                    }
                }
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Opens a stream through the driver.
pub async fn open(opens: &OpenRequests) -> Option<yamux::Stream> {
    let (tx, rx) = oneshot::channel();
    opens.send(tx).await.ok()?;
    rx.await.ok()
}
