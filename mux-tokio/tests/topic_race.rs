#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! An attach racing the last detach of a topic: the new subscriber must end up on the topic
//! the hub publishes to, never on one already removed from its map.

mod common;

use std::sync::Barrier;

use bytes::Bytes;
use common::{bind, open_config, within};
use mux_tokio::topic::{LocalHub, SubscribeOptions};
use mux_tokio::{AllowAll, Client, ClientConfig};

const ROUNDS: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_racing_the_last_detach_stays_subscribed() {
    let (mut server, url) = bind(open_config(), AllowAll, AllowAll).await;
    let mut client = Client::connect(&url, ClientConfig::default().reconnect(false))
        .await
        .unwrap();
    let _a_client = client.open("t", Bytes::new()).await.unwrap();
    let a = within("session a", server.accept()).await.unwrap();
    let _b_client = client.open("t", Bytes::new()).await.unwrap();
    let b = within("session b", server.accept()).await.unwrap();
    let hub = LocalHub::new();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        for round in 0..ROUNDS {
            let first = hub.attach(&a, SubscribeOptions::default()).unwrap();
            let barrier = Barrier::new(2);
            let second = std::thread::scope(|s| {
                s.spawn(|| {
                    barrier.wait();
                    drop(first);
                });
                let attached = s.spawn(|| {
                    let _entered = runtime.enter();
                    barrier.wait();
                    hub.attach(&b, SubscribeOptions::default()).unwrap()
                });
                attached.join().unwrap()
            });
            assert_eq!(
                hub.subscriber_count("t"),
                1,
                "round {round}: the live subscriber is not on the hub's topic"
            );
            drop(second);
            assert_eq!(hub.topic_count(), 0, "round {round}");
        }
    });
}
