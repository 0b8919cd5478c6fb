/**
 * RSA key handling for efx: generating, writing and loading PEM key files,
 * fingerprints, and importing the public key a server sends.
 *
 * Keys on disk are plain `rsaEncryption` keys: the private key as PKCS#8
 * (`-----BEGIN PRIVATE KEY-----`, mode 0600) and the public key as SPKI
 * (`-----BEGIN PUBLIC KEY-----`). The same files work for RSA-OAEP (server)
 * and RSA-PSS (client) use. Every problem with a key file is a
 * {@linkcode KeyFileError} (exit 2) with a one-line message naming the file.
 *
 * A fingerprint is `SHA256:` followed by the unpadded base64 of the SHA-256
 * of the SPKI DER, like ssh prints.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import { AuthError, KeyFileError, UsageError } from "./errors.ts";

/** Modulus size used when none is given. */
export const DEFAULT_BITS = 3072;
/** Smallest RSA modulus efx accepts, on disk or from the network. */
export const MIN_BITS = 2048;
/** Modulus sizes `efx keygen` can make. */
export const ALLOWED_BITS = [2048, 3072, 4096];

/** Largest modulus accepted when loading or importing (bounds the work a peer can cause). */
const MAX_BITS = 16384;
/** Key files larger than this are not key files. */
const MAX_KEY_FILE_BYTES = 1 << 20;

const OAEP: RsaHashedImportParams = { name: "RSA-OAEP", hash: "SHA-256" };
const PSS: RsaHashedImportParams = { name: "RSA-PSS", hash: "SHA-256" };

/**
 * `SHA256:` + base64 (no `=` padding) of the SHA-256 of the SPKI DER (like ssh).
 *
 * @example
 * ```ts
 * const fp = await fingerprint(spki); // "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
 * ```
 */
export async function fingerprint(spkiDer: Uint8Array): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", spkiDer as BufferSource));
  return "SHA256:" + toBase64(hash).replace(/=+$/, "");
}

/**
 * Validates a user-given fingerprint string `SHA256:<43 base64 chars>`
 * (prefix in any case, a trailing `=` allowed); returns it normalized;
 * throws {@linkcode UsageError} otherwise.
 */
export function parseFingerprint(text: string): string {
  // 32 bytes are 43 base64 characters; the last one carries 4 bits, so it is one of 16.
  const m = /^[Ss][Hh][Aa]256:([A-Za-z0-9+/]{42}[AEIMQUYcgkosw048])=?$/.exec(text.trim());
  if (!m) {
    const shown = text.length > 80 ? text.slice(0, 80) + "..." : text;
    throw new UsageError(
      `bad fingerprint '${shown}' (want SHA256: and 43 base64 characters, as 'efx fingerprint' prints)`,
    );
  }
  return "SHA256:" + m[1];
}

/** Encodes DER as PEM: `-----BEGIN label-----`, 64-column base64 lines, `-----END label-----`. */
export function pemEncode(label: string, der: Uint8Array): string {
  const lines = toBase64(der).match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/**
 * Decodes the first PEM block in `text`; `what` names the file in errors.
 * Throws {@linkcode KeyFileError} on missing or mismatched armor or corrupt base64.
 *
 * @example
 * ```ts
 * const { label, der } = pemDecode(await Deno.readTextFile("keys/server.pub.pem"), "keys/server.pub.pem");
 * // label === "PUBLIC KEY"
 * ```
 */
export function pemDecode(text: string, what: string): { label: string; der: Uint8Array } {
  const begin = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(text);
  if (!begin) throw new KeyFileError(`${what} is not a PEM file (no '-----BEGIN' line)`);
  const label = begin[1];
  const rest = text.slice(begin.index + begin[0].length);
  const end = /-----END ([A-Z0-9 ]+)-----/.exec(rest);
  if (!end) throw new KeyFileError(`${what} is truncated: no '-----END ${label}-----' line`);
  if (end[1] !== label) {
    throw new KeyFileError(`${what} is corrupt: BEGIN ${label} ends with END ${end[1]}`);
  }
  // Drop RFC 1421 headers such as "Proc-Type: 4,ENCRYPTED" (base64 never contains ':').
  const body = rest.slice(0, end.index).split(/\r?\n/).filter((l) => !l.includes(":")).join("")
    .replace(/\s+/g, "");
  if (!body || body.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(body)) {
    throw new KeyFileError(`${what} is corrupt: the ${label} block is not valid base64`);
  }
  return { label, der: fromBase64(body) };
}

/** A freshly generated key pair, PEM-encoded. */
export interface GeneratedKeyPair {
  /** PKCS#8 `PRIVATE KEY` PEM. */
  privatePem: string;
  /** SPKI `PUBLIC KEY` PEM. */
  publicPem: string;
  /** SPKI DER of the public key. */
  spki: Uint8Array;
  /** {@linkcode fingerprint} of `spki`. */
  fingerprint: string;
  /** Modulus size. */
  bits: number;
}

/**
 * Generates an RSA key pair (e=65537) as plain `rsaEncryption` keys usable for
 * RSA-OAEP and RSASSA-PSS. `bits` must be one of {@linkcode ALLOWED_BITS}
 * (else {@linkcode UsageError}).
 *
 * @example
 * ```ts
 * const pair = await generateKeyPair(2048);
 * console.log(pair.fingerprint);
 * ```
 */
export async function generateKeyPair(bits: number = DEFAULT_BITS): Promise<GeneratedKeyPair> {
  if (!ALLOWED_BITS.includes(bits)) {
    throw new UsageError(`key size must be one of ${ALLOWED_BITS.join(", ")} bits, not ${bits}`);
  }
  const pair = await crypto.subtle.generateKey(
    { ...OAEP, modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]) },
    true,
    ["encrypt", "decrypt"],
  );
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  return {
    privatePem: pemEncode("PRIVATE KEY", pkcs8),
    publicPem: pemEncode("PUBLIC KEY", spki),
    spki,
    fingerprint: await fingerprint(spki),
    bits,
  };
}

