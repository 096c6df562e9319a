export { Connection, CoreConnection, transportLimit } from "./connection.js";
export { Bucket, pacer, type Pacer } from "./bucket.js";
export * from "./types.js";
