// The WebSocket driver: owns the socket and the timers, feeds the sans-IO core, and turns its
// events into promises, async iterators and WHATWG streams.
import { CoreConnection } from "../core/connection.js";
import type { CoreConfig, CoreEvent, Grant } from "../core/types.js";
import { utf8 } from "../codec/utf8.js";

/** The part of the WebSocket API the driver uses; the constructor is injectable. */
export interface WebSocketLike {
  binaryType: string;
  readonly bufferedAmount: number;
  readonly protocol: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

export interface Timers {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
  /**
   * Runs `fn` in a task of its own, after the tasks already queued; the writes the driver
   * batches wait for it. Default: a MessageChannel message.
   */
  defer?(fn: () => void): void;
}

export interface ConnectOptions {
  /** Sent as a `bearer.<token>` subprotocol entry next to `mux.v1`, never in the URL. */
  token?: string;
  WebSocket?: WebSocketConstructor;
  /** Monotonic milliseconds; default `performance.now()`. */
  clock?: () => number;
  timers?: Timers;
  core?: Partial<CoreConfig>;
  /** Stop writing while the socket buffers more than this (bytes); resume below lowWater. */
  highWater?: number;
  lowWater?: number;
  /**
   * OPENs awaiting an answer at once (default 8); more wait their turn. Servers cap pending
   * opens (spec/sessions.md#limits, RECOMMENDED 16) and refuse beyond it with 4003.
   */
  maxPendingOpens?: number;
}

export type ClientState = "connecting" | "open" | "closed";

/** An OPEN the server refused, or a session or connection that ended: the code and reason. */
export class MuxCloseError extends Error {
  constructor(readonly code: number, readonly reason: string, readonly retryAfterMs = 0) {
    super(`closed ${code}${reason ? ": " + reason : ""}`);
    this.name = "MuxCloseError";
  }
}

/** Settles a pending promise: with an error it rejects, without it resolves. */
type Settle = (err?: unknown) => void;
const settle = (resolve: () => void, reject: (e: unknown) => void): Settle => (e) => e ? reject(e) : resolve();

const utf8d = new TextDecoder();
const toBytes = (data: Uint8Array | string): Uint8Array => (typeof data === "string" ? utf8.encode(data) : data);
const closeError = (e: { code: number; reason: string; retryAfterMs: number }) => new MuxCloseError(e.code, e.reason, e.retryAfterMs);

/** @internal Dispatches a CustomEvent. */
export const emit = (t: EventTarget, type: string, detail?: unknown): void => { t.dispatchEvent(new CustomEvent(type, { detail })); };
let deferred: (() => void)[] = [];
let port: MessagePort | null = null;
/**
 * A task after those already queued, without setTimeout's clamping of nested timers: one
 * MessageChannel for the page, its port unreferenced where it can be (Node) so an idle one
 * keeps no process alive.
 */
function defer(fn: () => void): void {
  if (!port) {
    const ch = new MessageChannel();
    // Each as a microtask of its own, so one that throws does not hold back the others.
    ch.port1.onmessage = () => { const q = deferred; deferred = []; q.map(queueMicrotask); };
    (ch.port1 as { unref?: () => void }).unref?.();
    port = ch.port2;
  }
  if (deferred.push(fn) === 1) port.postMessage(0);
}
/** @internal setTimeout, clearTimeout and a MessageChannel task. */
export const defaultTimers: Timers = { set: (fn, ms) => setTimeout(fn, ms), clear: (h) => clearTimeout(h as ReturnType<typeof setTimeout>), defer };

export class MuxSession extends EventTarget {
  grant: Grant | null = null;
  state: "opening" | "open" | "closed" = "opening";
  /** Set once the session has ended. */
  closeInfo: MuxCloseError | null = null;
  #inbox: Uint8Array[] = [];
  #waiters: ((m: Uint8Array | null) => void)[] = [];
  /** Sends queued in the core, settled in order as each is written. */
  #inCore: Settle[] = [];
  #ended = false;
  /** @internal While the OPEN awaits its answer. */ opening: Settle | null = null;
  #stream: ReadableStream<Uint8Array> | null = null;
  readonly #client: MuxClient;

