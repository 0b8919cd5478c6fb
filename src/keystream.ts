/**
 * The protocol version 1 record keystream: HMAC-SHA256 in counter mode
 * (version 2's is in keystream2.ts; {@linkcode xorInto} serves both).
 *
 * For a direction's 32-byte encryption key `K` and record sequence number
 * `seq`, keystream block `i` (1-based, 32 bytes each) is
 *
 *     HMAC-SHA256(K, "efx1 ks" || uint64_be(seq) || uint32_be(i))
 *
 * and the keystream of a record of `n` bytes is the first `n` bytes of blocks
 * 1, 2, 3, ... This is exactly PBKDF2-HMAC-SHA256 with password `K`, salt
 * `"efx1 ks" || uint64_be(seq)` and one iteration (RFC 8018, section 5.2: with
 * c = 1, T_i = U_1 = PRF(P, S || INT(i))), so one WebCrypto `deriveBits` call
 * yields a whole large record's keystream, computed off the main thread.
 * Small records (control messages, small files) get the same bytes from a
 * WebAssembly SIMD implementation (src/wasm/sha256_ks.c), computed in place.
 *
 * Invariants (the security argument is in PROTOCOL.md):
 * - every (K, seq, i) triple is used for at most one block: `seq` is a
 *   per-direction counter that never repeats under one key, and `i` counts
 *   blocks within one record (at most 2^32 - 1 blocks, far above the record
 *   size limit);
 * - K is used for nothing but this keystream (MAC keys are separate);
 * - the keystream of length n is a prefix of the keystream of any length > n,
 *   so a receiver may compute it ahead at a larger size and use a prefix.
 *
 * @example
 * ```ts
 * const ks = await Keystream.create(new Uint8Array(32));
 * const block = await ks.generate(0n, 100); // 100 bytes for record 0
 * ```
 * @module
 */
import { pbkdf2Sync } from "node:crypto";
import { concat, u64, utf8 } from "./bytes.ts";
import { noteGarbage } from "./gc.ts";
import { generateBlocks, ksWasm, loadKey, newOwnerId, output, setSalt } from "./wasm/module.ts";

const LABEL = utf8.encode("efx1 ks");

/**
 * Records up to this size (control messages, the 4 KiB of a small file)
 * get their keystream computed in place by the WebAssembly module; larger
 * ones from WebCrypto, off the main thread. CPU per call, measured on the
 * 2-core EPYC (WASM / node:crypto pbkdf2Sync / WebCrypto): 1 KiB 9 / 20 /
 * 22 us; 4 KiB 28 / 81 / 66 us; 16 KiB 108 / 311 / 129 us; 64 KiB 424 /
 * 1142 / 310 us (WebCrypto also adds a thread hand-off, ~30-40 us of wall
 * time). bench/keystream_wasm.ts measures the large-record case.
 */
export const SYNC_KEYSTREAM_MAX = 16384;

/** The largest keystream one record may take (2^32 - 1 blocks of 32 bytes). */
export const MAX_KEYSTREAM_BYTES = (2 ** 32 - 1) * 32;

/** The salt for record `seq`: "efx1 ks" || uint64_be(seq). */
export function keystreamSalt(seq: bigint): Uint8Array<ArrayBuffer> {
  return concat(LABEL, u64(seq));
}

/** Whether small records use the WASM keystream (for tests and the benchmark). */
export function wasmKeystreamActive(): boolean {
  return ksWasm !== null;
}

/** HMAC-SHA256 counter-mode keystream for one direction. */
export class Keystream {
  #key: CryptoKey;
  #raw: Uint8Array;
  #id = newOwnerId();

  private constructor(key: CryptoKey, raw: Uint8Array) {
    this.#key = key;
    this.#raw = raw;
  }

  /** Wraps a 32-byte encryption key. */
  static async create(rawKey: Uint8Array<ArrayBuffer>): Promise<Keystream> {
    if (rawKey.length !== 32) throw new Error("keystream key must be 32 bytes");
    const key = await crypto.subtle.importKey("raw", rawKey, "PBKDF2", false, ["deriveBits"]);
    return new Keystream(key, rawKey.slice());
  }

  /** The first `length` keystream bytes of record `seq` (a fresh, 4-byte-aligned buffer). */
  async generate(seq: bigint, length: number): Promise<Uint8Array<ArrayBuffer>> {
    if (length === 0) return new Uint8Array(0);
    if (length > MAX_KEYSTREAM_BYTES) throw new Error("record too long for one keystream");
    if (length <= SYNC_KEYSTREAM_MAX) return this.generateSync(seq, length);
    const bits = await crypto.subtle.deriveBits(
      { name: "PBKDF2", hash: "SHA-256", salt: keystreamSalt(seq), iterations: 1 },
      this.#key,
      Math.ceil(length / 32) * 256,
    );
    noteGarbage(bits.byteLength); // dead once the record is sealed or opened
    return new Uint8Array(bits, 0, length);
  }

  /**
   * The same bytes as {@linkcode generate}, computed in place (WASM, or
   * node:crypto's PBKDF2 without it), for records up to
   * {@linkcode SYNC_KEYSTREAM_MAX}: for these a hand-off to another thread
   * costs more than the work.
   */
  generateSync(seq: bigint, length: number): Uint8Array<ArrayBuffer> {
    if (length > SYNC_KEYSTREAM_MAX) throw new Error("generateSync: record too long");
    if (!ksWasm) {
      const out = pbkdf2Sync(this.#raw, keystreamSalt(seq), 1, length, "sha256");
      return new Uint8Array(out.buffer, out.byteOffset, length) as Uint8Array<ArrayBuffer>;
    }
    loadKey(1, this.#id, this.#raw);
    setSalt(keystreamSalt(seq));
    generateBlocks(1, 1, Math.ceil(length / 32));
    return output(length).slice();
  }
}

/**
 * XORs `data` into `out` (out[i] ^= data[i] for i < data.length), using
 * 32-bit words when both are 4-byte aligned. `out` must be at least as long.
 */
export function xorInto(out: Uint8Array, data: Uint8Array): void {
  const n = data.length;
  let i = 0;
  if ((out.byteOffset & 3) === 0 && (data.byteOffset & 3) === 0 && n >= 16) {
    const words = n >>> 2;
    const o32 = new Uint32Array(out.buffer, out.byteOffset, words);
    const d32 = new Uint32Array(data.buffer, data.byteOffset, words);
    for (let w = 0; w < words; w++) o32[w] ^= d32[w];
    i = words << 2;
  }
  for (; i < n; i++) out[i] ^= data[i];
}
