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
 *   collections run as {@linkcode GC_RECORDS} says. `deno task
 *   bench-memory` (2026-12-03, 2-core Xeon; bench/memory_results.json):
 *   four rounds of 1 GiB up and down peaked at 71.3-83.9 MiB without,
 *   climbing to 83-84 MiB by the third round, and at 70.7-75.7 collecting
 *   every 512 records. The uploads of 1000 small files added to each
 *   round peaked 3.5-4 MiB higher collecting every 4096 records (up to
 *   80.6 MiB) than every 512 or with these bounds (up to 76.3).
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
/** The same through the slow `node:vm` route. */
export const GC_INTERVAL_FALLBACK_BYTES = 24 * 1024 * 1024;
/** When records (sealed or opened, whatever their size) call for a collection. */
export interface RecordBounds {
  /** After this many records, collect if `minMs` have passed since the last collection. */
  soft: number;
  /** After this many, collect regardless. */
  hard: number;
  /** Least time between two collections that records below `hard` start. */
  minMs: number;
}

/**
 * A full collection costs a streaming process 4-8 ms. A 1 GiB transfer is
 * about 500 records a second per process, so it collects every 512 records
 * (~0.03-0.06 ms per MiB). Small files make several times as many records
 * a second, and a client can send tiny records faster still: collecting
 * every 512 of them would cost ~14 us per record, about what the record's
 * own HMAC costs (`createHmac` on a small input measured 9-13 us here), so
 * a client could near double a tiny record's cost to the server. Below
 * `hard` the time floor caps collections at four a second; above it they
 * come every 2048 records (~3.4 us each), which bounds the HMAC objects
 * left however fast records come (4096 let small-file uploads peak 3.5-4
 * MiB higher than 512; see the module text).
 */
export const GC_RECORDS: Readonly<RecordBounds> = Object.freeze({
  soft: 512,
  hard: 2048,
  minMs: 250,
});
/**
 * The bounds on the slow `node:vm` route, where a collection costs ~20 ms:
 * the same memory in steady streams, the time floor four times as long.
 */
export const GC_RECORDS_FALLBACK: Readonly<RecordBounds> = Object.freeze({
  soft: 512,
  hard: 8192,
  minMs: 1000,
});

type GcFn = () => void;

/**
 * Counts both kinds of garbage and runs `collect` once either piled up,
 * starting both counts afresh (one collection frees both kinds).
 *
 * @example
 * ```ts
 * const bounds = { soft: 512, hard: 4096, minMs: 250 };
 * const meter = new GarbageMeter(() => console.log("collect"), 1 << 20, bounds);
 * meter.buffers(1 << 20); // logs "collect"
 * // Records in quick succession: "collect" once, at the 4096th.
 * for (let i = 0; i < 4096; i++) meter.record();
 * ```
 */
export class GarbageMeter {
  #bytes = 0;
  #records = 0;
  #runs = 0;
  #noted = 0;
  #last: number;

  constructor(
    readonly collect: GcFn,
    readonly maxBytes: number,
    readonly bounds: Readonly<RecordBounds>,
    readonly now: () => number = () => performance.now(),
  ) {
    if (!(bounds.soft > 0 && bounds.soft <= bounds.hard)) {
      throw new RangeError("record bounds need 0 < soft <= hard");
    }
    this.#last = now();
  }

  /** Notes `bytes` of buffers that just became garbage. */
  buffers(bytes: number): void {
    this.#bytes += bytes;
    if (this.#bytes >= this.maxBytes) this.#run();
  }

  /** Notes one record sealed or opened (its native HMAC object). */
  record(): void {
    this.#noted++;
    const n = ++this.#records;
    if (n < this.bounds.soft) return;
    if (n >= this.bounds.hard || this.now() - this.#last >= this.bounds.minMs) this.#run();
  }

  /** Collections run so far. */
  get runs(): number {
    return this.#runs;
  }

  /** Records noted so far. */
  get noted(): number {
    return this.#noted;
  }

  #run(): void {
    this.#bytes = 0;
    this.#records = 0;
    this.#runs++;
    this.collect();
    this.#last = this.now();
  }
}

let meter: GarbageMeter | undefined;

/** The process's meter, collecting through the fastest `gc` it can reach (or not at all). */
function processMeter(): GarbageMeter {
  if (meter) return meter;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === "function") {
    return meter = new GarbageMeter(exposed as GcFn, GC_INTERVAL_BYTES, GC_RECORDS);
  }
  let slow: GcFn = () => {};
  try {
    v8.setFlagsFromString("--expose-gc");
    slow = vm.runInNewContext("gc") as GcFn;
  } catch { /* no way to collect: memory is then higher, behaviour the same */ }
  return meter = new GarbageMeter(slow, GC_INTERVAL_FALLBACK_BYTES, GC_RECORDS_FALLBACK);
}

/** Notes `bytes` of buffers that just became garbage; collects when enough piled up. */
export function noteGarbage(bytes: number): void {
  processMeter().buffers(bytes);
}

/** Notes one record sealed or opened; collects as {@linkcode GC_RECORDS} says. */
export function noteRecord(): void {
  processMeter().record();
}

/** The process's meter: collections run, records noted, its bounds (for tests and diagnostics). */
export function gcStats(): {
  collections: number;
  records: number;
  bounds: Readonly<RecordBounds>;
} {
  const m = processMeter();
  return { collections: m.runs, records: m.noted, bounds: m.bounds };
}
