/**
 * The client-side and handshake findings of "Hostile clients" (findings 9 to
 * 13), each as a test against a real server on loopback:
 *
 * - 9: a forged handshake ALERT is shown as unverified network text, exit 1;
 * - 10: known_servers comments; a malformed line for the server being
 *   reached fails the connection; `efx known-servers list|remove`; the trust
 *   prompt wants "yes";
 * - 11: `download --resume` never follows or reuses a partial file that is
 *   not a regular file of ours;
 * - 12: every key-confirmation failure runs one RSA-OAEP decryption;
 * - 13: the client waits for the server's CLOSE and reports an ALERT sent
 *   in its place.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/hostile_client_test.ts
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { AuthError, EfxError, RemoteError, TimeoutError } from "../src/errors.ts";
import {
  AlertCode,
  encodeAlert,
  encodeClientHello,
  encodeClientKey,
  encodeHandshakeMessage,
  HandshakeType,
  parseServerHello,
  readHandshakeMessage,
} from "../src/handshake.ts";
import { BufferedReader, writeAll } from "../src/io.ts";
import { loadPublicKeyFile } from "../src/keys.ts";
import { askYesNo, makeServerVerifier } from "../src/trust.ts";
import { flipBit, Mitm, type Tamper } from "./helpers/mitm.ts";
import {
  assertExit,
  clientArgs,
  connectClient,
  efx,
  makeWorkDir,
  randomFile,
  startFakeServer,
  startServer,
  type TestServer,
} from "./helpers/server.ts";

const S: TestServer = await startServer();
const WORK = await makeWorkDir("efx-hostile-client-");
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(WORK, { recursive: true });
  } catch { /* gone */ }
});

let counter = 0;
/** A fresh folder under WORK (no keys/ inside: the CLI sends no identity from it). */
async function scratch(): Promise<string> {
  const d = join(WORK, `t${counter++}`);
  await Deno.mkdir(d);
  return d;
}

function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected, got:\n${stderr}`);
  return lines[0];
}

// ---------------------------------------------------------------------------
// Finding 9: forged handshake alerts

const FORGED = "New fingerprint: SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA, " +
  'reconnect with --accept-new") efx: trust it';

for (const [where, index] of [["SERVER_HELLO", 0], ["SERVER_FINISHED", 1]] as const) {
  Deno.test(`9: a forged AUTH alert in place of ${where} is unverified text, exit 1 (pinned key)`, async () => {
    const forge: Tamper = (f) =>
      f.dir === "s2c" && f.kind === "handshake" && f.index === index
        ? { send: [encodeAlert(AlertCode.AUTH, FORGED)], close: true }
        : "pass";
    const mitm = await Mitm.start({ target: S.port, tamper: forge });
    try {
      const r = await efx(["ls", "--server", mitm.address, "--server-key", S.pubKeyPath], {
        cwd: await scratch(),
      });
      assertExit(r, 1, "a forged handshake alert is not an authentication verdict");
      assert.equal(
        oneLine(r.stderr),
        `efx: server refused the handshake before authentication ` +
          `(unverified message from the network: ${JSON.stringify(FORGED)})`,
      );
    } finally {
      await mitm.close();
    }
  });
}

Deno.test("9: the unverified alert text is sanitized, quoted and bounded", async () => {
  const evil = "\x1b[2J line\r\nnext " + "x".repeat(3000);
  const forge: Tamper = (f) =>
    f.dir === "s2c" && f.kind === "handshake"
      ? { send: [encodeAlert(AlertCode.BUSY, evil)], close: true }
      : "pass";
  const mitm = await Mitm.start({ target: S.port, tamper: forge });
  try {
    const r = await efx(["ls", "--server", mitm.address, "--server-key", S.pubKeyPath], {
      cwd: await scratch(),
    });
    assertExit(r, 1);
    const line = oneLine(r.stderr);
    assert.match(
      line,
      /^efx: server refused the handshake before authentication \(unverified message from the network: "\?\[2J line\?\?next x+\.\.\."\)$/,
    );
    assert.ok(line.length < 400, `bounded: ${line.length} characters`);
  } finally {
    await mitm.close();
  }
});

// ---------------------------------------------------------------------------
// Finding 10: known_servers parsing, the subcommand, the prompt

function fp(spki: Uint8Array): string {
  return "SHA256:" + createHash("sha256").update(spki).digest("base64").replace(/=+$/, "");
}

const KEY_A = new Uint8Array(294).fill(1);
const KEY_B = new Uint8Array(294).fill(2);

async function knownFile(text: string): Promise<string> {
  const file = join(await scratch(), "known_servers");
  await Deno.writeTextFile(file, text);
  return file;
}

Deno.test("10: a trailing comment keeps the entry: another key is refused even with acceptNew", async () => {
  const file = await knownFile(`# my servers\nh:1 ${fp(KEY_A)} # laptop\nh:2 ${fp(KEY_A)}#x\n`);
  const warnings: string[] = [];
  const verify = makeServerVerifier({
    knownServersFile: file,
    acceptNew: true,
    warn: (t) => warnings.push(t),
  });
  assert.equal((await verify("h:1", KEY_A)).status, "known");
  // "#" starts a comment at the start of a line or after a space only; glued
  // to the fingerprint it makes the line malformed, which stops h:2.
  await assert.rejects(verify("h:2", KEY_A), /line 3: malformed entry for h:2/);
  await assert.rejects(verify("h:1", KEY_B), (err: unknown) => {
    assert.ok(err instanceof AuthError);
    assert.match(err.message, /server key for h:1 has changed/);
    return true;
  });
  assert.ok(!(await Deno.readTextFile(file)).includes(fp(KEY_B)), "the other key was not added");
});

