// The client core against a scripted server on a virtual clock.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeMessage, type Frame } from "../src/codec/index.js";
import { Connection, MuxError } from "../src/core/index.js";
import { Script, data } from "./harness.js";

const dataFrames = (fs: Frame[], id?: number) =>
  fs.filter((f): f is Extract<Frame, { type: "DATA" }> => f.type === "DATA" && (id === undefined || f.session_id === id));

test("SETTINGS is the first frame and nothing else goes before the server's SETTINGS", () => {
  const s = new Script();
  const first = s.drain();
  assert.deepEqual(first.map((f) => f.type), ["SETTINGS"]);
  assert.throws(() => s.client.open("chat"), (e: MuxError) => e.kind === "not_ready");
  assert.deepEqual(s.drain(), []);
});

test("session IDs are odd and strictly increasing", () => {
  const s = Script.ready();
  const ids = [s.client.open("a"), s.client.open("b"), s.client.open("c")];
  assert.deepEqual(ids, [1, 3, 5]);
  assert.deepEqual(s.drain().filter((f) => f.type === "OPEN").map((f) => f.session_id), [1, 3, 5]);
});

test("OPEN carries kind, auth and the requested limits", () => {
  const s = Script.ready();
  s.client.open("chat/general", { auth: new Uint8Array([1, 2]), maxMessageSize: 100 });
  const open = s.drain().find((f) => f.type === "OPEN");
  assert.deepEqual(open, { type: "OPEN", session_id: 1, kind: "chat/general", auth: new Uint8Array([1, 2]), request: { max_message_size: 100, messages_per_sec: 0, bytes_per_sec: 0 } });
});

test("message credit: the client never sends beyond it and resumes on CREDIT", () => {
  const s = Script.ready({ initial_credit_messages: 2 });
  const id = s.client.open("x");
  s.accept(id);
  for (let i = 0; i < 3; i++) s.client.send(id, new Uint8Array([i]));
  assert.equal(dataFrames(s.drain(), id).length, 2);
  assert.deepEqual(s.client.sendCredit(id), { messages: 0, bytes: 65534 });
  s.send({ type: "CREDIT", session_id: id, messages: 1, bytes: 0 });
  const third = dataFrames(s.drain(), id);
  assert.deepEqual(third.map((f) => f.payload[0]), [2]);
});

test("byte credit: a fragment waits for credit rather than going under 1,024 bytes", () => {
  const s = Script.ready({ initial_credit_bytes: 1500, max_message_size: 65536 });
  const id = s.client.open("x");
  s.accept(id, { max: 4000 });
  s.client.send(id, new Uint8Array(3000));
  assert.deepEqual(dataFrames(s.drain(), id).map((f) => [f.payload.length, f.end]), [[1500, false]]);
  s.send({ type: "CREDIT", session_id: id, messages: 0, bytes: 1000 });
  assert.deepEqual(dataFrames(s.drain(), id), [], "1,000 bytes: under MIN_FRAGMENT and not the end");
  s.send({ type: "CREDIT", session_id: id, messages: 0, bytes: 500 });
  assert.deepEqual(dataFrames(s.drain(), id).map((f) => [f.payload.length, f.end]), [[1500, true]]);
});

test("fragments stay within the server's MAX_FRAME_SIZE and reassemble in order", () => {
  const s = Script.ready({ max_frame_size: 1024 });
  const id = s.client.open("x");
  s.accept(id);
  const msg = new Uint8Array(3000).map((_, i) => i & 0xff);
  s.client.send(id, msg);
  const fs = dataFrames(s.drain(), id);
  assert.deepEqual(fs.map((f) => [f.payload.length, f.end]), [[1024, false], [1024, false], [952, true]]);
  const joined = new Uint8Array(fs.flatMap((f) => [...f.payload]));
  assert.deepEqual(joined, msg);
  assert.ok(s.messages.every((m) => m.length <= 65536));
});

test("a message over the session's sending limit is refused locally", () => {
  const s = Script.ready({ initial_credit_bytes: 4096 });
  const id = s.client.open("x");
  assert.throws(() => s.client.send(id, new Uint8Array(4097)), (e: MuxError) => e.kind === "too_large");
  s.accept(id, { max: 10 });
  assert.throws(() => s.client.send(id, new Uint8Array(11)), (e: MuxError) => e.kind === "too_large");
});

