#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Peers that break the wire rules, over loopback: the connection is closed with the
//! spec's code, as CONN_CLOSE and as the WebSocket Close, and nothing is left behind.

mod common;

use bytes::Bytes;
use common::{echo_server, open_config, wait_idle, RawPeer};
use futures_util::{SinkExt, StreamExt};
use mux_proto::frame::{decode_message, Frame};
use mux_proto::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Reads until the connection ends; returns the CONN_CLOSE code and the WebSocket Close code.
async fn closing_codes(peer: &mut RawPeer) -> (Option<CloseCode>, Option<u16>) {
    common::within("the server to close", async {
        let mut conn_close = None;
        loop {
            match peer.ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    for frame in decode_message(b).expect("valid frames") {
                        if let Frame::ConnClose(c) = frame {
                            conn_close = Some(c.code);
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return (conn_close, frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (conn_close, None),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_text_message_closes_the_connection_with_1003() {
    let (_, handle, addr) = echo_server(open_config()).await;
    let mut peer = RawPeer::connect(addr, common::default_settings()).await;
    peer.ws
        .send(Message::Text("hello".into()))
        .await
        .expect("send text");
    let codes = closing_codes(&mut peer).await;
    assert_eq!(codes, (Some(CloseCode::UNSUPPORTED_DATA), Some(1003)));
    wait_idle(&handle).await;
}

#[tokio::test]
async fn a_malformed_frame_closes_the_connection_with_1002() {
    let (_, handle, addr) = echo_server(open_config()).await;
    let mut peer = RawPeer::connect(addr, common::default_settings()).await;
    // Version 2 in the header nibble.
    let garbage = Bytes::from_static(&[0x27, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    peer.ws.send(Message::Binary(garbage)).await.expect("send");
    let codes = closing_codes(&mut peer).await;
    assert_eq!(codes, (Some(CloseCode::PROTOCOL_ERROR), Some(1002)));
    wait_idle(&handle).await;
}
