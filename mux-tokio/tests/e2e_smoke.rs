#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! One server, one client, over a real loopback socket.

use std::time::Duration;

use bytes::Bytes;
use mux_tokio::{AllowAll, Client, ClientConfig, OriginPolicy, Server, ServerConfig};

#[tokio::test]
async fn echo_over_loopback() {
    let config = ServerConfig::default().origins(OriginPolicy::default().allow_missing(true));
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), config, AllowAll, AllowAll)
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    tokio::spawn(async move {
        while let Some(mut session) = server.accept().await {
            tokio::spawn(async move {
                while let Some(m) = session.recv().await {
                    if session.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let mut a = client.open("a", Bytes::new()).await.unwrap();
    let mut b = client.open("b", Bytes::new()).await.unwrap();
    let work = async {
        for i in 0..100u32 {
            a.send(Bytes::from(format!("a{i}"))).await.unwrap();
            b.send(Bytes::from(format!("b{i}"))).await.unwrap();
            assert_eq!(a.recv().await.unwrap(), Bytes::from(format!("a{i}")));
            assert_eq!(b.recv().await.unwrap(), Bytes::from(format!("b{i}")));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap();
}

#[tokio::test]
async fn sessions_are_streams_and_sinks() {
    use futures_util::{SinkExt, StreamExt};

    let config = ServerConfig::default().origins(OriginPolicy::default().allow_missing(true));
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), config, AllowAll, AllowAll)
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            // Echo with the Stream and Sink halves: forward every message back.
            tokio::spawn(async move {
                let sink = session.sender().into_sink();
                let _ = session.map(Ok).forward(sink).await;
            });
        }
    });
    let work = async {
        let mut client = Client::connect(&url, ClientConfig::default())
            .await
            .unwrap();
        let session = client.open("s", Bytes::new()).await.unwrap();
        let mut sink = Box::pin(session.sender().into_sink());
        for i in 0..50u32 {
            sink.send(Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .unwrap();
        }
        let echoed: Vec<Bytes> = session.take(50).collect().await;
        let expected: Vec<Bytes> = (0..50u32)
            .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
            .collect();
        assert_eq!(echoed, expected);
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap();
}
