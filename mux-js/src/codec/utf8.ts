// The one UTF-8 encoder the codec, the core and the driver share, and byte concatenation.
export const utf8 = new TextEncoder();

/** The parts back to back; a part alone (which must then be a Uint8Array) is returned as it is. */
export function concat(parts: readonly ArrayLike<number>[]): Uint8Array {
  if (parts.length === 1) return parts[0] as Uint8Array;
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}
