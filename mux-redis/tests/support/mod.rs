//! Nodes for the multi-node tests: a mux-tokio server on loopback whose topics go through a
//! [`RedisHub`], clients, and bounded waits. Every wait fails the test if its state is never
//! reached; none stands in for synchronisation.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mux_redis::{RedisHub, RedisOptions};
use mux_tokio::quota::QuotaPolicy;
use mux_tokio::topic::{decode, Hub, SubscribeOptions, Subscription, TopicEvent, TopicOptions};
use mux_tokio::{
    AllowAll, AuthError, Client, ClientConfig, HandshakeRequest, OriginPolicy, Principal, Server,
    ServerConfig, ServerHandle, Session,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The bound on every wait: far above what anything legitimate takes on loopback.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds, for at most [`WAIT`]: for state
/// with no event to await (Redis's own, a counter).
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The token `user:<name>` authenticates `<name>`.
pub fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    let token = request.token.as_ref().map(|t| t.expose()).unwrap_or("");
    token
        .strip_prefix("user:")
        .map(Principal::new)
        .ok_or(AuthError::Missing)
}

/// Options for the tests' hubs: short TTL and timeouts, a prefix of the test's own.
pub fn hub_options(prefix: &str) -> RedisOptions {
    RedisOptions::default()
        .prefix(prefix)
        .presence_ttl(Duration::from_millis(900))
        .command_timeout(Duration::from_millis(400))
        .ping_interval(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// One node: a server whose every session is attached to the topic of its kind.
pub struct Node {
    pub hub: RedisHub,
    pub addr: SocketAddr,
    pub url: String,
    pub handle: ServerHandle,
    /// The kind of each attached session, in attach order.
    attached: mpsc::Receiver<String>,
    task: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a node is started with.
#[derive(Clone)]
pub struct NodeConfig {
    pub redis_url: String,
    pub options: RedisOptions,
    pub presence: Vec<&'static str>,
    /// Topics configured with these options (history, say).
    pub topics: Vec<(&'static str, TopicOptions)>,
    pub quotas: Option<QuotaPolicy>,
    pub protocol: mux_tokio::Config,
    pub subscribe: SubscribeOptions,
}

impl NodeConfig {
    pub fn new(redis_url: &str, prefix: &str) -> Self {
        NodeConfig {
            redis_url: redis_url.to_owned(),
            options: hub_options(prefix),
            presence: Vec::new(),
            topics: Vec::new(),
            quotas: None,
            protocol: mux_tokio::Config::default(),
            subscribe: SubscribeOptions::default(),
        }
    }

    pub fn presence(mut self, topic: &'static str) -> Self {
        self.presence.push(topic);
        self
    }

    pub fn topic(mut self, topic: &'static str, options: TopicOptions) -> Self {
        self.topics.push((topic, options));
        self
    }

    pub fn quotas(mut self, policy: QuotaPolicy) -> Self {
        self.quotas = Some(policy);
        self
    }
}

impl Node {
    /// Starts a node on the current runtime and waits until its pub/sub link is up.
    pub async fn start(config: NodeConfig) -> Node {
        let hub = RedisHub::connect(&config.redis_url, config.options.clone())
            .await
            .expect("a hub");
        for topic in &config.presence {
            hub.configure_topic(topic, TopicOptions::with_presence(64));
        }
        for (topic, options) in &config.topics {
            hub.configure_topic(topic, *options);
        }
        let mut server_config = ServerConfig::default()
            .origins(OriginPolicy::default().allow_missing(true))
            .protocol(config.protocol.clone())
            .connection_limits(10_000, 1_000, 1_000);
        if let Some(quotas) = config.quotas.clone() {
            server_config = server_config.quotas(quotas);
        }
        let mut server = Server::bind(
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            server_config,
            authenticate,
            AllowAll,
        )
        .await
        .expect("bind loopback");
        let addr = server.local_addr();
        let handle = server.handle();
        let (tx, attached) = mpsc::channel(4096);
        let accept_hub = hub.clone();
        let options = config.subscribe;
        let task = tokio::spawn(async move {
            while let Some(session) = server.accept().await {
                let hub = accept_hub.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let sub: Subscription = match hub.attach(&session, options).await {
                        Ok(sub) => sub,
                        Err(e) => panic!("attach: {e}"),
                    };
                    let _ = tx.send(session.kind().to_owned()).await;
                    // Subscribed for as long as the session lives.
                    session.closed().await;
                    drop(sub);
                });
            }
        });
        within("the node's pub/sub link", hub.linked()).await;
        Node {
            url: format!("ws://{addr}/"),
            hub,
            addr,
            handle,
            attached,
            task,
        }
    }

    /// A client of `user` on this node.
    pub async fn client(&self, user: &str) -> Client {
        let config = ClientConfig::default()
            .token(format!("user:{user}"))
            .reconnect(false);
        Client::connect(&self.url, config).await.expect("connect")
    }

    /// Waits until this node attached a session, and returns its kind.
    pub async fn next_attach(&mut self) -> String {
        within("the node's attach", self.attached.recv())
            .await
            .expect("the node runs")
    }

    /// Opens `topic` on `client` (connected to this node) and waits until the node attached
    /// it: from then on every publish reaches it.
    pub async fn subscribe(&mut self, client: &mut Client, topic: &str) -> Session {
        let session = client.open(topic, Bytes::new()).await.expect("open");
        let attached = within("the node's attach", self.attached.recv())
            .await
            .expect("the node runs");
        assert_eq!(attached, topic);
        session
    }
}

/// The next event on a topic session.
pub async fn next_event(session: &mut Session) -> TopicEvent {
    loop {
        let message = within("a topic event", session.recv())
            .await
            .expect("the session is open");
        match decode(&message).expect("a well-formed topic event") {
            // Every subscription starts with its stream's position (spec/topics.md).
            TopicEvent::Position(_) => {}
            event => return event,
        }
    }
}

/// A message event's payload, whatever its offset (each node numbers its own stream).
pub fn payload_of(event: &TopicEvent) -> Option<&Bytes> {
    match event {
        TopicEvent::Message { payload, .. } => Some(payload),
        _ => None,
    }
}

/// The next published message, skipping presence events.
pub async fn next_message(session: &mut Session) -> Bytes {
    loop {
        match next_event(session).await {
            TopicEvent::Message { payload, .. } => return payload,
            TopicEvent::Gap(n) => panic!("unexpected gap of {n:?}"),
            _ => {}
        }
    }
}

/// A numbered message.
pub fn numbered(i: u64) -> Bytes {
    Bytes::from(i.to_be_bytes().to_vec())
}

/// The number in a numbered message.
pub fn number(m: &Bytes) -> u64 {
    u64::from_be_bytes(m[..].try_into().expect("8 bytes"))
}

/// `PUBSUB NUMSUB <channel>` for a topic: how many nodes are subscribed to it.
pub fn nodes_subscribed(redis: &mux_redis::testing::RedisServer, prefix: &str, topic: &str) -> u64 {
    let (_, n): (String, u64) = redis.query(
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{prefix}t:{topic}")),
    );
    n
}

/// A TCP forwarder on loopback in front of the nodes, standing in for a load balancer: it
/// forwards each connection to the current target, and [`Forwarder::switch`] cuts every
/// forwarded connection at once, as a node or a network path dying would.
pub struct Forwarder {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Forwarder {
    pub async fn start(target: SocketAddr) -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(Some(target)));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let (t, c) = (target.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                // Held until the connection is listed, so a switch cuts it too. No target:
                // the connection is refused (closed at once).
                let current = t.lock().unwrap();
                let Some(to) = *current else {
                    continue;
                };
                let forward = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                let mut list = c.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(forward);
                drop(list);
                drop(current);
            }
        });
        Forwarder {
            addr,
            target,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Cuts every forwarded connection; new ones go to `target` (none: refused).
    pub fn switch(&self, target: Option<SocketAddr>) {
        let mut current = self.target.lock().unwrap();
        *current = target;
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}
