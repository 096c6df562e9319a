export { Connection, transportLimit } from "./connection.js";
export { Bucket, Pacer } from "./bucket.js";
export * from "./types.js";
