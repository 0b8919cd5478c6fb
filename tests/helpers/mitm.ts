/**
 * An in-the-middle TCP proxy for adversarial tests: it sits on 127.0.0.1
 * between a real efx client and a real efx server, understands the framing
 * well enough to act per message, and can tamper with what it forwards.
 *
 * Framing it follows, per direction (see src/handshake.ts and src/record.ts):
 *
 *     client -> server: CLIENT_HELLO, CLIENT_KEY, CLIENT_FINISHED, then records
 *     server -> client: SERVER_HELLO, SERVER_FINISHED, then records
 *     handshake message = type u8 | len u16be | body
 *     record            = type | flags | reserved u16 | len u32be | body(len) | tag(32)
 *
 * A handshake ALERT ends the handshake of its direction. Frames are parsed
 * from what the genuine peer sent (before any tampering), so the proxy stays
 * in step whatever it does to them; bytes it cannot frame (a length beyond
 * the protocol limits, a cut frame at the end) pass through as "raw".
 *
 * Every parsed frame goes through the `tamper` hook, which returns a
 * {@linkcode Verdict}: pass it on, drop it, hold it back (it goes out right
 * after the next frame of that direction that is not held: a swap), close
 * both sides instead of sending it (a truncation after N frames), stall the
 * direction (stop reading its sender), or send other bytes in its place (a
 * flipped bit, a duplicate, injected bytes). The ready-made hooks below
 * ({@linkcode flipBit}, {@linkcode dropRecord}, {@linkcode duplicateRecord},
 * {@linkcode swapRecords}, {@linkcode truncateAfterRecords},
 * {@linkcode truncateInRecord}, {@linkcode injectBefore}) cover the usual
 * attacks. Independently of the hook, `cutAt` closes both sides after a byte
 * offset of one direction, and `drip` sends one direction's bytes one at a
 * time with a pause. {@linkcode seededBytes} makes reproducible "random" junk.
 *
 * Every session records the raw bytes each side sent and the frames seen, so
 * a test can replay a recorded client's bytes against the server later with
 * {@linkcode replay}, or a recorded server's bytes to a client with
 * {@linkcode ReplayServer}. To "answer as a different server", point `target` at
 * a second server that has another key: the client's connection is then
 * terminated there instead of at the server it expects.
 *
 * Only loopback is ever used (listen and connect on 127.0.0.1).
 *
 * @example
 * ```ts
 * const mitm = await Mitm.start({ target: server.port, tamper: flipBit("c2s", { record: 1, part: "body" }) });
 * // run a client against 127.0.0.1:mitm.port, then:
 * const s = await mitm.session(0);
 * console.log(s.upstreamPort, s.frames.length);
 * await mitm.close();
 * ```
 * @module
 */

const HOST = "127.0.0.1";
/** Handshake messages each direction sends before its records. */
const HANDSHAKE_COUNT = { c2s: 3, s2c: 2 } as const;
const HS_HEADER = 3;
const HS_ALERT = 21;
const MAX_HS_BODY = 2048;
const REC_HEADER = 8;
const REC_TAG = 32;
const MAX_REC_BODY = 1 << 20;

/** Which way bytes flow: client to server or server to client. */
export type Dir = "c2s" | "s2c";

/** One unit the proxy parsed from a stream. */
export interface Frame {
  dir: Dir;
  /** A handshake message, a record, or bytes that could not be framed. */
  kind: "handshake" | "record" | "raw";
  /** Index among the frames of this kind and direction, from 0 (a record's index is its seq). */
  index: number;
  /** Handshake message type or record type, from the header (-1 for raw bytes). */
  type: number;
  /** The whole frame as received: header, body (and tag for a record). */
  bytes: Uint8Array;
}

/**
 * What to do with a frame: `"pass"` (also `undefined`), `"drop"`, `"hold"`
 * (send after the next frame that is not held), `"close"` (close both sides
 * without sending it or anything after it), `"stall"` (send nothing more in
 * this direction and stop reading from its sender, keeping both connections
 * open: the sender's writes eventually block), the bytes to send instead,
 * or `{ send, close: true }`: send these bytes, then close both sides.
 */