/**
 * Generates a key pair and writes `<dir>/<prefix>.key.pem` (PKCS#8, created
 * with mode 0600 so it is never readable by others, even briefly) and
 * `<dir>/<prefix>.pub.pem` (SPKI, mode 0644), creating `dir` if needed.
 * Refuses with {@linkcode KeyFileError} if either file exists, unless `force`.
 * `prefix` defaults to `"server"`; use `"client"` for a client identity.
 *
 * @example
 * ```ts
 * const { privatePath, fingerprint } = await writeKeyPair("keys", { bits: 3072 });
 * ```
 */
export async function writeKeyPair(
  dir: string,
  opts: { bits?: number; force?: boolean; prefix?: string } = {},
): Promise<{ privatePath: string; publicPath: string; fingerprint: string; bits: number }> {
  const prefix = opts.prefix ?? "server";
  const privatePath = join(dir, `${prefix}.key.pem`);
  const publicPath = join(dir, `${prefix}.pub.pem`);
  for (const path of [privatePath, publicPath]) {
    if (!opts.force && await exists(path)) {
      throw new KeyFileError(`${path} already exists (use --force to overwrite it)`);
    }
  }
  const pair = await generateKeyPair(opts.bits ?? DEFAULT_BITS);
  try {
    // Make the folder only when missing: a server confined by Deno
    // permissions to its two key files may not touch the folder itself.
    try {
      await writeNew(privatePath, pair.privatePem, 0o600, opts.force);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
      await Deno.mkdir(dir, { recursive: true });
      await writeNew(privatePath, pair.privatePem, 0o600, opts.force);
    }
    await writeNew(publicPath, pair.publicPem, 0o644, opts.force);
  } catch (err) {
    if (err instanceof KeyFileError) throw err;
    throw new KeyFileError(`cannot write keys in ${dir}: ${errorText(err)}`, { cause: err });
  }
  return { privatePath, publicPath, fingerprint: pair.fingerprint, bits: pair.bits };
}

/** The server's private key, ready for RSA-OAEP decryption and RSA-PSS signing. */
export interface ServerPrivateKey {
  /** RSA-OAEP SHA-256 private key, usage `decrypt` (protocol v1 key transport). */
  decryptKey: CryptoKey;
  /**
   * The same PKCS#8 key material imported a second time as RSA-PSS SHA-256,
   * usage `sign`: signs the short-lived ephemeral keys of protocol v2 (see
   * ephemeral.ts). Absent on keys built by hand (then the server speaks v1 only).
   */
  signKey?: CryptoKey;
  /** SPKI DER of the matching public key (what the server sends). */
  spki: Uint8Array;
  /** {@linkcode fingerprint} of `spki`. */
  fingerprint: string;
  /** Modulus size. */
  bits: number;
}

