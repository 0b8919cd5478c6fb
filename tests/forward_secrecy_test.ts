/**
 * Forward secrecy (protocol v2): short-lived RSA keys signed by the server's
 * long-term key, version negotiation with v1 peers, and downgrade refusal.
 *
 * Real servers on loopback: an in-process {@linkcode EfxServer} (so a test
 * can reach its ephemeral keys through the test hook), or a fake server that
 * runs the real server handshake with a hostile ephemeral key (replayed,
 * signed by another key, from the future).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { SecureChannel } from "../src/channel.ts";
import { EfxClient } from "../src/client.ts";
import {
  type EphemeralKey,
  EphemeralKeyRing,
  makeEphemeralKey,
  signedEphemeralData,
} from "../src/ephemeral.ts";
import { AuthError, ProtocolError } from "../src/errors.ts";
import {
  CLOCK_SKEW_MS,
  HandshakeType,
  parseServerHello,
  serverHandshake,
} from "../src/handshake.ts";
import { BufferedReader } from "../src/io.ts";
import { loadServerPrivateKey, type ServerPrivateKey, writeKeyPair } from "../src/keys.ts";
import type { Logger } from "../src/log.ts";
import { EfxServer } from "../src/server.ts";
import { makeServerVerifier } from "../src/trust.ts";
import { Mitm, type Tamper } from "./helpers/mitm.ts";
import { assertExit, efx, startServer, testServerKey, waitFor } from "./helpers/server.ts";

const HOST = "127.0.0.1";

/** A temp folder with the cached 2048-bit server key written in it. */
async function keyDir(): Promise<{ dir: string; keyPath: string; fingerprint: string }> {
  const dir = await Deno.makeTempDir({ prefix: "efx-fs-" });
  const key = await testServerKey();
  await Deno.mkdir(join(dir, "keys"));
  await Deno.writeTextFile(join(dir, "keys", "server.key.pem"), key.privatePem, { mode: 0o600 });
  return { dir, keyPath: join(dir, "keys", "server.key.pem"), fingerprint: key.fingerprint };
}

function memoryLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const add = (l: string) => void lines.push(l);
  return { lines, error: add, info: add, debug: add };
}

/** An in-process server on 127.0.0.1 with the cached key. */
async function inProcessServer(
  opts: {
    maxVersion?: number;
    ephemeralLifetimeMs?: number;
    handshakeTimeoutMs?: number;
    ephemeralClock?: () => number;
  } = {},
) {
  const k = await keyDir();
  const log = memoryLog();
  const server = await EfxServer.start({
    host: HOST,
    port: 0,
    root: join(k.dir, "storage"),
    keyPath: k.keyPath,
    minFreeBytes: 0,
    log,
    ...opts,
  });
  return {
    server,
    log,
    ...k,
    async stop() {
      await server.shutdown();
      await Deno.remove(k.dir, { recursive: true });
    },
  };
}

function pinned(fingerprint: string, extra: { requireForwardSecrecy?: boolean } = {}) {
  return makeServerVerifier({
    pinnedFingerprint: fingerprint,
    knownServersFile: "/nonexistent/known_servers",
    acceptNew: false,
    ...extra,
  });
}

/** Runs `fn` with a proxy in front of `port`; returns the proxy's first session. */
async function throughMitm<T>(
  port: number,
  tamper: Tamper | undefined,
  fn: (mitm: Mitm) => Promise<T>,
) {
  const mitm = await Mitm.start({ target: port, tamper });
  try {
    const result = await fn(mitm);
    const s = await mitm.session(0);
    await mitm.close();
    return { result, session: s };
  } catch (err) {
    await mitm.close();
    throw err;
  }
}

/** Handshake messages a direction sent through the proxy, by type. */
function hsTypes(s: { frames: { dir: string; kind: string; type: number }[] }, dir: string) {
  return s.frames.filter((f) => f.dir === dir && f.kind === "handshake").map((f) => f.type);
}

