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
  const b0 = dv.getUint8(0);
  const version = b0 >> 4;
  if (version !== VERSION) return frameError("UnsupportedVersion", { version });
  const type = b0 & 0x0f;
  const name = FRAME_TYPE_NAMES[type];
  if (name === undefined) return frameError("UnknownType", { type_nibble: type });
  const flags = dv.getUint8(1);
  const session_id = dv.getUint32(2);
  const len = dv.getUint32(6);
  if (flags & ~definedFlags(type)) return frameError("ReservedFlags", { frame_type: name, flags });
  if (isConnectionFrame(type) !== (session_id === 0)) {
    return frameError("WrongSession", { frame_type: name, session_id });
  }
  const [min, max] = lenBounds(type);
  if (len < min || len > max) return frameError("BadLength", { frame_type: name, len, min, max });
  if (type === FrameType.DATA) {
    const end = (flags & FLAG_END) !== 0;
    const fin = (flags & FLAG_FIN) !== 0;
    // spec/frames.md#data: an empty frame must end a message or the session; payload with
    // FIN must also carry END.
    if ((len === 0 && !end && !fin) || (len > 0 && fin && !end)) {
      return frameError("InvalidFlags", { frame_type: name, flags });
    }
    // spec/frames.md#data: a fragment in the middle of a message carries ≥ MIN_FRAGMENT bytes.
    if (!end && !fin && len < MIN_FRAGMENT) {
      return frameError("BadLength", { frame_type: name, len, min: MIN_FRAGMENT, max: 0xffffffff });
    }
  }
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
