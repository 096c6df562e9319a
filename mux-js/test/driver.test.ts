// The driver against a fake WebSocket, on an injected clock and timers.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Frame } from "../src/codec/index.js";
import { connect, MuxCloseError } from "../src/index.js";
import { Clock, FakeSocket } from "./fakes.js";

function setup() {
  const clock = new Clock();
  const client = connect("ws://x/", { token: "tok", WebSocket: FakeSocket, clock: () => clock.now, timers: clock.timers, highWater: 100, lowWater: 10 });
  const ws = FakeSocket.last;
  ws.open();
  ws.deliver({ type: "SETTINGS", session_id: 0, settings: {} });
  return { clock, client, ws };
}

const accept = (id: number): Frame => ({ type: "ACCEPT", session_id: id, permissions: 3, max_message_size: 65536, rate: { messages_per_sec: 0, bytes_per_sec: 0, burst_messages: 0, burst_bytes: 0 } });
const flush = () => new Promise<void>((r) => setImmediate(r));

test("the socket offers mux.v1 and the bearer token, binary as ArrayBuffer; SETTINGS first", async () => {
  const { ws, client } = setup();
  assert.deepEqual(ws.protocols, ["mux.v1", "bearer.tok"]);
  assert.equal(ws.binaryType, "arraybuffer");
  await client.ready;
  assert.equal(ws.frames()[0]?.type, "SETTINGS");
});

test("open() rejects with the refusal's code and reason", async () => {
  const { ws, client } = setup();
  const p = client.open("chat/general", { auth: "a" });
  await flush();
  const open = ws.frames().find((f) => f.type === "OPEN");
  assert.ok(open);
  ws.deliver({ type: "RESET", session_id: open.session_id, code: 4001, retry_after_ms: 0, reason: "forbidden" });
  await assert.rejects(p, (e: MuxCloseError) => e instanceof MuxCloseError && e.code === 4001 && e.reason === "forbidden");
});

test("the readable stream grants credit only as it is read", async () => {
  const { ws, client } = setup();
  const p = client.open("feed");
  await flush();
  ws.deliver(accept(1));
  const s = await p;
  ws.frames();
  for (let i = 0; i < 16; i++) ws.deliver({ type: "DATA", session_id: 1, end: true, fin: false, payload: new Uint8Array([i]) });
  assert.deepEqual(ws.frames().filter((f) => f.type === "CREDIT"), [], "nothing read, nothing returned");
  const reader = s.readable.getReader();
  for (let i = 0; i < 16; i++) assert.deepEqual((await reader.read()).value, new Uint8Array([i]));
  await flush(); // the credit leaves in the driver's next batch
  assert.deepEqual(ws.frames().filter((f) => f.type === "CREDIT"), [{ type: "CREDIT", session_id: 1, messages: 16, bytes: 16 }]);
});

test("send() resolves once written; writing pauses while bufferedAmount is high", async () => {
  const { ws, client, clock } = setup();
  const p = client.open("x");
  await flush();
  ws.deliver(accept(1));
  const s = await p;
  ws.frames();
  ws.bufferedAmount = 500;
  let done = false;
  const sent = s.send(new Uint8Array(10)).then(() => { done = true; });
  await flush();
  assert.equal(ws.sent.length, 0, "held back above the high watermark");
  assert.equal(done, false);
  ws.bufferedAmount = 5;
  clock.advance(clock.now + 10);
  await sent;
  assert.equal(ws.frames().filter((f) => f.type === "DATA").length, 1);
});

test("keepalive PING on the injected timers; no answer closes with 4006", async () => {
  const { ws, client, clock } = setup();
  await client.ready;
  ws.frames();
  clock.advance(15_000);
  assert.equal(ws.frames()[0]?.type, "PING");
  const closed = new Promise<CustomEvent>((r) => client.addEventListener("close", (e) => r(e as CustomEvent)));
  clock.advance(25_000);
  assert.equal((await closed).detail.code, 4006);
  assert.equal(ws.closedWith, 4006);
});

test("sends made in one task leave in one WebSocket message, one DATA frame per session", async () => {
  const { ws, client } = setup();
  const opening = [client.open("a"), client.open("b"), client.open("c")];
  await flush();
  ws.deliver(accept(1), accept(3), accept(5));
  const sessions = await Promise.all(opening);
  ws.sent.splice(0);
  const sent = Promise.all(sessions.map((s, i) => s.send(new Uint8Array([i]))));
  await sent;
  assert.equal(ws.sent.length, 1, "one transmit for the three sends");
  assert.deepEqual(ws.frames().map((f) => f.type === "DATA" && [f.session_id, f.payload[0]]), [[1, 0], [3, 1], [5, 2]]);
});

test("a keepalive deadline that moves later keeps the armed timer, and the PING still goes at the right time", async () => {
  const { ws, client, clock } = setup();
  await client.ready;
  ws.frames();
  // Messages from the server push the keepalive deadline (15 s after the last one) later.
  for (const t of [1000, 2000, 3000]) { clock.advance(t); ws.deliver({ type: "PONG", session_id: 0, payload: 0n }); }
  clock.advance(17_999);
  assert.deepEqual(ws.frames().filter((f) => f.type === "PING"), [], "not before 15 s of silence");
  clock.advance(18_000);
  assert.equal(ws.frames().filter((f) => f.type === "PING").length, 1);
});