/** A private key file read and checked, before import for a particular use. */
export interface PrivateKeyFile {
  /** PKCS#8 DER, to import as RSA-OAEP or RSA-PSS. */
  pkcs8: Uint8Array;
  /** SPKI DER of the matching public key. */
  spki: Uint8Array;
  /** {@linkcode fingerprint} of `spki`. */
  fingerprint: string;
  /** Modulus size. */
  bits: number;
}

/**
 * Reads and checks a PKCS#8 PEM RSA private key (server or client). Throws
 * {@linkcode KeyFileError} for a missing or unreadable file, not PEM, corrupt
 * data, the wrong kind of PEM, a non-RSA key, or a modulus under 2048 bits.
 * Import `pkcs8` as RSA-PSS for signing; for the server use
 * {@linkcode loadServerPrivateKey}.
 */
export async function readPrivateKeyFile(path: string): Promise<PrivateKeyFile> {
  const { label, der } = pemDecode(await readKeyText(path), path);
  if (label !== "PRIVATE KEY") throw wrongKind(path, label, "PRIVATE KEY");
  return await privateKeyFromDer(der, path);
}

async function privateKeyFromDer(der: Uint8Array, path: string): Promise<PrivateKeyFile> {
  checkRsaAlgorithm(der, path);
  const key = await importOrFail(
    path,
    () => crypto.subtle.importKey("pkcs8", der as BufferSource, OAEP, true, ["decrypt"]),
  );
  const bits = checkBits(key, path);
  // Derive the public key: the JWK's n and e are the public part.
  const { n, e } = await crypto.subtle.exportKey("jwk", key);
  const pub = await crypto.subtle.importKey("jwk", { kty: "RSA", n, e }, OAEP, true, ["encrypt"]);
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pub));
  return { pkcs8: der, spki, fingerprint: await fingerprint(spki), bits };
}

/**
 * Loads a PKCS#8 PEM RSA private key for the server (RSA-OAEP SHA-256).
 * Same errors as {@linkcode readPrivateKeyFile}.
 *
 * @example
 * ```ts
 * const key = await loadServerPrivateKey("keys/server.key.pem");
 * console.log(`server key ${key.fingerprint} (${key.bits} bits)`);
 * ```
 */
export async function loadServerPrivateKey(path: string): Promise<ServerPrivateKey> {
  const file = await readPrivateKeyFile(path);
  const decryptKey = await crypto.subtle.importKey(
    "pkcs8",
    file.pkcs8 as BufferSource,
    OAEP,
    false,
    [
      "decrypt",
    ],
  );
  // WebCrypto binds a key to one algorithm: the same bytes again, as RSA-PSS.
  const signKey = await crypto.subtle.importKey("pkcs8", file.pkcs8 as BufferSource, PSS, false, [
    "sign",
  ]);
  file.pkcs8.fill(0); // the DER copy is no longer needed: both imports hold their own
  return { decryptKey, signKey, spki: file.spki, fingerprint: file.fingerprint, bits: file.bits };
}

/**
 * Reads a public (SPKI `PUBLIC KEY`) or private (PKCS#8 `PRIVATE KEY`) PEM key
 * file and returns its public key's SPKI, fingerprint and size. Used by
 * `efx fingerprint FILE` and the client's `--server-key`. Same errors as
 * {@linkcode readPrivateKeyFile}.
 *
 * @example
 * ```ts
 * const { fingerprint } = await loadPublicKeyFile("keys/server.pub.pem");
 * ```
 */
export async function loadPublicKeyFile(
  path: string,
): Promise<{ spki: Uint8Array; fingerprint: string; bits: number }> {
  const { label, der } = pemDecode(await readKeyText(path), path);
  if (label === "PRIVATE KEY") {
    const { spki, fingerprint, bits } = await privateKeyFromDer(der, path);
    return { spki, fingerprint, bits };
  }
  if (label !== "PUBLIC KEY") throw wrongKind(path, label, "PUBLIC KEY or PRIVATE KEY");
  checkRsaAlgorithm(der, path);
  const key = await importOrFail(
    path,
    () => crypto.subtle.importKey("spki", der as BufferSource, OAEP, true, ["encrypt"]),
  );
  const bits = checkBits(key, path);
  // Re-export so the fingerprint is of the canonical encoding the server sends.
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", key));
  return { spki, fingerprint: await fingerprint(spki), bits };
}

/**
 * Imports an SPKI DER received from the network as an RSA-OAEP SHA-256
 * encryption key. Throws {@linkcode AuthError} (exit 3) if it is not a valid
 * RSA public key or is smaller than {@linkcode MIN_BITS}.
 */
