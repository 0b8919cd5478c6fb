/**
 * End-to-end tests of the secure channel (src/channel.ts, src/handshake.ts)
 * over real loopback TCP: handshake success and every refusal path, the
 * padding-oracle check, byte streams, truncation and orderly close.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { concat, randomBytes, u16 } from "../src/bytes.ts";
import { DATA_CHUNK, SecureChannel, type Transport } from "../src/channel.ts";
import { AuthError } from "../src/errors.ts";
import {
  AlertCode,
  encodeClientHello,
  encodeClientKey,
  encodeHandshakeMessage,
  encodeServerHello,
  HandshakeType,
  MAX_HANDSHAKE_BODY,
} from "../src/handshake.ts";
import { BufferedReader, writeAll } from "../src/io.ts";
import { loadServerPrivateKey, writeKeyPair } from "../src/keys.ts";

// ---- keys: two 2048-bit pairs, made once for this file ----

const KEY_DIR = await Deno.makeTempDir({ prefix: "efx-channel-test-" });
await writeKeyPair(KEY_DIR, { bits: 2048, prefix: "server" });
await writeKeyPair(KEY_DIR, { bits: 2048, prefix: "other" });
const SERVER_KEY = await loadServerPrivateKey(join(KEY_DIR, "server.key.pem"));
const OTHER_KEY = await loadServerPrivateKey(join(KEY_DIR, "other.key.pem"));
await Deno.remove(KEY_DIR, { recursive: true });

const HOST = "127.0.0.1";
const CLIENT_HELLO_LEN = 3 + 4 + 2 + 32;

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/** A verifier that accepts exactly `spki` (what a pinned known_servers entry does). */
function pinned(spki: Uint8Array) {
  return (got: Uint8Array): Promise<void> =>
    same(got, spki)
      ? Promise.resolve()
      : Promise.reject(new AuthError("server key does not match the pinned key"));
}

function closeQuietly(c: { close(): void }) {
  try {
    c.close();
  } catch { /* already closed */ }
}

/** A transport that records every byte read through it. */
class RecordingTransport implements Transport {
  readonly seen: Uint8Array[] = [];
  constructor(readonly conn: Deno.TcpConn) {}
  get bytesRead(): number {
    return this.seen.reduce((n, b) => n + b.length, 0);
  }
  async read(p: Uint8Array): Promise<number | null> {
    const n = await this.conn.read(p);
    if (n) this.seen.push(p.slice(0, n));
    return n;
  }
  write(p: Uint8Array): Promise<number> {
    return this.conn.write(p);
  }
  close(): void {
    this.conn.close();
  }
  setNoDelay(on?: boolean): void {
    this.conn.setNoDelay(on);
  }
}

type ServerOpts = Parameters<typeof SecureChannel.server>[1];
type ClientOpts = Parameters<typeof SecureChannel.client>[1];

/** Runs a real client and a real server against each other; returns both outcomes. */
async function handshakePair(
  server: Partial<ServerOpts> = {},
  client: Partial<ClientOpts> = {},
  wrapServerConn: (c: Deno.TcpConn) => Transport = (c) => c,
) {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  try {
    const serverSide = listener.accept().then((conn) =>
      SecureChannel.server(wrapServerConn(conn), { key: SERVER_KEY, ...server })
    );
    const clientSide = Deno.connect({ hostname: HOST, port: listener.addr.port }).then((conn) =>
      SecureChannel.client(conn, { verifyServerKey: pinned(SERVER_KEY.spki), ...client })
    );
    const [s, c] = await Promise.allSettled([serverSide, clientSide]);
    return { s, c };
  } finally {
    listener.close();
  }
}

/** A connected client/server pair; fails the test if the handshake fails. */
async function connected(server: Partial<ServerOpts> = {}, client: Partial<ClientOpts> = {}) {
  const { s, c } = await handshakePair(server, client);
  if (s.status === "rejected" || c.status === "rejected") {
    if (s.status === "fulfilled") s.value.abort();
    if (c.status === "fulfilled") c.value.abort();
    throw s.status === "rejected" ? s.reason : (c as PromiseRejectedResult).reason;
  }
  return { server: s.value, client: c.value };
}

