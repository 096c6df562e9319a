// A fake WebSocket and a virtual clock with timers, for the driver tests.
import { decodeMessage, encodeMessage, type Frame } from "../src/codec/index.js";
import type { WebSocketLike } from "../src/index.js";

export class FakeSocket implements WebSocketLike {
  static last: FakeSocket;
  static all: FakeSocket[] = [];
  binaryType = "blob";
  bufferedAmount = 0;
  protocol = "mux.v1";
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: Uint8Array[] = [];
  closedWith: number | null = null;
  constructor(readonly url: string, readonly protocols: string[]) { FakeSocket.last = this; FakeSocket.all.push(this); }
  send(d: Uint8Array): void { this.sent.push(d); }
  close(code?: number): void { this.closedWith = code ?? 1000; }
  /** The server side drops the connection. */
  drop(code = 1006): void { this.readyState = 3; this.onclose?.({ code, reason: "" }); }
  open(): void { this.readyState = 1; this.onopen?.({}); }
  deliver(...fs: Frame[]): void {
    const m = encodeMessage(fs);
    this.onmessage?.({ data: m.buffer.slice(m.byteOffset, m.byteOffset + m.length) });
  }
  frames(): Frame[] { return this.sent.splice(0).flatMap((m) => decodeMessage(m).frames); }
}

export class Clock {
  now = 0;
  private q: { at: number; fn: () => void; id: number }[] = [];
  private n = 0;
  timers = {
    set: (fn: () => void, ms: number) => { const id = ++this.n; this.q.push({ at: this.now + ms, fn, id }); return id; },
    clear: (h: unknown) => { this.q = this.q.filter((t) => t.id !== h); },
    // The driver's batching task: a macrotask, in order with the tests' setImmediate flushes.
    defer: (fn: () => void) => { setImmediate(fn); },
  };
  advance(to: number): void {
    for (;;) {
      this.q.sort((a, b) => a.at - b.at);
      const t = this.q[0];
      if (!t || t.at > to) break;
      this.q.shift();
      this.now = t.at;
      t.fn();
    }
    this.now = to;
  }
}

