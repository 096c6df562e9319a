// React binding: one shared connection per provider, ref-counted sessions released after a
// macrotask, so StrictMode's mount → unmount → mount keeps one WebSocket and one session.
import { createContext, createElement, useContext, useEffect, useState, useSyncExternalStore, type ReactNode } from "react";
import { ReconnectingClient, type DurableSession, type ReconnectOptions } from "../driver/reconnect.js";
import { subscribeTopic, topicEvents, type Presence, type TopicEvent } from "../topics.js";

interface Entry { session: DurableSession; refs: number; release: unknown; presence?: Presence; events?: EventTarget }

/** Shared by every hook under one provider; connects on first use, never during render. */
export class MuxStore {
  client: ReconnectingClient | null = null;
  readonly #entries = new Map<string, Entry>();
  constructor(readonly url: string, readonly options: ReconnectOptions = {}) {}
  #timers() { return this.options.timers ?? { set: (f: () => void, ms: number) => setTimeout(f, ms), clear: (h: unknown) => clearTimeout(h as number) }; }

  /** The shared session of `kind`; as a topic, it resumes from its position after reconnects. */
  acquire(kind: string, topic = false): Entry {
    this.client ??= new ReconnectingClient(this.url, this.options);
    let e = this.#entries.get(kind);
    if (!e) {
      if (topic) {
        const t = subscribeTopic(this.client, kind);
        e = { session: t.session, refs: 0, release: null, presence: t.presence, events: t.events };
      } else {
        e = { session: this.client.session(kind), refs: 0, release: null };
      }
      this.#entries.set(kind, e);
    }
    if (e.release !== null) { this.#timers().clear(e.release); e.release = null; }
    e.refs++;
    return e;
  }

  release(kind: string): void {
    const e = this.#entries.get(kind);
    if (!e || --e.refs > 0) return;
    // Deferred: a StrictMode re-mount acquires again before this runs.
    e.release = this.#timers().set(() => {
      if (e.refs > 0) return;
      this.#entries.delete(kind);
      e.session.close();
      if (!this.#entries.size) { this.client?.close(); this.client = null; }
    }, 0);
  }
}

const Ctx = createContext<MuxStore | null>(null);

export function MuxProvider(props: { url: string; options?: ReconnectOptions; children?: ReactNode }): ReactNode {
  const [store] = useState(() => new MuxStore(props.url, props.options));
  return createElement(Ctx.Provider, { value: store }, props.children);
}

function useStore(): MuxStore {
  const s = useContext(Ctx);
  if (!s) throw new Error("useSession/useTopic need a <MuxProvider>");
  return s;
}

/** The durable session of `kind` shared by every hook under the provider (null until mounted). */
export function useSession(kind: string): DurableSession | null {
  const store = useStore();
  const [session, setSession] = useState<DurableSession | null>(null);
  useEffect(() => {
    setSession(store.acquire(kind).session);
    return () => store.release(kind);
  }, [store, kind]);
  return session;
}

/** A topic: the last event and the presence set, re-rendering on change; it resumes after reconnects. */
export function useTopic(topic: string): { last: TopicEvent | null; members: ReadonlySet<string> } {
  const store = useStore();
  const [entry, setEntry] = useState<Entry | null>(null);
  useEffect(() => {
    const e = store.acquire(topic, true);
    if (!e.presence) Object.assign(e, topicEvents(e.session)); // made by useSession first: no resume
    setEntry(e);
    return () => store.release(topic);
  }, [store, topic]);
  const [snap] = useState(() => ({ v: { last: null as TopicEvent | null, members: new Set<string>() as ReadonlySet<string> } }));
  return useSyncExternalStore((notify) => {
    if (!entry?.events) return () => undefined;
    const on = (ev: Event) => { snap.v = { last: (ev as CustomEvent<TopicEvent>).detail, members: new Set(entry.presence!.members) }; notify(); };
    entry.events.addEventListener("event", on);
    return () => entry.events!.removeEventListener("event", on);
  }, () => snap.v, () => snap.v);
}
