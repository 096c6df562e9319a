// A token bucket on the host's clock (spec/sessions.md#rates): `rate` tokens per second,
// at most `burst`, full when created, refilled continuously. Time is an input, in ms.
import type { Grant } from "./types.js";

export class Bucket {
  #tokens: number;
  #at: number;
  constructor(readonly rate: number, readonly burst: number, now: number) {
    this.#tokens = this.burst = Math.max(1, burst);
    this.#at = now;
  }
  /** The tokens there now. */
  available(now: number): number {
    if (now > this.#at) {
      this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#at) * this.rate) / 1000);
      this.#at = now;
    }
    return this.#tokens;
  }
  /** Takes `n` tokens if they are there. */
  take(n: number, now: number): boolean {
    const ok = this.available(now) >= n;
    if (ok) this.#tokens -= n;
    return ok;
  }
  /** When `n` tokens will be there (now if they already are). */
  readyAt(n: number, now: number): number {
    const t = this.available(now);
    return t >= n || this.rate <= 0 ? now : now + Math.ceil(((n - t) * 1000) / this.rate);
  }
}

/**
 * The opener's mirror of a granted rate (spec/sessions.md#rates, "Pacing"): it keeps a quarter
 * of each burst back and refills 1/32 slower than granted, so frames bunched in transit still
 * pass the acceptor's bucket. A rate of 0 means no limit.
 */
export class Pacer {
  readonly #msgs: Bucket | null;
  readonly #bytes: Bucket | null;
  constructor(g: Grant, now: number) {
    const mirror = (rate: number, burst: number) => rate ? new Bucket(rate - rate / 32, burst - Math.floor(burst / 4), now) : null;
    this.#msgs = mirror(g.messagesPerSec, g.burstMessages);
    this.#bytes = mirror(g.bytesPerSec, g.burstBytes);
  }
  /** Bytes the pacer lets through now for a frame (Infinity without a byte rate). */
  bytesAvailable(now: number): number { return this.#bytes ? Math.floor(this.#bytes.available(now)) : Infinity; }
  messageAvailable(now: number): boolean { return !this.#msgs || this.#msgs.available(now) >= 1; }
  take(startsMessage: boolean, len: number, now: number): void {
    if (startsMessage) this.#msgs?.take(1, now);
    this.#bytes?.take(len, now);
  }
  /** When a frame of `len` bytes (starting a message or not) could go. */
  readyAt(startsMessage: boolean, len: number, now: number): number {
    const b = this.#bytes;
    return Math.max(startsMessage && this.#msgs ? this.#msgs.readyAt(1, now) : now, b ? b.readyAt(Math.min(len, b.burst), now) : now);
  }
}
