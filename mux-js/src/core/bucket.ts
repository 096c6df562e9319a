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
    return t >= n ? now : now + Math.ceil(((n - t) * 1000) / this.rate);
  }
}

/** A session's pacer: its message bucket and its byte bucket. */
export type Pacer = [messages: Bucket, bytes: Bucket];

/**
 * The opener's mirror of a granted rate (spec/sessions.md#rates, "Pacing"): it keeps a quarter
 * of each burst back and refills 1/32 slower than granted, so frames bunched in transit still
 * pass the acceptor's bucket. A rate of 0 means no limit: a bucket that is never empty.
 */
export function pacer(g: Grant, now: number): Pacer {
  const mirror = (rate: number, burst: number) =>
    rate ? new Bucket(rate - rate / 32, burst - Math.floor(burst / 4), now) : new Bucket(Infinity, Infinity, now);
  return [mirror(g.messagesPerSec, g.burstMessages), mirror(g.bytesPerSec, g.burstBytes)];
}