Deno.test("10: a malformed line naming the server fails the connection (file and line named); others are skipped", async () => {
  const file = await knownFile(
    [`other:1 SHA256:short`, `h:1 ${fp(KEY_A)} extra`, `h:2 ${fp(KEY_B)}`].join("\n") + "\n",
  );
  const warnings: string[] = [];
  const verify = makeServerVerifier({
    knownServersFile: file,
    acceptNew: true,
    warn: (t) => warnings.push(t),
  });
  await assert.rejects(verify("H:1", KEY_B), (err: unknown) => {
    assert.ok(err instanceof AuthError, String(err));
    assert.equal(
      err.message,
      `${file} line 2: malformed entry for h:1; fix or remove that line ` +
        `(efx known-servers remove h:1)`,
    );
    return true;
  });
  assert.equal((await Deno.readTextFile(file)).split("\n").length, 4, "nothing appended");
  // A malformed line about another server is only a warning.
  assert.equal((await verify("h:2", KEY_B)).status, "known");
  assert.ok(
    warnings.some((w) => w.includes(`${file} line 1: malformed entry ignored`)),
    warnings.join("\n"),
  );
});

Deno.test("10: CLI: a commented entry with another key makes --accept-new refuse (exit 3)", async () => {
  const dir = await scratch();
  const file = join(dir, "known_servers");
  await Deno.writeTextFile(file, `127.0.0.1:${S.port} ${fp(KEY_A)}   # the old key\n`);
  const r = await efx(
    ["ls", "--server", `127.0.0.1:${S.port}`, "--known-servers", file, "--accept-new"],
    { cwd: dir },
  );
  assertExit(r, 3);
  assert.match(r.stderr, /WARNING: SERVER KEY HAS CHANGED/);
  assert.equal(
    await Deno.readTextFile(file),
    `127.0.0.1:${S.port} ${fp(KEY_A)}   # the old key\n`,
    "file untouched",
  );
});

