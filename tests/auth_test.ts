/**
 * Client authorization: the authorized-clients file, `efx keygen --client`,
 * `--identity` (and the default keys/client.key.pem), rights, `--read-only`,
 * revocation, and the binding of the client's signature to its session.
 *
 * The CLI runs as subprocesses against real `efx serve` subprocesses on
 * loopback; the transcript-binding test drives SecureChannel directly.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/auth_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  clientAuthMessage,
  type ClientIdentity,
  loadClientIdentity,
  parseAuthorizedClients,
  verifyClientAuth,
} from "../src/auth.ts";
import { SecureChannel } from "../src/channel.ts";
import { AuthError, UsageError } from "../src/errors.ts";
import { writeKeyPair } from "../src/keys.ts";
import {
  assertExit,
  assertSameFile,
  clientArgs,
  efx,
  type EfxResult,
  makeWorkDir,
  randomFile,
  startServer,
  type TestServer,
  testServerKey,
  waitFor,
} from "./helpers/server.ts";

// A fingerprint-shaped string (43 base64 characters, the last one of the 16 allowed).
const FP_X = "SHA256:" + "A".repeat(42) + "Q";
const FP_Y = "SHA256:" + "B".repeat(42) + "g";

// ---------------------------------------------------------------------------
// The file format

Deno.test("parseAuthorizedClients: comments, blank lines, rights, CRLF", () => {
  const text = [
    "# efx authorized clients",
    "",
    `${FP_X}`,
    `   ${FP_Y} rights=read   # laptop of B`,
    "\t",
    `sha256:${"C".repeat(42)}w= rights=write`,
    `SHA256:${"D".repeat(42)}A rights=rw #`,
    "   # indented comment",
  ].join("\r\n");
  const m = parseAuthorizedClients(text, "ac");
  assert.deepEqual([...m.entries()], [
    [FP_X, "rw"],
    [FP_Y, "read"],
    [`SHA256:${"C".repeat(42)}w`, "write"],
    [`SHA256:${"D".repeat(42)}A`, "rw"],
  ]);
  assert.equal(parseAuthorizedClients("", "ac").size, 0);
  assert.equal(parseAuthorizedClients("# nobody\n\n", "ac").size, 0);
  // The last rights option wins; a repeated fingerprint takes the later line.
  const again = parseAuthorizedClients(
    `${FP_X} rights=read rights=write\n${FP_Y}\n${FP_Y} rights=read`,
    "ac",
  );
  assert.equal(again.get(FP_X), "write");
  assert.equal(again.get(FP_Y), "read");
});

Deno.test("parseAuthorizedClients: a malformed line is a UsageError naming file and line", () => {
  const cases: [string, number, RegExp][] = [
    [
      `${FP_X}\n\nnot-a-fingerprint\n`,
      3,
      /expected a SHA256:\.\.\. fingerprint, found 'not-a-fingerprint'/,
    ],
    [`# c\n${FP_X} rights=admin`, 2, /unknown option 'rights=admin'/],
    [`${FP_X} read`, 1, /unknown option 'read'/],
    [`${FP_X}\n${FP_Y}\n\n# x\nSHA256:short`, 5, /fingerprint/],
    [`${FP_X},${FP_Y}`, 1, /fingerprint/],
    [`${FP_X}\r\nSHA1:abc rights=rw\r\n`, 2, /fingerprint/],
  ];
  for (const [text, line, re] of cases) {
    assert.throws(() => parseAuthorizedClients(text, "/etc/efx/clients"), (err) => {
      assert.ok(err instanceof UsageError, String(err));
      assert.equal(err.exitCode, 2);
      assert.ok(
        err.message.startsWith(`/etc/efx/clients:${line}: `),
        `want line ${line}: ${err.message}`,
      );
      assert.match(err.message, re);
      return true;
    });
  }
});

// ---------------------------------------------------------------------------
// Keys and a server admitting only listed clients

interface Client {
  path: string;
  fingerprint: string;
}

const KEYS = await makeWorkDir("efx-auth-keys-");
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(KEYS, { recursive: true });
  } catch { /* removed by the last test */ }
});

