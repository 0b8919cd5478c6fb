/**
 * Tests for the record layer (src/record.ts) and the keystream
 * (src/keystream.ts): round trips, tampering at every byte, replay / drop /
 * reorder, header checks before the body is read, record limits, keystream
 * separation and xorInto.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHmac } from "node:crypto";
import { randomBytes, toHex } from "../src/bytes.ts";
import { DATA_CHUNK } from "../src/channel.ts";
import { deriveSessionKeys } from "../src/handshake.ts";
import { BufferedReader, type Readable } from "../src/io.ts";
import { Keystream, xorInto } from "../src/keystream.ts";
import {
  type DirectionKeys,
  encodeHeader,
  FLAG_END,
  HEADER_LEN,
  MAX_RECORD_BODY,
  RecordOpener,
  RecordReader,
  RecordSealer,
  RecordType,
  TAG_LEN,
} from "../src/record.ts";

/** Byte equality without building giant hex strings. */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

function newKeys(): DirectionKeys {
  return { enc: randomBytes(32), mac: randomBytes(32) };
}

/** A source that hands out the given chunks, one per read, and counts bytes handed out. */
class ChunkSource implements Readable {
  #chunks: Uint8Array[];
  #cur: Uint8Array = new Uint8Array(0);
  delivered = 0;
  constructor(...chunks: Uint8Array[]) {
    this.#chunks = chunks.filter((c) => c.length > 0);
  }
  read(p: Uint8Array): Promise<number | null> {
    if (this.#cur.length === 0) {
      const next = this.#chunks.shift();
      if (!next) return Promise.resolve(null);
      this.#cur = next;
    }
    const n = Math.min(p.length, this.#cur.length);
    p.set(this.#cur.subarray(0, n));
    this.#cur = this.#cur.subarray(n);
    this.delivered += n;
    return Promise.resolve(n);
  }
}

/** Reads every record of `frames` (concatenated on one stream) with a fresh reader. */
async function readAll(keys: DirectionKeys, ...frames: Uint8Array[]) {
  const reader = new RecordReader(await RecordOpener.create(keys), new ChunkSource(...frames));
  const out = [];
  for (let rec = await reader.next(); rec !== null; rec = await reader.next()) out.push(rec);
  return out;
}

async function sealMany(keys: DirectionKeys, bodies: Uint8Array[]): Promise<Uint8Array[]> {
  const sealer = await RecordSealer.create(keys);
  const frames = [];
  for (const b of bodies) frames.push(await sealer.seal(RecordType.DATA, 0, b));
  return frames;
}

// ---- round trips ----

for (const size of [0, 1, 31, 32, 33, 65536, DATA_CHUNK, MAX_RECORD_BODY]) {
  Deno.test(`record: round trip of a ${size}-byte body (seal/open and on a stream)`, async () => {
    const keys = newKeys();
    const body = randomBytes(size);
    const sealer = await RecordSealer.create(keys);
    const f0 = await sealer.seal(RecordType.DATA, 0, body);
    const f1 = await sealer.seal(RecordType.DATA, FLAG_END, body);
    assert.equal(f0.length, HEADER_LEN + size + TAG_LEN);
    if (size >= 32) {
      assert.notDeepEqual(f0.subarray(HEADER_LEN, HEADER_LEN + 32), body.subarray(0, 32));
    }
    if (size >= 16) {
      // Same body, records 0 and 1: different keystreams (shorter bodies may collide by chance).
      assert.notDeepEqual(
        f0.subarray(HEADER_LEN, HEADER_LEN + size),
        f1.subarray(HEADER_LEN, HEADER_LEN + size),
      );
    }

    const opener = await RecordOpener.create(keys);
    const r0 = await opener.open(f0);
    assert.equal(r0.type, RecordType.DATA);
    assert.equal(r0.flags, 0);
    assert.ok(same(r0.body, body));
    const r1 = await opener.open(f1);
    assert.equal(r1.flags, FLAG_END);
    assert.ok(same(r1.body, body));

    // Same frames through the stream reader, delivered in odd-sized pieces.
    const wire = new Uint8Array(f0.length + f1.length);
    wire.set(f0);
    wire.set(f1, f0.length);
    const pieces = [];
    for (let o = 0; o < wire.length; o += 7919) pieces.push(wire.subarray(o, o + 7919));
    const reader = new RecordReader(await RecordOpener.create(keys), new ChunkSource(...pieces));
    assert.ok(same((await reader.next())!.body, body));
    assert.ok(same((await reader.next())!.body, body));
    assert.equal(await reader.next(), null);
  });
}

Deno.test("record: every record type round trips; the receiver's prefetch does not disturb order", async () => {
  const keys = newKeys();
  const sealer = await RecordSealer.create(keys);
  const big = randomBytes(70000); // >= 64 KiB DATA without END: the opener prefetches the next keystream
  const frames = [
    await sealer.seal(RecordType.MSG, 0, new TextEncoder().encode('{"a":1}')),
    await sealer.seal(RecordType.DATA, 0, big),
    await sealer.seal(RecordType.DATA, 0, big.subarray(0, 100)), // shorter than the prefetch
    await sealer.seal(RecordType.DATA, 0, big),
    await sealer.seal(RecordType.DATA, FLAG_END, randomBytes(80000)), // longer than the prefetch
    await sealer.seal(RecordType.ALERT, 0, new TextEncoder().encode('{"code":"x","message":"y"}')),
    await sealer.seal(RecordType.CLOSE, 0, new Uint8Array(0)),
  ];
  const recs = await readAll(keys, ...frames);
  assert.deepEqual(recs.map((r) => r.type), [1, 2, 2, 2, 2, 4, 3]);
  assert.ok(same(recs[1].body, big));
  assert.ok(same(recs[2].body, big.subarray(0, 100)));
  assert.equal(recs[4].body.length, 80000);
});

// ---- tampering ----

Deno.test("record: a flipped bit in every byte position of a small frame is rejected", async () => {
  const keys = newKeys();
  const sealer = await RecordSealer.create(keys);
  const frame = await sealer.seal(RecordType.MSG, 0, new TextEncoder().encode('{"op":"ls","n":1}'));
  let checked = 0;
  for (let pos = 0; pos < frame.length; pos++) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = frame.slice();
      bad[pos] ^= 1 << bit;
      await assert.rejects(
        readAll(keys, bad),
        { name: "IntegrityError" },
        `byte ${pos} bit ${bit}`,
      );
      const opener = await RecordOpener.create(keys);
      await assert.rejects(opener.open(bad), `open(): byte ${pos} bit ${bit}`);
      checked++;
    }
  }
  assert.equal(checked, frame.length * 8);
});

