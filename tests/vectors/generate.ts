/**
 * Generates tests/vectors/channel.json: byte-exact vectors for the efx
 * handshake (version 1, and version 2 with a signed ephemeral key under
 * `handshake_v2`), key schedule, keystream and record layer (see PROTOCOL.md).
 *
 *     deno run --allow-read --allow-write --allow-run tests/vectors/generate.ts [--check] [--new-key]
 *
 * Everything is deterministic except four inputs that cannot be: the RSA
 * server test key pair, the RSA-OAEP ciphertext of the secret (OAEP is
 * randomized), the RSA client test key pair and the client's RSA-PSS
 * signature (PSS is randomized too); and for version 2 the ephemeral test key
 * pair, the server key's RSA-PSS signature on it and the OAEP ciphertext of
 * the secret under it. They are made once (the keys with
 * `openssl genpkey`, the ciphertext and the signature with WebCrypto), stored
 * in channel.json, and reused on every later run, so a rerun reproduces the
 * file byte for byte. `--new-key` makes new ones (a channel.json without the
 * `client_auth` entry gets new client inputs only, one without
 * `handshake_v2` new version 2 inputs only); `--check` compares
 * instead of writing and exits 1 on a difference.
 *
 * All three key pairs are PUBLIC TEST KEYS: they are published in this repository
 * and must never protect anything.
 *
 * @module
 */
import { concat, fromHex, sha256, toHex, utf8 } from "../../src/bytes.ts";
import { PSS_SALT_LENGTH } from "../../src/auth.ts";
import {
  deriveSessionKeys,
  encodeClientHello,
  encodeClientKey,
  encodeHandshakeMessage,
  encodeServerHello,
  encodeServerHelloV2,
  finishedMac,
  HandshakeType,
  PROTOCOL_VERSION,
} from "../../src/handshake.ts";
import { PSS_SALT_LEN, signedEphemeralData } from "../../src/ephemeral.ts";
import { Keystream, keystreamSalt } from "../../src/keystream.ts";
import { keystream2Salt, PrefixKeystream } from "../../src/keystream2.ts";
import { type DirectionKeys, FLAG_END, RecordSealer, RecordType } from "../../src/record.ts";

/** Where the vectors live. */
export const VECTORS_PATH = new URL("./channel.json", import.meta.url);

/** The fixed, made-up inputs (counting patterns, easy to spot in a hex dump). */
export const FIXED = {
  secret: counting(0x00, 32),
  clientNonce: counting(0xa0, 32),
  serverNonce: counting(0xc0, 32),
};

/** The inputs that are produced once and then kept (see the module doc). */
export interface KeptInputs {
  /** Server test key, PKCS#8 PEM. */
  privatePem: string;
  ciphertext: Uint8Array<ArrayBuffer>;
  /** Client test key, PKCS#8 PEM. */
  clientPrivatePem: string;
  /** RSA-PSS-SHA256 (salt 32) signature of CLIENT_AUTH_LABEL || th by the client key. */
  clientSignature: Uint8Array<ArrayBuffer>;
  /** Version 2: the ephemeral test key, PKCS#8 PEM. */
  ephemeralPrivatePem: string;
  /** Version 2: RSA-PSS-SHA256 (salt 32) signature of the signed ephemeral data by the server key. */
  ephemeralSignature: Uint8Array<ArrayBuffer>;
  /** Version 2: RSA-OAEP-SHA256 ciphertext of `secret` under the ephemeral key. */
  ephemeralCiphertext: Uint8Array<ArrayBuffer>;
}

/** Version 2's fixed validity window: 2026-01-01T00:00:00Z for one hour (ms since the epoch). */
export const V2_WINDOW = { notBefore: 1_767_225_600_000, notAfter: 1_767_229_200_000 };

/** The label a client signs in front of the transcript hash. */
export const CLIENT_AUTH_LABEL = "efx1 client auth";