test("received fragments are reassembled and credit returns as the application consumes", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.accept(id);
  s.takeEvents();
  s.send(data(id, 2000, false), data(id, 500, true));
  const [ev] = s.takeEvents();
  assert.equal(ev?.type, "message");
  assert.equal((ev as { data: Uint8Array }).data.length, 2500);
  for (let i = 0; i < 15; i++) s.send(data(id, 1));
  assert.equal(s.takeEvents().length, 15);
  for (let i = 0; i < 15; i++) s.client.consumed(id, 1);
  assert.deepEqual(s.drain().filter((f) => f.type === "CREDIT"), [], "under a quarter window and messages held");
  s.client.consumed(id, 2500);
  assert.deepEqual(s.drain().filter((f) => f.type === "CREDIT"), [{ type: "CREDIT", session_id: id, messages: 16, bytes: 2515 }]);
});

test("credit is announced when a partial message leaves the server short (rule 2)", () => {
  const s = Script.ready({}, { settings: { initial_credit_bytes: 4096, max_message_size: 4096 } });
  const id = s.client.open("x");
  s.accept(id);
  s.send(data(id, 100));
  s.takeEvents();
  s.client.consumed(id, 100);
  s.send(data(id, 3500, false));
  const credit = s.drain().filter((f) => f.type === "CREDIT");
  assert.deepEqual(credit, [{ type: "CREDIT", session_id: id, messages: 1, bytes: 100 }]);
});

test("hostile: DATA beyond credit is RESET 4004", () => {
  const s = Script.ready({}, { settings: { initial_credit_messages: 4 } });
  const id = s.client.open("x");
  s.accept(id);
  for (let i = 0; i < 4; i++) s.send(data(id, 1));
  s.send(data(id, 1));
  s.expectReset(id, 4004);
  assert.ok(s.events.some((e) => e.type === "closed" && e.code === 4004));
  assert.equal(s.client.closeCode, null, "the connection lives");
});

test("hostile: DATA over the session maximum and beyond credit is RESET 1009, not 4004", () => {
  const s = Script.ready({}, { settings: { initial_credit_bytes: 4096, max_message_size: 4096 } });
  const id = s.client.open("x");
  s.accept(id);
  s.send(data(id, 4097));
  s.expectReset(id, 1009);
  assert.equal(s.client.closeCode, null, "the connection lives");
});

test("hostile: an OPEN with the client's parity is conn 1002", () => {
  const s = Script.ready();
  s.send({ type: "OPEN", session_id: 3, kind: "x", auth: new Uint8Array(), request: { max_message_size: 0, messages_per_sec: 0, bytes_per_sec: 0 } });
  s.expectConnClose(1002);
});

test("a server-opened session is refused with RESET 4003; a repeated ID is conn 1002", () => {
  const s = Script.ready();
  const open: Frame = { type: "OPEN", session_id: 2, kind: "x", auth: new Uint8Array(), request: { max_message_size: 0, messages_per_sec: 0, bytes_per_sec: 0 } };
  s.send(open);
  s.expectReset(2, 4003);
  s.send(open);
  s.expectConnClose(1002);
});

test("hostile: frames for never-opened sessions are conn 4005", () => {
  for (const id of [7, 4]) {
    const s = Script.ready();
    s.client.open("x");
    s.send(data(id, 1));
    s.expectConnClose(4005);
  }
});

test("hostile: DATA over the client's MAX_FRAME_SIZE is conn 1009", () => {
  const s = Script.ready({}, { settings: { max_frame_size: 1024 } });
  const id = s.client.open("x");
  s.accept(id);
  s.send(data(id, 1025));
  s.expectConnClose(1009);
});

test("hostile: a message over the session maximum is RESET 1009", () => {
  const s = Script.ready({}, { settings: { max_message_size: 2048 } });
  const id = s.client.open("x");
  s.accept(id);
  s.send(data(id, 2048, false), data(id, 1, true));
  s.expectReset(id, 1009);
});