Deno.test("record: flipped bits at sampled positions of a large frame are rejected", async () => {
  const keys = newKeys();
  const sealer = await RecordSealer.create(keys);
  const frame = await sealer.seal(RecordType.DATA, 0, randomBytes(DATA_CHUNK));
  const positions = new Set<number>([
    ...Array.from({ length: HEADER_LEN }, (_, i) => i), // whole header
    HEADER_LEN, // first body byte
    HEADER_LEN + 31,
    HEADER_LEN + 32,
    HEADER_LEN + DATA_CHUNK - 1, // last body byte
    ...Array.from({ length: TAG_LEN }, (_, i) => HEADER_LEN + DATA_CHUNK + i), // whole tag
  ]);
  const rnd = randomBytes(4 * 48);
  const dv = new DataView(rnd.buffer);
  for (let i = 0; i < 48; i++) positions.add(HEADER_LEN + (dv.getUint32(4 * i) % DATA_CHUNK));
  for (const pos of positions) {
    const bad = frame.slice();
    bad[pos] ^= 1 << (pos % 8);
    await assert.rejects(readAll(keys, bad), { name: "IntegrityError" }, `byte ${pos}`);
  }
  assert.equal((await readAll(keys, frame)).length, 1); // the untouched frame is fine
});

Deno.test("record: a frame sealed under other keys is rejected", async () => {
  const frame = await (await RecordSealer.create(newKeys())).seal(
    RecordType.MSG,
    0,
    new Uint8Array(5),
  );
  await assert.rejects(readAll(newKeys(), frame), { name: "IntegrityError" });
});

Deno.test("record: dropped, duplicated and swapped frames fail; the original order works", async () => {
  const keys = newKeys();
  const [a, b, c] = await sealMany(keys, [randomBytes(10), randomBytes(10), randomBytes(10)]);
  assert.equal((await readAll(keys, a, b, c)).length, 3);
  const msg = /integrity check failed on record 1/;
  await assert.rejects(readAll(keys, a, c), { name: "IntegrityError", message: msg }); // dropped
  await assert.rejects(readAll(keys, a, a), { name: "IntegrityError", message: msg }); // duplicated
  await assert.rejects(readAll(keys, b, a), { name: "IntegrityError", message: /record 0/ }); // swapped
  await assert.rejects(readAll(keys, a, c, b), { name: "IntegrityError", message: msg });
  // The same frame replayed into a fresh session of the same keys only works as record 0.
  assert.equal((await readAll(keys, a)).length, 1);
});

