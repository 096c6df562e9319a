// The 10-byte header, checked in the order of spec/vectors/README.md#order-of-checks.
import { fail } from "./error.js";
import { FRAME_TYPE_NAMES, HEADER_LEN, LEN_BOUNDS, MIN_FRAGMENT, VERSION } from "./types.js";

export interface Header { type: number; flags: number; session_id: number; len: number }

/** The big-endian unsigned integer of `n` ≤ 6 bytes at `off` (the caller checked the bounds). */
export function readUint(b: Uint8Array, off: number, n: number): number {
  let v = 0;
  for (let i = 0; i < n; i++) v = v * 256 + b[off + i]!;
  return v;
}

/**
 * Parses and validates the header at `off`, from the header alone (spec/frames.md#frame-header).
 * Throws a FrameError.
 */
export function parseHeader(buf: Uint8Array, off: number): Header {
  const available = buf.length - off;
  if (available < HEADER_LEN) fail("TruncatedHeader", { available });
  const version = buf[off]! >> 4;
  const type = buf[off]! & 0x0f;
  const frame_type = FRAME_TYPE_NAMES[type];
  if (version !== VERSION) fail("UnsupportedVersion", { version });
  if (!frame_type) fail("UnknownType", { type_nibble: type });
  const flags = buf[off + 1]!;
  const session_id = readUint(buf, off + 2, 4);
  const len = readUint(buf, off + 6, 4);
  // Only DATA defines flags (END 1, FIN 2); connection frames (SETTINGS and after) use session 0.
  if (flags & (type ? 255 : 252)) fail("ReservedFlags", { frame_type, flags });
  if (type < 6 === !session_id) fail("WrongSession", { frame_type, session_id });
  let [min, max] = LEN_BOUNDS[type]!;
  // spec/frames.md#data: an empty frame must end a message or the session; payload with FIN
  // must also carry END; a fragment in the middle of a message carries ≥ MIN_FRAGMENT bytes.
  if (!type && !(flags & 1) && len > 0 === flags > 1) fail("InvalidFlags", { frame_type, flags });
  if (!type && !flags) min = MIN_FRAGMENT;
  if (len < min || len > max) fail("BadLength", { frame_type, len, min, max });
  return { type, flags, session_id, len };
}
