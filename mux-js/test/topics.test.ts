import { test } from "node:test";
import assert from "node:assert/strict";
import { advance, decodeTopicEvent, parseTopicKind, Presence, subscribeTopic, TopicEventError, topicEvents, topicKind, type StreamPosition, type TopicEvent } from "../src/topics.js";
import { connectReconnecting } from "../src/index.js";
import type { Frame } from "../src/codec/index.js";
import { SPEC_DIR, hex, unhex } from "./vectors.js";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const u = (...b: number[]) => new Uint8Array(b);
const be64 = (n: bigint) => { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, n); return [...b]; };
/** A message event at `offset`; a gap of `n` (null: unknown); a position. */
const msg = (offset: number, ...payload: number[]) => u(0, ...be64(BigInt(offset)), ...payload);
const gap = (n: number | null) => u(1, ...be64(n === null ? 0xffff_ffff_ffff_ffffn : BigInt(n)));
const pos = (epoch: string, offset: number) => u(5, ...be64(BigInt("0x" + epoch)), ...be64(BigInt(offset)));
const snapshot = (truncated: boolean, ...members: string[]) => {
  const parts = members.flatMap((m) => { const b = new TextEncoder().encode(m); return [b.length, ...b]; });
  return u(4, truncated ? 1 : 0, members.length >> 8, members.length & 0xff, ...parts);
};

test("topic events decode into typed objects", () => {
  assert.deepEqual(decodeTopicEvent(msg(3, 9, 8)), { type: "message", offset: 3n, payload: u(9, 8) });
  assert.deepEqual(decodeTopicEvent(u(1, 0, 0, 0, 0, 0, 0, 1, 2)), { type: "gap", missed: 258n });
  assert.deepEqual(decodeTopicEvent(gap(null)), { type: "gap", missed: null });
  assert.deepEqual(decodeTopicEvent(pos("00000000c0ffee00", 7)), { type: "position", epoch: "00000000c0ffee00", offset: 7n });
  assert.deepEqual(decodeTopicEvent(u(2, 0x61)), { type: "join", member: "a" });
  assert.deepEqual(decodeTopicEvent(u(3, 0x62)), { type: "leave", member: "b" });
  assert.deepEqual(decodeTopicEvent(snapshot(true, "ann", "bo")), { type: "snapshot", truncated: true, members: ["ann", "bo"] });
  assert.equal(decodeTopicEvent(u(6, 1, 2)), null, "unknown tags are ignored");
});

test("malformed topic events are the server's fault", () => {
  for (const bad of [u(), u(0, 1), u(1, 0), u(2, 0xff), u(4, 0, 0, 2, 1, 0x61), u(4, 0, 0, 1, 1, 0x61, 0x62), u(4, 0), u(5, 0)]) {
    assert.throws(() => decodeTopicEvent(bad), TopicEventError, `${[...bad]}`);
  }
});

test("presence: a snapshot per subscription replaces the set; joins and leaves apply", () => {
  const p = new Presence();
  const log: string[] = [];
  p.addEventListener("join", (e) => log.push("+" + (e as CustomEvent).detail));
  p.addEventListener("leave", (e) => log.push("-" + (e as CustomEvent).detail));
  p.apply(decodeTopicEvent(snapshot(false, "a", "b"))!);
  p.apply(decodeTopicEvent(u(2, 0x63))!);
  p.apply(decodeTopicEvent(u(3, 0x61))!);
  assert.deepEqual([...p.members].sort(), ["b", "c"]);
  // After a reconnect the new subscription's snapshot is the truth: d joined, b and c left meanwhile.
  p.apply(decodeTopicEvent(snapshot(false, "c", "d"))!);
  assert.deepEqual([...p.members].sort(), ["c", "d"]);
  assert.deepEqual(log, ["+a", "+b", "+c", "-a", "-b", "+d"]);
  assert.equal(p.apply({ type: "join", member: "c" }), false, "a repeated join changes nothing");
});

import { Clock, FakeSocket } from "./fakes.js";