/** A real server and a hand-driven client socket. */
async function rawClient<T>(
  run: (conn: Deno.Conn, reader: BufferedReader) => Promise<T>,
  server: Partial<ServerOpts> = {},
) {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  let conn: Deno.Conn | undefined;
  try {
    const serverSide = listener.accept().then((c) =>
      SecureChannel.server(c, { key: SERVER_KEY, ...server })
    );
    conn = await Deno.connect({ hostname: HOST, port: listener.addr.port });
    const [s, c] = await Promise.allSettled([serverSide, run(conn, new BufferedReader(conn))]);
    if (s.status === "fulfilled") s.value.abort();
    return { s, c };
  } finally {
    if (conn) closeQuietly(conn);
    listener.close();
  }
}

/** A hand-driven server socket and a real client. */
async function rawServer<T>(
  run: (conn: Deno.Conn, reader: BufferedReader) => Promise<T>,
  client: Partial<ClientOpts> = {},
) {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  let conn: Deno.Conn | undefined;
  try {
    const clientSide = Deno.connect({ hostname: HOST, port: listener.addr.port }).then((c) =>
      SecureChannel.client(c, { verifyServerKey: pinned(SERVER_KEY.spki), ...client })
    );
    conn = await listener.accept();
    const [c, s] = await Promise.allSettled([clientSide, run(conn, new BufferedReader(conn))]);
    if (c.status === "fulfilled") c.value.abort();
    return { s, c };
  } finally {
    if (conn) closeQuietly(conn);
    listener.close();
  }
}

/** Reads one raw handshake message (an ALERT is returned, not thrown). */
async function readRaw(reader: BufferedReader) {
  const head = new Uint8Array(3);
  await reader.readExact(head, "header");
  const body = new Uint8Array((head[1] << 8) | head[2]);
  await reader.readExact(body, "body");
  return { type: head[0], body, raw: concat(head, body) };
}

function rejectedWith(r: PromiseSettledResult<unknown>, name: string, message?: RegExp) {
  assert.equal(r.status, "rejected", `expected ${name}, got success`);
  const err = (r as PromiseRejectedResult).reason;
  assert.equal(err?.name, name, `expected ${name}, got ${err?.name}: ${err?.message}`);
  if (message) assert.match(err.message, message);
  return err as Error;
}

async function* chunksOf(data: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let o = 0; o < data.length; o += size) yield data.subarray(o, o + size);
}

async function collect(stream: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts = [];
  for await (const c of stream) parts.push(c.slice());
  return concat(...parts);
}

// ---- handshake ----

Deno.test("channel: handshake with the right key, messages both ways, orderly close", async () => {
  const { server, client } = await connected();
  assert.ok(same(client.session.transcriptHash, server.session.transcriptHash));
  assert.ok(same(client.session.serverSpki, SERVER_KEY.spki));
  assert.ok(same(client.session.send.enc, server.session.recv.enc));
  assert.ok(same(client.session.send.mac, server.session.recv.mac));
  assert.ok(!same(client.session.send.enc, client.session.recv.enc));

  await client.sendMessage({ op: "ping", n: 1 });
  assert.deepEqual(await server.recvMessage(), { op: "ping", n: 1 });
  await server.sendMessage({ ok: true, text: "héllo ✓" });
  assert.deepEqual(await client.recvMessage(), { ok: true, text: "héllo ✓" });

  await client.close();
  assert.equal(await server.recvMessageOrClose(), null); // CLOSE record: clean end
  await server.close();
});

Deno.test("channel: two sessions with the same key get different transcripts and keys", async () => {
  const a = await connected();
  const b = await connected();
  assert.ok(!same(a.client.session.transcriptHash, b.client.session.transcriptHash));
  assert.ok(!same(a.client.session.send.enc, b.client.session.send.enc));
  for (const ch of [a.client, a.server, b.client, b.server]) ch.abort();
});

Deno.test("channel: a client whose trust check refuses sends no secret (server never gets CLIENT_KEY)", async () => {
  let recording: RecordingTransport | undefined;
  let asked = 0;
  const { s, c } = await handshakePair({}, {
    verifyServerKey: () => {
      asked++;
      return Promise.reject(new AuthError("unknown server key (refused by test)"));
    },
  }, (conn) => (recording = new RecordingTransport(conn)));
  assert.equal(asked, 1);
  rejectedWith(c, "AuthError", /refused by test/);
  rejectedWith(s, "ProtocolError", /client closed the connection during the handshake/);
  // The server read exactly the CLIENT_HELLO and nothing after it.
  assert.equal(recording!.bytesRead, CLIENT_HELLO_LEN);
  assert.equal(concat(...recording!.seen)[0], HandshakeType.CLIENT_HELLO);
});

