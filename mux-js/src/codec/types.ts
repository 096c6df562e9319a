// The frames of spec/frames.md as plain typed objects.

export const FrameType = {
  DATA: 0x0, OPEN: 0x1, ACCEPT: 0x2, CREDIT: 0x3, CLOSE: 0x4, RESET: 0x5,
  SETTINGS: 0x6, PING: 0x7, PONG: 0x8, GOAWAY: 0x9, CONN_CLOSE: 0xa,
} as const;
export type FrameTypeName = keyof typeof FrameType;
export const FRAME_TYPE_NAMES: readonly FrameTypeName[] = [
  "DATA", "OPEN", "ACCEPT", "CREDIT", "CLOSE", "RESET",
  "SETTINGS", "PING", "PONG", "GOAWAY", "CONN_CLOSE",
];

export const HEADER_LEN = 10;
export const VERSION = 1;
export const FLAG_END = 0x01;
export const FLAG_FIN = 0x02;
/** spec/frames.md#data: a non-final fragment carries at least this many bytes. */
export const MIN_FRAGMENT = 1024;
export const MAX_REASON_LEN = 123;
export const OPEN_FIXED_LEN = 15;

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

/** spec/frames.md#settings: id, name, valid range and default. */
export const SETTINGS: readonly { id: number; name: SettingName; min: number; max: number; def: number }[] = [
  { id: 0x1, name: "max_frame_size", min: 1024, max: 16 * 1024 * 1024, def: 16384 },
  { id: 0x2, name: "max_sessions", min: 0, max: 0xffffffff, def: 100 },
  { id: 0x3, name: "initial_credit_messages", min: 1, max: 0xffffffff, def: 64 },
  { id: 0x4, name: "initial_credit_bytes", min: MIN_FRAGMENT, max: 0xffffffff, def: 65536 },
  { id: 0x5, name: "max_message_size", min: 1, max: 0xffffffff, def: 65536 },
  { id: 0x6, name: "control_budget", min: 1, max: 0xffffffff, def: 200 },
  { id: 0x7, name: "max_open_metadata", min: 0, max: 0xffffffff, def: 4096 },
  { id: 0x8, name: "idle_timeout_ms", min: 0, max: 0xffffffff, def: 0 },
];

export type Settings = Record<SettingName, number>;
/** The values in force for a SETTINGS frame: absent ids take their default. */
export function settingsWithDefaults(map: SettingsMap): Settings {
  const out = {} as Settings;
  for (const s of SETTINGS) out[s.name] = map[s.name] ?? s.def;
  return out;
}

/** spec/frames.md#frame-types: payload length bounds per type (DATA: receiver's MAX_FRAME_SIZE). */
export function lenBounds(t: number): [number, number] {
  switch (t) {
    case FrameType.DATA: return [0, 0xffffffff];
    case FrameType.OPEN: return [OPEN_FIXED_LEN, OPEN_FIXED_LEN + 255 + 65535];
    case FrameType.ACCEPT: return [21, 21];
    case FrameType.CREDIT: return [8, 8];
    case FrameType.SETTINGS: return [0, 96];
    case FrameType.PING: case FrameType.PONG: return [8, 8];
    default: return [6, 6 + MAX_REASON_LEN]; // CLOSE, RESET, GOAWAY, CONN_CLOSE
  }
}
export const isConnectionFrame = (t: number): boolean => t >= FrameType.SETTINGS;
export const definedFlags = (t: number): number => (t === FrameType.DATA ? FLAG_END | FLAG_FIN : 0);
