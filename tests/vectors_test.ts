/**
 * Checks the implementation against tests/vectors/channel.json and checks
 * every derived value of the vectors again with an independent computation
 * (node:crypto only, written from PROTOCOL.md), so that the vectors cannot
 * merely mirror the code that produced them.
 */
import assert from "node:assert/strict";
import {
  constants,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  hkdfSync,
  privateDecrypt,
  verify as nodeVerify,
} from "node:crypto";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { clientAuthMessage, loadClientIdentity, verifyClientAuth } from "../src/auth.ts";
import { fromHex, sha256, toHex } from "../src/bytes.ts";
import { AuthError } from "../src/errors.ts";
import {
  deriveSessionKeys,
  encodeClientHello,
  encodeClientKey,
  encodeHandshakeMessage,
  encodeServerHello,
  encodeServerHelloV2,
  finishedMac,
  HandshakeType,
  parseClientHello,
  parseClientKey,
  parseServerHello,
  verifyEphemeralKey,
} from "../src/handshake.ts";
import { signedEphemeralData } from "../src/ephemeral.ts";
import { fingerprint, loadServerPrivateKey } from "../src/keys.ts";
import { Keystream, keystreamSalt } from "../src/keystream.ts";
import { keystream2Salt, PrefixKeystream } from "../src/keystream2.ts";
import { type DirectionKeys, RecordOpener, RecordSealer } from "../src/record.ts";
import {
  buildVectors,
  keptInputsOf,
  type RecordVector,
  serialize,
  VECTORS_PATH,
} from "./vectors/generate.ts";

const V = JSON.parse(await Deno.readTextFile(VECTORS_PATH));
const h = (s: string) => fromHex(s) as Uint8Array<ArrayBuffer>;
const ascii = (s: string) => new TextEncoder().encode(s);

const secret = h(V.inputs.secret);
const nonceC = h(V.inputs.client_nonce);
const nonceS = h(V.inputs.server_nonce);
const ciphertext = h(V.inputs.client_key_ciphertext);
const spki = h(V.rsa_test_key.spki_hex);
const th = h(V.handshake.transcript_hash);
const KS = V.key_schedule;

// ---- independent reference code (node:crypto and plain byte handling only) ----

function be(n: bigint | number, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  let v = BigInt(n);
  for (let i = bytes - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

function cat(...parts: (Uint8Array | number[])[]): Uint8Array {
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

/** type u8 | length u16be | body */
function refHandshakeMessage(type: number, body: Uint8Array): Uint8Array {
  return cat([type], be(body.length, 2), body);
}

function hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const m = createHmac("sha256", key);
  for (const p of parts) m.update(p);
  return new Uint8Array(m.digest());
}

/** Keystream block by block: HMAC(K, "efx1 ks" || u64 seq || u32 i), i = 1, 2, ... */
function refKeystream(key: Uint8Array, seq: bigint, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 1, o = 0; o < n; i++, o += 32) {
    const block = hmac(key, ascii("efx1 ks"), be(seq, 8), be(i, 4));
    out.set(block.subarray(0, Math.min(32, n - o)), o);
  }
  return out;
}

/**
 * Version 2, by hand from PROTOCOL.md: block i (from 0) is
 * SHA-256(enc || 32 zero bytes || "efx2 ks" || u64(seq) || u64(i)).
 */
function refKeystream2(key: Uint8Array, seq: bigint, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0, o = 0; o < n; i++, o += 32) {
    const message = cat(key, new Uint8Array(32), ascii("efx2 ks"), be(seq, 8), be(i, 8));
    assert.equal(message.length, 87);
    const block = new Uint8Array(createHash("sha256").update(message).digest());
    out.set(block.subarray(0, Math.min(32, n - o)), o);
  }
  return out;
}

/** header | body XOR keystream | HMAC(mac, u64 seq || header || ciphertext) */
function refSeal(
  keys: { enc: Uint8Array; mac: Uint8Array },
  seq: bigint,
  type: number,
  flags: number,
  body: Uint8Array,
  version = 1,
): Uint8Array {
  const header = cat([type, flags, 0, 0], be(body.length, 4));
  const ks = (version === 2 ? refKeystream2 : refKeystream)(keys.enc, seq, body.length);
  const ct = body.map((b, i) => b ^ ks[i]);
  return cat(header, ct, hmac(keys.mac, be(seq, 8), header, ct));
}

