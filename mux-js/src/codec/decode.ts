// Decoding one WebSocket message into frames; stops at the first error (spec/frames.md#errors).
import { fail, isFrameError, type FrameError, type FrameErrorKind } from "./error.js";
import { parseHeader, readUint, type Header } from "./header.js";
import { FRAME_TYPE_NAMES, FrameType, HEADER_LEN, LAYOUT, SETTINGS, type Frame, type SettingsMap } from "./types.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** spec/close-codes.md#valid-values */
export const isValidWireCode = (c: number): boolean =>
  (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1011) || c === 1013 || (c >= 3000 && c <= 4999);

/** Decodes the payload of a frame whose header was already checked. Throws a FrameError. */
export function decodeBody({ type, session_id, flags }: Header, payload: Uint8Array): Frame {
  // DATA, the hot path: its header said everything there is to check.
  if (!type) return { type: "DATA", session_id, end: (flags & 1) > 0, fin: flags > 1, payload };
  const frame_type = FRAME_TYPE_NAMES[type]!;
  const len = payload.length;
  let pos = 0;
  const bad = (kind: FrameErrorKind, more: object): never => fail(kind, { frame_type, ...more });
  const take = (n: number, field: string): Uint8Array => {
    if (len - pos < n) bad("TruncatedField", { field });
    return payload.subarray(pos, (pos += n));
  };
  const uint = (n: number, field: string): number => readUint(take(n, field), 0, n);
  const text = (b: Uint8Array, field: string): string => {
    try { return utf8.decode(b); } catch { return bad("InvalidUtf8", { field }); }
  };
  const invalid = (field: string, value: number) => bad("InvalidValue", { field, value });
  const f: Record<string, unknown> = { type: frame_type, session_id };
  if (type === FrameType.SETTINGS) {
    const settings: SettingsMap = {};
    const seen: number[] = [];
    while (pos < len) {
      const id = uint(2, "id");
      const value = uint(4, "value");
      // Unknown ids are ignored but may not repeat; the repeat is checked before the value.
      if (seen.includes(id)) bad("DuplicateSetting", { id });
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
    if (form === "8") v = (BigInt(uint(4, name)) << 32n) | BigInt(uint(4, name));
    else if (+form) {
      const n = uint(+form, name);
      // spec/frames.md: the values a field may not take.
      if ((name === "code" && !isValidWireCode(n)) || (name === "permissions" && n > 3) || (name === "max_message_size" && !group && !n)) invalid(name, n);
      v = n;
    } else {
      // Bytes: after a u8 (k) or u16 (a) length, or to the end (t, b); k and t are UTF-8.
      const b = take(form === "k" || form === "a" ? uint(form === "k" ? 1 : 2, name + "_len") : len - pos, name);
      v = form === "k" || form === "t" ? text(b, name) : b;
    }
    if (group) ((f[group] ??= {}) as Record<string, unknown>)[name] = v; else f[name] = v;
  }
  if (type === FrameType.CREDIT && !f.messages && !f.bytes) invalid("credit", 0);
  if (pos < len) bad("TrailingBytes", { extra: len - pos });
  return f as unknown as Frame;
}

/**
 * Walks one message frame by frame: each header is checked (and handed to `head`, which may
 * refuse it from its length alone) before its payload is looked at, then the frame is decoded
 * and handed to `each`. `head` or `each` returns true to stop. Returns the error that ended the
 * walk, if one did.
 */
export function frames(
  message: Uint8Array,
  each: (f: Frame) => unknown,
  head?: (h: Header) => unknown,
): FrameError | undefined {
  try {
    if (!message.length) fail("EmptyMessage");
    for (let off = 0; off < message.length;) {
      const h = parseHeader(message, off);
      if (head?.(h)) break;
      const available = message.length - off - HEADER_LEN;
      if (h.len > available) fail("TruncatedPayload", { frame_type: FRAME_TYPE_NAMES[h.type], declared: h.len, available });
      if (each(decodeBody(h, message.subarray((off += HEADER_LEN), (off += h.len))))) break;
    }
  } catch (e) {
    if (!isFrameError(e)) throw e;
    return e;
  }
  return undefined;
}

/** Decodes every frame of one message: the frames before the first error, and that error. */
export function decodeMessage(message: Uint8Array): { frames: Frame[]; error?: FrameError } {
  const out: Frame[] = [];
  const error = frames(message, (f) => { out.push(f); });
  return error ? { frames: out, error } : { frames: out };
}
