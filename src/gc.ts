/**
 * Keeps memory flat while streaming.
 *
 * Two kinds of garbage V8 does not count as memory pressure, so that they
 * are freed only when a collection happens to run:
 * - buffers: WebCrypto's `deriveBits` returns a fresh buffer for every
 *   record's version 1 keystream; streaming 256 MiB of keystream alone grew
 *   a process to ~300 MB RSS (measured). Every other large buffer of a
 *   stream is recycled (pool.ts). The stream code reports their bytes
 *   ({@linkcode noteGarbage}); a collection runs every
 *   {@linkcode GC_INTERVAL_BYTES}.
 * - native objects: each record's `node:crypto` HMAC lives outside V8's
 *   heap and is freed only by a full collection, which a heap as small as
 *   ours rarely needs. A server moving 1 GiB up and down, round after
 *   round, grew its malloc heap from 4.6 to 13.6 MiB in three rounds this
 *   way. The record layer reports each record ({@linkcode noteRecord}) and
 *   a collection runs every {@linkcode GC_INTERVAL_RECORDS}: four rounds
 *   (`deno task bench-memory`, 2026-12-03, 2-core Xeon) then peaked at
 *   71.3-76.4 MiB, level from the second, against 71.3-83.9 MiB rising
 *   3 MiB a round without; every 512 records did no better (70.7-75.7).
 *
 * Two ways to collect, measured (bench/floor.ts conditions, 2-core EPYC):
 * - V8's `gc` exposed on the global object (the process was started with
 *   `--v8-flags=--expose-gc`, as the deno.json tasks and compiled binaries
 *   are): a full collection of our small heap takes a few ms (0.4 ms on
 *   an idle EPYC; 4-8 ms on a 2-core Xeon), and in a streaming process
 *   each one costs several ms more (the freed
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
/**
 * Records sealed or opened between two collections, whatever their size: a
 * full collection costs a streaming process 4-8 ms, while a record's HMAC
 * object is about 0.4 KiB. So at most ~1.6 MiB of them pile up, and a
 * collection costs 1-2 us per record: ~0.01 ms per MiB of 256 KiB records,
 * and ~10 us per 4 KiB file (a few records each way) where a bound of 512
 * cost ~60 us, 7% of a small file's server time.
 */
export const GC_INTERVAL_RECORDS = 4096;
/** The same through the slow `node:vm` route. */
export const GC_INTERVAL_FALLBACK_BYTES = 24 * 1024 * 1024;

type GcFn = () => void;

/**
 * Counts both kinds of garbage and runs `collect` once either piled up,
 * starting both counts afresh (one collection frees both kinds).
 *
 * @example
 * ```ts
 * const meter = new GarbageMeter(() => console.log("collect"), 1 << 20, 512);
 * meter.buffers(1 << 20); // logs "collect"
 * for (let i = 0; i < 512; i++) meter.record(); // logs "collect" once
 * ```
 */
export class GarbageMeter {
  #bytes = 0;
  #records = 0;
  #runs = 0;

  constructor(
    readonly collect: GcFn,
    readonly maxBytes: number,
    readonly maxRecords: number,
  ) {}

  /** Notes `bytes` of buffers that just became garbage. */
  buffers(bytes: number): void {
    this.#bytes += bytes;
    if (this.#bytes >= this.maxBytes) this.#run();
  }

  /** Notes one record sealed or opened (its native HMAC object). */
  record(): void {
    if (++this.#records >= this.maxRecords) this.#run();
  }

  /** Collections run so far. */
  get runs(): number {
    return this.#runs;
  }

  #run(): void {
    this.#bytes = 0;
    this.#records = 0;
    this.#runs++;
    this.collect();
  }
}

let meter: GarbageMeter | undefined;

/** The process's meter, collecting through the fastest `gc` it can reach (or not at all). */
function processMeter(): GarbageMeter {
  if (meter) return meter;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === "function") {
    return meter = new GarbageMeter(exposed as GcFn, GC_INTERVAL_BYTES, GC_INTERVAL_RECORDS);
  }
  let slow: GcFn = () => {};
  try {
    v8.setFlagsFromString("--expose-gc");
    slow = vm.runInNewContext("gc") as GcFn;
  } catch { /* no way to collect: memory is then higher, behaviour the same */ }
  return meter = new GarbageMeter(slow, GC_INTERVAL_FALLBACK_BYTES, GC_INTERVAL_RECORDS);
}

/** Notes `bytes` of buffers that just became garbage; collects when enough piled up. */
export function noteGarbage(bytes: number): void {
  processMeter().buffers(bytes);
}

/** Notes one record sealed or opened; collects every {@linkcode GC_INTERVAL_RECORDS}. */
export function noteRecord(): void {
  processMeter().record();
}

/** Collections the process's meter has run (for tests and diagnostics). */
export function gcCollections(): number {
  return processMeter().runs;
}
