/**
 * The record layer: framed, encrypted and authenticated records over one
 * connection, one direction per key set.
 *
 * A record on the wire is
 *
 *     header (8) = type u8 | flags u8 | reserved u16 = 0 | length u32be
 *     ciphertext (length) = plaintext XOR keystream(enc_key, seq)   (see keystream.ts)
 *     tag (32) = HMAC-SHA256(mac_key, uint64_be(seq) || header || ciphertext)
 *
 * Invariants:
 * - encrypt-then-MAC: the tag is checked, in constant time, before anything
 *   is decrypted or acted on; the header is authenticated with the body;
 * - `seq` is implicit: both sides count records from 0 per direction, so a
 *   replayed, dropped, duplicated or reordered record fails its tag;
 * - the length is checked against the limit before the body is read or any
 *   buffer for it is allocated;
 * - a key set protects at most `maxRecords` records; beyond that the channel
 *   fails (no rekeying: reconnect);
 * - truncation: a stream of DATA records ends with the END flag and a
 *   connection ends with a CLOSE record, so a cut connection is an error
 *   rather than a short file (enforced by channel.ts).
 *
 * @module
 */
import { createHmac } from "node:crypto";
import { constantTimeEqual, u64 } from "./bytes.ts";
import { EfxError, IntegrityError, ProtocolError } from "./errors.ts";
import { BufferedReader, type Readable, type Writable, writeAll } from "./io.ts";
import { Keystream, xorInto } from "./keystream.ts";
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

function limitError(max: bigint): EfxError {
  return new ProtocolError(`record limit of ${max} per key reached; reconnect to continue`);
}

/**
 * Seals records for one direction. `seal` assigns sequence numbers in call
 * order; the caller must put frames on the wire in that order.
 */
export class RecordSealer {
  #ks: Keystream;
  #mac: Uint8Array;
  #seq = 0n;
  #max: bigint;

  private constructor(ks: Keystream, mac: Uint8Array, max: bigint) {
    this.#ks = ks;
    this.#mac = mac;
    this.#max = max;
  }

  static async create(
    keys: DirectionKeys,
    maxRecords = DEFAULT_MAX_RECORDS,
  ): Promise<RecordSealer> {
    return new RecordSealer(await Keystream.create(keys.enc), keys.mac, maxRecords);
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
    const ks = this.#ks.generate(seq, body.length);
    return ks.then((stream) => {
      const n = body.length;
      const frame = take(HEADER_LEN + n + TAG_LEN); // every byte is written below
      frame.set(encodeHeader(type, flags, n), 0);
      const ct = frame.subarray(HEADER_LEN, HEADER_LEN + n);
      ct.set(body);
      xorInto(ct, stream);
      frame.set(recordTag(this.#mac, seq, frame.subarray(0, HEADER_LEN + n)), HEADER_LEN + n);
      return frame;
    });
  }
}

/** Opens records for one direction, in order. */
export class RecordOpener {
  #ks: Keystream;
  #mac: Uint8Array;
  #seq = 0n;
  #max: bigint;
  #maxBody: number;
  /** Keystreams computed ahead for the next records of a data stream, by seq. */
  #prefetch = new Map<bigint, { length: number; stream: Promise<Uint8Array> }>();

  private constructor(ks: Keystream, mac: Uint8Array, max: bigint, maxBody: number) {
    this.#ks = ks;
    this.#mac = mac;
    this.#max = max;
    this.#maxBody = maxBody;
  }

  static async create(
    keys: DirectionKeys,
    opts: { maxRecords?: bigint; maxBody?: number } = {},
  ): Promise<RecordOpener> {
    return new RecordOpener(
      await Keystream.create(keys.enc),
      keys.mac,
      opts.maxRecords ?? DEFAULT_MAX_RECORDS,
      opts.maxBody ?? MAX_RECORD_BODY,
    );
  }

  /** Sequence number the next record must have. */
  get nextSeq(): bigint {
    return this.#seq;
  }

  /**
   * Checks a header and claims the next sequence number; starts computing the
   * keystream so that it runs while the body arrives.
   */
  begin(header: Uint8Array) {
    const h = parseHeader(header, this.#maxBody);
    if (this.#seq >= this.#max) throw limitError(this.#max);
    const seq = this.#seq++;
    const pf = this.#prefetch.get(seq);
    this.#prefetch.delete(seq);
    const stream = pf && pf.length >= h.length ? pf.stream : this.#ks.generate(seq, h.length);
    stream.catch(() => {}); // awaited in finish(); never an unhandled rejection
    if (h.type === RecordType.DATA && !(h.flags & FLAG_END) && h.length >= 65536) {
      // Data streams send full records back to back: compute the keystreams
      // of the next few now, in parallel (a prefix serves a shorter record).
      for (let i = 1n; i <= BigInt(PREFETCH_DEPTH); i++) {
        const have = this.#prefetch.get(seq + i);
        if (have && have.length >= h.length) continue;
        const next = this.#ks.generate(seq + i, h.length);
        next.catch(() => {});
        this.#prefetch.set(seq + i, { length: h.length, stream: next });
      }
    } else {
      this.#prefetch.clear();
    }
    return { ...h, seq, header, stream };
  }

  /**
   * Verifies the tag over `bodyAndTag` (ciphertext || tag, as read) and
   * decrypts in place. Throws {@linkcode IntegrityError} on a bad tag.
   */
  async finish(
    rec: ReturnType<RecordOpener["begin"]>,
    bodyAndTag: Uint8Array<ArrayBuffer>,
  ): Promise<PlainRecord> {
    const n = rec.length;
    const tag = createHmac("sha256", this.#mac).update(u64(rec.seq)).update(rec.header)
      .update(bodyAndTag.subarray(0, n)).digest();
    if (!constantTimeEqual(tag, bodyAndTag.subarray(n, n + TAG_LEN))) {
      throw new IntegrityError(
        `integrity check failed on record ${rec.seq}: data was tampered with, replayed, reordered or dropped`,
      );
    }
    const body = bodyAndTag.subarray(0, n);
    xorInto(body, (await rec.stream).subarray(0, n));
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

/** Receives records from a connection, in order. */
export class RecordReader {
  #opener: RecordOpener;
  #in: BufferedReader;

  constructor(opener: RecordOpener, input: BufferedReader | Readable) {
    this.#opener = opener;
    this.#in = input instanceof BufferedReader ? input : new BufferedReader(input);
  }

  /** The next record, or null when the connection ended cleanly at a record boundary. */
  async next(): Promise<PlainRecord | null> {
    const header = new Uint8Array(HEADER_LEN);
    if (!(await this.#in.readExactOrEof(header, "a record header"))) return null;
    const rec = this.#opener.begin(header);
    const buf = take(rec.length + TAG_LEN); // the consumer may give() the body back
    await this.#in.readExact(buf, `record ${rec.seq}`);
    return await this.#opener.finish(rec, buf);
  }
}
