// Runner for the language-neutral conformance scenarios (spec/scenarios/README.md): every
// `*.json` in <spec>/scenarios is read; `side: "client"` scenarios drive this client core from
// the scripted raw peer on a virtual clock. Server-side scenarios do not apply to a client and
// are reported as skipped. MUX_SPEC_DIR points at another spec/ checkout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Frame } from "../src/codec/index.js";
import type { CoreEvent } from "../src/core/index.js";
import { Script } from "./harness.js";
import { SPEC_DIR, frameFromJson, frameToJson, unhex, type Json } from "./vectors.js";

export interface Scenario {
  name: string; description: string; covers?: string[]; side: "server" | "client";
  limits?: Record<string, number>; peer_settings?: Record<string, number>; steps: Json[];
}

const SETTING_KEYS = ["max_frame_size", "max_sessions", "initial_credit_messages", "initial_credit_bytes", "max_message_size", "control_budget", "max_open_metadata"];

/** Whether every key of `pattern` matches the frame's JSON form exactly. */
function matches(frame: Frame, pattern: Json): boolean {
  const j = frameToJson(frame);
  return Object.entries(pattern).every(([k, v]) => JSON.stringify(j[k]) === JSON.stringify(v));
}

function eventMatches(e: CoreEvent, p: Json): boolean {
  if (e.type !== p.event) return false;
  if (p.id !== undefined && (e as { id?: number }).id !== p.id) return false;
  if (p.code !== undefined && (e as { code?: number }).code !== p.code) return false;
  return true;
}

export function runScenario(sc: Scenario): void {
  assert.equal(sc.side, "client");
  const settings: Record<string, number> = {};
  for (const [k, v] of Object.entries(sc.limits ?? {})) {
    if (SETTING_KEYS.includes(k)) settings[k] = v;
  }
  // Keepalive off, as the scenarios' endpoint starts.
  const s = new Script({ settings, keepaliveIntervalMs: Number.MAX_SAFE_INTEGER / 4 });
  const own = s.drain();
  assert.equal(own[0]?.type, "SETTINGS", "the client's first frame is SETTINGS");
  own.shift();
  let sent: Frame[] = [...own];
  const events: CoreEvent[] = [];
  const pull = () => { sent.push(...s.drain()); events.push(...s.events.splice(0)); };
  if (sc.peer_settings) s.send({ type: "SETTINGS", session_id: 0, settings: sc.peer_settings });
  pull();
  events.splice(0, events.findIndex((e) => e.type === "ready") + 1);
  sc.steps.forEach((step, i) => {
    const ctx = `${sc.name} step ${i} ${JSON.stringify(step).slice(0, 80)}`;
    const [key] = Object.keys(step);
    const v = step[key as string];
    switch (key) {
      case "send": s.send(...(v as Json[]).map(frameFromJson)); break;
      case "send_hex": s.raw(unhex(v as string)); break;
      case "advance_ms": s.advance(s.now + (v as number)); break;
      case "read":
        for (const e of [...events]) if (e.type === "message" && e.id === v) s.client.consumed(e.id, e.data.length);
        break;
      case "expect": {
        const want = v as Json[];
        const got = sent.splice(0, want.length);
        assert.equal(got.length, want.length, `${ctx}: sent ${got.map((f) => f.type)}`);
        got.forEach((f, k) => assert.ok(matches(f, want[k] as Json), `${ctx}: frame ${k} ${JSON.stringify(frameToJson(f))}`));
        break;
      }
      case "expect_nothing": assert.deepEqual(sent.map((f) => f.type), [], ctx); break;
      case "expect_conn_close": {
        const last = sent[sent.length - 1];
        assert.ok(last && last.type === "CONN_CLOSE" && (last as { code: number }).code === v, `${ctx}: sent ${sent.map((f) => f.type)}`);
        sent = [];
        break;
      }
      case "expect_event": {
        const idx = events.findIndex((e) => eventMatches(e, v as Json));
        assert.ok(idx >= 0, `${ctx}: events ${JSON.stringify(events.map((e) => e.type))}`);
        events.splice(0, idx + 1);
        break;
      }
      default: assert.fail(`${ctx}: step not supported by the client runner`);
    }
    pull();
  });
}

const dir = join(SPEC_DIR, "scenarios");
const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".json")).sort() : [];
for (const f of files) {
  const sc = JSON.parse(readFileSync(join(dir, f), "utf8")) as Scenario;
  test(`scenario ${sc.name}`, { skip: sc.side !== "client" ? `side ${sc.side}: not a client scenario` : false }, () => {
    assert.equal(sc.name + ".json", f);
    runScenario(sc);
  });
}

// The runner itself, on client scenarios written in the same format.
test("runner: a client scenario of hostile input passes", () => {
  runScenario({
    name: "own-parity", description: "", side: "client", peer_settings: {},
    steps: [
      { send: [{ type: "OPEN", session_id: 1, request: { max_message_size: 0, messages_per_sec: 0, bytes_per_sec: 0 }, kind: "a", auth: "" }] },
      { expect_conn_close: 1002 },
      { expect_event: { event: "connection_closed", code: 1002 } },
    ],
  });
  runScenario({
    name: "server-open-refused", description: "", side: "client", peer_settings: {},
    steps: [
      { send: [{ type: "OPEN", session_id: 2, request: { max_message_size: 0, messages_per_sec: 0, bytes_per_sec: 0 }, kind: "a", auth: "" }] },
      { expect: [{ type: "RESET", session_id: 2, code: 4003 }] },
      { expect_nothing: true },
    ],
  });
});

test("runner: a scenario whose expectation is wrong fails", () => {
  assert.throws(() => runScenario({
    name: "wrong", description: "", side: "client", peer_settings: {},
    steps: [{ send_hex: "100100000001ffffffff" }, { expect_conn_close: 1002 }],
  }));
});
