//! The client over `wss://` on loopback: a CA and a server certificate are made at test time,
//! a tokio-rustls acceptor fronts a test WebSocket server that runs the protocol with
//! `serve_transport`. The client connects with the CA as a custom root, opens, echoes and
//! reconnects; without that root, or to a name the certificate does not cover, it fails
//! with a typed TLS error; refusals and the subprotocol check work as over `ws://`.
#![cfg(feature = "tls")]
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::within;
use mux_tokio::rustls;
use mux_tokio::{
    AllowAll, Backoff, Client, ClientConfig, ClientEvent, CloseCode, Config, ConnectError,
    ConnectionHandle, Principal, TungsteniteTransport,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

/// A private CA and a server certificate it signed, made fresh for each test.
struct Pki {
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl Pki {
    /// A CA named `ca_name`, and a server certificate for `names` signed by it.
    fn new(ca_name: &str, names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let server = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        Pki {
            ca: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// A client configuration that trusts this CA only.
    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the test server does with each TLS connection, in order.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Upgrade with `mux.v1` and run the protocol; sessions echo.
    Serve,
    /// Refuse the upgrade with this status and `Retry-After` seconds.
    Refuse(u16, Option<u64>),
    /// Upgrade without selecting `mux.v1`.
    NoSubprotocol,
}

/// A TLS WebSocket server on loopback answering one connection per entry of `answers`; the
/// handle of each connection it serves is sent to the returned channel.
async fn tls_server(
    pki: &Pki,
    answers: Vec<Answer>,
) -> (SocketAddr, mpsc::Receiver<ConnectionHandle>) {
    let listener = TcpListener::bind(common::loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.acceptor();
    let (handles_tx, handles) = mpsc::channel(8);
    let (sessions_tx, mut sessions) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(session) = sessions.recv().await {
            tokio::spawn(common::echo(session));
        }
    });
    tokio::spawn(async move {
        for answer in answers {
            let (tcp, _) = listener.accept().await.unwrap();
            // A client that does not trust the certificate aborts here.
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            #[allow(clippy::result_large_err)]
            let callback = move |_: &Request, mut response: Response| match answer {
                Answer::Serve => {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static("mux.v1"));
                    Ok(response)
                }
                Answer::NoSubprotocol => Ok(response),
                Answer::Refuse(status, retry_after) => {
                    let mut refusal = ErrorResponse::new(None);
                    *refusal.status_mut() = StatusCode::from_u16(status).unwrap();
                    if let Some(seconds) = retry_after {
                        refusal
                            .headers_mut()
                            .insert("retry-after", HeaderValue::from(seconds));
                    }
                    Err(refusal)
                }
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else {
                continue;
            };
            if let Answer::Serve = answer {
                let (handle, _) = mux_tokio::serve_transport(
                    TungsteniteTransport::new(ws),
                    Config::default(),
                    Principal::new("tls-client"),
                    AllowAll,
                    sessions_tx.clone(),
                );
                let _ = handles_tx.send(handle).await;
            }
        }
    });
    (addr, handles)
}

async fn echo_works(client: &mut Client, text: &'static str) {
    within("an echo over wss", async {
        let mut session = client.open("echo", "session-token").await.expect("open");
        session
            .send(Bytes::from_static(text.as_bytes()))
            .await
            .expect("send");
        assert_eq!(session.recv().await.as_deref(), Some(text.as_bytes()));
    })
    .await;
}

async fn next(client: &mut Client) -> ClientEvent {
    within("a client event", client.next_event())
        .await
        .expect("the event stream ended")
}

#[tokio::test]
async fn a_client_with_the_custom_root_connects_over_wss_echoes_and_reconnects() {
    let pki = Pki::new("mux test CA", &["localhost", "127.0.0.1"]);
    let (addr, mut handles) = tls_server(&pki, vec![Answer::Serve, Answer::Serve]).await;
    let config = ClientConfig::default()
        .tls(pki.client_tls())
        .backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
            Some(20),
        ));
    let url = format!("wss://127.0.0.1:{}/", addr.port());
    let mut client = within("connect over wss", Client::connect(&url, config))
        .await
        .expect("connect over wss");
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Connected {
            attempt: 0,
            generation: 1
        }
    );
    echo_works(&mut client, "over tls").await;

    // Reconnecting works over TLS too: the server ends the connection, the client comes back.
    let first = within("the served connection", handles.recv())
        .await
        .unwrap();
    first.close(CloseCode::TRY_AGAIN_LATER, "kicked").await;
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Disconnected {
            code: Some(CloseCode::TRY_AGAIN_LATER)
        }
    );
    let event = loop {
        match next(&mut client).await {
            ClientEvent::Reconnecting { .. } => continue,
            other => break other,
        }
    };
    assert!(
        matches!(event, ClientEvent::Connected { generation: 2, .. }),
        "{event:?}"
    );
    echo_works(&mut client, "over tls again").await;
    within("close", client.close()).await;
}

