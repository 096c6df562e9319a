// Runner for the language-neutral conformance scenarios (spec/scenarios/README.md): every
// `*.json` in <spec>/scenarios is read; `side: "client"` scenarios drive this client core from
// the scripted raw peer on a virtual clock. Server-side scenarios do not apply to a client and
// are reported as skipped. MUX_SPEC_DIR points at another spec/ checkout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Frame } from "../src/codec/index.js";
import type { CoreConfig, CoreEvent } from "../src/core/index.js";
import { Script } from "./harness.js";
import { SPEC_DIR, frameFromJson, frameToJson, hex, unhex, type Json } from "./vectors.js";

export interface Scenario {
  name: string; description: string; covers?: string[]; side: "server" | "client";
  limits?: Record<string, number>; timeouts?: Record<string, number>;
  peer_settings?: Record<string, number>; steps: Json[];
}

const SETTING_KEYS = ["max_frame_size", "max_sessions", "initial_credit_messages", "initial_credit_bytes", "max_message_size", "control_budget", "max_open_metadata"];

/** The filler byte of a `payload_len` payload (spec/scenarios/README.md#frames). */
const FILLER = 0x78;
const filler = (n: number): Uint8Array => new Uint8Array(n).fill(FILLER);

/** A scenario frame: the vectors' form, with `payload_len` (DATA) expanded to filler bytes. */
function scenarioFrame(j: Json): Frame {
  if (j.payload_len === undefined) return frameFromJson(j);
  const { payload_len: n, ...rest } = j;
  return frameFromJson({ ...rest, payload: hex(filler(n as number)) });
}

/** A message given as `payload` (hex) or `payload_len` (filler bytes). */
const messageOf = (v: Json): Uint8Array => (v.payload_len !== undefined ? filler(v.payload_len as number) : unhex(v.payload as string));

/** Whether every key of `pattern` matches the frame's JSON form exactly (`payload_len`: its length). */
function matches(frame: Frame, pattern: Json): boolean {
  const j = frameToJson(frame);
  return Object.entries(pattern).every(([k, v]) => k === "payload_len"
    ? typeof j.payload === "string" && j.payload.length / 2 === v
    : JSON.stringify(j[k]) === JSON.stringify(v));
}

function eventMatches(e: CoreEvent, p: Json): boolean {
  if (e.type !== p.event) return false;
  if (p.id !== undefined && (e as { id?: number }).id !== p.id) return false;
  if (p.code !== undefined && (e as { code?: number }).code !== p.code) return false;
  if (p.last_session_id !== undefined && (e as { lastSessionId?: number }).lastSessionId !== p.last_session_id) return false;
  return true;
}

/** The core's configuration for a scenario: its settings (`limits`) and its keepalive (`timeouts`, else off). */
function configOf(sc: Scenario): Partial<CoreConfig> {
  const settings: Record<string, number> = {};
  for (const [k, v] of Object.entries(sc.limits ?? {})) {
    assert.ok(SETTING_KEYS.includes(k), `${sc.name}: limit ${k} does not apply to a client`);
    settings[k] = v;
  }
  const config: Partial<CoreConfig> = { settings, keepaliveIntervalMs: Number.MAX_SAFE_INTEGER / 4 };
  for (const [k, v] of Object.entries(sc.timeouts ?? {})) {
    if (k === "keepalive_interval_ms") config.keepaliveIntervalMs = v;
    else if (k === "keepalive_timeout_ms") config.keepaliveTimeoutMs = v;
    else assert.fail(`${sc.name}: unknown timeout ${k}`);
  }
  return config;
}

/** The endpoint under test and what it has sent, reported and received, not yet expected. */
class Run {
  readonly s: Script;
  sent: Frame[] = [];
  readonly events: CoreEvent[] = [];
  /** Messages received and not yet read by the application, by session, oldest first. */
  readonly unread = new Map<number, Uint8Array[]>();
  connCloseSent = false;

  constructor(sc: Scenario) {
    this.s = new Script(configOf(sc));
    const own = this.s.drain();
    assert.equal(own[0]?.type, "SETTINGS", "the client's first frame is SETTINGS");
    this.take(own.slice(1));
    this.pullEvents();
    if (sc.peer_settings) this.s.send({ type: "SETTINGS", session_id: 0, settings: sc.peer_settings });
    this.pull();
    const ready = this.events.findIndex((e) => e.type === "ready");
    if (ready >= 0) this.events.splice(ready, 1);
  }

  /** Collects transmits and events; a frame after CONN_CLOSE is an error (M-CONN-1). */
  pull(): void {
    this.take(this.s.drain());
    this.pullEvents();
  }

  take(frames: Frame[]): void {
    for (const f of frames) {
      assert.ok(!this.connCloseSent, `sent ${f.type} after CONN_CLOSE`);
      this.connCloseSent = f.type === "CONN_CLOSE";
      this.sent.push(f);
    }
  }

  pullEvents(): void {
    for (const e of this.s.events.splice(0)) {
      this.events.push(e);
      if (e.type === "message") this.unread.set(e.id, [...(this.unread.get(e.id) ?? []), e.data]);
    }
  }

  /** Moves the virtual clock to `to`, firing every deadline on the way at its own time. */
  advance(to: number): void {
    for (let t = this.s.client.pollTimeout(); t !== null && t <= to; t = this.s.client.pollTimeout()) {
      const before = this.s.now;
      this.s.advance(Math.max(this.s.now, t));
      this.pull();
      if (this.s.now === before && this.s.client.pollTimeout() === t) break;
    }
    this.s.advance(to);
    this.pull();
  }

