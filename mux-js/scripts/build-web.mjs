// Builds the example page (web/) with esbuild into build/web/, which
// `cargo run -p mux-tokio --example web` serves.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(root, "web");
const out = join(root, "build", "web");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["app.ts", "react.tsx", "bench.ts"].map((f) => join(src, f)),
  outdir: out,
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  jsx: "automatic",
  // React's development build: StrictMode double-invokes effects only there.
  define: { "process.env.NODE_ENV": '"development"' },
  logLevel: "warning",
});
for (const f of readdirSync(src).filter((f) => f.endsWith(".html"))) copyFileSync(join(src, f), join(out, f));
