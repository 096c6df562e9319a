#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The `metrics` feature: the driver's counters reach whatever recorder the application
//! installed (here a recording one), with bounded labels and never a principal or token.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use mux_tokio::{
    AllowAll, AuthError, Client, ClientConfig, HandshakeRequest, OpenError, OriginPolicy,
    Principal, Rejection, Server, ServerConfig,
};

#[derive(Default)]
struct Recorded(Mutex<HashMap<String, f64>>);

struct Handle(Arc<Recorded>, String);

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        *self.0 .0.lock().unwrap().entry(self.1.clone()).or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.0
             .0
            .lock()
            .unwrap()
            .insert(self.1.clone(), value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        *self.0 .0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self.0 .0.lock().unwrap().entry(self.1.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.0 .0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, _: f64) {}
}

struct Recording(Arc<Recorded>);

fn name(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
    }
}

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match request.token.as_ref().map(|t| t.expose()) {
        Some("secret-canary-token") => Ok(Principal::new("alice-principal")),
        _ => Err(AuthError::Invalid),
    }
}

#[tokio::test]
async fn counters_reach_the_installed_recorder() {
    let recorded = Arc::new(Recorded::default());
    metrics::set_global_recorder(Recording(recorded.clone())).unwrap();
    let authorizer = |_: Principal, open: mux_tokio::OpenInfo| async move {
        if open.kind == "admin" {
            Err(Rejection::forbidden("no"))
        } else {
            Ok(mux_proto::Grant::full())
        }
    };
    let config = ServerConfig::default().origins(OriginPolicy::default().allow_missing(true));
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        authenticate,
        authorizer,
    )
    .await
    .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let handle = server.handle();
    tokio::spawn(async move { while server.accept().await.is_some() {} });
    let work = async {
        // A refused handshake, an accepted connection, an accepted and a refused session.
        assert!(
            Client::connect(&url, ClientConfig::default().reconnect(false))
                .await
                .is_err()
        );
        let mut client = Client::connect(
            &url,
            ClientConfig::default()
                .token("secret-canary-token")
                .reconnect(false),
        )
        .await
        .unwrap();
        let _ok = client.open("chat", Bytes::new()).await.unwrap();
        assert!(matches!(
            client.open("admin", Bytes::new()).await,
            Err(OpenError::Refused { .. })
        ));
        client.close().await;
        handle.shutdown(Duration::from_secs(2)).await;
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap();
    let _ = AllowAll;
    let m = recorded.0.lock().unwrap().clone();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get("mux_handshakes_refused_total{status=401}"),
        1.0,
        "{m:?}"
    );
    assert_eq!(get("mux_connections_opened_total{}"), 1.0, "{m:?}");
    assert!(get("mux_sessions_opened_total{}") >= 1.0, "{m:?}");
    assert!(
        get("mux_sessions_closed_total{code=FORBIDDEN}") >= 1.0,
        "{m:?}"
    );
    assert_eq!(
        get("mux_connections{}"),
        0.0,
        "the gauge returns to zero: {m:?}"
    );
    // Labels are codes and kinds, never principals or tokens.
    let all = format!("{m:?}");
    assert!(!all.contains("alice") && !all.contains("canary"), "{all}");
}
