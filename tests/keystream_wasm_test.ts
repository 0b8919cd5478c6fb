/**
 * The WebAssembly keystreams (src/wasm/sha256_ks.c) must give exactly the
 * protocol bytes: for version 1 (small records) every 32-byte block equals
 * node:crypto's HMAC-SHA256(K, "efx1 ks" || uint64_be(seq) || uint32_be(i));
 * for version 2 (every record) node:crypto's
 * SHA-256(K || 0^32 || "efx2 ks" || uint64_be(seq) || uint64_be(i)); on
 * seeded random keys, sequence numbers, block counters and lengths.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash, createHmac } from "node:crypto";
import { concat, u64, utf8 } from "../src/bytes.ts";
import {
  Keystream,
  keystreamSalt,
  SYNC_KEYSTREAM_MAX,
  wasmKeystreamActive,
} from "../src/keystream.ts";
import { keystream2Hashed, PrefixKeystream } from "../src/keystream2.ts";
import { SHA256_KS_WASM } from "../src/wasm/sha256_ks_wasm.ts";

/** xorshift32: reproducible "random" bytes (the seed is in the failure message). */
function seeded(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  return {
    bytes(n: number): Uint8Array<ArrayBuffer> {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) b[i] = next() & 0xff;
      return b;
    },
    below(n: number): number {
      return next() % n;
    },
  };
}

const u32 = (i: number) => new Uint8Array([i >>> 24, (i >>> 16) & 255, (i >>> 8) & 255, i & 255]);

function hmacBlock(key: Uint8Array, salt: Uint8Array, i: number): Buffer {
  return createHmac("sha256", key).update(salt).update(u32(i)).digest();
}

Deno.test("keystream: small records use the WASM module", () => {
  assert.equal(wasmKeystreamActive(), true);
});

Deno.test("keystream: WASM output equals node:crypto HMAC per block (seeded keys, seqs, lengths)", async () => {
  for (let seed = 1; seed <= 24; seed++) {
    const r = seeded(seed * 7919);
    const key = r.bytes(32);
    const ks = await Keystream.create(key);
    const seqs = [0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 64n - 1n, BigInt(r.below(2 ** 31))];
    const seq = seqs[seed % seqs.length];
    const lengths = [1, 31, 32, 33, 127, 128, 129, r.below(SYNC_KEYSTREAM_MAX) + 1];
    const length = lengths[seed % lengths.length];
    const got = ks.generateSync(seq, length);
    assert.equal(got.length, length);
    const salt = concat(utf8.encode("efx1 ks"), u64(seq));
    for (let b = 0; b * 32 < length; b++) {
      const want = hmacBlock(key, salt, b + 1).subarray(0, Math.min(32, length - b * 32));
      assert.ok(
        want.equals(got.subarray(b * 32, b * 32 + 32)),
        `seed ${seed}: block ${b + 1} of seq ${seq} differs`,
      );
    }
  }
});

Deno.test("keystream: keys alternating between streams never mix (cached midstates)", async () => {
  const r = seeded(4242);
  const keys = [r.bytes(32), r.bytes(32), r.bytes(32)];
  const streams = await Promise.all(keys.map((k) => Keystream.create(k)));
  for (let round = 0; round < 30; round++) {
    const k = r.below(3);
    const seq = BigInt(r.below(1000));
    const got = streams[k].generateSync(seq, 64);
    const salt = keystreamSalt(seq);
    const want = Buffer.concat([hmacBlock(keys[k], salt, 1), hmacBlock(keys[k], salt, 2)]);
    assert.ok(want.equals(got), `round ${round}: stream ${k} seq ${seq}`);
  }
});

Deno.test("keystream: the raw module matches HMAC at any block counter (all 4 lanes, 2^24 and 2^32 edges)", () => {
  const ex = new WebAssembly.Instance(
    new WebAssembly.Module(Buffer.from(SHA256_KS_WASM, "base64")),
    {},
  ).exports as unknown as {
    memory: WebAssembly.Memory;
    ks_io_ptr(): number;
    ks_out_ptr(): number;
    ks_key(): void;
    ks_gen(first: number, n: number): number;
  };
  const firsts = [1, 2, 3, 0xffffff - 2, 0x1000000, 0x12345678, 0xfffffffe - 8];
  for (let t = 0; t < firsts.length; t++) {
    const r = seeded(1000 + t);
    const key = r.bytes(32);
    const salt = r.bytes(15);
    const mem = new Uint8Array(ex.memory.buffer);
    mem.set(key, ex.ks_io_ptr());
    ex.ks_key();
    mem.set(salt, ex.ks_io_ptr() + 64);
    const n = 9 + t; // not a multiple of the batch
    assert.ok(ex.ks_gen(firsts[t], n) >= n * 32);
    const out = new Uint8Array(ex.memory.buffer, ex.ks_out_ptr(), n * 32);
    for (let i = 0; i < n; i++) {
      const want = hmacBlock(key, salt, (firsts[t] + i) >>> 0);
      assert.ok(want.equals(out.subarray(i * 32, i * 32 + 32)), `first ${firsts[t]}, block ${i}`);
    }
  }
});

Deno.test("keystream: generate() agrees with WebCrypto PBKDF2 on both sides of the size switch", async () => {
  const r = seeded(99);
  const key = r.bytes(32);
  const ks = await Keystream.create(key);
  const ck = await crypto.subtle.importKey("raw", key, "PBKDF2", false, ["deriveBits"]);
  for (const n of [SYNC_KEYSTREAM_MAX - 1, SYNC_KEYSTREAM_MAX, SYNC_KEYSTREAM_MAX + 1]) {
    const got = await ks.generate(77n, n);
    const bits = await crypto.subtle.deriveBits(
      { name: "PBKDF2", hash: "SHA-256", salt: keystreamSalt(77n), iterations: 1 },
      ck,
      Math.ceil(n / 32) * 256,
    );
    assert.ok(Buffer.from(bits, 0, n).equals(got), `length ${n}`);
  }
});

