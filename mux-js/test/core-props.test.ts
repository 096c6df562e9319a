// Property: the core reacts to frames the same whether they arrive batched or one per message.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import type { Frame } from "../src/codec/index.js";
import { Script } from "./harness.js";

const serverFrame = (id: number): fc.Arbitrary<Frame> => fc.oneof(
  fc.uint8Array({ maxLength: 3000 }).map((payload) => ({ type: "DATA" as const, session_id: id, end: true, fin: false, payload })),
  fc.uint8Array({ minLength: 1024, maxLength: 1500 }).map((payload) => ({ type: "DATA" as const, session_id: id, end: false, fin: false, payload })),
  fc.record({ messages: fc.integer({ min: 0, max: 5 }), bytes: fc.integer({ min: 1, max: 5000 }) }).map((c) => ({ type: "CREDIT" as const, session_id: id, ...c })),
  fc.bigInt({ min: 0n, max: 1000n }).map((payload) => ({ type: "PING" as const, session_id: 0 as const, payload })),
);

function run(frames: Frame[], batched: boolean, consume: boolean): unknown {
  const s = Script.ready({ initial_credit_messages: 4 }, { settings: { initial_credit_messages: 8, initial_credit_bytes: 8192, max_message_size: 8192 } });
  const id = s.client.open("x");
  s.accept(id);
  for (let i = 0; i < 6; i++) s.client.send(id, new Uint8Array(100 + i));
  if (batched) { if (frames.length) s.send(...frames); }
  else for (const f of frames) s.send(f);
  const evs = s.takeEvents();
  if (consume) for (const e of evs) if (e.type === "message") s.client.consumed(e.id, e.data.length);
  return { evs, sent: s.drain(), all: s.sent.filter((f) => f.type !== "SETTINGS"), code: s.client.closeCode };
}

test("property: batched and one-frame-per-message input give the same events and output", () => {
  fc.assert(fc.property(fc.array(serverFrame(1), { maxLength: 12 }), fc.boolean(), (frames, consume) => {
    const a = run(frames, true, consume) as { all: Frame[] };
    const b = run(frames, false, consume) as { all: Frame[] };
    assert.deepEqual(a, b);
  }), { numRuns: 300 });
});

test("property: the client never sends DATA beyond the credit the server granted", () => {
  fc.assert(fc.property(fc.array(fc.record({ messages: fc.integer({ min: 0, max: 3 }), bytes: fc.integer({ min: 1, max: 3000 }) }), { maxLength: 10 }), (credits) => {
    const s = Script.ready({ initial_credit_messages: 2, initial_credit_bytes: 2048, max_frame_size: 1024 });
    const id = s.client.open("x");
    s.accept(id, { max: 2048 });
    for (let i = 0; i < 10; i++) s.client.send(id, new Uint8Array(1500));
    let msgs = 2, bytes = 2048;
    const check = () => {
      for (const f of s.drain()) if (f.type === "DATA") {
        bytes -= f.payload.length;
        assert.ok(bytes >= 0, "byte credit overrun");
        assert.ok(f.end || f.payload.length >= 1024, "short non-final fragment");
        assert.ok(f.payload.length <= 1024, "over MAX_FRAME_SIZE");
      }
    };
    const starts = () => s.sent.filter((f) => f.type === "DATA").reduce((n, f, i, all) => {
      const prev = all.slice(0, i).filter((g) => g.session_id === f.session_id).pop() as Extract<Frame, { type: "DATA" }> | undefined;
      return n + (prev === undefined || prev.end ? 1 : 0);
    }, 0);
    check();
    for (const c of credits) {
      s.send({ type: "CREDIT", session_id: id, ...c });
      msgs += c.messages; bytes += c.bytes;
      check();
      assert.ok(starts() <= msgs, "message credit overrun");
    }
  }), { numRuns: 300 });
});
