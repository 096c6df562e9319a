// Echo throughput in headless Chromium: 64-byte echoes per second over 10 sessions on one mux
// WebSocket vs 10 plain WebSockets to an echo server, alternating rounds in one page (the web
// example's /bench.html). A measurement, not a test: it prints the rounds and the ratio.
//
//   npm run bench:browser [-- --rounds 6 --ms 3000 --debug]
import { spawn, spawnSync } from "node:child_process";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
const opt = (name: string, def: number) => { const i = args.indexOf(name); return i >= 0 ? Number(args[i + 1]) : def; };
const rounds = opt("--rounds", 6);
const ms = opt("--ms", 3000);
const profile = args.includes("--debug") ? "debug" : "release";

const build = ["build", "-q", "-p", "mux-tokio", "--example", "web", ...(profile === "release" ? ["--release"] : [])];
if (spawnSync("cargo", build, { cwd: root, stdio: "inherit" }).status !== 0) process.exit(1);
const server = spawn(join(root, "target", profile, "examples", "web"), ["--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
const line = await new Promise<string>((resolve) => createInterface({ input: server.stdout! }).on("line", (l) => { if (l.startsWith("listening ")) resolve(l); }));
const http = /http=(\d+)/.exec(line)![1];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${http}/bench.html`);
  await page.waitForFunction(() => "bench" in globalThis);
  const r = await page.evaluate(([n, t]) => (globalThis as unknown as { bench: { run: (n: number, t: number) => Promise<{ mux: number[]; plain: number[] }> } }).bench.run(n, t), [rounds, ms] as const);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (let i = 0; i < rounds; i++) console.log(`round ${i + 1}: mux ${r.mux[i]!.toFixed(0)}/s, plain ${r.plain[i]!.toFixed(0)}/s, ratio ${(r.mux[i]! / r.plain[i]!).toFixed(2)}`);
  const m = median(r.mux);
  const p = median(r.plain);
  console.log(`64 B echoes/s, 10 sessions on one mux WebSocket vs 10 plain WebSockets (Chromium, ${profile} server, ${rounds} × ${ms} ms rounds)`);
  console.log(`median: mux ${m.toFixed(0)}/s, plain ${p.toFixed(0)}/s, ratio ${(m / p).toFixed(2)}×`);
} finally {
  await browser.close();
  server.kill();
}