/** One record of the vectors: its plaintext fields and its sealed wire frame. */
export interface RecordVector {
  name: string;
  direction: "c2s" | "s2c";
  seq: number;
  type: number;
  flags: number;
  body_hex: string;
  frame_hex: string;
}

/** The records sealed for the vectors, in sequence order per direction. */
export const RECORDS: {
  name: string;
  direction: "c2s" | "s2c";
  type: RecordType;
  flags: number;
  body: Uint8Array;
}[] = [
  { name: "empty MSG", direction: "c2s", type: RecordType.MSG, flags: 0, body: new Uint8Array(0) },
  {
    name: "short MSG",
    direction: "c2s",
    type: RecordType.MSG,
    flags: 0,
    body: utf8.encode('{"op":"ping"}'),
  },
  {
    name: "DATA of 100 bytes (byte i = i)",
    direction: "c2s",
    type: RecordType.DATA,
    flags: 0,
    body: counting(0, 100),
  },
  {
    name: "DATA with END",
    direction: "c2s",
    type: RecordType.DATA,
    flags: FLAG_END,
    body: utf8.encode("end of file\n"),
  },
  { name: "CLOSE", direction: "s2c", type: RecordType.CLOSE, flags: 0, body: new Uint8Array(0) },
  {
    name: "ALERT",
    direction: "s2c",
    type: RecordType.ALERT,
    flags: 0,
    body: utf8.encode('{"code":"not-found","message":"no such file"}'),
  },
];

/** Bytes start, start+1, ... (mod 256). */
export function counting(start: number, n: number): Uint8Array<ArrayBuffer> {
  return Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff);
}

/** SPKI DER of the public half of a PKCS#8 PEM RSA key, as the server sends it. */
export async function spkiOfPrivatePem(pem: string): Promise<Uint8Array<ArrayBuffer>> {
  const b64 = pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, "");
  const der = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const alg = { name: "RSA-OAEP", hash: "SHA-256" };
  const priv = await crypto.subtle.importKey("pkcs8", der, alg, true, ["decrypt"]);
  const { n, e } = await crypto.subtle.exportKey("jwk", priv);
  const pub = await crypto.subtle.importKey("jwk", { kty: "RSA", n, e }, alg, true, ["encrypt"]);
  return new Uint8Array(await crypto.subtle.exportKey("spki", pub));
}

/** `SHA256:` + unpadded base64 of the SHA-256 of an SPKI. */
async function fingerprintOf(spki: Uint8Array): Promise<string> {
  return "SHA256:" + b64(await sha256(spki)).replace(/=+$/, "");
}

function b64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

/** The transcript hash of the vector handshake (depends on the server key and the ciphertext). */
async function vectorTranscriptHash(privatePem: string, ciphertext: Uint8Array) {
  const spki = await spkiOfPrivatePem(privatePem);
  return await sha256(
    encodeClientHello(FIXED.clientNonce, 1),
    encodeServerHello(FIXED.serverNonce, spki),
    encodeClientKey(ciphertext),
  );
}