  constructor(client: MuxClient, readonly id: number, readonly kind: string) { super(); this.#client = client; }

  /** Resolves once the message has been written to the socket, which needs the server's credit. */
  send(data: Uint8Array | string): Promise<void> {
    // A refusal (thrown here) rejects the promise.
    return new Promise((resolve, reject) => {
      if (this.closeInfo) throw this.closeInfo;
      this.#client.write(this.id, toBytes(data));
      this.#inCore.push(settle(resolve, reject));
    });
  }
  sendText(text: string): Promise<void> { return this.send(text); }
  sendJson(value: unknown): Promise<void> { return this.send(JSON.stringify(value)); }

  /** The next message, or null at the end. Reading returns its credit to the server. */
  next(): Promise<Uint8Array | null> {
    const m = this.#inbox.shift();
    const c = this.closeInfo;
    if (m) this.#client.consumed(this, m);
    return m || !this.#ended ? new Promise((r) => m ? r(m) : this.#waiters.push(r))
      : c && c.code !== 1000 ? Promise.reject(c) : Promise.resolve(null);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    for (let m; (m = await this.next());) yield m;
  }
  async *texts(): AsyncGenerator<string> { for await (const m of this) yield utf8d.decode(m); }
  async *json<T = unknown>(): AsyncGenerator<T> { for await (const t of this.texts()) yield JSON.parse(t) as T; }

  /** A ReadableStream whose pulls grant credit: the server never runs ahead of the reader. */
  get readable(): ReadableStream<Uint8Array> {
    return (this.#stream ??= new ReadableStream<Uint8Array>({
      pull: (ctl) => this.next().then((m) => m ? ctl.enqueue(m) : ctl.close(), (e) => ctl.error(e)),
      cancel: () => this.close(4010, "cancelled"),
    }, { highWaterMark: 0 }));
  }

  get writable(): WritableStream<Uint8Array> {
    return new WritableStream<Uint8Array>({
      write: (chunk) => this.send(chunk),
      close: () => this.finish(),
      abort: () => this.close(4010, "aborted"),
    });
  }