export type Verdict =
  | "pass"
  | "drop"
  | "hold"
  | "close"
  | "stall"
  | Uint8Array[]
  | { send: Uint8Array[]; close: true }
  | undefined;

/** Decides the fate of each frame; may keep state (one hook per proxy). */
export type Tamper = (frame: Frame, session: Session) => Verdict;

/** Settings of a {@linkcode Mitm}. */
export interface MitmOptions {
  /** Port of the server on 127.0.0.1 that connections are forwarded to. */
  target: number;
  /** Per-frame hook (default: pass everything). */
  tamper?: Tamper;
  /** Close both sides once this many bytes of `dir` have been sent on (even mid-frame). */
  cutAt?: { dir: Dir; offset: number };
  /** Send the bytes of `dir` one at a time, `ms` apart. */
  drip?: { dir: Dir; ms: number };
}

/** One proxied connection. */
export class Session {
  /** Index of this session on its proxy, from 0. */
  readonly id: number;
  /** Local port of the proxy's connection to the server: the server logs it as the peer. */
  readonly upstreamPort: number;
  /** Raw bytes received from each side, in order, before any tampering. */
  readonly received: { c2s: Uint8Array[]; s2c: Uint8Array[] } = { c2s: [], s2c: [] };
  /** Bytes actually sent on, per direction. */
  readonly sent = { c2s: 0, s2c: 0 };
  /** Frames parsed, in arrival order (both directions). */
  readonly frames: Frame[] = [];
  /** True once the proxy closed both sides on purpose (close verdict or cutAt). */
  cut = false;
  /** What the tamper hook threw, if it did (the session is then killed): a test bug. */
  tamperError: unknown = undefined;
  /** Resolves once both directions have ended and both sockets are closed. */
  readonly done: Promise<void>;

  #client: Deno.TcpConn;
  #server: Deno.TcpConn;
  #opts: MitmOptions;
  #closed = false;
  #killed = Promise.withResolvers<void>();

  constructor(id: number, client: Deno.TcpConn, server: Deno.TcpConn, opts: MitmOptions) {
    this.id = id;
    this.#client = client;
    this.#server = server;
    this.#opts = opts;
    this.upstreamPort = (server.localAddr as Deno.NetAddr).port;
    this.done = Promise.all([
      this.#pump("c2s", client, server),
      this.#pump("s2c", server, client),
    ]).then(() => this.kill());
  }

  /** All bytes the client sent, concatenated (what {@linkcode replay} needs). */
  clientBytes(): Uint8Array {
    return concatAll(this.received.c2s);
  }

  /** All bytes the server sent, concatenated. */
  serverBytes(): Uint8Array {
    return concatAll(this.received.s2c);
  }

