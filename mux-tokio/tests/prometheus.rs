//! The Prometheus example for real: its exporter installed, its `/metrics` endpoint scraped
//! over HTTP after its demo traffic, and every series in DEPLOYMENT.md's metrics table
//! found with the type the table gives (histograms with buckets); no `mux_` series is left
//! undocumented, labels hold no principal or token, and the Grafana dashboard and the
//! alert rules in deploy/ use documented series only.
#![cfg(feature = "metrics")]
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

#[path = "../examples/prometheus.rs"]
#[allow(dead_code)]
mod example;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The series of DEPLOYMENT.md's metrics table (rows "| `mux_...` | type | ..."), with
/// their types.
fn documented() -> BTreeMap<String, String> {
    let guide = std::fs::read_to_string(root().join("DEPLOYMENT.md")).unwrap();
    let series: BTreeMap<String, String> = guide
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `mux_")?;
            let (name, rest) = rest.split_once('`')?;
            let kind = rest
                .trim_start_matches([' ', '|'])
                .split('|')
                .next()?
                .trim();
            Some((format!("mux_{name}"), kind.to_owned()))
        })
        .collect();
    assert!(
        series.len() >= 10,
        "the metrics table was not found: {series:?}"
    );
    series
}

/// `GET /metrics` over HTTP/1.1; the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// `# TYPE name kind` lines of a scrape.
fn types(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_owned(), k.to_owned()))
        .collect()
}

/// Series names (`mux_...`) a dashboard or rule file uses, histogram suffixes removed.
fn used_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("mux_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_is_exported_and_scraped() {
    let handle = example::install();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap();
    tokio::spawn(example::serve_metrics(listener, handle));
    let url = example::start_server(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), example::traffic(&url))
        .await
        .expect("the demo traffic finishes")
        .unwrap();
    let documented = documented();
    // The server sees the client's close a moment after the client sent it.
    let mut body = String::new();
    for _ in 0..200 {
        body = scrape(metrics).await;
        if body.contains("mux_connections_closed_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let scraped = types(&body);
    for (name, kind) in &documented {
        assert_eq!(
            scraped.get(name),
            Some(kind),
            "{name}: documented as a {kind}, scraped as {:?}\n{body}",
            scraped.get(name)
        );
        if kind == "histogram" {
            for suffix in ["_bucket{", "_sum", "_count"] {
                assert!(body.contains(&format!("{name}{suffix}")), "{name}{suffix}");
            }
        }
    }
    for name in scraped.keys().filter(|n| n.starts_with("mux_")) {
        assert!(documented.contains_key(name), "{name} is not documented");
    }
    // Labels are names from small sets: close codes by name, never a principal or token.
    assert!(body.contains("code=\"FORBIDDEN\""), "{body}");
    assert!(body.contains("code=\"NORMAL\""), "{body}");
    assert!(body.contains("limit=\"open_rate\""), "{body}");
    assert!(body.contains("status=\"401\""), "{body}");
    assert!(
        !body.contains("demo"),
        "a principal or token in a label: {body}"
    );
    // The dashboard and the alerts use documented series only.
    for file in ["deploy/grafana-dashboard.json", "deploy/alerts.yml"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let used = used_in(&text);
        assert!(!used.is_empty(), "{file} uses no mux_ series");
        for name in used {
            assert!(documented.contains_key(&name), "{file} uses {name}");
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
}
