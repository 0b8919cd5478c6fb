/**
 * The secure channel: a handshake followed by the record layer, with the
 * operations the application uses — JSON control messages, byte streams
 * (files) and an orderly close.
 *
 * Truncation rules: a data stream is complete only when a DATA record with
 * the END flag arrives; a connection is complete only when a CLOSE record
 * arrives. A connection that ends anywhere else is reported as truncated.
 *
 * @example
 * ```ts
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 9000 });
 * const ch = await SecureChannel.client(conn, { verifyServerKey: async () => {} });
 * await ch.sendMessage({ op: "ls" });
 * console.log(await ch.recvMessage());
 * await ch.close();
 * ```
 * @module
 */
import { utf8, utf8Decoder } from "./bytes.ts";
import { AuthError, IntegrityError, ProtocolError, RemoteError, TimeoutError } from "./errors.ts";
import {
  AlertCode,
  clientHandshake,
  type ClientHandshakeOptions,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  encodeAlert,
  type HandshakeResult,
  serverHandshake,
  type ServerHandshakeOptions,
  withDeadline,
} from "./handshake.ts";
import { BufferedReader } from "./io.ts";
import { sanitize } from "./bytes.ts";
import type { MemoryBudget } from "./limits.ts";
import {
  DEFAULT_MAX_RECORDS,
  FLAG_END,
  MAX_RECORD_BODY,
  type PlainRecord,
  type ProtocolVersion,
  RecordOpener,
  RecordReader,
  RecordSealer,
  RecordType,
  RecordWriter,
} from "./record.ts";

/** Size of the DATA records a stream is cut into. */
export const DATA_CHUNK = 256 * 1024;
/** Records a stream may have in flight (sealing or being written) at once. */
const SEND_DEPTH = 4;

/** A connection as the channel needs it (Deno.Conn fits). */
export interface Transport {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
  /** Turns off Nagle's algorithm (TCP); small handshake messages must not wait. */
  setNoDelay?(noDelay?: boolean): void;
}

/** Tuning and limits shared by both sides. */
export interface ChannelOptions {
  /** Deadline for the whole handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Records per direction before the channel refuses to go on (tests lower it). */
  maxRecords?: bigint;
  /** Receive side: shared bound on large-record memory (see limits.ts; default none). */
  budget?: MemoryBudget;
  /** Receive side: largest record body accepted at first (default 1 MiB; see {@linkcode SecureChannel.setReceiveLimits}). */
  maxBody?: number;
  /** Receive side: compute keystreams of incoming data streams ahead (default true). */
  prefetch?: boolean;
}

/** A message the peer sends when it gives up: machine code plus human text. */
export interface AlertBody {
  code: string;
  message: string;
}

/** An established, authenticated, encrypted connection. */
export class SecureChannel {
  #conn: Transport;
  #writer: RecordWriter;
  #reader: RecordReader;
  #closed = false;
  #broken = false;
  /** Handshake facts (transcript hash, server key). */
  readonly session: HandshakeResult;
  /** Who is at the other end, for messages: "server" or "client". */
  readonly peer: string;
  /** Milliseconds a receive may wait for the next record (0: no limit). */
  idleTimeoutMs = 0;
  /** Longest wait in {@linkcode closeAndWait} for the peer's answering CLOSE. */
  closeTimeoutMs = 5000;
  /** The peer's CLOSE has arrived. */
  #peerClosed = false;

  private constructor(
    conn: Transport,
    reader: RecordReader,
    writer: RecordWriter,
    session: HandshakeResult,
    peer: string,
  ) {
    this.peer = peer;
    this.#conn = conn;
    this.#reader = reader;
    this.#writer = writer;
    this.session = session;
  }

