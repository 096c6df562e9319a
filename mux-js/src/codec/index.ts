export * from "./types.js";
export * from "./error.js";
export * from "./header.js";
export * from "./decode.js";
export * from "./encode.js";
