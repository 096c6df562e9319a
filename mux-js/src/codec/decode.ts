// Decoding one WebSocket message into frames; stops at the first error (spec/frames.md#errors).
import { frameError, type FrameError, type FrameErrorKind } from "./error.js";
import { isFrameError, parseHeader, readUint, type Header } from "./header.js";
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
  const { type, session_id, flags } = h;
  // DATA, the hot path: its header said everything there is to check.
  if (!type) return { type: "DATA", session_id, end: (flags & FLAG_END) > 0, fin: (flags & FLAG_FIN) > 0, payload };
  const frame_type = FRAME_TYPE_NAMES[type] as FrameTypeName;
  const len = payload.length;
  let pos = 0;
  const fail = (kind: FrameErrorKind, more: object): never => { throw frameError(kind, { frame_type, ...more }); };
  const take = (n: number, field: string): Uint8Array => {
    if (len - pos < n) fail("TruncatedField", { field });
    return payload.subarray(pos, (pos += n));
  };
  const uint = (n: number, field: string): number => readUint(take(n, field), 0, n);
  const text = (b: Uint8Array, field: string): string => {
    try { return utf8.decode(b); } catch { return fail("InvalidUtf8", { field }); }
  };
  const invalid = (field: string, value: number) => fail("InvalidValue", { field, value });
  const f: Record<string, unknown> = { type: frame_type, session_id };
  if (type === FrameType.SETTINGS) {
    const settings: SettingsMap = {};
    const seen: number[] = [];
    while (pos < len) {
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
  for (const [group, name, form] of LAYOUT[type]!) {
    let v: unknown;
    if (form === "t" || form === "b") { const rest = take(len - pos, name); v = form === "t" ? text(rest, name) : rest; }
    else if (form === "k") v = text(take(uint(1, name + "_len"), name), name);
    else if (form === "a") v = take(uint(2, name + "_len"), name);
    else if (form === "8") v = (BigInt(uint(4, name)) << 32n) | BigInt(uint(4, name));
    else {
      const n = uint(+form, name);
      // spec/frames.md: the values a field may not take.
      if ((name === "code" && !isValidWireCode(n)) || (name === "permissions" && n > 3) || (name === "max_message_size" && !group && !n)) invalid(name, n);
      v = n;
    }
    if (group) ((f[group] ??= {}) as Record<string, unknown>)[name] = v; else f[name] = v;
  }
  if (type === FrameType.CREDIT && !f.messages && !f.bytes) invalid("credit", 0);
  if (pos < len) fail("TrailingBytes", { extra: len - pos });
  return f as unknown as Frame;
}

/**
 * Walks one message frame by frame: each header is checked (and handed to `head`, which may
 * refuse it from its length alone) before its payload is looked at. `head` or `each` returns
 * true to stop. Returns the error that ended the walk, if one did.
 */
export function frames(
  message: Uint8Array,
  each: (h: Header, payload: Uint8Array) => boolean | void,
  head?: (h: Header) => boolean,
): FrameError | undefined {
  if (!message.length) return frameError("EmptyMessage");
  for (let off = 0; off < message.length;) {
    const h = parseHeader(message, off);
    if (isFrameError(h)) return h;
    if (head?.(h)) break;
    const available = message.length - off - HEADER_LEN;
    if (h.len > available) {
      return frameError("TruncatedPayload", { frame_type: FRAME_TYPE_NAMES[h.type], declared: h.len, available });
    }
    const start = off + HEADER_LEN;
    off = start + h.len;
    if (each(h, message.subarray(start, off))) break;
  }
  return undefined;
}

/** Decodes every frame of one message: the frames before the first error, and that error. */
export function decodeMessage(message: Uint8Array): { frames: Frame[]; error?: FrameError } {
  const out: Frame[] = [];
  let error: FrameError | undefined;
  try {
    error = frames(message, (h, p) => { out.push(decodeBody(h, p)); });
  } catch (e) {
    if (!isFrameError(e)) throw e;
    error = e;
  }
  return error ? { frames: out, error } : { frames: out };
}