function refKeys(direction: string): { enc: Uint8Array; mac: Uint8Array } {
  return { enc: h(KS[`${direction}_enc`]), mac: h(KS[`${direction}_mac`]) };
}

function implKeys(direction: string): DirectionKeys {
  return { enc: h(KS[`${direction}_enc`]), mac: h(KS[`${direction}_mac`]) };
}

// ---- tests ----

Deno.test("vectors: generator reproduces channel.json byte for byte", async () => {
  const text = await Deno.readTextFile(VECTORS_PATH);
  const rebuilt = serialize(await buildVectors(await keptInputsOf(V)));
  assert.equal(rebuilt, text);
});

Deno.test("vectors: test key is the embedded public test key; SPKI and fingerprint match", async () => {
  assert.match(V.rsa_test_key.WARNING, /PUBLIC TEST KEY/);
  const priv = createPrivateKey(V.rsa_test_key.private_pkcs8_pem);
  assert.equal(priv.asymmetricKeyDetails?.modulusLength, 2048);
  const refSpki = new Uint8Array(createPublicKey(priv).export({ type: "spki", format: "der" }));
  assert.equal(toHex(refSpki), V.rsa_test_key.spki_hex);
  const refFp = "SHA256:" +
    createHash("sha256").update(refSpki).digest("base64").replace(/=+$/, "");
  assert.equal(V.rsa_test_key.fingerprint, refFp);
  assert.equal(await fingerprint(spki), refFp);
  // The server loading the key file presents exactly this SPKI.
  const dir = await Deno.makeTempDir({ prefix: "efx-vectors-" });
  try {
    const path = join(dir, "server.key.pem");
    await Deno.writeTextFile(path, V.rsa_test_key.private_pkcs8_pem);
    const key = await loadServerPrivateKey(path);
    assert.equal(toHex(key.spki), V.rsa_test_key.spki_hex);
    // WebCrypto (the server's path) decrypts the fixed ciphertext to the secret.
    const plain = await crypto.subtle.decrypt({ name: "RSA-OAEP" }, key.decryptKey, ciphertext);
    assert.equal(toHex(new Uint8Array(plain)), V.inputs.secret);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vectors: the fixed OAEP ciphertext decrypts (node:crypto) to the secret", () => {
  const plain = privateDecrypt(
    {
      key: V.rsa_test_key.private_pkcs8_pem,
      padding: constants.RSA_PKCS1_OAEP_PADDING,
      oaepHash: "sha256",
    },
    ciphertext,
  );
  assert.equal(toHex(new Uint8Array(plain)), V.inputs.secret);
  assert.equal(ciphertext.length, 256);
});

Deno.test("vectors: handshake messages (implementation and by-hand layout)", () => {
  const magicVersion = cat(ascii("EFXP"), be(1, 2));
  const refCH = refHandshakeMessage(1, cat(magicVersion, nonceC));
  const refSH = refHandshakeMessage(2, cat(magicVersion, nonceS, be(spki.length, 2), spki));
  const refCK = refHandshakeMessage(3, cat(be(ciphertext.length, 2), ciphertext));
  assert.equal(toHex(refCH), V.handshake.client_hello);
  assert.equal(toHex(refSH), V.handshake.server_hello);
  assert.equal(toHex(refCK), V.handshake.client_key);
  assert.equal(toHex(encodeClientHello(nonceC, 1)), V.handshake.client_hello);
  assert.equal(toHex(encodeServerHello(nonceS, spki)), V.handshake.server_hello);
  assert.equal(toHex(encodeClientKey(ciphertext)), V.handshake.client_key);
  // And the parsers read back what the layout says.
  const ch = parseClientHello(refCH.subarray(3));
  assert.equal(ch.version, 1);
  assert.equal(toHex(ch.nonce), V.inputs.client_nonce);
  const sh = parseServerHello(refSH.subarray(3));
  assert.equal(toHex(sh.nonce), V.inputs.server_nonce);
  assert.equal(toHex(sh.spki), V.rsa_test_key.spki_hex);
  assert.equal(toHex(parseClientKey(refCK.subarray(3))), V.inputs.client_key_ciphertext);
});

Deno.test("vectors: transcript hash", async () => {
  const ref = createHash("sha256")
    .update(h(V.handshake.client_hello))
    .update(h(V.handshake.server_hello))
    .update(h(V.handshake.client_key))
    .digest("hex");
  assert.equal(ref, V.handshake.transcript_hash);
  const impl = await sha256(
    h(V.handshake.client_hello),
    h(V.handshake.server_hello),
    h(V.handshake.client_key),
  );
  assert.equal(toHex(impl), V.handshake.transcript_hash);
});

Deno.test("vectors: key schedule (HKDF-SHA256, salt = th, info = 'efx1 keys', 192 bytes)", async () => {
  assert.equal(KS.hkdf_ikm, V.inputs.secret);
  assert.equal(KS.hkdf_salt, V.handshake.transcript_hash);
  const okm = new Uint8Array(hkdfSync("sha256", secret, th, ascii("efx1 keys"), 192));
  assert.equal(toHex(okm), KS.okm);
  const names = [
    "c2s_enc",
    "c2s_mac",
    "s2c_enc",
    "s2c_mac",
    "client_finished_key",
    "server_finished_key",
  ];
  names.forEach((name, i) => assert.equal(toHex(okm.subarray(32 * i, 32 * i + 32)), KS[name]));
  // All six keys differ.
  assert.equal(new Set(names.map((n) => KS[n])).size, 6);

  const keys = await deriveSessionKeys(secret, th);
  assert.equal(toHex(keys.c2s.enc), KS.c2s_enc);
  assert.equal(toHex(keys.c2s.mac), KS.c2s_mac);
  assert.equal(toHex(keys.s2c.enc), KS.s2c_enc);
  assert.equal(toHex(keys.s2c.mac), KS.s2c_mac);
  assert.equal(toHex(keys.clientFinishedKey), KS.client_finished_key);
  assert.equal(toHex(keys.serverFinishedKey), KS.server_finished_key);
});

Deno.test("vectors: key confirmation (finished MACs and messages)", () => {
  const refCf = hmac(h(KS.client_finished_key), ascii("efx1 client finished"), th);
  const refSf = hmac(h(KS.server_finished_key), ascii("efx1 server finished"), th);
  assert.equal(toHex(refCf), V.key_confirmation.client_finished_mac);
  assert.equal(toHex(refSf), V.key_confirmation.server_finished_mac);
  assert.equal(toHex(refHandshakeMessage(4, refCf)), V.handshake.client_finished);
  assert.equal(toHex(refHandshakeMessage(5, refSf)), V.handshake.server_finished);

  assert.equal(
    toHex(finishedMac(h(KS.client_finished_key), "client", th)),
    V.key_confirmation.client_finished_mac,
  );
  assert.equal(
    toHex(finishedMac(h(KS.server_finished_key), "server", th)),
    V.key_confirmation.server_finished_mac,
  );
  assert.equal(
    toHex(encodeHandshakeMessage(HandshakeType.SERVER_FINISHED, refSf)),
    V.handshake.server_finished,
  );
});

Deno.test("vectors: keystream prefix for seq 0 and seq 1 (c2s)", async () => {
  const k = V.keystream;
  assert.equal(k.key, KS.c2s_enc);
  assert.equal(k.seq0_salt, toHex(cat(ascii("efx1 ks"), be(0, 8))));
  assert.equal(k.seq1_salt, toHex(cat(ascii("efx1 ks"), be(1, 8))));
  assert.equal(toHex(keystreamSalt(0n)), k.seq0_salt);
  assert.equal(toHex(keystreamSalt(1n)), k.seq1_salt);
  assert.equal(toHex(refKeystream(h(k.key), 0n, 80)), k.seq0_first_80);
  assert.equal(toHex(refKeystream(h(k.key), 1n, 80)), k.seq1_first_80);
  const ks = await Keystream.create(h(k.key));
  assert.equal(toHex(await ks.generate(0n, 80)), k.seq0_first_80);
  assert.equal(toHex(await ks.generate(1n, 80)), k.seq1_first_80);
  // Prefix property: a shorter keystream is a prefix of a longer one.
  assert.equal(toHex(await ks.generate(0n, 33)), k.seq0_first_80.slice(0, 66));
});

Deno.test("vectors: sealed frames match an independent sealing", () => {
  const records: RecordVector[] = V.records;
  assert.ok(records.length >= 4);
  for (const r of records) {
    const ref = refSeal(refKeys(r.direction), BigInt(r.seq), r.type, r.flags, h(r.body_hex));
    assert.equal(toHex(ref), r.frame_hex, r.name);
  }
  // Sequence numbers count from 0 per direction, in file order.
  for (const dir of ["c2s", "s2c"]) {
    const seqs = records.filter((r) => r.direction === dir).map((r) => r.seq);
    assert.deepEqual(seqs, seqs.map((_, i) => i));
  }
});

Deno.test("vectors: RecordOpener opens the frames; RecordSealer re-seals them to equal bytes", async () => {
  const records: RecordVector[] = V.records;
  for (const dir of ["c2s", "s2c"]) {
    const opener = await RecordOpener.create(implKeys(dir));
    const sealer = await RecordSealer.create(implKeys(dir));
    for (const r of records.filter((r) => r.direction === dir)) {
      const rec = await opener.open(h(r.frame_hex));
      assert.equal(rec.type, r.type, r.name);
      assert.equal(rec.flags, r.flags, r.name);
      assert.equal(toHex(rec.body), r.body_hex, r.name);
      const again = await sealer.seal(rec.type, rec.flags, rec.body);
      assert.equal(toHex(again), r.frame_hex, r.name);
    }
  }
});

Deno.test("vectors: a frame opened under the wrong direction's keys or seq fails", async () => {
  const records: RecordVector[] = V.records;
  const c2s = records.filter((r) => r.direction === "c2s");
  const wrongDir = await RecordOpener.create(implKeys("s2c"));
  await assert.rejects(wrongDir.open(h(c2s[0].frame_hex)), { name: "IntegrityError" });
  const wrongSeq = await RecordOpener.create(implKeys("c2s"));
  await assert.rejects(wrongSeq.open(h(c2s[1].frame_hex)), { name: "IntegrityError" });
});

// ---- client authentication ----

const CA = V.client_auth;

Deno.test("vectors: client_auth key is a public test key; SPKI, PEM and fingerprint match", async () => {
  assert.match(CA.WARNING, /PUBLIC TEST KEY/);
  const priv = createPrivateKey(CA.private_pkcs8_pem);
  assert.equal(priv.asymmetricKeyType, "rsa");
  assert.equal(priv.asymmetricKeyDetails?.modulusLength, 2048);
  const pub = createPublicKey(priv);
  assert.equal(pub.export({ type: "spki", format: "pem" }), CA.public_spki_pem);
  const refSpki = new Uint8Array(pub.export({ type: "spki", format: "der" }));
  assert.equal(toHex(refSpki), CA.spki_hex);
  const refFp = "SHA256:" +
    createHash("sha256").update(refSpki).digest("base64").replace(/=+$/, "");
  assert.equal(CA.fingerprint, refFp);
  assert.equal(await fingerprint(h(CA.spki_hex)), refFp);
  // A different key from the server's.
  assert.notEqual(CA.spki_hex, V.rsa_test_key.spki_hex);
});

Deno.test("vectors: client_auth signed message is 'efx1 client auth' || th of the vector handshake", () => {
  assert.equal(CA.transcript_hash, V.handshake.transcript_hash);
  assert.equal(CA.label_ascii, "efx1 client auth");
  assert.equal(CA.signed_message, toHex(cat(ascii("efx1 client auth"), th)));
  assert.equal(h(CA.signed_message).length, 16 + 32);
  // The auth message carries the SPKI and the signature in standard base64.
  const b64 = (hex: string) => Buffer.from(h(hex)).toString("base64");
  assert.deepEqual(CA.auth_message, { op: "auth", key: b64(CA.spki_hex), sig: b64(CA.signature) });
  assert.equal(CA.auth_message_json, JSON.stringify(CA.auth_message));
  assert.equal(h(CA.signature).length, 256);
});

Deno.test("vectors: node:crypto verifies the stored RSA-PSS signature (salt 32) independently", () => {
  const params = {
    key: CA.public_spki_pem,
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength: 32,
  };
  assert.equal(nodeVerify("sha256", h(CA.signed_message), params, h(CA.signature)), true);
  // The signature is bound to th: another transcript hash, or one flipped bit, fails.
  const otherTh = cat(ascii("efx1 client auth"), createHash("sha256").update("x").digest());
  assert.equal(nodeVerify("sha256", otherTh, params, h(CA.signature)), false);
  const flipped = h(CA.signature).slice();
  flipped[100] ^= 1;
  assert.equal(nodeVerify("sha256", h(CA.signed_message), params, flipped), false);
  // Salt length is part of the scheme: verifying as salt 0 (or the max) fails.
  for (const saltLength of [0, 222]) {
    assert.equal(
      nodeVerify("sha256", h(CA.signed_message), { ...params, saltLength }, h(CA.signature)),
      false,
      `salt ${saltLength}`,
    );
  }
});

Deno.test("vectors: verifyClientAuth accepts the stored auth message for th and refuses it elsewhere", async () => {
  assert.equal(await verifyClientAuth(CA.auth_message, th), CA.fingerprint);
  // The same message in any other session (another transcript hash) is refused.
  const otherTh = th.slice();
  otherTh[31] ^= 1;
  await assert.rejects(verifyClientAuth(CA.auth_message, otherTh), (err) => {
    assert.ok(err instanceof AuthError);
    assert.match(err.message, /bad signature for this session/);
    assert.ok(err.message.includes(CA.fingerprint));
    return true;
  });
  await assert.rejects(verifyClientAuth(CA.auth_message, new Uint8Array(32)), AuthError);
  // The server's key cannot stand in for the client's (signature by another key).
  const swapped = { ...CA.auth_message, key: Buffer.from(spki).toString("base64") };
  await assert.rejects(verifyClientAuth(swapped, th), AuthError);
});

Deno.test("vectors: clientAuthMessage with the test key signs exactly the vector message", async () => {
  const dir = await Deno.makeTempDir({ prefix: "efx-vectors-" });
  try {
    const path = join(dir, "client.key.pem");
    await Deno.writeTextFile(path, CA.private_pkcs8_pem, { mode: 0o600 });
    const id = await loadClientIdentity(path);
    assert.equal(id.fingerprint, CA.fingerprint);
    assert.equal(toHex(id.spki), CA.spki_hex);
    const msg = await clientAuthMessage(id, th);
    assert.equal(msg.op, "auth");
    assert.equal(msg.key, CA.auth_message.key);
    // PSS is randomized: a fresh signature differs but verifies the same way.
    assert.notEqual(msg.sig, CA.auth_message.sig);
    const params = {
      key: CA.public_spki_pem,
      padding: constants.RSA_PKCS1_PSS_PADDING,
      saltLength: 32,
    };
    assert.equal(
      nodeVerify("sha256", h(CA.signed_message), params, Buffer.from(msg.sig, "base64")),
      true,
    );
    assert.equal(await verifyClientAuth(msg, th), CA.fingerprint);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vectors: the auth record is the auth MSG sealed as c2s record 0", async () => {
  const r = CA.auth_record;
  assert.equal(r.direction, "c2s");
  assert.equal(r.seq, 0);
  const body = ascii(CA.auth_message_json);
  assert.equal(toHex(refSeal(refKeys("c2s"), 0n, 1, 0, body)), r.frame_hex);
  const opened = await (await RecordOpener.create(implKeys("c2s"))).open(h(r.frame_hex));
  assert.equal(opened.type, 1);
  assert.equal(new TextDecoder().decode(opened.body), CA.auth_message_json);
});

// ---- version 2: the signed ephemeral key ----

const V2 = V.handshake_v2;
const ephSpki = h(V2.ephemeral_test_key.spki_hex);
const ephCt = h(V2.client_key_ciphertext);

/** The server key's public half as PEM (node:crypto), for the independent checks. */
function serverPublicPem(): string {
  return createPublicKey(V.rsa_test_key.private_pkcs8_pem).export({ type: "spki", format: "pem" })
    .toString();
}

Deno.test("vectors v2: the ephemeral key is a public test key; SPKI and fingerprint match (node:crypto)", async () => {
  assert.match(V2.ephemeral_test_key.WARNING, /PUBLIC TEST KEY/);
  const priv = createPrivateKey(V2.ephemeral_test_key.private_pkcs8_pem);
  assert.equal(priv.asymmetricKeyDetails?.modulusLength, 2048);
  const ref = new Uint8Array(createPublicKey(priv).export({ type: "spki", format: "der" }));
  assert.equal(toHex(ref), V2.ephemeral_test_key.spki_hex);
  assert.notEqual(V2.ephemeral_test_key.spki_hex, V.rsa_test_key.spki_hex);
  assert.equal(await fingerprint(ephSpki), V2.ephemeral_test_key.fingerprint);
});

Deno.test("vectors v2: signed data by hand is 'efx2 ephemeral key' | not_before u64 | not_after u64 | len u16 | spki", () => {
  const ref = cat(
    ascii("efx2 ephemeral key"),
    be(V2.not_before_ms, 8),
    be(V2.not_after_ms, 8),
    be(ephSpki.length, 2),
    ephSpki,
  );
  assert.equal(toHex(ref), V2.signed_data);
  assert.equal(
    toHex(signedEphemeralData(ephSpki, V2.not_before_ms, V2.not_after_ms)),
    V2.signed_data,
  );
  assert.equal(new Date(V2.not_before_ms).toISOString(), V2.not_before_iso);
  assert.equal(V2.not_after_ms - V2.not_before_ms, 3_600_000);
});

Deno.test("vectors v2: node:crypto verifies the server key's RSA-PSS signature (salt 32); a flipped bit or another key fails", () => {
  const params = {
    key: serverPublicPem(),
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength: 32,
  };
  assert.equal(nodeVerify("sha256", h(V2.signed_data), params, h(V2.signature)), true);
  const data = h(V2.signed_data).slice();
  data[20] ^= 1; // inside not_before
  assert.equal(nodeVerify("sha256", data, params, h(V2.signature)), false);
  const byEph = { ...params, key: createPublicKey(V2.ephemeral_test_key.private_pkcs8_pem) };
  assert.equal(nodeVerify("sha256", h(V2.signed_data), byEph, h(V2.signature)), false);
});

Deno.test("vectors v2: openssl pkeyutl -verify (PSS, salt 32, SHA-256) checks the signature independently", async () => {
  const dir = await Deno.makeTempDir({ prefix: "efx-vectors-openssl-" });
  try {
    const pub = join(dir, "server.pub.pem");
    const digest = join(dir, "signed.sha256");
    const sig = join(dir, "sig.bin");
    await Deno.writeTextFile(pub, serverPublicPem());
    await Deno.writeFile(digest, createHash("sha256").update(h(V2.signed_data)).digest());
    await Deno.writeFile(sig, h(V2.signature));
    const run = (sigPath: string) =>
      new Deno.Command("openssl", {
        args: [
          "pkeyutl",
          "-verify",
          "-pubin",
          "-inkey",
          pub,
          "-in",
          digest,
          "-sigfile",
          sigPath,
          "-pkeyopt",
          "rsa_padding_mode:pss",
          "-pkeyopt",
          "rsa_pss_saltlen:32",
          "-pkeyopt",
          "digest:sha256",
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const ok = await run(sig);
    assert.equal(ok.success, true, new TextDecoder().decode(ok.stderr));
    assert.match(new TextDecoder().decode(ok.stdout), /Signature Verified Successfully/);
    // The same check fails on a corrupted signature (so it can fail).
    const bad = h(V2.signature).slice();
    bad[7] ^= 0x80;
    await Deno.writeFile(join(dir, "bad.bin"), bad);
    assert.equal((await run(join(dir, "bad.bin"))).success, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vectors v2: hello messages (by-hand layout, encoders, parser)", () => {
  const refCH = refHandshakeMessage(1, cat(ascii("EFXP"), be(2, 2), nonceC));
  const refSH = refHandshakeMessage(
    2,
    cat(
      ascii("EFXP"),
      be(2, 2),
      nonceS,
      be(spki.length, 2),
      spki,
      be(ephSpki.length, 2),
      ephSpki,
      be(V2.not_before_ms, 8),
      be(V2.not_after_ms, 8),
      be(h(V2.signature).length, 2),
      h(V2.signature),
    ),
  );
  const refCK = refHandshakeMessage(3, cat(be(ephCt.length, 2), ephCt));
  assert.equal(toHex(refCH), V2.client_hello);
  assert.equal(toHex(refSH), V2.server_hello);
  assert.equal(toHex(refCK), V2.client_key);
  assert.equal(toHex(encodeClientHello(nonceC, 2)), V2.client_hello);
  const eph = {
    spki: ephSpki,
    notBefore: V2.not_before_ms,
    notAfter: V2.not_after_ms,
    signature: h(V2.signature),
  };
  assert.equal(toHex(encodeServerHelloV2(nonceS, spki, eph)), V2.server_hello);
  const sh = parseServerHello(refSH.subarray(3));
  assert.equal(sh.version, 2);
  assert.equal(toHex(sh.spki), V.rsa_test_key.spki_hex);
  assert.equal(toHex(sh.ephemeral!.spki), V2.ephemeral_test_key.spki_hex);
  assert.equal(sh.ephemeral!.notBefore, V2.not_before_ms);
  assert.equal(sh.ephemeral!.notAfter, V2.not_after_ms);
  assert.equal(toHex(sh.ephemeral!.signature), V2.signature);
  assert.equal(parseClientHello(refCH.subarray(3)).version, 2);
});

Deno.test("vectors v2: the secret decrypts with the ephemeral key only; th, key schedule and finished MACs (node:crypto)", async () => {
  const oaep = { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" };
  const plain = privateDecrypt({ key: V2.ephemeral_test_key.private_pkcs8_pem, ...oaep }, ephCt);
  assert.equal(toHex(new Uint8Array(plain)), V.inputs.secret);
  // The long-term key cannot: this is what forward secrecy rests on.
  assert.throws(() => privateDecrypt({ key: V.rsa_test_key.private_pkcs8_pem, ...oaep }, ephCt));
  const refTh = createHash("sha256").update(h(V2.client_hello)).update(h(V2.server_hello))
    .update(h(V2.client_key)).digest();
  assert.equal(toHex(new Uint8Array(refTh)), V2.transcript_hash);
  const okm = new Uint8Array(hkdfSync("sha256", secret, refTh, ascii("efx1 keys"), 192));
  assert.equal(toHex(okm), V2.okm);
  const keys = await deriveSessionKeys(secret, h(V2.transcript_hash));
  assert.equal(toHex(keys.c2s.enc), V2.okm.slice(0, 64));
  const cf = refHandshakeMessage(
    4,
    hmac(okm.subarray(128, 160), ascii("efx1 client finished"), refTh),
  );
  const sf = refHandshakeMessage(
    5,
    hmac(okm.subarray(160, 192), ascii("efx1 server finished"), refTh),
  );
  assert.equal(toHex(cf), V2.client_finished);
  assert.equal(toHex(sf), V2.server_finished);
  assert.equal(
    toHex(
      encodeHandshakeMessage(
        HandshakeType.CLIENT_FINISHED,
        finishedMac(keys.clientFinishedKey, "client", h(V2.transcript_hash)),
      ),
    ),
    V2.client_finished,
  );
});

Deno.test("vectors v2: the client's check accepts the vector key inside its window (with 5 min skew) and refuses it outside", async () => {
  const eph = {
    spki: ephSpki,
    notBefore: V2.not_before_ms,
    notAfter: V2.not_after_ms,
    signature: h(V2.signature),
  };
  const min = 60_000;
  for (
    const now of [
      V2.not_before_ms - 4 * min,
      V2.not_before_ms + 30 * min,
      V2.not_after_ms + 4 * min,
    ]
  ) {
    await verifyEphemeralKey(spki, eph, now);
  }
  await assert.rejects(verifyEphemeralKey(spki, eph, V2.not_after_ms + 6 * min), AuthError);
  await assert.rejects(verifyEphemeralKey(spki, eph, V2.not_before_ms - 6 * min), AuthError);
  // Signature checked against the long-term key: the ephemeral key's own SPKI does not do.
  await assert.rejects(
    verifyEphemeralKey(ephSpki, eph, V2.not_before_ms),
    /not signed by the server key/,
  );
});

// ---- version 2 record layer: the prefix-keyed SHA-256 keystream ----

function v2Keys(direction: string): DirectionKeys {
  const okm = h(V2.okm);
  const at = direction === "c2s" ? 0 : 64;
  return { enc: okm.slice(at, at + 32), mac: okm.slice(at + 32, at + 64) };
}

Deno.test("vectors v2: keystream of seq 0, 1 and a whole 1 MiB record, by hand with node:crypto createHash", () => {
  const k = V2.keystream;
  assert.equal(k.key, V2.okm.slice(0, 64));
  assert.equal(k.seq0_salt, toHex(cat(ascii("efx2 ks"), be(0, 8))));
  assert.equal(k.seq1_salt, toHex(cat(ascii("efx2 ks"), be(1, 8))));
  assert.equal(toHex(keystream2Salt(1n)), k.seq1_salt);
  assert.equal(toHex(refKeystream2(h(k.key), 0n, 80)), k.seq0_first_80);
  assert.equal(toHex(refKeystream2(h(k.key), 1n, 80)), k.seq1_first_80);
  const big = refKeystream2(h(k.key), 7n, 1024 * 1024);
  assert.equal(createHash("sha256").update(big).digest("hex"), k.seq7_1mib_sha256);
  const ks = PrefixKeystream.create(h(k.key));
  assert.equal(toHex(ks.generate(0n, 80)), k.seq0_first_80);
  assert.equal(toHex(ks.generate(1n, 80)), k.seq1_first_80);
  assert.equal(toHex(ks.generate(0n, 33)), k.seq0_first_80.slice(0, 66)); // a prefix
  assert.equal(
    createHash("sha256").update(ks.generate(7n, 1024 * 1024)).digest("hex"),
    k.seq7_1mib_sha256,
  );
  // Not the version 1 keystream under the same key.
  assert.notEqual(toHex(refKeystream(h(k.key), 0n, 80)), k.seq0_first_80);
});

Deno.test("vectors v2: sealed frames match an independent sealing; the record layer opens and re-seals them", async () => {
  const records: RecordVector[] = V2.records;
  assert.equal(records.length, V.records.length);
  for (const r of records) {
    const ref = refSeal(v2Keys(r.direction), BigInt(r.seq), r.type, r.flags, h(r.body_hex), 2);
    assert.equal(toHex(ref), r.frame_hex, r.name);
  }
  for (const dir of ["c2s", "s2c"]) {
    const opener = await RecordOpener.create(v2Keys(dir), { version: 2 });
    const sealer = await RecordSealer.create(v2Keys(dir), undefined, 2);
    const v1 = await RecordOpener.create(v2Keys(dir), { version: 1 });
    for (const r of records.filter((r) => r.direction === dir)) {
      const rec = await opener.open(h(r.frame_hex));
      assert.equal(rec.type, r.type, r.name);
      assert.equal(toHex(rec.body), r.body_hex, r.name);
      assert.equal(toHex(await sealer.seal(rec.type, rec.flags, rec.body)), r.frame_hex, r.name);
      // The tag does not depend on the keystream: a version 1 opener accepts the
      // frame but decrypts a non-empty body to something else.
      const wrong = await v1.open(h(r.frame_hex));
      if (r.body_hex.length > 0) assert.notEqual(toHex(wrong.body), r.body_hex, r.name);
    }
  }
});
