/**
 * The crypto floor of one side of a transfer: the CPU time per MiB that the
 * cryptography alone costs through the APIs efx uses, measured in this
 * process. A stream of `DATA_CHUNK`-byte records needs, per side, its
 * keystream (for the protocol version in use: version 2's prefix-keyed
 * SHA-256 from the WASM module, src/keystream2.ts; version 1's HMAC counter
 * mode from WebCrypto, src/keystream.ts; the same calls and record size),
 * one HMAC-SHA256 tag per record and the whole-file SHA-256. Anything an
 * efx process spends above the sum is overhead (copies, XOR, I/O, GC,
 * promises). Both keystreams are measured; `total` uses the version's.
 *
 * CPU time, not wall time: `process.cpuUsage()` counts every thread of this
 * process (WebCrypto computes off the main thread), and is far less
 * disturbed than wall time when other work shares the cores.
 *
 * @module
 */
import process from "node:process";
import { createHash } from "node:crypto";
import { DATA_CHUNK } from "../src/channel.ts";
import { Keystream } from "../src/keystream.ts";
import { keystream2Salt } from "../src/keystream2.ts";
import { ksWasm, loadKey, newOwnerId, setSalt } from "../src/wasm/module.ts";
import { encodeHeader, recordTag, RecordType } from "../src/record.ts";
import { median } from "./measure.ts";

const MIB = 1024 * 1024;

/** CPU ms per MiB of each part of the floor, and their sum. */
export interface Floor {
  /** The protocol version whose keystream `keystream` and `total` are for. */
  version: 1 | 2;
  keystream: number;
  /** Each version's keystream alone. */
  keystreams: { v1: number; v2: number };
  tags: number;
  fileHash: number;
  total: number;
  /** The record size the figures are for. */
  recordBytes: number;
}

/** CPU milliseconds (user + system, all threads) `f` takes. */
export async function cpuMs(f: () => unknown): Promise<number> {
  const t = process.cpuUsage();
  await f();
  const d = process.cpuUsage(t);
  return (d.user + d.system) / 1000;
}

/** Median over `rounds` of the CPU ms per MiB `perMiB` takes for `mib` MiB. */
export async function perMiB(
  perRound: (mib: number) => Promise<void> | void,
  mib = 16,
  rounds = 7,
): Promise<number> {
  await perRound(2); // warm-up: JIT, first allocations
  const xs: number[] = [];
  for (let r = 0; r < rounds; r++) xs.push((await cpuMs(() => perRound(mib))) / mib);
  return median(xs);
}

/** Measures the floor for records of `recordBytes` (default: what sendFile uses). */
export async function measureFloor(
  recordBytes = DATA_CHUNK,
  version: 1 | 2 = 2,
): Promise<Floor> {
  const perMib = MIB / recordBytes;
  const ks = await Keystream.create(crypto.getRandomValues(new Uint8Array(32)));
  const mac = crypto.getRandomValues(new Uint8Array(32));
  const data = new Uint8Array(8 + recordBytes);
  for (let o = 0; o < data.length; o += 65536) {
    crypto.getRandomValues(data.subarray(o, Math.min(data.length, o + 65536)));
  }
  data.set(encodeHeader(RecordType.DATA, 0, recordBytes));
  let seq = 0n;
  const v1 = await perMiB(async (mib) => {
    // Four records in flight, as a data stream has.
    for (let i = 0; i < mib * perMib; i += 4) {
      await Promise.all([0, 1, 2, 3].map(() => ks.generate(seq++, recordBytes)));
    }
  });
  // Version 2: the module's keystream alone, in its memory (efx XORs from there).
  if (!ksWasm) throw new Error("WebAssembly SIMD is unavailable: no version 2 keystream");
  const w = ksWasm;
  const id = newOwnerId();
  const key = crypto.getRandomValues(new Uint8Array(32));
  const blocks = Math.ceil(recordBytes / 32);
  const v2 = await perMiB((mib) => {
    for (let i = 0; i < mib * perMib; i++) {
      loadKey(2, id, key);
      setSalt(keystream2Salt(seq++));
      w.ks2_gen(0, blocks);
    }
  });
  const keystream = version === 2 ? v2 : v1;
  const tags = await perMiB((mib) => {
    for (let i = 0; i < mib * perMib; i++) recordTag(mac, BigInt(i), data);
  });
  const body = data.subarray(8);
  const fileHash = await perMiB((mib) => {
    const h = createHash("sha256");
    for (let i = 0; i < mib * perMib; i++) h.update(body);
    h.digest();
  });
  return {
    version,
    keystream,
    keystreams: { v1, v2 },
    tags,
    fileHash,
    total: keystream + tags + fileHash,
    recordBytes,
  };
}

/** One line: "floor v2 3.9 ms/MiB per side (keystream 2.5 + tags 0.7 + file hash 0.6; ...)". */
export function describeFloor(f: Floor): string {
  const other = f.version === 2
    ? `v1's ${f.keystreams.v1.toFixed(2)}`
    : `v2's ${f.keystreams.v2.toFixed(2)}`;
  return `floor v${f.version} ${f.total.toFixed(2)} ms/MiB per side (keystream ${
    f.keystream.toFixed(2)
  } [${other}] + tags ${f.tags.toFixed(2)} + file hash ${f.fileHash.toFixed(2)}; ${
    f.recordBytes / 1024
  } KiB records, CPU time)`;
}

if (import.meta.main) {
  console.log(describeFloor(await measureFloor()));
}
