// Encoding frames from the layouts of types.ts; settings in id order, which is the canonical form.
import { writeHeader, writeUint } from "./header.js";
import { FLAG_END, FLAG_FIN, FrameType, HEADER_LEN, LAYOUT, SETTINGS, type Frame } from "./types.js";
import { utf8 } from "./utf8.js";

/** A field as bytes, or as [width, value] for an integer. */
type Part = Uint8Array | [number, number | bigint];

/** Each field's value in wire order. */
function parts(f: Frame): Part[] {
  // DATA, the hot path: the payload is the whole body.
  if (f.type === "DATA") return [f.payload];
  const out: Part[] = [];
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
    out.push(b instanceof Uint8Array ? b : [+form, v as number | bigint]);
  }
  return out;
}

const size = (ps: Part[]): number => ps.reduce((n, p) => n + (p instanceof Uint8Array ? p.length : p[0]), 0);

/** Length of a frame once encoded, header included. */
export const encodedLen = (f: Frame): number => HEADER_LEN + size(parts(f));

/** Encodes frames back to back into one message. */
export function encodeMessage(fs: readonly Frame[]): Uint8Array {
  const all = fs.map(parts);
  const out = new Uint8Array(all.reduce((n, ps) => n + HEADER_LEN + size(ps), 0));
  let p = 0;
  fs.forEach((f, i) => {
    const ps = all[i]!;
    const flags = f.type === "DATA" ? (f.end ? FLAG_END : 0) | (f.fin ? FLAG_FIN : 0) : 0;
    writeHeader(out, p, { type: FrameType[f.type], flags, session_id: f.session_id, len: size(ps) });
    p += HEADER_LEN;
    for (const x of ps) {
      if (x instanceof Uint8Array) { out.set(x, p); p += x.length; continue; }
      const [n, v] = x;
      // A u64 (PING and PONG payloads) is written as two u32.
      if (n === 8) { writeUint(out, p, 4, Number((v as bigint) >> 32n)); writeUint(out, p + 4, 4, Number((v as bigint) & 0xffffffffn)); }
      else writeUint(out, p, n, v as number);
      p += n;
    }
  });
  return out;
}