test("presence across a reconnect: the new subscription's snapshot replaces the set", async () => {
  const flush = async () => { for (let i = 0; i < 6; i++) await new Promise<void>((r) => setImmediate(r)); };
  const clock = new Clock();
  FakeSocket.all = [];
  const rc = connectReconnecting("ws://x/", { WebSocket: FakeSocket, clock: () => clock.now, timers: clock.timers, random: () => 0 });
  const accept = { type: "ACCEPT" as const, session_id: 1, permissions: 2, max_message_size: 65536, rate: { messages_per_sec: 0, bytes_per_sec: 0, burst_messages: 0, burst_bytes: 0 } };
  const serve = async (ws: FakeSocket, id: number, ...msgs: Uint8Array[]) => {
    ws.open();
    ws.deliver({ type: "SETTINGS", session_id: 0, settings: {} });
    await flush();
    ws.deliver({ ...accept, session_id: id });
    await flush();
    for (const m of msgs) ws.deliver({ type: "DATA", session_id: id, end: true, fin: false, payload: m });
    await flush();
  };
  const d = rc.session("lobby");
  const { presence } = topicEvents(d);
  await flush();
  await serve(FakeSocket.all[0]!, 1, snapshot(false, "a", "b"), u(2, 0x63));
  assert.deepEqual([...presence.members].sort(), ["a", "b", "c"]);
  FakeSocket.all[0]!.drop();
  await flush();
  clock.advance(clock.now);
  await flush();
  await serve(FakeSocket.all[1]!, 1, snapshot(false, "b"));
  assert.deepEqual([...presence.members], ["b"]);
});

test("topic messages return credit as they are dispatched", async () => {
  const flush = async () => { for (let i = 0; i < 6; i++) await new Promise<void>((r) => setImmediate(r)); };
  const clock = new Clock();
  FakeSocket.all = [];
  const rc = connectReconnecting("ws://x/", { WebSocket: FakeSocket, clock: () => clock.now, timers: clock.timers });
  const d = rc.session("feed");
  let n = 0;
  topicEvents(d).events.addEventListener("event", () => n++);
  await flush();
  const ws = FakeSocket.all[0]!;
  ws.open();
  ws.deliver({ type: "SETTINGS", session_id: 0, settings: {} });
  await flush();
  ws.deliver({ type: "ACCEPT", session_id: 1, permissions: 2, max_message_size: 65536, rate: { messages_per_sec: 0, bytes_per_sec: 0, burst_messages: 0, burst_bytes: 0 } });
  await flush();
  for (let i = 0; i < 64; i++) ws.deliver({ type: "DATA", session_id: 1, end: true, fin: false, payload: msg(i + 1, i) });
  await flush();
  assert.equal(n, 64);
  const credit = ws.frames().filter((f) => f.type === "CREDIT").reduce((a, f) => a + (f as { messages: number }).messages, 0);
  assert.equal(credit, 64, "every message read was returned");
  rc.close();
});

// ---- spec/vectors/topics/: the same files mux-tokio/tests/topic_vectors.rs reads ----------

type Json = Record<string, unknown>;
const topicVectors = (file: string) =>
  (JSON.parse(readFileSync(join(SPEC_DIR, "vectors", "topics", file), "utf8")) as { vectors: Json[] }).vectors;

/** An event in the vectors' JSON form (u64 as decimal strings, bytes as hex). */
function eventJson(e: TopicEvent | null): Json {
  if (!e) return { type: "unknown" };
  switch (e.type) {
    case "message": return { type: e.type, offset: String(e.offset), payload: hex(e.payload) };
    case "gap": return { type: e.type, missed: e.missed === null ? null : String(e.missed) };
    case "position": return { type: e.type, epoch: e.epoch, offset: String(e.offset) };
    default: return { ...e };
  }
}

