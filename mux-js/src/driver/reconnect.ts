// Reconnection above the driver: backoff with full jitter, a connect timeout, sessions re-opened
// on every new connection, a token refreshed before each attempt, and a bounded send queue.
import { connect, defaultTimers, emit, MuxCloseError, MuxClient, type MuxSession, type ConnectOptions, type Timers } from "./client.js";

export interface ReconnectOptions extends ConnectOptions {
  /** Backoff: attempt n waits random() × min(maxDelayMs, minDelayMs × 2^n) (full jitter). */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** An attempt that has not received the server's SETTINGS by then is dropped and retried. */
  connectTimeoutMs?: number;
  /** The attempt count resets only after a connection stayed up this long. */
  minUptimeMs?: number;
  random?: () => number;
  /** Called before every attempt; its token replaces `token`. */
  getToken?: (reason: "initial" | "reconnect") => string | Promise<string>;
  /** Messages (and bytes) a session may queue while disconnected. */
  maxQueuedMessages?: number;
  maxQueuedBytes?: number;
}

export type ReconnectState = "connecting" | "open" | "reconnecting" | "closed";

/** The send queue of a disconnected session is full. */
export class QueueOverflowError extends Error {
  constructor(readonly queuedMessages: number, readonly queuedBytes: number) {
    super("send queue full while disconnected");
    this.name = "QueueOverflowError";
  }
}

/** spec/close-codes.md: codes after which a retry may succeed (1006: the transport dropped). */
export const isRetryable = (code: number): boolean =>
  [1001, 1006, 1011, 1013, 4000, 4002, 4003, 4006, 4008, 4009].includes(code);

export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number): number {
  return random() * Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
}

interface Queued { data: Uint8Array; resolve: () => void; reject: (e: unknown) => void }

/** A session that is re-opened on each new connection while it is wanted. */
export class DurableSession extends EventTarget {
  current: MuxSession | null = null;
  closed: MuxCloseError | null = null;
  #queue: Queued[] = [];
  #queuedBytes = 0;
  readonly #owner: ReconnectingClient;
  /** @internal The kind each (re-)open sends; a topic's carries its resume position. */ readonly openKind: () => string;
  constructor(owner: ReconnectingClient, readonly kind: string, readonly auth?: Uint8Array | string, openKind?: () => string) {
    super();
    this.#owner = owner;
    this.openKind = openKind ?? (() => kind);
  }