async function rejects(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

// ---------------------------------------------------------------------------
// Negotiation

Deno.test("v2: the server answers version 2 with an ephemeral key signed by its long-term key; the session uses it", async () => {
  const S = await inProcessServer();
  try {
    const client = await EfxClient.connect({
      host: HOST,
      port: S.server.port,
      verifier: pinned(S.fingerprint),
    });
    const ring = S.server.ephemeralKeysForTesting!;
    assert.equal(client.channel.session.version, 2);
    assert.equal(client.channel.session.ephemeralFingerprint, ring.current().fingerprint);
    assert.notEqual(
      ring.current().fingerprint,
      S.fingerprint,
      "a key other than the long-term one",
    );
    assert.deepEqual(await client.list(), []);
    await client.close();
    // The rotation log names the key and its window.
    assert.ok(
      S.log.lines.some((l) =>
        l.startsWith(`ephemeral key ${ring.current().fingerprint} (2048 bits) valid `) &&
        / valid \d{4}-\d\d-\d\dT[\d:.]+Z to \d{4}-/.test(l)
      ),
      S.log.lines.join("\n"),
    );
  } finally {
    await S.stop();
  }
});

Deno.test("v1 client against the v2 server: the server answers version 1 and decrypts with its long-term key", async () => {
  const S = await inProcessServer();
  try {
    const conn = await Deno.connect({ hostname: HOST, port: S.server.port });
    const ch = await SecureChannel.client(conn, { verifyServerKey: async () => {}, version: 1 });
    assert.equal(ch.session.version, 1);
    assert.equal(ch.session.ephemeralFingerprint, undefined);
    await ch.sendMessage({ op: "ls" });
    const reply = await ch.recvMessage() as { ok: boolean };
    assert.equal(reply.ok, true);
    ch.abort();
  } finally {
    await S.stop();
  }
});

Deno.test("v2 client against a v1-only server (maxVersion 1): works as v1, unless forward secrecy is required (nothing sent)", async () => {
  const S = await inProcessServer({ maxVersion: 1 });
  try {
    assert.equal(S.server.ephemeralKeysForTesting, undefined);
    const client = await EfxClient.connect({
      host: HOST,
      port: S.server.port,
      verifier: pinned(S.fingerprint),
    });
    assert.equal(client.channel.session.version, 1);
    await client.close();
    const { result: err, session } = await throughMitm(
      S.server.port,
      undefined,
      (mitm) =>
        rejects(EfxClient.connect({
          host: HOST,
          port: mitm.port,
          verifier: pinned(S.fingerprint, { requireForwardSecrecy: true }),
        })),
    );
    assert.ok(err instanceof AuthError, String(err));
    assert.match(err.message, /answered protocol version 1, without forward secrecy/);
    assert.match(err.message, /--require-forward-secrecy/);
    await session.done;
    assert.deepEqual(hsTypes(session, "c2s"), [HandshakeType.CLIENT_HELLO], "no CLIENT_KEY sent");
  } finally {
    await S.stop();
  }
});

// ---------------------------------------------------------------------------
// Downgrade by an active attacker

/** Rewrites CLIENT_HELLO's version field (bytes 7..8 of the message) to 1. */
const downgradeHello = (f: { dir: string; kind: string; index: number; bytes: Uint8Array }) => {
  if (f.dir === "c2s" && f.kind === "handshake" && f.index === 0) {
    const b = f.bytes.slice();
    b[3 + 4] = 0;
    b[3 + 5] = 1;
    return [b];
  }
  return undefined;
};

Deno.test("downgrade: an attacker rewriting CLIENT_HELLO to version 1 is detected (transcript binds both hellos), and refused up front with --require-forward-secrecy or the fs note", async () => {
  const S = await inProcessServer();
  const dir = await Deno.makeTempDir({ prefix: "efx-fs-known-" });
  try {
    // 1. A client with no policy: the server answers v1 to the rewritten
    //    hello; the client's transcript has its real hello (v2), so the key
    //    confirmations disagree and the handshake fails before any record.
    const a = await throughMitm(
      S.server.port,
      downgradeHello,
      (mitm) =>
        rejects(
          EfxClient.connect({ host: HOST, port: mitm.port, verifier: pinned(S.fingerprint) }),
        ),
    );
    assert.ok(a.result instanceof AuthError || a.result instanceof ProtocolError, String(a.result));
    assert.match(a.result.message, /key confirmation|refused the handshake/);
    const sh = a.session.frames.find((f) => f.dir === "s2c" && f.kind === "handshake")!;
    assert.equal(parseServerHello(sh.bytes.subarray(3)).version, 1, "the server was downgraded");
    assert.equal(a.session.frames.filter((f) => f.kind === "record").length, 0, "no record");
    // 2. --require-forward-secrecy: refused at SERVER_HELLO, nothing sent.
    const b = await throughMitm(S.server.port, downgradeHello, (mitm) =>
      rejects(EfxClient.connect({
        host: HOST,
        port: mitm.port,
        verifier: pinned(S.fingerprint, { requireForwardSecrecy: true }),
      })));
    assert.ok(b.result instanceof AuthError, String(b.result));
    assert.match(b.result.message, /--require-forward-secrecy refuses it/);
    await b.session.done;
    assert.deepEqual(hsTypes(b.session, "c2s"), [HandshakeType.CLIENT_HELLO]);
    // 3. The fs note: a first, clean v2 connection records it ...
    const file = join(dir, "known_servers");
    const c = await throughMitm(S.server.port, undefined, async (mitm) => {
      const verifier = makeServerVerifier({ knownServersFile: file, acceptNew: true, warn() {} });
      const client = await EfxClient.connect({ host: HOST, port: mitm.port, verifier });
      await client.close();
      return mitm.port;
    });
    const label = `${HOST}:${c.result}`;
    assert.equal(await Deno.readTextFile(file), `${label} ${S.fingerprint} fs\n`);
    // ... and then the same rewrite on the same address is refused as a downgrade.
    const mitm = await Mitm.start({ target: S.server.port, tamper: downgradeHello });
    try {
      // known_servers is keyed by host:port: the note, for this proxy's address.
      const verifier = makeServerVerifier({ knownServersFile: file, acceptNew: false, warn() {} });
      await Deno.writeTextFile(file, `${HOST}:${mitm.port} ${S.fingerprint} fs\n`);
      const err = await rejects(EfxClient.connect({ host: HOST, port: mitm.port, verifier }));
      assert.ok(err instanceof AuthError, String(err));
      assert.match(
        err.message,
        new RegExp(
          `^downgrade refused: ${HOST}:${mitm.port} has shown forward secrecy before \\(.* line 1 says 'fs'\\) but now answers protocol version 1`,
        ),
      );
      const s = await mitm.session(0);
      await s.done;
      assert.deepEqual(hsTypes(s, "c2s"), [HandshakeType.CLIENT_HELLO], "no CLIENT_KEY sent");
      // Without the note, the same client would have gone on to send CLIENT_KEY (the test can fail).
      await Deno.writeTextFile(file, `${HOST}:${mitm.port} ${S.fingerprint}\n`);
      await rejects(EfxClient.connect({ host: HOST, port: mitm.port, verifier }));
      const s2 = await mitm.session(1);
      await s2.done;
      assert.deepEqual(hsTypes(s2, "c2s"), [
        HandshakeType.CLIENT_HELLO,
        HandshakeType.CLIENT_KEY,
        HandshakeType.CLIENT_FINISHED,
      ]);
    } finally {
      await mitm.close();
    }
  } finally {
    await S.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fs note: a v1-only server whose known_servers line says fs is refused; the note is not added by a v1 server", async () => {
  const S = await inProcessServer({ maxVersion: 1 });
  const dir = await Deno.makeTempDir({ prefix: "efx-fs-known-" });
  try {
    const file = join(dir, "known_servers");
    const label = `${HOST}:${S.server.port}`;
    const verifier = makeServerVerifier({ knownServersFile: file, acceptNew: true, warn() {} });
    const client = await EfxClient.connect({ host: HOST, port: S.server.port, verifier });
    await client.close();
    assert.equal(await Deno.readTextFile(file), `${label} ${S.fingerprint}\n`, "no fs note");
    await Deno.writeTextFile(file, `# mine\n${label} ${S.fingerprint} fs # noted\n`);
    const err = await rejects(EfxClient.connect({ host: HOST, port: S.server.port, verifier }));
    assert.ok(err instanceof AuthError);
    assert.match(err.message, /^downgrade refused: .* line 2 says 'fs'/);
  } finally {
    await S.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
// Hostile ephemeral keys (a fake server running the real handshake)

/** A one-connection server on 127.0.0.1 that offers `eph` with the real long-term `key`. */
function fakeServer(key: ServerPrivateKey, eph: EphemeralKey) {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const served = (async () => {
    const conn = await listener.accept();
    try {
      await serverHandshake(conn, new BufferedReader(conn), {
        key,
        ephemeral: { current: () => eph },
      });
    } catch { /* the client hangs up */ }
    try {
      conn.close();
    } catch { /* closed */ }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      await served;
    },
  };
}

async function realKey(): Promise<{ key: ServerPrivateKey; dir: string }> {
  const k = await keyDir();
  return { key: await loadServerPrivateKey(k.keyPath), dir: k.dir };
}

Deno.test("hostile ephemeral keys: a replayed key from an earlier window, a signature by another key, a window in the future beyond the skew: all refused, nothing sent", async () => {
  const { key, dir } = await realKey();
  const other = await writeKeyPair(join(dir, "other"), { bits: 2048 });
  const otherKey = await loadServerPrivateKey(other.privatePath);
  const t = Date.now();
  const hour = 3_600_000;
  const cases: [string, EphemeralKey, RegExp][] = [
    [
      "replayed from an earlier window (the genuine server signed it, 2 h ago)",
      await makeEphemeralKey(key.signKey!, 2048, t - 2 * hour, t - hour),
      /^server's ephemeral key expired at .* \(now .*, 5 min clock skew allowed\): a replayed old key/,
    ],
    [
      "signed by another key",
      await makeEphemeralKey(otherKey.signKey!, 2048, t, t + hour),
      /^server's ephemeral key is not signed by the server key it presented/,
    ],
    [
      "in the future beyond the skew",
      await makeEphemeralKey(key.signKey!, 2048, t + CLOCK_SKEW_MS + 60_000, t + hour),
      /^server's ephemeral key is not valid before /,
    ],
    [
      "a window longer than 24 h",
      await makeEphemeralKey(key.signKey!, 2048, t - hour, t + 25 * hour),
      /bad validity window/,
    ],
  ];
  try {
    for (const [what, eph, expected] of cases) {
      const fake = await fakeServer(key, eph);
      const { result: err, session } = await throughMitm(
        fake.port,
        undefined,
        (mitm) =>
          rejects(
            EfxClient.connect({ host: HOST, port: mitm.port, verifier: pinned(key.fingerprint) }),
          ),
      );
      await fake.close();
      assert.ok(err instanceof AuthError, `${what}: ${err}`);
      assert.match(err.message, expected, what);
      await session.done;
      assert.deepEqual(
        hsTypes(session, "c2s"),
        [HandshakeType.CLIENT_HELLO],
        `${what}: nothing sent`,
      );
    }
    // Control: a genuine key 2 minutes in the future (within the skew) is accepted.
    const ok = await makeEphemeralKey(key.signKey!, 2048, t + 120_000, t + hour);
    const fake = await fakeServer(key, ok);
    const client = await EfxClient.connect({
      host: HOST,
      port: fake.port,
      verifier: pinned(key.fingerprint),
    }).catch((e) => e);
    // The fake server stops after the handshake: the connection works up to there.
    assert.ok(client instanceof EfxClient, String(client));
    assert.equal(client.channel.session.ephemeralFingerprint, ok.fingerprint);
    client.channel.abort();
    await fake.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hostile ephemeral keys: one flipped bit in the signature, the window or the key (on the wire) is refused", async () => {
  const S = await inProcessServer();
  try {
    const sh0 = await throughMitm(S.server.port, undefined, async (mitm) => {
      const c = await EfxClient.connect({
        host: HOST,
        port: mitm.port,
        verifier: pinned(S.fingerprint),
      });
      await c.close();
    });
    const shBytes = sh0.session.frames.find((f) =>
      f.dir === "s2c" && f.kind === "handshake"
    )!.bytes;
    const hello = parseServerHello(shBytes.subarray(3));
    const ephAt = 3 + 38 + 2 + hello.spki.length + 2; // first byte of the ephemeral SPKI
    const windowAt = ephAt + hello.ephemeral!.spki.length;
    const sigAt = windowAt + 16 + 2;
    for (
      const [what, at] of [
        ["ephemeral key", ephAt + 100],
        ["not_after", windowAt + 15],
        ["signature", sigAt + 10],
      ] as const
    ) {
      const { result: err } = await throughMitm(S.server.port, (f) => {
        if (f.dir === "s2c" && f.kind === "handshake" && f.index === 0) {
          const b = f.bytes.slice();
          b[at] ^= 0x01;
          return [b];
        }
      }, (mitm) =>
        rejects(
          EfxClient.connect({ host: HOST, port: mitm.port, verifier: pinned(S.fingerprint) }),
        ));
      assert.ok(err instanceof AuthError, `${what}: ${err}`);
      assert.match(err.message, /not signed by the server key it presented/, what);
    }
  } finally {
    await S.stop();
  }
});

// ---------------------------------------------------------------------------
// Rotation and erasure

Deno.test("rotation: a new key every lifetime, generated ahead (handshakes never fail across rotations), the old one erased after the grace", async () => {
  const S = await inProcessServer({ ephemeralLifetimeMs: 1_500, handshakeTimeoutMs: 1_000 });
  try {
    const ring = S.server.ephemeralKeysForTesting!;
    const first = ring.current();
    const seen = new Set<string>();
    const t0 = Date.now();
    let handshakes = 0;
    // Handshakes back to back for 4 s and across at least two rotations (a
    // loaded machine may take longer to generate the keys: up to 30 s).
    while (Date.now() - t0 < 4_000 || (ring.rotations < 2 && Date.now() - t0 < 30_000)) {
      const c = await EfxClient.connect({
        host: HOST,
        port: S.server.port,
        verifier: pinned(S.fingerprint),
      });
      seen.add(c.channel.session.ephemeralFingerprint!);
      handshakes++;
      await c.close();
    }
    assert.ok(ring.rotations >= 2, `rotations: ${ring.rotations}`);
    assert.ok(seen.size >= 2, `keys seen: ${seen.size} in ${handshakes} handshakes`);
    // Grace: handshake timeout (1 s) + 2 s after it was replaced (at ~1.5 s).
    await waitFor(() => first.erased || undefined, { timeoutMs: 20_000, what: "first key erased" });
    assert.equal(first.erased, true, "the first key is erased");
    await assert.rejects(first.decrypt(new Uint8Array(256)), /ephemeral key erased/);
    assert.ok(!ring.liveKeysForTesting().includes(first));
    // Current plus those replaced less than a grace (3 s) ago: one per 1.5 s lifetime.
    assert.ok(ring.liveKeysForTesting().length <= 3, `${ring.liveKeysForTesting().length} live`);
    const rotationLines = S.log.lines.filter((l) => l.startsWith("ephemeral key SHA256:"));
    assert.ok(rotationLines.length >= 3, rotationLines.join("\n"));
  } finally {
    await S.stop();
  }
});

Deno.test("rotation: shutdown erases every ephemeral key", async () => {
  const S = await inProcessServer();
  const ring = S.server.ephemeralKeysForTesting!;
  const k = ring.current();
  assert.equal(k.erased, false);
  await S.stop();
  assert.equal(k.erased, true);
  assert.deepEqual(ring.liveKeysForTesting(), []);
});

Deno.test("ephemeral ring: a lifetime of 0, below 1 s or above 24 h is refused; the signed data is label | window | key", async () => {
  const { key, dir } = await realKey();
  try {
    for (const ms of [0, -1, 500, 25 * 3_600_000, NaN]) {
      await assert.rejects(
        EphemeralKeyRing.start({ signKey: key.signKey!, bits: 2048, lifetimeMs: ms }),
        RangeError,
      );
    }
    const data = signedEphemeralData(new Uint8Array([0xaa, 0xbb]), 1, 0x0102030405);
    assert.equal(
      new TextDecoder().decode(data.subarray(0, 18)),
      "efx2 ephemeral key",
    );
    assert.deepEqual(
      [...data.subarray(18)],
      [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 4, 5, 0, 2, 0xaa, 0xbb],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
// CLI

Deno.test("efx serve: --ephemeral-lifetime 0 is refused with a clear message; the rotation is logged at start", async () => {
  const r = await efx([
    "serve",
    "--ephemeral-lifetime",
    "0",
    "--port",
    "0",
    "--root",
    "/nonexistent",
  ]);
  assertExit(r, 2, "lifetime 0");
  assert.match(r.stderr, /--ephemeral-lifetime: the ephemeral key lifetime must be positive/);
  const S = await startServer({ args: ["--ephemeral-lifetime", "30m"] });
  try {
    const line = S.stderr().split("\n").find((l) => l.includes("ephemeral key SHA256:"));
    assert.ok(line, S.stderr());
    const m = / valid (\S+) to (\S+)$/.exec(line!);
    assert.ok(m, line);
    assert.equal(Date.parse(m![2]) - Date.parse(m![1]), 30 * 60_000);
  } finally {
    await S.stop();
  }
});

Deno.test("efx client: --require-forward-secrecy connects to a v2 server", async () => {
  const S = await startServer();
  try {
    const r = await efx([
      "ls",
      "--server",
      `${HOST}:${S.port}`,
      "--server-key",
      S.pubKeyPath,
      "--require-forward-secrecy",
    ]);
    assertExit(r, 0, "ls with --require-forward-secrecy");
  } finally {
    await S.stop();
  }
});

Deno.test("fs note: added to an existing line keeping its comment and the other lines; a third field other than fs is a malformed line", async () => {
  const S = await inProcessServer();
  const dir = await Deno.makeTempDir({ prefix: "efx-fs-known-" });
  try {
    const file = join(dir, "known_servers");
    const label = `${HOST}:${S.server.port}`;
    const other = `other.example:9000 ${S.fingerprint}`;
    await Deno.writeTextFile(
      file,
      `# servers\n${label} ${S.fingerprint}  # the lab box\n${other}\n`,
    );
    const warnings: string[] = [];
    const verifier = makeServerVerifier({
      knownServersFile: file,
      acceptNew: false,
      warn: (t) => warnings.push(t),
    });
    const c = await EfxClient.connect({ host: HOST, port: S.server.port, verifier });
    assert.equal(c.trust.status, "known");
    await c.close();
    assert.equal(
      await Deno.readTextFile(file),
      `# servers\n${label} ${S.fingerprint} fs  # the lab box\n${other}\n`,
    );
    assert.deepEqual(warnings, []);
    // Once noted, a second connection leaves the file as it is.
    await (await EfxClient.connect({ host: HOST, port: S.server.port, verifier })).close();
    assert.match(await Deno.readTextFile(file), new RegExp(` fs  # the lab box\n`));
    // A third field that is not "fs": the line about this server is malformed, and stops it.
    await Deno.writeTextFile(file, `${label} ${S.fingerprint} fx\n`);
    const err = await rejects(EfxClient.connect({ host: HOST, port: S.server.port, verifier }));
    assert.ok(err instanceof AuthError);
    assert.match(err.message, /line 1: malformed entry for /);
  } finally {
    await S.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
