/**
 * A small free list of large byte buffers, so that streaming a file does not
 * leave one dead buffer per record for the garbage collector (see gc.ts).
 *
 * Ownership is explicit: `take` hands out a buffer nobody else holds; whoever
 * is done with it calls `give` exactly once and never touches it again.
 * Buffers of other sizes are simply dropped. A buffer handed back while
 * still in use would corrupt data; the record tags and the whole-file
 * SHA-256 would then fail the transfer loudly, never silently.
 *
 * @module
 */

/** Buffers kept per size. */
const KEEP = 16;
const free = new Map<number, ArrayBuffer[]>();

/** Sizes worth pooling (the big ones of a data stream). */
export const POOL_MIN = 64 * 1024;

/** A buffer of exactly `size` bytes (contents undefined), recycled when possible. */
export function take(size: number): Uint8Array<ArrayBuffer> {
  const list = size >= POOL_MIN ? free.get(size) : undefined;
  const buf = list?.pop();
  return buf ? new Uint8Array(buf) : new Uint8Array(size);
}

/** Hands back the whole buffer under `view`; the caller must not use it again. */
export function give(view: Uint8Array): void {
  const buf = view.buffer;
  if (!(buf instanceof ArrayBuffer) || buf.byteLength < POOL_MIN) return;
  let list = free.get(buf.byteLength);
  if (!list) free.set(buf.byteLength, list = []);
  if (list.length < KEEP) list.push(buf);
}