// ---- version 2: SHA-256(K || 0^32 || "efx2 ks" || u64(seq) || u64(i)) ----

function v2Block(key: Uint8Array, seq: bigint, i: number): Buffer {
  return createHash("sha256").update(key).update(new Uint8Array(32))
    .update(utf8.encode("efx2 ks")).update(u64(seq)).update(u64(BigInt(i))).digest();
}

Deno.test("keystream v2: WASM equals node:crypto createHash per block (seeded keys, seqs, lengths up to 1 MiB)", () => {
  for (let seed = 1; seed <= 24; seed++) {
    const r = seeded(seed * 104729);
    const key = r.bytes(32);
    const ks = PrefixKeystream.create(key);
    const seqs = [0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 64n - 1n, BigInt(r.below(2 ** 31))];
    const seq = seqs[seed % seqs.length];
    const lengths = [1, 31, 32, 33, 127, 129, 1024 * 1024, r.below(1024 * 1024) + 1];
    const length = lengths[seed % lengths.length];
    const got = ks.generate(seq, length);
    assert.equal(got.length, length);
    // Every block of short ones; for long ones the first, last and 64 random blocks.
    const blocks = Math.ceil(length / 32);
    const check = blocks <= 64
      ? [...Array(blocks).keys()]
      : [0, 1, 2, 3, 4, blocks - 1, ...Array.from({ length: 64 }, () => r.below(blocks))];
    for (const b of check) {
      const want = v2Block(key, seq, b).subarray(0, Math.min(32, length - b * 32));
      assert.ok(want.equals(got.subarray(b * 32, b * 32 + 32)), `seed ${seed}: block ${b}`);
    }
    assert.ok(Buffer.from(keystream2Hashed(key, seq, length)).equals(got), `seed ${seed}: hashed`);
  }
});

Deno.test("keystream v2: xorInPlace encrypts and decrypts in place, at any alignment", () => {
  const r = seeded(777);
  const key = r.bytes(32);
  const ks = PrefixKeystream.create(key);
  for (const offset of [0, 1, 2, 3, 8]) {
    const plain = r.bytes(5000);
    const buf = new Uint8Array(offset + plain.length);
    const data = buf.subarray(offset);
    data.set(plain);
    ks.xorInPlace(9n, data);
    const stream = keystream2Hashed(key, 9n, plain.length);
    assert.ok(data.every((b, i) => b === (plain[i] ^ stream[i])), `offset ${offset}`);
    ks.xorInPlace(9n, data);
    assert.deepEqual(data, plain);
  }
  assert.throws(() => ks.xorInPlace(0n, new Uint8Array(1024 * 1024 + 1)), /too long/);
});

Deno.test("keystream v2: v1 and v2 streams with different keys, interleaved, never mix (cached midstates)", async () => {
  const r = seeded(4243);
  const keys = [r.bytes(32), r.bytes(32), r.bytes(32), r.bytes(32)];
  const v1 = await Promise.all(keys.slice(0, 2).map((k) => Keystream.create(k)));
  const v2 = keys.slice(2).map((k) => PrefixKeystream.create(k));
  for (let round = 0; round < 40; round++) {
    const k = r.below(4);
    const seq = BigInt(r.below(1000));
    if (k < 2) {
      const got = v1[k].generateSync(seq, 64);
      const salt = keystreamSalt(seq);
      const want = Buffer.concat([hmacBlock(keys[k], salt, 1), hmacBlock(keys[k], salt, 2)]);
      assert.ok(want.equals(got), `round ${round}: v1 stream ${k}`);
    } else {
      const got = v2[k - 2].generate(seq, 64);
      const want = Buffer.concat([v2Block(keys[k], seq, 0), v2Block(keys[k], seq, 1)]);
      assert.ok(want.equals(got), `round ${round}: v2 stream ${k}`);
    }
  }
});

Deno.test("keystream v2: the raw module matches at any block counter (all 4 lanes, 2^24 edges) and refuses counters near 2^32", () => {
  const ex = new WebAssembly.Instance(
    new WebAssembly.Module(Buffer.from(SHA256_KS_WASM, "base64")),
    {},
  ).exports as unknown as {
    memory: WebAssembly.Memory;
    ks_io_ptr(): number;
    ks_out_ptr(): number;
    ks2_key(): void;
    ks2_gen(first: number, n: number): number;
  };
  const firsts = [0, 1, 3, 0xffffff - 2, 0x1000000, 0x12345678];
  for (let t = 0; t < firsts.length; t++) {
    const r = seeded(2000 + t);
    const key = r.bytes(32);
    const salt = r.bytes(15);
    const mem = new Uint8Array(ex.memory.buffer);
    mem.set(key, ex.ks_io_ptr());
    ex.ks2_key();
    mem.set(salt, ex.ks_io_ptr() + 64);
    const n = 9 + t;
    assert.ok(ex.ks2_gen(firsts[t], n) >= n * 32);
    const out = new Uint8Array(ex.memory.buffer, ex.ks_out_ptr(), n * 32);
    const prefix = createHash("sha256").update(key).update(new Uint8Array(32)).update(salt);
    for (let i = 0; i < n; i++) {
      const want = prefix.copy().update(u64(BigInt(firsts[t] + i))).digest();
      assert.ok(want.equals(out.subarray(i * 32, i * 32 + 32)), `first ${firsts[t]}, block ${i}`);
    }
  }
  assert.equal(ex.ks2_gen(0xffffffff - 4, 1), 0);
  assert.equal(ex.ks2_gen(0, 32769), 0);
});