  /** @internal One event of the core for this session. */
  handle(e: CoreEvent & { id: number }): void {
    switch (e.type) {
      case "opened":
        this.grant = e.grant;
        this.state = "open";
        return emit(this, "open", e.grant);
      case "message": {
        const w = this.#waiters.shift();
        if (w) { this.#client.consumed(this, e.data, false); w(e.data); } else this.#inbox.push(e.data);
        return emit(this, "message", e.data);
      }
      case "sent": return this.#inCore.shift()?.();
      case "closed":
        this.state = "closed";
        this.closeInfo = closeError(e);
        this.#inCore.splice(0).map((p) => p(this.closeInfo));
      // falls through: no more messages, waiting reads get null
      case "fin":
        this.#ended = true;
        this.#waiters.splice(0).map((w) => w(null));
        if (this.closeInfo) emit(this, "close", this.closeInfo);
    }
  }

  /** Graceful close: queued messages are sent first. */
  close(code = 1000, reason = ""): void { this.#client.command(this, (c) => c.close(this.id, code, reason)); }
  /** Half-close: FIN after the queued messages. */
  finish(): void { this.#client.command(this, (c) => c.finish(this.id)); }
}

export class MuxClient extends EventTarget {
  state: ClientState = "connecting";
  readonly ready: Promise<void>;
  readonly #ws: WebSocketLike;
  readonly #core: CoreConnection;
  readonly #clock: () => number;
  readonly #timers: Timers;
  #timer: unknown = null;
  #timerAt = Infinity;
  readonly #sessions = new Map<number, MuxSession>();
  /** OPENs awaiting an answer. */
  #opening = 0;
  #readyWaiter!: Settle;
  readonly #high: number;
  readonly #low: number;
  #blockedOnBuffer = false;
  #pumpQueued = false;
  #wsClosed = false;
  readonly #maxPending: number;
  readonly #openQueue: (() => void)[] = [];

  constructor(url: string, opts: ConnectOptions = {}) {
    super();
    const WS = opts.WebSocket ?? (globalThis as unknown as { WebSocket: WebSocketConstructor }).WebSocket;
    this.#clock = opts.clock ?? (() => performance.now());
    this.#timers = opts.timers ?? defaultTimers;
    this.#high = opts.highWater ?? 1 << 20;
    this.#low = opts.lowWater ?? this.#high / 4;
    this.#maxPending = Math.max(1, opts.maxPendingOpens ?? 8);
    // The core's queue holds every send until credit lets it go; each send() is a pending
    // promise, so the caller's awaiting is the backpressure and the core needs no bound.
    this.#core = new CoreConnection(this.#clock(), { ...opts.core, maxQueuedMessages: Infinity, sendBufferBytes: Infinity });
    this.ready = new Promise((resolve, reject) => { this.#readyWaiter = settle(resolve, reject); });
    this.ready.catch(() => undefined);
    const ws = (this.#ws = new WS(url, ["mux.v1", ...(opts.token ? ["bearer." + opts.token] : [])]));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.pump();
    ws.onmessage = ({ data }) => {
      const now = this.#clock();
      if (typeof data === "string") this.#core.handleText(now);
      else this.#core.handleMessage(new Uint8Array(data as ArrayBuffer), now);
      // The replies the application makes to this message, and to the messages already queued
      // behind it, leave together in the deferred pump.
      this.#drainEvents();
      this.#soon();
    };
    ws.onclose = (ev) => {
      this.#wsClosed = true;
      this.#core.handleTransportClosed(this.#clock(), ev.code === 1005 ? 1006 : ev.code, ev.reason);
      this.pump();
    };
    ws.onerror = () => undefined; // a close event follows
  }

  /** Opens a session; rejects with MuxCloseError (e.g. 4001) if the server refuses it. */
  async open(kind: string, opts: { auth?: Uint8Array | string } = {}): Promise<MuxSession> {
    await this.ready;
    while (this.#opening >= this.#maxPending) await new Promise<void>((r) => this.#openQueue.push(r));
    const id = this.#core.open(kind, opts.auth ? { auth: toBytes(opts.auth) } : {}, this.#clock());
    const s = new MuxSession(this, id, kind);
    this.#sessions.set(id, s);
    this.#opening++;
    return new Promise<MuxSession>((resolve, reject) => {
      s.opening = (e) => e ? reject(e) : resolve(s);
      this.pump();
    });
  }

  close(code = 1000, reason = ""): void {
    if (!this.#core.isClosed) this.#core.closeConnection(code, reason);
    this.pump();
  }

  /** Drops the socket at once (a connect timeout): every session ends with 1006. */
  abort(): void {
    if (!this.#wsClosed) { this.#wsClosed = true; this.#ws.close(); }
    this.#core.handleTransportClosed(this.#clock(), 1006, "aborted");
    this.pump();
  }

  /** @internal The core queues the message until credit lets it go; throws its refusal. */
  write(id: number, data: Uint8Array): void {
    this.#core.send(id, data);
    this.#soon();
  }
  /** @internal A message was read; its credit leaves with the next pump (a later one if `soon`). */
  consumed(s: MuxSession, m: Uint8Array, soon = true): void {
    this.#core.consumed(s.id, m.length);
    if (soon) this.#soon();
  }
  /** @internal A command on a session that has not ended, then a pump. */
  command(s: MuxSession, fn: (core: CoreConnection) => void): void {
    if (!s.closeInfo) { fn(this.#core); this.pump(); }
  }

  /**
   * A pump in a task after those already queued: sends and reads made together, or in reply to
   * WebSocket messages that arrived together, leave in one WebSocket message. A send costs the
   * browser far more per message than per byte, and waiting for one task is cheap by contrast.
   */
  #soon(): void {
    if (this.#pumpQueued) return;
    this.#pumpQueued = true;
    (this.#timers.defer ?? defer)(() => { this.#pumpQueued = false; this.pump(); });
  }

  /** Hands queued sends to the core, drains its outputs, and re-arms the timer (the contract). */
  pump(): void {
    this.#drainEvents();
    this.#flush();
    this.#drainEvents();
    this.#arm();
  }

  #drainEvents(): void {
    for (let e; (e = this.#core.pollEvent());) this.#dispatch(e);
  }

  /** Frames coalesced per transmit; writing pauses while the socket buffers past highWater. */
  #flush(): void {
    const ws = this.#ws;
    const core = this.#core;
    const full = () => ws.bufferedAmount > this.#high;
    if (this.#wsClosed || (ws as { readyState?: number }).readyState === 0) return;
    if (full()) this.#blockedOnBuffer = true;
    if (this.#blockedOnBuffer && ws.bufferedAmount > this.#low) return;
    this.#blockedOnBuffer = false;
    const now = this.#clock();
    for (let m; !this.#blockedOnBuffer && (m = core.pollTransmit(now));) {
      ws.send(m);
      this.#blockedOnBuffer = full();
    }
    const c = core.closeCode;
    if (c !== null && !this.#blockedOnBuffer) {
      // Browsers let an application close with 1000 or 3000–4999 only.
      ws.close(c >= 3000 && c <= 4999 ? c : 1000);
      this.#wsClosed = true;
    }
  }

  #arm(): void {
    const timers = this.#timers;
    let at = this.#core.pollTimeout() ?? Infinity;
    if (this.#blockedOnBuffer) at = Math.min(at, this.#clock() + 10); // bufferedAmount has no drain event
    // A later deadline (the keepalive moves with every message) keeps the armed timer: it
    // fires early, the core finds nothing due, and the timer is armed again then.
    if (at === this.#timerAt || (at > this.#timerAt && at < Infinity)) return;
    if (this.#timer !== null) timers.clear(this.#timer);
    this.#timer = null;
    this.#timerAt = at;
    if (at < Infinity) {
      this.#timer = timers.set(() => {
        this.#timer = null;
        this.#timerAt = Infinity;
        this.#core.handleTimeout(this.#clock());
        this.pump();
      }, Math.max(0, at - this.#clock()));
    }
  }

  /** Once the OPEN of `s` has its answer (a close for a refusal): the next waiting open() may go. */
  #answered(s: MuxSession): void {
    const o = s.opening;
    if (!o || s.state === "opening") return;
    s.opening = null;
    o(s.closeInfo);
    this.#opening--;
    this.#openQueue.shift()?.();
  }

  #dispatch(e: CoreEvent): void {
    if (e.type === "ready") {
      this.state = "open";
      this.#readyWaiter();
      return emit(this, "open");
    }
    if (e.type === "goaway") return emit(this, "goaway", e);
    if (e.type === "connection_closed") {
      const err = closeError(e);
      this.state = "closed";
      this.#readyWaiter(err);
      this.#openQueue.splice(0).map((r) => r());
      return emit(this, "close", err);
    }
    const s = this.#sessions.get(e.id);
    if (!s) return;
    if (e.type === "closed") this.#sessions.delete(e.id);
    s.handle(e);
    this.#answered(s);
  }
}

/** Connects to a mux server: `const client = connect(url, { token })`. */
export function connect(url: string, opts: ConnectOptions = {}): MuxClient {
  return new MuxClient(url, opts);
}
