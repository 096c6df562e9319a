// Echo throughput in the browser: 10 sessions on one mux WebSocket against 10 plain
// WebSockets to an echo server, each session or socket with one 64-byte message in flight,
// in alternating rounds. `bench.run(rounds, ms)` returns the echoes per second of each round.
import { connect, type MuxSession } from "../src/index.js";

const config = (await (await fetch("/config.json")).json()) as { mux: string; echo: string };
const N = 10;
const payload = new Uint8Array(64).map((_, i) => i);
const out = document.getElementById("out") as HTMLElement;

async function muxRound(sessions: MuxSession[], ms: number): Promise<number> {
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(sessions.map(async (s) => {
    while (performance.now() < end) {
      await s.send(payload);
      const m = await s.next();
      if (!m || m.length !== 64) throw new Error("bad echo");
      n++;
    }
  }));
  return n / ((performance.now() - start) / 1000);
}

function plainSocket(url: string): Promise<{ echo: () => Promise<void>; close: () => void }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let waiting: ((len: number) => void) | null = null;
    ws.onmessage = (e) => { const w = waiting; waiting = null; w?.((e.data as ArrayBuffer).byteLength); };
    ws.onerror = () => reject(new Error("plain socket failed"));
    ws.onopen = () => resolve({
      echo: () => new Promise<void>((done, fail) => {
        waiting = (len) => (len === 64 ? done() : fail(new Error("bad echo")));
        ws.send(payload);
      }),
      close: () => ws.close(),
    });
  });
}

async function plainRound(sockets: { echo: () => Promise<void> }[], ms: number): Promise<number> {
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(sockets.map(async (s) => {
    while (performance.now() < end) { await s.echo(); n++; }
  }));
  return n / ((performance.now() - start) / 1000);
}

async function run(rounds: number, ms: number): Promise<{ mux: number[]; plain: number[] }> {
  const client = connect(config.mux, { token: "bench" });
  const sessions = await Promise.all(Array.from({ length: N }, () => client.open("echo")));
  const sockets = await Promise.all(Array.from({ length: N }, () => plainSocket(config.echo)));
  // One short warm-up of each before the measured rounds.
  await muxRound(sessions, 300);
  await plainRound(sockets, 300);
  const result = { mux: [] as number[], plain: [] as number[] };
  for (let r = 0; r < rounds; r++) {
    // Alternate which goes first so neither always runs on a warmer page.
    const order = r % 2 === 0 ? ["mux", "plain"] : ["plain", "mux"];
    for (const kind of order) {
      const rate = kind === "mux" ? await muxRound(sessions, ms) : await plainRound(sockets, ms);
      result[kind as "mux" | "plain"].push(rate);
      out.textContent += `round ${r + 1} ${kind}: ${rate.toFixed(0)} echoes/s\n`;
    }
  }
  client.close();
  for (const s of sockets) s.close();
  return result;
}

(globalThis as unknown as { bench: { run: typeof run } }).bench = { run };
// `?auto&rounds=6&ms=3000`: runs at load and logs the result as one console line.
const q = new URLSearchParams(location.search);
if (q.has("auto")) {
  void run(Number(q.get("rounds") ?? 6), Number(q.get("ms") ?? 3000)).then((r) => console.log("bench-result " + JSON.stringify(r)));
}
