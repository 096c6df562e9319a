// The example page: three chat rooms, a refused room, presence, a live counter, a throttled
// flood and a slow reader, all sessions of one reconnecting mux connection.
import { connectReconnecting, type MuxSession, type ReconnectState } from "../src/index.js";
import { topicEvents } from "../src/topics.js";

interface FeedSnapshot { produced: number; sent: number; queued: number; credit: number; consumed: number }

const config = (await (await fetch("/config.json")).json()) as { mux: string };
const user = new URLSearchParams(location.search).get("user") ?? `guest${Math.floor(Math.random() * 1e6)}`;
const utf8 = new TextEncoder();
const text = new TextDecoder();
const $ = (id: string) => document.getElementById(id) as HTMLElement;
const ROOMS = ["chat/general", "chat/random", "chat/help"];

/** What the page shows, also read by the end-to-end tests. */
const demo = {
  user,
  state: "connecting" as ReconnectState,
  connections: 0,
  rooms: Object.fromEntries(ROOMS.map((r) => [r, [] as { from: string; text: string }[]])),
  members: [] as string[],
  counter: null as number | null,
  refused: null as { code: number; reason: string } | null,
  flood: { granted: 0, sent: 0, echoed: 0, rate: 0 },
  feed: { open: false, consumed: 0, window: 64, snapshots: [] as FeedSnapshot[] },
};
(globalThis as unknown as { demo: typeof demo }).demo = demo;
$("user").textContent = user;

const rc = connectReconnecting(config.mux, { token: user, minDelayMs: 200, maxDelayMs: 2000 });
let countdown: ReturnType<typeof setInterval> | undefined;
rc.addEventListener("retry", () => {
  clearInterval(countdown);
  const show = () => { $("state").textContent = `reconnecting in ${Math.max(0, (rc.retryAt - performance.now()) / 1000).toFixed(1)} s`; };
  show();
  countdown = setInterval(show, 100);
});
rc.addEventListener("close", (e) => {
  const err = (e as CustomEvent<{ code: number; reason: string }>).detail;
  $("state").textContent = `closed with ${err.code} ${err.reason}`;
});
rc.addEventListener("state", (e) => {
  demo.state = (e as CustomEvent<ReconnectState>).detail;
  clearInterval(countdown);
  if (demo.state !== "reconnecting") $("state").textContent = demo.state;
  if (demo.state === "open") {
    $("connections").textContent = String(++demo.connections);
    void slowReader();
  }
});

// Chat rooms: topic sessions the page also sends into.
for (const room of ROOMS) {
  const session = rc.session(room);
  const box = document.querySelector(`[data-room="${room}"]`) as HTMLElement;
  const log = box.querySelector(".log") as HTMLElement;
  topicEvents(session).events.addEventListener("event", (e) => {
    const ev = (e as CustomEvent).detail;
    if (ev.type !== "message") return;
    const m = JSON.parse(text.decode(ev.payload)) as { from: string; text: string };
    demo.rooms[room]!.push(m);
    const line = document.createElement("div");
    line.textContent = `${m.from}: ${m.text}`;
    log.append(line);
    log.scrollTop = log.scrollHeight;
  });
  const form = box.querySelector("form") as HTMLFormElement;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const input = form.querySelector("input") as HTMLInputElement;
    if (input.value) void session.send(utf8.encode(input.value));
    input.value = "";
  });
}

// A room this user may not open: the server refuses it with 4001, the rest carries on.
rc.session("chat/secret").addEventListener("close", (e) => {
  const err = (e as CustomEvent<{ code: number; reason: string }>).detail;
  demo.refused = { code: err.code, reason: err.reason };
  $("refused").textContent = `refused: ${err.code} ${err.reason}`;
});

// Presence: a snapshot of the others on every (re)subscription, then joins and leaves.
const { presence } = topicEvents(rc.session("presence"));
for (const type of ["join", "leave", "sync"]) {
  presence.addEventListener(type, () => {
    demo.members = [...presence.members].sort();
    const li = (t: string) => Object.assign(document.createElement("li"), { textContent: t });
    $("members").replaceChildren(li(`${user} (you)`), ...demo.members.map(li));
  });
}

// The live counter: a topic the server publishes to four times a second.
topicEvents(rc.session("counter")).events.addEventListener("event", (e) => {
  const ev = (e as CustomEvent).detail;
  if (ev.type !== "message") return;
  demo.counter = Number(text.decode(ev.payload));
  $("counter").textContent = String(demo.counter);
});

// The flood: send() resolves as the pacer lets each message go, so the loop runs at the grant.
const flood = rc.session("flood");
const sentAt: number[] = [];
flood.addEventListener("open", () => {
  demo.flood.granted = flood.current?.grant?.messagesPerSec ?? 0;
  $("flood-granted").textContent = String(demo.flood.granted);
});
flood.addEventListener("message", () => { demo.flood.echoed++; });
void (async () => {
  const payload = new Uint8Array(64);
  for (;;) {
    try { await flood.send(payload); } catch { await new Promise((r) => flood.addEventListener("open", r, { once: true })); continue; }
    const now = performance.now();
    sentAt.push(now);
    while (sentAt.length && (sentAt[0] as number) < now - 2000) sentAt.shift();
    demo.flood.sent++;
    demo.flood.rate = sentAt.length / 2;
    $("flood-sent").textContent = String(demo.flood.sent);
    $("flood-rate").textContent = demo.flood.rate.toFixed(1);
  }
})();

// The slow reader: one feed session per connection, read at 4 messages/s; the server's
// counters show its producer waiting for the credit each read returns.
let feed: MuxSession | null = null;
async function slowReader(): Promise<void> {
  const client = rc.client;
  if (!client) return;
  const s = await client.open("feed").catch(() => null);
  if (!s) return;
  feed = s;
  demo.feed = { ...demo.feed, open: true, consumed: 0, snapshots: [] };
  while (feed === s) {
    await new Promise((r) => setTimeout(r, 250));
    if ((await s.next().catch(() => null)) === null) break;
    demo.feed.consumed++;
    $("feed-read").textContent = String(demo.feed.consumed);
  }
  if (feed === s) { feed = null; demo.feed.open = false; }
}
setInterval(async () => {
  if (!feed) return;
  // While the server restarts the status is unreachable, like the mux server.
  const status = (await fetch("/status").then((r) => r.json()).catch(() => null)) as { feeds: Record<string, FeedSnapshot & { open: boolean }> } | null;
  if (!status) return;
  const f = status.feeds[user];
  if (!f?.open || !feed) return;
  // Read after the status: the reader may only have read more since.
  const snap = { produced: f.produced, sent: f.sent, queued: f.queued, credit: f.credit, consumed: demo.feed.consumed };
  demo.feed.snapshots.push(snap);
  if (demo.feed.snapshots.length > 500) demo.feed.snapshots.shift();
  $("feed-server").textContent = `produced ${snap.produced}, sent ${snap.sent}, credit left ${snap.credit}, ${snap.queued} waiting in its queue`;
}, 300);
