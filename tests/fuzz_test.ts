/**
 * Seeded, bounded fuzzing of everything that parses bytes from the network:
 * the handshake parsers (parseClientHello, parseServerHello, parseClientKey,
 * alertToError, readHandshakeMessage), the record layer (parseHeader,
 * RecordOpener.open, RecordReader), whole handshakes over an in-memory wire
 * that mutates one message, and a real server over TCP.
 *
 * Inputs are random bytes and mutations of valid messages (bit flips,
 * special byte values, truncations, extensions, insertions, deletions,
 * duplicated ranges, length-field edits, splices with other samples). For
 * every input:
 *
 * - the only errors allowed are the project's EfxError subclasses (a
 *   TypeError, RangeError or any other error is a failure);
 * - every input ends within a timeout (no hang);
 * - readers never ask their source for more than the limits allow (they
 *   read through a BufferedReader with a 16-byte buffer, so any larger read
 *   goes straight into the buffer the parser allocated and its size shows);
 * - the outcome is a clean rejection or a valid parse, checked against an
 *   independent model of the format where there is one, and a record or a
 *   handshake is accepted only when its bytes are exactly the genuine ones.
 *
 * The seed is printed; set EFX_FUZZ_SEED to replay a run. Counts are sized
 * for well under 40 s on 2 cores.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/fuzz_test.ts
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { concat } from "../src/bytes.ts";
import { SecureChannel, type Transport } from "../src/channel.ts";
import { EfxClient } from "../src/client.ts";
import { AuthError, EfxError, ProtocolError, TimeoutError } from "../src/errors.ts";
import {
  alertToError,
  encodeAlert,
  encodeClientHello,
  encodeClientKey,
  encodeHandshakeMessage,
  encodeServerHello,
  encodeServerHelloV2,
  HandshakeType,
  MAX_HANDSHAKE_BODY,
  parseClientHello,
  parseClientKey,
  parseServerHello,
  PROTOCOL_VERSION,
  readHandshakeMessage,
} from "../src/handshake.ts";
import { BufferedReader, type Readable } from "../src/io.ts";
import { loadServerPrivateKey, type ServerPrivateKey } from "../src/keys.ts";
import { makeLogger } from "../src/log.ts";
import {
  type DirectionKeys,
  FLAG_END,
  HEADER_LEN,
  MAX_RECORD_BODY,
  parseHeader,
  type PlainRecord,
  RecordOpener,
  RecordReader,
  RecordSealer,
  RecordType,
  TAG_LEN,
} from "../src/record.ts";
import { EfxServer } from "../src/server.ts";
import { makeServerVerifier } from "../src/trust.ts";
import { type Dir, FrameSplitter, mulberry32, splitFrames } from "./helpers/mitm.ts";
import { listTree, makeWorkDir, randomFile, testServerKey } from "./helpers/server.ts";

const SEED = Number(Deno.env.get("EFX_FUZZ_SEED") ?? 0x0efc0ffe) >>> 0;
console.log(`fuzz seed: ${SEED} (set EFX_FUZZ_SEED=${SEED} to replay)`);

// ---------------------------------------------------------------------------
// Randomness and mutations

/** Seeded random helpers; each test gets its own stream (SEED + salt). */
class Rng {
  #next: () => number;
  constructor(salt: number) {
    this.#next = mulberry32((SEED ^ Math.imul(salt, 0x9e3779b1)) >>> 0);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.#next() * n);
  }
  chance(p: number): boolean {
    return this.#next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  /** A length biased to small values, up to `max`. */
  length(max: number): number {
    const r = this.int(4);
    return r === 0 ? this.int(8) : r === 1 ? this.int(64) : this.int(max + 1);
  }
}

/** A big-endian length (or other integer) field of a sample, with the limit it is checked against. */
interface Field {
  offset: number;
  size: 1 | 2 | 4;
  limit?: number;
}

const SPECIAL = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff] as const;

/**
 * 1 to 3 mutations of `input`: bit flip, special byte, truncation, extension,
 * insertion, deletion, duplicated range, length-field edit, splice with one
 * of `others`.
 */
function mutate(
  rng: Rng,
  input: Uint8Array,
  fields: Field[] = [],
  others: Uint8Array[] = [],
): Uint8Array {
  let b = input.slice();
  const rounds = 1 + rng.int(3);
  for (let r = 0; r < rounds; r++) {
    const pos = rng.int(b.length + 1);
    switch (rng.int(10)) {
      case 0:
      case 1:
        if (b.length) b[rng.int(b.length)] ^= 1 << rng.int(8);
        break;
      case 2:
        if (b.length) b[rng.int(b.length)] = rng.pick(SPECIAL);
        break;
      case 3:
        b = b.slice(0, rng.int(b.length + 1));
        break;
      case 4:
        b = concat(b, rng.bytes(1 + rng.int(64)));
        break;
      case 5:
        b = concat(b.subarray(0, pos), rng.bytes(1 + rng.int(16)), b.subarray(pos));
        break;
      case 6:
        b = concat(b.subarray(0, pos), b.subarray(Math.min(b.length, pos + 1 + rng.int(16))));
        break;
      case 7: {
        const end = Math.min(b.length, pos + 1 + rng.int(64));
        b = concat(b.subarray(0, end), b.subarray(pos, end), b.subarray(end));
        break;
      }
      case 8: {
        if (!fields.length) break;
        const f = rng.pick(fields);
        if (f.offset + f.size > b.length) break;
        const max = 2 ** (8 * f.size) - 1;
        let cur = 0;
        for (let i = 0; i < f.size; i++) cur = cur * 256 + b[f.offset + i];
        const limit = f.limit ?? max;
        let v = rng.pick([0, 1, cur - 1, cur + 1, limit, limit + 1, max, rng.int(max + 1)]);
        v = Math.max(0, Math.min(max, v));
        for (let i = f.size - 1; i >= 0; i--) {
          b[f.offset + i] = v % 256;
          v = Math.floor(v / 256);
        }
        break;
      }
      case 9: {
        if (!others.length) break;
        const o = rng.pick(others);
        b = concat(b.subarray(0, pos), o.subarray(rng.int(o.length + 1)));
        break;
      }
    }
  }
  return b;
}