async function clientKey(name: string): Promise<Client> {
  const dir = join(KEYS, name);
  const r = await writeKeyPair(dir, { bits: 2048, prefix: "client" });
  return { path: r.privatePath, fingerprint: r.fingerprint };
}

const [RW, READER, WRITER, STRANGER, REVOKED] = await Promise.all(
  ["rw", "reader", "writer", "stranger", "revoked"].map(clientKey),
);

const AC_PATH = join(KEYS, "authorized_clients");
const AC_LINES = [
  "# test clients",
  `${RW.fingerprint}  # full access`,
  `${READER.fingerprint} rights=read`,
  `${WRITER.fingerprint} rights=write # drop box`,
  `${REVOKED.fingerprint} rights=rw`,
];
await Deno.writeTextFile(AC_PATH, AC_LINES.join("\n") + "\n");

/** The server of this file: admits the clients of AC_PATH. Stopped by the last test. */
const S: TestServer = await startServer({ args: ["--authorized-clients", AC_PATH] });

/** The CLI as client `c` (or anonymous with null), connected to `server`, run in `cwd`. */
function as(
  c: Client | null,
  args: string[],
  cwd: string,
  server: TestServer = S,
): Promise<EfxResult> {
  return efx([...args, ...clientArgs(server), ...(c ? ["--identity", c.path] : [])], { cwd });
}

async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await makeWorkDir("efx-auth-work-");
  try {
    await fn(work);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

function countIn(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

/** One `efx: ...` line on stderr matching `re`. */
function assertOneError(r: EfxResult, re: RegExp): void {
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("efx: "));
  assert.ok(lines.some((l) => re.test(l)), `stderr should match ${re}:\n${r.stderr}`);
}

Deno.test("auth: a listed rw client uploads, lists, downloads and removes; -v names its rights", async () => {
  await withWork(async (work) => {
    const sha = await randomFile(join(work, "rw.bin"), 50_000);
    const up = await as(RW, ["upload", "rw.bin", "-v"], work);
    assertExit(up, 0, "upload");
    assert.match(up.stderr, /identity accepted; server granted rw access/);
    await assertSameFile(join(S.root, "rw.bin"), join(work, "rw.bin"));
    const ls = await as(RW, ["ls"], work);
    assertExit(ls, 0, "ls");
    assert.match(ls.stdout, /rw\.bin$/m);
    const down = await as(RW, ["download", "rw.bin", "-o", "back.bin"], work);
    assertExit(down, 0, "download");
    assert.match(down.stdout, new RegExp(sha));
    await assertSameFile(join(work, "back.bin"), join(work, "rw.bin"));
    assertExit(await as(RW, ["rm", "rw.bin"], work), 0, "rm");
    assert.equal(await Deno.lstat(join(S.root, "rw.bin")).catch(() => null), null);
    await S.waitForLog(new RegExp(`authenticated as ${escape(RW.fingerprint)} \\(rw\\)`));
  });
});

Deno.test("auth: an unlisted client is refused (exit 3); the server logs its fingerprint", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(join(work, "x.txt"), "x");
    for (const args of [["ls"], ["upload", "x.txt"], ["download", "x.txt"]]) {
      const r = await as(STRANGER, args, work);
      assertExit(r, 3, args[0]);
      assertOneError(r, /server refused authentication: client key SHA256:\S+ is not authorized/);
      assert.ok(r.stderr.includes(STRANGER.fingerprint), r.stderr);
    }
    await S.waitForLog(
      new RegExp(`refused: client ${escape(STRANGER.fingerprint)} is not authorized`),
    );
    assert.equal(await Deno.lstat(join(S.root, "x.txt")).catch(() => null), null);
  });
});

