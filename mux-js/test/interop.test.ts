// The driver in Node against the real Rust server (mux-tokio/examples/interop_server.rs)
// over loopback, with the `ws` package standing in for the browser's WebSocket.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { connect, connectReconnecting, MuxCloseError, MuxError, type ConnectOptions, type WebSocketConstructor } from "../src/index.js";
import { subscribeTopic, type TopicEvent } from "../src/topics.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
let server: ChildProcess;
let url = "";

before(async () => {
  const build = spawnSync("cargo", ["build", "-q", "-p", "mux-tokio", "--example", "interop_server"], { cwd: root, stdio: "inherit" });
  assert.equal(build.status, 0, "building the interop server");
  server = spawn(join(root, "target", "debug", "examples", "interop_server"), { stdio: ["ignore", "pipe", "inherit"] });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: server.stdout! }).once("line", resolve);
    server.once("exit", (c) => reject(new Error(`server exited ${c}`)));
  });
  url = `ws://127.0.0.1:${Number(line)}/`;
});
after(() => { server?.kill(); });

const BIG = 256 * 1024;
const opts: ConnectOptions = {
  token: "interop-token",
  WebSocket: WebSocket as unknown as WebSocketConstructor,
  core: { settings: { max_message_size: BIG, initial_credit_bytes: BIG } },
};
const pattern = (n: number, seed: number) => new Uint8Array(n).map((_, i) => (i * 31 + seed) & 0xff);

test("echo on 50 sessions: 1 B, 1 KiB and 200 KiB messages come back intact and in order", async () => {
  const client = connect(url, opts);
  const sessions = await Promise.all(Array.from({ length: 50 }, () => client.open("big")));
  assert.deepEqual(sessions.map((s) => s.id), Array.from({ length: 50 }, (_, i) => 2 * i + 1));
  const sizes = [1, 1024, 200 * 1024];
  await Promise.all(sessions.map(async (s, k) => {
    const sent = sizes.map((n, j) => pattern(n, k * 3 + j));
    const writes = Promise.all(sent.map((m) => s.send(m)));
    for (const expected of sent) {
      const got = await s.next();
      assert.ok(got, `session ${s.id} ended early`);
      assert.equal(got.length, expected.length);
      assert.deepEqual(got, expected);
    }
    await writes;
  }));
  client.close();
});

test("a refused session rejects with the server's code; the connection lives", async () => {
  const client = connect(url, opts);
  await assert.rejects(client.open("secret"), (e: MuxCloseError) => e instanceof MuxCloseError && e.code === 4001 && e.reason === "not for you");
  const s = await client.open("echo");
  await s.sendText("still here");
  assert.equal(new TextDecoder().decode((await s.next())!), "still here");
  client.close();
});

test("a max-size session: a message at the granted maximum passes, one byte more is refused locally", async () => {
  const client = connect(url, opts);
  const s = await client.open("big");
  assert.equal(s.grant?.maxMessageSize, BIG);
  const m = pattern(BIG, 9);
  await s.send(m);
  assert.deepEqual(await s.next(), m);
  await assert.rejects(s.send(new Uint8Array(BIG + 1)), (e: MuxError) => e instanceof MuxError && e.kind === "too_large");
  client.close();
});

test("a handshake without the token is refused", async () => {
  const client = connect(url, { ...opts, token: "wrong" });
  await assert.rejects(client.ready);
  assert.equal(client.state, "closed");
});

test("a topic subscription resumes from the Rust hub's history after its connection drops: every message once, no gap", async () => {
  const sockets: WebSocket[] = [];
  class Capturing extends WebSocket {
    constructor(address: string, protocols: string[]) { super(address, protocols); sockets.push(this); }
  }
  const rc = connectReconnecting(url, { ...opts, WebSocket: Capturing as unknown as WebSocketConstructor, minDelayMs: 20, maxDelayMs: 50 });
  const news = subscribeTopic(rc, "news");
  const seen: TopicEvent[] = [];
  let wake = () => {};
  news.events.addEventListener("event", (e) => { seen.push((e as CustomEvent<TopicEvent>).detail); wake(); });
  const until = (done: () => boolean) => new Promise<void>((resolve) => {
    const check = () => { if (done()) resolve(); else wake = check; };
    check();
  });
  const offsets = () => seen.flatMap((e) => (e.type === "message" ? [e.offset] : []));
  await until(() => news.position !== null);
  const publisher = connect(url, opts);
  const pub = await publisher.open("publish");
  const published: bigint[] = [];
  const publish = async (n: number) => {
    for (let i = 0; i < n; i++) {
      await pub.sendText(`m${published.length}`);
      published.push(BigInt(new TextDecoder().decode((await pub.next())!)));
    }
  };
  await publish(3);
  await until(() => offsets().length === 3);
  // The subscriber's connection drops (no close frame); these are published meanwhile.
  sockets[0]!.terminate();
  await publish(5);
  await until(() => offsets().length >= 8);
  assert.deepEqual(offsets(), published, "every published message once, in order");
  assert.ok(!seen.some((e) => e.type === "gap"), "no gap");
  assert.ok(sockets.length >= 2 && seen.filter((e) => e.type === "position").length >= 2, "it re-subscribed on a new connection");
  assert.equal(news.position?.offset, published[published.length - 1]);
  rc.close();
  publisher.close();
});

test("GOAWAY: the client hears it, opens nothing more, and the connection ends with 1001", async () => {
  const client = connect(url, opts);
  const live = await client.open("echo");
  const goaway = new Promise<CustomEvent>((r) => client.addEventListener("goaway", (e) => r(e as CustomEvent), { once: true }));
  const closed = new Promise<CustomEvent>((r) => client.addEventListener("close", (e) => r(e as CustomEvent), { once: true }));
  await client.open("shutdown");
  const g = await goaway;
  assert.equal(g.detail.code, 1001);
  await assert.rejects(client.open("echo"), (e: MuxError) => e instanceof MuxError && e.kind === "going_away");
  await live.send(new Uint8Array([1, 2, 3]));
  assert.deepEqual(await live.next(), new Uint8Array([1, 2, 3]), "a live session still works after GOAWAY");
  live.close();
  const c = await closed;
  assert.equal(c.detail.code, 1001);
});
