// Events, errors and configuration of the client core.
import { settingsWithDefaults, type SettingsMap } from "../codec/types.js";

/** Where a close came from. */
export type CloseSource = "local" | "peer" | "transport" | "timeout";

export interface Grant {
  /** The opener (this client) may send DATA. */
  send: boolean;
  /** The server will send DATA. */
  receive: boolean;
  maxMessageSize: number;
  messagesPerSec: number;
  bytesPerSec: number;
  burstMessages: number;
  burstBytes: number;
}

export type CoreEvent =
  | { type: "ready" }
  | { type: "opened"; id: number; grant: Grant }
  | { type: "message"; id: number; data: Uint8Array }
  | { type: "fin"; id: number }
  | { type: "sent"; id: number }
  | { type: "closed"; id: number; code: number; reason: string; retryAfterMs: number; source: CloseSource }
  | { type: "goaway"; lastSessionId: number; code: number; reason: string }
  | { type: "connection_closed"; code: number; reason: string; retryAfterMs: number; source: CloseSource };

/** Local misuse or refusal by the core; a peer's misbehaviour is never thrown. */
export class MuxError extends Error {
  constructor(readonly kind: MuxErrorKind, message?: string) {
    super(message ?? kind);
    this.name = "MuxError";
  }
}
export type MuxErrorKind =
  | "not_ready" | "connection_closed" | "going_away" | "too_many_sessions" | "ids_exhausted"
  | "metadata_too_large" | "kind_too_long" | "unknown_session" | "not_permitted" | "finished"
  | "too_large" | "blocked" | "invalid_code";

export interface CoreConfig {
  /** What this client advertises in its SETTINGS (and enforces). */
  settings: SettingsMap;
  settingsDeadlineMs: number;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  openDeadlineMs: number;
  tombstoneMs: number;
  maxTombstones: number;
  /** Messages queued per session before send() reports "blocked". */
  maxQueuedMessages: number;
  /** Bytes queued across sessions (64 bytes counted per message) before "blocked". */
  sendBufferBytes: number;
}

/** spec/sessions.md recommendations; the client opens sessions and accepts none (MAX_SESSIONS 0). */
export const DEFAULT_CONFIG: CoreConfig = {
  // The protocol defaults but for these.
  settings: { ...settingsWithDefaults({}), max_sessions: 0, control_budget: 1000, max_open_metadata: 0, idle_timeout_ms: 25000 },
  settingsDeadlineMs: 10_000,
  keepaliveIntervalMs: 15_000,
  keepaliveTimeoutMs: 10_000,
  openDeadlineMs: 10_000,
  tombstoneMs: 10_000,
  maxTombstones: 256,
  maxQueuedMessages: 64,
  sendBufferBytes: 1 << 22, // 4 MiB
};