  /** Sends now if connected; otherwise queues, within the bounds, until the session is re-opened. */
  send(data: Uint8Array): Promise<void> {
    const queue = this.#queue;
    const current = this.current;
    const o = this.#owner.limits;
    if (this.closed) return Promise.reject(this.closed);
    if (current?.state === "open" && !queue.length) return current.send(data);
    if (queue.length >= o.messages || this.#queuedBytes + data.length > o.bytes) {
      return Promise.reject(new QueueOverflowError(queue.length, this.#queuedBytes));
    }
    this.#queuedBytes += data.length;
    return new Promise((resolve, reject) => queue.push({ data, resolve, reject }));
  }

  /** @internal */ attach(s: MuxSession): void {
    this.current = s;
    // Reading through the iterator returns credit as each message is dispatched.
    void (async () => {
      try { for await (const m of s) emit(this, "message", m); } catch { /* closed */ }
      // The server dropped a slow consumer (4008, retryable): open again now, on this
      // connection; a topic resumes from its position (spec/topics.md#delivery).
      if (s.closeInfo?.code === 4008 && this.current === s && !this.closed) {
        this.current = null;
        this.#owner.reopen(this);
      }
    })();
    for (const q of this.#queue.splice(0)) s.send(q.data).then(q.resolve, q.reject);
    this.#queuedBytes = 0;
    emit(this, "open");
  }

  close(code = 1000, reason = ""): void {
    this.current?.close(code, reason);
    this.end(new MuxCloseError(code, reason));
  }

  /** @internal Ended for good: the queued sends fail with `e`. */ end(e: MuxCloseError): void {
    this.closed = e;
    for (const q of this.#queue.splice(0)) q.reject(e);
    this.#owner.forget(this);
  }
}

export class ReconnectingClient extends EventTarget {
  state: ReconnectState = "connecting";
  client: MuxClient | null = null;
  attempt = 0;
  /** While reconnecting: when, on the client's clock, the next attempt starts. */
  retryAt = 0;
  readonly limits: { messages: number; bytes: number };
  readonly #o: ReconnectOptions;
  readonly #url: string;
  readonly #sessions = new Set<DurableSession>();
  #timer: unknown = null;
  #upSince = 0;
  readonly #clock: () => number;
  readonly #timers: Timers;

  constructor(url: string, opts: ReconnectOptions = {}) {
    super();
    this.#url = url;
    this.#o = opts;
    this.#clock = opts.clock ?? (() => performance.now());
    this.#timers = opts.timers ?? defaultTimers;
    this.limits = { messages: opts.maxQueuedMessages ?? 64, bytes: opts.maxQueuedBytes ?? 1 << 20 };
    void this.#connect("initial");
  }

  /**
   * A session of `kind`, opened now if connected and re-opened after every reconnect.
   * `openKind`, if given, is asked for the kind of each (re-)open (a topic's resume position).
   */
  session(kind: string, opts: { auth?: Uint8Array | string; openKind?: () => string } = {}): DurableSession {
    const d = new DurableSession(this, kind, opts.auth, opts.openKind);
    this.#sessions.add(d);
    this.reopen(d);
    return d;
  }

  /** @internal Opens `d` again on the current connection, if there is one. */
  reopen(d: DurableSession): void {
    const client = this.client!;
    if (this.state !== "open" || !this.#sessions.has(d)) return;
    client.open(d.openKind(), { auth: d.auth }).then((s) => {
      if (d.closed || this.client !== client) s.close(); else d.attach(s);
    }, (e: unknown) => {
      // Re-open policy: a refusal that cannot succeed later ends the session for good.
      if (e instanceof MuxCloseError && !isRetryable(e.code)) {
        d.end(e);
        emit(d, "close", e);
      }
    });
  }

  /** @internal */ forget(d: DurableSession): void { this.#sessions.delete(d); }

  close(code = 1000, reason = ""): void {
    this.#setState("closed");
    this.#timers.clear(this.#timer);
    this.client?.close(code, reason);
  }

  #setState(s: ReconnectState): void {
    if (this.state !== s) emit(this, "state", (this.state = s));
  }

  async #connect(reason: "initial" | "reconnect"): Promise<void> {
    const o = this.#o;
    let token = o.token;
    try {
      if (o.getToken && this.state !== "closed") token = await o.getToken(reason);
    } catch { return this.#retry(); }
    if (this.state === "closed") return;
    const client = (this.client = connect(this.#url, { ...o, token }));
    const timers = this.#timers;
    const timeout = timers.set(() => client.abort(), o.connectTimeoutMs ?? 5000);
    client.addEventListener("close", (e) => {
      timers.clear(timeout);
      if (this.client !== client || this.state === "closed") return;
      const err = (e as CustomEvent<MuxCloseError>).detail;
      for (const d of this.#sessions) d.current = null;
      if (!isRetryable(err.code)) {
        this.#setState("closed");
        return emit(this, "close", err);
      }
      if (this.#clock() - this.#upSince >= (o.minUptimeMs ?? 5000) && this.state === "open") this.attempt = 0;
      this.#retry(err.retryAfterMs);
    });
    client.ready.then(() => {
      timers.clear(timeout);
      if (this.client !== client) return;
      this.#upSince = this.#clock();
      this.#setState("open");
      for (const d of this.#sessions) this.reopen(d);
    }, () => undefined);
  }

  #retry(hintMs = 0): void {
    const o = this.#o;
    if (this.state === "closed") return;
    const delay = Math.max(hintMs, backoffDelay(this.attempt++, o.minDelayMs ?? 500, o.maxDelayMs ?? 30_000, o.random ?? Math.random));
    this.retryAt = this.#clock() + delay;
    this.#setState("reconnecting");
    // Every wait, the first and the later ones: "reconnecting in N s" for a UI.
    emit(this, "retry", delay);
    this.#timer = this.#timers.set(() => void this.#connect("reconnect"), delay);
  }
}

export function connectReconnecting(url: string, opts: ReconnectOptions = {}): ReconnectingClient {
  return new ReconnectingClient(url, opts);
}