Deno.test("10: efx known-servers list and remove", async () => {
  const dir = await scratch();
  const file = join(dir, "known_servers");
  const text = [
    "# kept comment",
    `h:1 ${fp(KEY_A)} # laptop`,
    `other:7 ${fp(KEY_B)}`,
    `H:1 ${fp(KEY_B)}`,
    `[::1]:9000 ${fp(KEY_A)}`,
    "",
  ].join("\n");
  await Deno.writeTextFile(file, text, { mode: 0o600 });
  const list = await efx(["known-servers", "list", "--known-servers", file], { cwd: dir });
  assertExit(list, 0);
  assert.deepEqual(list.stdout.trim().split("\n"), [
    `h:1 ${fp(KEY_A)}`,
    `other:7 ${fp(KEY_B)}`,
    `H:1 ${fp(KEY_B)}`,
    `[::1]:9000 ${fp(KEY_A)}`,
  ]);
  // Default subcommand is list; EFX_HOME picks the file.
  const viaEnv = await efx(["known-servers"], { cwd: dir, env: { EFX_HOME: dir } });
  assertExit(viaEnv, 0);
  assert.equal(viaEnv.stdout, list.stdout);

  const rm = await efx(["known-servers", "remove", "h:1", "--known-servers", file], { cwd: dir });
  assertExit(rm, 0);
  assert.match(rm.stderr, new RegExp(`removed 2 entries for h:1 from ${file}`));
  assert.equal(
    await Deno.readTextFile(file),
    ["# kept comment", `other:7 ${fp(KEY_B)}`, `[::1]:9000 ${fp(KEY_A)}`, ""].join("\n"),
  );
  assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
  // A bare host removes it on every port; IPv6 in brackets or not.
  const rm6 = await efx(["known-servers", "remove", "::1", "--known-servers", file], { cwd: dir });
  assertExit(rm6, 0);
  assert.equal(
    await Deno.readTextFile(file),
    ["# kept comment", `other:7 ${fp(KEY_B)}`, ""].join("\n"),
  );
  const none = await efx(["known-servers", "remove", "h:1", "--known-servers", file], { cwd: dir });
  assertExit(none, 1);
  assert.equal(oneLine(none.stderr), `efx: no entry for h:1 in ${file}`);
  const bad = await efx(["known-servers", "frobnicate"], { cwd: dir });
  assertExit(bad, 2);
  const help = await efx(["help"], { cwd: dir });
  assert.match(help.stdout, /efx known-servers \[list\|remove HOST\]/);
});

Deno.test("10: the trust prompt wants 'yes'; 'y' is asked again, then declined", async () => {
  const run = async (answers: (string | null)[]) => {
    const asked: string[] = [];
    const result = await askYesNo("Trust it (yes/no)?", {
      write: (t) => asked.push(t),
      readLine: () => Promise.resolve(answers.shift() ?? null),
    });
    return { result, asked, left: answers.length };
  };
  assert.equal((await run(["yes"])).result, true);
  assert.equal((await run([" YES "])).result, true);
  assert.equal((await run(["no"])).result, false);
  assert.equal((await run([null])).result, false);
  const y = await run(["y", "yes"]);
  assert.equal(y.result, true);
  assert.equal(y.asked.length, 2);
  assert.match(y.asked[1], /Please type 'yes' or 'no'/);
  const ys = await run(["y", "y", "y", "y", "yes"]);
  assert.equal(ys.result, false, "three wrong answers are a no");
  assert.equal(ys.left, 2);
});

// ---------------------------------------------------------------------------
// Finding 11: planted partial files

/** Uploads `size` random bytes as `name`; returns their content. */
async function serverFile(name: string, size: number): Promise<Uint8Array> {
  const dir = await scratch();
  const path = join(dir, name);
  await randomFile(path, size);
  const r = await efx(["upload", path, "--force", ...clientArgs(S)], { cwd: dir });
  assertExit(r, 0, "setup upload");
  return await Deno.readFile(path);
}

async function plantAndDownload(
  plant: (partial: string, dir: string) => Promise<void>,
  extra: string[] = [],
) {
  await serverFile("planted.bin", 70_000);
  const dir = await scratch();
  const victim = join(dir, "victim.txt");
  await Deno.writeTextFile(victim, "precious data, not to be overwritten\n");
  const partial = join(dir, ".got.bin.efx-partial");
  await plant(partial, dir);
  const r = await efx(
    ["download", "planted.bin", "-o", join(dir, "got.bin"), "--resume", ...extra, ...clientArgs(S)],
    { cwd: dir },
  );
  const after = await Deno.readFile(victim);
  assert.ok(
    new TextDecoder().decode(after) === "precious data, not to be overwritten\n",
    `victim overwritten (${after.length} bytes now)\n${r.stderr}`,
  );
  return { r, dir, victim, partial };
}

Deno.test("11: download --resume refuses a partial that is a symlink, and leaves it and its target alone", async () => {
  const { r, victim, partial } = await plantAndDownload((partial, dir) =>
    Deno.symlink(join(dir, "victim.txt"), partial)
  );
  assertExit(r, 1);
  assert.match(
    oneLine(r.stderr),
    /^efx: refusing to resume .*got\.bin: its partial file .*\.got\.bin\.efx-partial is a symbolic link, not a partial download of ours; remove it and try again$/,
  );
  assert.ok((await Deno.lstat(partial)).isSymlink, "the link is left as it was");
  assert.equal(await Deno.readLink(partial), victim);
});