Deno.test("channel: a server presenting another key than the pinned one is refused", async () => {
  const { s, c } = await handshakePair({ key: OTHER_KEY });
  rejectedWith(c, "AuthError", /does not match the pinned key/);
  rejectedWith(s, "ProtocolError");
});

Deno.test("channel: an impostor presenting the pinned key without its private key fails confirmation", async () => {
  const { s, c } = await rawServer(async (conn, reader) => {
    const ch = await readRaw(reader);
    assert.equal(ch.type, HandshakeType.CLIENT_HELLO);
    await writeAll(conn, encodeServerHello(randomBytes(32), SERVER_KEY.spki));
    const ck = await readRaw(reader);
    assert.equal(ck.type, HandshakeType.CLIENT_KEY);
    const cf = await readRaw(reader);
    assert.equal(cf.type, HandshakeType.CLIENT_FINISHED);
    // Cannot decrypt the secret: the best it can do is guess.
    await writeAll(conn, encodeHandshakeMessage(HandshakeType.SERVER_FINISHED, randomBytes(32)));
  });
  assert.equal(s.status, "fulfilled");
  rejectedWith(c, "AuthError", /server failed key confirmation/);
});

Deno.test("channel: version mismatch is a ProtocolError on the client naming both versions", async () => {
  const { s, c } = await handshakePair({}, { version: 0 });
  const err = rejectedWith(c, "ProtocolError");
  assert.match(err.message, /version 0/);
  assert.match(err.message, /speaks 1/);
  rejectedWith(s, "ProtocolError", /client offered unsupported protocol version 0/);
});

Deno.test("channel: a client offering version 2 to a server without ephemeral keys gets version 1", async () => {
  const { s, c } = await handshakePair({}, { version: 2 });
  assert.equal(s.status, "fulfilled");
  assert.equal(c.status, "fulfilled");
  const ch = (c as PromiseFulfilledResult<SecureChannel>).value;
  assert.equal(ch.session.version, 1);
});

Deno.test("channel: a server answering with another version is refused by the client", async () => {
  const { c } = await rawServer(async (conn, reader) => {
    await readRaw(reader);
    const body = concat(new TextEncoder().encode("EFXP"), u16(7), randomBytes(32));
    await writeAll(conn, encodeHandshakeMessage(HandshakeType.SERVER_HELLO, body));
  });
  const err = rejectedWith(c, "ProtocolError");
  assert.match(err.message, /version 7/);
  assert.match(err.message, /speaks 1/);
});

Deno.test("channel: a silent client hits the server's handshake timeout", async () => {
  const started = Date.now();
  const { s, c } = await rawClient(async (_conn, reader) => {
    // Send nothing; the server must give up, say so in a TIMEOUT alert, and close.
    const head = new Uint8Array(3);
    await reader.readExact(head, "alert header");
    const body = new Uint8Array((head[1] << 8) | head[2]);
    await reader.readExact(body, "alert body");
    const more = await reader.readExactOrEof(new Uint8Array(1), "after").catch(() => false);
    return { type: head[0], code: body[0], text: new TextDecoder().decode(body.subarray(1)), more };
  }, { handshakeTimeoutMs: 300 });
  rejectedWith(s, "TimeoutError", /handshake timed out after 0.3 s/);
  assert.equal(c.status, "fulfilled");
  const got = (c as PromiseFulfilledResult<
    { type: number; code: number; text: string; more: boolean }
  >).value;
  assert.equal(got.type, HandshakeType.ALERT);
  assert.equal(got.code, AlertCode.TIMEOUT);
  assert.match(got.text, /handshake timed out/);
  assert.equal(got.more, false); // then closed
  assert.ok(Date.now() - started >= 250);
});

