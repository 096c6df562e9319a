//! The client's address behind reverse proxies. Only a TCP peer in `trusted_proxies` may say
//! who the client is, in `Forwarded` (RFC 7239) or `X-Forwarded-For`; the client is the
//! rightmost hop that is not itself a trusted proxy, since each proxy appends what it saw
//! and only the entries our own proxies wrote can be believed (anything to their left may
//! have been written by the client).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio_tungstenite::tungstenite::http::HeaderMap;

/// An address block, `10.0.0.0/8` or a single address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

impl IpCidr {
    /// Parses `addr` or `addr/prefix` (IPv4 or IPv6). `None` if malformed.
    pub fn parse(text: &str) -> Option<IpCidr> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpCidr { addr, prefix })
    }

    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32u32.saturating_sub(u32::from(self.prefix)));
                let mask = mask.unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let shift = 128u32.saturating_sub(u32::from(self.prefix));
                let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Debug for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Which header the trusted proxies write the client's address into; the other one is
/// ignored, since a proxy that does not write it may pass on what the client sent (cloud
/// load balancers pass a client's own `Forwarded` through unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, which nginx, HAProxy, AWS ALB and Google Cloud load balancers
    /// append to. The default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), for proxies configured to write it.
    Forwarded,
}

/// Why the forwarding headers could not name a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// The client's address: the TCP peer unless it is a trusted proxy, in which case the
/// rightmost untrusted hop of the header the proxies write. A trusted peer that sent no
/// such header is the client itself (a health check, say). A hop that does not parse where
/// the client should be is [`Malformed`] (answered 400).
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpCidr],
    header: ForwardedHeader,
) -> Result<SocketAddr, Malformed> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer.ip()) {
        return Ok(peer);
    }
    let hops = match header {
        ForwardedHeader::Forwarded if headers.contains_key("forwarded") => forwarded_hops(headers)?,
        ForwardedHeader::XForwardedFor if headers.contains_key("x-forwarded-for") => {
            x_forwarded_for_hops(headers)
        }
        _ => return Ok(peer),
    };
    // Walk from the proxy nearest to us outwards, past our own proxies.
    for hop in hops.iter().rev() {
        let Some(addr) = hop else {
            return Err(Malformed);
        };
        if !is_trusted(addr.ip()) {
            return Ok(*addr);
        }
    }
    // Every hop is one of ours: the leftmost is as far as we can see.
    match hops.first() {
        Some(Some(addr)) => Ok(*addr),
        Some(None) => Err(Malformed),
        None => Ok(peer),
    }
}

/// Hops of every `X-Forwarded-For` header, in order: `None` for one that is not an address.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Vec<Option<SocketAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|hop| parse_hop(hop.trim()))
        .collect()
}

/// The `for=` of every element of every `Forwarded` header, in order (RFC 7239 §4).
fn forwarded_hops(headers: &HeaderMap) -> Result<Vec<Option<SocketAddr>>, Malformed> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded").iter() {
        let value = value.to_str().map_err(|_| Malformed)?;
        for element in value.split(',') {
            let node = element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                .map(|(_, node)| node.trim().trim_matches('"'));
            // An element without `for=` says nothing about the client: it is not a hop.
            if let Some(node) = node {
                hops.push(parse_hop(node));
            }
        }
    }
    Ok(hops)
}