test("topic event vectors: every event decodes as listed, every malformed one throws", () => {
  const vectors = topicVectors("events.json");
  assert.ok(vectors.length >= 20);
  for (const v of vectors) {
    const bytes = unhex(v.hex as string);
    if (v.error) {
      assert.equal(v.error, "malformed");
      assert.throws(() => decodeTopicEvent(bytes), TopicEventError, v.name as string);
      continue;
    }
    const expected = { ...(v.event as Json) };
    if (expected.type === "unknown") delete expected.tag; // ignored: the decoder reports null
    assert.deepEqual(eventJson(decodeTopicEvent(bytes)), expected, v.name as string);
  }
});

test("topic kind vectors: kinds parse to their topic and position and print back", () => {
  for (const v of topicVectors("kinds.json")) {
    const kind = v.kind as string;
    assert.equal(hex(new TextEncoder().encode(kind)), v.kind_hex, v.name as string);
    if (v.error) {
      assert.throws(() => parseTopicKind(kind), RangeError, v.name as string);
      continue;
    }
    const { topic, resume } = parseTopicKind(kind);
    assert.equal(topic, v.topic);
    assert.deepEqual(resume && { epoch: resume.epoch, offset: String(resume.offset) }, v.resume, v.name as string);
    assert.equal(topicKind(topic, resume), kind, `${v.name as string} prints back`);
  }
  assert.throws(() => topicKind("a\0b"), RangeError);
  assert.throws(() => topicKind("t".repeat(218)), RangeError);
});

test("the position follows the events: a position sets it, a message its offset, a known gap adds", () => {
  let p: StreamPosition | null = null;
  p = advance(p, { type: "message", offset: 4n, payload: u() });
  assert.equal(p, null, "no position before the first position event");
  for (const e of [pos("00000000000000aa", 2), msg(3), gap(4), msg(8), gap(null), u(2, 0x61)]) p = advance(p, decodeTopicEvent(e)!);
  assert.deepEqual(p, { epoch: "00000000000000aa", offset: 8n });
});

// ---- resume on reconnect, against fake sockets on the virtual clock -----------------------

const EPOCH = "00000000c0ffee00";

function resumeSetup() {
  const flush = async () => { for (let i = 0; i < 6; i++) await new Promise<void>((r) => setImmediate(r)); };
  const clock = new Clock();
  FakeSocket.all = [];
  const rc = connectReconnecting("ws://x/", { WebSocket: FakeSocket, clock: () => clock.now, timers: clock.timers, random: () => 0 });
  const accept = (id: number): Frame => ({ type: "ACCEPT", session_id: id, permissions: 2, max_message_size: 65536, rate: { messages_per_sec: 0, bytes_per_sec: 0, burst_messages: 0, burst_bytes: 0 } });
  /** The kinds of the OPENs the client sent on `ws` since the last look. */
  const opens = (ws: FakeSocket) => ws.frames().filter((f) => f.type === "OPEN").map((f) => ({ id: f.session_id, kind: (f as { kind: string }).kind }));
  const connect = async (ws: FakeSocket) => { ws.open(); ws.deliver({ type: "SETTINGS", session_id: 0, settings: {} }); await flush(); };
  const deliver = async (ws: FakeSocket, id: number, ...msgs: Uint8Array[]) => {
    for (const m of msgs) ws.deliver({ type: "DATA", session_id: id, end: true, fin: false, payload: m });
    await flush();
  };
  const reconnect = async () => {
    FakeSocket.all[FakeSocket.all.length - 1]!.drop();
    await flush();
    clock.advance(clock.now);
    await flush();
    const ws = FakeSocket.all[FakeSocket.all.length - 1]!;
    await connect(ws);
    return ws;
  };
  return { rc, flush, accept, opens, connect, deliver, reconnect };
}

/** Every event the application sees, in order. */
function record(t: { events: EventTarget }): TopicEvent[] {
  const seen: TopicEvent[] = [];
  t.events.addEventListener("event", (e) => seen.push((e as CustomEvent<TopicEvent>).detail));
  return seen;
}