Deno.test("auth: an anonymous client is refused by a server with --authorized-clients (exit 3)", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(join(work, "anon.txt"), "anonymous");
    await Deno.writeTextFile(join(S.root, "there.txt"), "there");
    for (const args of [["ls"], ["download", "there.txt"], ["upload", "--resume", "anon.txt"]]) {
      const r = await as(null, args, work);
      assertExit(r, 3, args.join(" "));
      assertOneError(
        r,
        /admits only authorized clients; connect with --identity KEY \(make one with 'efx keygen --client'\)/,
      );
    }
    await S.waitForLog(/refused: anonymous client \(no identity key\)/);
    assert.equal(await Deno.lstat(join(S.root, "anon.txt")).catch(() => null), null);
    assert.equal(await Deno.lstat(join(work, "there.txt")).catch(() => null), null);
    await Deno.remove(join(S.root, "there.txt"));
  });
});

Deno.test({
  // Regression (fixed bug): a small file (<= 1 MiB) is uploaded "pipelined" (request, DATA and
  // trailer written back to back without waiting). A server that refuses an
  // anonymous client sends ALERT(auth) and closes as soon as it has read the
  // request, so the client's data write usually fails first and the CLI
  // reports "efx: Broken pipe (os error 32)" with exit 1 instead of the
  // auth refusal with exit 3 (EfxClient.uploadQueued throws the write error
  // without reading the alert that is already waiting). Racy: fails in most
  // of the 6 tries.
  name: "auth: an anonymous small-file upload to a closed server says why, with exit 3",
  fn: async () => {
    await withWork(async (work) => {
      await Deno.writeTextFile(join(work, "small.txt"), "small");
      for (let i = 0; i < 6; i++) {
        const r = await as(null, ["upload", "small.txt"], work);
        assertExit(r, 3, `try ${i}`);
        assertOneError(r, /admits only authorized clients/);
      }
    });
  },
});

Deno.test("auth: rights=read downloads and lists but cannot upload or remove", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(join(S.root, "shared.txt"), "for readers\n");
    await Deno.writeTextFile(join(work, "new.txt"), "new\n");
    const ls = await as(READER, ["ls", "-v"], work);
    assertExit(ls, 0, "ls");
    assert.match(ls.stdout, /shared\.txt$/m);
    assert.match(ls.stderr, /server granted read access/);
    assertExit(await as(READER, ["download", "shared.txt"], work), 0, "download");
    assert.equal(await Deno.readTextFile(join(work, "shared.txt")), "for readers\n");
    const up = await as(READER, ["upload", "new.txt"], work);
    assertExit(up, 1, "upload");
    assertOneError(up, /not permitted: this connection has read-only access/);
    const rm = await as(READER, ["rm", "shared.txt"], work);
    assertExit(rm, 1, "rm");
    assertOneError(rm, /not permitted: this connection has read-only access/);
    assert.equal(await Deno.readTextFile(join(S.root, "shared.txt")), "for readers\n");
    assert.equal(await Deno.lstat(join(S.root, "new.txt")).catch(() => null), null);
    await Deno.remove(join(S.root, "shared.txt"));
  });
});

Deno.test({
  // Regression (fixed bug): when a pipelined put (small file, no --resume) is refused for lack
  // of rights (rights=read, or any client of a --read-only server), the
  // server replies "not permitted" from the rights check in #handle, which
  // does not drain the DATA records and trailer that follow the request (only
  // refusals from #serveRequest do, via drainFile). The next record it reads
  // is DATA where a request is due: it drops the connection ("unexpected data
  // record where a control message was due"), so a second file in the same
  // command fails with "Broken pipe" or "server ended the connection" instead
  // of "not permitted".
  name:
    "auth: rights=read refuses every file of a multi-file upload cleanly, the connection goes on",
  fn: async () => {
    await withWork(async (work) => {
      await Deno.writeTextFile(join(work, "one.txt"), "1");
      await Deno.writeTextFile(join(work, "two.txt"), "2");
      const r = await as(READER, ["upload", "one.txt", "two.txt"], work);
      assertExit(r, 1, "upload");
      const refusals = r.stderr.split("\n").filter((l) => /not permitted/.test(l));
      assert.equal(refusals.length, 2, r.stderr);
      assert.doesNotMatch(r.stderr, /Broken pipe|ended the connection/);
      assert.doesNotMatch(S.stderr(), /unexpected data record where a control message was due/);
    });
  },
});

