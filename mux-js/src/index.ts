// The client core: connect, sessions, reconnect. The codec, the sans-IO core and topics have
// their own entries (mux-js/codec, mux-js/core, mux-js/topics) so this one stays small.
export * from "./driver/client.js";
export * from "./driver/reconnect.js";
export { MuxError, type MuxErrorKind, type Grant, type CoreConfig, type CloseSource } from "./core/types.js";
