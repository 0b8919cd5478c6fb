/**
 * Keeps memory flat while streaming.
 *
 * WebCrypto's `deriveBits` returns a fresh ArrayBuffer for every record's
 * keystream. V8 frees such buffers only when a garbage collection finds
 * their small JS wrappers dead, and it does not count them as memory
 * pressure soon enough: streaming 1 GiB grew the process by ~150 MiB of dead
 * keystream buffers before V8 collected them (measured in bench/). So the
 * stream code reports the bytes it leaves behind, and after every
 * {@linkcode GC_INTERVAL_BYTES} a young-generation collection runs (about a
 * millisecond with our small heap). `gc` is reached through `node:v8` and
 * `node:vm`; where that is not possible, this does nothing (memory is then
 * higher, but behaviour is the same).
 *
 * @module
 */

/** Bytes of short-lived buffers between two collections. */
export const GC_INTERVAL_BYTES = 16 * 1024 * 1024;

let collect: ((opts?: { type: "minor" | "major" }) => void) | null | undefined;
let pending = 0;

function gcFunction() {
  if (collect === undefined) {
    // deno-lint-ignore no-explicit-any
    collect = (globalThis as any).gc ?? null;
  }
  return collect;
}

/** Notes `bytes` of buffers that just became garbage; collects when enough piled up. */
export function noteGarbage(bytes: number): void {
  pending += bytes;
  if (pending < GC_INTERVAL_BYTES) return;
  pending = 0;
  gcFunction()?.({ type: "minor" });
}
