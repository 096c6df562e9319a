// Echo throughput in the browser: 10 sessions on one mux WebSocket against 10 plain
// WebSockets to an echo server, each session or socket with `depth` 64-byte messages in
// flight, in alternating rounds. `bench.run(rounds, ms, depth)` returns the echoes per second
// of each round.
import { connect, type MuxSession } from "../src/index.js";

const config = (await (await fetch("/config.json")).json()) as { mux: string; echo: string };
const N = 10;
const payload = new Uint8Array(64).map((_, i) => i);
const out = document.getElementById("out") as HTMLElement;

async function muxRound(sessions: MuxSession[], ms: number, depth: number): Promise<number> {
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  // `depth` loops per session, each with one message in flight.
  await Promise.all(sessions.flatMap((s) => Array.from({ length: depth }, async () => {
    while (performance.now() < end) {
      await s.send(payload);
      const m = await s.next();
      if (!m || m.length !== 64) throw new Error("bad echo");
      n++;
    }
  })));
  return n / ((performance.now() - start) / 1000);
}

function plainSocket(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onerror = () => reject(new Error("plain socket failed"));
    ws.onopen = () => resolve(ws);
  });
}

async function plainRound(sockets: WebSocket[], ms: number, depth: number): Promise<number> {
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(sockets.map((ws) => new Promise<void>((done, fail) => {
    let inFlight = 0;
    ws.onmessage = (e) => {
      if ((e.data as ArrayBuffer).byteLength !== 64) fail(new Error("bad echo"));
      n++;
      inFlight--;
      if (performance.now() < end) { ws.send(payload); inFlight++; } else if (inFlight === 0) done();
    };
    for (let i = 0; i < depth; i++) { ws.send(payload); inFlight++; }
  })));
  return n / ((performance.now() - start) / 1000);
}

/** `rounds` alternating rounds of `ms` each, `depth` messages in flight per session or socket. */
async function run(rounds: number, ms: number, depth = 1): Promise<{ mux: number[]; plain: number[] }> {
  const client = connect(config.mux, { token: "bench" });
  const sessions = await Promise.all(Array.from({ length: N }, () => client.open("echo")));
  const sockets = await Promise.all(Array.from({ length: N }, () => plainSocket(config.echo)));
  // One short warm-up of each before the measured rounds.
  await muxRound(sessions, 300, depth);
  await plainRound(sockets, 300, depth);
  const result = { mux: [] as number[], plain: [] as number[] };
  for (let r = 0; r < rounds; r++) {
    // Alternate which goes first so neither always runs on a warmer page.
    const order = r % 2 === 0 ? ["mux", "plain"] : ["plain", "mux"];
    for (const kind of order) {
      const rate = kind === "mux" ? await muxRound(sessions, ms, depth) : await plainRound(sockets, ms, depth);
      result[kind as "mux" | "plain"].push(rate);
      out.textContent += `depth ${depth} round ${r + 1} ${kind}: ${rate.toFixed(0)} echoes/s\n`;
    }
  }
  client.close();
  for (const s of sockets) s.close();
  return result;
}

(globalThis as unknown as { bench: { run: typeof run } }).bench = { run };
// `?auto&rounds=8&ms=3000&depth=1`: runs at load and logs the result as one console line.
const q = new URLSearchParams(location.search);
if (q.has("auto")) {
  void run(Number(q.get("rounds") ?? 8), Number(q.get("ms") ?? 3000), Number(q.get("depth") ?? 1))
    .then((r) => console.log("bench-result " + JSON.stringify(r)));
}
