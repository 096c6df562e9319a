// Decoding one WebSocket message into frames; stops at the first error (spec/frames.md#errors).
import { frameError, type FrameError, type FrameErrorKind } from "./error.js";
import { isFrameError, parseHeader, type Header } from "./header.js";
import {
  FLAG_END, FLAG_FIN, FRAME_TYPE_NAMES, FrameType, HEADER_LEN, LAYOUT, SETTINGS,
  type Frame, type FrameTypeName, type SettingsMap,
} from "./types.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** spec/close-codes.md#valid-values */
export const isValidWireCode = (c: number): boolean =>
  (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1011) || c === 1013 || (c >= 3000 && c <= 4999);

/** Decodes the payload of a frame whose header was already checked. Throws a FrameError. */
export function decodeBody(h: Header, payload: Uint8Array): Frame {
  // DATA, the hot path: its header said everything there is to check.
  if (h.type === FrameType.DATA) return { type: "DATA", session_id: h.session_id, end: (h.flags & FLAG_END) !== 0, fin: (h.flags & FLAG_FIN) !== 0, payload };
  const t = FRAME_TYPE_NAMES[h.type] as FrameTypeName;
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.length);
  let pos = 0;
  const fail = (kind: FrameErrorKind, more: object): never => { throw frameError(kind, { frame_type: t, ...more }); };
  const uint = (n: number, field: string): number => {
    if (payload.length - pos < n) fail("TruncatedField", { field });
    const v = n === 1 ? dv.getUint8(pos) : n === 2 ? dv.getUint16(pos) : dv.getUint32(pos);
    pos += n;
    return v;
  };
  const bytes = (n: number, field: string): Uint8Array => {
    if (payload.length - pos < n) fail("TruncatedField", { field });
    return payload.subarray(pos, (pos += n));
  };
  const text = (b: Uint8Array, field: string): string => {
    try { return utf8.decode(b); } catch { return fail("InvalidUtf8", { field }); }
  };
  const invalid = (field: string, value: number) => fail("InvalidValue", { field, value });
  const f: Record<string, unknown> = { type: t, session_id: h.session_id };
  if (h.type === FrameType.SETTINGS) {
    const settings: SettingsMap = {};
    const seen: number[] = [];
    while (pos < payload.length) {
      const id = uint(2, "id");
      const value = uint(4, "value");
      // Unknown ids are ignored but may not repeat; the repeat is checked before the value.
      if (seen.includes(id)) fail("DuplicateSetting", { id });
      seen.push(id);
      const s = SETTINGS[id - 1];
      if (s) {
        if (value < s.min || value > s.max) invalid(s.name, value);
        settings[s.name] = value;
      }
    }
    f.settings = settings;
  }
  for (const [group, name, form] of LAYOUT[h.type]!) {
    let v: unknown;
    if (form === "t" || form === "b") { const rest = payload.subarray(pos); pos = payload.length; v = form === "t" ? text(rest, name) : rest; }
    else if (form === "k") v = text(bytes(uint(1, name + "_len"), name), name);
    else if (form === "a") v = bytes(uint(2, name + "_len"), name);
    else if (form === "8") { v = (BigInt(uint(4, name)) << 32n) | BigInt(uint(4, name)); }
    else {
      const n = uint(Number(form), name);
      // spec/frames.md: the values a field may not take.
      if ((name === "code" && !isValidWireCode(n)) || (name === "permissions" && n > 3) || (name === "max_message_size" && !group && n === 0)) invalid(name, n);
      v = n;
    }
    if (group) ((f[group] ??= {}) as Record<string, unknown>)[name] = v; else f[name] = v;
  }
  if (h.type === FrameType.CREDIT && !f.messages && !f.bytes) invalid("credit", 0);
  if (pos < payload.length) fail("TrailingBytes", { extra: payload.length - pos });
  return f as unknown as Frame;
}

/**
 * Walks one message frame by frame: the header is checked (and handed to `onHeader`, which may
 * refuse it from its length alone) before the payload is looked at.
 */
export function* frames(message: Uint8Array): Generator<{ header: Header; payload: Uint8Array }, FrameError | undefined> {
  if (message.length === 0) return frameError("EmptyMessage");
  let off = 0;
  while (off < message.length) {
    const h = parseHeader(message, off);
    if (isFrameError(h)) return h;
    const available = message.length - off - HEADER_LEN;
    if (h.len > available) {
      return frameError("TruncatedPayload", { frame_type: FRAME_TYPE_NAMES[h.type], declared: h.len, available });
    }
    const start = off + HEADER_LEN;
    off = start + h.len;
    yield { header: h, payload: message.subarray(start, off) };
  }
  return undefined;
}

/** Decodes every frame of one message: the frames before the first error, and that error. */
export function decodeMessage(message: Uint8Array): { frames: Frame[]; error?: FrameError } {
  const out: Frame[] = [];
  const it = frames(message);
  for (;;) {
    const n = it.next();
    if (n.done) return n.value ? { frames: out, error: n.value } : { frames: out };
    try {
      out.push(decodeBody(n.value.header, n.value.payload));
    } catch (e) {
      if (isFrameError(e)) return { frames: out, error: e };
      throw e;
    }
  }
}