#[tokio::test]
async fn a_client_without_the_custom_root_fails_with_a_tls_error() {
    let pki = Pki::new("mux test CA", &["localhost", "127.0.0.1"]);
    let (addr, _handles) = tls_server(&pki, vec![Answer::Serve, Answer::Serve]).await;
    let url = format!("wss://127.0.0.1:{}/", addr.port());
    // The default configuration trusts the webpki roots, which never signed this CA.
    let default = ClientConfig::default().reconnect(false);
    // A custom root, but another CA's.
    let stranger = ClientConfig::default()
        .reconnect(false)
        .tls(Pki::new("another CA", &["127.0.0.1"]).client_tls());
    for (what, config) in [("default roots", default), ("another CA", stranger)] {
        let error = within("a refused TLS handshake", Client::connect(&url, config))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: an untrusted certificate must fail"));
        assert!(
            matches!(
                &error,
                ConnectError::Tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{what}: {error:?}"
        );
        assert!(error.to_string().contains("TLS"), "{error}");
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_with_a_tls_error() {
    let pki = Pki::new("mux test CA", &["localhost"]);
    let (addr, _handles) = tls_server(&pki, vec![Answer::Serve]).await;
    let config = ClientConfig::default()
        .reconnect(false)
        .tls(pki.client_tls());
    let url = format!("wss://127.0.0.1:{}/", addr.port());
    let error = within("a refused TLS handshake", Client::connect(&url, config))
        .await
        .err()
        .expect("a certificate for localhost does not cover 127.0.0.1");
    assert!(
        matches!(
            &error,
            ConnectError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn refusals_and_the_subprotocol_check_work_over_tls() {
    let pki = Pki::new("mux test CA", &["127.0.0.1"]);
    let answers = vec![
        Answer::Refuse(503, Some(2)),
        Answer::Refuse(401, None),
        Answer::NoSubprotocol,
    ];
    let (addr, _handles) = tls_server(&pki, answers).await;
    let url = format!("wss://127.0.0.1:{}/", addr.port());
    let config = || {
        ClientConfig::default()
            .reconnect(false)
            .tls(pki.client_tls())
            .token("t")
    };
    let refused = within("a 503", Client::connect(&url, config())).await;
    assert!(
        matches!(
            refused,
            Err(ConnectError::Refused { status: 503, retry_after: Some(d) }) if d == Duration::from_secs(2)
        ),
        "{refused:?}",
        refused = refused.err()
    );
    let refused = within("a 401", Client::connect(&url, config())).await;
    assert!(
        matches!(
            refused,
            Err(ConnectError::Refused {
                status: 401,
                retry_after: None
            })
        ),
        "{refused:?}",
        refused = refused.err()
    );
    let unselected = within("an upgrade without mux.v1", Client::connect(&url, config())).await;
    assert!(
        matches!(unselected, Err(ConnectError::NoSubprotocol)),
        "{unselected:?}",
        unselected = unselected.err()
    );
}

/// The real server over TLS: the application terminates TLS with tokio-rustls and hands
/// each stream to `ServerHandle::serve`, and every handshake check holds over it: the
/// Origin (403), `mux.v1` (400), authentication (401), then a full session over `wss://`.
#[tokio::test]
async fn the_server_serves_tls_streams_with_every_check() {
    let pki = Pki::new("mux test CA", &["localhost", "127.0.0.1"]);
    let mut server = mux_tokio::Server::detached(
        common::matrix_config(),
        common::token_authenticator,
        AllowAll,
    );
    let handle = server.handle();
    let listener = TcpListener::bind(common::loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.acceptor();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let (acceptor, handle) = (acceptor.clone(), handle.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    handle.serve(tls, peer).await;
                }
            });
        }
    });
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });
    let url = format!("wss://127.0.0.1:{}/", addr.port());
    let config = || {
        ClientConfig::default()
            .tls(pki.client_tls())
            .reconnect(false)
    };
    // No Origin: 403 from the server's own check, over TLS.
    match Client::connect(&url, config().token("good-token")).await {
        Err(ConnectError::Refused { status, .. }) => assert_eq!(status, 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let allowed = || config().origin("https://example.com");
    match Client::connect(&url, allowed().token("wrong")).await {
        Err(ConnectError::Refused { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut client = Client::connect(&url, allowed().token("good-token"))
        .await
        .expect("connect over wss");
    echo_works(&mut client, "checked over tls").await;
}