Deno.test("11: download --resume does not create the target of a dangling partial symlink", async () => {
  const { r, dir } = await plantAndDownload((partial, dir) =>
    Deno.symlink(join(dir, "created-by-efx.txt"), partial)
  );
  assertExit(r, 1);
  assert.match(r.stderr, /is a symbolic link/);
  await assert.rejects(Deno.lstat(join(dir, "created-by-efx.txt")), Deno.errors.NotFound);
  await assert.rejects(Deno.lstat(join(dir, "got.bin")), Deno.errors.NotFound);
});

Deno.test("11: download --resume refuses a partial that is a hard link to another file", async () => {
  const { r } = await plantAndDownload((partial, dir) =>
    Deno.link(join(dir, "victim.txt"), partial)
  );
  assertExit(r, 1);
  assert.match(r.stderr, /partial file .* has other names \(hard links\)/);
});

Deno.test("11: download --resume refuses a partial that is a folder", async () => {
  const { r } = await plantAndDownload((partial) => Deno.mkdir(partial));
  assertExit(r, 1);
  assert.match(r.stderr, /partial file .* is not a regular file/);
});

Deno.test({
  name: "11: download --resume refuses a partial owned by another user",
  ignore: Deno.build.os === "windows" || Deno.uid() !== 0,
  async fn() {
    const { r, partial } = await plantAndDownload(async (partial) => {
      await Deno.writeTextFile(partial, "someone else's bytes");
      await Deno.chown(partial, 65534, 65534);
    });
    assertExit(r, 1);
    assert.match(r.stderr, /partial file .* belongs to another user \(uid 65534\)/);
    assert.equal(await Deno.readTextFile(partial), "someone else's bytes");
  },
});

Deno.test("11: a genuine partial of ours is still resumed", async () => {
  const data = await serverFile("genuine.bin", 300_000);
  const dir = await scratch();
  await Deno.writeFile(join(dir, ".got.bin.efx-partial"), data.subarray(0, 100_000), {
    mode: 0o600,
  });
  const r = await efx(
    ["download", "genuine.bin", "-o", join(dir, "got.bin"), "--resume", ...clientArgs(S)],
    { cwd: dir },
  );
  assertExit(r, 0);
  assert.match(r.stderr + r.stdout, /resumed after 100000 bytes/);
  assert.deepEqual(await Deno.readFile(join(dir, "got.bin")), data);
  await assert.rejects(Deno.lstat(join(dir, ".got.bin.efx-partial")), Deno.errors.NotFound);
});

Deno.test("11: download --force onto a symlink replaces the link, never writes its target", async () => {
  const data = await serverFile("over.bin", 5000);
  for (const resume of [[], ["--resume"]]) {
    const dir = await scratch();
    const victim = join(dir, "victim.txt");
    await Deno.writeTextFile(victim, "precious\n");
    await Deno.symlink(victim, join(dir, "got.bin"));
    const r = await efx(
      ["download", "over.bin", "-o", join(dir, "got.bin"), "--force", ...resume, ...clientArgs(S)],
      { cwd: dir },
    );
    assertExit(r, 0);
    assert.equal(await Deno.readTextFile(victim), "precious\n");
    const st = await Deno.lstat(join(dir, "got.bin"));
    assert.ok(st.isFile && !st.isSymlink);
    assert.deepEqual(await Deno.readFile(join(dir, "got.bin")), data);
  }
});

// ---------------------------------------------------------------------------
// Finding 12: one RSA decryption on every key-confirmation failure

interface DecryptCall {
  algorithm: string;
  keyType: string;
  length: number;
  /** The ciphertext as an integer. */
  value: bigint;
}