/// `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`.
/// Obfuscated identifiers and `unknown` (RFC 7239 §6) are not addresses.
fn parse_hop(hop: &str) -> Option<SocketAddr> {
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = hop
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(hop);
    if let Ok(v6) = bare.parse::<Ipv6Addr>() {
        return Some(SocketAddr::new(IpAddr::V6(v6), 0));
    }
    bare.parse::<Ipv4Addr>()
        .ok()
        .map(|v4| SocketAddr::new(IpAddr::V4(v4), 0))
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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                k.parse::<tokio_tungstenite::tungstenite::http::HeaderName>()
                    .unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn trusted() -> Vec<IpCidr> {
        ["10.0.0.0/8", "192.168.1.1", "::1", "fd00::/8"]
            .iter()
            .map(|c| IpCidr::parse(c).unwrap())
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The header the request carries decides which one is configured, for brevity.
    fn client_address(
        peer: SocketAddr,
        headers: &HeaderMap,
        trusted: &[IpCidr],
    ) -> Result<SocketAddr, Malformed> {
        let header = if headers.contains_key("forwarded") {
            ForwardedHeader::Forwarded
        } else {
            ForwardedHeader::XForwardedFor
        };
        super::client_address(peer, headers, trusted, header)
    }

    const PROXY: &str = "10.1.2.3:5000";

    #[test]
    fn blocks_contain_what_they_should() {
        let c = IpCidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        let one = IpCidr::parse("192.168.1.1").unwrap();
        assert!(one.contains(ip("192.168.1.1")) && !one.contains(ip("192.168.1.2")));
        let v6 = IpCidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(IpCidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0", "x", "10.0.0.0/-1", ""] {
            assert!(IpCidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let spoof = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        let peer: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        assert_eq!(client_address(peer, &spoof, &trusted()), Ok(peer));
        // Nothing is trusted by default.
        let proxy: SocketAddr = PROXY.parse().unwrap();
        assert_eq!(client_address(proxy, &spoof, &[]), Ok(proxy));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let proxy: SocketAddr = PROXY.parse().unwrap();
        // A cloud load balancer appends to X-Forwarded-For and passes the client's own
        // Forwarded through: with the default, that Forwarded is ignored.
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let xff = super::client_address(proxy, &h, &trusted(), ForwardedHeader::default());
        assert_eq!(xff, Ok("198.51.100.7:0".parse().unwrap()));
        let fwd = super::client_address(proxy, &h, &trusted(), ForwardedHeader::Forwarded);
        assert_eq!(fwd, Ok("6.6.6.6:0".parse().unwrap()));
        let only_fwd = headers(&[("forwarded", "for=6.6.6.6")]);
        let ignored =
            super::client_address(proxy, &only_fwd, &trusted(), ForwardedHeader::XForwardedFor);
        assert_eq!(ignored, Ok(proxy));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxy: SocketAddr = PROXY.parse().unwrap();
        let cases = [
            // One proxy.
            (vec![("x-forwarded-for", "198.51.100.7")], "198.51.100.7:0"),
            // The client wrote a fake hop; our proxy appended what it saw.
            (
                vec![("x-forwarded-for", "6.6.6.6, 198.51.100.7")],
                "198.51.100.7:0",
            ),
            // A chain of our proxies (10.x and 192.168.1.1) behind a CDN hop we do not trust.
            (
                vec![("x-forwarded-for", "203.0.113.5, 10.9.9.9, 192.168.1.1")],
                "203.0.113.5:0",
            ),
            // Several headers are one list, in order.
            (
                vec![
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.7, 10.0.0.2"),
                ],
                "198.51.100.7:0",
            ),
            // Forwarded (when configured), with ports and IPv6.
            (
                vec![
                    ("x-forwarded-for", "6.6.6.6"),
                    (
                        "forwarded",
                        "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.9",
                    ),
                ],
                "[2001:db8::7]:4711",
            ),
            // Only our own proxies: the leftmost.
            (
                vec![("x-forwarded-for", "10.0.0.5, 10.0.0.6")],
                "10.0.0.5:0",
            ),
        ];
        for (pairs, want) in cases {
            let got = client_address(proxy, &headers(&pairs), &trusted());
            assert_eq!(got, Ok(want.parse().unwrap()), "{pairs:?}");
        }
        // A trusted peer that forwards nothing is the client (a health check).
        assert_eq!(
            client_address(proxy, &HeaderMap::new(), &trusted()),
            Ok(proxy)
        );
    }

    #[test]
    fn malformed_hops_where_the_client_should_be_are_refused_and_elsewhere_ignored() {
        let proxy: SocketAddr = PROXY.parse().unwrap();
        for bad in ["garbage", "unknown", "198.51.100.7, _hidden", ""] {
            let h = headers(&[("x-forwarded-for", bad)]);
            assert_eq!(
                client_address(proxy, &h, &trusted()),
                Err(Malformed),
                "{bad}"
            );
        }
        // Garbage to the left of the client, written by the client, is never reached.
        let h = headers(&[("x-forwarded-for", "garbage, 198.51.100.7")]);
        assert_eq!(
            client_address(proxy, &h, &trusted()),
            Ok("198.51.100.7:0".parse().unwrap())
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_address(proxy, &h, &trusted()), Err(Malformed));
        // An element without for= is not a hop.
        let h = headers(&[("forwarded", "proto=https;by=10.0.0.1, for=198.51.100.7")]);
        assert_eq!(
            client_address(proxy, &h, &trusted()),
            Ok("198.51.100.7:0".parse().unwrap())
        );
    }
}
