/**
 * The record layer: framed, encrypted and authenticated records over one
 * connection, one direction per key set.
 *
 * A record on the wire is
 *
 *     header (8) = type u8 | flags u8 | reserved u16 = 0 | length u32be
 *     ciphertext (length) = plaintext XOR keystream(enc_key, seq)
 *         (version 1: keystream.ts, computed off the main thread and ahead;
 *          version 2: keystream2.ts, computed in place when the record is sealed
 *          or its tag checked)
 *     tag (32) = HMAC-SHA256(mac_key, uint64_be(seq) || header || ciphertext)
 *
 * Invariants:
 * - encrypt-then-MAC: the tag is checked, in constant time, before anything
 *   is decrypted or acted on; the header is authenticated with the body;
 * - `seq` is implicit: both sides count records from 0 per direction, so a
 *   replayed, dropped, duplicated or reordered record fails its tag;
 * - the length is checked against the limit before the body is read or any
 *   buffer for it is allocated;
 * - memory follows the bytes that arrived, not the length announced: a body
 *   above {@linkcode SMALL_RECORD} gets its buffer and keystream only once
 *   its first {@linkcode FIRST_CHUNK} bytes are in, after reserving them
 *   from the shared {@linkcode MemoryBudget} (limits.ts; waiting, and so
 *   not reading, while it is spent); keystreams of later records are
 *   computed ahead only once a record has fully arrived, only when allowed
 *   (not before a connection is admitted) and only when the budget has room;
 * - a key set protects at most `maxRecords` records; beyond that the channel
 *   fails (no rekeying: reconnect);
 * - truncation: a stream of DATA records ends with the END flag and a
 *   connection ends with a CLOSE record, so a cut connection is an error
 *   rather than a short file (enforced by channel.ts).
 *
 * @module
 */
import { createHmac } from "node:crypto";
import { setImmediate } from "node:timers";
import { constantTimeEqual, u64 } from "./bytes.ts";
import { EfxError, IntegrityError, ProtocolError } from "./errors.ts";
import { noteRecord } from "./gc.ts";
import { BufferedReader, type Readable, type Writable, writeAll } from "./io.ts";
import { Keystream, xorInto } from "./keystream.ts";
import { PrefixKeystream } from "./keystream2.ts";
import { type MemoryBudget, SMALL_RECORD } from "./limits.ts";
import { give, take } from "./pool.ts";

/** Record types. */
export const RecordType = {
  /** A control message: UTF-8 JSON object. */
  MSG: 1,
  /** A chunk of a data stream (a file). */
  DATA: 2,
  /** Orderly end of the connection (empty body). */
  CLOSE: 3,
  /** A fatal error report, UTF-8 JSON {code, message}; the sender then closes. */
  ALERT: 4,
} as const;
export type RecordType = typeof RecordType[keyof typeof RecordType];

/** Flag bit: the last DATA record of a stream. */
export const FLAG_END = 0x01;
export const HEADER_LEN = 8;
export const TAG_LEN = 32;
/** Largest record body accepted or sent (1 MiB). */
export const MAX_RECORD_BODY = 1 << 20;
/** Records of a data stream whose keystream the receiver computes ahead. */
export const PREFETCH_DEPTH = 3;
/** Records per direction and key set before the channel refuses to go on. */
export const DEFAULT_MAX_RECORDS = 2n ** 32n;
/** Body bytes of a large record that must arrive before its buffers are allocated. */
export const FIRST_CHUNK = 64 * 1024;
/** A reader busy this long without a macrotask boundary lets others run. */
const YIELD_AFTER_MS = 20;

/** The two keys of one direction. */
export interface DirectionKeys {
  /** Keystream key (32 bytes). */
  enc: Uint8Array<ArrayBuffer>;
  /** HMAC tag key (32 bytes). */
  mac: Uint8Array<ArrayBuffer>;
}

/** A decrypted record. */
export interface PlainRecord {
  type: RecordType;
  flags: number;
  body: Uint8Array<ArrayBuffer>;
}

/** Encodes a record header. */
export function encodeHeader(type: number, flags: number, length: number): Uint8Array<ArrayBuffer> {
  const h = new Uint8Array(HEADER_LEN);
  const v = new DataView(h.buffer);
  v.setUint8(0, type);
  v.setUint8(1, flags);
  v.setUint32(4, length);
  return h;
}

