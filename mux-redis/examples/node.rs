//! One node of a multi-node mux deployment: a mux server whose topics and quotas live in
//! Redis. Start Redis, then any number of nodes, and a client on each:
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no
//! cargo run -p mux-redis --example node -- serve 127.0.0.1:9001
//! cargo run -p mux-redis --example node -- serve 127.0.0.1:9002
//! cargo run -p mux-redis --example node -- chat ws://127.0.0.1:9001/ ann
//! cargo run -p mux-redis --example node -- chat ws://127.0.0.1:9002/ bob
//! ```
//!
//! A session of kind `room` subscribes to the topic `room` (with presence); a session of
//! kind `say` publishes every message it sends to `room`, on whichever node it is. The token
//! `user:<name>` authenticates `<name>`, 4 handshakes per second each (bursts of 8), counted
//! across every node. `REDIS_URL` overrides `redis://127.0.0.1:6379/`.

use std::net::SocketAddr;

use bytes::Bytes;
use mux_redis::{RedisHub, RedisOptions, RedisQuotas};
use mux_tokio::quota::{OnStoreError, Quotas};
use mux_tokio::topic::{decode, Hub, SubscribeOptions, TopicEvent, TopicOptions};
use mux_tokio::{
    AuthError, Client, ClientConfig, Grant, HandshakeRate, HandshakeRequest, OpenInfo,
    OriginPolicy, Principal, Rejection, Server, ServerConfig, Session,
};
use tokio::io::AsyncBufReadExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    let token = request.token.as_ref().map(|t| t.expose()).unwrap_or("");
    match token.strip_prefix("user:") {
        Some(name) if !name.is_empty() => Ok(Principal::new(name)),
        _ => Err(AuthError::Missing),
    }
}

async fn authorize(_principal: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    match open.kind.as_str() {
        "room" => Ok(Grant::receive_only()),
        "say" => Ok(Grant::full()),
        _ => Err(Rejection::forbidden("unknown topic")),
    }
}

async fn serve(addr: SocketAddr, redis: &str) -> Result<(), Error> {
    let options = RedisOptions::default();
    let hub = RedisHub::connect(redis, options.clone()).await?;
    hub.configure_topic("room", TopicOptions::with_presence(100));
    let quotas = Quotas {
        handshakes: HandshakeRate {
            per_second: 4,
            burst: 8,
        },
        ..Quotas::default()
    };
    let quotas = RedisQuotas::connect(redis, &options, quotas)?;
    let config = ServerConfig::default()
        .origins(OriginPolicy::default().allow_missing(true))
        .quotas(quotas.policy(OnStoreError::Allow));
    let mut server = Server::bind(addr, config, authenticate, authorize).await?;
    println!(
        "node {} on ws://{}/ (redis {redis})",
        hub.node_id(),
        server.local_addr()
    );
    let stop = mux_tokio::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            session = server.accept() => {
                let Some(session) = session else { break };
                tokio::spawn(serve_session(hub.clone(), session));
            }
            _ = &mut stop => break,
        }
    }
    // A planned stop: members leave now rather than when their entries expire.
    hub.leave_all().await?;
    Ok(())
}

async fn serve_session(hub: RedisHub, mut session: Session) {
    if session.kind() == "say" {
        while let Some(message) = session.recv().await {
            if let Err(e) = hub.publish("room", message).await {
                eprintln!("publish failed: {e}");
            }
        }
        return;
    }
    match hub.attach(&session, SubscribeOptions::default()).await {
        Ok(_subscription) => session.closed().await,
        Err(e) => eprintln!("attach failed: {e}"),
    }
}

async fn chat(url: &str, user: &str) -> Result<(), Error> {
    let config = ClientConfig::default().token(format!("user:{user}"));
    let mut client = Client::connect(url, config).await?;
    let mut room = client.open("room", Bytes::new()).await?;
    let mut say = client.open("say", Bytes::new()).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            event = room.recv() => match event.as_ref().map(decode) {
                Some(Ok(TopicEvent::Message { payload: m, .. })) => println!("{}", String::from_utf8_lossy(&m)),
                Some(Ok(TopicEvent::Join(who))) => println!("* {who} joined"),
                Some(Ok(TopicEvent::Leave(who))) => println!("* {who} left"),
                Some(Ok(TopicEvent::Snapshot { members, .. })) => println!("* here: {members:?}"),
                Some(Ok(TopicEvent::Gap(Some(n)))) => println!("* {n} messages missed"),
                Some(Ok(TopicEvent::Gap(None))) => println!("* messages missed (the stream restarted)"),
                Some(_) => {}
                None => break,
            },
            line = lines.next_line() => match line? {
                Some(line) => say.send(Bytes::from(format!("{user}: {line}"))).await?,
                None => break,
            },
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr] => serve(addr.parse()?, &redis).await,
        ["chat", url, user] => chat(url, user).await,
        _ => {
            eprintln!("usage: node serve <ip:port> | node chat <ws://ip:port/> <user>");
            std::process::exit(2);
        }
    }
}