/** PEM text of a DER value, 64 characters a line. */
function pem(label: string, der: Uint8Array): string {
  const lines = b64(der).match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** Builds the whole vector file from the kept inputs (deterministic). */
export async function buildVectors(kept: KeptInputs): Promise<Record<string, unknown>> {
  const spki = await spkiOfPrivatePem(kept.privatePem);
  const fp = await fingerprintOf(spki);

  const clientHello = encodeClientHello(FIXED.clientNonce, 1);
  const serverHello = encodeServerHello(FIXED.serverNonce, spki);
  const clientKey = encodeClientKey(kept.ciphertext);
  const th = await sha256(clientHello, serverHello, clientKey);
  const keys = await deriveSessionKeys(FIXED.secret, th);
  const cfMac = finishedMac(keys.clientFinishedKey, "client", th);
  const sfMac = finishedMac(keys.serverFinishedKey, "server", th);
  const clientFinished = encodeHandshakeMessage(HandshakeType.CLIENT_FINISHED, cfMac);
  const serverFinished = encodeHandshakeMessage(HandshakeType.SERVER_FINISHED, sfMac);

  const ks = await Keystream.create(keys.c2s.enc);
  const records = await sealRecords(keys, 1);

  // Client authentication: the first c2s record of a session, an `auth` MSG.
  const clientSpki = await spkiOfPrivatePem(kept.clientPrivatePem);
  const signed = concat(utf8.encode(CLIENT_AUTH_LABEL), th);
  const authMessage = { op: "auth", key: b64(clientSpki), sig: b64(kept.clientSignature) };
  const authBody = utf8.encode(JSON.stringify(authMessage));
  const authFrame = await (await RecordSealer.create(keys.c2s)).seal(RecordType.MSG, 0, authBody);

  return {
    description: "efx protocol test vectors: version 1 (handshake, key_schedule, ...) and " +
      "version 2 (handshake_v2); see PROTOCOL.md. All byte strings are " +
      "lower-case hex. Regenerate with: deno run --allow-read --allow-write --allow-run " +
      "tests/vectors/generate.ts",
    protocol_version: 1,
    highest_protocol_version: PROTOCOL_VERSION,
    rsa_test_key: {
      WARNING: "PUBLIC TEST KEY: published with these vectors, never use it to protect anything",
      bits: 2048,
      private_pkcs8_pem: kept.privatePem,
      spki_hex: toHex(spki),
      fingerprint: fp,
    },
    inputs: {
      secret: toHex(FIXED.secret),
      client_nonce: toHex(FIXED.clientNonce),
      server_nonce: toHex(FIXED.serverNonce),
      client_key_ciphertext: toHex(kept.ciphertext),
      ciphertext_note: "RSA-OAEP-SHA256 is randomized: this ciphertext of `secret` under the " +
        "test key was produced once and is kept as an input",
    },
    handshake: {
      client_hello: toHex(clientHello),
      server_hello: toHex(serverHello),
      client_key: toHex(clientKey),
      transcript_hash: toHex(th),
      client_finished: toHex(clientFinished),
      server_finished: toHex(serverFinished),
    },
    key_schedule: {
      hkdf_hash: "SHA-256",
      hkdf_ikm: toHex(FIXED.secret),
      hkdf_salt: toHex(th),
      hkdf_info_ascii: "efx1 keys",
      hkdf_length: 192,
      okm: toHex(
        concat(
          keys.c2s.enc,
          keys.c2s.mac,
          keys.s2c.enc,
          keys.s2c.mac,
          keys.clientFinishedKey,
          keys.serverFinishedKey,
        ),
      ),
      c2s_enc: toHex(keys.c2s.enc),
      c2s_mac: toHex(keys.c2s.mac),
      s2c_enc: toHex(keys.s2c.enc),
      s2c_mac: toHex(keys.s2c.mac),
      client_finished_key: toHex(keys.clientFinishedKey),
      server_finished_key: toHex(keys.serverFinishedKey),
    },
    key_confirmation: {
      client_finished_mac: toHex(cfMac),
      server_finished_mac: toHex(sfMac),
    },
    keystream: {
      direction: "c2s",
      key: toHex(keys.c2s.enc),
      seq0_salt: toHex(keystreamSalt(0n)),
      seq0_first_80: toHex(await ks.generate(0n, 80)),
      seq1_salt: toHex(keystreamSalt(1n)),
      seq1_first_80: toHex(await ks.generate(1n, 80)),
    },
    records,
    client_auth: {
      WARNING: "PUBLIC TEST KEY: published with these vectors, never use it to protect anything",
      bits: 2048,
      private_pkcs8_pem: kept.clientPrivatePem,
      public_spki_pem: pem("PUBLIC KEY", clientSpki),
      spki_hex: toHex(clientSpki),
      fingerprint: await fingerprintOf(clientSpki),
      transcript_hash: toHex(th),
      label_ascii: CLIENT_AUTH_LABEL,
      signed_message: toHex(signed),
      signature_scheme: `RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length ${PSS_SALT_LENGTH}`,
      signature: toHex(kept.clientSignature),
      signature_note: "RSA-PSS is randomized: this signature of `signed_message` by the client " +
        "test key was produced once and is kept as an input",
      auth_message: authMessage,
      auth_message_json: JSON.stringify(authMessage),
      auth_record: {
        direction: "c2s",
        seq: 0,
        note: "the auth MSG sealed as the first record the client sends in the vector session " +
          "(c2s keys above, seq 0)",
        frame_hex: toHex(authFrame),
      },
    },
    handshake_v2: await buildV2(kept, spki),
  };
}

/** {@linkcode RECORDS} sealed under a session's keys with protocol `version`'s keystream. */
async function sealRecords(
  keys: { c2s: DirectionKeys; s2c: DirectionKeys },
  version: 1 | 2,
): Promise<RecordVector[]> {
  const records: RecordVector[] = [];
  for (const direction of ["c2s", "s2c"] as const) {
    const sealer = await RecordSealer.create(keys[direction], undefined, version);
    for (const r of RECORDS.filter((r) => r.direction === direction)) {
      const seq = Number(sealer.nextSeq);
      const frame = await sealer.seal(r.type, r.flags, r.body);
      records.push({
        name: r.name,
        direction,
        seq,
        type: r.type,
        flags: r.flags,
        body_hex: toHex(r.body),
        frame_hex: toHex(frame),
      });
    }
  }
  return records;
}

/** The version 2 handshake vector: same nonces and secret, ephemeral key transport. */
async function buildV2(kept: KeptInputs, spki: Uint8Array<ArrayBuffer>) {
  const ephSpki = await spkiOfPrivatePem(kept.ephemeralPrivatePem);
  const { notBefore, notAfter } = V2_WINDOW;
  const signedData = signedEphemeralData(ephSpki, notBefore, notAfter);
  const eph = { spki: ephSpki, notBefore, notAfter, signature: kept.ephemeralSignature };
  const clientHello = encodeClientHello(FIXED.clientNonce, 2);
  const serverHello = encodeServerHelloV2(FIXED.serverNonce, spki, eph);
  const clientKey = encodeClientKey(kept.ephemeralCiphertext);
  const th = await sha256(clientHello, serverHello, clientKey);
  const keys = await deriveSessionKeys(FIXED.secret, th);
  const cfMac = finishedMac(keys.clientFinishedKey, "client", th);
  const sfMac = finishedMac(keys.serverFinishedKey, "server", th);
  const ks = PrefixKeystream.create(keys.c2s.enc);
  return {
    note: "version 2: the server key (rsa_test_key) signs the ephemeral key and its window; " +
      "the secret (inputs.secret) travels under the ephemeral key; same nonces as version 1",
    ephemeral_test_key: {
      WARNING: "PUBLIC TEST KEY: published with these vectors, never use it to protect anything",
      bits: 2048,
      private_pkcs8_pem: kept.ephemeralPrivatePem,
      spki_hex: toHex(ephSpki),
      fingerprint: await fingerprintOf(ephSpki),
    },
    not_before_ms: notBefore,
    not_after_ms: notAfter,
    not_before_iso: new Date(notBefore).toISOString(),
    not_after_iso: new Date(notAfter).toISOString(),
    signed_data: toHex(signedData),
    signature_scheme: `RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length ${PSS_SALT_LEN}, ` +
      "by the server key (rsa_test_key)",
    signature: toHex(kept.ephemeralSignature),
    signature_note:
      "RSA-PSS is randomized: this signature was produced once and is kept as an input",
    client_key_ciphertext: toHex(kept.ephemeralCiphertext),
    ciphertext_note: "RSA-OAEP-SHA256 of inputs.secret under the ephemeral key, produced once " +
      "and kept as an input",
    client_hello: toHex(clientHello),
    server_hello: toHex(serverHello),
    client_key: toHex(clientKey),
    transcript_hash: toHex(th),
    hkdf_info_ascii: "efx1 keys",
    okm: toHex(
      concat(
        keys.c2s.enc,
        keys.c2s.mac,
        keys.s2c.enc,
        keys.s2c.mac,
        keys.clientFinishedKey,
        keys.serverFinishedKey,
      ),
    ),
    client_finished: toHex(
      encodeHandshakeMessage(HandshakeType.CLIENT_FINISHED, cfMac),
    ),
    server_finished: toHex(
      encodeHandshakeMessage(HandshakeType.SERVER_FINISHED, sfMac),
    ),
    keystream: {
      construction: "block i = SHA-256(enc || 0^32 || salt || u64(i)), i = 0, 1, ...; " +
        'salt = "efx2 ks" || u64(seq)',
      direction: "c2s",
      key: toHex(keys.c2s.enc),
      seq0_salt: toHex(keystream2Salt(0n)),
      seq0_first_80: toHex(ks.generate(0n, 80)),
      seq1_salt: toHex(keystream2Salt(1n)),
      seq1_first_80: toHex(ks.generate(1n, 80)),
      seq7_1mib_sha256: toHex(await sha256(ks.generate(7n, 1024 * 1024))),
    },
    records: await sealRecords(keys, 2),
  };
}

/** DER of a PKCS#8 PEM. */
function pemDer(pemText: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(
    atob(pemText.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, "")),
    (c) => c.charCodeAt(0),
  );
}

