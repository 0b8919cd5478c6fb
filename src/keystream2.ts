/**
 * The protocol version 2 record keystream: SHA-256 keyed by a prefix block,
 * in counter mode.
 *
 * For a direction's 32-byte encryption key `K` and record sequence number
 * `seq`, keystream block `i` (0-based, 32 bytes each) is
 *
 *     SHA-256(K || 0^32 || "efx2 ks" || uint64_be(seq) || uint64_be(i))
 *
 * an 87-byte message, and the keystream of a record of `n` bytes is the
 * first `n` bytes of blocks 0, 1, 2, ... The first 64-byte block (the key
 * and 32 zero bytes) is the same for every block of every record, so its
 * compression is done once per key: each 32 bytes of keystream cost one
 * SHA-256 compression, half of what HMAC counter mode (version 1) costs.
 * PROTOCOL.md ("Why this keystream") gives the security argument: a PRF on
 * fixed-length inputs under the compression-function assumptions HMAC's
 * own proof rests on.
 *
 * It is computed in place by the WebAssembly SIMD module
 * (src/wasm/sha256_ks.c) and XORed straight from its memory, so a record
 * costs no allocation and no thread hand-off. Without WebAssembly SIMD the
 * same bytes come from node:crypto, block by block (correct, and slow).
 *
 * Invariants:
 * - every (K, seq, i) triple is used for at most one block: `seq` never
 *   repeats under one key and `i` counts blocks within one record (at most
 *   2^15 for a 1 MiB record);
 * - every hashed message has the same length (87 bytes), so no keystream
 *   input is a prefix or an extension of another;
 * - K is used for nothing but this keystream (MAC keys are separate, and
 *   keys of version 1 and 2 sessions differ, their transcripts differing);
 * - the keystream of length n is a prefix of the keystream of any length > n.
 *
 * @example
 * ```ts
 * const ks = PrefixKeystream.create(new Uint8Array(32));
 * const data = new Uint8Array(100);
 * ks.xorInPlace(0n, data); // data is now record 0's first 100 keystream bytes
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { concat, u64, utf8 } from "./bytes.ts";
import { xorInto } from "./keystream.ts";
import { generateBlocks, ksWasm, loadKey, newOwnerId, output, setSalt } from "./wasm/module.ts";

const LABEL = utf8.encode("efx2 ks");

/** The largest record body whose keystream one call computes (the record limit, 1 MiB). */
export const MAX_KEYSTREAM2_BYTES = 1024 * 1024;

/** The 15-byte salt for record `seq`: "efx2 ks" || uint64_be(seq). */
export function keystream2Salt(seq: bigint): Uint8Array<ArrayBuffer> {
  return concat(LABEL, u64(seq));
}

/** Version 2 keystream for one direction. */
export class PrefixKeystream {
  #raw: Uint8Array;
  #id = newOwnerId();

  private constructor(raw: Uint8Array) {
    this.#raw = raw;
  }

  /** Wraps a 32-byte encryption key. */
  static create(rawKey: Uint8Array): PrefixKeystream {
    if (rawKey.length !== 32) throw new Error("keystream key must be 32 bytes");
    return new PrefixKeystream(rawKey.slice());
  }

  /** XORs record `seq`'s keystream into `data` (encrypts or decrypts it in place). */
  xorInPlace(seq: bigint, data: Uint8Array): void {
    const n = data.length;
    if (n === 0) return;
    if (n > MAX_KEYSTREAM2_BYTES) throw new Error("record too long for one keystream");
    if (!ksWasm) {
      xorInto(data, keystream2Hashed(this.#raw, seq, n));
      return;
    }
    loadKey(2, this.#id, this.#raw);
    setSalt(keystream2Salt(seq));
    generateBlocks(2, 0, Math.ceil(n / 32));
    xorInto(data, output(n));
  }

  /** The first `length` keystream bytes of record `seq` (a fresh buffer; for tests and vectors). */
  generate(seq: bigint, length: number): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(length);
    this.xorInPlace(seq, out);
    return out;
  }
}

/**
 * The same keystream bytes from node:crypto, one hash per block (the path
 * without WebAssembly SIMD; tests compare the two).
 */
export function keystream2Hashed(key: Uint8Array, seq: bigint, n: number): Uint8Array {
  const prefix = createHash("sha256").update(key).update(new Uint8Array(32))
    .update(keystream2Salt(seq));
  const out = new Uint8Array(Math.ceil(n / 32) * 32);
  for (let i = 0; i * 32 < n; i++) out.set(prefix.copy().update(u64(BigInt(i))).digest(), i * 32);
  return out.subarray(0, n);
}