test("hostile: invalid UTF-8 in a CLOSE reason is conn 1007", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  const close = encodeMessage([{ type: "CLOSE", session_id: id, code: 1000, retry_after_ms: 0, reason: "ab" }]);
  close[close.length - 1] = 0xff;
  s.raw(close);
  s.expectConnClose(1007);
});

test("hostile: malformed, text, early and repeated frames", () => {
  let s = Script.ready();
  s.raw(new Uint8Array([0x1b, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  s.expectConnClose(1002);
  s = Script.ready();
  s.client.handleText(s.now);
  s.expectConnClose(1003);
  s = new Script();
  s.drain();
  s.send({ type: "PING", session_id: 0, payload: 1n });
  s.expectConnClose(1002);
  s = Script.ready();
  s.send({ type: "SETTINGS", session_id: 0, settings: {} });
  s.expectConnClose(1002);
});

test("hostile: DATA before ACCEPT is RESET 1002; a second ACCEPT too", () => {
  let s = Script.ready();
  let id = s.client.open("x");
  s.send(data(id, 1));
  s.expectReset(id, 1002);
  s = Script.ready();
  id = s.client.open("x");
  s.accept(id);
  s.accept(id);
  s.expectReset(id, 1002);
});

test("hostile: DATA without the RECEIVE permission is RESET 1008", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.accept(id, { permissions: 1 });
  s.send(data(id, 1));
  s.expectReset(id, 1008);
});

test("hostile: a CREDIT overflowing 2^32-1 is RESET 4004", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.send({ type: "CREDIT", session_id: id, messages: 0xffffffff, bytes: 1 });
  s.expectReset(id, 4004);
});

test("hostile: a control-frame flood exhausts the budget: conn 1008", () => {
  const s = Script.ready({}, { settings: { control_budget: 10 } });
  const pings: Frame[] = Array.from({ length: 10 }, (_, i) => ({ type: "PING", session_id: 0, payload: BigInt(i) }));
  s.send(...pings);
  assert.equal(s.client.closeCode, null, "ten within a budget of ten");
  s.send({ type: "PING", session_id: 0, payload: 99n });
  s.expectConnClose(1008);
});

test("at most one PONG pending: the newest PING's payload", () => {
  const s = Script.ready();
  s.send({ type: "PING", session_id: 0, payload: 1n }, { type: "PING", session_id: 0, payload: 2n });
  assert.deepEqual(s.drain(), [{ type: "PONG", session_id: 0, payload: 2n }]);
});

test("keepalive: a PING after the interval, and 4006 when nothing comes back", () => {
  const s = Script.ready();
  s.advance(14_999);
  assert.deepEqual(s.drain(), []);
  s.advance(15_000);
  const ping = s.drain();
  assert.equal(ping[0]?.type, "PING");
  assert.equal(s.client.pollTimeout(), 25_000);
  s.advance();
  s.expectConnClose(4006);
});

test("keepalive: any message from the server is liveness", () => {
  const s = Script.ready();
  s.advance(15_000);
  const [ping] = s.drain();
  s.now = 20_000;
  s.send({ type: "PONG", session_id: 0, payload: (ping as { payload: bigint }).payload });
  s.advance(25_000);
  assert.equal(s.client.closeCode, null);
  assert.equal(s.client.pollTimeout(), 35_000);
});

test("the client PINGs within half the server's IDLE_TIMEOUT_MS of silence", () => {
  const s = Script.ready({ idle_timeout_ms: 8000 });
  assert.equal(s.client.pollTimeout(), 4000);
  s.advance();
  assert.equal(s.drain()[0]?.type, "PING");
});

test("SETTINGS deadline: 4006", () => {
  const s = new Script();
  s.drain();
  s.advance();
  assert.equal(s.now, 10_000);
  s.expectConnClose(4006);
});

test("open deadline: an unanswered OPEN is RESET 4006", () => {
  const s = Script.ready({ idle_timeout_ms: 0 });
  const id = s.client.open("x");
  s.drain();
  s.advance(10_000);
  s.expectReset(id, 4006);
  assert.ok(s.events.some((e) => e.type === "closed" && e.id === id && e.source === "timeout"));
});

test("refused OPEN: RESET carries the code, reason and retry hint", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.send({ type: "RESET", session_id: id, code: 4001, retry_after_ms: 0, reason: "forbidden" });
  assert.deepEqual(s.takeEvents(), [{ type: "closed", id, code: 4001, reason: "forbidden", retryAfterMs: 0, source: "peer" }]);
});

