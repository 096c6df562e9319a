export * from "./codec/index.js";
export * from "./core/index.js";
export * from "./driver/client.js";
export * from "./driver/reconnect.js";
export * from "./topics.js";
