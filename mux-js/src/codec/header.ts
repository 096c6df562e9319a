// The 10-byte header, checked in the order of spec/vectors/README.md#order-of-checks.
import { frameError, type FrameError } from "./error.js";
import {
  FLAG_END, FLAG_FIN, FRAME_TYPE_NAMES, HEADER_LEN, MIN_FRAGMENT, VERSION,
  definedFlags, isConnectionFrame, lenBounds,
} from "./types.js";

export interface Header { type: number; flags: number; session_id: number; len: number }

/** The big-endian unsigned integer of `n` ≤ 6 bytes at `off` (the caller checked the bounds). */
export function readUint(b: Uint8Array, off: number, n: number): number {
  let v = 0;
  for (let i = 0; i < n; i++) v = v * 256 + b[off + i]!;
  return v;
}

/** Writes `v` as `n` ≤ 6 big-endian bytes at `off`. */
export function writeUint(b: Uint8Array, off: number, n: number, v: number): void {
  for (let i = n; i--; v = Math.floor(v / 256)) b[off + i] = v; // a Uint8Array keeps v mod 256
}

/** Parses and validates the header at `off`, from the header alone (spec/frames.md#frame-header). */
export function parseHeader(buf: Uint8Array, off: number): Header | FrameError {
  const available = buf.length - off;
  if (available < HEADER_LEN) return frameError("TruncatedHeader", { available });
  const version = buf[off]! >> 4;
  if (version !== VERSION) return frameError("UnsupportedVersion", { version });
  const type = buf[off]! & 0x0f;
  const frame_type = FRAME_TYPE_NAMES[type];
  if (frame_type === undefined) return frameError("UnknownType", { type_nibble: type });
  const flags = buf[off + 1]!;
  const session_id = readUint(buf, off + 2, 4);
  const len = readUint(buf, off + 6, 4);
  if (flags & ~definedFlags(type)) return frameError("ReservedFlags", { frame_type, flags });
  if (isConnectionFrame(type) !== (session_id === 0)) return frameError("WrongSession", { frame_type, session_id });
  let [min, max] = lenBounds(type);
  if (!type) {
    const end = flags & FLAG_END;
    // spec/frames.md#data: an empty frame must end a message or the session; payload with
    // FIN must also carry END.
    if (!end && len > 0 === (flags & FLAG_FIN) > 0) return frameError("InvalidFlags", { frame_type, flags });
    // spec/frames.md#data: a fragment in the middle of a message carries ≥ MIN_FRAGMENT bytes.
    if (!flags) min = MIN_FRAGMENT;
  }
  if (len < min || len > max) return frameError("BadLength", { frame_type, len, min, max });
  return { type, flags, session_id, len };
}

export function writeHeader(out: Uint8Array, off: number, h: Header): void {
  out[off] = (VERSION << 4) | h.type;
  out[off + 1] = h.flags;
  writeUint(out, off + 2, 4, h.session_id);
  writeUint(out, off + 6, 4, h.len);
}

export const isFrameError = (x: unknown): x is FrameError =>
  typeof x === "object" && x !== null && "close_code" in x && "kind" in x;