  /** The application reads the oldest unread message of a session; its credit returns. */
  readOne(id: number): Uint8Array | undefined {
    const m = this.unread.get(id)?.shift();
    if (m) this.s.client.consumed(id, m.length);
    return m;
  }
}

/** Performs an application call; false if `key` is not one. */
function call(r: Run, ctx: string, key: string, v: Json): boolean {
  const c = r.s.client;
  const id = (typeof v === "number" ? v : v.id) as number;
  const refusable = (f: () => void) => {
    let refused = false;
    try { f(); } catch { refused = true; }
    assert.equal(refused, v.refused === true, `${ctx}: refused`);
  };
  switch (key) {
    case "open": refusable(() => c.open(v.kind as string, {}, r.s.now)); break;
    case "write": refusable(() => c.send(id, messageOf(v))); break;
    case "finish": c.finish(id); break;
    case "close": c.close(id, v.code as number); break;
    case "read": while (r.readOne(id)) { /* every held message */ } break;
    case "expect_message": {
      const got = r.readOne(id);
      assert.ok(got && hex(got) === hex(messageOf(v)), `${ctx}: read ${got?.length} bytes`);
      break;
    }
    default: return false;
  }
  return true;
}

/** Checks an expectation step against what is pending. */
function check(r: Run, ctx: string, key: string, v: unknown): void {
  switch (key) {
    case "expect": {
      const want = v as Json[];
      const got = r.sent.splice(0, want.length);
      assert.equal(got.length, want.length, `${ctx}: sent ${got.map((f) => f.type)}`);
      got.forEach((f, k) => assert.ok(matches(f, want[k] as Json), `${ctx}: frame ${k} ${JSON.stringify(frameToJson(f)).slice(0, 200)}`));
      assert.deepEqual(r.sent.map((f) => f.type), [], `${ctx}: also sent`);
      break;
    }
    case "expect_nothing": assert.deepEqual(r.sent.map((f) => f.type), [], ctx); break;
    case "expect_conn_close": {
      const last = r.sent[r.sent.length - 1];
      assert.ok(last && last.type === "CONN_CLOSE" && (last as { code: number }).code === v, `${ctx}: sent ${r.sent.map((f) => f.type)}`);
      assert.equal(r.s.client.closeCode, v, `${ctx}: the client still runs`);
      r.sent = [];
      break;
    }
    case "expect_event": {
      // Only the matched event is taken: the spec does not order the events of one input.
      const idx = r.events.findIndex((e) => eventMatches(e, v as Json));
      assert.ok(idx >= 0, `${ctx}: events ${JSON.stringify(r.events.map((e) => e.type))}`);
      r.events.splice(idx, 1);
      break;
    }
    default: assert.fail(`${ctx}: step not supported by the client runner`);
  }
}

export function runScenario(sc: Scenario): void {
  assert.equal(sc.side, "client");
  const r = new Run(sc);
  sc.steps.forEach((step, i) => {
    const ctx = `${sc.name} step ${i} ${JSON.stringify(step).slice(0, 80)}`;
    const keys = Object.keys(step);
    assert.equal(keys.length, 1, `${ctx}: one key per step`);
    const key = keys[0] as string;
    const v = step[key] as Json;
    switch (key) {
      case "send": r.s.send(...(v as unknown as Json[]).map(scenarioFrame)); break;
      case "send_hex": r.s.raw(unhex(v as unknown as string)); break;
      case "advance_ms": r.advance(r.s.now + (v as unknown as number)); break;
      default: if (!call(r, ctx, key, v)) check(r, ctx, key, v);
    }
    r.pull();
  });
}

const dir = join(SPEC_DIR, "scenarios");
const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".json")).sort() : [];
const load = (f: string): Scenario => JSON.parse(readFileSync(join(dir, f), "utf8")) as Scenario;
for (const f of files) {
  const sc = load(f);
  test(`scenario ${sc.name}`, { skip: sc.side !== "client" ? `side ${sc.side}: not a client scenario` : false }, () => {
    assert.equal(sc.name + ".json", f);
    runScenario(sc);
  });
}

test("the client scenarios are there", () => {
  const clients = files.filter((f) => load(f).side === "client");
  assert.ok(clients.length >= 10, `only ${clients.length} client scenarios in ${dir}`);
});

/** The last expectation made wrong in its most specific field, or null for none. */
function mutated(step: Json): Json | null {
  const [key] = Object.keys(step);
  const v = structuredClone(step[key as string]) as Json;
  const bump = (o: Json, ks: string[]) => ks.some((k) => typeof o[k] === "number" && ((o[k] = (o[k] as number) + 1), true));
  switch (key) {
    case "expect_conn_close": return { [key]: (v as unknown as number) + 1 };
    case "expect": {
      const last = (v as unknown as Json[])[(v as unknown as Json[]).length - 1];
      if (!last) return null;
      if (!bump(last, ["code", "payload_len", "last_session_id", "messages", "session_id"])) last.payload = "ee";
      return { [key]: v };
    }
    case "expect_event": case "expect_message": return bump(v, ["code", "payload_len", "id"]) ? { [key]: v } : null;
    default: return null;
  }
}

// Every client scenario can fail: with its last expectation made wrong, it does not pass.
test("every client scenario fails with a wrong expectation", () => {
  for (const f of files) {
    const sc = load(f);
    if (sc.side !== "client") continue;
    const i = sc.steps.findLastIndex((s) => mutated(s) !== null);
    assert.ok(i >= 0, `${f}: no expectation to make wrong`);
    const steps = [...sc.steps];
    steps[i] = mutated(steps[i] as Json) as Json;
    assert.throws(() => runScenario({ ...sc, steps }), undefined, `${f}: passed with step ${i} made wrong`);
  }
});
