//! Deterministic test harnesses: a client/server [`Pair`] on a virtual clock, and a
//! [`RawPeer`] that writes frames byte for byte to a real [`Connection`].
//!
//! Enabled by the `testing` feature; used by this crate's tests, the workspace suites, the
//! benchmarks and the fuzz targets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::frame::{decode_message, encode_message, Frame, Settings};
use crate::{
    CloseCode, Config, Connection, Event, Grant, Initiator, OpenRequest, SessionId, Side, Timestamp,
};

/// One endpoint inside a [`Pair`]: its connection, the messages in flight towards it, and
/// the events it produced that the test has not taken yet.
#[derive(Debug)]
pub struct Endpoint {
    pub conn: Connection,
    inbound: VecDeque<(Timestamp, Bytes)>,
    pub events: VecDeque<Event>,
}

impl Endpoint {
    fn new(side: Side, config: Config, now: Timestamp) -> Self {
        Endpoint {
            conn: Connection::new(side, config, now),
            inbound: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Takes the first event matching `pred`, leaving the others in order. Events the
    /// connection produced since the last poll (e.g. from a `recv` call) are included.
    pub fn take_event(&mut self, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        self.pull_events();
        let pos = self.events.iter().position(pred)?;
        self.events.remove(pos)
    }

    /// Moves the connection's pending events into `events`.
    pub fn pull_events(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Every `Incoming` event's ID, removing those events.
    pub fn take_incoming(&mut self) -> Vec<SessionId> {
        let mut ids = Vec::new();
        while let Some(Event::Incoming { id, .. }) =
            self.take_event(|e| matches!(e, Event::Incoming { .. }))
        {
            ids.push(id);
        }
        ids
    }

    /// The `SessionClosed` event for `id`, removed from `events`: (code, initiator).
    pub fn take_closed(&mut self, id: SessionId) -> Option<(CloseCode, Initiator)> {
        match self.take_event(|e| matches!(e, Event::SessionClosed { id: i, .. } if *i == id))? {
            Event::SessionClosed {
                code, initiator, ..
            } => Some((code, initiator)),
            _ => None,
        }
    }

    /// The `ConnectionClosed` event, removed from `events`: (code, initiator).
    pub fn take_conn_closed(&mut self) -> Option<(CloseCode, Initiator)> {
        match self.take_event(|e| matches!(e, Event::ConnectionClosed { .. }))? {
            Event::ConnectionClosed {
                code, initiator, ..
            } => Some((code, initiator)),
            _ => None,
        }
    }

    /// Whether an event matching `pred` is waiting (without taking it).
    pub fn has_event(&mut self, pred: impl Fn(&Event) -> bool) -> bool {
        self.pull_events();
        self.events.iter().any(pred)
    }

    /// Every message readable on `id` now.
    pub fn recv_all(&mut self, now: Timestamp, id: SessionId) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(m) = self.conn.recv(now, id) {
            out.push(m);
        }
        out
    }
}

/// A client and a server connected by an in-memory, ordered, lossless transport with a
/// configurable one-way latency, on a virtual clock.
#[derive(Debug)]
pub struct Pair {
    pub client: Endpoint,
    pub server: Endpoint,
    pub now: Timestamp,
    pub latency: Duration,
    buf: BytesMut,
    /// WebSocket messages delivered so far, both directions.
    pub messages_delivered: u64,
}

impl Pair {
    /// A pair with these configurations, not yet driven.
    pub fn new(client: Config, server: Config) -> Pair {
        let now = Timestamp::from_millis(1);
        Pair {
            client: Endpoint::new(Side::Client, client, now),
            server: Endpoint::new(Side::Server, server, now),
            now,
            latency: Duration::ZERO,
            buf: BytesMut::new(),
            messages_delivered: 0,
        }
    }

    /// A pair with default configurations, driven until both sides are connected.
    pub fn connected() -> Pair {
        Pair::connected_with(Config::default(), Config::default())
    }

    /// A pair with these configurations, driven until both sides are connected.
    pub fn connected_with(client: Config, server: Config) -> Pair {
        let mut pair = Pair::new(client, server);
        pair.drive();
        assert!(pair
            .client
            .take_event(|e| matches!(e, Event::Connected { .. }))
            .is_some());
        assert!(pair
            .server
            .take_event(|e| matches!(e, Event::Connected { .. }))
            .is_some());
        pair
    }

    fn transmit(
        from: &mut Endpoint,
        to: &mut Endpoint,
        buf: &mut BytesMut,
        at: Timestamp,
        now: Timestamp,
    ) -> bool {
        let mut any = false;
        while from.conn.poll_transmit(now, buf) {
            to.inbound.push_back((at, buf.split().freeze()));
            any = true;
        }
        while let Some(e) = from.conn.poll_event() {
            from.events.push_back(e);
        }
        any
    }

    fn deliver(to: &mut Endpoint, now: Timestamp) -> u64 {
        let mut n = 0;
        while let Some((at, _)) = to.inbound.front() {
            if *at > now {
                break;
            }
            let (_, msg) = to.inbound.pop_front().unwrap();
            to.conn.handle_message(now, msg);
            n += 1;
        }
        while let Some(e) = to.conn.poll_event() {
            to.events.push_back(e);
        }
        n
    }

    /// One round: both sides transmit, due messages are delivered. If nothing was due but
    /// messages are in flight, the clock advances to the next arrival. Returns whether
    /// anything happened. Timers fire only through [`Pair::advance`].
    pub fn step(&mut self) -> bool {
        let at = self.now + self.latency;
        let mut any = Self::transmit(
            &mut self.client,
            &mut self.server,
            &mut self.buf,
            at,
            self.now,
        );
        any |= Self::transmit(
            &mut self.server,
            &mut self.client,
            &mut self.buf,
            at,
            self.now,
        );
        let delivered =
            Self::deliver(&mut self.server, self.now) + Self::deliver(&mut self.client, self.now);
        self.messages_delivered += delivered;
        if delivered > 0 {
            return true;
        }
        let next_arrival = [self.client.inbound.front(), self.server.inbound.front()]
            .into_iter()
            .flatten()
            .map(|(t, _)| *t)
            .min();
        if let Some(t) = next_arrival {
            self.now = self.now.max(t);
            return true;
        }
        any
    }

    /// Steps until nothing happens; panics if that takes more than 100,000 steps (livelock).
    pub fn drive(&mut self) {
        assert!(
            self.drive_bounded(100_000),
            "pair did not go idle: livelock?"
        );
    }

    /// Steps until idle or `max_steps`; returns whether it went idle.
    pub fn drive_bounded(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            if !self.step() {
                return true;
            }
        }
        false
    }

    /// Advances the clock by `d`, firing every timer due on the way and driving after each.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            self.drive();
            let next = [
                self.client.conn.poll_timeout(),
                self.server.conn.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .filter(|t| *t <= target)
            .min();
            let Some(t) = next else {
                break;
            };
            self.now = self.now.max(t);
            self.client.conn.handle_timeout(self.now);
            self.server.conn.handle_timeout(self.now);
        }
        self.now = target;
        self.client.conn.handle_timeout(self.now);
        self.server.conn.handle_timeout(self.now);
        self.drive();
    }

