// Decoding one WebSocket message into frames; stops at the first error (spec/frames.md#errors).
import { frameError, type FrameError } from "./error.js";
import { isFrameError, parseHeader, type Header } from "./header.js";
import {
  FLAG_END, FLAG_FIN, FRAME_TYPE_NAMES, FrameType, HEADER_LEN, SETTINGS,
  type Frame, type FrameTypeName, type SettingsMap,
} from "./types.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A bounded reader over one payload; every short read is a TruncatedField. */
class Reader {
  private pos = 0;
  private readonly dv: DataView;
  constructor(private readonly buf: Uint8Array, private readonly t: FrameTypeName) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.length);
  }
  private need(n: number, field: string): void {
    if (this.buf.length - this.pos < n) throw frameError("TruncatedField", { frame_type: this.t, field });
  }
  u8(f: string): number { this.need(1, f); return this.dv.getUint8(this.pos++); }
  u16(f: string): number { this.need(2, f); const v = this.dv.getUint16(this.pos); this.pos += 2; return v; }
  u32(f: string): number { this.need(4, f); const v = this.dv.getUint32(this.pos); this.pos += 4; return v; }
  u64(f: string): bigint { this.need(8, f); const v = this.dv.getBigUint64(this.pos); this.pos += 8; return v; }
  bytes(n: number, f: string): Uint8Array { this.need(n, f); const v = this.buf.subarray(this.pos, this.pos + n); this.pos += n; return v; }
  rest(): Uint8Array { const v = this.buf.subarray(this.pos); this.pos = this.buf.length; return v; }
  empty(): boolean { return this.pos === this.buf.length; }
  text(bytes: Uint8Array, field: string): string {
    try { return utf8.decode(bytes); } catch { throw frameError("InvalidUtf8", { frame_type: this.t, field }); }
  }
  finish(): void {
    const extra = this.buf.length - this.pos;
    if (extra) throw frameError("TrailingBytes", { frame_type: this.t, extra });
  }
}

/** spec/close-codes.md#valid-values */
export const isValidWireCode = (c: number): boolean =>
  (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1011) || c === 1013 || (c >= 3000 && c <= 4999);

function closeFields(r: Reader, t: FrameTypeName): { code: number; retry_after_ms: number; reason: string } {
  const code = r.u16("code");
  if (!isValidWireCode(code)) throw frameError("InvalidValue", { frame_type: t, field: "code", value: code });
  const retry_after_ms = r.u32("retry_after_ms");
  return { code, retry_after_ms, reason: r.text(r.rest(), "reason") };
}

/** Decodes the payload of a frame whose header was already checked. Throws a FrameError. */
export function decodeBody(h: Header, payload: Uint8Array): Frame {
  const t = FRAME_TYPE_NAMES[h.type] as FrameTypeName;
  const r = new Reader(payload, t);
  const id = h.session_id;
  let f: Frame;
  switch (h.type) {
    case FrameType.DATA:
      f = { type: "DATA", session_id: id, end: (h.flags & FLAG_END) !== 0, fin: (h.flags & FLAG_FIN) !== 0, payload: r.rest() };
      break;
    case FrameType.OPEN: {
      const request = { max_message_size: r.u32("max_message_size"), messages_per_sec: r.u32("messages_per_sec"), bytes_per_sec: r.u32("bytes_per_sec") };
      const kindLen = r.u8("kind_len");
      const kind = r.text(r.bytes(kindLen, "kind"), "kind");
      const authLen = r.u16("auth_len");
      f = { type: "OPEN", session_id: id, request, kind, auth: r.bytes(authLen, "auth") };
      break;
    }
    case FrameType.ACCEPT: {
      const permissions = r.u8("permissions");
      if (permissions & ~3) throw frameError("InvalidValue", { frame_type: t, field: "permissions", value: permissions });
      const max_message_size = r.u32("max_message_size");
      if (max_message_size === 0) throw frameError("InvalidValue", { frame_type: t, field: "max_message_size", value: 0 });
      const rate = { messages_per_sec: r.u32("messages_per_sec"), bytes_per_sec: r.u32("bytes_per_sec"), burst_messages: r.u32("burst_messages"), burst_bytes: r.u32("burst_bytes") };
      f = { type: "ACCEPT", session_id: id, permissions, max_message_size, rate };
      break;
    }
    case FrameType.CREDIT: {
      const messages = r.u32("messages");
      const bytes = r.u32("bytes");
      if (messages === 0 && bytes === 0) throw frameError("InvalidValue", { frame_type: t, field: "credit", value: 0 });
      f = { type: "CREDIT", session_id: id, messages, bytes };
      break;
    }
    case FrameType.CLOSE: case FrameType.RESET: case FrameType.CONN_CLOSE:
      f = { type: t as "CLOSE", session_id: id, ...closeFields(r, t) };
      break;
    case FrameType.SETTINGS: {
      const settings: SettingsMap = {};
      const seen: number[] = [];
      while (!r.empty()) {
        const sid = r.u16("id");
        const value = r.u32("value");
        // Unknown ids are ignored but may not repeat; the repeat is checked before the value.
        if (seen.includes(sid)) throw frameError("DuplicateSetting", { frame_type: t, id: sid });
        seen.push(sid);
        const s = SETTINGS.find((x) => x.id === sid);
        if (s) {
          if (value < s.min || value > s.max) throw frameError("InvalidValue", { frame_type: t, field: s.name, value });
          settings[s.name] = value;
        }
      }
      f = { type: "SETTINGS", session_id: 0, settings };
      break;
    }
    case FrameType.PING: case FrameType.PONG:
      f = { type: t as "PING", session_id: 0, payload: r.u64("payload") };
      break;
    default: { // GOAWAY
      const last_session_id = r.u32("last_session_id");
      const code = r.u16("code");
      if (!isValidWireCode(code)) throw frameError("InvalidValue", { frame_type: t, field: "code", value: code });
      f = { type: "GOAWAY", session_id: 0, last_session_id, code, reason: r.text(r.rest(), "reason") };
    }
  }
  r.finish();
  return f;
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
