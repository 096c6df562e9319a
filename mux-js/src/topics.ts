// Topic events (spec/topics.md#events, version 2) decoded into typed objects, a presence set,
// and subscriptions that resume from their stream position after a reconnect
// (spec/topics.md#resuming).
import type { DurableSession, ReconnectingClient } from "./driver/reconnect.js";

export type TopicEvent =
  | { type: "message"; offset: bigint; payload: Uint8Array }
  /** `missed` is null when the count is unknown (the stream's epoch changed). */
  | { type: "gap"; missed: bigint | null }
  | { type: "join"; member: string }
  | { type: "leave"; member: string }
  | { type: "snapshot"; truncated: boolean; members: string[] }
  /** The stream a subscription reads and the offset it starts after: each subscription's first event. */
  | { type: "position"; epoch: string; offset: bigint };

/** Where a subscriber stands: the stream's epoch (16 lowercase hex digits) and an offset. */
export interface StreamPosition { readonly epoch: string; readonly offset: bigint }

/** A malformed event body: the server's fault (spec/topics.md#events). */
export class TopicEventError extends Error {
  constructor(readonly tag: number) { super(`malformed topic event (tag ${tag})`); this.name = "TopicEventError"; }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const UNKNOWN = 0xffff_ffff_ffff_ffffn;
const hex16 = (n: bigint) => n.toString(16).padStart(16, "0");

/** Decodes one topic DATA message; null for an unknown tag, which is ignored. */
export function decodeTopicEvent(m: Uint8Array): TopicEvent | null {
  const tag = m[0];
  if (tag === undefined) throw new TopicEventError(-1);
  const body = m.subarray(1);
  const dv = new DataView(body.buffer, body.byteOffset, body.length);
  const text = (b: Uint8Array) => { try { return utf8.decode(b); } catch { throw new TopicEventError(tag); } };
  switch (tag) {
    case 0:
      if (body.length < 8) throw new TopicEventError(tag);
      return { type: "message", offset: dv.getBigUint64(0), payload: body.subarray(8) };
    case 1: {
      if (body.length !== 8) throw new TopicEventError(tag);
      const n = dv.getBigUint64(0);
      return { type: "gap", missed: n === UNKNOWN ? null : n };
    }
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
    case 5:
      if (body.length !== 16) throw new TopicEventError(tag);
      return { type: "position", epoch: hex16(dv.getBigUint64(0)), offset: dv.getBigUint64(8) };
    default: return null;
  }
}

/**
 * The position after `e` (spec/topics.md, M-TOPIC-7): a position event replaces it, a message
 * sets the offset, a gap of known count adds it; before any position event there is none.
 */
export function advance(p: StreamPosition | null, e: TopicEvent): StreamPosition | null {
  if (e.type === "position") return { epoch: e.epoch, offset: e.offset };
  if (!p) return null;
  if (e.type === "message") return { epoch: p.epoch, offset: e.offset };
  if (e.type === "gap" && e.missed !== null) return { epoch: p.epoch, offset: p.offset + e.missed };
  return p;
}

/** The longest topic name in bytes, so that a resumption's kind fits OPEN's 255 (M-TOPIC-2). */
export const MAX_TOPIC_LEN = 217;

/** The kind that subscribes to `topic`, resuming after `from` if given (spec/topics.md#resume-kind). */
export function topicKind(topic: string, from?: StreamPosition | null): string {
  if (topic.includes("\0") || new TextEncoder().encode(topic).length > MAX_TOPIC_LEN) {
    throw new RangeError("a topic name has no U+0000 and is at most 217 bytes");
  }
  return from ? `${topic}\0${from.epoch}:${from.offset}` : topic;
}

const POSITION = /^([0-9a-f]{16}):(0|[1-9][0-9]{0,19})$/;

/** The topic and resume position a kind names; throws RangeError for a malformed position. */
export function parseTopicKind(kind: string): { topic: string; resume: StreamPosition | null } {
  const at = kind.indexOf("\0");
  if (at < 0) return { topic: kind, resume: null };
  const m = POSITION.exec(kind.slice(at + 1));
  const offset = m ? BigInt(m[2]!) : UNKNOWN + 1n;
  if (!m || offset > UNKNOWN) throw new RangeError("malformed resume position");
  return { topic: kind.slice(0, at), resume: { epoch: m[1]!, offset } };
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

/** What `topicEvents` returns: `event` events, the presence set, and the stream position. */
export interface TopicEvents {
  presence: Presence;
  events: EventTarget;
  /** The last position event moved on by every message and known gap since (M-TOPIC-7). */
  readonly position: StreamPosition | null;
}

/**
 * Decodes a (durable) session's messages as topic events: `event` events carry them, and
 * `presence` follows the snapshots, joins and leaves across reconnects. A malformed event is
 * an `error` event. To resume after a reconnect, use `subscribeTopic`.
 */
export function topicEvents(source: TopicSource, from: StreamPosition | null = null): TopicEvents {
  const presence = new Presence();
  const events = new EventTarget();
  const state = { presence, events, position: from };
  source.addEventListener("message", (e) => {
    let ev: TopicEvent | null;
    try { ev = decodeTopicEvent((e as CustomEvent<Uint8Array>).detail); } catch (err) {
      events.dispatchEvent(new CustomEvent("error", { detail: err }));
      return;
    }
    if (!ev) return;
    state.position = advance(state.position, ev);
    presence.apply(ev);
    events.dispatchEvent(new CustomEvent("event", { detail: ev }));
  });
  return state;
}

/** A topic subscription that resumes after reconnects: its durable session and its events. */
export interface TopicSubscription extends TopicEvents { readonly session: DurableSession }

/**
 * Subscribes to `topic` on a reconnecting client. Every re-open (after a reconnect, or after
 * the server dropped a slow consumer with 4008) opens the kind `topic`, U+0000, `epoch:offset`
 * of the current position, so the server replays what was missed: the events continue with no
 * duplicate, and a gap only where the server's history lost messages (spec/topics.md#resuming).
 * `from` resumes a position saved earlier (another page load).
 */
export function subscribeTopic(rc: ReconnectingClient, topic: string, opts: { auth?: Uint8Array | string; from?: StreamPosition } = {}): TopicSubscription {
  topicKind(topic);
  let state: TopicEvents | null = null;
  const session = rc.session(topic, { auth: opts.auth, openKind: () => topicKind(topic, state?.position ?? opts.from) });
  state = topicEvents(session, opts.from ?? null);
  const s = state;
  return { session, presence: s.presence, events: s.events, get position() { return s.position; } };
}
