/**
 * Tests for src/keys.ts and the keygen / fingerprint commands. Interop tests
 * need the `openssl` command; they are skipped (with a message) without it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { AuthError, KeyFileError, UsageError } from "../src/errors.ts";
import {
  ALLOWED_BITS,
  DEFAULT_BITS,
  ensureServerKey,
  fingerprint,
  generateKeyPair,
  importServerPublicKey,
  loadPublicKeyFile,
  loadServerPrivateKey,
  MIN_BITS,
  parseFingerprint,
  pemDecode,
  pemEncode,
  readPrivateKeyFile,
  writeKeyPair,
} from "../src/keys.ts";
import { fingerprintCommand, keygenCommand } from "../src/commands/keygen.ts";

const HAVE_OPENSSL = await new Deno.Command("openssl", {
  args: ["version"],
  stdout: "null",
  stderr: "null",
}).output().then((o) => o.success, () => false);
if (!HAVE_OPENSSL) console.log("keys_test: openssl not found, skipping openssl interop tests");
const POSIX = Deno.build.os !== "windows";

/** Runs openssl, returns stdout; throws with stderr on failure. */
async function openssl(args: string[], stdin?: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command("openssl", {
    args,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const out = await child.output();
  if (!out.success) {
    throw new Error(`openssl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return out.stdout;
}

/** openssl's own fingerprint of a public key PEM file, computed as the docs show. */
async function opensslFingerprint(pubPath: string): Promise<string> {
  const der = await openssl(["pkey", "-pubin", "-in", pubPath, "-outform", "DER"]);
  const hash = await openssl(["dgst", "-sha256", "-binary"], der);
  const b64 = new TextDecoder().decode(await openssl(["base64", "-A"], hash)).trim();
  return "SHA256:" + b64.replace(/=+$/, "");
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "efx-keys-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A validator for a KeyFileError (exit 2) with a one-line message matching `pattern`. */
function keyFileError(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof KeyFileError, `expected KeyFileError, got ${err}`);
    assert.equal(err.exitCode, 2);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes("\n"), `message is not one line: ${err.message}`);
    return true;
  };
}

async function assertKeyFileError(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, keyFileError(pattern));
}

/** Runs `fn` with console.log captured; returns the printed lines. */
async function captureLog(fn: () => Promise<unknown>): Promise<string[]> {
  const lines: string[] = [];
  const original = console.log;
  console.log = (...args: unknown[]) => lines.push(args.join(" "));
  try {
    await fn();
  } finally {
    console.log = original;
  }
  return lines.join("\n").split("\n");
}

const FP_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;

// ---- fingerprints and PEM ----

Deno.test("fingerprint is SHA256: + unpadded base64 of SHA-256", async () => {
  // SHA-256 of the empty string.
  assert.equal(
    await fingerprint(new Uint8Array()),
    "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
  );
  assert.match(await fingerprint(new Uint8Array([1, 2, 3])), FP_RE);
});

Deno.test("parseFingerprint accepts and normalizes valid fingerprints", () => {
  const fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
  assert.equal(parseFingerprint(fp), fp);
  assert.equal(parseFingerprint(`  ${fp}\n`), fp);
  assert.equal(parseFingerprint(fp.replace("SHA256", "sha256")), fp);
  assert.equal(parseFingerprint(fp + "="), fp);
});

Deno.test("parseFingerprint rejects malformed fingerprints with UsageError", () => {
  const good = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
  for (
    const bad of [
      "",
      good, // no prefix
      "MD5:" + good,
      "SHA256:" + good.slice(1), // too short
      "SHA256:" + good + "A", // too long
      "SHA256:" + good.replace("+", "-"), // not standard base64
      "SHA256:" + good.slice(0, -1) + "V", // last char has non-zero spare bits
      "SHA256:" + good + "==",
    ]
  ) {
    assert.throws(() => parseFingerprint(bad), (err: unknown) => {
      assert.ok(err instanceof UsageError && !(err instanceof KeyFileError), `for '${bad}'`);
      assert.match(err.message, /bad fingerprint/);
      return true;
    });
  }
});

Deno.test("pemEncode / pemDecode round-trip with 64-column lines", () => {
  const der = Uint8Array.from({ length: 200 }, (_, i) => i);
  const pem = pemEncode("PUBLIC KEY", der);
  const lines = pem.trimEnd().split("\n");
  assert.equal(lines[0], "-----BEGIN PUBLIC KEY-----");
  assert.equal(lines.at(-1), "-----END PUBLIC KEY-----");
  assert.ok(lines.slice(1, -1).every((l) => l.length <= 64));
  assert.equal(lines[1].length, 64);
  const back = pemDecode("junk before\n" + pem.replaceAll("\n", "\r\n"), "x.pem");
  assert.equal(back.label, "PUBLIC KEY");
  assert.deepEqual(back.der, der);
});

Deno.test("pemDecode rejects bad PEM with KeyFileError", () => {
  const pem = pemEncode("PRIVATE KEY", new Uint8Array(100));
  assert.throws(() => pemDecode("hello", "f.pem"), keyFileError(/f\.pem is not a PEM file/));
  assert.throws(
    () => pemDecode(pem.replace(/-----END.*\n/, ""), "f.pem"),
    keyFileError(/truncated/),
  );
  assert.throws(
    () => pemDecode(pem.replace("END PRIVATE", "END PUBLIC"), "f.pem"),
    keyFileError(/corrupt: BEGIN PRIVATE KEY ends with END PUBLIC KEY/),
  );
  assert.throws(
    () => pemDecode(pem.replace("AAAA", "AA*A"), "f.pem"),
    keyFileError(/f\.pem is corrupt: .*not valid base64/),
  );
  assert.throws(
    () => pemDecode("-----BEGIN X-----\n-----END X-----\n", "f.pem"),
    keyFileError(/not valid base64/),
  );
});

// ---- generating and writing ----

Deno.test("generateKeyPair(2048) makes a consistent RSA pair", async () => {
  const pair = await generateKeyPair(2048);
  assert.equal(pair.bits, 2048);
  assert.match(pair.fingerprint, FP_RE);
  assert.equal(pair.fingerprint, await fingerprint(pair.spki));
  assert.equal(pemDecode(pair.privatePem, "priv").label, "PRIVATE KEY");
  const pub = pemDecode(pair.publicPem, "pub");
  assert.equal(pub.label, "PUBLIC KEY");
  assert.deepEqual(pub.der, pair.spki);
});

Deno.test("generateKeyPair defaults to 3072 bits and rejects other sizes", async () => {
  assert.equal(DEFAULT_BITS, 3072);
  assert.equal(MIN_BITS, 2048);
  assert.deepEqual(ALLOWED_BITS, [2048, 3072, 4096]);
  const pair = await generateKeyPair();
  assert.equal(pair.bits, 3072);
  const { bits } = await importServerPublicKey(pair.spki);
  assert.equal(bits, 3072);
  for (const bad of [1024, 2047, 5000]) {
    await assert.rejects(generateKeyPair(bad), UsageError);
  }
});

Deno.test("writeKeyPair writes PEM files with 0600 private / 0644 public modes", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "a", "b"); // created with parents
    const res = await writeKeyPair(out, { bits: 2048 });
    assert.equal(res.privatePath, join(out, "server.key.pem"));
    assert.equal(res.publicPath, join(out, "server.pub.pem"));
    assert.equal(res.bits, 2048);
    if (POSIX) {
      assert.equal((await Deno.stat(res.privatePath)).mode! & 0o777, 0o600);
      assert.equal((await Deno.stat(res.publicPath)).mode! & 0o777, 0o644);
    }
    const priv = await loadServerPrivateKey(res.privatePath);
    const pub = await loadPublicKeyFile(res.publicPath);
    const fromPriv = await loadPublicKeyFile(res.privatePath);
    assert.equal(priv.fingerprint, res.fingerprint);
    assert.equal(pub.fingerprint, res.fingerprint);
    assert.equal(fromPriv.fingerprint, res.fingerprint);
    assert.deepEqual(priv.spki, pub.spki);
    assert.equal(priv.bits, 2048);
    assert.equal(pub.bits, 2048);
  });
});

Deno.test("writeKeyPair refuses to overwrite without force, and force replaces", async () => {
  await withTempDir(async (dir) => {
    const first = await writeKeyPair(dir, { bits: 2048 });
    const before = await Deno.readTextFile(first.privatePath);
    await assertKeyFileError(
      writeKeyPair(dir, { bits: 2048 }),
      /server\.key\.pem already exists \(use --force/,
    );
    // Only the public file left over still blocks.
    await Deno.remove(first.privatePath);
    await assertKeyFileError(writeKeyPair(dir, { bits: 2048 }), /server\.pub\.pem already exists/);
    assert.ok(!(await exists(first.privatePath)), "nothing written on refusal");

    // A pre-existing world-readable private file is replaced by a 0600 one.
    await Deno.writeTextFile(first.privatePath, before, { mode: 0o644 });
    if (POSIX) await Deno.chmod(first.privatePath, 0o644);
    const second = await writeKeyPair(dir, { bits: 2048, force: true });
    assert.notEqual(second.fingerprint, first.fingerprint);
    assert.notEqual(await Deno.readTextFile(second.privatePath), before);
    if (POSIX) assert.equal((await Deno.stat(second.privatePath)).mode! & 0o777, 0o600);
    assert.equal((await loadServerPrivateKey(second.privatePath)).fingerprint, second.fingerprint);
  });
});

Deno.test("writeKeyPair with prefix 'client' writes client.* files", async () => {
  await withTempDir(async (dir) => {
    const res = await writeKeyPair(dir, { bits: 2048, prefix: "client" });
    assert.equal(res.privatePath, join(dir, "client.key.pem"));
    assert.equal(res.publicPath, join(dir, "client.pub.pem"));
    // The same PKCS#8 file is usable as an RSA-PSS signing key.
    const { pkcs8, fingerprint: fp } = await readPrivateKeyFile(res.privatePath);
    assert.equal(fp, res.fingerprint);
    const sign = await crypto.subtle.importKey(
      "pkcs8",
      pkcs8 as BufferSource,
      { name: "RSA-PSS", hash: "SHA-256" },
      false,
      ["sign"],
    );
    const sig = await crypto.subtle.sign(
      { name: "RSA-PSS", saltLength: 32 },
      sign,
      new Uint8Array(3),
    );
    assert.equal(sig.byteLength, 256);
  });
});

Deno.test("loaded private key decrypts what importServerPublicKey's key encrypts", async () => {
  await withTempDir(async (dir) => {
    const res = await writeKeyPair(dir, { bits: 2048 });
    const priv = await loadServerPrivateKey(res.privatePath);
    assert.deepEqual(priv.decryptKey.usages, ["decrypt"]);
    assert.equal(priv.decryptKey.extractable, false);
    const { encryptKey, bits } = await importServerPublicKey(priv.spki);
    assert.equal(bits, 2048);
    const secret = crypto.getRandomValues(new Uint8Array(32));
    const ct = await crypto.subtle.encrypt({ name: "RSA-OAEP" }, encryptKey, secret);
    const pt = await crypto.subtle.decrypt({ name: "RSA-OAEP" }, priv.decryptKey, ct);
    assert.deepEqual(new Uint8Array(pt), secret);
  });
});

Deno.test("ensureServerKey creates a missing key once, then loads it", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "keys", "server.key.pem");
    const a = await ensureServerKey(path);
    assert.equal(a.created, true);
    assert.equal(a.key.bits, DEFAULT_BITS);
    assert.ok(await exists(join(dir, "keys", "server.pub.pem")));
    if (POSIX) assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const b = await ensureServerKey(path);
    assert.equal(b.created, false);
    assert.equal(b.key.fingerprint, a.key.fingerprint);
    await assertKeyFileError(ensureServerKey(join(dir, "other.pem")), /key file not found/);
  });
});

// ---- bad key files ----

Deno.test("loading a missing file, a directory, garbage or DER gives KeyFileError", async () => {
  await withTempDir(async (dir) => {
    const missing = join(dir, "nope.key.pem");
    await assertKeyFileError(loadServerPrivateKey(missing), /key file not found: .*nope\.key\.pem/);
    await assertKeyFileError(loadPublicKeyFile(missing), /key file not found/);
    await assertKeyFileError(loadServerPrivateKey(dir), /is not a regular file/);

    const garbage = join(dir, "garbage.pem");
    await Deno.writeFile(garbage, crypto.getRandomValues(new Uint8Array(500)).map((b) => b | 1));
    await assertKeyFileError(loadServerPrivateKey(garbage), /garbage\.pem is not a PEM file/);
    await assertKeyFileError(loadPublicKeyFile(garbage), /is not a PEM file/);

    const empty = join(dir, "empty.pem");
    await Deno.writeTextFile(empty, "");
    await assertKeyFileError(loadServerPrivateKey(empty), /is not a PEM file/);

    const res = await writeKeyPair(dir, { bits: 2048 });
    const der = join(dir, "server.der");
    await Deno.writeFile(der, pemDecode(await Deno.readTextFile(res.privatePath), "").der);
    await assertKeyFileError(loadServerPrivateKey(der), /looks like binary DER/);
  });
});

Deno.test("loading a public key where a private key is expected says so", async () => {
  await withTempDir(async (dir) => {
    const res = await writeKeyPair(dir, { bits: 2048 });
    await assertKeyFileError(
      loadServerPrivateKey(res.publicPath),
      /holds a 'PUBLIC KEY' PEM block, expected 'PRIVATE KEY'/,
    );
  });
});

Deno.test("corrupt key data gives KeyFileError", async () => {
  await withTempDir(async (dir) => {
    const res = await writeKeyPair(dir, { bits: 2048 });
    const pem = await Deno.readTextFile(res.privatePath);
    const lines = pem.split("\n");

    const badChars = join(dir, "bad-chars.key.pem");
    await Deno.writeTextFile(
      badChars,
      pem.replace(lines[3], lines[3].slice(0, 10) + "!@#$" + lines[3].slice(14)),
    );
    await assertKeyFileError(
      loadServerPrivateKey(badChars),
      /bad-chars\.key\.pem is corrupt: .*base64/,
    );

    const truncated = join(dir, "truncated.key.pem");
    await Deno.writeTextFile(truncated, [...lines.slice(0, 5), ...lines.slice(-2)].join("\n"));
    await assertKeyFileError(loadServerPrivateKey(truncated), /truncated\.key\.pem is corrupt/);

    const noEnd = join(dir, "noend.key.pem");
    await Deno.writeTextFile(noEnd, lines.slice(0, -3).join("\n"));
    await assertKeyFileError(
      loadServerPrivateKey(noEnd),
      /truncated: no '-----END PRIVATE KEY-----'/,
    );

    // Valid base64 and DER header, damaged key body.
    const der = pemDecode(pem, "").der;
    der.fill(0, 40, 300);
    const damaged = join(dir, "damaged.key.pem");
    await Deno.writeTextFile(damaged, pemEncode("PRIVATE KEY", der));
    await assertKeyFileError(loadServerPrivateKey(damaged), /damaged\.key\.pem is corrupt/);

    const pubPem = await Deno.readTextFile(res.publicPath);
    const badPub = join(dir, "bad.pub.pem");
    await Deno.writeTextFile(badPub, pubPem.replace(/\n[A-Za-z0-9+/]{8}/, "\n********"));
    await assertKeyFileError(loadPublicKeyFile(badPub), /bad\.pub\.pem is corrupt/);
  });
});

Deno.test("importServerPublicKey rejects garbage and non-RSA with AuthError", async () => {
  for (
    const bad of [
      new Uint8Array(),
      new Uint8Array(300),
      crypto.getRandomValues(new Uint8Array(294)),
      new Uint8Array([0x30, 0x82, 0x01]), // truncated header
    ]
  ) {
    await assert.rejects(importServerPublicKey(bad), (err: unknown) => {
      assert.ok(err instanceof AuthError);
      assert.equal(err.exitCode, 3);
      assert.equal(err.message, "server sent an invalid public key");
      return true;
    });
  }
  // An SPKI with a few bytes changed in the middle of the modulus header.
  const { spki } = await generateKeyPair(2048);
  const broken = spki.slice();
  broken[20] ^= 0xff;
  await assert.rejects(importServerPublicKey(broken), AuthError);
});

// ---- openssl interop ----

Deno.test({
  name: "openssl accepts our keys and computes the same fingerprint",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const res = await writeKeyPair(dir, { bits: 2048 });
      await openssl(["pkey", "-in", res.privatePath, "-noout"]);
      await openssl(["pkey", "-pubin", "-in", res.publicPath, "-noout"]);
      assert.equal(await opensslFingerprint(res.publicPath), res.fingerprint);
      // openssl's public key derived from our private key is byte-identical.
      const derived = await openssl(["pkey", "-in", res.privatePath, "-pubout", "-outform", "DER"]);
      assert.deepEqual(derived, (await loadPublicKeyFile(res.publicPath)).spki);
      const text = new TextDecoder().decode(
        await openssl(["pkey", "-in", res.privatePath, "-noout", "-text"]),
      );
      assert.match(text, /Private-Key: \(2048 bit/);
      assert.match(text, /publicExponent: 65537/);
    }),
});

Deno.test({
  name: "keys made by openssl load, with matching fingerprints",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const priv = join(dir, "o.key.pem");
      const pub = join(dir, "o.pub.pem");
      await openssl([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        priv,
      ]);
      await openssl(["pkey", "-in", priv, "-pubout", "-out", pub]);
      const expected = await opensslFingerprint(pub);
      const key = await loadServerPrivateKey(priv);
      assert.equal(key.fingerprint, expected);
      assert.equal(key.bits, 2048);
      assert.equal((await loadPublicKeyFile(pub)).fingerprint, expected);
      assert.equal((await loadPublicKeyFile(priv)).fingerprint, expected);
      assert.equal((await importServerPublicKey(key.spki)).bits, 2048);
    }),
});

Deno.test({
  name: "PKCS#1 'RSA PRIVATE KEY' files are rejected with a conversion hint",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const genrsa = join(dir, "genrsa.pem");
      await openssl(["genrsa", "-traditional", "-out", genrsa, "2048"]);
      const converted = join(dir, "converted.pem");
      const pkcs8 = join(dir, "p8.pem");
      await openssl([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        pkcs8,
      ]);
      await openssl(["rsa", "-traditional", "-in", pkcs8, "-out", converted]);
      for (const path of [genrsa, converted]) {
        assert.match(await Deno.readTextFile(path), /BEGIN RSA PRIVATE KEY/);
        await assertKeyFileError(
          loadServerPrivateKey(path),
          /holds a 'RSA PRIVATE KEY' PEM block, expected 'PRIVATE KEY' \(a PKCS#1 key; convert it with: openssl pkcs8 -topk8/,
        );
        await assertKeyFileError(loadPublicKeyFile(path), /'RSA PRIVATE KEY'/);
      }
      const rsaPub = join(dir, "rsapub.pem");
      await openssl(["rsa", "-in", pkcs8, "-RSAPublicKey_out", "-out", rsaPub]);
      await assertKeyFileError(loadPublicKeyFile(rsaPub), /'RSA PUBLIC KEY'.*PKCS#1/);
    }),
});

Deno.test({
  name: "a 1024-bit openssl key is rejected as too small",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const priv = join(dir, "small.key.pem");
      const pub = join(dir, "small.pub.pem");
      await openssl([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        priv,
      ]);
      await openssl(["pkey", "-in", priv, "-pubout", "-out", pub]);
      await assertKeyFileError(loadServerPrivateKey(priv), /too small \(1024 bits < 2048\)/);
      await assertKeyFileError(loadPublicKeyFile(pub), /small\.pub\.pem: RSA key is too small/);
      const spki = await openssl(["pkey", "-pubin", "-in", pub, "-outform", "DER"]);
      await assert.rejects(importServerPublicKey(spki), (err: unknown) => {
        assert.ok(err instanceof AuthError);
        assert.equal(err.message, "server key is too small (1024 bits < 2048)");
        return true;
      });
    }),
});

Deno.test({
  name: "EC, Ed25519, RSA-PSS-only and encrypted keys are rejected",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const ec = join(dir, "ec.key.pem");
      const ecPub = join(dir, "ec.pub.pem");
      await openssl([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        ec,
      ]);
      await openssl(["pkey", "-in", ec, "-pubout", "-out", ecPub]);
      await assertKeyFileError(
        loadServerPrivateKey(ec),
        /ec\.key\.pem holds an EC key; efx needs a plain RSA key/,
      );
      await assertKeyFileError(loadPublicKeyFile(ecPub), /holds an EC key/);
      const ecSpki = await openssl(["pkey", "-pubin", "-in", ecPub, "-outform", "DER"]);
      await assert.rejects(importServerPublicKey(ecSpki), AuthError);

      const ed = join(dir, "ed.key.pem");
      await openssl(["genpkey", "-algorithm", "ED25519", "-out", ed]);
      await assertKeyFileError(loadServerPrivateKey(ed), /holds an Ed25519 key/);

      const pss = join(dir, "pss.key.pem");
      await openssl([
        "genpkey",
        "-algorithm",
        "RSA-PSS",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        pss,
      ]);
      await assertKeyFileError(loadServerPrivateKey(pss), /holds an RSA-PSS-only key/);

      const enc = join(dir, "enc.key.pem");
      await openssl([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-aes-256-cbc",
        "-pass",
        "pass:secret",
        "-out",
        enc,
      ]);
      await assertKeyFileError(
        loadServerPrivateKey(enc),
        /'ENCRYPTED PRIVATE KEY'.*password-protected/,
      );
    }),
});

// ---- commands ----

Deno.test("keygenCommand writes keys and prints paths then the fingerprint", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "keys");
    let code = -1;
    const lines = await captureLog(async () => {
      code = await keygenCommand(["--out", out, "--bits", "2048"]);
    });
    assert.equal(code, 0);
    const priv = join(out, "server.key.pem");
    const pub = join(out, "server.pub.pem");
    assert.ok(lines.some((l) => l.includes(priv)));
    assert.ok(lines.some((l) => l.includes(pub)));
    const fpLine = lines.at(-1)!;
    assert.match(fpLine, FP_RE);
    assert.equal((await loadPublicKeyFile(pub)).fingerprint, fpLine);
    assert.equal((await loadServerPrivateKey(priv)).bits, 2048);
    if (POSIX) assert.equal((await Deno.stat(priv)).mode! & 0o777, 0o600);

    // Existing keys: refused without --force, replaced with it.
    await assertKeyFileError(
      captureLog(() => keygenCommand(["--out", out, "--bits", "2048"])),
      /already exists \(use --force/,
    );
    const again = await captureLog(() =>
      keygenCommand(["--out", out, "--bits", "2048", "--force"])
    );
    assert.notEqual(again.at(-1), fpLine);

    // --client writes client.* next to the server keys.
    const client = await captureLog(() =>
      keygenCommand(["--out", out, "--bits", "2048", "--client"])
    );
    assert.equal((await loadPublicKeyFile(join(out, "client.pub.pem"))).fingerprint, client.at(-1));
    assert.ok(await exists(join(out, "client.key.pem")));

    // fingerprintCommand on the public and the private file prints the same line.
    const fromPub = await captureLog(() => fingerprintCommand([pub]));
    const fromPriv = await captureLog(() => fingerprintCommand([priv]));
    assert.deepEqual(fromPub, [again.at(-1)]);
    assert.deepEqual(fromPriv, fromPub);
  });
});

Deno.test("keygen and fingerprint commands reject bad usage", async () => {
  for (
    const args of [["--bits", "1024"], ["--bits", "abc"], ["--bits", "2048.0"], ["extra"], [
      "--nope",
    ], ["--out"]]
  ) {
    await assert.rejects(keygenCommand(args), (err: unknown) => {
      assert.ok(err instanceof UsageError, `for ${args.join(" ")}: ${err}`);
      assert.equal(err.exitCode, 2);
      return true;
    });
  }
  for (const args of [[], ["a", "b"], ["--nope", "x"]]) {
    await assert.rejects(fingerprintCommand(args), UsageError);
  }
  await assertKeyFileError(fingerprintCommand(["/nonexistent/efx/key.pem"]), /key file not found/);
  const help = await captureLog(async () => {
    assert.equal(await keygenCommand(["--help"]), 0);
    assert.equal(await fingerprintCommand(["-h"]), 0);
  });
  assert.match(help.join("\n"), /usage: efx keygen/);
  assert.match(help.join("\n"), /usage: efx fingerprint FILE/);
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}