Deno.test("record: a frame cut anywhere is a truncation, a cut at a boundary is a clean end", async () => {
  const keys = newKeys();
  const [a, b] = await sealMany(keys, [randomBytes(50), randomBytes(50)]);
  for (const cut of [1, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 20, b.length - 1]) {
    await assert.rejects(readAll(keys, a, b.subarray(0, cut)), {
      name: "IntegrityError",
      message: /truncated/,
    });
  }
  assert.equal((await readAll(keys, a)).length, 1);
});

// ---- header checks before the body ----

Deno.test("record: bad headers are rejected before any body byte is read", async () => {
  const keys = newKeys();
  const cases: [string, Uint8Array, RegExp][] = [
    ["type 0", encodeHeader(0, 0, 10), /unknown type 0/],
    ["type 5", encodeHeader(5, 0, 10), /unknown type 5/],
    ["type 255", encodeHeader(255, 0, 10), /unknown type 255/],
    ["flag 0x02", encodeHeader(RecordType.DATA, 0x02, 10), /unknown flags/],
    ["flag 0x80", encodeHeader(RecordType.DATA, 0x80, 10), /unknown flags/],
    ["END on MSG", encodeHeader(RecordType.MSG, FLAG_END, 10), /END flag/],
    ["END on CLOSE", encodeHeader(RecordType.CLOSE, FLAG_END, 0), /END flag/],
    ["reserved byte 2", Uint8Array.from([2, 0, 1, 0, 0, 0, 0, 10]), /unknown flags/],
    ["reserved byte 3", Uint8Array.from([2, 0, 0, 1, 0, 0, 0, 10]), /unknown flags/],
    [
      "length limit + 1",
      encodeHeader(RecordType.DATA, 0, MAX_RECORD_BODY + 1),
      /exceeds the limit/,
    ],
    ["length 2^32 - 1", encodeHeader(RecordType.DATA, 0, 0xffffffff), /exceeds the limit/],
  ];
  for (const [name, header, message] of cases) {
    // The body that would follow is in a separate read; it must never be taken.
    const src = new ChunkSource(header, new Uint8Array(64));
    const reader = new RecordReader(await RecordOpener.create(keys), new BufferedReader(src));
    await assert.rejects(reader.next(), { name: "IntegrityError", message }, name);
    assert.equal(src.delivered, HEADER_LEN, `${name}: read ${src.delivered} bytes`);
  }
  // The limit itself is accepted (the header passes; the tag then decides).
  const src = new ChunkSource(encodeHeader(RecordType.DATA, 0, MAX_RECORD_BODY));
  const reader = new RecordReader(await RecordOpener.create(keys), src);
  await assert.rejects(reader.next(), { name: "IntegrityError", message: /truncated/ });
});

Deno.test("record: an opener with a lower maxBody rejects longer records from the header", async () => {
  const keys = newKeys();
  const frame = await (await RecordSealer.create(keys)).seal(RecordType.DATA, 0, randomBytes(200));
  const opener = await RecordOpener.create(keys, { maxBody: 100 });
  await assert.rejects(opener.open(frame), { name: "IntegrityError", message: /limit of 100/ });
});

Deno.test("record: an opener never accepts more than MAX_RECORD_BODY, whatever maxBody it is given", async () => {
  // A header announcing one byte over the protocol's limit; the opener must
  // refuse it from the header alone, before any body is read or reserved.
  const header = new Uint8Array(8);
  header[0] = RecordType.DATA;
  new DataView(header.buffer).setUint32(4, MAX_RECORD_BODY + 1);
  const frame = new Uint8Array(8 + MAX_RECORD_BODY + 1 + 32);
  frame.set(header);
  for (const maxBody of [MAX_RECORD_BODY * 4, 2 ** 32 - 1]) {
    const opener = await RecordOpener.create(newKeys(), { maxBody });
    assert.equal(opener.maxBody, MAX_RECORD_BODY);
    await assert.rejects(opener.open(frame), {
      name: "IntegrityError",
      message: new RegExp(`limit of ${MAX_RECORD_BODY} bytes`),
    });
    // Raised again later (as the server does once a client is admitted): still clamped.
    opener.maxBody = 100;
    new RecordReader(opener, new ChunkSource()).setLimits({ maxBody, prefetch: false });
    assert.equal(opener.maxBody, MAX_RECORD_BODY);
  }
});

Deno.test("record: the sealer refuses bodies over MAX_RECORD_BODY", async () => {
  const sealer = await RecordSealer.create(newKeys());
  await assert.rejects(async () =>
    await sealer.seal(RecordType.DATA, 0, new Uint8Array(MAX_RECORD_BODY + 1))
  );
  assert.equal(sealer.nextSeq, 0n); // no sequence number was used up
});

// ---- record limit ----