    /// Opens a session from the client, accepts it on the server with `grant`, and drives.
    pub fn open_accepted(&mut self, kind: &str, grant: Grant) -> SessionId {
        let id = self
            .client
            .conn
            .open(self.now, kind, Bytes::new(), OpenRequest::default())
            .expect("open");
        self.drive();
        let incoming = self.server.take_incoming();
        assert!(
            incoming.contains(&id),
            "server did not see OPEN {id}: {incoming:?}"
        );
        self.server
            .conn
            .accept(self.now, id, grant)
            .expect("accept");
        self.drive();
        assert!(self
            .client
            .take_event(|e| matches!(e, Event::Opened { id: i, .. } if *i == id))
            .is_some());
        id
    }
}

/// A real [`Connection`] facing a scripted peer that writes raw frames: the h2-style
/// harness for hostile input.
#[derive(Debug)]
pub struct RawPeer {
    pub conn: Connection,
    pub now: Timestamp,
    buf: BytesMut,
    /// Everything the connection sent, decoded, not yet taken.
    pub received: VecDeque<Frame>,
    pub events: VecDeque<Event>,
}

impl RawPeer {
    /// A connection on `side` facing a raw peer that has already exchanged SETTINGS. The
    /// raw peer meters nothing, so it advertises the largest CONTROL_BUDGET: the connection's
    /// pacing of its own control frames stays out of the way (tests of pacing use
    /// [`RawPeer::with_settings`]).
    pub fn new(side: Side, config: Config) -> RawPeer {
        let settings = Settings::default().with(crate::frame::Setting::ControlBudget, u32::MAX);
        RawPeer::with_settings(side, config, settings)
    }

    /// A connection on `side` facing a raw peer whose SETTINGS frame is `settings`.
    pub fn with_settings(side: Side, config: Config, settings: Settings) -> RawPeer {
        let now = Timestamp::from_millis(1);
        let mut peer = RawPeer {
            conn: Connection::new(side, config, now),
            now,
            buf: BytesMut::new(),
            received: VecDeque::new(),
            events: VecDeque::new(),
        };
        peer.send([Frame::Settings(settings)]);
        let settings = peer.received.pop_front();
        assert!(matches!(settings, Some(Frame::Settings(_))), "{settings:?}");
        peer.events
            .retain(|e| !matches!(e, Event::Connected { .. }));
        peer
    }

