// Loads spec/vectors/*.json, the same files tests/vectors.rs reads, and maps frames between
// the codec's objects and the vectors' JSON form (spec/vectors/README.md).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Frame } from "../src/codec/index.js";

/** ../spec, or MUX_SPEC_DIR (e.g. another checkout's spec/ while it changes). */
export const SPEC_DIR = process.env.MUX_SPEC_DIR ?? join(dirname(fileURLToPath(import.meta.url)), "..", "..", "spec");

export interface Vector {
  file: string; name: string; description: string; hex: string;
  frames?: Json[]; error?: Json; frames_before_error?: Json[]; canonical?: boolean;
}
export type Json = Record<string, unknown>;

/** Every vector of every JSON file in spec/vectors/, whatever files exist there. */
export function loadVectors(): Vector[] {
  const dir = join(SPEC_DIR, "vectors");
  const out: Vector[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
    const doc = JSON.parse(readFileSync(join(dir, file), "utf8")) as { vectors: Vector[] };
    for (const v of doc.vectors) out.push({ ...v, file });
  }
  return out;
}

export const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
export function unhex(s: string): Uint8Array {
  if (!/^([0-9a-f]{2})*$/.test(s)) throw new Error(`bad hex ${s.slice(0, 20)}`);
  return new Uint8Array(Buffer.from(s, "hex"));
}

export function frameToJson(f: Frame): Json {
  switch (f.type) {
    case "DATA": return { type: f.type, session_id: f.session_id, end: f.end, fin: f.fin, payload: hex(f.payload) };
    case "OPEN": return { type: f.type, session_id: f.session_id, request: f.request, kind: f.kind, auth: hex(f.auth) };
    case "PING": case "PONG": return { type: f.type, session_id: 0, payload: f.payload.toString(16).padStart(16, "0") };
    default: return { ...f };
  }
}

export function frameFromJson(j: Json): Frame {
  const t = j.type as string;
  switch (t) {
    case "DATA": return { ...(j as never), payload: unhex(j.payload as string) } as Frame;
    case "OPEN": return { ...(j as never), auth: unhex(j.auth as string) } as Frame;
    case "PING": case "PONG": return { type: t, session_id: 0, payload: BigInt("0x" + (j.payload as string)) };
    default: return j as unknown as Frame;
  }
}
