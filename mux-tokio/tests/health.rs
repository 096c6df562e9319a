#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Health and readiness on the server's own port, before any upgrade: `/healthz` while the
//! process serves, `/readyz` until it drains (or nears its memory budget), for Kubernetes
//! probes and load balancers.

mod common;

use std::net::SocketAddr;

use common::hostile::{wire, Hostile};
use common::{echo_server, open_config, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status line and body of `GET path`.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    within("the answer", tcp.read_to_end(&mut response))
        .await
        .expect("read");
    let text = String::from_utf8(response).expect("text");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn probes_answer_and_readiness_turns_off_when_draining() {
    let (_url, handle, addr) = echo_server(open_config()).await;
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/readyz?verbose").await, (200, "ready\n".into()));
    assert!(handle.is_ready());
    // Any other plain GET is not an upgrade.
    assert_eq!(get(addr, "/").await.0, 400);
    let mut client = Hostile::connect(addr, &[]).await;
    handle.drain().await;
    assert_eq!(get(addr, "/readyz").await, (503, "draining\n".into()));
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    assert!(!handle.is_ready());
    // The connection already there is told to go away; new ones still upgrade and hear
    // the same at once.
    let goaway = within("GOAWAY", async {
        loop {
            let frames = client.next_frames().await.expect("frames");
            if let Some(f) = frames.into_iter().find(|f| f.ty == wire::GOAWAY) {
                return f;
            }
        }
    })
    .await;
    assert_eq!(goaway.code(), Some(1001));
    let mut late = Hostile::connect(addr, &[]).await;
    let frames = late.next_frames().await.expect("frames");
    assert!(frames.iter().any(|f| f.ty == wire::GOAWAY), "{frames:?}");
}

#[tokio::test]
async fn probes_can_be_turned_off() {
    let mut config = open_config();
    config.health_checks = false;
    let (_url, _handle, addr) = echo_server(config).await;
    assert_eq!(get(addr, "/healthz").await.0, 400);
}
