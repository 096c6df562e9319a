// Encoding frames from the layouts of types.ts; settings in id order, which is the canonical form.
import { FrameType, LAYOUT, SETTINGS, type Frame } from "./types.js";
import { concat, utf8 } from "./utf8.js";

/** Appends `v` as `n` big-endian bytes (n ≤ 4). */
const put = (b: number[], n: number, v: number): void => { while (n--) b.push((v >>> (n * 8)) & 255); };

/**
 * One frame as its header and its payload, to be copied into a message (`concat`): the header
 * as bytes in a plain array, the payload too but for DATA, whose payload is the frame's own.
 */
export function encodeFrame(f: Frame): [number[], ArrayLike<number>] {
  const t = FrameType[f.type];
  const b: number[] = [];
  if (f.type === "SETTINGS") {
    for (const s of SETTINGS) {
      const v = f.settings[s.name];
      if (v !== undefined) put(b, 2, s.id), put(b, 4, v);
    }
  }
  const r = f as unknown as Record<string, Record<string, unknown>>;
  if (t) {
    for (const [group, name, form] of LAYOUT[t]!) {
      const v = group ? r[group]![name] : r[name];
      const x = typeof v === "string" ? utf8.encode(v) : v;
      if (x instanceof Uint8Array) {
        if (form === "k" || form === "a") put(b, form === "k" ? 1 : 2, x.length);
        for (const y of x) b.push(y);
      } else if (form === "8") put(b, 4, Number((v as bigint) >> 32n)), put(b, 4, Number((v as bigint) & 0xffffffffn));
      else put(b, +form, v as number);
    }
  }
  const payload = t ? b : (f as { payload: Uint8Array }).payload;
  const h = [16 | t, f.type === "DATA" ? +f.end | (+f.fin << 1) : 0];
  put(h, 4, f.session_id);
  put(h, 4, payload.length);
  return [h, payload];
}

/** Encodes frames back to back into one message. */
export function encodeMessage(fs: readonly Frame[]): Uint8Array {
  const parts: ArrayLike<number>[] = [];
  for (const f of fs) parts.push(...encodeFrame(f));
  return concat(parts);
}