Deno.test("record: maxRecords is enforced by the sealer and by the opener", async () => {
  const keys = newKeys();
  const sealer = await RecordSealer.create(keys, 3n);
  const frames = [];
  for (let i = 0; i < 3; i++) {
    frames.push(await sealer.seal(RecordType.MSG, 0, new Uint8Array([i])));
  }
  assert.equal(sealer.nextSeq, 3n);
  await assert.rejects(async () => await sealer.seal(RecordType.MSG, 0, new Uint8Array(1)), {
    message: /record limit of 3 per key reached/,
  });

  // A sender without the limit goes on; the limited receiver stops at the 4th record.
  const sealer4 = await RecordSealer.create(keys);
  const four = [];
  for (let i = 0; i < 4; i++) four.push(await sealer4.seal(RecordType.MSG, 0, new Uint8Array([i])));
  const opener = await RecordOpener.create(keys, { maxRecords: 3n });
  for (let i = 0; i < 3; i++) assert.deepEqual([...(await opener.open(four[i])).body], [i]);
  await assert.rejects(opener.open(four[3]), { message: /record limit of 3 per key reached/ });
});

// ---- keystream ----

Deno.test("keystream: directions, sessions and sequence numbers never share blocks", async () => {
  const secretA = randomBytes(32);
  const secretB = randomBytes(32);
  const th = randomBytes(32);
  const a = await deriveSessionKeys(secretA, th);
  const b = await deriveSessionKeys(secretB, th);
  const a2 = await deriveSessionKeys(secretA, randomBytes(32)); // same secret, other transcript
  const blocks = new Set<string>();
  let count = 0;
  for (const keys of [a.c2s, a.s2c, b.c2s, b.s2c, a2.c2s, a2.s2c]) {
    const ks = await Keystream.create(keys.enc);
    for (const seq of [0n, 1n, 2n ** 32n - 1n]) {
      const stream = await ks.generate(seq, 96);
      for (let i = 0; i < 3; i++) {
        blocks.add(toHex(stream.subarray(32 * i, 32 * i + 32)));
        count++;
      }
    }
  }
  assert.equal(blocks.size, count);
  // The same plaintext sealed in each direction as record 0 gives different ciphertexts.
  const body = new Uint8Array(64);
  const fc = await (await RecordSealer.create(a.c2s)).seal(RecordType.DATA, 0, body);
  const fs = await (await RecordSealer.create(a.s2c)).seal(RecordType.DATA, 0, body);
  assert.notEqual(
    toHex(fc.subarray(HEADER_LEN, HEADER_LEN + 64)),
    toHex(fs.subarray(HEADER_LEN, HEADER_LEN + 64)),
  );
});

Deno.test("keystream: matches HMAC(K, 'efx1 ks' || u64 seq || u32 i) block by block, any length", async () => {
  const key = randomBytes(32);
  const ks = await Keystream.create(key);
  const seq = 0x0102030405060708n;
  const full = await ks.generate(seq, 32 * 5);
  for (let i = 1; i <= 5; i++) {
    const input = new Uint8Array(7 + 8 + 4);
    input.set(new TextEncoder().encode("efx1 ks"));
    const dv = new DataView(input.buffer);
    dv.setBigUint64(7, seq);
    dv.setUint32(15, i);
    const block = createHmac("sha256", key).update(input).digest();
    assert.equal(toHex(full.subarray(32 * (i - 1), 32 * i)), toHex(block));
  }
  for (const n of [0, 1, 31, 32, 33, 100, 159]) {
    assert.equal(toHex(await ks.generate(seq, n)), toHex(full.subarray(0, n)));
  }
});

// ---- xorInto ----

Deno.test("xorInto: aligned and unaligned views, all short lengths, against a naive XOR", () => {
  const backingA = randomBytes(4096 + 8);
  const backingB = randomBytes(4096 + 8);
  for (const offA of [0, 1, 2, 3, 4]) {
    for (const offB of [0, 1, 2, 3, 4]) {
      for (const n of [0, 1, 3, 4, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4096]) {
        const out = backingA.slice().subarray(offA, offA + n + 3); // out may be longer than data
        const data = backingB.subarray(offB, offB + n);
        const expect = out.slice();
        for (let i = 0; i < n; i++) expect[i] ^= data[i];
        xorInto(out, data);
        assert.equal(toHex(out), toHex(expect), `offA=${offA} offB=${offB} n=${n}`);
      }
    }
  }
  // XOR twice restores the original.
  const x = randomBytes(1001);
  const k = randomBytes(1001);
  const y = x.slice();
  xorInto(y, k);
  xorInto(y, k);
  assert.equal(toHex(y), toHex(x));
});