export async function importServerPublicKey(
  spki: Uint8Array,
): Promise<{ encryptKey: CryptoKey; bits: number }> {
  let encryptKey: CryptoKey;
  try {
    if (spki.length > 4096 || algorithmOid(spki) !== RSA_OID) throw new Error("not RSA");
    encryptKey = await crypto.subtle.importKey("spki", spki as BufferSource, OAEP, false, [
      "encrypt",
    ]);
  } catch (err) {
    throw new AuthError("server sent an invalid public key", { cause: err });
  }
  const bits = (encryptKey.algorithm as RsaHashedKeyAlgorithm).modulusLength;
  if (bits < MIN_BITS) throw new AuthError(`server key is too small (${bits} bits < ${MIN_BITS})`);
  if (bits > MAX_BITS) throw new AuthError(`server key is too large (${bits} bits > ${MAX_BITS})`);
  return { encryptKey, bits };
}

/**
 * Imports the server's long-term SPKI (already checked by
 * {@linkcode importServerPublicKey}) as an RSA-PSS SHA-256 verification key,
 * to check its signature on an ephemeral key (protocol v2).
 */
export async function importServerVerifyKey(spki: Uint8Array): Promise<CryptoKey> {
  try {
    return await crypto.subtle.importKey("spki", spki as BufferSource, PSS, false, ["verify"]);
  } catch (err) {
    throw new AuthError("server sent an invalid public key", { cause: err });
  }
}

/**
 * For `efx serve`: loads the private key at `privatePath`; if there is no such
 * file, generates a {@linkcode DEFAULT_BITS} pair with {@linkcode writeKeyPair}
 * in its directory, named after it (`server.key.pem` → prefix `server`), and
 * returns `created: true`. A missing file whose name does not end in
 * `.key.pem` is a {@linkcode KeyFileError}.
 *
 * @example
 * ```ts
 * const { key, created } = await ensureServerKey("keys/server.key.pem");
 * ```
 */
export async function ensureServerKey(
  privatePath: string,
): Promise<{ key: ServerPrivateKey; created: boolean }> {
  let created = false;
  if (!await exists(privatePath)) {
    const name = basename(privatePath);
    if (!name.endsWith(".key.pem") || name === ".key.pem") {
      throw new KeyFileError(
        `key file not found: ${privatePath} (make one with 'efx keygen', or name it *.key.pem to have it created)`,
      );
    }
    await writeKeyPair(dirname(privatePath), { prefix: name.slice(0, -".key.pem".length) });
    created = true;
  }
  return { key: await loadServerPrivateKey(privatePath), created };
}

// ---- helpers ----

const RSA_OID = "1.2.840.113549.1.1.1";
const KNOWN_OIDS: Record<string, string> = {
  "1.2.840.113549.1.1.10": "an RSA-PSS-only key",
  "1.2.840.10045.2.1": "an EC key",
  "1.3.101.112": "an Ed25519 key",
  "1.3.101.113": "an Ed448 key",
  "1.3.101.110": "an X25519 key",
  "1.3.101.111": "an X448 key",
  "1.2.840.10040.4.1": "a DSA key",
  "1.2.840.113549.1.3.1": "a DH key",
};

/** Throws unless the PKCS#8 or SPKI DER names the plain rsaEncryption algorithm. */
function checkRsaAlgorithm(der: Uint8Array, path: string): void {
  let oid: string;
  try {
    oid = algorithmOid(der);
  } catch {
    throw new KeyFileError(`${path} is corrupt: the key data is not valid DER`);
  }
  if (oid === RSA_OID) return;
  const what = KNOWN_OIDS[oid] ?? `a key of unknown type (algorithm ${oid})`;
  throw new KeyFileError(
    `${path} holds ${what}; efx needs a plain RSA key (make one with 'efx keygen')`,
  );
}

/**
 * Returns the dotted algorithm OID of a PKCS#8 or SPKI structure: both are a
 * SEQUENCE whose first SEQUENCE member starts with the algorithm OID.
 */
function algorithmOid(der: Uint8Array): string {
  const outer = readTlv(der, 0);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw new Error("not a SEQUENCE");
  for (let pos = outer.start; pos < outer.end;) {
    const item = readTlv(der, pos);
    if (item.tag === 0x30) {
      const oid = readTlv(der, item.start);
      if (oid.tag !== 0x06 || oid.end > item.end) throw new Error("no algorithm OID");
      return decodeOid(der.subarray(oid.start, oid.end));
    }
    pos = item.end;
  }
  throw new Error("no AlgorithmIdentifier");
}

