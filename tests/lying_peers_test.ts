/**
 * Lying peers, end to end. Both sides check what the other one claims about
 * a file (its whole-file SHA-256, its size, its mode, its name, a resume
 * offset and prefix hash) instead of trusting it; these tests make the peer
 * lie and watch the real program refuse.
 *
 * - Server side: a client built from the protocol modules (SecureChannel,
 *   the message shapes of src/messages.ts, the trailer of src/transfer.ts)
 *   talks to the real `efx serve` (tests/helpers/server.ts startServer) and
 *   lies on single, pipelined and resumed puts and on the folder requests
 *   `upload -r` sends (mkdir, symlink). The server must refuse each lie,
 *   commit nothing (checked on disk: no file under the name, no temp file
 *   left), and keep serving (assertServing).
 * - Client side: a scripted server (startFakeServer) lies to the real `efx`
 *   CLI on downloads (trailer hash or size, extra bytes, resume offset, a
 *   file inside `download -r`), listings and upload results (a stored hash
 *   or size other than what was sent). The CLI must fail with exit 1 and
 *   one line, and commit nothing locally.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/lying_peers_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DATA_CHUNK, SecureChannel } from "../src/channel.ts";
import { fingerprint } from "../src/keys.ts";
import { STAGING_DIR } from "../src/storage/local.ts";
import { partialRelPath } from "../src/storage/local_partials.ts";
import type { Trailer } from "../src/messages.ts";
import {
  assertExit,
  assertServing,
  clientArgs,
  efx,
  type EfxResult,
  listTree,
  makeWorkDir,
  sha256,
  snapshotTree,
  startFakeServer,
  startServer,
  TEMP_PREFIX,
  type TestServer,
  waitFor,
} from "./helpers/server.ts";

const enc = new TextEncoder();

const S: TestServer = await startServer();
const WORK = await makeWorkDir("efx-lying-");
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(WORK, { recursive: true });
  } catch { /* gone */ }
});

// ---------------------------------------------------------------------------
// The lying client

/** A channel to `server` from the protocol modules alone (the server's key is pinned). */
async function liar(server: { port: number; fingerprint: string }): Promise<SecureChannel> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  return await SecureChannel.client(conn, {
    handshakeTimeoutMs: 10_000,
    verifyServerKey: async (spki) => {
      assert.equal(await fingerprint(spki), server.fingerprint, "not the test server");
    },
  });
}

