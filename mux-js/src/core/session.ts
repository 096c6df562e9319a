// One client-opened session: its state, both credit windows, its send queue and its pacer.
import type { Pacer } from "./bucket.js";
import type { Settings } from "../codec/index.js";
import type { Grant } from "./types.js";

/** A queued message and how much of it is written: `off > 0` once its first frame went. */
export interface Outgoing { data: Uint8Array; off: number; fin: boolean }

/** A close to report: the code, the reason and the peer's retry hint. */
export interface CloseInfo { code: number; reason: string; retryAfterMs: number }

/**
 * Its state follows from what it holds: opening until the ACCEPT gives it a grant, closing
 * once a CLOSE waits for the queue (closeAfter), draining once the peer's CLOSE waits for the
 * held messages to be read (drainCode).
 */
export class Session {
  grant: Grant | null = null;
  pacer: Pacer | null = null;
  openDeadline: number;
  /** Credit left to send (spec/sessions.md#credit), in messages and bytes. */
  sendMsgs: number;
  sendBytes: number;
  /** Largest message this side may start (spec/sessions.md#message-size-and-the-window). */
  sendMax: number;
  queue: Outgoing[] = [];
  finQueued = false;
  finSent = false;
  finReceived = false;
  /** CLOSE to send once the queue drains (graceful close). */
  closeAfter: { code: number; reason: string } | null = null;
  /** What is left of the receive window (`own`'s initial credit) to the peer. */
  peerMsgs: number;
  peerBytes: number;
  /** The message being reassembled, and messages delivered but not yet consumed. */
  partial: Uint8Array[] = [];
  partialLen = 0;
  heldMsgs = 0;
  unannouncedMsgs = 0;
  unannouncedBytes = 0;
  /** The peer's CLOSE, reported once every held message is read. */
  drainCode: CloseInfo | null = null;
  deficit = 0;
  midTurn = false;

  /** Windows from each side's SETTINGS: `peer`'s for sending, `own` for receiving. */
  constructor(readonly id: number, peer: Settings, readonly own: Settings, openDeadline: number) {
    this.sendMsgs = peer.initial_credit_messages;
    this.sendBytes = peer.initial_credit_bytes;
    this.sendMax = Math.min(peer.max_message_size, this.sendBytes);
    this.peerMsgs = own.initial_credit_messages;
    this.peerBytes = own.initial_credit_bytes;
    this.openDeadline = openDeadline;
  }

  get canSendData(): boolean {
    return !this.drainCode && (this.grant?.send ?? true);
  }

  /** Credit read but not yet announced, on a session that still receives. */
  get hasCreditToAnnounce(): boolean {
    return (this.unannouncedMsgs > 0 || this.unannouncedBytes > 0) && !this.finReceived && !this.drainCode;
  }

  /**
   * spec/sessions.md#return-and-announcement: whether the unannounced credit should be
   * announced now (a quarter window reached, or the peer low while nothing is held).
   */
  shouldAnnounce(): boolean {
    const qm = Math.max(1, Math.floor(this.own.initial_credit_messages / 4));
    const qb = Math.floor(this.own.initial_credit_bytes / 4);
    return this.hasCreditToAnnounce && (this.unannouncedMsgs >= qm || this.unannouncedBytes >= qb ||
      (!this.heldMsgs && (this.peerMsgs < qm || this.peerBytes < Math.max(qb, 1024))));
  }
}