test("after a reconnect the topic re-opens with its last position and the application sees no gap", async () => {
  const { rc, flush, accept, opens, connect, deliver, reconnect } = resumeSetup();
  const news = subscribeTopic(rc, "news");
  const seen = record(news);
  await flush();
  const first = FakeSocket.all[0]!;
  await connect(first);
  assert.deepEqual(opens(first), [{ id: 1, kind: "news" }], "a fresh subscription");
  first.deliver(accept(1));
  await deliver(first, 1, pos(EPOCH, 0), msg(1, 0xa), msg(2, 0xb), msg(3, 0xc));
  assert.deepEqual(news.position, { epoch: EPOCH, offset: 3n });
  const second = await reconnect();
  assert.deepEqual(opens(second), [{ id: 1, kind: `news\0${EPOCH}:3` }], "resumes after offset 3");
  second.deliver(accept(1));
  // The server replays 4 and 5 from its history.
  await deliver(second, 1, pos(EPOCH, 3), msg(4, 0xd), msg(5, 0xe));
  const messages = seen.filter((e) => e.type === "message").map((e) => (e as { offset: bigint }).offset);
  assert.deepEqual(messages, [1n, 2n, 3n, 4n, 5n], "every message once, in order");
  assert.ok(!seen.some((e) => e.type === "gap"), "no gap");
  assert.deepEqual(news.position, { epoch: EPOCH, offset: 5n });
  rc.close();
});

test("a gap the server reported is part of the position: the resume does not ask for it again", async () => {
  const { rc, flush, accept, opens, connect, deliver, reconnect } = resumeSetup();
  const news = subscribeTopic(rc, "news", { from: { epoch: EPOCH, offset: 10n } });
  await flush();
  const first = FakeSocket.all[0]!;
  await connect(first);
  assert.deepEqual(opens(first), [{ id: 1, kind: `news\0${EPOCH}:10` }], "resumes the saved position");
  first.deliver(accept(1));
  await deliver(first, 1, pos(EPOCH, 10), gap(50), msg(61));
  const second = await reconnect();
  assert.deepEqual(opens(second), [{ id: 1, kind: `news\0${EPOCH}:61` }]);
  rc.close();
});

test("a slow consumer reset with 4008 re-opens at once on the same connection, from its position", async () => {
  const { rc, flush, accept, opens, connect, deliver } = resumeSetup();
  const news = subscribeTopic(rc, "news");
  await flush();
  const ws = FakeSocket.all[0]!;
  await connect(ws);
  opens(ws);
  ws.deliver(accept(1));
  await deliver(ws, 1, pos(EPOCH, 0), msg(1), msg(2));
  ws.deliver({ type: "RESET", session_id: 1, code: 4008, retry_after_ms: 0, reason: "subscriber too slow" });
  await flush();
  assert.deepEqual(opens(ws), [{ id: 3, kind: `news\0${EPOCH}:2` }]);
  assert.equal(FakeSocket.all.length, 1, "no new connection");
  ws.deliver(accept(3));
  await deliver(ws, 3, pos(EPOCH, 2), msg(3));
  assert.deepEqual(news.position, { epoch: EPOCH, offset: 3n });
  rc.close();
});

test("a new epoch after the reconnect is one gap of unknown count, then what the new stream holds", async () => {
  const { rc, flush, accept, opens, connect, deliver, reconnect } = resumeSetup();
  const news = subscribeTopic(rc, "news");
  const seen = record(news);
  await flush();
  const first = FakeSocket.all[0]!;
  await connect(first);
  opens(first);
  first.deliver(accept(1));
  await deliver(first, 1, pos(EPOCH, 0), msg(1));
  const second = await reconnect();
  assert.deepEqual(opens(second), [{ id: 1, kind: `news\0${EPOCH}:1` }]);
  second.deliver(accept(1));
  const other = "0000000000000bee";
  await deliver(second, 1, pos(other, 4), gap(null), msg(5));
  assert.deepEqual(seen.slice(-3), [
    { type: "position", epoch: other, offset: 4n },
    { type: "gap", missed: null },
    { type: "message", offset: 5n, payload: u() },
  ]);
  assert.deepEqual(news.position, { epoch: other, offset: 5n });
  rc.close();
});