async function* once(data: Uint8Array): AsyncGenerator<Uint8Array> {
  yield data;
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** An honest trailer for `data`, with `patch` applied (the lie). */
function trailer(
  data: Uint8Array,
  patch: Record<string, unknown> = {},
): Record<string, unknown> {
  const honest: Trailer = { ok: true, sha256: sha256(data), bytes: data.length };
  return { ...honest, ...patch };
}

/** A put request (the fields the CLI sends), with `patch` applied. */
function put(name: string, size: number, patch: Record<string, unknown> = {}) {
  return {
    op: "put",
    name,
    size,
    mode: 0o644,
    mtime: 1_700_000_000_000,
    force: false,
    ...patch,
  };
}

const WRONG_SHA = "ab".repeat(32);

/** The server's error reply: `{ok: false}` with a code and a message matching `re`. */
function assertRefused(reply: Record<string, unknown>, code: string, re: RegExp, what: string) {
  assert.equal(reply.ok, false, `${what}: accepted: ${JSON.stringify(reply)}`);
  assert.equal(reply.code, code, `${what}: ${JSON.stringify(reply)}`);
  assert.match(String(reply.message), re, what);
}

/**
 * Everything in the storage root as a snapshot, without the private staging
 * folder of partial uploads (checked separately where it matters).
 */
async function storage(root = S.root): Promise<Record<string, string>> {
  const snap = await snapshotTree(root);
  for (const k of Object.keys(snap)) if (k.split("/")[0] === STAGING_DIR) delete snap[k];
  return snap;
}

/** Temp files in the root outside the staging folder of partials. */
async function temps(root = S.root): Promise<string[]> {
  return (await listTree(root)).filter((p) =>
    p.split("/")[0] !== STAGING_DIR && p.split("/").some((c) => c.startsWith(TEMP_PREFIX))
  );
}

/** Size of the server's partial upload of `name` (anonymous client), or null when it has none. */
async function partialSize(name: string): Promise<number | null> {
  const path = join(S.root, STAGING_DIR, "partials", partialRelPath(name, ""));
  try {
    return (await Deno.stat(path)).size;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/**
 * Runs `lie` (which talks to the server through a fresh lying channel) and
 * checks afterwards: the storage root is exactly as before (nothing
 * committed, no temp file left) and the server still serves.
 */
async function lieTo(
  what: string,
  lie: (ch: SecureChannel) => Promise<void>,
  opts: { allowed?: Record<string, string> } = {},
): Promise<void> {
  const before = await storage();
  const ch = await liar(S);
  try {
    await lie(ch);
  } finally {
    if (!ch.broken) await ch.close();
    else ch.abort();
  }
  // Temp files of a dropped connection are removed by its handler: wait for that.
  await waitFor(async () => (await temps()).length === 0, {
    timeoutMs: 30_000,
    what: async () => `${what}: temp files removed (left: ${(await temps()).join(", ")})`,
  });
  assert.deepEqual(await storage(), { ...before, ...opts.allowed }, `${what}: storage changed`);
  await assertServing(S, WORK);
}

/** The session goes on after a refusal: an `ls` still gets its answer. */
async function assertInStep(ch: SecureChannel, what: string): Promise<void> {
  await ch.sendMessage({ op: "ls" });
  const r = await ch.recvMessage();
  assert.equal(r.ok, true, `${what}: session out of step: ${JSON.stringify(r)}`);
}

/** The server dropped the connection with an ALERT of `code`. */
async function assertDropped(ch: SecureChannel, code: string, what: string): Promise<void> {
  await assert.rejects(
    ch.recvMessage(),
    (err: Error & { code?: string }) => {
      assert.equal(err.name, "RemoteError", `${what}: ${err.name}: ${err.message}`);
      assert.equal(err.code, code, `${what}: ${err.message}`);
      return true;
    },
  );
}

// ---------------------------------------------------------------------------
// Single (plain) puts

/** A plain put: request, offer, stream of `data`, the given trailer; returns the result. */
async function plainPut(
  ch: SecureChannel,
  req: Record<string, unknown>,
  data: Uint8Array,
  t: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  await ch.sendMessage(req);
  const go = await ch.recvMessage();
  assert.deepEqual(go, { ok: true, offset: 0 }, `offer for ${req.name}`);
  await ch.sendStream(once(data));
  await ch.sendMessage(t);
  return await ch.recvMessage();
}

Deno.test("lying client, single put: a wrong whole-file hash is refused, nothing is stored", async () => {
  const data = bytes(300_000, 1);
  await lieTo("single put, wrong hash", async (ch) => {
    const r = await plainPut(
      ch,
      put("hash.bin", data.length),
      data,
      trailer(data, { sha256: WRONG_SHA }),
    );
    assertRefused(r, "error", /file hash mismatch/, "wrong hash");
    // The hash of a DIFFERENT file of the same size: refused the same way.
    const r2 = await plainPut(
      ch,
      put("hash.bin", data.length),
      data,
      trailer(bytes(data.length, 2)),
    );
    assertRefused(r2, "error", /file hash mismatch/, "other file's hash");
    await assertInStep(ch, "after a wrong hash");
  });
});

Deno.test("lying client, single put: a stream shorter than announced, or a trailer's size that differs, is refused", async () => {
  const data = bytes(300_000, 3);
  await lieTo("single put, short", async (ch) => {
    // Fewer bytes than the request's size, with an honest trailer for them.
    const short = data.subarray(0, data.length - 10);
    assertRefused(
      await plainPut(ch, put("short.bin", data.length), short, trailer(short)),
      "error",
      /size mismatch/,
      "short stream",
    );
    // Fewer bytes, with a trailer that hashes them but claims the announced size.
    assertRefused(
      await plainPut(
        ch,
        put("short.bin", data.length),
        short,
        trailer(short, { bytes: data.length }),
      ),
      "error",
      /size mismatch/,
      "short stream, trailer claims the full size",
    );
    // All the bytes, but the trailer claims another count.
    for (const n of [data.length - 1, data.length + 1, 0]) {
      assertRefused(
        await plainPut(ch, put("short.bin", data.length), data, trailer(data, { bytes: n })),
        "error",
        /size mismatch/,
        `trailer bytes ${n}`,
      );
    }
    // Nothing at all.
    assertRefused(
      await plainPut(ch, put("short.bin", 10), new Uint8Array(0), trailer(new Uint8Array(0))),
      "error",
      /size mismatch/,
      "empty stream for 10 bytes",
    );
    await assertInStep(ch, "after short uploads");
  });
});

Deno.test("lying client, single put: a stream longer than announced ends the session", async () => {
  const data = bytes(300_000, 4);
  await lieTo("single put, long", async (ch) => {
    await ch.sendMessage(put("long.bin", data.length - 1));
    assert.deepEqual(await ch.recvMessage(), { ok: true, offset: 0 });
    await ch.sendStream(once(data));
    await ch.sendMessage(trailer(data)).catch(() => {}); // the server may be gone
    await assertDropped(ch, "protocol", "longer stream");
  });
  assert.match(S.stderr(), /connection dropped: peer sent more than the announced 299999 bytes/);
});

Deno.test("lying client: setuid, setgid, sticky and file-type bits in a mode never reach the disk", async () => {
  const data = enc.encode("mode test\n");
  const cases: [string, number, number][] = [
    ["setuid", 0o4755, 0o755],
    ["setgid+sticky", 0o3777, 0o777],
    ["directory type bits", 0o40755, 0o755],
    ["all bits", 0o177777, 0o777],
  ];
  const ch = await liar(S);
  try {
    for (const [what, mode, expect] of cases) {
      for (const pipelined of [false, true]) {
        const name = `mode-${mode.toString(8)}-${pipelined ? "p" : "s"}.bin`;
        let r;
        if (pipelined) {
          await ch.sendMessage(put(name, data.length, { mode, pipelined: true }));
          await ch.sendStream(once(data));
          await ch.sendMessage(trailer(data));
          r = await ch.recvMessage();
        } else {
          r = await plainPut(ch, put(name, data.length, { mode }), data, trailer(data));
        }
        assert.equal(r.ok, true, `${what}: ${JSON.stringify(r)}`);
        const st = await Deno.lstat(join(S.root, name));
        assert.ok(st.isFile, `${what}: not a regular file`);
        assert.equal(st.mode! & 0o7777, expect, `${what} (${pipelined ? "pipelined" : "single"})`);
        await Deno.remove(join(S.root, name));
      }
      // A folder's mode too (mkdir, as upload -r sends it).
      await ch.sendMessage({ op: "mkdir", name: "mode-dir", mode });
      assert.equal((await ch.recvMessage()).ok, true, `mkdir ${what}`);
      const st = await Deno.lstat(join(S.root, "mode-dir"));
      assert.ok(st.isDirectory);
      assert.equal(st.mode! & 0o7777, expect, `mkdir ${what}`);
      await Deno.remove(join(S.root, "mode-dir"));
    }
  } finally {
    await ch.close();
  }
  await assertServing(S, WORK);
});

Deno.test("lying client: a name carried after the request (trailer, resume answer) is ignored; bad names are refused", async () => {
  const data = enc.encode("named\n");
  // A trailer naming another file: the file is stored under the request's name only.
  await lieTo("name in the trailer", async (ch) => {
    const r = await plainPut(
      ch,
      put("named.bin", data.length),
      data,
      trailer(data, { name: "other.bin", op: "put" }),
    );
    assert.equal(r.ok, true, JSON.stringify(r));
  }, { allowed: { "named.bin": `file 644 ${data.length} ${sha256(data)}` } });
  assert.deepEqual(await listTree(S.root).then((l) => l.filter((p) => !p.startsWith("."))), [
    "named.bin",
  ]);
  await Deno.remove(join(S.root, "named.bin"));

  // Names the server must refuse, as single and pipelined puts: nothing is created anywhere.
  const bad = [
    "../escape.bin",
    "/abs.bin",
    "a/../../escape.bin",
    `${TEMP_PREFIX}x.bin`,
    `${STAGING_DIR}/x.bin`,
    "d//x.bin",
    "nul\0.bin",
  ];
  await lieTo("bad names", async (ch) => {
    for (const name of bad) {
      await ch.sendMessage(put(name, data.length));
      assertRefused(await ch.recvMessage(), "bad-name", /invalid file name/, `single ${name}`);
      await ch.sendMessage(put(name, data.length, { pipelined: true }));
      await ch.sendStream(once(data));
      await ch.sendMessage(trailer(data));
      assertRefused(await ch.recvMessage(), "bad-name", /invalid file name/, `pipelined ${name}`);
    }
    await assertInStep(ch, "after bad names");
  });
  assert.deepEqual(await listTree(join(S.dir, "..")).then((l) => l.includes("escape.bin")), false);
});

// ---------------------------------------------------------------------------
// Pipelined puts

/** Sends a pipelined put of `data` with the given trailer (no reply read). */
async function pipelined(
  ch: SecureChannel,
  name: string,
  size: number,
  data: Uint8Array,
  t: Record<string, unknown>,
) {
  await ch.sendMessage(put(name, size, { pipelined: true }));
  await ch.sendStream(once(data));
  await ch.sendMessage(t);
}

Deno.test("lying client, pipelined puts: each lie among honest files is refused in order; the honest ones land", async () => {
  const a = bytes(5000, 11);
  const b = bytes(6000, 12);
  const c = bytes(7000, 13);
  const short = b.subarray(0, 5000);
  const entry = (d: Uint8Array) => `file 644 ${d.length} ${sha256(d)}`;
  await lieTo("pipelined lies", async (ch) => {
    await pipelined(ch, "p-a.bin", a.length, a, trailer(a));
    await pipelined(ch, "p-b.bin", b.length, b, trailer(b, { sha256: WRONG_SHA })); // hash
    await pipelined(ch, "p-b.bin", b.length, short, trailer(short, { bytes: b.length })); // short
    await pipelined(ch, "p-b.bin", b.length, b, trailer(b, { bytes: b.length + 1 })); // size
    await pipelined(ch, "p-b.bin", b.length, b, trailer(bytes(b.length, 99))); // other file
    await pipelined(ch, "p-c.bin", c.length, c, trailer(c));
    // The same name again with force, lying about its hash: the first copy stays.
    await ch.sendMessage(put("p-a.bin", a.length, { pipelined: true, force: true }));
    await ch.sendStream(once(c.subarray(0, a.length)));
    await ch.sendMessage(trailer(a));
    const replies = [];
    for (let i = 0; i < 7; i++) replies.push(await ch.recvMessage());
    assert.deepEqual(replies[0], { ok: true, sha256: sha256(a), bytes: a.length });
    assertRefused(replies[1], "error", /file hash mismatch/, "pipelined wrong hash");
    assertRefused(replies[2], "error", /size mismatch/, "pipelined short");
    assertRefused(replies[3], "error", /size mismatch/, "pipelined trailer size");
    assertRefused(replies[4], "error", /file hash mismatch/, "pipelined other file");
    assert.deepEqual(replies[5], { ok: true, sha256: sha256(c), bytes: c.length });
    assertRefused(replies[6], "error", /file hash mismatch/, "pipelined forced, wrong hash");
    await assertInStep(ch, "after pipelined lies");
  }, { allowed: { "p-a.bin": entry(a), "p-c.bin": entry(c) } });
  for (const n of ["p-a.bin", "p-c.bin"]) await Deno.remove(join(S.root, n));
});

Deno.test("lying client, pipelined put: a stream longer than announced ends the session", async () => {
  const data = bytes(4000, 21);
  await lieTo("pipelined long", async (ch) => {
    await pipelined(ch, "p-long.bin", data.length - 100, data, trailer(data));
    await assertDropped(ch, "protocol", "pipelined longer stream");
  });
});

// ---------------------------------------------------------------------------
// Resumed puts

const RESUME_SIZE = 3 * DATA_CHUNK + 1234;
const RESUME_DATA = bytes(RESUME_SIZE, 31);

/**
 * Leaves a partial of `name` on the server: a resumable put whose connection
 * is cut after its first DATA record arrived. Returns the partial's length.
 */
async function makePartial(name: string): Promise<number> {
  const drops = () => S.stderr().match(/connection dropped/g)?.length ?? 0;
  const dropped = drops();
  const ch = await liar(S);
  let release!: () => void;
  const stop = new Promise<void>((r) => release = r);
  await ch.sendMessage(put(name, RESUME_SIZE, { resume: true }));
  assert.deepEqual(await ch.recvMessage(), { ok: true, offset: 0 });
  await ch.sendMessage({ offset: 0 });
  assert.deepEqual(await ch.recvMessage(), { ok: true, offset: 0 });
  const sending = ch.sendStream((async function* () {
    yield RESUME_DATA.slice(0, DATA_CHUNK);
    yield RESUME_DATA.slice(DATA_CHUNK, 2 * DATA_CHUNK); // held back, never sent with END
    await stop;
    throw new Error("cut");
  })()).catch(() => {});
  await waitFor(async () => await partialSize(name) === DATA_CHUNK, {
    timeoutMs: 30_000,
    what: "the first DATA record written to the partial",
  });
  ch.abort();
  release();
  await sending;
  // The server keeps the partial when it sees the cut: wait for its log line.
  await waitFor(() => drops() > dropped, { timeoutMs: 30_000, what: "the cut logged" });
  return DATA_CHUNK;
}

/** Opens a resumable put of `name`; returns the offer. */
async function offer(ch: SecureChannel, name: string): Promise<number> {
  await ch.sendMessage(put(name, RESUME_SIZE, { resume: true }));
  const r = await ch.recvMessage();
  assert.equal(r.ok, true, JSON.stringify(r));
  return r.offset as number;
}

Deno.test("lying client, resumed put: a resume offset other than 0 or the offer is refused", async () => {
  const P = await makePartial("res-offset.bin");
  await lieTo("resume offset lies", async (ch) => {
    for (const lie of [P + 1, P - 1, RESUME_SIZE, 2 ** 53]) {
      assert.equal(await offer(ch, "res-offset.bin"), P);
      await ch.sendMessage({ offset: lie, prefixSha256: sha256(RESUME_DATA.subarray(0, P)) });
      assertRefused(
        await ch.recvMessage(),
        "bad-request",
        /offset must be 0 or the offered length|offset must be a non-negative integer/,
        `answer offset ${lie}`,
      );
    }
    for (const lie of [-1, 1.5, "0", null]) {
      assert.equal(await offer(ch, "res-offset.bin"), P);
      await ch.sendMessage({ offset: lie });
      assertRefused(await ch.recvMessage(), "bad-request", /offset/, `answer offset ${lie}`);
    }
    await assertInStep(ch, "after offset lies");
  });
  assert.equal(await partialSize("res-offset.bin"), P, "the partial is kept as it was");
});

Deno.test("lying client, resumed put: a wrong prefix hash restarts from 0; streaming from the offer anyway is refused", async () => {
  const P = await makePartial("res-prefix.bin");
  await lieTo("resume prefix lies", async (ch) => {
    assert.equal(await offer(ch, "res-prefix.bin"), P);
    // The hash of other bytes: the server does not go on from P.
    await ch.sendMessage({ offset: P, prefixSha256: sha256(bytes(P, 5)) });
    assert.deepEqual(await ch.recvMessage(), { ok: true, offset: 0 });
    // The liar streams from P anyway, with the whole file's hash in the trailer.
    const rest = RESUME_DATA.subarray(P);
    await ch.sendStream(once(rest));
    await ch.sendMessage({ ok: true, sha256: sha256(RESUME_DATA), bytes: rest.length });
    assertRefused(
      await ch.recvMessage(),
      "error",
      /size mismatch/,
      "stream from the refused offset",
    );
    // A malformed prefix hash is a bad request.
    assert.equal(typeof await offer(ch, "res-prefix.bin"), "number");
    await ch.sendMessage({ offset: 0, prefixSha256: "zz" });
    const r = await ch.recvMessage();
    // offset 0 with a junk hash: 0 means start over, the hash is not looked at.
    assert.deepEqual(r, { ok: true, offset: 0 });
    await ch.sendStream(once(new Uint8Array(0)));
    await ch.sendMessage(trailer(new Uint8Array(0)));
    assertRefused(await ch.recvMessage(), "error", /size mismatch/, "empty stream");
    await assertInStep(ch, "after prefix lies");
  });
});

Deno.test("lying client, resumed put: a matching prefix with a wrong whole-file hash or size is refused; a hash mismatch drops the partial", async () => {
  /** Proves the genuine prefix of the partial of `name`; returns the offset the server goes on from. */
  const goOn = async (ch: SecureChannel, name: string, P: number) => {
    assert.equal(await offer(ch, name), P);
    await ch.sendMessage({ offset: P, prefixSha256: sha256(RESUME_DATA.subarray(0, P)) });
    assert.deepEqual(await ch.recvMessage(), { ok: true, offset: P });
  };
  const P1 = await makePartial("res-size.bin");
  await lieTo("resume, trailer bytes lie", async (ch) => {
    await goOn(ch, "res-size.bin", P1);
    const rest = RESUME_DATA.subarray(P1);
    await ch.sendStream(once(rest));
    await ch.sendMessage({ ok: true, sha256: sha256(RESUME_DATA), bytes: rest.length + 1 });
    assertRefused(await ch.recvMessage(), "error", /size mismatch/, "resume trailer bytes");
    await assertInStep(ch, "after a resumed size mismatch");
  });
  // The partial holds only bytes of authenticated records, and is kept.
  assert.equal(await partialSize("res-size.bin"), RESUME_SIZE, "partial after a size mismatch");

  const P2 = await makePartial("res-hash.bin");
  await lieTo("resume, other bytes after the prefix", async (ch) => {
    await goOn(ch, "res-hash.bin", P2);
    // Other bytes after the genuine prefix, and the hash of the genuine whole file.
    const other = bytes(RESUME_SIZE - P2, 77);
    await ch.sendStream(once(other));
    await ch.sendMessage({ ok: true, sha256: sha256(RESUME_DATA), bytes: other.length });
    assertRefused(await ch.recvMessage(), "error", /file hash mismatch/, "resume wrong hash");
    await assertInStep(ch, "after a resumed hash mismatch");
  });
  assert.equal(await partialSize("res-hash.bin"), null, "a hash mismatch deletes the partial");
});

Deno.test("lying client, resumed put: a stream longer than what is left ends the session", async () => {
  const name = "res-long.bin";
  const P = await makePartial(name);
  await lieTo("resume, long", async (ch) => {
    assert.equal(await offer(ch, name), P);
    await ch.sendMessage({ offset: P, prefixSha256: sha256(RESUME_DATA.subarray(0, P)) });
    assert.deepEqual(await ch.recvMessage(), { ok: true, offset: P });
    await ch.sendStream(once(RESUME_DATA)); // the whole file again: P bytes too many
    await ch.sendMessage(trailer(RESUME_DATA)).catch(() => {});
    await assertDropped(ch, "protocol", "resumed longer stream");
  });
  // Clean up the partials these tests left (the server's sweep would, after its TTL).
  await Deno.remove(join(S.root, STAGING_DIR), { recursive: true }).catch(() => {});
});

// ---------------------------------------------------------------------------
// Folder uploads (the requests `upload -r` sends)

Deno.test("lying client, folder upload: names leading out are refused, link targets stay data", async () => {
  const outside = join(S.dir, "outside");
  await Deno.mkdir(outside);
  // An existing link in the root that leads outside it (put there by someone else).
  await Deno.symlink(outside, join(S.root, "esc"));
  const data = enc.encode("folder file\n");
  const allowed: Record<string, string> = { d: "dir" };
  try {
    await lieTo("folder lies", async (ch) => {
      // The honest start of `upload -r d`: mkdir d.
      await ch.sendMessage({ op: "mkdir", name: "d" });
      assert.equal((await ch.recvMessage()).ok, true);
      const refused = async (req: Record<string, unknown>, code: string, re: RegExp) => {
        await ch.sendMessage(req);
        assertRefused(await ch.recvMessage(), code, re, JSON.stringify(req));
      };
      const accepted = async (req: Record<string, unknown>) => {
        await ch.sendMessage(req);
        assert.equal((await ch.recvMessage()).ok, true, JSON.stringify(req));
      };
      const BAD = /invalid file name|not allowed|backslashes/;
      const LINK = /is a link on the server, and links are never followed/;
      await refused({ op: "mkdir", name: "../up" }, "bad-name", BAD);
      await refused({ op: "mkdir", name: "d/../../up" }, "bad-name", BAD);
      await refused({ op: "mkdir", name: "/abs" }, "bad-name", BAD);
      await refused({ op: "mkdir", name: `d/${TEMP_PREFIX}x` }, "bad-name", BAD);
      await refused({ op: "mkdir", name: "esc/sub" }, "not-a-file", LINK);
      await refused({ op: "symlink", name: "esc/l", target: "x" }, "not-a-file", LINK);
      await refused({ op: "symlink", name: "../l", target: "x" }, "bad-name", BAD);
      await refused(put("esc/f.bin", data.length), "not-a-file", LINK);
      // Link targets are data: stored as given, never a filesystem link, never followed.
      for (const target of ["../../x", "/etc/passwd", "a\\..\\..\\x"]) {
        await accepted({ op: "symlink", name: "d/l", target, force: true });
      }
      await accepted({ op: "symlink", name: "d/up", target: ".." });
      await accepted({ op: "symlink", name: "x", target: "d/up/.." });
      await refused(put("x/f.bin", data.length), "not-a-file", LINK);
      await refused(put("d/up/f.bin", data.length), "not-a-file", LINK);
      await refused({ op: "mkdir", name: "d/l/sub" }, "not-a-file", LINK);
      // A pipelined put through the outside link: drained and refused.
      await pipelined(ch, "esc/p.bin", data.length, data, trailer(data));
      assertRefused(await ch.recvMessage(), "not-a-file", LINK, "pipelined through esc");
      await assertInStep(ch, "after folder lies");
      // The three records are regular files: no link was made on the server.
      for (const name of ["d/l", "d/up", "x"]) {
        const st = await Deno.lstat(join(S.root, name));
        assert.ok(st.isFile && !st.isSymlink, `${name} is not a link record`);
      }
      const snap = await storage();
      for (const name of ["d/l", "d/up", "x"]) allowed[name] = snap[name];
    }, { allowed });
    assert.deepEqual(await listTree(outside), [], "something was written outside the root");
  } finally {
    await Deno.remove(join(S.root, "esc"));
    await Deno.remove(join(S.root, "d"), { recursive: true });
    await Deno.remove(join(S.root, "x")).catch(() => {});
    await Deno.remove(outside, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
// The lying server against the real CLI

/** Asserts exit 1 and exactly one stderr line `efx: ...` matching `re`. */
function assertOneFailure(r: EfxResult, re: RegExp, what: string): void {
  assertExit(r, 1, what);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `${what}: one line expected:\n${r.stderr}`);
  assert.match(lines[0], /^efx: /, what);
  assert.match(lines[0], re, what);
}

/** A fresh folder for one CLI run, removed afterwards. */
async function inWork(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await makeWorkDir("efx-lying-cli-");
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * A server that answers `get` with `meta`, then streams `data` and sends
 * `t` as the trailer; `tree`/`ls` with `tree` when given.
 */
function lyingDownloads(
  meta: (req: Record<string, unknown>) => Record<string, unknown>,
  data: (req: Record<string, unknown>) => Uint8Array,
  t: (req: Record<string, unknown>, sent: Uint8Array) => Record<string, unknown>,
  tree?: Record<string, unknown>[],
) {
  return startFakeServer(async (ch) => {
    while (true) {
      const req = await ch.recvMessageOrClose();
      if (req === null) return;
      if (req.op === "get") {
        const m = meta(req);
        await ch.sendMessage(m);
        if (m.ok !== true) continue;
        const d = data(req);
        await ch.sendStream(once(d));
        await ch.sendMessage(t(req, d));
      } else if (req.op === "tree" && tree) {
        await ch.sendMessage({ ok: true, entries: tree, more: false });
      } else if (req.op === "ls" && tree) {
        const top = { name: req.pattern, type: "dir", size: 0, mode: 0o755, mtime: 0 };
        await ch.sendMessage({ ok: true, entries: [top], more: false });
      } else {
        await ch.sendMessage({ ok: false, code: "bad-request", message: "not scripted" });
      }
    }
  });
}

const FILE = bytes(700_000, 41);
const META = { ok: true, size: FILE.length, mode: 0o644, mtime: 1_700_000_000_000, offset: 0 };

Deno.test("lying server, download: wrong hash, wrong trailer size, extra or missing bytes: exit 1, one line, no file", async () => {
  const cases: [string, Parameters<typeof lyingDownloads>, RegExp][] = [
    ["wrong hash", [() => META, () => FILE, () => trailer(FILE, { sha256: WRONG_SHA })], /hash/],
    ["hash of another file", [
      () => META,
      () => FILE,
      () => trailer(bytes(FILE.length, 3)),
    ], /hash mismatch/],
    ["other bytes, the genuine hash", [
      () => META,
      () => bytes(FILE.length, 4),
      () => trailer(FILE),
    ], /hash mismatch/],
    [
      "trailer size",
      [() => META, () => FILE, () => trailer(FILE, { bytes: FILE.length - 1 })],
      /size/,
    ],
    ["fewer bytes", [
      () => META,
      () => FILE.subarray(0, FILE.length - 1),
      (_r, d) => trailer(d),
    ], /size mismatch/],
    ["fewer bytes, their hash and the announced size in the trailer", [
      () => META,
      () => FILE.subarray(0, FILE.length - 1),
      (_r, d) => trailer(d, { bytes: FILE.length }),
    ], /size mismatch/],
    [
      "extra bytes",
      [() => ({ ...META, size: FILE.length - 5 }), () => FILE, (_r, d) => trailer(d)],
      /more than the announced/,
    ],
  ];
  for (const [what, args, re] of cases) {
    const fake = await lyingDownloads(...args);
    try {
      await inWork(async (dir) => {
        await Deno.writeTextFile(join(dir, "keep.txt"), "mine\n");
        const before = await snapshotTree(dir);
        for (const extra of [[], ["--resume"], ["--force", "-o", "keep.txt"]]) {
          const r = await efx(["download", "f.bin", ...extra, ...clientArgs(fake)], { cwd: dir });
          assertOneFailure(r, re, `${what} ${extra.join(" ")}`);
          const after = await snapshotTree(dir);
          // A resumable download keeps its partial (only authenticated bytes); nothing else.
          for (const k of Object.keys(after)) if (k === ".f.bin.efx-partial") delete after[k];
          assert.deepEqual(after, before, `${what} ${extra.join(" ")}: local files changed`);
        }
      });
    } finally {
      await fake.close();
    }
  }
});

Deno.test("lying server, resumed download: an impossible offset or a wrong whole-file hash commits nothing", async () => {
  const P = 300_000;
  await inWork(async (dir) => {
    const part = join(dir, ".f.bin.efx-partial");
    const cases: [string, Parameters<typeof lyingDownloads>, RegExp][] = [
      ["offset not ours", [
        () => ({ ...META, offset: P - 1 }),
        () => FILE.subarray(P - 1),
        () => trailer(FILE, { bytes: FILE.length - P + 1 }),
      ], /bad resume offset/],
      ["offset past the size", [
        () => ({ ...META, offset: FILE.length + 1 }),
        () => new Uint8Array(0),
        () => trailer(FILE, { bytes: 0 }),
      ], /bad offset|bad resume offset/],
      ["our offset, then a wrong whole-file hash", [
        (req) => ({ ...META, offset: req.offset }),
        (req) => bytes(FILE.length - Number(req.offset), 8),
        (req) => trailer(FILE, { bytes: FILE.length - Number(req.offset) }),
      ], /hash mismatch/],
    ];
    for (const [what, args, re] of cases) {
      await Deno.writeFile(part, FILE.subarray(0, P), { mode: 0o600 });
      const fake = await lyingDownloads(...args);
      try {
        const r = await efx(["download", "f.bin", "--resume", ...clientArgs(fake)], { cwd: dir });
        assertOneFailure(r, re, what);
        const left = (await listTree(dir)).filter((p) => p !== ".f.bin.efx-partial");
        assert.deepEqual(left, [], `${what}: local files left`);
      } finally {
        await fake.close();
      }
    }
  });
});

Deno.test("lying server, download -r: a file with a wrong hash inside a folder is not committed", async () => {
  const tree = [
    { name: "base/good.txt", type: "file", size: 5, mode: 0o644, mtime: 0 },
    { name: "base/bad.bin", type: "file", size: FILE.length, mode: 0o644, mtime: 0 },
  ];
  const good = enc.encode("good\n");
  const fake = await lyingDownloads(
    (req) => req.name === "base/good.txt" ? { ...META, size: good.length } : META,
    (req) => req.name === "base/good.txt" ? good : FILE,
    (req, d) => req.name === "base/good.txt" ? trailer(d) : trailer(d, { sha256: WRONG_SHA }),
    tree,
  );
  try {
    await inWork(async (dir) => {
      const r = await efx(["download", "-r", "base", "-o", "dl", ...clientArgs(fake)], {
        cwd: dir,
      });
      assertOneFailure(r, /hash mismatch/, "download -r with a lying file");
      const files = await listTree(dir);
      assert.ok(!files.some((p) => p.endsWith("bad.bin")), `committed: ${files.join(", ")}`);
      assert.deepEqual(files.filter((p) => p.includes(TEMP_PREFIX)), [], "temp files left");
    });
  } finally {
    await fake.close();
  }
});

Deno.test("lying server, listing: a malformed listing is an error (one line), names cannot carry escape sequences", async () => {
  const replies: [string, Record<string, unknown>[], RegExp | null][] = [
    ["entries not a list", [{ ok: true, entries: "x", more: false }], /malformed listing/],
    ["no ok field", [{ entries: [], more: false }], /malformed reply/],
    ["an error after a first batch", [
      {
        ok: true,
        entries: [{ name: "a", type: "file", size: 1, mode: 0o644, mtime: 0 }],
        more: true,
      },
      { ok: false, code: "io", message: "gone" },
    ], /gone/],
    ["escape sequences in a name", [{
      ok: true,
      entries: [{ name: "x\x1b[2J\x1b]0;pwned\x07", type: "file", size: 1, mode: 0o644, mtime: 0 }],
      more: false,
    }], null],
  ];
  for (const [what, msgs, re] of replies) {
    const fake = await startFakeServer(async (ch) => {
      const req = await ch.recvMessage();
      assert.equal(req.op, "ls");
      for (const m of msgs) await ch.sendMessage(m);
      await ch.recvMessageOrClose().catch(() => null);
    });
    try {
      const r = await efx(["ls", ...clientArgs(fake)]);
      if (re) assertOneFailure(r, re, what);
      else {
        assertExit(r, 0, what);
        // deno-lint-ignore no-control-regex
        assert.doesNotMatch(r.stdout + r.stderr, /[\x00-\x08\x0b-\x1f\x7f]/, what);
      }
    } finally {
      await fake.close();
    }
  }
});

Deno.test("lying server: escape sequences in an ALERT or an error reply never reach the terminal", async () => {
  const evil = "boom\x1b]0;pwned\x07\x1b[2J\x9b31m";
  const answers: [string, (ch: SecureChannel) => Promise<void>][] = [
    ["ALERT record", (ch) => ch.sendAlert("error", evil)],
    ["error reply", (ch) => ch.sendMessage({ ok: false, code: "x\x1b[2J", message: evil })],
  ];
  for (const [what, answer] of answers) {
    const fake = await startFakeServer(async (ch) => {
      await ch.recvMessage();
      await answer(ch);
      await ch.recvMessageOrClose().catch(() => null);
    });
    try {
      const r = await efx(["rm", "a", ...clientArgs(fake)]);
      assertOneFailure(r, /boom/, what);
      assert.doesNotMatch(
        r.stderr,
        // deno-lint-ignore no-control-regex
        /[\x00-\x08\x0b-\x1f\x7f-\x9f]/,
        `${what}: ${JSON.stringify(r.stderr)}`,
      );
    } finally {
      await fake.close();
    }
  }
});

/**
 * A server that receives any upload honestly (plain, pipelined or resumable)
 * and then answers with `result(real)` instead of the truth.
 */
function lyingUploads(
  result: (real: { sha256: string; bytes: number }) => Record<string, unknown>,
) {
  return startFakeServer(async (ch) => {
    while (true) {
      const req = await ch.recvMessageOrClose();
      if (req === null) return;
      if (req.op !== "put") {
        await ch.sendMessage({ ok: true });
        continue;
      }
      if (!req.pipelined) {
        await ch.sendMessage({ ok: true, offset: 0 });
        if (req.resume) {
          await ch.recvMessage(); // the answer
          await ch.sendMessage({ ok: true, offset: 0 });
        }
      }
      const parts: Uint8Array[] = [];
      for await (const c of ch.recvStream()) parts.push(c.slice());
      const t = await ch.recvMessage();
      const n = parts.reduce((s, p) => s + p.length, 0);
      assert.equal(t.bytes, n);
      await ch.sendMessage(result({ sha256: String(t.sha256), bytes: n }));
    }
  });
}

Deno.test("lying server, upload: a stored hash or size other than what was sent is an integrity failure", async () => {
  const results: [string, (real: { sha256: string; bytes: number }) => Record<string, unknown>][] =
    [
      ["other hash", (r) => ({ ok: true, sha256: WRONG_SHA, bytes: r.bytes })],
      ["fewer bytes", (r) => ({ ok: true, sha256: r.sha256, bytes: r.bytes - 1 })],
      ["more bytes", (r) => ({ ok: true, sha256: r.sha256, bytes: r.bytes + 1 })],
      ["no hash", (r) => ({ ok: true, bytes: r.bytes })],
    ];
  await inWork(async (dir) => {
    const small = join(dir, "small.bin"); // pipelined by the CLI (at most 1 MiB)
    const big = join(dir, "big.bin"); // a plain put
    await Deno.writeFile(small, bytes(10_000, 51));
    await Deno.writeFile(big, bytes(1_500_000, 52));
    const before = await snapshotTree(dir, { withMtime: true });
    for (const [what, result] of results) {
      const fake = await lyingUploads(result);
      try {
        for (const [file, extra] of [[small, []], [big, []], [big, ["--resume"]]] as const) {
          const r = await efx(["upload", file, ...extra, ...clientArgs(fake)], { cwd: dir });
          const label = `${what}: upload ${file.endsWith("small.bin") ? "small" : "big"} ${
            extra.join(" ")
          }`;
          assertOneFailure(
            r,
            what === "no hash" ? /malformed/ : /server stored a different file/,
            label,
          );
        }
      } finally {
        await fake.close();
      }
    }
    assert.deepEqual(await snapshotTree(dir, { withMtime: true }), before, "local files changed");
  });
  // The honest answer, as a control: exit 0.
  const fake = await lyingUploads((r) => ({ ok: true, ...r }));
  try {
    await inWork(async (dir) => {
      await Deno.writeFile(join(dir, "f.bin"), bytes(10_000, 53));
      assertExit(await efx(["upload", "f.bin", ...clientArgs(fake)], { cwd: dir }), 0, "control");
    });
  } finally {
    await fake.close();
  }
});

Deno.test("lying peers: the shared server logged no internal error and stops cleanly", async () => {
  assert.doesNotMatch(S.stderr(), /internal error/);
  const status = await S.stop();
  assert.equal(status.code, 0, S.stderr());
});
