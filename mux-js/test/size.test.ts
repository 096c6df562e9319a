// The size budget: the client (entry src/index.ts) bundled and minified with esbuild must stay
// within 8 KB min+gzip.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

export async function minGzip(entry: string, external: string[] = []): Promise<{ min: number; gz: number }> {
  const r = await build({ entryPoints: [entry], bundle: true, minify: true, format: "esm", write: false, external, target: "es2022" });
  const code = r.outputFiles[0]!.contents;
  return { min: code.length, gz: gzipSync(code, { level: 9 }).length };
}

test("client core: min+gzip ≤ 8 KB", async () => {
  const { min, gz } = await minGzip(join(here, "..", "src", "index.ts"));
  console.log(`# size src/index.ts: ${min} B minified, ${gz} B min+gzip`);
  assert.ok(gz <= 8 * 1024, `${gz} B`);
});

test("React binding: min+gzip ≤ 2 KB (react and the client external)", async () => {
  const { min, gz } = await minGzip(join(here, "..", "src", "react", "index.ts"), ["react", "../driver/*", "../topics.js"]);
  console.log(`# size src/react/index.ts: ${min} B minified, ${gz} B min+gzip`);
  assert.ok(gz <= 2 * 1024, `${gz} B`);
});
