#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The client's address behind trusted reverse proxies (threat: header spoofing): only a
//! trusted TCP peer may name the client, the rightmost untrusted hop is the client, and the
//! per-IP cap and the authenticator see that address. Proxies are played by loopback
//! source addresses (every 127/8 address reaches the server).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::hostile::{Hostile, Options};
use common::{loopback, open_config};
use mux_tokio::{AllowAll, HandshakeRequest, Principal, Server, ServerConfig};

/// A server trusting 127.0.0.2 and 127.0.0.10/31, recording the address every
/// authentication saw.
async fn server(config: ServerConfig) -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>, Server) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let authenticate = move |request: &HandshakeRequest| {
        record.lock().unwrap().push(request.peer);
        Ok(Principal::new(format!("user-{}", request.peer.ip())))
    };
    let config = config.trusted_proxies(["127.0.0.2", "127.0.0.10/31"]);
    let server = Server::bind(loopback(), config, authenticate, AllowAll)
        .await
        .expect("bind");
    (server.local_addr(), seen, server)
}

fn from(last_octet: u8, xff: Option<&str>) -> Options {
    let options = Options::default().source_ip(last_octet);
    match xff {
        Some(value) => options.header("X-Forwarded-For", value),
        None => options,
    }
}

async fn status(addr: SocketAddr, options: &Options) -> (u16, Option<Hostile>) {
    match Hostile::upgrade(addr, options).await {
        Ok(h) => (101, Some(h)),
        Err((status, _)) => (status, None),
    }
}

fn ip_of(addr: &SocketAddr) -> String {
    addr.ip().to_string()
}

#[tokio::test]
async fn spoofed_headers_from_an_untrusted_peer_change_nothing() {
    let (addr, seen, _server) = server(open_config()).await;
    let spoof = from(3, Some("198.51.100.1")).header("Forwarded", "for=198.51.100.2");
    assert_eq!(status(addr, &spoof).await.0, 101);
    assert_eq!(ip_of(&seen.lock().unwrap()[0]), "127.0.0.3");
}

#[tokio::test]
async fn a_chain_of_proxies_resolves_to_the_rightmost_untrusted_hop() {
    let (addr, seen, _server) = server(open_config()).await;
    // The client forged the first hop; a CDN we do not trust saw 203.0.113.5; our two
    // proxies (127.0.0.10 and .11, then the TCP peer .2) appended what they saw.
    let chain = from(2, Some("6.6.6.6, 203.0.113.5, 127.0.0.11, 127.0.0.10"));
    assert_eq!(status(addr, &chain).await.0, 101);
    // A Forwarded header is not what these proxies write: ignored (a cloud load balancer
    // would pass the client's own through).
    let forwarded = from(2, Some("198.51.100.9")).header(
        "Forwarded",
        "for=6.6.6.6, for=\"[2001:db8::5]:4711\", for=127.0.0.10",
    );
    assert_eq!(status(addr, &forwarded).await.0, 101);
    // A trusted peer that forwards nothing is taken as the client (a health check).
    assert_eq!(status(addr, &from(2, None)).await.0, 101);
    let seen = seen.lock().unwrap();
    assert_eq!(ip_of(&seen[0]), "203.0.113.5");
    assert_eq!(ip_of(&seen[1]), "198.51.100.9");
    assert_eq!(ip_of(&seen[2]), "127.0.0.2");
}

#[tokio::test]
async fn malformed_forwarding_from_a_trusted_proxy_is_refused_with_400() {
    let (addr, seen, _server) = server(open_config()).await;
    for bad in ["garbage", "unknown", "198.51.100.7, _hidden"] {
        assert_eq!(status(addr, &from(2, Some(bad))).await.0, 400, "{bad}");
    }

    // Garbage the client wrote left of the real hop is never reached.
    assert_eq!(
        status(addr, &from(2, Some("garbage, 198.51.100.7")))
            .await
            .0,
        101
    );
    assert!(
        seen.lock().unwrap().len() == 1,
        "refused before authentication"
    );
}

/// Behind one proxy address, the per-IP cap (2) counts each client the proxy reports, not
/// the proxy: a third connection of one client is refused with 429, another client still
/// connects, and the proxy itself is never capped.
#[tokio::test]
async fn the_per_ip_cap_counts_the_forwarded_client() {
    let (addr, _seen, server) = server(open_config().connection_limits(100, 2, 100)).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let (code, h) = status(addr, &from(2, Some("198.51.100.1"))).await;
        assert_eq!(code, 101);
        kept.push(h);
    }
    assert_eq!(status(addr, &from(2, Some("198.51.100.1"))).await.0, 429);
    let (code, h) = status(addr, &from(2, Some("198.51.100.2"))).await;
    assert_eq!(code, 101);
    kept.push(h);
    assert_eq!(server.handle().stats().connections, 3);
    drop(kept);
    common::wait_idle(&server.handle()).await;
}

/// Proxies configured to write `Forwarded` (RFC 7239): it is read, with ports and IPv6,
/// and `X-Forwarded-For` is ignored; a `for=unknown` where the client should be is 400.
#[tokio::test]
async fn proxies_that_write_forwarded_are_read_from_it() {
    let mut config = open_config();
    config.forwarded_header = mux_tokio::ForwardedHeader::Forwarded;
    let (addr, seen, _server) = server(config).await;
    let forwarded = from(2, Some("6.6.6.6")).header(
        "Forwarded",
        "for=6.6.6.6, for=\"[2001:db8::5]:4711\", for=127.0.0.10",
    );
    assert_eq!(status(addr, &forwarded).await.0, 101);
    assert_eq!(
        seen.lock().unwrap()[0],
        "[2001:db8::5]:4711".parse().unwrap()
    );
    let unknown = from(2, None).header("Forwarded", "for=unknown");
    assert_eq!(status(addr, &unknown).await.0, 400);
}
