// A scripted server for the client core, on a virtual clock: it sends raw frames and
// decodes what the client transmits.
import assert from "node:assert/strict";
import { decodeMessage, encodeMessage, type Frame, type SettingsMap } from "../src/codec/index.js";
import { Connection, type CoreConfig, type CoreEvent } from "../src/core/index.js";

export class Script {
  now = 0;
  readonly client: Connection;
  readonly sent: Frame[] = [];
  readonly messages: Uint8Array[] = [];
  readonly events: CoreEvent[] = [];
  constructor(config: Partial<CoreConfig> = {}) {
    this.client = new Connection(this.now, config);
  }
  /** Connects: the client's SETTINGS is read, the server's is sent. */
  static ready(server: SettingsMap = {}, config: Partial<CoreConfig> = {}): Script {
    const s = new Script(config);
    const first = s.drain();
    assert.equal(first[0]?.type, "SETTINGS");
    s.send({ type: "SETTINGS", session_id: 0, settings: server });
    assert.deepEqual(s.takeEvents(), [{ type: "ready" }]);
    return s;
  }
  send(...frames: Frame[]): void {
    this.client.handleMessage(encodeMessage(frames), this.now);
  }
  raw(bytes: Uint8Array): void { this.client.handleMessage(bytes, this.now); }
  /** Everything the client transmits now, decoded; each message must decode cleanly. */
  drain(): Frame[] {
    const out: Frame[] = [];
    for (let m = this.client.pollTransmit(this.now); m; m = this.client.pollTransmit(this.now)) {
      this.messages.push(m);
      const { frames, error } = decodeMessage(m);
      assert.equal(error, undefined, `client sent a malformed message: ${JSON.stringify(error)}`);
      out.push(...frames);
    }
    this.sent.push(...out);
    for (let e = this.client.pollEvent(); e; e = this.client.pollEvent()) this.events.push(e);
    return out;
  }
  takeEvents(): CoreEvent[] {
    this.drain();
    return this.events.splice(0);
  }
  /** Advances the virtual clock to the client's next deadline (or `to`), firing it. */
  advance(to?: number): void {
    const t = to ?? this.client.pollTimeout();
    assert.ok(t !== null, "no deadline");
    this.now = Math.max(this.now, t);
    this.client.handleTimeout(this.now);
  }
  accept(id: number, opts: { permissions?: number; max?: number; rate?: Partial<Extract<Frame, { type: "ACCEPT" }>["rate"]> } = {}): void {
    this.send({
      type: "ACCEPT", session_id: id, permissions: opts.permissions ?? 3, max_message_size: opts.max ?? 65536,
      rate: { messages_per_sec: 0, bytes_per_sec: 0, burst_messages: 0, burst_bytes: 0, ...opts.rate },
    });
  }
  /** The client's CONN_CLOSE code, expected as its last frame. */
  expectConnClose(code: number): void {
    const frames = this.drain();
    const last = frames[frames.length - 1];
    assert.equal(last?.type, "CONN_CLOSE", `frames: ${frames.map((f) => f.type).join(",")}`);
    assert.equal((last as { code: number }).code, code);
    assert.equal(this.client.closeCode, code);
    assert.equal(this.client.pollTransmit(this.now), null, "nothing after CONN_CLOSE");
  }
  expectReset(id: number, code: number): void {
    const r = this.drain().find((f) => f.type === "RESET" && f.session_id === id);
    assert.ok(r, `no RESET on ${id}`);
    assert.equal((r as { code: number }).code, code);
  }
}

export const data = (id: number, payload: Uint8Array | number, end = true, fin = false): Frame => ({
  type: "DATA", session_id: id, end, fin, payload: typeof payload === "number" ? new Uint8Array(payload).fill(7) : payload,
});