Deno.test("auth: rights=write uploads but cannot download or list", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(join(work, "dropped.txt"), "into the drop box\n");
    const up = await as(WRITER, ["upload", "dropped.txt", "-v"], work);
    assertExit(up, 0, "upload");
    assert.match(up.stderr, /server granted write access/);
    assert.equal(await Deno.readTextFile(join(S.root, "dropped.txt")), "into the drop box\n");
    const down = await as(WRITER, ["download", "dropped.txt", "-o", "got.txt"], work);
    assertExit(down, 1, "download");
    assertOneError(down, /not permitted: this connection has write-only access/);
    assert.equal(await Deno.lstat(join(work, "got.txt")).catch(() => null), null);
    const ls = await as(WRITER, ["ls"], work);
    assertExit(ls, 1, "ls");
    assertOneError(ls, /not permitted/);
    // Removing is writing.
    assertExit(await as(WRITER, ["rm", "dropped.txt"], work), 0, "rm");
  });
});

Deno.test("auth: removing a client's line revokes it from the next connection on", async () => {
  await withWork(async (work) => {
    assertExit(await as(REVOKED, ["ls"], work), 0, "before revocation");
    const kept = AC_LINES.filter((l) => !l.startsWith(REVOKED.fingerprint));
    await Deno.writeTextFile(AC_PATH, kept.join("\n") + "\n");
    try {
      const r = await as(REVOKED, ["ls"], work);
      assertExit(r, 3, "after revocation");
      assertOneError(r, /is not authorized/);
      await S.waitForLog(
        new RegExp(`refused: client ${escape(REVOKED.fingerprint)} is not authorized`),
      );
      // Everyone else is unaffected.
      assertExit(await as(RW, ["ls"], work), 0, "others");
    } finally {
      await Deno.writeTextFile(AC_PATH, AC_LINES.join("\n") + "\n");
    }
    assertExit(await as(REVOKED, ["ls"], work), 0, "listed again");
  });
});

Deno.test("auth: an unusable authorized-clients file at connection time refuses everyone", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(AC_PATH, AC_LINES.join("\n") + "\nbroken line\n");
    try {
      const r = await as(RW, ["ls"], work);
      assertExit(r, 3, "broken file");
      assertOneError(r, /server misconfigured/);
      await S.waitForLog(/authorized-clients file unusable, refusing everyone: .*:6: /);
    } finally {
      await Deno.writeTextFile(AC_PATH, AC_LINES.join("\n") + "\n");
    }
    assertExit(await as(RW, ["ls"], work), 0, "fixed");
  });
});

/** Connects a bare SecureChannel to `server` (trusting any key: the server is ours). */
async function rawChannel(server: TestServer): Promise<SecureChannel> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  return await SecureChannel.client(conn, {
    verifyServerKey: () => Promise.resolve(),
    handshakeTimeoutMs: 10_000,
  });
}

