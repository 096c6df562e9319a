// The React binding under StrictMode: one WebSocket, one live session per hook kind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createElement, StrictMode, useEffect } from "react";
import { act } from "react";
import { createRoot, type Root } from "react-dom/client";
import { Window } from "happy-dom";
import { MuxProvider, useSession, useTopic } from "../src/react/index.js";
import { Clock, FakeSocket } from "./fakes.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;
const flush = async () => { for (let i = 0; i < 6; i++) await new Promise<void>((r) => setImmediate(r)); };

test("StrictMode mount/unmount/mount opens one WebSocket and one session per kind", async () => {
  const clock = new Clock();
  FakeSocket.all = [];
  let effects = 0;
  const seen: unknown[] = [];
  function Chat() {
    const s = useSession("chat");
    useEffect(() => { effects++; }, []);
    seen.push(s);
    return null;
  }
  function Lobby() { useTopic("lobby"); return null; }
  const window = new Window();
  Object.assign(globalThis, { window, document: window.document });
  const root: Root = createRoot(window.document.createElement("div") as unknown as Element);
  await act(async () => {
    root.render(
      createElement(StrictMode, null, createElement(MuxProvider, { url: "ws://x/", options: { WebSocket: FakeSocket, clock: () => clock.now, timers: clock.timers } },
        createElement(Chat), createElement(Chat), createElement(Lobby))),
    );
  });
  assert.equal(effects, 4, "StrictMode ran each effect twice (mount, unmount, mount)");
  clock.advance(1);
  await flush();
  assert.equal(FakeSocket.all.length, 1, "one WebSocket");
  const ws = FakeSocket.all[0]!;
  ws.open();
  ws.deliver({ type: "SETTINGS", session_id: 0, settings: {} });
  await flush();
  const opens = ws.frames().filter((f) => f.type === "OPEN").map((f) => (f as { kind: string }).kind).sort();
  assert.deepEqual(opens, ["chat", "lobby"], "one OPEN per kind");
  const sessions = new Set(seen.filter(Boolean));
  assert.equal(sessions.size, 1, "both hooks share the chat session");
  await act(async () => root.unmount());
  clock.advance(2);
  await flush();
  assert.ok(ws.frames().some((f) => f.type === "CONN_CLOSE"), "the last release closes the connection");
});
