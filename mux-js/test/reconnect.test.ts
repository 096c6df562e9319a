// Reconnection on the virtual clock and injected timers, against fake sockets.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Frame } from "../src/codec/index.js";
import { backoffDelay, connectReconnecting, QueueOverflowError, type ReconnectState } from "../src/index.js";
import { Clock, FakeSocket } from "./fakes.js";

const accept = (id: number): Frame => ({ type: "ACCEPT", session_id: id, permissions: 3, max_message_size: 65536, rate: { messages_per_sec: 0, bytes_per_sec: 0, burst_messages: 0, burst_bytes: 0 } });
const flush = async () => { for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r)); };
const serve = (ws: FakeSocket) => { ws.open(); ws.deliver({ type: "SETTINGS", session_id: 0, settings: {} }); };

test("backoff: full jitter under an exponential cap", () => {
  assert.deepEqual([0, 1, 2, 3, 10].map((n) => backoffDelay(n, 500, 30_000, () => 1)), [500, 1000, 2000, 4000, 30_000]);
  assert.equal(backoffDelay(5, 500, 30_000, () => 0), 0);
  assert.equal(backoffDelay(2, 500, 30_000, () => 0.5), 1000);
});

function setup(extra: Record<string, unknown> = {}) {
  const clock = new Clock();
  const tokens: string[] = [];
  const states: ReconnectState[] = [];
  FakeSocket.all = [];
  const rc = connectReconnecting("ws://x/", {
    WebSocket: FakeSocket, clock: () => clock.now, timers: clock.timers, random: () => 1,
    getToken: (reason) => { tokens.push(reason); return "t" + tokens.length; },
    maxQueuedMessages: 2, ...extra,
  });
  rc.addEventListener("state", (e) => states.push((e as CustomEvent<ReconnectState>).detail));
  const retries: number[] = [];
  rc.addEventListener("retry", (e) => retries.push((e as CustomEvent<number>).detail));
  return { clock, rc, tokens, states, retries };
}

test("a dropped connection is retried after the backoff with a refreshed token; sessions re-open", async () => {
  const { clock, rc, tokens, states } = setup();
  await flush();
  serve(FakeSocket.all[0]!);
  await flush();
  const d = rc.session("chat");
  await flush();
  FakeSocket.all[0]!.deliver(accept(1));
  await flush();
  assert.equal(d.current?.id, 1);
  FakeSocket.all[0]!.drop(1006);
  await flush();
  assert.equal(rc.state, "reconnecting");
  clock.advance(499);
  await flush();
  assert.equal(FakeSocket.all.length, 1, "not before the backoff");
  clock.advance(500);
  await flush();
  assert.equal(FakeSocket.all.length, 2);
  assert.deepEqual(tokens, ["initial", "reconnect"]);
  assert.deepEqual(FakeSocket.all[1]!.protocols, ["mux.v1", "bearer.t2"]);
  serve(FakeSocket.all[1]!);
  await flush();
  assert.ok(FakeSocket.all[1]!.frames().some((f) => f.type === "OPEN"), "the session is re-opened");
  assert.deepEqual(states, ["open", "reconnecting", "open"]);
});

test("sends while disconnected queue within bounds, overflow is typed, the queue flushes on re-open", async () => {
  const { clock, rc } = setup();
  await flush();
  const d = rc.session("chat");
  const a = d.send(new Uint8Array([1]));
  const b = d.send(new Uint8Array([2]));
  await assert.rejects(d.send(new Uint8Array([3])), (e: unknown) => e instanceof QueueOverflowError && e.queuedMessages === 2);
  serve(FakeSocket.all[0]!);
  await flush();
  FakeSocket.all[0]!.deliver(accept(1));
  await flush();
  clock.advance(clock.now);
  await Promise.all([a, b]);
  const data = FakeSocket.all[0]!.frames().filter((f) => f.type === "DATA") as Extract<Frame, { type: "DATA" }>[];
  assert.deepEqual(data.map((f) => f.payload[0]), [1, 2]);
});

test("connect timeout: an attempt with no SETTINGS is dropped and retried", async () => {
  const { clock, rc } = setup({ connectTimeoutMs: 3000 });
  await flush();
  FakeSocket.all[0]!.open();
  clock.advance(3000);
  await flush();
  assert.equal(rc.state, "reconnecting");
  clock.advance(3500);
  await flush();
  assert.equal(FakeSocket.all.length, 2);
});

test("a close that cannot succeed on retry ends reconnection", async () => {
  const { clock, rc } = setup();
  await flush();
  serve(FakeSocket.all[0]!);
  await flush();
  FakeSocket.all[0]!.deliver({ type: "CONN_CLOSE", session_id: 0, code: 1008, retry_after_ms: 0, reason: "" });
  await flush();
  assert.equal(rc.state, "closed");
  clock.advance(60_000);
  await flush();
  assert.equal(FakeSocket.all.length, 1);
});

test("a refused re-open with a final code ends the durable session", async () => {
  const { rc } = setup();
  await flush();
  serve(FakeSocket.all[0]!);
  await flush();
  const d = rc.session("secret");
  const closed = new Promise<CustomEvent>((r) => d.addEventListener("close", (e) => r(e as CustomEvent)));
  await flush();
  FakeSocket.all[0]!.deliver({ type: "RESET", session_id: 1, code: 4001, retry_after_ms: 0, reason: "" });
  assert.equal((await closed).detail.code, 4001);
});

test("every wait before an attempt is announced with its delay, for a \"reconnecting in N s\" display", async () => {
  const { clock, rc, states, retries } = setup();
  await flush();
  serve(FakeSocket.all[0]!);
  await flush();
  FakeSocket.all[0]!.drop(1006);
  await flush();
  assert.deepEqual(retries, [500]);
  assert.equal(rc.retryAt, clock.now + 500);
  clock.advance(500);
  await flush();
  FakeSocket.all[1]!.drop(1006); // the attempt fails before SETTINGS
  await flush();
  assert.deepEqual(retries, [500, 1000], "the second wait doubles; the state stays reconnecting");
  assert.equal(rc.retryAt, 1500);
  assert.deepEqual(states, ["open", "reconnecting"]);
});
