// Headless Chromium against the example page (`cargo run -p mux-tokio --example web`): one
// WebSocket for every session, chat between two browser contexts, presence, the throttled
// flood, the slow reader held to its credit, a server restart, and the React binding under
// StrictMode. Every wait is on state: page.waitForFunction, events, or the server's /status.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const artifacts = join(here, "..", "test-artifacts");

interface Ports { http: number; mux: number; echo: number }
interface SessionCount { live: number; opened: number }
interface Status {
  connections: number;
  rate_limit_hits: number;
  flood_rate: number;
  feeds: Record<string, { produced: number; sent?: number; open: boolean }>;
  sessions: Record<string, Record<string, SessionCount>>;
}
interface Demo {
  user: string; state: string; connections: number;
  rooms: Record<string, { from: string; text: string }[]>;
  members: string[]; counter: number | null; refused: { code: number; reason: string } | null;
  flood: { granted: number; sent: number; echoed: number; rate: number };
  feed: { open: boolean; consumed: number; window: number; snapshots: { produced: number; sent: number; queued: number; credit: number; consumed: number }[] };
}
const demo = () => (globalThis as unknown as { demo: Demo }).demo;

let server: ChildProcess;
let ports: Ports;
let browser: Browser;
const contexts: BrowserContext[] = [];

/** Starts the example; the first start builds the page, a restart reuses the ports. */
async function startServer(fixed?: Ports): Promise<{ proc: ChildProcess; ports: Ports }> {
  const bin = join(root, "target", "debug", "examples", "web");
  const args = fixed
    ? ["--no-build", "--port", String(fixed.http), "--mux-port", String(fixed.mux), "--echo-port", String(fixed.echo)]
    : ["--port", "0"];
  const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: proc.stdout! });
  const line = await new Promise<string>((resolve, reject) => {
    lines.on("line", (l) => { if (l.startsWith("listening ")) resolve(l); });
    proc.once("exit", (code) => reject(new Error(`web example exited with ${code}`)));
  });
  const m = /http=(\d+) mux=(\d+) echo=(\d+)/.exec(line)!;
  return { proc, ports: { http: Number(m[1]), mux: Number(m[2]), echo: Number(m[3]) } };
}

const origin = () => `http://127.0.0.1:${ports.http}`;

async function status(): Promise<Status> {
  return (await (await fetch(`${origin()}/status`)).json()) as Status;
}

