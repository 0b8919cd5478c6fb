/**
 * `deno task bench-keystream`: the record keystreams alone, per
 * implementation. A measurement, not part of efx.
 *
 * Builds src/wasm/sha256_ks.c with Debian `clang lld` (wasm32, SIMD) into a
 * temp folder, once with 4 blocks per batch (as efx ships it) and once with
 * 8 (two interleaved sets of 4), checks every variant against `node:crypto`
 * on seeded random keys, salts and counters (a fast wrong result cannot
 * count), then measures CPU time per MiB in this process, rounds
 * alternating, for 256 KiB records (the size efx streams):
 *
 * - `webcrypto`: protocol version 1 as efx computes large records
 *   (src/keystream.ts: PBKDF2, 4 records in flight, fresh buffers, their
 *   collection included);
 * - `wasm hmac xN`: the same version 1 bytes in WASM, plus the copy out;
 * - `wasm v2 xN`: protocol version 2, SHA-256(K || 0^32 || salt || u64(i)),
 *   one compression per 32 bytes, plus the copy out.
 *
 * The end-to-end effect is what `deno task bench` measures.
 *
 * @module
 */
import { createHash, createHmac } from "node:crypto";
import { join } from "node:path";
import { Keystream, keystreamSalt } from "../src/keystream.ts";
import { perMiB } from "./floor.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const SRC = join(ROOT, "src", "wasm", "sha256_ks.c");
const RECORD = 256 * 1024;
const BLOCKS = RECORD / 32;

interface KsModule {
  memory: WebAssembly.Memory;
  ks_io_ptr(): number;
  ks_out_ptr(): number;
  ks_key(): void;
  ks2_key(): void;
  ks_gen(first: number, n: number): number;
  ks2_gen(first: number, n: number): number;
}

async function build(dir: string, sets: number): Promise<KsModule> {
  const out = join(dir, `ks${sets}.wasm`);
  const exports = ["ks_key", "ks2_key", "ks_gen", "ks2_gen", "ks_io_ptr", "ks_out_ptr"]
    .map((e) => `-Wl,--export=${e}`);
  const r = await new Deno.Command("clang", {
    args: [
      "--target=wasm32",
      "-O3",
      "-msimd128",
      `-DNSETS=${sets}`,
      "-nostdlib",
      "-Wl,--no-entry",
      "-Wl,--strip-all",
      ...exports,
      "-o",
      out,
      SRC,
    ],
    stderr: "piped",
  }).output().catch((e) => {
    throw new Error(`clang not found (apt-get install -y clang lld): ${e.message}`);
  });
  if (!r.success) throw new Error(`clang failed: ${new TextDecoder().decode(r.stderr)}`);
  const { instance } = await WebAssembly.instantiate(await Deno.readFile(out), {});
  return instance.exports as unknown as KsModule;
}

/** A small seeded generator (xorshift32), so that a failing case can be rerun. */
function seeded(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b[i] = x & 0xff;
    }
    return b;
  };
}

function setKey(m: KsModule, key: Uint8Array) {
  new Uint8Array(m.memory.buffer).set(key, m.ks_io_ptr());
  m.ks_key();
  m.ks2_key();
}

function setSalt(m: KsModule, salt: Uint8Array) {
  new Uint8Array(m.memory.buffer).set(salt, m.ks_io_ptr() + 64);
}

function outBytes(m: KsModule, n: number): Uint8Array {
  return new Uint8Array(m.memory.buffer, m.ks_out_ptr(), n);
}

const u32 = (i: number) => new Uint8Array([i >>> 24, (i >>> 16) & 255, (i >>> 8) & 255, i & 255]);

function verify(m: KsModule, label: string) {
  const rnd = seeded(0x5eed + label.length);
  for (let t = 0; t < 6; t++) {
    const key = rnd(32), salt = rnd(15);
    const first = [1, 2, 255, 0xffffff - 3, 0x1000000, 0x7fffffff][t];
    const n = 40 + t; // not a multiple of the batch: the rounding is checked too
    setKey(m, key);
    setSalt(m, salt);
    m.ks_gen(first, n);
    const got = outBytes(m, n * 32);
    for (let i = 0; i < n; i++) {
      const want = createHmac("sha256", key).update(salt).update(u32(first + i)).digest();
      if (!want.equals(got.subarray(i * 32, i * 32 + 32))) {
        throw new Error(`${label}: HMAC block ${first + i} differs from node:crypto (case ${t})`);
      }
    }
    const first2 = first - 1; // version 2 counts blocks from 0
    m.ks2_gen(first2, n);
    const pgot = outBytes(m, n * 32);
    const padded = new Uint8Array(64);
    padded.set(key);
    for (let i = 0; i < n; i++) {
      const want = createHash("sha256").update(padded).update(salt).update(new Uint8Array(4))
        .update(u32(first2 + i)).digest();
      if (!want.equals(pgot.subarray(i * 32, i * 32 + 32))) {
        throw new Error(`${label}: v2 block ${first2 + i} differs from node:crypto (case ${t})`);
      }
    }
  }
}

const dir = await Deno.makeTempDir({ prefix: "efx-ks-wasm-" });
try {
  const mods = new Map<string, KsModule>();
  for (const sets of [1, 2]) mods.set(`x${4 * sets}`, await build(dir, sets));
  for (const [label, m] of mods) verify(m, `wasm ${label}`);
  // One whole record against what efx computes.
  const key = crypto.getRandomValues(new Uint8Array(32));
  const ks = await Keystream.create(key);
  const ref = await ks.generate(7n, RECORD);
  for (const [label, m] of mods) {
    setKey(m, key);
    setSalt(m, keystreamSalt(7n));
    m.ks_gen(1, BLOCKS);
    const got = outBytes(m, RECORD);
    if (!ref.every((b, i) => b === got[i])) throw new Error(`wasm ${label} != src/keystream.ts`);
  }
  console.log("verified: every WASM block equals node:crypto; a whole record equals keystream.ts");

  const sink = new Uint8Array(RECORD);
  let seq = 0n;
  const series = new Map<string, number[]>();
  const add = (k: string, v: number) => series.set(k, [...(series.get(k) ?? []), v]);
  for (let round = 0; round < 3; round++) {
    add(
      "webcrypto",
      await perMiB(
        async (mib) => {
          for (let i = 0; i < mib * 4; i += 4) {
            await Promise.all([0, 1, 2, 3].map(() => ks.generate(seq++, RECORD)));
          }
        },
        16,
        5,
      ),
    );
    for (const [label, m] of mods) {
      for (const kind of ["hmac", "v2"] as const) {
        const gen = kind === "hmac" ? m.ks_gen : m.ks2_gen;
        add(
          `wasm ${kind} ${label}`,
          await perMiB(
            (mib) => {
              for (let i = 0; i < mib * 4; i++) {
                setSalt(m, keystreamSalt(seq++));
                gen(kind === "hmac" ? 1 : 0, BLOCKS);
                sink.set(outBytes(m, RECORD));
              }
            },
            16,
            5,
          ),
        );
      }
    }
  }
  const best = (k: string) => Math.min(...series.get(k)!);
  const web = best("webcrypto");
  console.log("keystream CPU ms per MiB (best of 3 medians), 256 KiB records:");
  for (const k of series.keys()) {
    console.log(
      `  ${k.padEnd(18)} ${best(k).toFixed(2)}  (${(web / best(k)).toFixed(2)}x webcrypto)`,
    );
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
