// Encoding frames from the layouts of types.ts; settings in id order, which is the canonical form.
import { writeHeader } from "./header.js";
import { FLAG_END, FLAG_FIN, FrameType, HEADER_LEN, LAYOUT, SETTINGS, type Frame } from "./types.js";

import { utf8 } from "./utf8.js";

/** Each field's value as bytes or [width, number | bigint], in wire order. */
function parts(f: Frame): (Uint8Array | [number, number | bigint])[] {
  const out: (Uint8Array | [number, number | bigint])[] = [];
  if (f.type === "SETTINGS") {
    for (const s of SETTINGS) {
      const v = f.settings[s.name];
      if (v !== undefined) out.push([2, s.id], [4, v]);
    }
  }
  const r = f as unknown as Record<string, Record<string, unknown>>;
  for (const [group, name, form] of LAYOUT[FrameType[f.type]]!) {
    const v = group ? r[group]![name] : r[name];
    const b = typeof v === "string" ? utf8.encode(v) : v;
    if (form === "k") out.push([1, (b as Uint8Array).length]);
    if (form === "a") out.push([2, (b as Uint8Array).length]);
    out.push(b instanceof Uint8Array ? b : [Number(form), v as number | bigint]);
  }
  return out;
}

const size = (ps: ReturnType<typeof parts>): number => ps.reduce((n, p) => n + (p instanceof Uint8Array ? p.length : p[0]), 0);

/** Payload length of a frame once encoded (header excluded). */
export const payloadLen = (f: Frame): number => size(parts(f));
export const encodedLen = (f: Frame): number => HEADER_LEN + payloadLen(f);

/** Writes `f` at `off` in `out` (which must have room); returns the offset after it. */
export function encodeInto(f: Frame, out: Uint8Array, off: number): number {
  const ps = parts(f);
  const flags = f.type === "DATA" ? (f.end ? FLAG_END : 0) | (f.fin ? FLAG_FIN : 0) : 0;
  writeHeader(out, off, { type: FrameType[f.type], flags, session_id: f.session_id, len: size(ps) });
  let p = off + HEADER_LEN;
  const dv = new DataView(out.buffer, out.byteOffset, out.length);
  for (const x of ps) {
    if (x instanceof Uint8Array) { out.set(x, p); p += x.length; continue; }
    const [n, v] = x;
    if (n === 8) dv.setBigUint64(p, v as bigint);
    else if (n === 4) dv.setUint32(p, v as number);
    else if (n === 2) dv.setUint16(p, v as number);
    else dv.setUint8(p, v as number);
    p += n;
  }
  return p;
}

/** Encodes frames back to back into one message. */
export function encodeMessage(fs: readonly Frame[]): Uint8Array {
  const out = new Uint8Array(fs.reduce((n, f) => n + encodedLen(f), 0));
  let off = 0;
  for (const f of fs) off = encodeInto(f, out, off);
  return out;
}