/** Waits until the server's status satisfies `ok`: polled, since the server pushes nothing. */
async function untilStatus(ok: (s: Status) => boolean): Promise<Status> {
  for (;;) {
    const s = await status();
    if (ok(s)) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A page of its own browser context (its own cookies and sockets) and its mux sockets. */
/** A WebSocket the page made; `established` once the server's first frame arrived on it. */
interface Socket { url: string; closed: boolean; established: boolean; done: Promise<unknown> }

async function openPage(path: string): Promise<{ page: Page; sockets: Socket[] }> {
  const context = await browser.newContext();
  contexts.push(context);
  const page = await context.newPage();
  const sockets: Socket[] = [];
  page.on("websocket", (ws) => {
    const entry: Socket = { url: ws.url(), closed: false, established: false, done: new Promise((r) => ws.once("close", r)) };
    ws.once("framereceived", () => { entry.established = true; });
    sockets.push(entry);
    void entry.done.then(() => { entry.closed = true; });
  });
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(origin() + path);
  return { page, sockets };
}

const muxSockets = (sockets: Socket[]) => sockets.filter((s) => s.url === `ws://127.0.0.1:${ports.mux}/`);

/** Everything on the page is up: the connection, the rooms, the refusal, the feeds. */
const pageReady = (page: Page) => page.waitForFunction(() => {
  const d = (globalThis as unknown as { demo?: Demo }).demo;
  return d && d.state === "open" && d.refused !== null && d.counter !== null && d.flood.granted > 0 && d.feed.open;
});

before(async () => {
  assert.equal(spawnSync("cargo", ["build", "-q", "-p", "mux-tokio", "--example", "web"], { cwd: root, stdio: "inherit" }).status, 0);
  ({ proc: server, ports } = await startServer());
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
  mkdirSync(artifacts, { recursive: true });
});
after(async () => { await browser?.close(); server?.kill(); });

let alice: { page: Page; sockets: Socket[] };
let bob: { page: Page; sockets: Socket[] };

test("the page opens all its sessions over one WebSocket; the secret room is refused with 4001", async () => {
  alice = await openPage("/?user=alice");
  await pageReady(alice.page);
  assert.equal(muxSockets(alice.sockets).length, 1, "one WebSocket to the mux server");
  const d = await alice.page.evaluate(demo);
  assert.deepEqual(d.refused, { code: 4001, reason: "members only" });
  assert.equal(d.flood.granted, 20);
  // Every session the page holds is live on the server, once, for the one connection.
  const s = await untilStatus((st) => Object.keys(st.sessions.alice ?? {}).length === 7);
  for (const kind of ["chat/general", "chat/random", "chat/help", "presence", "counter", "flood", "feed"]) {
    assert.deepEqual(s.sessions.alice![kind], { live: 1, opened: 1 }, kind);
  }
  assert.equal(s.connections, 1);
  assert.match(await alice.page.textContent("#refused") ?? "", /refused: 4001 members only/);
});

test("chat messages reach a second browser context, both ways, each in its room", async () => {
  bob = await openPage("/?user=bob");
  await pageReady(bob.page);
  assert.equal(muxSockets(bob.sockets).length, 1);
  await alice.page.fill('[data-room="chat/general"] input', "hello from alice");
  await alice.page.click('[data-room="chat/general"] button');
  await bob.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.rooms["chat/general"]!
    .some((m) => m.from === "alice" && m.text === "hello from alice"));
  await bob.page.fill('[data-room="chat/random"] input', "hi alice, bob here");
  await bob.page.click('[data-room="chat/random"] button');
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.rooms["chat/random"]!
    .some((m) => m.from === "bob" && m.text === "hi alice, bob here"));
  const a = await alice.page.evaluate(demo);
  // Each room only carries its own messages.
  assert.deepEqual(a.rooms["chat/help"], []);
  assert.deepEqual(a.rooms["chat/random"], [{ from: "bob", text: "hi alice, bob here" }]);
  assert.equal(await bob.page.textContent('[data-room="chat/general"] .log'), "alice: hello from alice");
  await alice.page.screenshot({ path: join(artifacts, "web-page.png"), fullPage: true });
});

test("presence: a join and a leave reach the others", async () => {
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.members.includes("bob"));
  const carol = await openPage("/?user=carol");
  await pageReady(carol.page);
  // Carol's snapshot lists who was there before her.
  await carol.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.members.length === 2);
  assert.deepEqual((await carol.page.evaluate(demo)).members, ["alice", "bob"]);
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.members.includes("carol"));
  await bob.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.members.includes("carol"));
  await carol.page.context().close();
  await alice.page.waitForFunction(() => !(globalThis as unknown as { demo: Demo }).demo.members.includes("carol"));
  await bob.page.waitForFunction(() => !(globalThis as unknown as { demo: Demo }).demo.members.includes("carol"));
  assert.deepEqual((await alice.page.evaluate(demo)).members, ["bob"]);
  assert.match(await alice.page.textContent("#members") ?? "", /^alice \(you\)bob$/);
});

test("the flood is paced to its grant: the server's rate limiter never had to act", async () => {
  // Well past the burst of 10, so pacing, not the burst, carried it.
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.flood.echoed >= 30);
  const s = await status();
  assert.equal(s.flood_rate, 20);
  assert.equal(s.rate_limit_hits, 0, "a paced opener never exceeds the acceptor's bucket");
});

