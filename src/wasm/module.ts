/**
 * The WebAssembly SIMD keystream module (src/wasm/sha256_ks.c), loaded once
 * per process and shared by the version 1 and version 2 keystreams
 * (src/keystream.ts, src/keystream2.ts).
 *
 * The module holds one key's cached midstates per version, so each user
 * records which key it loaded ({@linkcode loadKey}) and reloads only when
 * another key's turn comes. The raw key is written to the module's memory
 * for the load and that copy is zeroed at once. What stays in the module's
 * memory until it is overwritten: the cached midstates (key material, as
 * the raw key each keystream object keeps is), the last record's keystream
 * in the output buffer, and key-derived words left in the module's stack by
 * the compression function. The module lives as long as the process; no
 * wipe of those is attempted (JavaScript cannot reach the stack's words).
 *
 * @example
 * ```ts
 * import { ksWasm, loadKey } from "./module.ts";
 * if (ksWasm) loadKey(2, 1, new Uint8Array(32));
 * ```
 * @module
 */
import { Buffer } from "node:buffer";
import { SHA256_KS_WASM } from "./sha256_ks_wasm.ts";

/** The module's exports. */
export interface KsWasm {
  memory: WebAssembly.Memory;
  ks_io_ptr(): number;
  ks_out_ptr(): number;
  ks_max_blocks(): number;
  ks_key(): void;
  ks_gen(first: number, nblocks: number): number;
  ks2_key(): void;
  ks2_gen(first: number, nblocks: number): number;
}

/** The largest record body the module's output buffer holds (1 MiB). */
const NEEDED_BLOCKS = 32768;

/** The loaded module, or null where WebAssembly SIMD is unavailable. */
export const ksWasm: KsWasm | null = (() => {
  try {
    const module = new WebAssembly.Module(Buffer.from(SHA256_KS_WASM, "base64"));
    const ex = new WebAssembly.Instance(module, {}).exports as unknown as KsWasm;
    return ex.ks_max_blocks() >= NEEDED_BLOCKS ? ex : null;
  } catch {
    return null;
  }
})();

/** Which keystream object's key the module holds, per version. */
const owner = { 1: 0, 2: 0 };
let lastId = 0;

/** A fresh owner id for a keystream object. */
export function newOwnerId(): number {
  return ++lastId;
}

/**
 * Makes the module hold `raw` as the key of protocol `version`'s keystream
 * for owner `id`, unless it holds it already. Requires {@linkcode ksWasm}.
 */
export function loadKey(version: 1 | 2, id: number, raw: Uint8Array): void {
  const w = ksWasm!;
  if (owner[version] === id) return;
  const mem = new Uint8Array(w.memory.buffer);
  const io = w.ks_io_ptr();
  mem.set(raw, io);
  if (version === 1) w.ks_key();
  else w.ks2_key();
  mem.fill(0, io, io + 32); // the key itself need not stay there
  owner[version] = id;
}

/** Writes the 15-byte salt the next ks_gen / ks2_gen call reads. */
export function setSalt(salt: Uint8Array): void {
  const w = ksWasm!;
  new Uint8Array(w.memory.buffer).set(salt, w.ks_io_ptr() + 64);
}

/**
 * Writes keystream blocks `first` .. `first + nblocks - 1` of protocol
 * `version` (ks_gen or ks2_gen) for the loaded key and salt to the output
 * buffer; throws if the module refuses (more blocks than its buffer holds,
 * or a counter out of range), so that stale bytes are never used.
 */
export function generateBlocks(version: 1 | 2, first: number, nblocks: number): void {
  const w = ksWasm!;
  const written = version === 1 ? w.ks_gen(first, nblocks) : w.ks2_gen(first, nblocks);
  if (written < nblocks * 32) throw new Error("keystream module refused the request");
}

/** A view of the first `length` bytes the last ks_gen / ks2_gen call wrote (valid until the next call). */
export function output(length: number): Uint8Array {
  const w = ksWasm!;
  return new Uint8Array(w.memory.buffer, w.ks_out_ptr(), length);
}