Deno.test("auth: a signature over another session's transcript is refused (AuthError)", async () => {
  const id: ClientIdentity = await loadClientIdentity(RW.path);
  const a = await rawChannel(S);
  const b = await rawChannel(S);
  try {
    const thA = a.session.transcriptHash;
    const thB = b.session.transcriptHash;
    assert.notDeepEqual(thA, thB);
    const authA = await clientAuthMessage(id, thA);
    // Locally: the message verifies for A only.
    assert.equal(await verifyClientAuth(authA, thA), RW.fingerprint);
    await assert.rejects(verifyClientAuth(authA, thB), AuthError);
    // On the wire: session B presenting A's signature is refused with an auth alert.
    const before = countIn(S.stderr(), "bad signature for this session");
    await b.sendMessage(authA);
    await assert.rejects(b.recvMessage(), (err) => {
      assert.ok(err instanceof AuthError, String(err));
      assert.equal(err.exitCode, 3);
      assert.match(err.message, /server refused authentication: .*bad signature for this session/);
      return true;
    });
    await waitFor(() => countIn(S.stderr(), "bad signature for this session") > before, {
      what: "the server's log line",
    });
    assert.ok(S.stderr().includes(`client ${RW.fingerprint} failed authentication`));
    // Session A itself accepts the very same message.
    await a.sendMessage(authA);
    assert.deepEqual(await a.recvMessage(), {
      ok: true,
      fingerprint: RW.fingerprint,
      rights: "rw",
    });
    await a.sendMessage({ op: "ls" });
    assert.equal((await a.recvMessage()).ok, true);
  } finally {
    await a.close();
    b.abort();
  }
});

Deno.test("auth: a key swapped into another client's auth message, or a second auth, gets nothing", async () => {
  const id = await loadClientIdentity(STRANGER.path);
  const listed = await loadClientIdentity(RW.path);
  const ch = await rawChannel(S);
  try {
    // The stranger signs correctly but claims the listed client's key.
    const msg = await clientAuthMessage(id, ch.session.transcriptHash);
    const forged = { ...msg, key: (await clientAuthMessage(listed, new Uint8Array(32))).key };
    await ch.sendMessage(forged);
    await assert.rejects(ch.recvMessage(), AuthError);
  } finally {
    ch.abort();
  }
  // A listed client may not authenticate twice: the second `auth` is not a request.
  const ch2 = await rawChannel(S);
  try {
    await ch2.sendMessage(await clientAuthMessage(listed, ch2.session.transcriptHash));
    assert.equal((await ch2.recvMessage()).rights, "rw");
    await ch2.sendMessage(await clientAuthMessage(id, ch2.session.transcriptHash));
    const reply = await ch2.recvMessage();
    assert.equal(reply.ok, false);
    assert.equal(reply.code, "bad-request");
  } finally {
    await ch2.close();
  }
});

Deno.test("auth: --read-only refuses uploads for everyone, rw is reduced to read, write-only is refused", async () => {
  const ro = await startServer({ args: ["--read-only"] });
  const roListed = await startServer({ args: ["--read-only", "--authorized-clients", AC_PATH] });
  try {
    await withWork(async (work) => {
      await Deno.writeTextFile(join(work, "up.txt"), "up\n");
      for (const server of [ro, roListed]) {
        await Deno.writeTextFile(join(server.root, "pub.txt"), "published\n");
      }
      // Open read-only server: anonymous and identified clients alike.
      for (const c of [null, RW]) {
        const up = await as(c, ["upload", "up.txt"], work, ro);
        assertExit(up, 1, `upload as ${c ? "rw" : "anonymous"}`);
        assertOneError(up, /not permitted: this connection has read-only access/);
        const down = await as(c, ["download", "pub.txt", "-o", "pub.txt", "-f"], work, ro);
        assertExit(down, 0, "download");
      }
      assert.match(ro.stderr(), /may download and list files/);
      // Read-only server with a list: rw becomes read, write-only is refused at once.
      const up = await as(RW, ["upload", "up.txt", "-v"], work, roListed);
      assertExit(up, 1, "rw upload on read-only");
      assert.match(up.stderr, /server granted read access/);
      assertExit(await as(RW, ["ls"], work, roListed), 0, "rw ls on read-only");
      const w = await as(WRITER, ["ls"], work, roListed);
      assertExit(w, 3, "write-only on read-only");
      for (const server of [ro, roListed]) {
        assert.equal(await Deno.lstat(join(server.root, "up.txt")).catch(() => null), null);
      }
    });
  } finally {
    await ro.stop();
    await roListed.stop();
  }
});