    /// A server connection facing a raw client.
    pub fn server(config: Config) -> RawPeer {
        RawPeer::new(Side::Server, config)
    }

    /// Sends `frames` coalesced in one WebSocket message, then collects the output.
    pub fn send(&mut self, frames: impl IntoIterator<Item = Frame>) {
        let frames: Vec<Frame> = frames.into_iter().collect();
        let message = encode_message(frames.iter()).freeze();
        self.send_bytes(message);
    }

    /// Sends raw bytes as one WebSocket message, then collects the output.
    pub fn send_bytes(&mut self, message: Bytes) {
        self.conn.handle_message(self.now, message);
        self.collect();
    }

    /// Feeds `frames` as one WebSocket message without polling the output (so a test can
    /// look at the next transmits one by one with [`RawPeer::poll_one`]).
    pub fn deliver(&mut self, frames: impl IntoIterator<Item = Frame>) {
        let frames: Vec<Frame> = frames.into_iter().collect();
        let message = encode_message(frames.iter()).freeze();
        self.conn.handle_message(self.now, message);
    }

    /// The next WebSocket message the connection sends, decoded; events are collected too.
    pub fn poll_one(&mut self) -> Option<Vec<Frame>> {
        let frames = if self.conn.poll_transmit(self.now, &mut self.buf) {
            let msg = self.buf.split().freeze();
            Some(decode_message(msg).expect("the connection sent a malformed message"))
        } else {
            None
        };
        while let Some(e) = self.conn.poll_event() {
            self.events.push_back(e);
        }
        frames
    }

    /// The peer opens session `id` and the connection's application accepts it with `grant`.
    /// The ACCEPT (and anything else sent meanwhile) is left out of `received`.
    pub fn open_accepted(&mut self, id: u32, grant: Grant) -> SessionId {
        let sid = SessionId(id);
        self.send([frames::open(id, "test")]);
        assert!(
            self.take_event(|e| matches!(e, Event::Incoming { id: i, .. } if *i == sid))
                .is_some(),
            "no Incoming for {id}: {:?}",
            self.events
        );
        self.conn.accept(self.now, sid, grant).expect("accept");
        self.collect();
        let accept = self
            .received
            .iter()
            .position(|f| matches!(f, Frame::Accept(a) if a.session_id == sid));
        assert!(accept.is_some(), "no ACCEPT for {id}: {:?}", self.received);
        self.received.clear();
        sid
    }

    /// Accepts every session the peer has opened so far with `grant`, removing their
    /// `Incoming` events, and collects what the connection sends (the ACCEPTs stay in
    /// `received`, unlike [`RawPeer::open_accepted`]). Returns the accepted IDs in order.
    pub fn accept_all_incoming(&mut self, grant: Grant) -> Vec<SessionId> {
        let mut ids = Vec::new();
        while let Some(Event::Incoming { id, .. }) =
            self.take_event(|e| matches!(e, Event::Incoming { .. }))
        {
            self.conn.accept(self.now, id, grant).expect("accept");
            ids.push(id);
        }
        self.collect();
        ids
    }

    /// Takes the first event matching `pred`, leaving the others in order. Events the
    /// connection produced since the last poll (e.g. from a `recv` call) are included.
    pub fn take_event(&mut self, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        self.pull_events();
        let pos = self.events.iter().position(pred)?;
        self.events.remove(pos)
    }