  static async #establish(
    conn: Transport,
    opts: ChannelOptions,
    peer: string,
    run: (reader: BufferedReader) => Promise<HandshakeResult>,
  ): Promise<SecureChannel> {
    try {
      conn.setNoDelay?.(true);
    } catch { /* not a TCP connection */ }
    const input = new BufferedReader(conn);
    const ms = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    let hs: HandshakeResult;
    try {
      hs = await withDeadline(run(input), ms, () => {
        // Tell the peer why (best effort), then hang up.
        conn.write(encodeAlert(AlertCode.TIMEOUT, `handshake timed out after ${ms / 1000} s`))
          .catch(() => {}).finally(() => safeClose(conn));
      }, "handshake");
    } catch (err) {
      safeClose(conn);
      throw err;
    }
    const max = opts.maxRecords ?? DEFAULT_MAX_RECORDS;
    const version = hs.version as ProtocolVersion; // 1 or 2: the handshake refuses others
    const sealer = await RecordSealer.create(hs.send, max, version);
    const opener = await RecordOpener.create(hs.recv, {
      version,
      maxRecords: max,
      budget: opts.budget,
      maxBody: opts.maxBody,
      prefetch: opts.prefetch,
    });
    const out = {
      idleMs: () => 0,
      // A peer that stops reading must not hold us forever: a write that
      // makes no progress within the idle timeout ends the connection.
      write: (p: Uint8Array) => {
        const ms = out.idleMs();
        if (ms <= 0) return conn.write(p);
        return withDeadline(conn.write(p), ms, () => safeClose(conn), "sending to the peer");
      },
    };
    const channel = new SecureChannel(
      conn,
      new RecordReader(opener, input),
      new RecordWriter(sealer, out),
      hs,
      peer,
    );
    out.idleMs = () => channel.idleTimeoutMs;
    return channel;
  }

  /** Runs the client handshake on `conn`; `verifyServerKey` decides trust before any secret is sent. */
  static client(
    conn: Transport,
    opts: ChannelOptions & ClientHandshakeOptions,
  ): Promise<SecureChannel> {
    return SecureChannel.#establish(conn, opts, "server", (r) => clientHandshake(conn, r, opts));
  }

  /** Runs the server handshake on `conn` with the server's private key. */
  static server(
    conn: Transport,
    opts: ChannelOptions & ServerHandshakeOptions,
  ): Promise<SecureChannel> {
    return SecureChannel.#establish(conn, opts, "client", (r) => serverHandshake(conn, r, opts));
  }

  /**
   * Changes the receive limits: the largest record body accepted and
   * whether keystreams are computed ahead (a server raises both once the
   * peer is admitted).
   */
  setReceiveLimits(limits: { maxBody: number; prefetch: boolean }): void {
    this.#reader.setLimits(limits);
  }

  /** Sends one control message (a JSON object). */
  sendMessage(msg: object): Promise<void> {
    if (this.#broken) return Promise.reject(new ProtocolError("channel is broken"));
    const body = utf8.encode(JSON.stringify(msg));
    if (body.length > MAX_RECORD_BODY) {
      return Promise.reject(new ProtocolError("control message too large"));
    }
    return this.#writer.send(RecordType.MSG, 0, body);
  }

  /**
   * Reads the next record, applying the idle timeout. Returns null only for an
   * orderly CLOSE; an ALERT becomes a {@linkcode RemoteError}; an end of
   * connection without CLOSE is an {@linkcode IntegrityError} (truncation).
   */
  async #next(): Promise<PlainRecord | null> {
    // The peer sends nothing after its CLOSE: a read after it (e.g. a server
    // that got CLOSE in the middle of a request) ends at once, so that the
    // caller goes on to answer the CLOSE instead of waiting for more.
    if (this.#peerClosed) return null;
    try {
      const rec = await this.#nextRecord();
      if (rec === null) this.#peerClosed = true;
      return rec;
    } catch (err) {
      this.#broken = true;
      throw err;
    }
  }

  async #nextRecord(): Promise<PlainRecord | null> {
    const read = this.#reader.next();
    const rec = this.idleTimeoutMs > 0
      ? await withDeadline(read, this.idleTimeoutMs, () => this.#timedOut(), "waiting for the peer")
      : await read;
    if (rec === null) {
      throw new IntegrityError("connection closed unexpectedly (truncated: no close record)");
    }
    if (rec.type === RecordType.ALERT) {
      const a = parseJson(rec.body) as Partial<AlertBody>;
      const text = sanitize(String(a.message ?? "unspecified error"));
      if (a.code === "auth") throw new AuthError(`${this.peer} refused authentication: ${text}`);
      throw new RemoteError(
        String(a.code ?? "error"),
        `${this.peer} ended the connection: ${text}`,
      );
    }
    if (rec.type === RecordType.CLOSE) return null;
    return rec;
  }

  /** Receives one control message; null when the peer closed the connection in order. */
  async recvMessageOrClose<T = Record<string, unknown>>(): Promise<T | null> {
    const rec = await this.#next();
    if (rec === null) return null;
    if (rec.type !== RecordType.MSG) {
      throw new ProtocolError("unexpected data record where a control message was due");
    }
    const msg = parseJson(rec.body);
    if (typeof msg !== "object" || msg === null || Array.isArray(msg)) {
      throw new ProtocolError("control message is not a JSON object");
    }
    return msg as T;
  }

  /** Receives one control message; a close here is an error. */
  async recvMessage<T = Record<string, unknown>>(): Promise<T> {
    const msg = await this.recvMessageOrClose<T>();
    if (msg === null) throw new ProtocolError("peer closed the connection");
    return msg;
  }

  /**
   * Sends a byte stream as DATA records (at most {@linkcode DATA_CHUNK} bytes
   * each); the last carries END. Chunks from `source` must not be modified
   * after they are yielded, until `release` is called with them (once each
   * chunk's record is sealed and written; a chunk longer than DATA_CHUNK is
   * released once per record it was cut into). Several records are sealed while earlier ones are
   * written. Returns the number of bytes sent.
   */
  async sendStream(
    source: AsyncIterable<Uint8Array>,
    release: (chunk: Uint8Array) => void = () => {},
  ): Promise<number> {
    const inflight: Promise<void>[] = [];
    // One record is held back until the next arrives, so that the last one
    // can carry END. `owner` is the source chunk a part belongs to; it is
    // released after the record of its last part is written.
    let held: { part: Uint8Array; owner: Uint8Array | null } | null = null;
    const send = (h: { part: Uint8Array; owner: Uint8Array | null }, flags: number) => {
      const p = this.#writer.send(RecordType.DATA, flags, h.part).then(() => {
        if (h.owner) release(h.owner);
      });
      p.catch(() => {});
      inflight.push(p);
    };
    let total = 0;
    for await (const chunk of source) {
      if (chunk.length === 0) {
        release(chunk);
        continue;
      }
      for (let o = 0; o < chunk.length; o += DATA_CHUNK) {
        const end = Math.min(chunk.length, o + DATA_CHUNK);
        if (held) send(held, 0);
        held = { part: chunk.subarray(o, end), owner: end === chunk.length ? chunk : null };
        total += end - o;
        while (inflight.length >= SEND_DEPTH) await inflight.shift();
      }
    }
    send(held ?? { part: new Uint8Array(0), owner: null }, FLAG_END);
    for (const p of inflight) await p;
    return total;
  }

  /**
   * Yields the chunks of one incoming stream until its END record. A control
   * message inside a stream is a protocol error; an ALERT (the sender gave up)
   * is a {@linkcode RemoteError}; a cut connection is an {@linkcode IntegrityError}.
   */
  async *recvStream(): AsyncGenerator<Uint8Array<ArrayBuffer>> {
    while (true) {
      const rec = await this.#next();
      if (rec === null) {
        throw new IntegrityError("peer closed the connection in the middle of a data stream");
      }
      if (rec.type !== RecordType.DATA) {
        throw new ProtocolError("unexpected control message inside a data stream");
      }
      if (rec.body.length > 0) yield rec.body;
      if (rec.flags & FLAG_END) return;
    }
  }

  /** The peer was silent too long: say so (best effort), then hang up. */
  #timedOut(): void {
    this.#broken = true;
    const body = utf8.encode(JSON.stringify({
      code: "timeout",
      message: `timed out: no data for ${this.idleTimeoutMs / 1000} s; closing the connection`,
    }));
    this.#writer.send(RecordType.ALERT, 0, body).catch(() => {}).finally(() => this.abort());
  }

  /** Reports a fatal error to the peer (best effort) and closes the connection. */
  async sendAlert(code: string, message: string): Promise<void> {
    try {
      await this.#writer.send(RecordType.ALERT, 0, utf8.encode(JSON.stringify({ code, message })));
    } catch { /* the peer may be gone */ }
    this.abort();
  }

  /** Sends CLOSE, waits until everything is written, and closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#writer.send(RecordType.CLOSE, 0, new Uint8Array(0));
    } catch { /* already broken: nothing more to say */ }
    this.abort();
  }

  /**
   * The client's orderly end: sends CLOSE, then waits (at most
   * {@linkcode closeTimeoutMs}) for the server's answering CLOSE before it
   * closes the connection, so that a failure the server detects at the very
   * end (e.g. in our last records) reaches the user: its ALERT is thrown as
   * for any receive, an end of the connection without CLOSE is a
   * truncation ({@linkcode IntegrityError}), no answer in time a
   * {@linkcode TimeoutError}. Records arriving before it (replies to
   * requests the caller gave up on) are dropped. When the server's CLOSE
   * came already, or the channel is broken, this is {@linkcode close}.
   */
  async closeAndWait(): Promise<void> {
    if (this.#closed) return;
    if (this.#peerClosed || this.#broken) return await this.close();
    try {
      await this.#writer.send(RecordType.CLOSE, 0, new Uint8Array(0));
    } catch {
      this.abort(); // already broken: nothing more to say
      return;
    }
    const ms = this.closeTimeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const answered = (async () => {
      while (await this.#next() !== null) { /* a late reply: dropped */ }
    })();
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(
          new TimeoutError(
            `the ${this.peer} did not confirm the end of the session within ${ms / 1000} s`,
          ),
        );
        this.abort();
      }, ms);
    });
    try {
      await Promise.race([answered, deadline]);
    } finally {
      clearTimeout(timer);
      answered.catch(() => {}); // after a timeout its read fails on the closed connection
      this.abort();
    }
  }

  /**
   * True once the channel can no longer be used for another request: a
   * receive failed (tampering, truncation, timeout, peer alert) or a caller
   * declared a protocol violation with {@linkcode markBroken}.
   */
  get broken(): boolean {
    return this.#broken;
  }

  /** Records that the peer broke the protocol; the connection must be dropped. */
  markBroken(): void {
    this.#broken = true;
  }

  /** Closes the connection at once. */
  abort(): void {
    this.#broken = true;
    this.#reader.cancel(); // a wait for memory ends; what was reserved is returned
    if (this.#closed) return;
    this.#closed = true;
    safeClose(this.#conn);
  }
}

function parseJson(body: Uint8Array): unknown {
  try {
    return JSON.parse(utf8Decoder.decode(body));
  } catch {
    throw new ProtocolError("malformed control message (not UTF-8 JSON)");
  }
}

/** Closes a connection, ignoring one that is closed already. */
export function safeClose(conn: { close(): void }): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}