Deno.test("auth: a malformed or missing authorized-clients file stops `efx serve` at start (exit 2)", async () => {
  await withWork(async (work) => {
    const key = await testServerKey();
    await Deno.writeTextFile(join(work, "server.key.pem"), key.privatePem, { mode: 0o600 });
    await Deno.writeTextFile(
      join(work, "clients"),
      `# ok so far\n${RW.fingerprint} rights=read\n\n${READER.fingerprint} rights=everything\n`,
    );
    const serve = (acPath: string) =>
      efx([
        "serve",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--root",
        join(work, "storage"),
        "--key",
        join(work, "server.key.pem"),
        "--authorized-clients",
        acPath,
      ], { cwd: work, timeoutMs: 20_000 });
    const bad = await serve(join(work, "clients"));
    assertExit(bad, 2, "malformed file");
    assert.match(bad.stderr, /^efx: .*clients:4: unknown option 'rights=everything'/m);
    assert.doesNotMatch(bad.stderr, /serving/);
    const missing = await serve(join(work, "nope"));
    assertExit(missing, 2, "missing file");
    assert.match(missing.stderr, /cannot read authorized-clients file .*nope: no such file/);
  });
});

Deno.test("auth: `efx keygen --client` writes client.key.pem/client.pub.pem, picked up from keys/ by default", async () => {
  await withWork(async (work) => {
    const kg = await efx(["keygen", "--client", "--bits", "2048"], { cwd: work });
    assertExit(kg, 0, "keygen");
    const keyPath = join(work, "keys", "client.key.pem");
    const pubPath = join(work, "keys", "client.pub.pem");
    assert.match(await Deno.readTextFile(keyPath), /^-----BEGIN PRIVATE KEY-----/);
    assert.match(await Deno.readTextFile(pubPath), /^-----BEGIN PUBLIC KEY-----/);
    assert.equal((await Deno.stat(keyPath)).mode! & 0o777, 0o600);
    assert.equal(await Deno.lstat(join(work, "keys", "server.key.pem")).catch(() => null), null);
    const fp = kg.stdout.trim().split("\n").at(-1)!;
    assert.match(fp, /^SHA256:[A-Za-z0-9+/]{43}$/);
    const shown = await efx(["fingerprint", pubPath]);
    assert.equal(shown.stdout.trim(), fp);

    // Not listed yet: the default identity is sent, and refused.
    const before = await as(null, ["ls"], work);
    assertExit(before, 3, "default identity, unlisted");
    assert.ok(before.stderr.includes(fp), before.stderr);
    await S.waitForLog(new RegExp(`refused: client ${escape(fp)} is not authorized`));

    await Deno.writeTextFile(AC_PATH, [...AC_LINES, `${fp} rights=read`].join("\n") + "\n");
    try {
      const ok = await as(null, ["ls", "-v"], work);
      assertExit(ok, 0, "default identity, listed");
      assert.match(ok.stderr, /identity accepted; server granted read access/);
      // --identity overrides the default.
      const other = await as(WRITER, ["ls"], work);
      assertExit(other, 1, "explicit --identity wins");
      assertOneError(other, /write-only access/);
      // A missing --identity file is a usage error.
      const missing = await efx(["ls", ...clientArgs(S), "--identity", "nope.pem"], { cwd: work });
      assertExit(missing, 2, "missing identity file");
    } finally {
      await Deno.writeTextFile(AC_PATH, AC_LINES.join("\n") + "\n");
    }
    // Without keys/ in the working folder the client is anonymous again.
    const elsewhere = await makeWorkDir("efx-auth-nokeys-");
    try {
      const anon = await as(null, ["ls"], elsewhere);
      assertExit(anon, 3, "no default identity");
      assertOneError(anon, /admits only authorized clients/);
    } finally {
      await Deno.remove(elsewhere, { recursive: true });
    }
  });
});

Deno.test("auth: the server logged no internal error and stops cleanly", async () => {
  try {
    assert.doesNotMatch(S.stderr(), /internal error/);
  } finally {
    const status = await S.stop();
    await Deno.remove(KEYS, { recursive: true }).catch(() => {});
    assert.equal(status.code, 0);
  }
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}
