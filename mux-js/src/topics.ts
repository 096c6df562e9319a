// Topic events (spec/topics.md#events) decoded into typed objects, and a presence set.
export type TopicEvent =
  | { type: "message"; payload: Uint8Array }
  | { type: "gap"; missed: bigint }
  | { type: "join"; member: string }
  | { type: "leave"; member: string }
  | { type: "snapshot"; truncated: boolean; members: string[] };

/** A malformed event body: the server's fault (spec/topics.md#events). */
export class TopicEventError extends Error {
  constructor(readonly tag: number) { super(`malformed topic event (tag ${tag})`); this.name = "TopicEventError"; }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Decodes one topic DATA message; null for an unknown tag, which is ignored. */
export function decodeTopicEvent(m: Uint8Array): TopicEvent | null {
  const tag = m[0];
  if (tag === undefined) throw new TopicEventError(-1);
  const body = m.subarray(1);
  const dv = new DataView(body.buffer, body.byteOffset, body.length);
  const text = (b: Uint8Array) => { try { return utf8.decode(b); } catch { throw new TopicEventError(tag); } };
  switch (tag) {
    case 0: return { type: "message", payload: body };
    case 1:
      if (body.length !== 8) throw new TopicEventError(tag);
      return { type: "gap", missed: dv.getBigUint64(0) };
    case 2: case 3: return { type: tag === 2 ? "join" : "leave", member: text(body) };
    case 4: {
      if (body.length < 3) throw new TopicEventError(tag);
      const truncated = (dv.getUint8(0) & 1) !== 0;
      const count = dv.getUint16(1);
      const members: string[] = [];
      let p = 3;
      for (let i = 0; i < count; i++) {
        const len = body[p];
        if (len === undefined || p + 1 + len > body.length) throw new TopicEventError(tag);
        members.push(text(body.subarray(p + 1, p + 1 + len)));
        p += 1 + len;
      }
      if (p !== body.length) throw new TopicEventError(tag);
      return { type: "snapshot", truncated, members };
    }
    default: return null;
  }
}

/**
 * The members present on a topic. Each subscription (each re-open after a reconnect) starts
 * with a snapshot that replaces the set; joins and leaves then apply. Listeners see changes.
 */
export class Presence extends EventTarget {
  readonly members = new Set<string>();
  truncated = false;
  /** Applies one event; returns whether the set changed. */
  apply(e: TopicEvent): boolean {
    let changed = false;
    if (e.type === "snapshot") {
      const next = new Set(e.members);
      for (const m of this.members) if (!next.has(m)) { this.members.delete(m); changed = true; this.dispatchEvent(new CustomEvent("leave", { detail: m })); }
      for (const m of next) if (!this.members.has(m)) { this.members.add(m); changed = true; this.dispatchEvent(new CustomEvent("join", { detail: m })); }
      this.truncated = e.truncated;
      this.dispatchEvent(new CustomEvent("sync"));
    } else if (e.type === "join" && !this.members.has(e.member)) {
      this.members.add(e.member); changed = true; this.dispatchEvent(new CustomEvent("join", { detail: e.member }));
    } else if (e.type === "leave" && this.members.delete(e.member)) {
      changed = true; this.dispatchEvent(new CustomEvent("leave", { detail: e.member }));
    }
    return changed;
  }
}

/** The part of a durable session a topic subscription needs. */
interface TopicSource extends EventTarget { readonly kind: string }

/**
 * Decodes a (durable) session's messages as topic events: `event` events carry them, and
 * `presence` follows the snapshots, joins and leaves across reconnects.
 */
export function topicEvents(source: TopicSource): { presence: Presence; events: EventTarget } {
  const presence = new Presence();
  const events = new EventTarget();
  source.addEventListener("message", (e) => {
    let ev: TopicEvent | null;
    try { ev = decodeTopicEvent((e as CustomEvent<Uint8Array>).detail); } catch (err) {
      events.dispatchEvent(new CustomEvent("error", { detail: err }));
      return;
    }
    if (!ev) return;
    presence.apply(ev);
    events.dispatchEvent(new CustomEvent("event", { detail: ev }));
  });
  return { presence, events };
}