/** Fresh version 2 inputs: an ephemeral key (openssl), its signature by the server key, the ciphertext. */
async function freshV2Inputs(
  serverPrivatePem: string,
): Promise<Pick<KeptInputs, "ephemeralPrivatePem" | "ephemeralSignature" | "ephemeralCiphertext">> {
  const ephemeralPrivatePem = await opensslKey();
  const ephSpki = await spkiOfPrivatePem(ephemeralPrivatePem);
  const signKey = await crypto.subtle.importKey(
    "pkcs8",
    pemDer(serverPrivatePem),
    { name: "RSA-PSS", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const ephemeralSignature = new Uint8Array(
    await crypto.subtle.sign(
      { name: "RSA-PSS", saltLength: PSS_SALT_LEN },
      signKey,
      signedEphemeralData(ephSpki, V2_WINDOW.notBefore, V2_WINDOW.notAfter),
    ),
  );
  const pub = await crypto.subtle.importKey(
    "spki",
    ephSpki,
    { name: "RSA-OAEP", hash: "SHA-256" },
    false,
    ["encrypt"],
  );
  const ephemeralCiphertext = new Uint8Array(
    await crypto.subtle.encrypt({ name: "RSA-OAEP" }, pub, FIXED.secret),
  );
  return { ephemeralPrivatePem, ephemeralSignature, ephemeralCiphertext };
}

/** The JSON text exactly as stored. */
export function serialize(vectors: Record<string, unknown>): string {
  return JSON.stringify(vectors, null, 2) + "\n";
}

async function opensslKey(): Promise<string> {
  const out = await new Deno.Command("openssl", {
    args: ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`openssl genpkey failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  const pem = new TextDecoder().decode(out.stdout);
  if (!pem.startsWith("-----BEGIN PRIVATE KEY-----")) {
    throw new Error("openssl did not write PKCS#8");
  }
  return pem;
}

/** A fresh client key (openssl) and its signature over the vector transcript. */
async function freshClientInputs(
  server: { privatePem: string; ciphertext: Uint8Array<ArrayBuffer> },
): Promise<Pick<KeptInputs, "clientPrivatePem" | "clientSignature">> {
  const clientPrivatePem = await opensslKey();
  const der = Uint8Array.from(
    atob(clientPrivatePem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, "")),
    (c) => c.charCodeAt(0),
  );
  const signKey = await crypto.subtle.importKey(
    "pkcs8",
    der,
    { name: "RSA-PSS", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const th = await vectorTranscriptHash(server.privatePem, server.ciphertext);
  const clientSignature = new Uint8Array(
    await crypto.subtle.sign(
      { name: "RSA-PSS", saltLength: PSS_SALT_LENGTH },
      signKey,
      concat(utf8.encode(CLIENT_AUTH_LABEL), th),
    ),
  );
  return { clientPrivatePem, clientSignature };
}

async function freshInputs(): Promise<KeptInputs> {
  const privatePem = await opensslKey();
  const spki = await spkiOfPrivatePem(privatePem);
  const pub = await crypto.subtle.importKey(
    "spki",
    spki,
    { name: "RSA-OAEP", hash: "SHA-256" },
    false,
    ["encrypt"],
  );
  const ciphertext = new Uint8Array(
    await crypto.subtle.encrypt({ name: "RSA-OAEP" }, pub, FIXED.secret),
  );
  return {
    privatePem,
    ciphertext,
    ...await freshClientInputs({ privatePem, ciphertext }),
    ...await freshV2Inputs(privatePem),
  };
}

async function keptInputs(): Promise<KeptInputs | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(VECTORS_PATH);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  return keptInputsOf(JSON.parse(text), true);
}

/**
 * The kept inputs of a parsed channel.json. Without a `client_auth` entry
 * (an older file), new client inputs are made when `makeMissing`, else it throws.
 */
export async function keptInputsOf(
  // deno-lint-ignore no-explicit-any
  v: any,
  makeMissing = false,
): Promise<KeptInputs> {
  const server = {
    privatePem: v.rsa_test_key.private_pkcs8_pem as string,
    ciphertext: fromHex(v.inputs.client_key_ciphertext) as Uint8Array<ArrayBuffer>,
  };
  const missing = (what: string) => {
    if (!makeMissing) throw new Error(`channel.json has no ${what} entry`);
  };
  let client: Pick<KeptInputs, "clientPrivatePem" | "clientSignature">;
  if (v.client_auth) {
    client = {
      clientPrivatePem: v.client_auth.private_pkcs8_pem,
      clientSignature: fromHex(v.client_auth.signature) as Uint8Array<ArrayBuffer>,
    };
  } else {
    missing("client_auth");
    client = await freshClientInputs(server);
  }
  const h2 = v.handshake_v2;
  if (!h2) missing("handshake_v2");
  const v2 = h2
    ? {
      ephemeralPrivatePem: h2.ephemeral_test_key.private_pkcs8_pem as string,
      ephemeralSignature: fromHex(h2.signature) as Uint8Array<ArrayBuffer>,
      ephemeralCiphertext: fromHex(h2.client_key_ciphertext) as Uint8Array<ArrayBuffer>,
    }
    : await freshV2Inputs(server.privatePem);
  return { ...server, ...client, ...v2 };
}

if (import.meta.main) {
  const check = Deno.args.includes("--check");
  const kept = Deno.args.includes("--new-key") ? null : await keptInputs();
  if (check && !kept) {
    console.error("generate.ts --check: no channel.json to check");
    Deno.exit(1);
  }
  const text = serialize(await buildVectors(kept ?? await freshInputs()));
  if (check) {
    const same = text === await Deno.readTextFile(VECTORS_PATH);
    console.log(same ? "channel.json is up to date" : "channel.json differs from the generator");
    Deno.exit(same ? 0 : 1);
  }
  await Deno.writeTextFile(VECTORS_PATH, text);
  console.log(`wrote ${VECTORS_PATH.pathname}`);
}
