/**
 * Keeps memory flat while streaming.
 *
 * WebCrypto's `deriveBits` returns a fresh buffer for every record's
 * keystream, and V8 does not count these buffers as memory pressure: they
 * are freed only when a collection happens to run. Streaming 256 MiB of
 * keystream alone grew a process to ~300 MB RSS (measured). Every other
 * large buffer of a stream is recycled (pool.ts), so these are the only
 * garbage a stream leaves: the stream code reports their bytes, and a
 * collection runs whenever enough piled up.
 *
 * Two ways to collect, measured (bench/floor.ts conditions, 2-core EPYC):
 * - V8's `gc` exposed on the global object (the process was started with
 *   `--v8-flags=--expose-gc`, as the deno.json tasks and compiled binaries
 *   are): a full collection of our small heap takes ~0.4 ms when idle, but
 *   in a streaming process each one costs several ms more (the freed
 *   keystream memory goes back to the OS and the next buffers fault it in
 *   again): one side alone measured ~9.6, ~8.0 and ~7.4 ms CPU per MiB
 *   collecting every 4, 8 and 32 MiB. It runs every
 *   {@linkcode GC_INTERVAL_BYTES} (16 MiB), which keeps a 1 GiB transfer
 *   near 70 MiB peak RSS;
 * - otherwise `gc` from a `node:vm` context (the flag set at run time only
 *   reaches new contexts): the same collection costs ~20 ms there, so it
 *   runs only every {@linkcode GC_INTERVAL_FALLBACK_BYTES} (24 MiB;
 *   ~0.8 ms per MiB, peak RSS ~80 MB). Where neither is possible this does
 *   nothing (memory is then higher, behaviour the same).
 *
 * @module
 */
import * as v8 from "node:v8";
import * as vm from "node:vm";

/** Bytes of short-lived keystream buffers between two collections (global `gc`). */
export const GC_INTERVAL_BYTES = 16 * 1024 * 1024;
/** The same through the slow `node:vm` route. */
export const GC_INTERVAL_FALLBACK_BYTES = 24 * 1024 * 1024;

type GcFn = () => void;
let collect: GcFn | null | undefined;
let interval = GC_INTERVAL_BYTES;
let pending = 0;

function gcFunction(): GcFn | null {
  if (collect === undefined) {
    const exposed = (globalThis as { gc?: unknown }).gc;
    if (typeof exposed === "function") {
      collect = exposed as GcFn;
      interval = GC_INTERVAL_BYTES;
      return collect;
    }
    interval = GC_INTERVAL_FALLBACK_BYTES;
    try {
      v8.setFlagsFromString("--expose-gc");
      collect = vm.runInNewContext("gc") as GcFn;
    } catch {
      collect = null;
    }
  }
  return collect;
}

/** Whether collections use the fast, globally exposed `gc` (for the benchmark's report). */
export function fastGc(): boolean {
  gcFunction();
  return interval === GC_INTERVAL_BYTES && collect !== null;
}

/** Notes `bytes` of buffers that just became garbage; collects when enough piled up. */
export function noteGarbage(bytes: number): void {
  pending += bytes;
  if (pending < interval) return;
  pending = 0;
  gcFunction()?.();
}
