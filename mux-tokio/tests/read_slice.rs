#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! A connection whose socket always has more to read does not hold the worker thread: its
//! driver reads a bounded slice per poll and yields, so another task on the same thread
//! runs at least once every 64 messages (BENCHMARKS.md, A1: a flooding neighbour's cost to
//! the other connections' latency).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use mux_proto::Config;
use mux_tokio::{serve_transport, AllowAll, Principal, TransportError, WsMessage};
use tokio::sync::{mpsc, Notify};

/// A transport that always has another WebSocket ping ready, up to `left`, and notes how
/// often the neighbour task had run when it handed each one out.
struct Flood {
    left: usize,
    neighbour_runs: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<u64>>>,
    done: Arc<Notify>,
}

impl Stream for Flood {
    type Item = Result<WsMessage, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            self.done.notify_one();
            // Never woken: the test ends here.
            return Poll::Pending;
        }
        self.left -= 1;
        let runs = self.neighbour_runs.load(Ordering::SeqCst);
        self.seen.lock().unwrap().push(runs);
        Poll::Ready(Some(Ok(WsMessage::Control)))
    }
}

impl Sink<WsMessage> for Flood {
    type Error = TransportError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, _: WsMessage) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_connection_that_always_has_input_lets_another_task_run_every_64_messages() {
    const MESSAGES: usize = 5_000;
    let neighbour_runs = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::with_capacity(MESSAGES)));
    let done = Arc::new(Notify::new());
    let flood = Flood {
        left: MESSAGES,
        neighbour_runs: neighbour_runs.clone(),
        seen: seen.clone(),
        done: done.clone(),
    };
    // Pings are charged to the control budget; a budget this large never cuts the flood,
    // so what is measured is only how the driver shares the thread.
    let mut config = Config::default();
    config.limits.control_budget = u32::MAX;
    config.timeouts.keepalive_interval = None;

    // The neighbour re-queues itself after every run (behind the driver, on this
    // current-thread runtime's one queue), counting its runs.
    let neighbour = tokio::spawn({
        let runs = neighbour_runs.clone();
        std::future::poll_fn(move |cx| {
            runs.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        })
    });
    let (accepted_tx, _accepted) = mpsc::channel(1);
    let (_handle, driver) =
        serve_transport(flood, config, Principal::new("p"), AllowAll, accepted_tx);
    done.notified().await;
    driver.abort();
    neighbour.abort();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), MESSAGES);
    // In any 65 consecutive messages the neighbour ran at least once.
    for (i, window) in seen.windows(65).enumerate() {
        assert!(
            window[64] > window[0],
            "messages {i}..{} were all read without the neighbour running",
            i + 64
        );
    }
    // And it did not run after every message: the driver reads in batches.
    assert!(seen.windows(2).filter(|w| w[1] == w[0]).count() > MESSAGES / 2);
}