  /** Closes both sides at once. */
  kill(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#killed.resolve();
    for (const c of [this.#client, this.#server]) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  }

  async #pump(dir: Dir, src: Deno.TcpConn, dst: Deno.TcpConn): Promise<void> {
    const split = new FrameSplitter(dir);
    const held: Uint8Array[] = [];
    const buf = new Uint8Array(64 * 1024);
    const tamper = this.#opts.tamper ?? (() => "pass" as const);
    try {
      while (!this.#closed) {
        let n: number | null;
        try {
          n = await src.read(buf);
        } catch {
          n = null; // reset or closed by us: same as an end for the proxy
        }
        if (n === null) {
          const rest = split.rest();
          if (rest) await this.#send(dir, dst, [rest.bytes]);
          try {
            await dst.closeWrite();
          } catch { /* gone */ }
          return;
        }
        const chunk = buf.slice(0, n);
        this.received[dir].push(chunk);
        for (const frame of split.push(chunk)) {
          this.frames.push(frame);
          let v: Verdict;
          try {
            v = tamper(frame, this) ?? "pass";
          } catch (err) {
            this.tamperError = err;
            this.kill();
            return;
          }
          if (v === "close") {
            this.cut = true;
            this.kill();
            return;
          }
          if (v === "stall") {
            await this.#killed.promise;
            return;
          }
          if (v === "hold") {
            held.push(frame.bytes);
            continue;
          }
          if (!Array.isArray(v) && typeof v === "object") {
            await this.#send(dir, dst, v.send);
            this.cut = true;
            this.kill();
            return;
          }
          const out = v === "pass" ? [frame.bytes] : v === "drop" ? [] : v;
          if (!(await this.#send(dir, dst, [...out, ...held.splice(0)]))) return;
        }
      }
    } catch {
      // A write to a side that went away: this direction is over.
    }
  }

  /** Sends `parts` on, applying cutAt and drip. False once the session is over. */
  async #send(dir: Dir, dst: Deno.TcpConn, parts: Uint8Array[]): Promise<boolean> {
    const { cutAt, drip } = this.#opts;
    for (let part of parts) {
      if (this.#closed) return false;
      let cutNow = false;
      if (cutAt?.dir === dir && this.sent[dir] + part.length >= cutAt.offset) {
        part = part.subarray(0, Math.max(0, cutAt.offset - this.sent[dir]));
        cutNow = true;
      }
      if (drip?.dir === dir) {
        for (let i = 0; i < part.length && !this.#closed; i++) {
          await writeAll(dst, part.subarray(i, i + 1));
          this.sent[dir]++;
          await sleep(drip.ms);
        }
      } else {
        await writeAll(dst, part);
        this.sent[dir] += part.length;
      }
      if (cutNow) {
        this.cut = true;
        this.kill();
        return false;
      }
    }
    return !this.#closed;
  }
}

/** The proxy: listens on 127.0.0.1 (a free port) and forwards each connection to `target`. */
export class Mitm {
  readonly port: number;
  /** Every connection accepted so far, in order. */
  readonly sessions: Session[] = [];
  #listener: Deno.TcpListener;
  #opts: MitmOptions;
  #loop: Promise<void>;

  private constructor(listener: Deno.TcpListener, opts: MitmOptions) {
    this.#listener = listener;
    this.#opts = opts;
    this.port = (listener.addr as Deno.NetAddr).port;
    this.#loop = this.#accept();
  }

  /** Starts a proxy to `opts.target` on 127.0.0.1. */
  static start(opts: MitmOptions): Promise<Mitm> {
    return Promise.resolve(new Mitm(Deno.listen({ hostname: HOST, port: 0 }), opts));
  }

  /** `127.0.0.1:PORT` of the proxy, for `--server`. */
  get address(): string {
    return `${HOST}:${this.port}`;
  }

  /** Waits until session `i` exists (default timeout 10 s). */
  async session(i: number, timeoutMs = 10_000): Promise<Session> {
    const deadline = Date.now() + timeoutMs;
    while (this.sessions.length <= i) {
      if (Date.now() > deadline) throw new Error(`mitm: no session ${i} after ${timeoutMs} ms`);
      await sleep(20);
    }
    return this.sessions[i];
  }

  /** Stops listening, closes every session and waits for all of them. */
  async close(): Promise<void> {
    try {
      this.#listener.close();
    } catch { /* closed */ }
    await this.#loop;
    for (const s of this.sessions) s.kill();
    await Promise.all(this.sessions.map((s) => s.done));
  }

  async #accept(): Promise<void> {
    while (true) {
      let client: Deno.TcpConn;
      try {
        client = await this.#listener.accept();
      } catch {
        return; // listener closed
      }
      let server: Deno.TcpConn;
      try {
        server = await Deno.connect({ hostname: HOST, port: this.#opts.target });
      } catch {
        client.close();
        continue;
      }
      client.setNoDelay(true);
      server.setNoDelay(true);
      this.sessions.push(new Session(this.sessions.length, client, server, this.#opts));
    }
  }
}

/** Splits one direction's byte stream into handshake messages and then records. */
export class FrameSplitter {
  #dir: Dir;
  #buf: Uint8Array = new Uint8Array(0);
  #hsLeft: number;
  #hs = 0;
  #rec = 0;
  #raw = false;

  constructor(dir: Dir) {
    this.#dir = dir;
    this.#hsLeft = HANDSHAKE_COUNT[dir];
  }

  /** Adds received bytes; returns the frames completed by them. */
  push(chunk: Uint8Array): Frame[] {
    this.#buf = concatAll([this.#buf, chunk]);
    const out: Frame[] = [];
    while (this.#buf.length > 0) {
      if (this.#raw) {
        out.push(this.#take("raw", this.#buf.length, -1));
        continue;
      }
      if (this.#hsLeft > 0) {
        if (this.#buf.length < HS_HEADER) break;
        const type = this.#buf[0];
        const len = (this.#buf[1] << 8) | this.#buf[2];
        if (len > MAX_HS_BODY) {
          this.#raw = true;
          continue;
        }
        if (this.#buf.length < HS_HEADER + len) break;
        this.#hsLeft = type === HS_ALERT ? 0 : this.#hsLeft - 1;
        out.push(this.#take("handshake", HS_HEADER + len, type));
        continue;
      }
      if (this.#buf.length < REC_HEADER) break;
      const v = new DataView(this.#buf.buffer, this.#buf.byteOffset, REC_HEADER);
      const len = v.getUint32(4);
      if (len > MAX_REC_BODY) {
        this.#raw = true;
        continue;
      }
      if (this.#buf.length < REC_HEADER + len + REC_TAG) break;
      out.push(this.#take("record", REC_HEADER + len + REC_TAG, this.#buf[0]));
    }
    return out;
  }

  /** Bytes left over that do not make a whole frame (at the end of the stream). */
  rest(): Frame | null {
    return this.#buf.length ? this.#take("raw", this.#buf.length, -1) : null;
  }

  #take(kind: Frame["kind"], n: number, type: number): Frame {
    const bytes = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    const index = kind === "handshake" ? this.#hs++ : kind === "record" ? this.#rec++ : 0;
    return { dir: this.#dir, kind, index, type, bytes };
  }
}

/** Splits a whole recorded stream of one direction into frames. */
export function splitFrames(dir: Dir, bytes: Uint8Array): Frame[] {
  const s = new FrameSplitter(dir);
  const frames = s.push(bytes);
  const rest = s.rest();
  return rest ? [...frames, rest] : frames;
}

// ---------------------------------------------------------------------------
// Ready-made tamper hooks.

/** Where in a frame to flip a bit. */
export type Target =
  | { handshake: number }
  | { record: number; part: "header" | "body" | "tag" };

/**
 * Flips bit `bit` (default 0) of byte `offset` of one frame of `dir`: handshake
 * message number N (offset from the start of the message, header included),
 * or record N (offset within its header, body or tag; default: the middle).
 */
export function flipBit(dir: Dir, target: Target, offset?: number, bit = 0): Tamper {
  return (f) => {
    if (f.dir !== dir) return "pass";
    let at: number;
    if ("handshake" in target) {
      if (f.kind !== "handshake" || f.index !== target.handshake) return "pass";
      at = offset ?? Math.floor(f.bytes.length / 2);
    } else {
      if (f.kind !== "record" || f.index !== target.record) return "pass";
      const bodyLen = f.bytes.length - REC_HEADER - REC_TAG;
      const [start, len] = target.part === "header"
        ? [0, REC_HEADER]
        : target.part === "body"
        ? [REC_HEADER, bodyLen]
        : [REC_HEADER + bodyLen, REC_TAG];
      const o = offset ?? Math.floor(len / 2);
      if (o >= len) throw new Error(`mitm: offset ${o} outside the ${target.part} (${len} bytes)`);
      at = start + o;
    }
    if (at >= f.bytes.length) throw new Error(`mitm: offset ${at} outside the frame`);
    const copy = f.bytes.slice();
    copy[at] ^= 1 << bit;
    return [copy];
  };
}

/** Record frames of `dir` pass through `fn`; everything else passes. */
function onRecord(dir: Dir, fn: (f: Frame) => Verdict): Tamper {
  return (f) => (f.dir === dir && f.kind === "record" ? fn(f) : "pass");
}

/** Drops record `n` of `dir`. */
export function dropRecord(dir: Dir, n: number): Tamper {
  return onRecord(dir, (f) => f.index === n ? "drop" : "pass");
}

/** Sends record `n` of `dir` twice. */
export function duplicateRecord(dir: Dir, n: number): Tamper {
  return onRecord(dir, (f) => f.index === n ? [f.bytes, f.bytes] : "pass");
}

/** Sends records `n` and `n + 1` of `dir` in the opposite order. */
export function swapRecords(dir: Dir, n: number): Tamper {
  return onRecord(dir, (f) => f.index === n ? "hold" : "pass");
}

/** Closes both sides instead of sending record `n` of `dir` (records 0..n-1 get through). */
export function truncateAfterRecords(dir: Dir, n: number): Tamper {
  return onRecord(dir, (f) => f.index === n ? "close" : "pass");
}

/** Sends the first `keep` bytes of record `n` of `dir`, then closes both sides (a cut mid-record). */
export function truncateInRecord(dir: Dir, n: number, keep: number): Tamper {
  return onRecord(
    dir,
    (f) => f.index === n ? { send: [f.bytes.subarray(0, keep)], close: true } : "pass",
  );
}

/** Sends `junk` just before record `n` of `dir`. */
export function injectBefore(dir: Dir, n: number, junk: Uint8Array): Tamper {
  return onRecord(dir, (f) => f.index === n ? [junk, f.bytes] : "pass");
}

// ---------------------------------------------------------------------------
// Replay.

/**
 * Connects to `port` on 127.0.0.1, sends `bytes` (all at once, as a replaying
 * attacker would; write errors are ignored since the server may hang up
 * early), and returns everything the server sent until it closed the
 * connection or `timeoutMs` passed.
 */
export async function replay(port: number, bytes: Uint8Array, timeoutMs = 10_000): Promise<{
  reply: Uint8Array;
  localPort: number;
}> {
  const conn = await Deno.connect({ hostname: HOST, port });
  const localPort = (conn.localAddr as Deno.NetAddr).port;
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, timeoutMs);
  const write = writeAll(conn, bytes).catch(() => {});
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      parts.push(buf.slice(0, n));
    }
  } catch {
    /* reset or timed out */
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
    await write;
  }
  return { reply: concatAll(parts), localPort };
}

/**
 * A fake server on 127.0.0.1 that answers every connection at once with
 * `bytes` (e.g. what a real server sent in a recorded session: a replayed
 * server), then keeps what the client sends until it closes.
 */
export class ReplayServer {
  readonly port: number;
  /** Bytes received on each connection, in order of the connections. */
  readonly received: Uint8Array[] = [];
  #listener: Deno.TcpListener;
  #loop: Promise<void>;
  #conns = new Set<Promise<void>>();

  constructor(bytes: Uint8Array) {
    const listener = Deno.listen({ hostname: HOST, port: 0 });
    this.#listener = listener;
    this.port = (listener.addr as Deno.NetAddr).port;
    this.#loop = (async () => {
      for await (const conn of listener) {
        const i = this.received.push(new Uint8Array(0)) - 1;
        const done = (async () => {
          const parts: Uint8Array[] = [];
          const write = writeAll(conn, bytes).catch(() => {});
          const buf = new Uint8Array(64 * 1024);
          try {
            while (true) {
              const n = await conn.read(buf);
              if (n === null) break;
              parts.push(buf.slice(0, n));
            }
          } catch { /* reset */ }
          await write;
          this.received[i] = concatAll(parts);
          try {
            conn.close();
          } catch { /* closed */ }
        })();
        this.#conns.add(done);
      }
    })().catch(() => {});
  }

  /** `127.0.0.1:PORT`, for `--server`. */
  get address(): string {
    return `${HOST}:${this.port}`;
  }

  /** Stops listening and waits until every connection has ended. */
  async close(): Promise<void> {
    try {
      this.#listener.close();
    } catch { /* closed */ }
    await this.#loop;
    await Promise.all(this.#conns);
  }
}

// ---------------------------------------------------------------------------

async function writeAll(w: Deno.Conn, data: Uint8Array): Promise<void> {
  let o = 0;
  while (o < data.length) o += await w.write(data.subarray(o));
}

function concatAll(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * A small seeded PRNG (mulberry32): the same seed gives the same numbers, so
 * "random" tampering is reproducible. Returns floats in [0, 1).
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` bytes from a {@linkcode mulberry32} stream seeded with `seed`. */
export function seededBytes(seed: number, n: number): Uint8Array {
  const rnd = mulberry32(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rnd() * 256);
  return out;
}
