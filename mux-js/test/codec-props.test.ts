// Property tests of the codec: round trips, and split/batch invariance.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { decodeMessage, encodeMessage, type Frame } from "../src/codec/index.js";

// fc.record builds null-prototype objects; compare as plain ones.
const plain = <T>(x: T): T => structuredClone(x);
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const sid = fc.integer({ min: 1, max: 0xffffffff });
const code = fc.constantFrom(1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1013, 3000, 4000, 4009, 4999);
const reason = fc.string({ maxLength: 30 }).filter((s) => new TextEncoder().encode(s).length <= 123);
const bytes = (max: number) => fc.uint8Array({ maxLength: max });

const dataFrame: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({ session_id: sid, payload: bytes(64) }).map(({ session_id, payload }) => ({ type: "DATA" as const, session_id, end: true, fin: false, payload })),
  fc.record({ session_id: sid, payload: bytes(64) }).map(({ session_id, payload }) => ({ type: "DATA" as const, session_id, end: true, fin: true, payload })),
  fc.record({ session_id: sid, payload: fc.uint8Array({ minLength: 1024, maxLength: 1100 }) }).map(({ session_id, payload }) => ({ type: "DATA" as const, session_id, end: false, fin: false, payload })),
  sid.map((session_id) => ({ type: "DATA" as const, session_id, end: false, fin: true, payload: new Uint8Array(0) })),
);

export const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  dataFrame,
  fc.record({
    session_id: sid, kind: fc.string({ maxLength: 40 }).filter((s) => new TextEncoder().encode(s).length <= 255), auth: bytes(40),
    request: fc.record({ max_message_size: u32, messages_per_sec: u32, bytes_per_sec: u32 }),
  }).map((o) => ({ type: "OPEN" as const, ...o })),
  fc.record({
    session_id: sid, permissions: fc.integer({ min: 0, max: 3 }), max_message_size: fc.integer({ min: 1, max: 0xffffffff }),
    rate: fc.record({ messages_per_sec: u32, bytes_per_sec: u32, burst_messages: u32, burst_bytes: u32 }),
  }).map((o) => ({ type: "ACCEPT" as const, ...o })),
  fc.record({ session_id: sid, messages: u32, bytes: u32 }).filter((c) => c.messages + c.bytes > 0).map((o) => ({ type: "CREDIT" as const, ...o })),
  fc.record({ t: fc.constantFrom("CLOSE" as const, "RESET" as const), session_id: sid, code, retry_after_ms: u32, reason })
    .map(({ t, ...o }) => ({ type: t, ...o })),
  fc.record({ code, retry_after_ms: u32, reason }).map((o) => ({ type: "CONN_CLOSE" as const, session_id: 0, ...o })),
  fc.record({
    max_frame_size: fc.option(fc.integer({ min: 1024, max: 16777216 }), { nil: undefined }),
    max_sessions: fc.option(u32, { nil: undefined }),
    initial_credit_bytes: fc.option(fc.integer({ min: 1024, max: 0xffffffff }), { nil: undefined }),
    idle_timeout_ms: fc.option(u32, { nil: undefined }),
  }).map((m) => ({ type: "SETTINGS" as const, session_id: 0 as const, settings: Object.fromEntries(Object.entries(m).filter(([, v]) => v !== undefined)) })),
  fc.record({ t: fc.constantFrom("PING" as const, "PONG" as const), payload: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }).map(({ t, payload }) => ({ type: t, session_id: 0 as const, payload })),
  fc.record({ last_session_id: u32, code, reason }).map((o) => ({ type: "GOAWAY" as const, session_id: 0 as const, ...o })),
);

test("property: every frame round-trips through encode and decode", () => {
  fc.assert(fc.property(frameArb, (f) => {
    const { frames, error } = decodeMessage(encodeMessage([f]));
    assert.equal(error, undefined);
    assert.deepEqual(frames, plain([f]));
  }), { numRuns: 2000 });
});

test("property: batching is invariant: one message of many frames decodes as the frames one by one", () => {
  fc.assert(fc.property(fc.array(frameArb, { minLength: 1, maxLength: 12 }), (fs) => {
    const batched = decodeMessage(encodeMessage(fs));
    assert.equal(batched.error, undefined);
    const single = fs.flatMap((f) => decodeMessage(encodeMessage([f])).frames);
    assert.deepEqual(batched.frames, single);
    assert.deepEqual(batched.frames, plain(fs));
  }), { numRuns: 500 });
});

test("property: splitting is invariant: a message cut anywhere keeps exactly the whole frames before the cut", () => {
  fc.assert(fc.property(fc.array(frameArb, { minLength: 1, maxLength: 6 }), fc.nat(), (fs, cutSeed) => {
    const whole = encodeMessage(fs);
    const cut = 1 + (cutSeed % whole.length);
    const { frames, error } = decodeMessage(whole.subarray(0, cut));
    let off = 0;
    let n = 0;
    for (const f of fs) {
      const len = encodeMessage([f]).length;
      if (off + len > cut) break;
      off += len;
      n++;
    }
    assert.deepEqual(frames, plain(fs.slice(0, n)));
    assert.equal(error === undefined, off === cut);
    if (error) assert.equal(error.close_code, 1002);
  }), { numRuns: 1000 });
});

test("property: arbitrary bytes never throw; they decode or report a 1002/1007 error", () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
    const { frames, error } = decodeMessage(b);
    if (error) assert.ok(error.close_code === 1002 || error.close_code === 1007);
    else assert.deepEqual(decodeMessage(encodeMessage(frames)).frames, frames);
  }), { numRuns: 3000 });
});
