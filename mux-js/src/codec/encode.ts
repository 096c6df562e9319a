// Encoding frames; settings in id order, which is the canonical form.
import { writeHeader } from "./header.js";
import {
  FLAG_END, FLAG_FIN, FrameType, HEADER_LEN, SETTINGS, type Frame,
} from "./types.js";

const utf8 = new TextEncoder();

/** Payload length of a frame once encoded (header excluded). */
export function payloadLen(f: Frame): number {
  switch (f.type) {
    case "DATA": return f.payload.length;
    case "OPEN": return 15 + utf8.encode(f.kind).length + f.auth.length;
    case "ACCEPT": return 21;
    case "CREDIT": return 8;
    case "SETTINGS": return 6 * SETTINGS.filter((s) => f.settings[s.name] !== undefined).length;
    case "PING": case "PONG": return 8;
    case "GOAWAY": return 6 + utf8.encode(f.reason).length;
    default: return 6 + utf8.encode(f.reason).length;
  }
}
export const encodedLen = (f: Frame): number => HEADER_LEN + payloadLen(f);

/** Writes `f` at `off` in `out` (which must have room); returns the offset after it. */
export function encodeInto(f: Frame, out: Uint8Array, off: number): number {
  const len = payloadLen(f);
  const flags = f.type === "DATA" ? (f.end ? FLAG_END : 0) | (f.fin ? FLAG_FIN : 0) : 0;
  writeHeader(out, off, { type: FrameType[f.type], flags, session_id: f.session_id, len });
  let p = off + HEADER_LEN;
  const dv = new DataView(out.buffer, out.byteOffset, out.length);
  const u8 = (v: number) => { dv.setUint8(p, v); p += 1; };
  const u16 = (v: number) => { dv.setUint16(p, v); p += 2; };
  const u32 = (v: number) => { dv.setUint32(p, v); p += 4; };
  const raw = (b: Uint8Array) => { out.set(b, p); p += b.length; };
  switch (f.type) {
    case "DATA": raw(f.payload); break;
    case "OPEN": {
      u32(f.request.max_message_size); u32(f.request.messages_per_sec); u32(f.request.bytes_per_sec);
      const kind = utf8.encode(f.kind);
      u8(kind.length); raw(kind); u16(f.auth.length); raw(f.auth);
      break;
    }
    case "ACCEPT":
      u8(f.permissions); u32(f.max_message_size);
      u32(f.rate.messages_per_sec); u32(f.rate.bytes_per_sec); u32(f.rate.burst_messages); u32(f.rate.burst_bytes);
      break;
    case "CREDIT": u32(f.messages); u32(f.bytes); break;
    case "SETTINGS":
      for (const s of SETTINGS) {
        const v = f.settings[s.name];
        if (v !== undefined) { u16(s.id); u32(v); }
      }
      break;
    case "PING": case "PONG": dv.setBigUint64(p, f.payload); p += 8; break;
    case "GOAWAY": u32(f.last_session_id); u16(f.code); raw(utf8.encode(f.reason)); break;
    default: u16(f.code); u32(f.retry_after_ms); raw(utf8.encode(f.reason));
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
