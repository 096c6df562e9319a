// The 10-byte header, checked in the order of spec/vectors/README.md#order-of-checks.
import { frameError, type FrameError } from "./error.js";
import {
  FLAG_END, FLAG_FIN, FRAME_TYPE_NAMES, HEADER_LEN, MIN_FRAGMENT, VERSION,
  definedFlags, isConnectionFrame, lenBounds, FrameType,
} from "./types.js";

export interface Header { type: number; flags: number; session_id: number; len: number }

/** Parses and validates the header at `off`, from the header alone (spec/frames.md#frame-header). */
export function parseHeader(buf: Uint8Array, off: number): Header | FrameError {
  const available = buf.length - off;
  if (available < HEADER_LEN) return frameError("TruncatedHeader", { available });
  const dv = new DataView(buf.buffer, buf.byteOffset + off, HEADER_LEN);
  const version = buf[off]! >> 4;
  if (version !== VERSION) return frameError("UnsupportedVersion", { version });
  const type = buf[off]! & 0x0f;
  const frame_type = FRAME_TYPE_NAMES[type];
  if (frame_type === undefined) return frameError("UnknownType", { type_nibble: type });
  const flags = buf[off + 1]!;
  const session_id = dv.getUint32(2);
  const len = dv.getUint32(6);
  if (flags & ~definedFlags(type)) return frameError("ReservedFlags", { frame_type, flags });
  if (isConnectionFrame(type) !== (session_id === 0)) return frameError("WrongSession", { frame_type, session_id });
  let [min, max] = lenBounds(type);
  if (type === FrameType.DATA) {
    const end = (flags & FLAG_END) !== 0;
    const fin = (flags & FLAG_FIN) !== 0;
    // spec/frames.md#data: an empty frame must end a message or the session; payload with
    // FIN must also carry END.
    if (!end && len > 0 === fin) return frameError("InvalidFlags", { frame_type, flags });
    // spec/frames.md#data: a fragment in the middle of a message carries ≥ MIN_FRAGMENT bytes.
    if (!end && !fin) min = MIN_FRAGMENT;
  }
  if (len < min || len > max) return frameError("BadLength", { frame_type, len, min, max });
  return { type, flags, session_id, len };
}

export function writeHeader(out: Uint8Array, off: number, h: Header): void {
  const dv = new DataView(out.buffer, out.byteOffset + off, HEADER_LEN);
  dv.setUint8(0, (VERSION << 4) | h.type);
  dv.setUint8(1, h.flags);
  dv.setUint32(2, h.session_id);
  dv.setUint32(6, h.len);
}

export const isFrameError = (x: unknown): x is FrameError =>
  typeof x === "object" && x !== null && "close_code" in x && "kind" in x;
