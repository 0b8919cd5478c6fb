/**
 * The record keystream: HMAC-SHA256 in counter mode.
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
 * yields a whole record's keystream, computed off the main thread.
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

const LABEL = utf8.encode("efx1 ks");

/**
 * Records up to this size (the 4 KiB of a small file included) get their
 * keystream from `node:crypto`'s synchronous PBKDF2 (identical output),
 * larger ones from WebCrypto, off the main thread. Measured per call:
 * 64 B: 4.5 us vs 42 us; 1 KiB: 16 us vs 30 us; 4 KiB: 59 us vs 49 us (but
 * no hand-off between threads).
 */
export const SYNC_KEYSTREAM_MAX = 4096;

/** The largest keystream one record may take (2^32 - 1 blocks of 32 bytes). */
export const MAX_KEYSTREAM_BYTES = (2 ** 32 - 1) * 32;

/** The salt for record `seq`: "efx1 ks" || uint64_be(seq). */
export function keystreamSalt(seq: bigint): Uint8Array<ArrayBuffer> {
  return concat(LABEL, u64(seq));
}

/** HMAC-SHA256 counter-mode keystream for one direction. */
export class Keystream {
  #key: CryptoKey;
  #raw: Uint8Array;

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
    if (length <= SYNC_KEYSTREAM_MAX) {
      // Same function, computed in place: for control messages one WebCrypto
      // call (~30-40 us) costs several times the work itself (~5 us).
      const out = pbkdf2Sync(this.#raw, keystreamSalt(seq), 1, length, "sha256");
      return new Uint8Array(out.buffer, out.byteOffset, length) as Uint8Array<ArrayBuffer>;
    }
    const bits = await crypto.subtle.deriveBits(
      { name: "PBKDF2", hash: "SHA-256", salt: keystreamSalt(seq), iterations: 1 },
      this.#key,
      Math.ceil(length / 32) * 256,
    );
    noteGarbage(bits.byteLength); // dead once the record is sealed or opened
    return new Uint8Array(bits, 0, length);
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
