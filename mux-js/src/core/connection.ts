// The client side of one mux connection, sans-IO (spec/frames.md, spec/sessions.md).
//
// Inputs (B): handleMessage(bytes, now), handleText(now), handleTransportClosed(now),
// handleTimeout(now). Commands (C): open, send, finish, close, consumed, closeConnection,
// and reset on Connection. Outputs (D): pollTransmit, pollEvent, pollTimeout.
//
// Contract: after every B or C call, drain pollTransmit() and pollEvent() until they return
// null, then sleep until pollTimeout(). There is no timer, socket or clock in here.
import { MIN_FRAGMENT, U32, encodeFrame, frames, isValidWireCode, settingsWithDefaults, type Frame, type Settings } from "../codec/index.js";
import { Bucket, pacer } from "./bucket.js";
import { Session } from "./session.js";
import { DEFAULT_CONFIG, MuxError, type CloseSource, type CoreConfig, type CoreEvent, type Grant, type MuxErrorKind } from "./types.js";
import { concat, utf8 } from "../codec/utf8.js";

/** A control frame to send, or a session whose unannounced credit a CREDIT takes once it can go. */
type Queued = Frame | Session;

/** spec/sessions.md#transport-message-size: L for a receiver's MAX_FRAME_SIZE. */
export const transportLimit = (maxFrameSize: number): number => Math.max(65536, maxFrameSize + 10);

/** A local refusal: throws MuxError. */
function refuse(kind: MuxErrorKind, message?: string): never {
  throw new MuxError(kind, message);
}

/**
 * The sans-IO connection the driver runs. The driver bounds nothing in here (each send is a
 * promise the caller awaits); `Connection`, the core of `mux-js/core`, adds the send buffer's
 * bounds, `reset` and the inspection getters.
 */
export class CoreConnection {
  readonly config: CoreConfig;
  readonly own: Settings;
  protected peer: Settings | null = null;
  readonly #startedAt: number;
  #now: number;
  protected readonly sessions = new Map<number, Session>();
  /** Closed sessions' IDs: when the tombstone expires, and the late DATA frames it lets in free. */
  readonly #tombstones = new Map<number, [expires: number, allowance: number]>();
  #lastLocalId = 0;
  #lastPeerId = 0;
  #settingsSent = false;
  #control: Queued[] = [];
  #pendingPong: bigint | null = null;
  #pingDue = false;
  /** When the outstanding PING went out; null while none is. */
  #pingSentAt: number | null = null;
  #pingCounter = 0n;
  #lastReceived: number;
  #lastSent: number;
  /** The lowest last_session_id of the GOAWAYs received, once one has. */
  #goawayLast: number | null = null;
  #recvBudget: Bucket;
  #sendBudget: Bucket | null = null;
  readonly #events: CoreEvent[] = [];
  #ring: Session[] = [];
  #finalFrame: Frame | null = null;
  /** Nothing more goes out: the final frame was written, or the peer or the transport ended it. */
  #finished = false;
  /** The code the connection closed with, once it has; the driver closes the WebSocket with it. */
  closeCode: number | null = null;

  constructor(now: number, config: Partial<CoreConfig> = {}) {
    this.config = { ...DEFAULT_CONFIG, ...config, settings: { ...DEFAULT_CONFIG.settings, ...config.settings } };
    this.own = settingsWithDefaults(this.config.settings);
    this.#now = this.#startedAt = this.#lastReceived = this.#lastSent = now;
    this.#recvBudget = new Bucket(this.own.control_budget, this.own.control_budget, now);
  }

  get isClosed(): boolean { return this.closeCode !== null; }

