// Headless Chromium (Debian's, through playwright-core): the bundled client in a real page,
// with the browser's own WebSocket, against the Rust interop server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createServer, type Server } from "node:http";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { AddressInfo } from "node:net";
import { build } from "esbuild";
import { chromium, type Browser, type Page } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
let http: Server;
let mux: ChildProcess;
let browser: Browser;
let page: Page;
let wsUrl = "";

before(async () => {
  const bundle = await build({ entryPoints: [join(here, "..", "src", "index.ts")], bundle: true, format: "iife", globalName: "Mux", write: false, target: "es2022" });
  const js = bundle.outputFiles[0]!.text;
  http = createServer((req, res) => {
    if (req.url === "/mux.js") { res.setHeader("content-type", "text/javascript"); res.end(js); return; }
    res.setHeader("content-type", "text/html");
    res.end('<!doctype html><script src="/mux.js"></script>');
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  const origin = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  assert.equal(spawnSync("cargo", ["build", "-q", "-p", "mux-tokio", "--example", "interop_server"], { cwd: root, stdio: "inherit" }).status, 0);
  mux = spawn(join(root, "target", "debug", "examples", "interop_server"), [origin], { stdio: ["ignore", "pipe", "inherit"] });
  const line = await new Promise<string>((resolve) => createInterface({ input: mux.stdout! }).once("line", resolve));
  wsUrl = `ws://127.0.0.1:${Number(line)}/`;
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
  page = await browser.newPage();
  await page.goto(origin + "/");
});
after(async () => { await browser?.close(); mux?.kill(); http?.close(); });

test("Chromium: echo on 10 sessions through the browser's WebSocket, 1 B to 200 KiB", async () => {
  const result = await page.evaluate(async (url) => {
    const M = (globalThis as unknown as { Mux: typeof import("../src/index.js") }).Mux;
    const BIG = 256 * 1024;
    const client = M.connect(url, { token: "interop-token", core: { settings: { max_message_size: BIG, initial_credit_bytes: BIG } } });
    const sessions = await Promise.all(Array.from({ length: 10 }, () => client.open("big")));
    let ok = 0;
    await Promise.all(sessions.map(async (s, k) => {
      for (const n of [1, 1024, 200 * 1024]) {
        const m = new Uint8Array(n).map((_, i) => (i + k) & 0xff);
        await s.send(m);
        const got = await s.next();
        if (got && got.length === n && got.every((b, i) => b === m[i])) ok++;
      }
    }));
    const refused = await client.open("secret").then(() => 0, (e: { code: number }) => e.code);
    const state = client.state;
    client.close();
    return { ok, refused, state };
  }, wsUrl);
  assert.deepEqual(result, { ok: 30, refused: 4001, state: "open" });
});

test("Chromium: the readable stream reads a session's messages in order", async () => {
  const got = await page.evaluate(async (url) => {
    const M = (globalThis as unknown as { Mux: typeof import("../src/index.js") }).Mux;
    const client = M.connect(url, { token: "interop-token" });
    const s = await client.open("echo");
    for (let i = 0; i < 5; i++) void s.sendText("m" + i);
    const reader = s.readable.getReader();
    const out: string[] = [];
    for (let i = 0; i < 5; i++) out.push(new TextDecoder().decode((await reader.read()).value));
    client.close();
    return out;
  }, wsUrl);
  assert.deepEqual(got, ["m0", "m1", "m2", "m3", "m4"]);
});