    /// Moves the connection's pending events into `events`.
    pub fn pull_events(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            self.events.push_back(e);
        }
    }

    /// The `SessionClosed` event for `id`, removed from `events`: (code, initiator).
    pub fn take_closed(&mut self, id: SessionId) -> Option<(CloseCode, Initiator)> {
        match self.take_event(|e| matches!(e, Event::SessionClosed { id: i, .. } if *i == id))? {
            Event::SessionClosed {
                code, initiator, ..
            } => Some((code, initiator)),
            _ => None,
        }
    }

    /// The CLOSE the connection sent for `id`, if any, removed from `received`.
    pub fn take_close(&mut self, id: SessionId) -> Option<crate::frame::SessionClose> {
        let pos = self
            .received
            .iter()
            .position(|f| matches!(f, Frame::Close(r) if r.session_id == id))?;
        match self.received.remove(pos) {
            Some(Frame::Close(r)) => Some(r),
            _ => None,
        }
    }

    /// Every CREDIT the connection sent for `id`, summed as (messages, bytes), removed.
    pub fn take_credit(&mut self, id: SessionId) -> (u64, u64) {
        let mut total = (0u64, 0u64);
        self.received.retain(|f| match f {
            Frame::Credit(c) if c.session_id == id => {
                total.0 += u64::from(c.messages);
                total.1 += u64::from(c.bytes);
                false
            }
            _ => true,
        });
        total
    }

    /// Every DATA frame the connection sent for `id`, removed from `received`.
    pub fn take_data(&mut self, id: SessionId) -> Vec<crate::frame::Data> {
        let mut out = Vec::new();
        self.received.retain(|f| match f {
            Frame::Data(d) if d.session_id == id => {
                out.push(d.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// Polls the connection's transmits and events into `received` and `events`.
    pub fn collect(&mut self) {
        while self.conn.poll_transmit(self.now, &mut self.buf) {
            let msg = self.buf.split().freeze();
            self.received
                .extend(decode_message(msg).expect("the connection sent a malformed message"));
        }
        while let Some(e) = self.conn.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Advances the clock, fires timers and collects.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.conn.handle_timeout(self.now);
        self.collect();
    }

    /// Takes every received frame.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        self.received.drain(..).collect()
    }

    /// The RESET the connection sent for `id`, if any, removed from `received`.
    pub fn take_reset(&mut self, id: SessionId) -> Option<crate::frame::SessionClose> {
        let pos = self
            .received
            .iter()
            .position(|f| matches!(f, Frame::Reset(r) if r.session_id == id))?;
        match self.received.remove(pos) {
            Some(Frame::Reset(r)) => Some(r),
            _ => None,
        }
    }

    /// The CONN_CLOSE code the connection sent, if any.
    pub fn conn_close_code(&self) -> Option<CloseCode> {
        self.received.iter().find_map(|f| match f {
            Frame::ConnClose(c) => Some(c.code),
            _ => None,
        })
    }
}

/// Frame constructors for scripted peers: `frames::data(1, b"x", true)`.
pub mod frames {
    use bytes::Bytes;

    use crate::frame::{
        Accept, ConnClose, Credential, Credit, Data, Frame, GoAway, Open, OpenRequest, Permissions,
        RateLimits, SessionClose, Text,
    };
    use crate::{CloseCode, SessionId};

    pub fn open(id: u32, kind: &'static str) -> Frame {
        Frame::Open(Open {
            session_id: SessionId(id),
            request: OpenRequest::default(),
            kind: Text::from_static(kind),
            auth: Credential::EMPTY,
        })
    }

    pub fn open_with_auth(id: u32, kind: &'static str, auth: &'static [u8]) -> Frame {
        Frame::Open(Open {
            session_id: SessionId(id),
            request: OpenRequest::default(),
            kind: Text::from_static(kind),
            auth: Credential::from_static(auth),
        })
    }

    pub fn data(id: u32, payload: &[u8], end: bool) -> Frame {
        Frame::Data(Data {
            session_id: SessionId(id),
            end,
            fin: false,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    /// A one-frame message that also half-closes (END|FIN).
    pub fn data_fin(id: u32, payload: &[u8]) -> Frame {
        Frame::Data(Data {
            session_id: SessionId(id),
            end: true,
            fin: true,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    pub fn open_with_request(id: u32, kind: &'static str, request: OpenRequest) -> Frame {
        Frame::Open(Open {
            session_id: SessionId(id),
            request,
            kind: Text::from_static(kind),
            auth: Credential::EMPTY,
        })
    }

    pub fn accept(id: u32, permissions: Permissions, max_message_size: u32) -> Frame {
        Frame::Accept(Accept {
            session_id: SessionId(id),
            permissions,
            max_message_size,
            rate: RateLimits::default(),
        })
    }

    pub fn pong(payload: u64) -> Frame {
        Frame::Pong(payload)
    }

    pub fn goaway(last_session_id: u32, code: CloseCode) -> Frame {
        Frame::GoAway(GoAway {
            last_session_id: SessionId(last_session_id),
            code,
            reason: Text::EMPTY,
        })
    }

    pub fn conn_close(code: CloseCode) -> Frame {
        Frame::ConnClose(ConnClose::new(code, ""))
    }

    pub fn fin(id: u32) -> Frame {
        Frame::Data(Data {
            session_id: SessionId(id),
            end: false,
            fin: true,
            payload: Bytes::new(),
        })
    }

    pub fn credit(id: u32, messages: u32, bytes: u32) -> Frame {
        Frame::Credit(Credit {
            session_id: SessionId(id),
            messages,
            bytes,
        })
    }

    pub fn reset(id: u32, code: CloseCode) -> Frame {
        Frame::Reset(SessionClose::new(SessionId(id), code, ""))
    }

    pub fn close(id: u32, code: CloseCode) -> Frame {
        Frame::Close(SessionClose::new(SessionId(id), code, ""))
    }

    pub fn ping(payload: u64) -> Frame {
        Frame::Ping(payload)
    }
}