  // ---- B. inputs --------------------------------------------------------------------------
  /** One WebSocket binary message from the server. */
  handleMessage(message: Uint8Array, now: number): void {
    if (this.#tick(now)) return;
    this.#lastReceived = now;
    this.#pingSentAt = null; // spec/sessions.md#timers: any message counts as liveness
    const maxFrame = this.own.max_frame_size;
    if (message.length > transportLimit(maxFrame)) return this.#fail(1009, "message over L");
    const error = frames(message, (f) => {
      this.#handleFrame(f);
      return this.isClosed;
    }, (h) => {
      // spec/sessions.md#data-checks D0: the frame size is checked from the header, before the
      // payload is waited for and before the session is looked up.
      if (!h.type && h.len > maxFrame) return this.#fail(1009, "frame over MAX_FRAME_SIZE"), true;
    });
    if (error) this.#fail(error.close_code, error.kind);
  }

  /** spec/frames.md#transport: a text message is a connection error 1003. */
  handleText(now: number): void {
    if (!this.#tick(now)) this.#fail(1003, "text message");
  }

  /** The transport ended; without a CONN_CLOSE every session ends with 1006. */
  handleTransportClosed(now: number, code = 1006, reason = ""): void {
    if (!this.#tick(now)) this.#fail(code, reason, "transport");
  }

  handleTimeout(now: number): void {
    if (this.#tick(now)) return;
    if (!this.peer) {
      if (now >= this.#startedAt + this.config.settingsDeadlineMs) this.#fail(4006, "no SETTINGS", "timeout");
      return;
    }
    if (now >= this.#keepaliveAt()) {
      if (this.#pingSentAt !== null) return this.#fail(4006, "keepalive timeout", "timeout");
      this.#pingDue = true;
    }
    for (const s of this.sessions.values()) {
      if (!s.grant && now >= s.openDeadline) this.resetSession(s, 4006, "open deadline", "timeout", false);
    }
    for (const [id, [expires]] of this.#tombstones) if (now >= expires) this.#tombstones.delete(id);
  }

  // ---- C. commands ------------------------------------------------------------------------
  /** Opens a session of `kind`; returns its ID. Throws MuxError on local refusal. */
  open(kind: string, opts: { auth?: Uint8Array; maxMessageSize?: number; messagesPerSec?: number; bytesPerSec?: number } = {}, now = this.#now): number {
    if (this.#tick(now)) refuse("connection_closed");
    const peer = this.peer ?? refuse("not_ready");
    const kindLen = utf8.encode(kind).length;
    const auth = opts.auth ?? new Uint8Array(0);
    const id = this.#lastLocalId ? this.#lastLocalId + 2 : 1;
    if (this.#goawayLast !== null) refuse("going_away");
    if (this.sessions.size >= peer.max_sessions) refuse("too_many_sessions");
    if (kindLen > 255) refuse("kind_too_long");
    if (auth.length > 65535 || kindLen + auth.length > Math.min(peer.max_open_metadata, transportLimit(peer.max_frame_size) - 25)) {
      refuse("metadata_too_large");
    }
    if (id > U32) refuse("ids_exhausted");
    this.sessions.set((this.#lastLocalId = id), new Session(id, peer, this.own, now + this.config.openDeadlineMs));
    this.#control.push({
      type: "OPEN", session_id: id, kind, auth,
      request: { max_message_size: opts.maxMessageSize ?? 0, messages_per_sec: opts.messagesPerSec ?? 0, bytes_per_sec: opts.bytesPerSec ?? 0 },
    });
    return id;
  }

  /** Queues one message. Throws MuxError on local refusal. */
  send(id: number, data: Uint8Array, opts: { fin?: boolean } = {}): void {
    const s = this.live(id);
    if (s.finQueued) refuse("finished");
    if (!s.canSendData || s.closeAfter) refuse("not_permitted");
    if (data.length > s.sendMax) refuse("too_large", `${data.length} > ${s.sendMax}`);
    this.admit(s, data);
    s.queue.push({ data, off: 0, fin: !!opts.fin });
    if (opts.fin) s.finQueued = true;
  }

  /** A message passed every check of the protocol: the send buffer's own bounds, if any. */
  protected admit(_s: Session, _data: Uint8Array): void {}

  /** Half-closes: FIN after every message already queued. */
  finish(id: number): void {
    const s = this.live(id);
    if (s.finQueued) return;
    if (!s.canSendData) refuse("not_permitted");
    s.finQueued = true;
    const last = s.queue[s.queue.length - 1];
    if (last) last.fin = true;
  }

  /** Graceful close: queued messages go first, then CLOSE (spec/sessions.md#closing). */
  close(id: number, code = 1000, reason = ""): void {
    const s = this.live(id, code, reason);
    s.closeAfter = { code, reason };
    this.#maybeSendClose(s);
  }

  /** The application has read a message of `bytes` bytes: its credit returns (spec/sessions.md#credit). */
  consumed(id: number, bytes: number): void {
    const s = this.sessions.get(id);
    if (!s?.heldMsgs) return;
    s.heldMsgs--;
    s.unannouncedMsgs++;
    s.unannouncedBytes += bytes;
    this.#maybeAnnounce(s);
    this.#maybeFinishSession(s);
  }

  /** Closes the connection: CONN_CLOSE with `code`, every session ends with it. */
  closeConnection(code = 1000, reason = ""): void {
    checkCode(code, reason);
    if (!this.isClosed) this.#fail(code, reason);
  }

  // ---- D. outputs -------------------------------------------------------------------------
  pollEvent(): CoreEvent | null { return this.#events.shift() ?? null; }

  /** The next deadline at which handleTimeout must be called, or null for none. */
  pollTimeout(): number | null {
    if (this.isClosed) return null;
    if (!this.peer) return this.#startedAt + this.config.settingsDeadlineMs;
    const now = this.#now;
    let t = this.#keepaliveAt();
    for (const s of this.sessions.values()) {
      if (!s.grant) t = Math.min(t, s.openDeadline);
      const head = s.queue[0];
      const p = s.pacer;
      if (p && head && s.sendMsgs > 0 && s.sendBytes > 0) {
        const len = Math.min(head.data.length - head.off, MIN_FRAGMENT, p[1].burst);
        t = Math.min(t, Math.max(head.off ? now : p[0].readyAt(1, now), p[1].readyAt(len, now)));
      }
    }
    if (this.#control.length) t = Math.min(t, this.#sendBudget!.readyAt(1, now));
    for (const [expires] of this.#tombstones.values()) t = Math.min(t, expires);
    return t;
  }

  /** The next WebSocket binary message to send, frames coalesced up to L; null when none. */
  pollTransmit(now = this.#now): Uint8Array | null {
    this.#tick(now);
    if (this.#finished) return null;
    const out: ArrayLike<number>[] = [];
    let size = 0;
    const put = (f: Frame): void => { for (const b of encodeFrame(f)) size += out.push(b) && b.length; };
    if (!this.#settingsSent) {
      this.#settingsSent = true;
      put({ type: "SETTINGS", session_id: 0, settings: { ...this.config.settings } });
    }
    if (this.#finalFrame) {
      put(this.#finalFrame);
      this.#finished = true;
    } else if (!this.isClosed && this.peer) {
      const limit = transportLimit(this.peer.max_frame_size);
      const budget = this.#sendBudget!;
      if (this.#pendingPong !== null && budget.take(1, now)) {
        put({ type: "PONG", session_id: 0, payload: this.#pendingPong });
        this.#pendingPong = null;
      }
      if (this.#pingDue && this.#pingSentAt === null && budget.take(1, now)) {
        put({ type: "PING", session_id: 0, payload: ++this.#pingCounter });
        this.#pingDue = false;
        this.#pingSentAt = now;
      }
      for (let q; (q = this.#control[0]);) {
        // A CREDIT (18 bytes) takes the session's unannounced credit only once it can go.
        if (size + (q instanceof Session ? 18 : 10 + encodeFrame(q)[1].length) > limit || budget.available(now) < 1) break;
        this.#control.shift();
        const f = q instanceof Session ? this.#takeCredit(q) : q;
        if (f) { budget.take(1, now); put(f); }
      }
      // spec/sessions.md#scheduling: no DATA of a session whose OPEN is still waiting. Other
      // control frames left waiting (a CREDIT paced by the budget) hold no DATA back.
      const held = new Set(this.#control.map((q) => !(q instanceof Session) && q.type === "OPEN" && q.session_id));
      this.#writeData(out, limit - size, now, held);
    }
    if (!out.length) return null;
    this.#lastSent = this.#now;
    return concat(out);
  }

  // ---- internals --------------------------------------------------------------------------
  /** Moves the clock on; true once the connection is closed. */
  #tick(now: number): boolean {
    if (now > this.#now) this.#now = now;
    return this.isClosed;
  }

  /** The outstanding PING's deadline, else when the next PING is due. */
  #keepaliveAt(): number {
    if (this.#pingSentAt !== null) return this.#pingSentAt + this.config.keepaliveTimeoutMs;
    const at = this.#lastReceived + this.config.keepaliveIntervalMs;
    // spec/sessions.md#timers: make sure the peer hears from us once per its IDLE_TIMEOUT_MS.
    const idle = this.peer!.idle_timeout_ms;
    return idle ? Math.min(at, this.#lastSent + idle / 2) : at;
  }

  /** The live session `id`; with a code, the code and reason are checked too. */
  protected live(id: number, code?: number, reason = ""): Session {
    if (this.isClosed) refuse("connection_closed");
    const s = this.sessions.get(id) ?? refuse("unknown_session");
    if (code !== undefined) checkCode(code, reason);
    return s;
  }

  /** Charges one unit of the control budget; exhaustion is conn 1008 (spec/sessions.md#control-budget). */
  #charge(): boolean {
    const ok = this.#recvBudget.take(1, this.#now);
    if (!ok) this.#fail(1008, "control budget exhausted");
    return ok;
  }

  /**
   * The connection ends and every session with it. Ended here (a connection error or close,
   * a deadline): CONN_CLOSE with `code` is the last frame sent; ended by the peer's CONN_CLOSE
   * or the transport: nothing more is sent.
   */
  #fail(code: number, reason: string, source: CloseSource = "local", retryAfterMs = 0): void {
    if (source === "peer" || source === "transport") this.#finished = true;
    else this.#finalFrame = { type: "CONN_CLOSE", session_id: 0, code, retry_after_ms: 0, reason };
    this.closeCode = code;
    for (const s of this.sessions.values()) this.#closeSession(s, code, reason, retryAfterMs, source);
    this.#events.push({ type: "connection_closed", code, reason, retryAfterMs, source });
  }

  #handleFrame(f: Frame): void {
    if (!this.peer) {
      if (f.type !== "SETTINGS") return this.#fail(1002, "frame before SETTINGS");
      const b = (this.peer = settingsWithDefaults(f.settings)).control_budget;
      // spec/sessions.md#control-budget: pace at the peer's rate, within half its burst.
      this.#sendBudget = new Bucket(b, Math.floor(b / 2), this.#now);
      this.#events.push({ type: "ready" });
      return;
    }
    if (f.type === "SETTINGS") return this.#fail(1002, "second SETTINGS");
    if (f.type !== "DATA" && !this.#charge()) return;
    switch (f.type) {
      case "PING": this.#pendingPong = f.payload; return; // a newer PING replaces the pending PONG
      case "PONG": return; // liveness was counted on receipt
      // spec/frames.md#conn-close: the receiver sends nothing more
      case "CONN_CLOSE": return this.#fail(f.code, f.reason, "peer", f.retry_after_ms);
      case "GOAWAY": {
        const last = f.last_session_id;
        // spec/frames.md#goaway: a later GOAWAY may lower last_session_id, never raise it.
        if (last > (this.#goawayLast ?? U32)) return this.#fail(1002, "GOAWAY raised last_session_id");
        this.#goawayLast = last;
        this.#events.push({ type: "goaway", lastSessionId: last, code: f.code, reason: f.reason });
        for (const s of this.sessions.values()) {
          if (s.id > last) this.#closeSession(s, 4009, "not processed before GOAWAY", 0, "peer");
        }
        return;
      }
      case "OPEN": {
        const id = f.session_id;
        // spec/frames.md#session-ids: servers open even IDs, strictly increasing.
        if (id % 2 || id <= this.#lastPeerId) return this.#fail(1002, "bad OPEN id");
        this.#lastPeerId = id;
        // This client advertises MAX_SESSIONS 0: every server-opened session is refused (step 7).
        if (!this.#charge()) return;
        this.#queueClose("RESET", id, 4003, "");
        return this.#addTombstone(id, this.own.initial_credit_messages, this.own.initial_credit_bytes);
      }
    }
    const id = f.session_id;
    const s = this.sessions.get(id);
    if (!s) {
      if (id > (id % 2 ? this.#lastLocalId : this.#lastPeerId)) return this.#fail(4005, "unknown session");
      // spec/sessions.md#late-frames: discarded; late DATA is free within the tombstone's allowance.
      if (f.type !== "DATA") return;
      const t = this.#tombstones.get(id);
      if (t && t[1] > 0) t[1]--;
      else this.#charge();
      return;
    }
    switch (f.type) {
      case "ACCEPT": return s.grant ? this.resetSession(s, 1002, "second ACCEPT") : this.#onAccept(s, f);
      case "CREDIT":
        if (s.sendMsgs + f.messages > U32 || s.sendBytes + f.bytes > U32) return this.resetSession(s, 4004, "credit overflow");
        s.sendMsgs += f.messages;
        s.sendBytes += f.bytes;
        return;
      case "CLOSE":
        if (!s.drainCode) {
          // The receiver of CLOSE stops sending, drops a partial message, delivers what it holds.
          s.queue = [];
          s.partial = [];
          s.partialLen = 0;
          if (!s.heldMsgs || s.closeAfter) return this.#closeSession(s, f.code, f.reason, f.retry_after_ms, "peer");
        }
        s.drainCode = { code: f.code, reason: f.reason, retryAfterMs: f.retry_after_ms };
        return;
      case "RESET": return this.#closeSession(s, f.code, f.reason, f.retry_after_ms, "peer");
      case "DATA": return this.#onData(s, f);
    }
  }

  #onAccept(s: Session, f: Extract<Frame, { type: "ACCEPT" }>): void {
    const { rate: r, permissions: p } = f;
    const grant: Grant = {
      send: (p & 1) > 0, receive: p > 1, maxMessageSize: (s.sendMax = f.max_message_size),
      messagesPerSec: r.messages_per_sec, bytesPerSec: r.bytes_per_sec, burstMessages: r.burst_messages, burstBytes: r.burst_bytes,
    };
    s.grant = grant;
    if (grant.messagesPerSec || grant.bytesPerSec) s.pacer = pacer(grant, this.#now);
    this.#events.push({ type: "opened", id: s.id, grant });
    // spec/sessions.md#the-openers-side: nothing unpermitted, nothing over the granted size,
    // messages queued before the ACCEPT included.
    if (s.queue.length && !grant.send) return this.resetSession(s, 1008, "queued data without SEND", "local", false);
    if (s.queue.some((q) => !q.off && q.data.length > grant.maxMessageSize)) {
      this.resetSession(s, 1009, "queued message over the granted size", "local", false);
    }
  }

  /** spec/sessions.md#data-checks D1–D7 for a live session. */
  #onData(s: Session, f: Extract<Frame, { type: "DATA" }>): void {
    if (s.closeAfter || s.drainCode) return; // D1: discarded
    if (!s.grant) return this.resetSession(s, 1002, "DATA before ACCEPT"); // D2
    if (!s.grant.receive) return this.resetSession(s, 1008, "DATA without RECEIVE"); // D3
    if (s.finReceived) return this.resetSession(s, 1002, "DATA after FIN"); // D4
    const len = f.payload.length;
    const inMessage = s.partialLen > 0;
    if (!f.end && f.fin && inMessage) return this.resetSession(s, 1002, "FIN inside a message"); // D5
    const starts = !inMessage && (f.end || len > 0);
    // Size before credit (spec/CHANGES.md entry 3): a message over the maximum (ours, within
    // the window) is 1009 even when it is also beyond credit.
    const max = Math.min(this.own.max_message_size, this.own.initial_credit_bytes);
    if (s.partialLen + len > max) return this.resetSession(s, 1009, "message over the session maximum"); // D6
    if ((starts && s.peerMsgs < 1) || len > s.peerBytes) return this.resetSession(s, 4004, "DATA beyond credit"); // D7
    if (starts) s.peerMsgs--;
    s.peerBytes -= len;
    // Copied, so a held message never pins the whole transport message it came in.
    if (len) { s.partial.push(f.payload.slice()); s.partialLen += len; }
    if (f.end) {
      const data = concat(s.partial);
      s.partial = [];
      s.partialLen = 0;
      s.heldMsgs++;
      this.#events.push({ type: "message", id: s.id, data });
    } else if (len) this.#maybeAnnounce(s);
    if (f.fin) {
      s.finReceived = true;
      this.#events.push({ type: "fin", id: s.id });
      this.#maybeFinishSession(s);
    }
  }

  #maybeAnnounce(s: Session): void {
    if (!this.#control.includes(s) && s.shouldAnnounce()) this.#control.push(s);
  }

  #takeCredit(s: Session): Extract<Frame, { type: "CREDIT" }> | null {
    if (!this.sessions.has(s.id) || !s.hasCreditToAnnounce) return null;
    const messages = s.unannouncedMsgs;
    const bytes = s.unannouncedBytes;
    s.peerMsgs += messages;
    s.peerBytes += bytes;
    s.unannouncedMsgs = s.unannouncedBytes = 0;
    return { type: "CREDIT", session_id: s.id, messages, bytes };
  }

  #queueClose(type: "CLOSE" | "RESET", id: number, code: number, reason: string): void {
    this.#control.push({ type, session_id: id, code, retry_after_ms: 0, reason });
  }

  /** A session error (or local abort): RESET with `code`; errors we detect are charged. */
  protected resetSession(s: Session, code: number, reason: string, source: CloseSource = "local", charged = true): void {
    this.#queueClose("RESET", s.id, code, reason);
    this.#closeSession(s, code, reason, 0, source);
    if (charged) this.#charge();
  }

  #closeSession(s: Session, code: number, reason: string, retryAfterMs: number, source: CloseSource): void {
    if (!this.sessions.delete(s.id)) return;
    s.queue = [];
    this.#ring = this.#ring.filter((x) => x !== s);
    this.#addTombstone(s.id, s.peerMsgs, s.peerBytes);
    this.#events.push({ type: "closed", id: s.id, code, reason, retryAfterMs, source });
  }

  #addTombstone(id: number, msgs: number, bytes: number): void {
    const t = this.#tombstones;
    if (t.size >= this.config.maxTombstones) t.delete(t.keys().next().value!); // the oldest
    t.set(id, [this.#now + this.config.tombstoneMs, msgs + Math.ceil(bytes / MIN_FRAGMENT) + 2]);
  }

  #maybeSendClose(s: Session): void {
    const c = s.closeAfter;
    if (!c || s.queue.length) return;
    this.#queueClose("CLOSE", s.id, c.code, c.reason);
    this.#closeSession(s, c.code, c.reason, 0, "local");
  }

  /** FIN both ways and everything read: the session ends normally; draining ends when read. */
  #maybeFinishSession(s: Session): void {
    const d = s.drainCode;
    if (s.heldMsgs) return;
    if (d) this.#closeSession(s, d.code, d.reason, d.retryAfterMs, "peer");
    else if (s.finSent && s.finReceived && !s.queue.length) this.#closeSession(s, 1000, "", 0, "peer");
  }

  /**
   * The payload length of the next DATA frame a session can send now, or -1 for none
   * (spec/sessions.md#fragments): its queue's head or what is left of it, a fragment of it
   * the credit and the pacer let through, or the FIN alone once the queue is empty.
   */
  #nextFrame(s: Session, now: number): number {
    const head = s.queue[0];
    const p = s.pacer;
    if (!s.canSendData) return -1;
    if (!head) return s.finQueued && !s.finSent ? 0 : -1;
    if (!head.off && (s.sendMsgs < 1 || (p && p[0].available(now) < 1))) return -1;
    const rem = head.data.length - head.off;
    const room = Math.min(this.peer!.max_frame_size, s.sendBytes, p ? Math.floor(p[1].available(now)) : rem);
    // Wait for credit: never a fragment under MIN_FRAGMENT.
    return room >= rem ? rem : room >= MIN_FRAGMENT ? room : -1;
  }

  /** Deficit round robin over the sessions that can send (spec/sessions.md#deficit-round-robin). */
  #writeData(out: ArrayLike<number>[], left: number, now: number, held: Set<number | false>): void {
    const ring = this.#ring;
    for (const s of this.sessions.values()) {
      if (!ring.includes(s) && !held.has(s.id) && this.#nextFrame(s, now) >= 0) ring.push(s);
    }
    for (let s; (s = ring[0]);) {
      if (!s.midTurn) { s.deficit += this.peer!.max_frame_size; s.midTurn = true; }
      for (;;) {
        const len = this.#nextFrame(s, now);
        if (len < 0) { ring.shift(); s.midTurn = false; s.deficit = 0; break; }
        if (len > s.deficit) { ring.push(ring.shift()!); s.midTurn = false; break; }
        if ((left -= 10 + len) < 0) return; // the turn continues in the next message
        // Without a head, the frame is the FIN alone.
        const head = s.queue[0];
        const starts = !!head && !head.off;
        const end = !!head && head.off + len === head.data.length;
        const fin = head ? end && head.fin : true;
        out.push(...encodeFrame({ type: "DATA", session_id: s.id, end, fin, payload: head ? head.data.subarray(head.off, (head.off += len)) : new Uint8Array(0) }));
        s.deficit -= len;
        if (starts) s.sendMsgs--;
        s.sendBytes -= len;
        s.pacer?.[0].take(+starts, now);
        s.pacer?.[1].take(len, now);
        if (fin) s.finSent = true;
        if (end) {
          s.queue.shift();
          this.#events.push({ type: "sent", id: s.id });
        }
        if (fin) this.#maybeFinishSession(s);
        if (!s.queue.length) this.#maybeSendClose(s);
        // Closed by the FIN or the CLOSE just queued: #closeSession took it off the ring.
        if (!this.sessions.has(s.id)) break;
      }
    }
  }
}

/** What a queued message counts against the send buffer. */
const cost = (data: Uint8Array): number => data.length + 64;

/** The core of `mux-js/core`: the connection with its send buffer's bounds, `reset` and inspection getters. */
export class Connection extends CoreConnection {
  /** Throws MuxError "too_large" or "blocked" when the send buffer is full: wait for "sent". */
  protected override admit(s: Session, data: Uint8Array): void {
    const { maxQueuedMessages, sendBufferBytes } = this.config;
    let total = cost(data);
    for (const x of this.sessions.values()) for (const q of x.queue) total += cost(q.data);
    if (cost(data) > sendBufferBytes) refuse("too_large");
    if (s.queue.length >= maxQueuedMessages || total > sendBufferBytes) refuse("blocked");
  }

  /** Aborts a session: RESET, both directions end now. */
  reset(id: number, code = 4010, reason = ""): void {
    this.resetSession(this.live(id, code, reason), code, reason, "local", false);
  }

  get isReady(): boolean { return this.peer !== null && !this.isClosed; }
  /** The peer's settings, once its SETTINGS has arrived. */
  get peerSettings(): Readonly<Settings> | null { return this.peer; }
  get liveSessions(): number { return this.sessions.size; }
  /** Credit this side may still use on a session: messages and bytes. */
  sendCredit(id: number): { messages: number; bytes: number } | null {
    const s = this.sessions.get(id);
    return s ? { messages: s.sendMsgs, bytes: s.sendBytes } : null;
  }
  /** Messages queued on a session and not yet fully written. */
  queued(id: number): number { return this.sessions.get(id)?.queue.length ?? 0; }
}

function checkCode(code: number, reason: string): void {
  if (!isValidWireCode(code) || utf8.encode(reason).length > 123) refuse("invalid_code");
}