Deno.test("channel: an oversize handshake length is refused before the body is read", async () => {
  for (const len of [MAX_HANDSHAKE_BODY + 1, 0xffff]) {
    const started = Date.now();
    const { s } = await rawClient(async (conn, reader) => {
      await writeAll(conn, Uint8Array.from([HandshakeType.CLIENT_HELLO, len >> 8, len & 0xff]));
      return await reader.readExactOrEof(new Uint8Array(1), "reply").catch(() => false);
    }, { handshakeTimeoutMs: 5000 });
    rejectedWith(s, "ProtocolError", new RegExp(`too large \\(${len} bytes\\)`));
    assert.ok(Date.now() - started < 4000, "the server did not wait for the body");
  }
  // And the client refuses an oversize SERVER_HELLO.
  const { c } = await rawServer(async (conn, reader) => {
    await readRaw(reader);
    await writeAll(conn, Uint8Array.from([HandshakeType.SERVER_HELLO, 0xff, 0xff]));
  });
  rejectedWith(c, "ProtocolError", /too large \(65535 bytes\)/);
});

Deno.test("channel: garbage first bytes (an HTTP request) are refused", async () => {
  const { s, c } = await rawClient(async (conn, reader) => {
    await writeAll(conn, new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    return await reader.readExactOrEof(new Uint8Array(1), "reply").catch(() => false);
  });
  rejectedWith(s, "ProtocolError", /not an efx peer/);
  assert.equal(c.status === "fulfilled" && c.value, false); // no reply, just a close
  // Right type, wrong magic.
  const r = await rawClient(async (conn) => {
    const body = concat(new TextEncoder().encode("HTTP"), u16(1), randomBytes(32));
    await writeAll(conn, encodeHandshakeMessage(HandshakeType.CLIENT_HELLO, body));
  });
  rejectedWith(r.s, "ProtocolError", /bad magic/);
});

Deno.test("channel: undecryptable CLIENT_KEY and bad CLIENT_FINISHED get byte-identical alerts", async () => {
  const pub = await crypto.subtle.importKey(
    "spki",
    SERVER_KEY.spki as Uint8Array<ArrayBuffer>,
    { name: "RSA-OAEP", hash: "SHA-256" },
    false,
    ["encrypt"],
  );
  const encrypt = async (plain: Uint8Array<ArrayBuffer>) =>
    new Uint8Array(await crypto.subtle.encrypt({ name: "RSA-OAEP" }, pub, plain));

  /** One hand-rolled handshake with the given CLIENT_KEY ciphertext and a wrong finished MAC. */
  const attempt = async (ciphertext: Uint8Array) => {
    const { s, c } = await rawClient(async (conn, reader) => {
      await writeAll(conn, encodeClientHello(randomBytes(32)));
      const sh = await readRaw(reader);
      assert.equal(sh.type, HandshakeType.SERVER_HELLO);
      await writeAll(
        conn,
        concat(
          encodeClientKey(ciphertext),
          encodeHandshakeMessage(HandshakeType.CLIENT_FINISHED, randomBytes(32)),
        ),
      );
      return (await readRaw(reader)).raw;
    });
    assert.equal(c.status, "fulfilled");
    const err = rejectedWith(s, "AuthError");
    return { alert: (c as PromiseFulfilledResult<Uint8Array>).value, serverError: err.message };
  };

  const random = await attempt(randomBytes(256)); // not a valid OAEP ciphertext at all
  const valid = await attempt(await encrypt(randomBytes(32))); // decrypts; only the MAC is wrong
  const short = await attempt(await encrypt(randomBytes(31))); // decrypts to the wrong length
  const odd = await attempt(randomBytes(100)); // not even the modulus size

  assert.equal(random.alert[0], HandshakeType.ALERT);
  assert.equal(random.alert[3], AlertCode.AUTH);
  assert.match(new TextDecoder().decode(random.alert.subarray(4)), /key confirmation failed/);
  for (const other of [valid, short, odd]) {
    assert.equal(
      Buffer.from(other.alert).toString("hex"),
      Buffer.from(random.alert).toString("hex"),
    );
    assert.equal(other.serverError, random.serverError);
  }
});

// ---- streams ----

Deno.test("channel: streams of 0, 1, DATA_CHUNK, DATA_CHUNK+1 and 5 MiB bytes round trip", async () => {
  const { server, client } = await connected();
  try {
    const sizes = [0, 1, DATA_CHUNK, DATA_CHUNK + 1, 5 * 1024 * 1024];
    for (const size of sizes) {
      const data = randomBytes(size);
      // Odd-sized source chunks: the sender re-cuts them into DATA_CHUNK records.
      const [sent, got] = await Promise.all([
        client.sendStream(chunksOf(data, 100_003)),
        collect(server.recvStream()),
      ]);
      assert.equal(sent, size);
      assert.ok(same(got, data), `stream of ${size} bytes differs`);
      // A control message right after the stream is still in step.
      await client.sendMessage({ done: size });
      assert.deepEqual(await server.recvMessage(), { done: size });
    }
    // And the other direction.
    const back = randomBytes(3 * DATA_CHUNK + 17);
    const [sent, got] = await Promise.all([
      server.sendStream(chunksOf(back, DATA_CHUNK * 2)),
      collect(client.recvStream()),
    ]);
    assert.equal(sent, back.length);
    assert.ok(same(got, back));
  } finally {
    await client.close();
    assert.equal(await server.recvMessageOrClose(), null);
    await server.close();
  }
});

Deno.test("channel: an ALERT record becomes a RemoteError with the peer's code", async () => {
  const { server, client } = await connected();
  await server.sendAlert("not-found", "no such file: a.txt");
  await assert.rejects(client.recvMessage(), (err: Error & { code?: string }) => {
    assert.equal(err.name, "RemoteError");
    assert.equal(err.code, "not-found");
    assert.equal(err.message, "server ended the connection: no such file: a.txt");
    return true;
  });
  assert.ok(client.broken); // a channel that received an ALERT is not reused
  client.abort();
});

Deno.test("channel: maxRecords stops the sender and the receiver", async () => {
  {
    const { server, client } = await connected({ maxRecords: 3n }, { maxRecords: 3n });
    for (let i = 0; i < 3; i++) await client.sendMessage({ i });
    await assert.rejects(async () => await client.sendMessage({ i: 3 }), /record limit of 3/);
    for (let i = 0; i < 3; i++) assert.deepEqual(await server.recvMessage(), { i });
    client.abort();
    server.abort();
  }
  {
    const { server, client } = await connected({ maxRecords: 3n }, {});
    for (let i = 0; i < 4; i++) await client.sendMessage({ i });
    for (let i = 0; i < 3; i++) assert.deepEqual(await server.recvMessage(), { i });
    await assert.rejects(server.recvMessage(), /record limit of 3/);
    client.abort();
    server.abort();
  }
});

// ---- truncation and tampering on the wire ----

/**
 * A TCP proxy in front of `target` for one connection. Server-to-client bytes
 * pass unchanged; client-to-server bytes pass through `edit`, and after
 * `cutAfter` of them both sides are closed.
 */
function proxy(target: number, opts: { cutAfter?: number; flipAt?: number }) {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const conns: Deno.Conn[] = [];
  const closeAll = () => conns.forEach(closeQuietly);
  const done = (async () => {
    const inbound = await listener.accept();
    conns.push(inbound);
    const outbound = await Deno.connect({ hostname: HOST, port: target });
    conns.push(outbound);
    const pump = async (from: Deno.Conn, to: Deno.Conn, up: boolean) => {
      const buf = new Uint8Array(64 * 1024);
      let passed = 0;
      try {
        while (true) {
          const room = up && opts.cutAfter !== undefined ? opts.cutAfter - passed : buf.length;
          if (room <= 0) break;
          const n = await from.read(buf.subarray(0, Math.min(buf.length, room)));
          if (n === null) break;
          const chunk = buf.subarray(0, n);
          if (
            up && opts.flipAt !== undefined && opts.flipAt >= passed && opts.flipAt < passed + n
          ) {
            chunk[opts.flipAt - passed] ^= 0x01;
          }
          await writeAll(to, chunk);
          passed += n;
        }
      } catch { /* the other side closed */ }
      closeAll();
    };
    await Promise.all([pump(inbound, outbound, true), pump(outbound, inbound, false)]);
  })();
  return {
    port: listener.addr.port,
    async stop() {
      closeQuietly(listener);
      closeAll();
      await done.catch(() => {});
    },
  };
}

/** Client bytes of a 2048-bit handshake: CLIENT_HELLO, CLIENT_KEY, CLIENT_FINISHED. */
const CLIENT_HANDSHAKE_BYTES = CLIENT_HELLO_LEN + (3 + 2 + 256) + (3 + 32);

/** A client -> proxy -> server pair; `serverWork` runs on the established server channel. */
async function throughProxy<T>(
  opts: { cutAfter?: number; flipAt?: number },
  clientWork: (ch: SecureChannel) => Promise<unknown>,
  serverWork: (ch: SecureChannel) => Promise<T>,
) {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const p = proxy(listener.addr.port, opts);
  try {
    const serverSide = (async () => {
      const ch = await SecureChannel.server(await listener.accept(), { key: SERVER_KEY });
      try {
        return await serverWork(ch);
      } finally {
        ch.abort();
      }
    })();
    const clientSide = (async () => {
      const conn = await Deno.connect({ hostname: HOST, port: p.port });
      const ch = await SecureChannel.client(conn, { verifyServerKey: pinned(SERVER_KEY.spki) });
      try {
        return await clientWork(ch);
      } finally {
        ch.abort();
      }
    })();
    const [s, c] = await Promise.allSettled([serverSide, clientSide]);
    return { s, c };
  } finally {
    listener.close();
    await p.stop();
  }
}

Deno.test("channel: a connection cut in the middle of a stream is a truncation", async () => {
  const data = randomBytes(4 * DATA_CHUNK);
  const cut = CLIENT_HANDSHAKE_BYTES + DATA_CHUNK + 40 + 1000; // inside the second DATA record
  const { s } = await throughProxy(
    { cutAfter: cut },
    (ch) => ch.sendStream(chunksOf(data, DATA_CHUNK)),
    (ch) => collect(ch.recvStream()),
  );
  rejectedWith(s, "IntegrityError", /in the middle of record 1 \(truncated stream\)/);
});

Deno.test("channel: a connection cut at a record boundary without CLOSE is a truncation", async () => {
  const msg = new TextEncoder().encode(JSON.stringify({ op: "x" })).length;
  const cut = CLIENT_HANDSHAKE_BYTES + 8 + msg + 32; // exactly one MSG record gets through
  const { s } = await throughProxy(
    { cutAfter: cut },
    async (ch) => {
      await ch.sendMessage({ op: "x" });
      await ch.close(); // its CLOSE record is cut off by the proxy
    },
    async (ch) => {
      assert.deepEqual(await ch.recvMessage(), { op: "x" });
      return await ch.recvMessageOrClose();
    },
  );
  rejectedWith(s, "IntegrityError", /truncated: no close record/);
});

Deno.test("channel: a bit flipped on the wire after the handshake is an IntegrityError", async () => {
  const { s } = await throughProxy(
    { flipAt: CLIENT_HANDSHAKE_BYTES + 8 + 3 },
    (ch) => ch.sendMessage({ op: "transfer", amount: 100 }),
    (ch) => ch.recvMessage(),
  );
  rejectedWith(s, "IntegrityError", /integrity check failed on record 0/);
});

Deno.test("channel: a bit flipped in the handshake fails the handshake", async () => {
  // Inside the client nonce: the transcripts differ, so key confirmation fails.
  const { s, c } = await throughProxy(
    { flipAt: 20 },
    () => Promise.resolve(),
    () => Promise.resolve(),
  );
  rejectedWith(s, "AuthError", /key confirmation/);
  // The client gets the server's AUTH alert: unauthenticated, so not an AuthError.
  rejectedWith(c, "ProtocolError", /unverified message from the network: "handshake failed/);
});

Deno.test("channel: peer closing without CLOSE is detected (abort at a boundary, mid-stream, CLOSE mid-stream)", async () => {
  // Abort after a message: no CLOSE record.
  {
    const { server, client } = await connected();
    await client.sendMessage({ a: 1 });
    client.abort();
    assert.deepEqual(await server.recvMessage(), { a: 1 });
    await assert.rejects(server.recvMessageOrClose(), {
      name: "IntegrityError",
      message: /truncated: no close record/,
    });
    server.abort();
  }
  // A stream whose source fails after one full record; the sender aborts.
  const failing = async function* () {
    yield randomBytes(DATA_CHUNK);
    yield randomBytes(DATA_CHUNK);
    throw new Error("disk read error");
  };
  {
    const { server, client } = await connected();
    await assert.rejects(client.sendStream(failing()), /disk read error/);
    client.abort();
    await assert.rejects(collect(server.recvStream()), {
      name: "IntegrityError",
      message: /truncated/,
    });
    server.abort();
  }
  // Same, but the sender closes in order: CLOSE inside a stream is still not a complete stream.
  {
    const { server, client } = await connected();
    await assert.rejects(client.sendStream(failing()), /disk read error/);
    await client.close();
    await assert.rejects(collect(server.recvStream()), {
      name: "IntegrityError",
      message: /in the middle of a data stream/,
    });
    server.abort();
  }
});