/**
 * Parses and checks a header before anything else of the record is read:
 * known type, known flags, reserved bytes zero, length within `maxBody`.
 */
export function parseHeader(h: Uint8Array, maxBody = MAX_RECORD_BODY) {
  const v = new DataView(h.buffer, h.byteOffset, HEADER_LEN);
  const type = v.getUint8(0);
  const flags = v.getUint8(1);
  const length = v.getUint32(4);
  if (type < RecordType.MSG || type > RecordType.ALERT) {
    throw new IntegrityError(`integrity check failed: record header has unknown type ${type}`);
  }
  if ((flags & ~FLAG_END) !== 0 || v.getUint16(2) !== 0) {
    throw new IntegrityError("integrity check failed: record header has unknown flags");
  }
  if ((flags & FLAG_END) && type !== RecordType.DATA) {
    throw new IntegrityError("integrity check failed: END flag on a non-data record");
  }
  if (length > maxBody) {
    throw new IntegrityError(
      `integrity check failed: record length ${length} exceeds the limit of ${maxBody} bytes`,
    );
  }
  return { type: type as RecordType, flags, length };
}

/** HMAC-SHA256(mac, uint64_be(seq) || header || ciphertext). */
export function recordTag(
  mac: Uint8Array,
  seq: bigint,
  headerAndCiphertext: Uint8Array,
): Uint8Array {
  return createHmac("sha256", mac).update(u64(seq)).update(headerAndCiphertext).digest();
}

/** The protocol versions whose record layer this module speaks. */
export type ProtocolVersion = 1 | 2;

/** The keystream protocol `version` uses (version 1: HMAC counter mode; 2: prefix-keyed SHA-256). */
async function keystreamFor(
  version: ProtocolVersion,
  enc: Uint8Array<ArrayBuffer>,
): Promise<Keystream | PrefixKeystream> {
  if (version === 2) return PrefixKeystream.create(enc);
  if (version === 1) return await Keystream.create(enc);
  throw new Error(`no record layer for protocol version ${version}`);
}

function limitError(max: bigint): EfxError {
  return new ProtocolError(`record limit of ${max} per key reached; reconnect to continue`);
}

/**
 * Seals records for one direction. `seal` assigns sequence numbers in call
 * order; the caller must put frames on the wire in that order.
 */
export class RecordSealer {
  #ks: Keystream | PrefixKeystream;
  #mac: Uint8Array;
  #seq = 0n;
  #max: bigint;

  private constructor(ks: Keystream | PrefixKeystream, mac: Uint8Array, max: bigint) {
    this.#ks = ks;
    this.#mac = mac;
    this.#max = max;
  }

  /** A sealer for `keys` under protocol `version` (its keystream; default 1). */
  static async create(
    keys: DirectionKeys,
    maxRecords = DEFAULT_MAX_RECORDS,
    version: ProtocolVersion = 1,
  ): Promise<RecordSealer> {
    return new RecordSealer(await keystreamFor(version, keys.enc), keys.mac, maxRecords);
  }

  /** Sequence number the next record will get. */
  get nextSeq(): bigint {
    return this.#seq;
  }