test("late frames on a closed session are discarded", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.accept(id);
  s.client.reset(id, 4010);
  s.drain();
  s.send(data(id, 10), { type: "CREDIT", session_id: id, messages: 1, bytes: 1 }, { type: "CLOSE", session_id: id, code: 1000, retry_after_ms: 0, reason: "" });
  assert.equal(s.client.closeCode, null);
  assert.deepEqual(s.drain(), []);
});

test("GOAWAY: sessions above last_session_id end with 4009, no new opens; raising it is 1002", () => {
  const s = Script.ready();
  const a = s.client.open("a");
  const b = s.client.open("b");
  s.accept(a);
  s.takeEvents();
  s.send({ type: "GOAWAY", session_id: 0, last_session_id: a, code: 1001, reason: "bye" });
  const evs = s.takeEvents();
  assert.deepEqual(evs[0], { type: "goaway", lastSessionId: a, code: 1001, reason: "bye" });
  assert.ok(evs.some((e) => e.type === "closed" && e.id === b && e.code === 4009));
  assert.throws(() => s.client.open("c"), (e: MuxError) => e.kind === "going_away");
  s.client.send(a, new Uint8Array([1]));
  assert.equal(dataFrames(s.drain(), a).length, 1, "sessions at or below continue");
  s.send({ type: "GOAWAY", session_id: 0, last_session_id: b, code: 1001, reason: "" });
  s.expectConnClose(1002);
});

test("CONN_CLOSE from the server ends every session with its code; nothing more is sent", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.takeEvents();
  s.send({ type: "CONN_CLOSE", session_id: 0, code: 1013, retry_after_ms: 500, reason: "busy" });
  assert.deepEqual(s.takeEvents(), [
    { type: "closed", id, code: 1013, reason: "busy", retryAfterMs: 500, source: "peer" },
    { type: "connection_closed", code: 1013, reason: "busy", retryAfterMs: 500, source: "peer" },
  ]);
  assert.equal(s.client.pollTransmit(s.now), null);
});

test("graceful close: queued messages go first, then CLOSE", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.accept(id);
  s.client.send(id, new Uint8Array([1]));
  s.client.close(id, 1000, "done");
  const fs = s.drain().filter((f) => f.session_id === id);
  assert.deepEqual(fs.map((f) => f.type), ["OPEN", "DATA", "CLOSE"]);
});

test("FIN both ways ends the session normally once read", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.accept(id);
  s.client.send(id, new Uint8Array([1]), { fin: true });
  const d = dataFrames(s.drain(), id);
  assert.deepEqual(d.map((f) => [f.end, f.fin]), [[true, true]]);
  s.send(data(id, 2, true, true));
  s.takeEvents();
  assert.equal(s.client.liveSessions, 1, "a message is still held");
  s.client.consumed(id, 2);
  assert.ok(s.takeEvents().some((e) => e.type === "closed" && e.code === 1000));
});

test("a received CLOSE drains the held messages before the session closes", () => {
  const s = Script.ready();
  const id = s.client.open("x");
  s.accept(id);
  s.send(data(id, 3), { type: "CLOSE", session_id: id, code: 4007, retry_after_ms: 0, reason: "" });
  assert.ok(!s.takeEvents().some((e) => e.type === "closed"));
  s.client.consumed(id, 3);
  assert.ok(s.takeEvents().some((e) => e.type === "closed" && e.code === 4007));
});