test("the slow reader holds the server's producer to the credit it returns", async () => {
  // The producer is eager (it has queued more than it may send) and credit is what stops it.
  await alice.page.waitForFunction(() => {
    const f = (globalThis as unknown as { demo: Demo }).demo.feed;
    return f.consumed >= 20 && f.snapshots.some((s) => s.credit === 0 && s.produced > s.sent && s.consumed >= 16);
  });
  const f = (await alice.page.evaluate(demo)).feed;
  assert.ok(f.snapshots.length > 0);
  for (const s of f.snapshots) {
    // Sent to the wire: at most the initial window plus what the reader has read.
    assert.ok(s.sent <= s.consumed + f.window, JSON.stringify(s));
  }
  // Reading returned credit: more than the first window went out.
  assert.ok(f.snapshots.some((s) => s.sent > f.window), "credit came back as the page read");
});

test("the server restarts on the same port: the page reconnects and recovers", async () => {
  const before = await alice.page.evaluate(demo);
  const counterBefore = before.counter!;
  server.kill("SIGKILL");
  await new Promise((r) => server.once("exit", r));
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.state === "reconnecting");
  await bob.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.state === "reconnecting");
  await alice.page.waitForFunction(() => /^reconnecting in \d+\.\d s$/.test(document.querySelector("#state")?.textContent ?? ""));
  ({ proc: server } = await startServer(ports));
  await alice.page.waitForFunction(() => { const d = (globalThis as unknown as { demo: Demo }).demo; return d.state === "open" && d.connections === 2; });
  await bob.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.connections === 2);
  // One new connection per page for all its sessions (attempts made while the server was
  // down never got a frame), the old one closed.
  const made = muxSockets(alice.sockets);
  assert.equal(made.filter((x) => x.established).length, 2);
  assert.ok(made[0]!.established && made.at(-1)!.established);
  await made[0]!.done;
  // Sessions re-opened on the new connection: the new server counts from 0 again.
  await alice.page.waitForFunction((c) => { const d = (globalThis as unknown as { demo: Demo }).demo; return d.counter !== null && d.counter < c; }, counterBefore);
  const s = await untilStatus((st) => Object.keys(st.sessions.alice ?? {}).length === 7 && Object.keys(st.sessions.bob ?? {}).length === 7);
  assert.deepEqual(s.sessions.alice!["chat/general"], { live: 1, opened: 1 });
  // Presence: the new subscription's snapshot (or the join) brings bob back.
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.members.includes("bob"));
  // Chat works again, both ways.
  await bob.page.fill('[data-room="chat/help"] input', "back after the restart");
  await bob.page.click('[data-room="chat/help"] button');
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.rooms["chat/help"]!
    .some((m) => m.from === "bob" && m.text === "back after the restart"));
  await pageReady(alice.page);
  assert.equal(await alice.page.textContent("#state"), "open");
  await alice.page.screenshot({ path: join(artifacts, "web-page-after-restart.png"), fullPage: true });
});

test("React under StrictMode: one WebSocket, one session per hook, none left after unmount", async () => {
  const { page, sockets } = await openPage("/react.html?user=strict");
  await page.waitForFunction(() =>
    document.querySelector("#chat-state")?.textContent === "open" &&
    document.querySelector("#presence-state")?.textContent === "subscribed");
  const s = await untilStatus((st) => Object.keys(st.sessions.strict ?? {}).length === 2);
  assert.deepEqual(s.sessions.strict, { "chat/general": { live: 1, opened: 1 }, presence: { live: 1, opened: 1 } });
  assert.equal(muxSockets(sockets).length, 1, "StrictMode's mount, unmount, mount kept one WebSocket");
  // Alice sees the React page's user arrive in the presence set.
  await alice.page.waitForFunction(() => (globalThis as unknown as { demo: Demo }).demo.members.includes("strict"));
  await page.click("#toggle");
  const ended = await untilStatus((st) => Object.values(st.sessions.strict ?? {}).every((c) => c.live === 0));
  assert.deepEqual(ended.sessions.strict, { "chat/general": { live: 0, opened: 1 }, presence: { live: 0, opened: 1 } });
  await page.waitForFunction(() => document.querySelector("#chat-state") === null);
  await alice.page.waitForFunction(() => !(globalThis as unknown as { demo: Demo }).demo.members.includes("strict"));
  // The provider's last session closed its connection too.
  await muxSockets(sockets)[0]!.done;
  assert.equal(muxSockets(sockets).length, 1);
});