function toBigInt(bytes: Uint8Array): bigint {
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

/** Records every crypto.subtle.decrypt call while `fn` runs (the real one still runs). */
async function spyDecrypt<T>(fn: () => Promise<T>): Promise<{ value: T; calls: DecryptCall[] }> {
  const subtle = crypto.subtle;
  const real = subtle.decrypt;
  const calls: DecryptCall[] = [];
  Object.defineProperty(subtle, "decrypt", {
    configurable: true,
    value: (alg: AlgorithmIdentifier, key: CryptoKey, data: BufferSource) => {
      calls.push({
        algorithm: typeof alg === "string" ? alg : alg.name,
        keyType: key.type,
        length: data.byteLength,
        value: toBigInt(
          data instanceof ArrayBuffer
            ? new Uint8Array(data)
            : new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
        ),
      });
      return real.call(subtle, alg, key, data);
    },
  });
  try {
    return { value: await fn(), calls };
  } finally {
    delete (subtle as unknown as Record<string, unknown>).decrypt;
    assert.equal(subtle.decrypt, real);
  }
}

/** Runs a client handshake by hand with CLIENT_KEY carrying `ct`; returns the server's answer. */
async function handshakeWith(port: number, ct: (spki: Uint8Array) => Promise<Uint8Array>) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const reader = new BufferedReader(conn);
    await writeAll(conn, encodeClientHello(crypto.getRandomValues(new Uint8Array(32))));
    const sh = await readHandshakeMessage(reader, HandshakeType.SERVER_HELLO, "server");
    const { spki } = parseServerHello(sh.body);
    const ck = encodeClientKey(await ct(spki));
    const cf = encodeHandshakeMessage(HandshakeType.CLIENT_FINISHED, new Uint8Array(32));
    await writeAll(conn, new Uint8Array([...ck, ...cf]));
    const head = new Uint8Array(3);
    await reader.readExact(head, "the answer");
    const body = new Uint8Array((head[1] << 8) | head[2]);
    await reader.readExact(body, "the answer");
    return new Uint8Array([...head, ...body]);
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

Deno.test("12: every kind of bad CLIENT_KEY costs the server exactly one RSA-OAEP decryption, then the same alert", async () => {
  const fake = await startFakeServer(() => Promise.resolve());
  try {
    const encryptTo = async (spki: Uint8Array, secret: Uint8Array) => {
      const pub = await crypto.subtle.importKey(
        "spki",
        spki as Uint8Array<ArrayBuffer>,
        { name: "RSA-OAEP", hash: "SHA-256" },
        false,
        ["encrypt"],
      );
      return new Uint8Array(
        await crypto.subtle.encrypt({ name: "RSA-OAEP" }, pub, secret as Uint8Array<ArrayBuffer>),
      );
    };
    const kinds: Record<string, (spki: Uint8Array) => Promise<Uint8Array>> = {
      "1 byte": () => Promise.resolve(new Uint8Array([7])),
      "255 bytes": () => Promise.resolve(crypto.getRandomValues(new Uint8Array(255))),
      "257 bytes": () => Promise.resolve(crypto.getRandomValues(new Uint8Array(257))),
      "2000 bytes": () => Promise.resolve(new Uint8Array(2000).fill(0xff)),
      "256 bytes, not OAEP": () => {
        const b = crypto.getRandomValues(new Uint8Array(256));
        b[0] = 0;
        return Promise.resolve(b);
      },
      "256 bytes, above the modulus": () => Promise.resolve(new Uint8Array(256).fill(0xff)),
      "valid, 16-byte secret": (spki) => encryptTo(spki, new Uint8Array(16)),
      "valid, wrong FINISHED": (spki) => encryptTo(spki, new Uint8Array(32)),
    };
    const pub = await crypto.subtle.importKey(
      "spki",
      (await loadPublicKeyFile(fake.pubKeyPath)).spki as Uint8Array<ArrayBuffer>,
      { name: "RSA-OAEP", hash: "SHA-256" },
      true,
      ["encrypt"],
    );
    const n = toBigInt(
      Uint8Array.from(
        atob(
          String((await crypto.subtle.exportKey("jwk", pub)).n).replace(/-/g, "+").replace(
            /_/g,
            "/",
          ),
        ),
        (c) => c.charCodeAt(0),
      ),
    );
    const answers = new Set<string>();
    for (const [what, ct] of Object.entries(kinds)) {
      const { value, calls } = await spyDecrypt(() => handshakeWith(fake.port, ct));
      assert.deepEqual(
        calls.map(({ value: _, ...rest }) => rest),
        [{ algorithm: "RSA-OAEP", keyType: "private", length: 256 }],
        `${what}: one RSA-OAEP decryption of a modulus-sized ciphertext`,
      );
      // Below the modulus: the RSA code cannot refuse it before the private-key operation.
      assert.ok(calls[0].value < n, `${what}: the ciphertext decrypted is below the modulus`);
      assert.equal(value[0], HandshakeType.ALERT, what);
      assert.equal(value[3], AlertCode.AUTH, what);
      answers.add(new TextDecoder().decode(value.subarray(3)));
    }
    assert.deepEqual([...answers], ["\x02handshake failed: key confirmation failed"]);
  } finally {
    await fake.close();
  }
});

// ---------------------------------------------------------------------------
// Finding 13: the client waits for the server's CLOSE

Deno.test("13: an integrity failure the server detects on the client's CLOSE is reported (exit 1)", async () => {
  // c2s records of `efx ls` without an identity: 0 = the ls request, 1 = CLOSE.
  const mitm = await Mitm.start({
    target: S.port,
    tamper: flipBit("c2s", { record: 1, part: "tag" }),
  });
  try {
    const r = await efx(["ls", "--server", mitm.address, "--server-key", S.pubKeyPath], {
      cwd: await scratch(),
    });
    assertExit(r, 1, "the server's alert after our CLOSE must reach the user");
    assert.match(
      oneLine(r.stderr),
      /^efx: server ended the connection: integrity check failed on record 1: data was tampered with, replayed, reordered or dropped$/,
    );
  } finally {
    await mitm.close();
  }
});

Deno.test("13: the real server answers the client's CLOSE with its own; close() resolves", async () => {
  const client = await connectClient(S);
  await client.list();
  const t0 = performance.now();
  await client.close();
  assert.ok(performance.now() - t0 < 4000, "answered well before the bound");
  assert.equal(client.channel.broken, true, "closed");
});

Deno.test("13: close() reports an ALERT the server sends instead of its CLOSE", async () => {
  const fake = await startFakeServer(async (ch) => {
    assert.equal(await ch.recvMessageOrClose(), null);
    await ch.sendAlert("integrity", "last file failed its final check");
  });
  try {
    const client = await connectClient(fake);
    await assert.rejects(client.close(), (err: unknown) => {
      assert.ok(err instanceof RemoteError, String(err));
      assert.equal(err.message, "server ended the connection: last file failed its final check");
      return true;
    });
  } finally {
    await fake.close();
  }
});

Deno.test("13: close() waits a bounded time for a server that never answers", async () => {
  let release = () => {};
  const held = new Promise<void>((r) => release = r);
  const fake = await startFakeServer(async (ch) => {
    assert.equal(await ch.recvMessageOrClose(), null);
    await held; // never answers the CLOSE while the client waits
  });
  try {
    const client = await connectClient(fake);
    client.channel.closeTimeoutMs = 300;
    const t0 = performance.now();
    await assert.rejects(client.close(), (err: unknown) => {
      assert.ok(err instanceof TimeoutError, String(err));
      assert.match(err.message, /server did not confirm the end of the session within 0\.3 s/);
      return true;
    });
    assert.ok(performance.now() - t0 < 5000);
  } finally {
    release();
    await fake.close();
  }
});

Deno.test("13: a server that hangs up without CLOSE after ours is a truncation", async () => {
  const fake = await startFakeServer(async (ch) => {
    assert.equal(await ch.recvMessageOrClose(), null);
    ch.abort();
  });
  try {
    const client = await connectClient(fake);
    await assert.rejects(client.close(), (err: unknown) => {
      assert.ok(err instanceof EfxError, String(err));
      assert.match(err.message, /truncated: no close record/);
      return true;
    });
  } finally {
    await fake.close();
  }
});

Deno.test("13: a CLOSE in the middle of a request is still answered by the real server", async () => {
  // The client gives up half-way through a resumable upload (the server waits
  // for its resume answer) and closes: the server must still answer CLOSE.
  const client = await connectClient(S);
  await client.channel.sendMessage({
    op: "put",
    name: "half-way.bin",
    size: 10,
    mode: 0o644,
    mtime: 0,
    force: true,
    resume: true,
  });
  assert.equal((await client.channel.recvMessage()).ok, true, "the resume offer");
  client.channel.closeTimeoutMs = 4000;
  await client.close(); // rejects (TimeoutError) when the CLOSE is not answered
});