  /** Returns the full wire frame (header, ciphertext, tag) of one record. */
  seal(type: RecordType, flags: number, body: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
    if (body.length > MAX_RECORD_BODY) throw new Error("record body too large");
    if (this.#seq >= this.#max) throw limitError(this.#max);
    const seq = this.#seq++;
    const ks = this.#ks;
    noteRecord(); // its tag's HMAC object
    const build = (stream: Uint8Array | null) => {
      const n = body.length;
      const frame = take(HEADER_LEN + n + TAG_LEN); // every byte is written below
      frame.set(encodeHeader(type, flags, n), 0);
      const ct = frame.subarray(HEADER_LEN, HEADER_LEN + n);
      ct.set(body);
      if (stream) xorInto(ct, stream);
      else (ks as PrefixKeystream).xorInPlace(seq, ct);
      frame.set(recordTag(this.#mac, seq, frame.subarray(0, HEADER_LEN + n)), HEADER_LEN + n);
      return frame;
    };
    if (ks instanceof PrefixKeystream) return Promise.resolve(build(null));
    return ks.generate(seq, body.length).then(build);
  }
}

/** A record whose header was checked, while its body is read. */
export interface OpenRecord {
  type: RecordType;
  flags: number;
  length: number;
  seq: bigint;
  header: Uint8Array;
  /** Its keystream, once started. */
  stream: Promise<Uint8Array> | undefined;
  /** Bytes of the budget it holds (released by whoever reads it). */
  reserved: number;
}

/** Opens records for one direction, in order. */
export class RecordOpener {
  /** Version 1: computed off the main thread, ahead; version 2: in place, when needed. */
  #ks: Keystream | PrefixKeystream;
  #mac: Uint8Array;
  #seq = 0n;
  #max: bigint;
  #maxBody = MAX_RECORD_BODY;
  /** Whether keystreams of later records may be computed ahead. */
  prefetch: boolean;
  /** Shared bound on large-record memory; null: none (e.g. the client side). */
  readonly budget: MemoryBudget | null;
  /**
   * Keystreams computed ahead for the next records of a data stream, by seq,
   * with the bytes each holds of the budget.
   */
  #prefetch = new Map<
    bigint,
    { length: number; stream: Promise<Uint8Array>; reserved: number }
  >();

  private constructor(
    ks: Keystream | PrefixKeystream,
    mac: Uint8Array,
    max: bigint,
    opts: { maxBody?: number; prefetch?: boolean; budget?: MemoryBudget },
  ) {
    this.#ks = ks;
    this.#mac = mac;
    this.#max = max;
    this.maxBody = opts.maxBody ?? MAX_RECORD_BODY;
    this.prefetch = opts.prefetch ?? true;
    this.budget = opts.budget ?? null;
  }

  /**
   * Largest body accepted (lowered before a connection is admitted); never
   * above {@linkcode MAX_RECORD_BODY}, whatever is assigned.
   */
  get maxBody(): number {
    return this.#maxBody;
  }
  set maxBody(n: number) {
    this.#maxBody = Math.min(n, MAX_RECORD_BODY);
  }

  static async create(
    keys: DirectionKeys,
    opts: {
      maxRecords?: bigint;
      maxBody?: number;
      prefetch?: boolean;
      budget?: MemoryBudget;
      /** Protocol version, which fixes the keystream (default 1). */
      version?: ProtocolVersion;
    } = {},
  ): Promise<RecordOpener> {
    return new RecordOpener(
      await keystreamFor(opts.version ?? 1, keys.enc),
      keys.mac,
      opts.maxRecords ?? DEFAULT_MAX_RECORDS,
      opts,
    );
  }

  /** Sequence number the next record must have. */
  get nextSeq(): bigint {
    return this.#seq;
  }

  /** Whether a record's keystream takes a buffer of its own (version 1), not computed in place. */
  get buffersKeystream(): boolean {
    return !(this.#ks instanceof PrefixKeystream);
  }

  /**
   * Checks a header and claims the next sequence number. A small record's
   * keystream is started at once, to run while the body arrives; a large
   * one's comes from the keystreams computed ahead, or is started by
   * {@linkcode startStream} once body bytes are in (or by finish()).
   * `reserved` is what the record holds of the budget (a prefetched
   * keystream's bytes); the caller releases it.
   */
  begin(header: Uint8Array): OpenRecord {
    const h = parseHeader(header, this.maxBody);
    if (this.#seq >= this.#max) throw limitError(this.#max);
    const seq = this.#seq++;
    const pf = this.#prefetch.get(seq);
    this.#prefetch.delete(seq);
    const rec: OpenRecord = { ...h, seq, header, stream: undefined, reserved: 0 };
    if (pf && pf.length >= h.length) {
      rec.stream = pf.stream;
      rec.reserved = pf.reserved;
    } else if (pf) {
      this.budget?.release(pf.reserved);
    }
    if (!(h.type === RecordType.DATA && !(h.flags & FLAG_END) && h.length >= 65536)) {
      this.dropPrefetch(); // the stream ends here: nothing more is coming
    }
    if (!rec.stream && h.length <= SMALL_RECORD) this.startStream(rec);
    return rec;
  }

  /** Starts computing `rec`'s keystream unless it is under way already. */
  startStream(rec: OpenRecord): void {
    if (rec.stream || this.#ks instanceof PrefixKeystream) return; // v2: computed in finish()
    rec.stream = this.#ks.generate(rec.seq, rec.length);
    rec.stream.catch(() => {}); // awaited in finish(); never an unhandled rejection
  }

  /**
   * Called once `rec` has fully arrived: data streams send full records back
   * to back, so compute the keystreams of the next few now, in parallel (a
   * prefix serves a shorter record) — when allowed and when the budget has
   * room for them without waiting.
   */
  prefetchAfter(rec: OpenRecord): void {
    if (!this.prefetch || this.#ks instanceof PrefixKeystream) return;
    if (!(rec.type === RecordType.DATA && !(rec.flags & FLAG_END) && rec.length >= 65536)) return;
    for (let i = 1n; i <= BigInt(PREFETCH_DEPTH); i++) {
      const have = this.#prefetch.get(rec.seq + i);
      if (have && have.length >= rec.length) continue;
      if (this.budget && !this.budget.tryAcquire(rec.length)) return;
      if (have) this.budget?.release(have.reserved);
      const next = this.#ks.generate(rec.seq + i, rec.length);
      next.catch(() => {});
      const reserved = this.budget ? rec.length : 0;
      this.#prefetch.set(rec.seq + i, { length: rec.length, stream: next, reserved });
    }
  }

  /** Forgets the keystreams computed ahead, returning their budget. */
  dropPrefetch(): void {
    for (const pf of this.#prefetch.values()) this.budget?.release(pf.reserved);
    this.#prefetch.clear();
  }

  /**
   * Verifies the tag over `bodyAndTag` (ciphertext || tag, as read) and
   * decrypts in place. Throws {@linkcode IntegrityError} on a bad tag.
   */
  async finish(
    rec: OpenRecord,
    bodyAndTag: Uint8Array<ArrayBuffer>,
  ): Promise<PlainRecord> {
    const n = rec.length;
    noteRecord(); // the HMAC object below
    const tag = createHmac("sha256", this.#mac).update(u64(rec.seq)).update(rec.header)
      .update(bodyAndTag.subarray(0, n)).digest();
    if (!constantTimeEqual(tag, bodyAndTag.subarray(n, n + TAG_LEN))) {
      throw new IntegrityError(
        `integrity check failed on record ${rec.seq}: data was tampered with, replayed, reordered or dropped`,
      );
    }
    const body = bodyAndTag.subarray(0, n);
    if (this.#ks instanceof PrefixKeystream) {
      this.#ks.xorInPlace(rec.seq, body);
    } else {
      this.startStream(rec);
      xorInto(body, (await rec.stream!).subarray(0, n));
    }
    return { type: rec.type, flags: rec.flags, body };
  }

  /** Opens one whole frame held in memory (used by tests, vectors and fuzzing). */
  async open(frame: Uint8Array): Promise<PlainRecord> {
    if (frame.length < HEADER_LEN + TAG_LEN) throw new ProtocolError("bad record: too short");
    const rec = this.begin(frame.subarray(0, HEADER_LEN));
    if (frame.length !== HEADER_LEN + rec.length + TAG_LEN) {
      throw new ProtocolError("bad record: length does not match the frame");
    }
    return await this.finish(rec, frame.slice(HEADER_LEN));
  }
}

/**
 * Sends records on a connection. Frames are sealed concurrently (the
 * keystream is computed off the main thread) but written strictly in
 * sequence order; after a write fails every later send fails too.
 */
export class RecordWriter {
  #sealer: RecordSealer;
  #out: Writable;
  #tail: Promise<void> = Promise.resolve();
  #failed: unknown = undefined;

  constructor(sealer: RecordSealer, out: Writable) {
    this.#sealer = sealer;
    this.#out = out;
  }

  /** Queues one record; resolves once it is written. */
  send(type: RecordType, flags: number, body: Uint8Array): Promise<void> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    let frame: Promise<Uint8Array>;
    try {
      frame = this.#sealer.seal(type, flags, body);
    } catch (err) {
      return Promise.reject(err); // limits: always a rejected promise, never a throw
    }
    frame.catch(() => {});
    const done = this.#tail.then(async () => {
      if (this.#failed !== undefined) throw this.#failed;
      try {
        const bytes = await frame;
        await writeAll(this.#out, bytes);
        give(bytes); // written: the frame buffer can serve a later record
      } catch (err) {
        this.#failed ??= err;
        throw err;
      }
    });
    this.#tail = done.catch(() => {});
    return done;
  }

  /** Resolves when everything queued so far is written. */
  async flush(): Promise<void> {
    await this.#tail;
    if (this.#failed !== undefined) throw this.#failed;
  }
}

/**
 * Receives records from a connection, in order.
 *
 * Memory: a small record (body up to {@linkcode SMALL_RECORD}) is read into
 * a buffer of its size. A large one is read first into a
 * {@linkcode FIRST_CHUNK} buffer; only when those bytes are in does it
 * reserve its buffer and keystream from the opener's budget (waiting, and
 * not reading, while the budget is spent: TCP then holds the peer back),
 * allocate them and read the rest. The reservation is returned when the
 * record has been handed out or failed; a record handed out is the
 * consumer's, one at a time per connection. While waiting, the reader holds
 * nothing of the budget (no hold-and-wait, so no deadlock between readers).
 *
 * Fairness: reads that complete at once (records already buffered) go on in
 * microtasks, which would keep timers and other connections waiting; so
 * every {@linkcode YIELD_AFTER_MS} the reader yields to the event loop
 * (setImmediate: a few microseconds, no timer clamping).
 */
export class RecordReader {
  #opener: RecordOpener;
  #in: BufferedReader;
  #cancel = new AbortController();
  /** When this reader last yielded to the event loop. */
  #lastYield = performance.now();

  constructor(opener: RecordOpener, input: BufferedReader | Readable) {
    this.#opener = opener;
    this.#in = input instanceof BufferedReader ? input : new BufferedReader(input);
  }

  /** The record layer's receive limits (lowered before a connection is admitted). */
  setLimits(limits: { maxBody: number; prefetch: boolean }): void {
    this.#opener.maxBody = limits.maxBody;
    this.#opener.prefetch = limits.prefetch;
    if (!limits.prefetch) this.#opener.dropPrefetch();
  }

  /**
   * Ends any wait for the budget and returns what the reader holds of it;
   * call when the connection is closed. Later reads fail.
   */
  cancel(): void {
    if (!this.#cancel.signal.aborted) {
      this.#cancel.abort(new ProtocolError("connection closed while waiting for memory"));
    }
    this.#opener.dropPrefetch();
  }

  /** The next record, or null when the connection ended cleanly at a record boundary. */
  async next(): Promise<PlainRecord | null> {
    if (this.#cancel.signal.aborted) throw this.#cancel.signal.reason;
    await this.#fair();
    const header = new Uint8Array(HEADER_LEN);
    if (!(await this.#in.readExactOrEof(header, "a record header"))) return null;
    const rec = this.#opener.begin(header);
    const total = rec.length + TAG_LEN;
    const budget = this.#opener.budget;
    let first: Uint8Array | null = null;
    try {
      if (rec.length <= SMALL_RECORD) {
        const buf = take(total); // the consumer may give() the body back
        await this.#in.readExact(buf, `record ${rec.seq}`);
        return await this.#opener.finish(rec, buf);
      }
      first = take(FIRST_CHUNK);
      await this.#in.readExact(first, `record ${rec.seq}`);
      if (budget) {
        // A version 1 keystream takes a buffer of the body's size; version 2 none.
        const ks = this.#opener.buffersKeystream ? rec.length : 0;
        const need = total + (rec.stream ? 0 : ks);
        if (budget.tryAcquire(need)) {
          rec.reserved += need;
        } else {
          // Wait holding nothing: give back what was computed ahead.
          this.#opener.dropPrefetch();
          budget.release(rec.reserved);
          rec.reserved = 0;
          rec.stream = undefined;
          await budget.acquire(total + ks, this.#cancel.signal);
          rec.reserved = total + ks;
        }
      }
      this.#opener.startStream(rec); // computed while the rest arrives
      const buf = take(total); // the consumer may give() the body back
      buf.set(first);
      give(first);
      first = null;
      await this.#in.readExact(buf.subarray(FIRST_CHUNK), `record ${rec.seq}`);
      this.#opener.prefetchAfter(rec);
      return await this.#opener.finish(rec, buf);
    } catch (err) {
      this.#opener.dropPrefetch();
      throw err;
    } finally {
      if (first) give(first);
      budget?.release(rec.reserved);
      rec.reserved = 0;
    }
  }

  /** Yields to the event loop once {@linkcode YIELD_AFTER_MS} have passed since the last time. */
  async #fair(): Promise<void> {
    const now = performance.now();
    if (now - this.#lastYield > YIELD_AFTER_MS) {
      await new Promise((r) => setImmediate(r));
      this.#lastYield = performance.now();
    }
  }
}