/** Reads one DER tag-length header at `pos`; returns the tag and content bounds. */
function readTlv(der: Uint8Array, pos: number): { tag: number; start: number; end: number } {
  if (pos + 2 > der.length) throw new Error("truncated DER");
  const tag = der[pos];
  let len = der[pos + 1];
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3 || start + n > der.length) throw new Error("bad DER length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[start + i];
    start += n;
  }
  if (start + len > der.length) throw new Error("truncated DER");
  return { tag, start, end: start + len };
}

function decodeOid(bytes: Uint8Array): string {
  if (bytes.length === 0) throw new Error("empty OID");
  const parts: number[] = [];
  let value = 0;
  for (const b of bytes) {
    value = value * 128 + (b & 0x7f);
    if (!(b & 0x80)) {
      if (parts.length === 0) {
        parts.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      } else parts.push(value);
      value = 0;
    }
  }
  return parts.join(".");
}

/** The error for a PEM block of the wrong kind, with a fix where there is one. */
function wrongKind(path: string, found: string, expected: string): KeyFileError {
  const hints: Record<string, string> = {
    "RSA PRIVATE KEY":
      ` (a PKCS#1 key; convert it with: openssl pkcs8 -topk8 -nocrypt -in ${path} -out NEW.pem)`,
    "RSA PUBLIC KEY":
      ` (a PKCS#1 key; convert it with: openssl rsa -RSAPublicKey_in -in ${path} -pubout -out NEW.pem)`,
    "ENCRYPTED PRIVATE KEY":
      ` (a password-protected key; efx needs it unencrypted: openssl pkcs8 -in ${path} -nocrypt -out NEW.pem)`,
    "PUBLIC KEY": " (a public key; the private key is the *.key.pem file)",
  };
  return new KeyFileError(
    `${path} holds a '${found}' PEM block, expected '${expected}'${hints[found] ?? ""}`,
  );
}

async function importOrFail(path: string, load: () => Promise<CryptoKey>): Promise<CryptoKey> {
  try {
    return await load();
  } catch (err) {
    throw new KeyFileError(`${path} is corrupt: not a valid RSA key`, { cause: err });
  }
}

function checkBits(key: CryptoKey, path: string): number {
  const bits = (key.algorithm as RsaHashedKeyAlgorithm).modulusLength;
  if (bits < MIN_BITS) {
    throw new KeyFileError(`${path}: RSA key is too small (${bits} bits < ${MIN_BITS})`);
  }
  if (bits > MAX_BITS) {
    throw new KeyFileError(`${path}: RSA key is too large (${bits} bits > ${MAX_BITS})`);
  }
  return bits;
}

/** Reads a key file as text, turning every file-system problem into a clear KeyFileError. */
async function readKeyText(path: string): Promise<string> {
  try {
    const info = await Deno.stat(path);
    if (!info.isFile) throw new KeyFileError(`${path} is not a regular file`);
    if (info.size > MAX_KEY_FILE_BYTES) {
      throw new KeyFileError(`${path} is too large to be a key file`);
    }
    const bytes = await Deno.readFile(path);
    const text = new TextDecoder().decode(bytes);
    if (bytes[0] === 0x30 && !text.includes("-----BEGIN")) {
      throw new KeyFileError(`${path} looks like binary DER; efx needs a PEM key file`);
    }
    return text;
  } catch (err) {
    if (err instanceof KeyFileError) throw err;
    if (err instanceof Deno.errors.NotFound) {
      throw new KeyFileError(`key file not found: ${path}`, { cause: err });
    }
    throw new KeyFileError(`cannot read key file ${path}: ${errorText(err)}`, { cause: err });
  }
}

/** Writes a new file created with `mode`; with `replace`, removes an old one first. */
async function writeNew(path: string, text: string, mode: number, replace?: boolean) {
  if (replace) {
    await Deno.remove(path).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }
  try {
    await Deno.writeTextFile(path, text, { createNew: true, mode });
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) {
      throw new KeyFileError(`${path} already exists (use --force to overwrite it)`, {
        cause: err,
      });
    }
    throw err;
  }
  // The umask may have removed bits from 0644; public keys should be readable.
  if (Deno.build.os !== "windows") await Deno.chmod(path, mode);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw new KeyFileError(`cannot check ${path}: ${errorText(err)}`, { cause: err });
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message.split("\n")[0] : String(err);
}

/** Standard base64 of `bytes` (with padding). */
export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** Bytes of standard base64 `text`; throws on invalid input. */
export function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}
