// The frames of spec/frames.md as plain typed objects.

export const FRAME_TYPE_NAMES = [
  "DATA", "OPEN", "ACCEPT", "CREDIT", "CLOSE", "RESET",
  "SETTINGS", "PING", "PONG", "GOAWAY", "CONN_CLOSE",
] as const;
export type FrameTypeName = (typeof FRAME_TYPE_NAMES)[number];
/** Type name to its nibble: `FrameType.DATA === 0`. */
export const FrameType = Object.fromEntries(FRAME_TYPE_NAMES.map((n, i) => [n, i])) as { readonly [K in FrameTypeName]: number };

export const HEADER_LEN = 10;
export const VERSION = 1;
export const FLAG_END = 0x01;
export const FLAG_FIN = 0x02;
/** spec/frames.md#data: a non-final fragment carries at least this many bytes. */
export const MIN_FRAGMENT = 1024;
export const MAX_REASON_LEN = 123;
export const OPEN_FIXED_LEN = 15;
export const U32 = 0xffffffff;

export interface DataFrame { type: "DATA"; session_id: number; end: boolean; fin: boolean; payload: Uint8Array }
export interface OpenRequest { max_message_size: number; messages_per_sec: number; bytes_per_sec: number }
export interface OpenFrame { type: "OPEN"; session_id: number; request: OpenRequest; kind: string; auth: Uint8Array }
export interface RateLimits { messages_per_sec: number; bytes_per_sec: number; burst_messages: number; burst_bytes: number }
export interface AcceptFrame { type: "ACCEPT"; session_id: number; permissions: number; max_message_size: number; rate: RateLimits }
export interface CreditFrame { type: "CREDIT"; session_id: number; messages: number; bytes: number }
export interface CloseFrame { type: "CLOSE" | "RESET" | "CONN_CLOSE"; session_id: number; code: number; retry_after_ms: number; reason: string }
export type SettingName =
  | "max_frame_size" | "max_sessions" | "initial_credit_messages" | "initial_credit_bytes"
  | "max_message_size" | "control_budget" | "max_open_metadata" | "idle_timeout_ms";
export type SettingsMap = Partial<Record<SettingName, number>>;
export interface SettingsFrame { type: "SETTINGS"; session_id: 0; settings: SettingsMap }
/** PING/PONG payloads are 8 opaque bytes, kept as a bigint. */
export interface PingFrame { type: "PING" | "PONG"; session_id: 0; payload: bigint }
export interface GoAwayFrame { type: "GOAWAY"; session_id: 0; last_session_id: number; code: number; reason: string }

export type Frame =
  | DataFrame | OpenFrame | AcceptFrame | CreditFrame | CloseFrame
  | SettingsFrame | PingFrame | GoAwayFrame;

/** spec/frames.md#settings: id (index + 1), name, valid range and default. */
export const SETTINGS: readonly { id: number; name: SettingName; min: number; max: number; def: number }[] = (
  [
    ["max_frame_size", 1024, 1 << 24, 16384],
    ["max_sessions", 0, U32, 100],
    ["initial_credit_messages", 1, U32, 64],
    ["initial_credit_bytes", MIN_FRAGMENT, U32, 65536],
    ["max_message_size", 1, U32, 65536],
    ["control_budget", 1, U32, 200],
    ["max_open_metadata", 0, U32, 4096],
    ["idle_timeout_ms", 0, U32, 0],
  ] as const
).map(([name, min, max, def], i) => ({ id: i + 1, name, min, max, def }));

export type Settings = Record<SettingName, number>;
/** The values in force for a SETTINGS frame: absent ids take their default. */
export function settingsWithDefaults(map: SettingsMap): Settings {
  const out = {} as Settings;
  for (const s of SETTINGS) out[s.name] = map[s.name] ?? s.def;
  return out;
}

/** spec/frames.md#frame-types: payload length bounds per type (DATA: receiver's MAX_FRAME_SIZE). */
const CLOSE_LEN: [number, number] = [6, 6 + MAX_REASON_LEN];
export const LEN_BOUNDS: readonly [number, number][] = [
  [0, U32], [OPEN_FIXED_LEN, OPEN_FIXED_LEN + 255 + 65535], [21, 21], [8, 8], CLOSE_LEN, CLOSE_LEN,
  [0, 96], [8, 8], [8, 8], CLOSE_LEN, CLOSE_LEN,
];

/**
 * The payload layout of each type but SETTINGS, in wire order: `[group.]name:form`, the form
 * 1/2/4 a big-endian unsigned integer, 8 a u64 (bigint), t UTF-8 and b bytes to the end,
 * k UTF-8 after a u8 length (`<name>_len`), a bytes after a u16 length.
 */
const CLOSE_FIELDS = "code:2 retry_after_ms:4 reason:t";
export const LAYOUT: readonly (readonly [group: string | undefined, name: string, form: string])[][] = [
  "payload:b",
  "request.max_message_size:4 request.messages_per_sec:4 request.bytes_per_sec:4 kind:k auth:a",
  "permissions:1 max_message_size:4 rate.messages_per_sec:4 rate.bytes_per_sec:4 rate.burst_messages:4 rate.burst_bytes:4",
  "messages:4 bytes:4", CLOSE_FIELDS, CLOSE_FIELDS, "", "payload:8", "payload:8",
  "last_session_id:4 code:2 reason:t", CLOSE_FIELDS,
].map((l) => l ? l.split(" ").map((f) => {
  const [path, form] = f.split(":") as [string, string];
  const [a, b] = path.split(".");
  return b ? [a, b, form] as const : [undefined, a as string, form] as const;
}) : []);
