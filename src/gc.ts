/**
 * Keeps memory flat while streaming.
 *
 * WebCrypto's `deriveBits` returns a fresh buffer for every record's
 * keystream, and V8 does not count these buffers as memory pressure: they
 * are freed only when a collection happens to run. Streaming 256 MiB of
 * keystream alone grew a process to ~300 MB RSS (measured). Every other
 * large buffer of a stream is recycled (pool.ts), so these are the only
 * garbage a stream leaves: the stream code reports their bytes, and after
 * every {@linkcode GC_INTERVAL_BYTES} a full collection runs (~3 ms with our
 * small heap). Measured on 512 MiB transfers: every 16 MiB, peak RSS ~75 MB;
 * every 24 MiB, ~79 MB; every 32 MiB, ~85-94 MB and 7 % less CPU than 16.
 * V8's `gc` is reached through `node:v8` and `node:vm`; where that is not
 * possible this does nothing (memory is then higher, behaviour the same).
 *
 * @module
 */
import * as v8 from "node:v8";
import * as vm from "node:vm";

/** Bytes of short-lived keystream buffers between two collections. */
export const GC_INTERVAL_BYTES = 24 * 1024 * 1024;

type GcFn = () => void;
let collect: GcFn | null | undefined;
let pending = 0;

function gcFunction(): GcFn | null {
  if (collect === undefined) {
    try {
      v8.setFlagsFromString("--expose-gc");
      collect = vm.runInNewContext("gc") as GcFn;
    } catch {
      collect = null;
    }
  }
  return collect;
}

/** Notes `bytes` of buffers that just became garbage; collects when enough piled up. */
export function noteGarbage(bytes: number): void {
  pending += bytes;
  if (pending < GC_INTERVAL_BYTES) return;
  pending = 0;
  gcFunction()?.();
}
