// Echo throughput in headless Chromium: 64-byte echoes per second over 10 sessions on one mux
// WebSocket vs 10 plain WebSockets to an echo server, alternating rounds in one page (the web
// example's /bench.html). A measurement, not a test: it prints the rounds and the ratio.
//
// Chromium is started on its own, not driven over the DevTools protocol, so no debugger
// traffic rides along with each WebSocket frame; the page logs its result to the console.
//
//   npm run bench:browser [-- --rounds 8 --ms 3000 --depth 1 --debug]
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
const opt = (name: string, def: number) => { const i = args.indexOf(name); return i >= 0 ? Number(args[i + 1]) : def; };
const rounds = opt("--rounds", 8);
const ms = opt("--ms", 3000);
const profile = args.includes("--debug") ? "debug" : "release";
/** Messages in flight per session or socket: 1 (each waits for its echo) and a pipelined 16. */
const depths = args.includes("--depth") ? [opt("--depth", 1)] : [1, 16];

const build = ["build", "-q", "-p", "mux-tokio", "--example", "web", ...(profile === "release" ? ["--release"] : [])];
if (spawnSync("cargo", build, { cwd: root, stdio: "inherit" }).status !== 0) process.exit(1);
const server = spawn(join(root, "target", profile, "examples", "web"), ["--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
const line = await new Promise<string>((resolve) => createInterface({ input: server.stdout! }).on("line", (l) => { if (l.startsWith("listening ")) resolve(l); }));
const http = /http=(\d+)/.exec(line)![1];
/** One page load of /bench.html in a Chromium of its own; the page logs its result. */
async function measure(depth: number): Promise<{ mux: number[]; plain: number[] }> {
  const profileDir = mkdtempSync(join(tmpdir(), "mux-bench-"));
  const chromium = spawn(process.env.CHROMIUM ?? "/usr/bin/chromium", [
    "--headless=new", "--no-sandbox", "--enable-logging=stderr", "--v=0", `--user-data-dir=${profileDir}`,
    `http://127.0.0.1:${http}/bench.html?auto&rounds=${rounds}&ms=${ms}&depth=${depth}`,
  ], { stdio: ["ignore", "ignore", "pipe"] });
  try {
    return await new Promise((resolve, reject) => {
      createInterface({ input: chromium.stderr! }).on("line", (l) => {
        const m = /bench-result (\{.*?\})"/.exec(l);
        if (m) resolve(JSON.parse(m[1]!));
      });
      chromium.once("exit", (code) => reject(new Error(`chromium exited (${code}) before the result`)));
    });
  } finally {
    const exited = new Promise((r) => chromium.once("exit", r));
    chromium.kill();
    await exited;
    rmSync(profileDir, { recursive: true, force: true });
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
try {
  for (const depth of depths) {
    const r = await measure(depth);
    for (let i = 0; i < rounds; i++) console.log(`depth ${depth} round ${i + 1}: mux ${r.mux[i]!.toFixed(0)}/s, plain ${r.plain[i]!.toFixed(0)}/s, ratio ${(r.mux[i]! / r.plain[i]!).toFixed(2)}`);
    const m = median(r.mux);
    const p = median(r.plain);
    // Each round runs both sides back to back: the ratio per round is the figure to quote.
    const ratios = r.mux.map((x, i) => x / r.plain[i]!);
    console.log(`64 B echoes/s, 10 sessions on one mux WebSocket vs 10 plain WebSockets, ${depth} in flight each (headless Chromium, ${profile} server, ${rounds} × ${ms} ms rounds)`);
    console.log(`median: mux ${m.toFixed(0)}/s, plain ${p.toFixed(0)}/s; ratio per round: median ${median(ratios).toFixed(2)}×, range ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}×; load average ${loadavg().map((l) => l.toFixed(2)).join(" ")}`);
  }
} finally {
  server.kill();
}