function hex(b: Uint8Array, max = 96): string {
  const s = Buffer.from(b.subarray(0, max)).toString("hex");
  return b.length > max ? `${s}... (${b.length} bytes)` : s;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/** Fails unless `err` is an EfxError (the only kind of failure a parser may have). */
function assertClean(err: unknown, what: () => string): asserts err is EfxError {
  if (!(err instanceof EfxError)) {
    assert.fail(
      `${what()}: crashed with ${err instanceof Error ? err.name : typeof err}: ${
        err instanceof Error ? err.stack : String(err)
      }`,
    );
  }
}

/** Runs `work` with a deadline; a miss is a hang (a test failure naming the input). */
async function bounded<T>(work: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`HANG after ${ms} ms: ${what()}`)), ms);
  });
  try {
    return await Promise.race([work, hang]);
  } finally {
    clearTimeout(timer);
  }
}

function u16At(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

/**
 * A source handing out `bytes` in random-size pieces, then EOF. Counts what
 * it delivered and remembers the largest read asked of it.
 */
class FuzzSource implements Readable {
  delivered = 0;
  largestRequest = 0;
  #bytes: Uint8Array;
  #rng: Rng;
  constructor(bytes: Uint8Array, rng: Rng) {
    this.#bytes = bytes;
    this.#rng = rng;
  }
  read(p: Uint8Array): Promise<number | null> {
    this.largestRequest = Math.max(this.largestRequest, p.length);
    if (this.delivered >= this.#bytes.length) return Promise.resolve(null);
    const n = Math.min(p.length, this.#bytes.length - this.delivered, 1 + this.#rng.int(300));
    p.set(this.#bytes.subarray(this.delivered, this.delivered + n));
    this.delivered += n;
    return Promise.resolve(n);
  }
}

/** Buffer size of the readers under test: any read larger than this shows an allocation. */
const SMALL_BUFFER = 16;

// ---------------------------------------------------------------------------
// Keys and samples

const KEY_DIR = await makeWorkDir("efx-fuzz-key-");
const KEY_PATH = join(KEY_DIR, "server.key.pem");
await Deno.writeTextFile(KEY_PATH, (await testServerKey()).privatePem, { mode: 0o600 });
const KEY: ServerPrivateKey = await loadServerPrivateKey(KEY_PATH);

const sampleRng = new Rng(1);
const CH_BODY = encodeClientHello(sampleRng.bytes(32)).subarray(3);
const SH_BODY = encodeServerHello(sampleRng.bytes(32), KEY.spki).subarray(3);
const CK_BODY = encodeClientKey(sampleRng.bytes(256)).subarray(3);
const ALERT_BODY = encodeAlert(2, "handshake failed: key confirmation failed").subarray(3);
const BODIES = [CH_BODY, SH_BODY, CK_BODY, ALERT_BODY];
const SH2_BODY = encodeServerHelloV2(sampleRng.bytes(32), KEY.spki, {
  spki: KEY.spki as Uint8Array<ArrayBuffer>,
  notBefore: 1,
  notAfter: 2,
  signature: new Uint8Array(sampleRng.bytes(256)),
}).subarray(3);
const CH_FIELDS: Field[] = [{ offset: 4, size: 2 }];

/** The model of a version 2 SERVER_HELLO's length fields: each fits, and they end the body. */
function v2Layout(b: Uint8Array): boolean {
  let pos = 38;
  const field = () => {
    if (pos + 2 > b.length) return false;
    pos += 2 + u16At(b, pos);
    return pos <= b.length;
  };
  if (!field() || !field()) return false;
  pos += 16;
  return pos <= b.length && field() && pos === b.length;
}
const SH_FIELDS: Field[] = [{ offset: 4, size: 2 }, { offset: 38, size: 2 }];
const CK_FIELDS: Field[] = [{ offset: 0, size: 2 }];

/** Random bytes (a third of the time) or a mutation of `sample`. */
function input(rng: Rng, sample: Uint8Array, fields: Field[], others: Uint8Array[]): Uint8Array {
  return rng.chance(1 / 3) ? rng.bytes(rng.length(600)) : mutate(rng, sample, fields, others);
}

// ---------------------------------------------------------------------------
// Handshake body parsers

Deno.test("fuzz: parseClientHello, parseServerHello, parseClientKey agree with a model of the format", () => {
  const rng = new Rng(2);
  const N = 10000;
  const tally = { ch: [0, 0], sh: [0, 0], ck: [0, 0] };
  for (let i = 0; i < N; i++) {
    // CLIENT_HELLO: magic "EFXP", version; versions 1 and 2 need exactly 38
    // bytes, a higher one at least 38 (it may carry more), version 0 any.
    const ch = input(rng, CH_BODY, CH_FIELDS, BODIES);
    const chV = ch.length >= 6 ? u16At(ch, 4) : -1;
    const chOk = ch.length >= 6 && same(ch.subarray(0, 4), CH_BODY.subarray(0, 4)) &&
      (chV === 0 || (chV <= PROTOCOL_VERSION ? ch.length === 38 : ch.length >= 38));
    try {
      const r = parseClientHello(ch);
      assert.ok(chOk, `parseClientHello accepted ${hex(ch)}`);
      assert.equal(r.version, u16At(ch, 4));
      if (r.version === PROTOCOL_VERSION) assert.ok(same(r.nonce, ch.subarray(6, 38)));
      tally.ch[0]++;
    } catch (err) {
      assertClean(err, () => `parseClientHello(${hex(ch)}) [seed ${SEED}, #${i}]`);
      assert.ok(!chOk, `parseClientHello rejected a valid body ${hex(ch)}: ${err.message}`);
      tally.ch[1]++;
    }

    // SERVER_HELLO: magic, version; version 1: nonce(32) | spki_len | spki, exact length;
    // version 2: nonce | spki_len | spki | eph_len | eph | u64 | u64 | sig_len | sig, exact.
    const sh = input(rng, rng.chance(1 / 2) ? SH_BODY : SH2_BODY, SH_FIELDS, BODIES);
    const shMagic = sh.length >= 6 && same(sh.subarray(0, 4), SH_BODY.subarray(0, 4));
    const shV1 = shMagic && u16At(sh, 4) === 1;
    const shV2 = shMagic && u16At(sh, 4) === 2;
    const shOk = shMagic &&
      (shV1 ? sh.length >= 40 && sh.length === 40 + u16At(sh, 38) : !shV2 || v2Layout(sh));
    try {
      const r = parseServerHello(sh);
      assert.ok(shOk, `parseServerHello accepted ${hex(sh)}`);
      if (shV1) {
        assert.ok(same(r.nonce, sh.subarray(6, 38)));
        assert.ok(same(r.spki, sh.subarray(40)));
      }
      tally.sh[0]++;
    } catch (err) {
      assertClean(err, () => `parseServerHello(${hex(sh)}) [seed ${SEED}, #${i}]`);
      assert.ok(!shOk, `parseServerHello rejected a valid body ${hex(sh)}: ${err.message}`);
      tally.sh[1]++;
    }

    // CLIENT_KEY: ct_len u16 | ciphertext, exact and non-empty.
    const ck = input(rng, CK_BODY, CK_FIELDS, BODIES);
    const ckOk = ck.length > 2 && u16At(ck, 0) === ck.length - 2;
    try {
      const ct = parseClientKey(ck);
      assert.ok(ckOk, `parseClientKey accepted ${hex(ck)}`);
      assert.ok(same(ct, ck.subarray(2)));
      tally.ck[0]++;
    } catch (err) {
      assertClean(err, () => `parseClientKey(${hex(ck)}) [seed ${SEED}, #${i}]`);
      assert.ok(!ckOk, `parseClientKey rejected a valid body ${hex(ck)}`);
      tally.ck[1]++;
    }
  }
  console.log(
    `  ${N} inputs each; accepted/rejected: CLIENT_HELLO ${tally.ch.join("/")}, ` +
      `SERVER_HELLO ${tally.sh.join("/")}, CLIENT_KEY ${tally.ck.join("/")}`,
  );
  // The corpus reaches both outcomes of every parser.
  for (const [a, r] of Object.values(tally)) assert.ok(a > 0 && r > 0);
});

Deno.test("fuzz: alertToError always returns the matching EfxError with a sanitized one-line text", () => {
  const rng = new Rng(3);
  const N = 4000;
  for (let i = 0; i < N; i++) {
    let body: Uint8Array;
    if (rng.chance(0.5)) {
      // A code and text full of control characters, escapes and invalid UTF-8.
      const parts: Uint8Array[] = [new Uint8Array([rng.int(8)])];
      for (let k = rng.int(20); k > 0; k--) {
        parts.push(
          rng.pick([
            new Uint8Array([0x1b, 0x5b, 0x32, 0x4a]),
            new Uint8Array([0x0a]),
            new Uint8Array([0x0d]),
            new Uint8Array([0xc2, 0x9b]), // U+009B (C1 CSI)
            new Uint8Array([0xff, 0xfe]),
            new Uint8Array([0xe2, 0x80, 0xae]), // U+202E
            rng.bytes(1 + rng.int(8)),
            new TextEncoder().encode("text"),
          ]),
        );
      }
      body = concat(...parts);
    } else {
      body = input(rng, ALERT_BODY, [], BODIES);
    }
    let e: EfxError;
    try {
      e = alertToError(body, "server");
    } catch (err) {
      assert.fail(`alertToError threw on ${hex(body)} [seed ${SEED}, #${i}]: ${err}`);
    }
    assert.ok(e instanceof EfxError, `alertToError returned ${e}`);
    const code = body[0] ?? 0;
    // The client's view: unauthenticated, so never an AuthError; quoted as unverified text.
    assert.ok(e instanceof (code === 5 ? TimeoutError : ProtocolError), `code ${code}: ${e.name}`);
    assert.ok(!(e instanceof AuthError), `code ${code} gave an AuthError to the client`);
    assert.match(
      e.message,
      /^server refused the handshake before authentication \(unverified message from the network: ".*"\)$/,
    );
    // deno-lint-ignore no-control-regex
    assert.doesNotMatch(e.message, /[\x00-\x1f\x7f-\x9f]/, `raw control character in ${e.message}`);
    // The server's view of a client's alert keeps the codes.
    const s = alertToError(body, "client");
    const want = code === 2
      ? AuthError
      : code === 5
      ? TimeoutError
      : code === 3
      ? EfxError
      : ProtocolError;
    assert.ok(s instanceof want, `code ${code} gave ${s.name}`);
    if (code === 3) assert.equal(s.constructor, EfxError);
    // deno-lint-ignore no-control-regex
    assert.doesNotMatch(s.message, /[\x00-\x1f\x7f-\x9f]/, `raw control character in ${s.message}`);
  }
});

// ---------------------------------------------------------------------------
// readHandshakeMessage

/** What readHandshakeMessage must do with `bytes` when it expects `expected`. */
function handshakeModel(bytes: Uint8Array, expected: number) {
  if (bytes.length < 3) return { kind: "closed" } as const;
  const type = bytes[0];
  const len = u16At(bytes, 1);
  if (type !== expected && type !== HandshakeType.ALERT) return { kind: "unexpected" } as const;
  if (len > MAX_HANDSHAKE_BODY) return { kind: "too-large" } as const;
  if (bytes.length < 3 + len) return { kind: "closed" } as const;
  const body = bytes.subarray(3, 3 + len);
  if (type === HandshakeType.ALERT) return { kind: "alert", body } as const;
  return { kind: "ok", body } as const;
}

Deno.test("fuzz: readHandshakeMessage over a BufferedReader: model-exact, bounded reads, no hang", async () => {
  const rng = new Rng(4);
  const N = 5000;
  const framed = [
    encodeClientHello(rng.bytes(32)),
    encodeServerHello(rng.bytes(32), KEY.spki),
    encodeClientKey(rng.bytes(256)),
    encodeHandshakeMessage(HandshakeType.CLIENT_FINISHED, rng.bytes(32)),
    encodeHandshakeMessage(HandshakeType.SERVER_FINISHED, rng.bytes(32)),
    encodeAlert(4, "nope"),
    encodeHandshakeMessage(HandshakeType.CLIENT_HELLO, new Uint8Array(MAX_HANDSHAKE_BODY)),
  ];
  const fields: Field[] = [{ offset: 0, size: 1 }, {
    offset: 1,
    size: 2,
    limit: MAX_HANDSHAKE_BODY,
  }];
  const outcomes: Record<string, number> = {};
  for (let i = 0; i < N; i++) {
    const sample = rng.pick(framed);
    const bytes = rng.chance(0.25)
      ? rng.bytes(rng.length(3000))
      : mutate(rng, sample, fields, framed);
    const expected = rng.chance(0.7) ? sample[0] === 21 ? 1 : sample[0] : 1 + rng.int(5);
    const src = new FuzzSource(bytes, rng);
    const what = () =>
      `readHandshakeMessage(expected ${expected}) of ${hex(bytes)} [seed ${SEED}, #${i}]`;
    const model = handshakeModel(bytes, expected);
    let got: string;
    try {
      const msg = await bounded(
        readHandshakeMessage(new BufferedReader(src, SMALL_BUFFER), expected, "peer"),
        2000,
        what,
      );
      assert.equal(model.kind, "ok", `${what()}: accepted, model says ${model.kind}`);
      assert.equal(msg.type, expected);
      assert.ok(same(msg.body, model.body!), `${what()}: wrong body`);
      assert.ok(same(msg.raw, bytes.subarray(0, 3 + msg.body.length)), `${what()}: wrong raw`);
      got = "ok";
    } catch (err) {
      if (err instanceof Error && err.message.startsWith("HANG")) throw err;
      assertClean(err, what);
      const m = err.message;
      const kind = /too large/.test(m)
        ? "too-large"
        : /unexpected handshake message/.test(m)
        ? "unexpected"
        : /closed the connection/.test(m)
        ? "closed"
        : /refused the handshake|is busy/.test(m)
        ? "alert"
        : `other: ${m}`;
      assert.equal(kind, model.kind, `${what()}: ${err.name}: ${m}`);
      got = kind;
    }
    outcomes[got] = (outcomes[got] ?? 0) + 1;
    // The body buffer is allocated only after the length check: no read ever
    // asked for more than the largest legal body; a refused header means at
    // most one buffer refill beyond the 3 header bytes.
    assert.ok(src.largestRequest <= MAX_HANDSHAKE_BODY, `${what()}: read ${src.largestRequest}`);
    if (got === "too-large" || got === "unexpected") {
      assert.ok(src.delivered <= 3 + SMALL_BUFFER, `${what()}: read ${src.delivered} bytes`);
    }
    assert.ok(src.delivered <= 3 + MAX_HANDSHAKE_BODY + SMALL_BUFFER, what());
  }
  console.log(`  ${N} streams: ${JSON.stringify(outcomes)}`);
  for (const k of ["ok", "too-large", "unexpected", "closed", "alert"]) {
    assert.ok((outcomes[k] ?? 0) > 0, `no input reached outcome ${k}`);
  }
});

// ---------------------------------------------------------------------------
// Record layer

/** What parseHeader must do with `h` under `maxBody`. */
function headerOk(h: Uint8Array, maxBody: number): boolean {
  const v = new DataView(h.buffer, h.byteOffset, 8);
  const type = h[0];
  const flags = h[1];
  return type >= RecordType.MSG && type <= RecordType.ALERT &&
    (flags & ~FLAG_END) === 0 && v.getUint16(2) === 0 &&
    (!(flags & FLAG_END) || type === RecordType.DATA) && v.getUint32(4) <= maxBody;
}

const RECORD_FIELDS: Field[] = [
  { offset: 0, size: 1 },
  { offset: 1, size: 1 },
  { offset: 2, size: 2 },
  { offset: 4, size: 4, limit: MAX_RECORD_BODY },
];

Deno.test("fuzz: parseHeader agrees with a model of the header checks", () => {
  const rng = new Rng(5);
  const N = 30000;
  let accepted = 0;
  const valid = [
    [1, 0, 0, 0, 0, 0, 0, 10],
    [2, 0, 0, 0, 0, 4, 0, 0],
    [2, 1, 0, 0, 0, 0, 1, 0],
    [3, 0, 0, 0, 0, 0, 0, 0],
    [4, 0, 0, 0, 0, 0, 0, 40],
    [2, 0, 0, 0, 0, 16, 0, 0],
  ].map((a) => new Uint8Array(a));
  for (let i = 0; i < N; i++) {
    let h = rng.chance(0.3) ? rng.bytes(8) : mutate(rng, rng.pick(valid), RECORD_FIELDS);
    h = h.length >= 8 ? h.slice(0, 8) : concat(h, new Uint8Array(8 - h.length));
    // Sometimes a view into a bigger buffer at an odd offset.
    if (rng.chance(0.3)) {
      const big = rng.bytes(8 + 1 + rng.int(7));
      const o = 1 + rng.int(big.length - 8);
      big.set(h, o);
      h = big.subarray(o, o + 8);
    }
    const maxBody = rng.pick([0, 1, 100, 4096, 65536, MAX_RECORD_BODY]);
    const ok = headerOk(h, maxBody);
    try {
      const r = parseHeader(h, maxBody);
      assert.ok(ok, `parseHeader accepted ${hex(h)} (max ${maxBody})`);
      assert.equal(r.type, h[0]);
      assert.equal(r.flags, h[1]);
      assert.equal(r.length, new DataView(h.buffer, h.byteOffset, 8).getUint32(4));
      accepted++;
    } catch (err) {
      assertClean(err, () => `parseHeader(${hex(h)}, ${maxBody}) [seed ${SEED}, #${i}]`);
      assert.equal(err.name, "IntegrityError");
      assert.ok(!ok, `parseHeader rejected a valid header ${hex(h)}: ${err.message}`);
    }
  }
  console.log(`  ${N} headers, ${accepted} accepted`);
  assert.ok(accepted > 0 && accepted < N);
});

const KEYS: DirectionKeys = {
  enc: new Rng(6).bytes(32).slice(),
  mac: new Rng(7).bytes(32).slice(),
};

/** Seals `records` in order (seq 0, 1, ...) under KEYS. */
async function sealAll(records: PlainRecord[]): Promise<Uint8Array[]> {
  const sealer = await RecordSealer.create(KEYS);
  const out: Uint8Array[] = [];
  for (const r of records) out.push(await sealer.seal(r.type, r.flags, r.body));
  return out;
}

function randomRecord(rng: Rng, big = false): PlainRecord {
  const type = rng.pick([RecordType.MSG, RecordType.DATA, RecordType.CLOSE, RecordType.ALERT]);
  const flags = type === RecordType.DATA && rng.chance(0.4) ? FLAG_END : 0;
  const n = type === RecordType.CLOSE ? 0 : big ? 65536 + rng.int(2000) : rng.length(300);
  return { type, flags, body: rng.bytes(n) as Uint8Array<ArrayBuffer> };
}

function sameRecord(a: PlainRecord, b: PlainRecord): boolean {
  return a.type === b.type && a.flags === b.flags && same(a.body, b.body);
}

Deno.test("fuzz: RecordOpener.open accepts a frame only when it is exactly the genuine one", async () => {
  const rng = new Rng(8);
  const N = 4000;
  let opened = 0;
  for (let i = 0; i < N; i++) {
    const rec = randomRecord(rng, rng.chance(0.03));
    const [frame] = await sealAll([rec]);
    const bodyLen = frame.length - HEADER_LEN - TAG_LEN;
    const fields: Field[] = [
      ...RECORD_FIELDS.slice(0, 3),
      { offset: 4, size: 4, limit: bodyLen },
    ];
    const roll = rng.int(10);
    const bytes = roll === 0
      ? frame
      : roll === 1
      ? rng.bytes(rng.length(400))
      : mutate(rng, frame, fields);
    const maxBody = rng.pick([MAX_RECORD_BODY, MAX_RECORD_BODY, 4096, 64]);
    const opener = await RecordOpener.create(KEYS, { maxBody });
    const what = () => `open(${hex(bytes)}) max ${maxBody} [seed ${SEED}, #${i}]`;
    try {
      const got = await bounded(opener.open(bytes), 2000, what);
      assert.ok(same(bytes, frame), `${what()}: a modified frame was accepted`);
      assert.ok(sameRecord(got, rec), `${what()}: wrong plaintext`);
      opened++;
    } catch (err) {
      if (err instanceof Error && err.message.startsWith("HANG")) throw err;
      assertClean(err, what);
      assert.ok(
        !same(bytes, frame) || rec.body.length > maxBody,
        `${what()}: the genuine frame was refused: ${err.message}`,
      );
    }
  }
  console.log(`  ${N} frames, ${opened} genuine ones opened, every other one refused`);
  assert.ok(opened > 0);
});

Deno.test("fuzz: RecordReader over a fake source yields only genuine records, reads within limits", async () => {
  const rng = new Rng(9);
  const N = 1200;
  const outcomes: Record<string, number> = {};
  for (let i = 0; i < N; i++) {
    const records = Array.from(
      { length: 1 + rng.int(5) },
      () => randomRecord(rng, rng.chance(0.05)),
    );
    const frames = await sealAll(records);
    const stream = concat(...frames);
    const fields: Field[] = [];
    for (let o = 0, k = 0; k < frames.length; o += frames[k].length, k++) {
      fields.push(
        { offset: o, size: 1 },
        { offset: o + 1, size: 1 },
        { offset: o + 4, size: 4, limit: MAX_RECORD_BODY },
      );
    }
    const roll = rng.int(12);
    let bytes: Uint8Array;
    if (roll === 0) bytes = stream;
    else if (roll === 1) bytes = rng.bytes(rng.length(2000));
    else if (roll === 2) {
      // A header claiming 4 GiB - 1 (or just over the limit), where a record starts.
      const k = rng.int(frames.length);
      const o = frames.slice(0, k).reduce((n, f) => n + f.length, 0);
      bytes = stream.slice();
      new DataView(bytes.buffer).setUint32(
        o + 4,
        rng.pick([0xffffffff, MAX_RECORD_BODY + 1, 0x7fffffff]),
      );
    } else if (roll === 3) {
      // Frames dropped, duplicated or swapped.
      const order = frames.map((_, k) => k);
      const k = rng.int(order.length);
      const op = rng.int(3);
      if (op === 0) order.splice(k, 1);
      else if (op === 1) order.splice(k, 0, k);
      else if (k + 1 < order.length) [order[k], order[k + 1]] = [order[k + 1], order[k]];
      bytes = concat(...order.map((k) => frames[k]));
    } else {
      bytes = mutate(rng, stream, fields, frames);
    }
    const maxBody = rng.pick([MAX_RECORD_BODY, 4096]);
    const src = new FuzzSource(bytes, rng);
    const reader = new RecordReader(
      await RecordOpener.create(KEYS, { maxBody }),
      new BufferedReader(src, SMALL_BUFFER),
    );
    const what = () =>
      `RecordReader over ${
        hex(bytes)
      } (${records.length} records, max ${maxBody}) [seed ${SEED}, #${i}]`;
    let n = 0;
    let end: string;
    try {
      while (true) {
        const rec = await bounded(reader.next(), 2000, what);
        if (rec === null) {
          end = "clean end";
          break;
        }
        assert.ok(n < records.length, `${what()}: more records than were sent`);
        assert.ok(sameRecord(rec, records[n]), `${what()}: record ${n} is not the genuine one`);
        n++;
      }
    } catch (err) {
      if (err instanceof Error && err.message.startsWith("HANG")) throw err;
      assertClean(err, what);
      end = err.name;
    }
    if (same(bytes, stream) && records.every((r) => r.body.length <= maxBody)) {
      assert.equal(n, records.length, `${what()}: genuine stream cut short (${end})`);
      assert.equal(end, "clean end", what());
    }
    // Never a read larger than the largest legal record: a length field is
    // checked before the buffer for the body is allocated.
    assert.ok(
      src.largestRequest <= Math.max(SMALL_BUFFER, maxBody + TAG_LEN),
      `${what()}: asked for ${src.largestRequest} bytes at once`,
    );
    const key = `${end} after ${n === records.length ? "all" : "some"} records`;
    outcomes[key] = (outcomes[key] ?? 0) + 1;
  }
  console.log(`  ${N} streams: ${JSON.stringify(outcomes)}`);
});

Deno.test("fuzz: a 4 GiB record length is refused after the 8-byte header, before any allocation", async () => {
  const [frame] = await sealAll([{ type: RecordType.DATA, flags: 0, body: new Uint8Array(100) }]);
  for (const len of [0xffffffff, 0x80000000, MAX_RECORD_BODY + 1]) {
    const bytes = frame.slice();
    new DataView(bytes.buffer).setUint32(4, len);
    const rng = new Rng(10);
    const src = new FuzzSource(concat(bytes, new Uint8Array(1 << 16)), rng);
    const reader = new RecordReader(await RecordOpener.create(KEYS), new BufferedReader(src, 8));
    await assert.rejects(reader.next(), (err: Error) => {
      assert.equal(err.name, "IntegrityError");
      assert.match(err.message, new RegExp(`record length ${len} exceeds the limit`));
      return true;
    });
    assert.ok(src.largestRequest <= 8, `asked for ${src.largestRequest} bytes`);
    assert.ok(src.delivered <= 8, `read ${src.delivered} bytes`);
  }
});

// ---------------------------------------------------------------------------
// Whole handshakes over an in-memory wire that mutates one message

/** One direction of an in-memory connection. */
class Pipe {
  #chunks: Uint8Array[] = [];
  #closed = false;
  #wake: (() => void) | null = null;
  push(b: Uint8Array): void {
    if (this.#closed) return; // like a socket write that the kernel took before the reset
    this.#chunks.push(b);
    this.#wake?.();
  }
  close(): void {
    this.#closed = true;
    this.#wake?.();
  }
  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#closed) return null;
      await new Promise<void>((r) => this.#wake = r);
      this.#wake = null;
    }
    const c = this.#chunks[0];
    const n = Math.min(p.length, c.length);
    p.set(c.subarray(0, n));
    if (n === c.length) this.#chunks.shift();
    else this.#chunks[0] = c.subarray(n);
    return n;
  }
}

/** Which handshake message of which direction a wire end replaces, and how. */
type WireTarget = { dir: Dir; index: number; mutate: (b: Uint8Array) => Uint8Array } | null;

/**
 * One end of the wire. What it writes goes through a FrameSplitter, and the
 * handshake message `target` of this direction is replaced by `mutate(it)`.
 */
class WireEnd implements Transport {
  #in: Pipe;
  #out: Pipe;
  #split: FrameSplitter;
  #dir: Dir;
  #target: WireTarget;
  /** Set once the targeted message went through: was it really changed? */
  changed: boolean | undefined;
  /** ... and was the change only bytes appended after the intact message? */
  extended = false;

  constructor(dir: Dir, input: Pipe, out: Pipe, target: WireTarget) {
    this.#dir = dir;
    this.#in = input;
    this.#out = out;
    this.#split = new FrameSplitter(dir);
    this.#target = target;
  }
  read(p: Uint8Array): Promise<number | null> {
    return this.#in.read(p);
  }
  write(p: Uint8Array): Promise<number> {
    for (const f of this.#split.push(p.slice())) {
      const t = this.#target;
      if (t && t.dir === this.#dir && f.kind === "handshake" && f.index === t.index) {
        const m = t.mutate(f.bytes);
        this.changed = !same(m, f.bytes);
        this.extended = m.length > f.bytes.length && same(m.subarray(0, f.bytes.length), f.bytes);
        this.#out.push(m);
      } else {
        this.#out.push(f.bytes);
      }
    }
    return Promise.resolve(p.length);
  }
  close(): void {
    const rest = this.#split.rest();
    if (rest) this.#out.push(rest.bytes);
    this.#out.close();
    this.#in.close();
  }
}

Deno.test("fuzz: handshakes with one mutated message never succeed; both sides end in time", async () => {
  const rng = new Rng(11);
  const N = 360;
  const TIMEOUT = 400;
  const verifyServerKey = (spki: Uint8Array) =>
    same(spki, KEY.spki) ? Promise.resolve() : Promise.reject(new AuthError("not the pinned key"));
  const targets = [
    { dir: "c2s", index: 0, name: "CLIENT_HELLO" },
    { dir: "s2c", index: 0, name: "SERVER_HELLO" },
    { dir: "c2s", index: 1, name: "CLIENT_KEY" },
    { dir: "c2s", index: 2, name: "CLIENT_FINISHED" },
    { dir: "s2c", index: 1, name: "SERVER_FINISHED" },
  ] as const;
  const tally: Record<string, number> = {};
  const runOne = async (i: number) => {
    const t = i === 0 ? null : rng.pick(targets);
    const mutator = (b: Uint8Array) => {
      const fields: Field[] = [{ offset: 0, size: 1 }, {
        offset: 1,
        size: 2,
        limit: MAX_HANDSHAKE_BODY,
      }];
      if (t?.name === "SERVER_HELLO") fields.push({ offset: 3 + 38, size: 2 });
      if (t?.name === "CLIENT_KEY") fields.push({ offset: 3, size: 2 });
      if (rng.chance(0.1)) return concat(b, b); // the message twice
      if (rng.chance(0.05)) return encodeAlert(rng.int(7), "forged");
      return mutate(rng, b, fields);
    };
    const target = t ? { dir: t.dir as Dir, index: t.index, mutate: mutator } : null;
    const c2s = new Pipe();
    const s2c = new Pipe();
    const clientEnd = new WireEnd("c2s", s2c, c2s, target);
    const serverEnd = new WireEnd("s2c", c2s, s2c, target);
    const what = () => `handshake #${i} with ${t?.name ?? "nothing"} mutated [seed ${SEED}]`;
    const [cr, sr] = await bounded(
      Promise.allSettled([
        SecureChannel.client(clientEnd, { verifyServerKey, handshakeTimeoutMs: TIMEOUT }),
        SecureChannel.server(serverEnd, { key: KEY, handshakeTimeoutMs: TIMEOUT }),
      ]),
      TIMEOUT * 5,
      what,
    );
    for (const r of [cr, sr]) if (r.status === "rejected") assertClean(r.reason, what);
    const end = t?.dir === "c2s" ? clientEnd : serverEnd;
    const changed = end.changed === true;
    if (changed && end.extended) {
      // The message went through intact, followed by extra bytes: those are
      // not part of the handshake, and the record layer must refuse them.
      if (cr.status === "fulfilled" && sr.status === "fulfilled") {
        const [sender, receiver] = t!.dir === "c2s" ? [cr.value, sr.value] : [sr.value, cr.value];
        receiver.idleTimeoutMs = TIMEOUT;
        await sender.sendMessage({ ping: i });
        const err = await bounded(
          receiver.recvMessage().then(() => null, (e) => e),
          TIMEOUT * 3,
          what,
        );
        assert.ok(
          err !== null,
          `${what()}: bytes appended to the handshake were taken as a record`,
        );
        assertClean(err, what);
      }
    } else if (!changed) {
      // No mutation, or one that left the bytes as they were (or never ran
      // because an earlier failure ended the handshake).
      if (cr.status === "fulfilled") {
        assert.equal(sr.status, "fulfilled", what());
      }
    } else {
      assert.equal(cr.status, "rejected", `${what()}: the client accepted a tampered handshake`);
      if (t?.name !== "SERVER_FINISHED") {
        assert.equal(sr.status, "rejected", `${what()}: the server accepted a tampered handshake`);
      }
    }
    if (cr.status === "fulfilled" && sr.status === "fulfilled") {
      assert.ok(same(cr.value.session.transcriptHash, sr.value.session.transcriptHash), what());
      assert.ok(same(cr.value.session.send.mac, sr.value.session.recv.mac), what());
    }
    if (i === 0) assert.equal(cr.status, "fulfilled", "the untouched handshake failed");
    for (const r of [cr, sr]) if (r.status === "fulfilled") r.value.abort();
    clientEnd.close();
    serverEnd.close();
    const how = !changed ? " (left as it was)" : end.extended ? " (bytes appended)" : "";
    const key = `${t?.name ?? "none"}${how}: client ${
      cr.status === "fulfilled" ? "ok" : (cr.reason as Error).name
    }, server ${sr.status === "fulfilled" ? "ok" : (sr.reason as Error).name}`;
    tally[key] = (tally[key] ?? 0) + 1;
  };
  const t0 = performance.now();
  for (let i = 0; i < N; i += 30) {
    await Promise.all(Array.from({ length: Math.min(30, N - i) }, (_, k) => runOne(i + k)));
  }
  console.log(`  ${N} handshakes in ${Math.round(performance.now() - t0)} ms:`);
  for (const [k, n] of Object.entries(tally).sort()) {
    console.log(`    ${String(n).padStart(3)} x ${k}`);
  }
});

// ---------------------------------------------------------------------------
// A real server over TCP

/** Log lines a server may write for a refused handshake (anything else is a finding). */
const KNOWN_HANDSHAKE_FAILURES = new RegExp(
  "^handshake failed: (" + [
    "the client does not speak the efx protocol \\(bad magic\\)",
    "unexpected handshake message from client \\(type \\d+, wanted \\d+\\); not an efx peer\\?",
    "handshake message from client too large \\(\\d+ bytes\\)",
    "client closed the connection during the handshake",
    "malformed CLIENT_HELLO \\(wrong length\\)",
    "malformed CLIENT_KEY",
    "client offered unsupported protocol version \\d+; this server speaks 1 to 2",
    "client failed key confirmation \\(tampered or replayed handshake\\)",
    "handshake timed out after 1 s",
    "client refused the handshake: [^\\x00-\\x1f\\x7f-\\x9f]*",
    "client is busy: [^\\x00-\\x1f\\x7f-\\x9f]*",
    "Connection reset by peer \\(os error 104\\)",
    "Broken pipe \\(os error 32\\)",
  ].join("|") + ")$",
);

Deno.test("fuzz: a real server refuses random and mutated handshake bytes over TCP, then serves an upload", async () => {
  const rng = new Rng(12);
  const N = 120;
  const dir = await makeWorkDir("efx-fuzz-server-");
  const lines: string[] = [];
  const server = await EfxServer.start({
    host: "127.0.0.1",
    port: 0,
    root: join(dir, "storage"),
    keyPath: KEY_PATH,
    handshakeTimeoutMs: 1000,
    log: makeLogger("normal", (l) => lines.push(l)),
  });
  try {
    const ch = encodeClientHello(rng.bytes(32));
    const flight = concat(
      ch,
      encodeClientKey(rng.bytes(256)),
      encodeHandshakeMessage(HandshakeType.CLIENT_FINISHED, rng.bytes(32)),
    );
    const flightFields: Field[] = [
      { offset: 0, size: 1 },
      { offset: 1, size: 2, limit: MAX_HANDSHAKE_BODY },
      { offset: 41, size: 1 },
      { offset: 42, size: 2, limit: MAX_HANDSHAKE_BODY },
      { offset: 44, size: 2 },
    ];
    const inputs: { bytes: Uint8Array; hold: boolean }[] = [];
    for (let i = 0; i < N; i++) {
      const kind = i % 6;
      const bytes = kind === 0
        ? rng.bytes(rng.length(5000))
        : kind === 1
        ? mutate(rng, ch, flightFields.slice(0, 2))
        : kind === 2
        ? mutate(rng, flight, flightFields, [ch])
        : kind === 3
        ? encodeAlert(rng.int(8), String.fromCharCode(...rng.bytes(40)))
        : kind === 4
        ? flight // a well-formed flight for another session's nonce: confirmation fails
        : ch.subarray(0, rng.int(ch.length)); // a cut CLIENT_HELLO
      inputs.push({ bytes, hold: rng.chance(0.3) });
    }
    const ports: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < N; i += 30) {
      await Promise.all(
        inputs.slice(i, i + 30).map(async ({ bytes, hold }, k) => {
          const what = () => `TCP input #${i + k} ${hex(bytes)} [seed ${SEED}]`;
          const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
          ports.push((conn.localAddr as Deno.NetAddr).port);
          const parts: Uint8Array[] = [];
          await bounded(
            (async () => {
              try {
                let o = 0;
                while (o < bytes.length) o += await conn.write(bytes.subarray(o));
                if (!hold) await conn.closeWrite();
              } catch { /* the server may hang up first */ }
              const buf = new Uint8Array(4096);
              try {
                while (true) {
                  const n = await conn.read(buf);
                  if (n === null) break;
                  parts.push(buf.slice(0, n));
                }
              } catch { /* reset */ }
            })(),
            5000,
            what,
          ).finally(() => conn.close());
          // All the server ever says: its hello and maybe an alert; never SERVER_FINISHED.
          for (const f of splitFrames("s2c", concat(...parts))) {
            assert.equal(f.kind, "handshake", what());
            assert.ok(
              f.type === HandshakeType.SERVER_HELLO || f.type === HandshakeType.ALERT,
              `${what()}: the server sent message type ${f.type}`,
            );
          }
        }),
      );
    }
    // One line per connection, each a known refusal; no internal error.
    const byPort = (p: number) => lines.filter((l) => l.includes(` 127.0.0.1:${p} `));
    for (let tries = 0; ports.some((p) => byPort(p).length === 0) && tries < 100; tries++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const reasons: Record<string, number> = {};
    for (const p of ports) {
      const mine = byPort(p);
      assert.equal(mine.length, 1, `port ${p}: ${mine.join("\n")}`);
      const text = mine[0].replace(/^\S+ 127\.0\.0\.1:\d+ /, "");
      assert.match(text, KNOWN_HANDSHAKE_FAILURES);
      const reason = text.replace(/\d+/g, "N").replace(
        /(refused the handshake|is busy): .*/,
        "$1: ...",
      );
      reasons[reason] = (reasons[reason] ?? 0) + 1;
    }
    for (const l of lines) {
      assert.match(l, /^\d{4}-\d\d-\d\dT\S+Z /, `a log line that does not start with a time: ${l}`);
      assert.doesNotMatch(l, /internal error/);
    }
    console.log(
      `  ${N} hostile connections in ${Math.round(performance.now() - t0)} ms; server said:`,
    );
    for (const [k, n] of Object.entries(reasons).sort()) {
      console.log(`    ${String(n).padStart(3)} x ${k}`);
    }

    // The server still completes a normal upload (and download).
    const local = join(dir, "after-fuzz.bin");
    await randomFile(local, 300_000);
    const client = await EfxClient.connect({
      host: "127.0.0.1",
      port: server.port,
      verifier: makeServerVerifier({
        pinnedFingerprint: KEY.fingerprint,
        knownServersFile: "/nonexistent/efx-fuzz/known_servers",
        acceptNew: false,
      }),
    });
    try {
      await client.upload(local, "after-fuzz.bin");
      await client.download("after-fuzz.bin", join(dir, "back.bin"));
    } finally {
      await client.close();
    }
    assert.ok(same(await Deno.readFile(join(dir, "back.bin")), await Deno.readFile(local)));
    assert.ok(
      same(await Deno.readFile(join(dir, "storage", "after-fuzz.bin")), await Deno.readFile(local)),
    );
    const stray = (await listTree(join(dir, "storage"))).filter((p) =>
      p !== "after-fuzz.bin" && !/^\.efx-tmp-partial$/.test(p)
    );
    assert.deepEqual(stray, [], "files left in the storage");
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fuzz: clean up the key folder", async () => {
  await Deno.remove(KEY_DIR, { recursive: true });
});