test("pacer: DATA stays within the granted byte rate on the virtual clock", () => {
  const s = Script.ready({ max_frame_size: 1024 });
  const id = s.client.open("x");
  const rate = 8192;
  const burst = 4096;
  s.accept(id, { rate: { bytes_per_sec: rate, burst_bytes: burst } });
  for (let i = 0; i < 40; i++) s.client.send(id, new Uint8Array(1024));
  let sentBytes = 0;
  const credit = () => s.send({ type: "CREDIT", session_id: id, messages: 64, bytes: 65536 });
  credit();
  while (sentBytes < 40 * 1024) {
    const n = dataFrames(s.drain(), id).reduce((a, f) => a + f.payload.length, 0);
    sentBytes += n;
    assert.ok(sentBytes <= (rate * s.now) / 1000 + burst, `${sentBytes} bytes by ${s.now} ms`);
    s.advance();
  }
  assert.ok(s.now >= ((40 * 1024 - burst) * 1000) / rate, "the pacer held the sender back");
});

test("control frames are paced within half the server's CONTROL_BUDGET", () => {
  const s = Script.ready({ control_budget: 4 });
  for (let i = 0; i < 5; i++) s.client.open("k" + i);
  const opens = s.drain().filter((f) => f.type === "OPEN");
  assert.equal(opens.length, 2);
  s.advance();
  assert.ok(s.drain().filter((f) => f.type === "OPEN").length >= 1);
});

test("a control frame waiting for the budget holds back only the DATA of a session whose OPEN it is", () => {
  // Budget 2: the client may send one control frame at once, then one per 500 ms.
  const s = Script.ready({ control_budget: 2 });
  const a = s.client.open("a");
  assert.deepEqual(s.drain().map((f) => f.type), ["OPEN"]);
  s.accept(a);
  const b = s.client.open("b");
  s.client.send(a, new Uint8Array([1]));
  s.client.send(b, new Uint8Array([2]));
  assert.deepEqual(s.drain().map((f) => [f.type, f.session_id]), [["DATA", a]], "b's OPEN waits, and so does b's DATA");
  s.advance();
  assert.deepEqual(s.drain().map((f) => [f.type, f.session_id]), [["OPEN", b], ["DATA", b]]);
  // A CREDIT waiting for the budget holds no DATA back.
  for (let i = 0; i < 16; i++) s.send(data(a, i));
  for (let i = 0; i < 16; i++) s.client.consumed(a, 1);
  s.client.send(a, new Uint8Array([3]));
  assert.deepEqual(s.drain().map((f) => f.type), ["DATA"], "the CREDIT waits for the budget, the DATA does not");
  s.advance();
  assert.deepEqual(s.drain().map((f) => [f.type, f.session_id]), [["CREDIT", a]]);
});

test("coalescing: frames ready together share one transport message", () => {
  const s = Script.ready();
  s.client.open("a");
  s.client.open("b");
  const before = s.messages.length;
  s.drain();
  assert.equal(s.messages.length - before, 1);
});

test("DRR: a small message is not stuck behind a large one", () => {
  const s = Script.ready({ max_frame_size: 1024, initial_credit_bytes: 1 << 20, max_message_size: 1 << 20 });
  const big = s.client.open("big");
  const small = s.client.open("small");
  s.accept(big, { max: 1 << 20 });
  s.accept(small);
  s.drain();
  s.client.send(big, new Uint8Array(200 * 1024));
  s.client.send(small, new Uint8Array(10));
  const order = dataFrames(s.drain()).map((f) => f.session_id);
  assert.ok(order.indexOf(small) <= 1, `small at ${order.indexOf(small)}`);
});

test("the core never reads a clock: the same inputs give the same outputs", () => {
  const run = () => {
    const c = new Connection(5);
    const out: string[] = [];
    const pull = () => { for (let m = c.pollTransmit(); m; m = c.pollTransmit()) out.push(Buffer.from(m).toString("hex")); };
    pull();
    c.handleMessage(encodeMessage([{ type: "SETTINGS", session_id: 0, settings: {} }]), 6);
    c.open("x");
    c.handleTimeout(20_000);
    pull();
    return out;
  };
  assert.deepEqual(run(), run());
});

test("hostile: a DATA header over MAX_FRAME_SIZE is 1009 before its payload is waited for", () => {
  const s = Script.ready({}, { settings: { max_frame_size: 2048 } });
  s.client.open("x");
  s.raw(new Uint8Array([0x10, 0x01, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]));
  s.expectConnClose(1009);
});
