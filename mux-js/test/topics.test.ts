import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeTopicEvent, Presence, TopicEventError, topicEvents } from "../src/topics.js";
import { connectReconnecting } from "../src/index.js";

const u = (...b: number[]) => new Uint8Array(b);
const snapshot = (truncated: boolean, ...members: string[]) => {
  const parts = members.flatMap((m) => { const b = new TextEncoder().encode(m); return [b.length, ...b]; });
  return u(4, truncated ? 1 : 0, members.length >> 8, members.length & 0xff, ...parts);
};

test("topic events decode into typed objects", () => {
  assert.deepEqual(decodeTopicEvent(u(0, 9, 8)), { type: "message", payload: u(9, 8) });
  assert.deepEqual(decodeTopicEvent(u(1, 0, 0, 0, 0, 0, 0, 1, 2)), { type: "gap", missed: 258n });
  assert.deepEqual(decodeTopicEvent(u(2, 0x61)), { type: "join", member: "a" });
  assert.deepEqual(decodeTopicEvent(u(3, 0x62)), { type: "leave", member: "b" });
  assert.deepEqual(decodeTopicEvent(snapshot(true, "ann", "bo")), { type: "snapshot", truncated: true, members: ["ann", "bo"] });
  assert.equal(decodeTopicEvent(u(5, 1, 2)), null, "unknown tags are ignored");
});

test("malformed topic events are the server's fault", () => {
  for (const bad of [u(), u(1, 0), u(2, 0xff), u(4, 0, 0, 2, 1, 0x61), u(4, 0, 0, 1, 1, 0x61, 0x62), u(4, 0)]) {
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
  for (let i = 0; i < 64; i++) ws.deliver({ type: "DATA", session_id: 1, end: true, fin: false, payload: u(0, i) });
  await flush();
  assert.equal(n, 64);
  const credit = ws.frames().filter((f) => f.type === "CREDIT").reduce((a, f) => a + (f as { messages: number }).messages, 0);
  assert.equal(credit, 64, "every message read was returned");
  rc.close();
});
