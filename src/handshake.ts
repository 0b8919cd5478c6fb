/**
 * The handshake: server authentication by RSA key transport, and key
 * agreement bound to the whole transcript.
 *
 *     client                                   server
 *     CLIENT_HELLO  magic, version, nonce_c  ->
 *                 <-  SERVER_HELLO  magic, version, nonce_s, server SPKI
 *     (client checks the SPKI against its trust store BEFORE any secret)
 *     CLIENT_KEY    RSA-OAEP-SHA256(spki, secret) ->
 *     CLIENT_FINISHED  HMAC(k_cf, label || th)  ->
 *                 <-  SERVER_FINISHED  HMAC(k_sf, label || th)
 *
 *     th   = SHA-256(CLIENT_HELLO || SERVER_HELLO || CLIENT_KEY)   (whole messages)
 *     keys = HKDF-SHA256(ikm = secret, salt = th, info = "efx1 keys", 192 bytes)
 *          = c2s_enc | c2s_mac | s2c_enc | s2c_mac | k_cf | k_sf
 *
 * States are explicit: each side reads exactly the message its state expects
 * and anything else is an error. Every handshake message is
 * `type u8 | length u16be | body`, and the length is checked against
 * {@linkcode MAX_HANDSHAKE_BODY} before the body is allocated.
 *
 * No padding oracle: when the server cannot decrypt CLIENT_KEY it goes on
 * with a random secret, so the failure surfaces exactly like a wrong
 * CLIENT_FINISHED (same alert, same code path, one RSA decryption each,
 * also for a ciphertext of the wrong length).
 *
 * @module
 */
import { createHmac } from "node:crypto";
import {
  concat,
  constantTimeEqual,
  randomBytes,
  sanitize,
  sha256,
  u16,
  utf8,
  utf8Decoder,
} from "./bytes.ts";
import { AuthError, EfxError, IntegrityError, ProtocolError, TimeoutError } from "./errors.ts";
import { BufferedReader, type Writable, writeAll } from "./io.ts";
import { importServerPublicKey, type ServerPrivateKey } from "./keys.ts";
import type { DirectionKeys } from "./record.ts";

export const PROTOCOL_VERSION = 1;
export const MAGIC = utf8.encode("EFXP");
/** Largest handshake message body accepted (an 8192-bit key's SPKI fits). */
export const MAX_HANDSHAKE_BODY = 2048;
export const NONCE_LEN = 32;
export const SECRET_LEN = 32;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/** Handshake message types. */
export const HandshakeType = {
  CLIENT_HELLO: 1,
  SERVER_HELLO: 2,
  CLIENT_KEY: 3,
  CLIENT_FINISHED: 4,
  SERVER_FINISHED: 5,
  ALERT: 21,
} as const;

/** Alert codes sent in clear during the handshake. */
export const AlertCode = {
  VERSION: 1,
  AUTH: 2,
  BUSY: 3,
  PROTOCOL: 4,
  TIMEOUT: 5,
} as const;

const KEYS_INFO = utf8.encode("efx1 keys");
const CLIENT_FINISHED_LABEL = utf8.encode("efx1 client finished");
const SERVER_FINISHED_LABEL = utf8.encode("efx1 server finished");

/** Keys and facts both sides hold after a successful handshake. */
export interface HandshakeResult {
  /** Keys for records this side sends. */
  send: DirectionKeys;
  /** Keys for records this side receives. */
  recv: DirectionKeys;
  /** SHA-256 of the transcript (binds later authentication to this session). */
  transcriptHash: Uint8Array<ArrayBuffer>;
  /** The server's SPKI DER. */
  serverSpki: Uint8Array;
}

/** Everything the key schedule derives from the secret and the transcript hash. */
export interface SessionKeys {
  c2s: DirectionKeys;
  s2c: DirectionKeys;
  clientFinishedKey: Uint8Array<ArrayBuffer>;
  serverFinishedKey: Uint8Array<ArrayBuffer>;
}

/** The key schedule: HKDF-SHA256(secret, salt = th, info = "efx1 keys") split in six 32-byte keys. */
export async function deriveSessionKeys(
  secret: Uint8Array<ArrayBuffer>,
  transcriptHash: Uint8Array<ArrayBuffer>,
): Promise<SessionKeys> {
  const ikm = await crypto.subtle.importKey("raw", secret, "HKDF", false, ["deriveBits"]);
  const okm = new Uint8Array(
    await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: transcriptHash, info: KEYS_INFO },
      ikm,
      6 * 32 * 8,
    ),
  );
  const k = (i: number) => okm.slice(32 * i, 32 * i + 32);
  return {
    c2s: { enc: k(0), mac: k(1) },
    s2c: { enc: k(2), mac: k(3) },
    clientFinishedKey: k(4),
    serverFinishedKey: k(5),
  };
}

/** HMAC-SHA256(key, label || th): the key-confirmation values. */
export function finishedMac(
  key: Uint8Array,
  side: "client" | "server",
  th: Uint8Array,
): Uint8Array {
  const label = side === "client" ? CLIENT_FINISHED_LABEL : SERVER_FINISHED_LABEL;
  return new Uint8Array(createHmac("sha256", key).update(label).update(th).digest());
}

/** Frames one handshake message: type u8 | length u16be | body. */
export function encodeHandshakeMessage(type: number, body: Uint8Array): Uint8Array<ArrayBuffer> {
  if (body.length > MAX_HANDSHAKE_BODY) throw new Error("handshake body too large");
  return concat(new Uint8Array([type]), u16(body.length), body);
}

/** CLIENT_HELLO body: magic(4) | version u16 | nonce_c(32). */
export function encodeClientHello(nonce: Uint8Array, version = PROTOCOL_VERSION) {
  return encodeHandshakeMessage(HandshakeType.CLIENT_HELLO, concat(MAGIC, u16(version), nonce));
}

/** SERVER_HELLO body: magic(4) | version u16 | nonce_s(32) | spki_len u16 | spki. */
export function encodeServerHello(nonce: Uint8Array, spki: Uint8Array, version = PROTOCOL_VERSION) {
  return encodeHandshakeMessage(
    HandshakeType.SERVER_HELLO,
    concat(MAGIC, u16(version), nonce, u16(spki.length), spki),
  );
}

/** CLIENT_KEY body: ct_len u16 | RSA-OAEP ciphertext. */
export function encodeClientKey(ciphertext: Uint8Array) {
  return encodeHandshakeMessage(
    HandshakeType.CLIENT_KEY,
    concat(u16(ciphertext.length), ciphertext),
  );
}

/** ALERT body: code u8 | UTF-8 message (the rest of the body). */
export function encodeAlert(code: number, message: string) {
  const text = utf8.encode(message).subarray(0, MAX_HANDSHAKE_BODY - 1);
  return encodeHandshakeMessage(HandshakeType.ALERT, concat(new Uint8Array([code]), text));
}

function u16At(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

function checkMagic(body: Uint8Array, who: string) {
  if (body.length < 6 || !constantTimeEqual(body.subarray(0, 4), MAGIC)) {
    throw new ProtocolError(`${who} does not speak the efx protocol (bad magic)`);
  }
  return u16At(body, 4);
}

/** Parses a CLIENT_HELLO body; returns the version and nonce (version unchecked). */
export function parseClientHello(body: Uint8Array): { version: number; nonce: Uint8Array } {
  const version = checkMagic(body, "the client");
  if (version === PROTOCOL_VERSION && body.length !== 6 + NONCE_LEN) {
    throw new ProtocolError("malformed CLIENT_HELLO (wrong length)");
  }
  return { version, nonce: body.subarray(6, 6 + NONCE_LEN) };
}

/** Parses a SERVER_HELLO body; returns the version, nonce and SPKI (version unchecked). */
export function parseServerHello(
  body: Uint8Array,
): { version: number; nonce: Uint8Array; spki: Uint8Array } {
  const version = checkMagic(body, "the server");
  if (version !== PROTOCOL_VERSION) {
    return { version, nonce: new Uint8Array(0), spki: new Uint8Array(0) };
  }
  if (body.length < 6 + NONCE_LEN + 2) {
    throw new ProtocolError("malformed SERVER_HELLO (too short)");
  }
  const spkiLen = u16At(body, 6 + NONCE_LEN);
  if (body.length !== 6 + NONCE_LEN + 2 + spkiLen) {
    throw new ProtocolError("malformed SERVER_HELLO (key length does not match)");
  }
  return {
    version,
    nonce: body.subarray(6, 6 + NONCE_LEN),
    spki: body.slice(6 + NONCE_LEN + 2),
  };
}

/** Parses a CLIENT_KEY body; returns the RSA ciphertext. */
export function parseClientKey(body: Uint8Array): Uint8Array<ArrayBuffer> {
  if (body.length < 2 || u16At(body, 0) !== body.length - 2 || body.length === 2) {
    throw new ProtocolError("malformed CLIENT_KEY");
  }
  return body.slice(2);
}

/** Longest part of a handshake alert's text that is shown (the rest becomes "..."). */
const ALERT_TEXT_SHOWN = 200;

/**
 * Turns a received ALERT body into the matching error.
 *
 * A handshake alert is not authenticated: anyone on the path can send one in
 * place of SERVER_HELLO or SERVER_FINISHED. So a client shows its text only
 * as quoted, sanitized, bounded network text, never as the server's words,
 * and never as an authentication verdict: every handshake alert is exit 1,
 * whatever its code (only the timeout keeps its own error type). The
 * server's view (peer "client") names the code as before; it only logs it.
 */
export function alertToError(body: Uint8Array, peer: string): EfxError {
  const code = body[0] ?? 0;
  let text: string;
  try {
    text = sanitize(utf8Decoder.decode(body.subarray(1)));
  } catch {
    text = "(unreadable message)";
  }
  if (peer === "server") {
    const shown = text.length > ALERT_TEXT_SHOWN ? text.slice(0, ALERT_TEXT_SHOWN) + "..." : text;
    const msg = `server refused the handshake before authentication ` +
      `(unverified message from the network: ${JSON.stringify(shown)})`;
    return code === AlertCode.TIMEOUT ? new TimeoutError(msg) : new ProtocolError(msg);
  }
  const msg = `${peer} refused the handshake: ${text}`;
  if (code === AlertCode.AUTH) return new AuthError(msg);
  if (code === AlertCode.TIMEOUT) return new TimeoutError(msg);
  if (code === AlertCode.BUSY) return new EfxError(`${peer} is busy: ${text}`);
  return new ProtocolError(msg);
}

/** A handshake message as read: its type, body and whole raw bytes (for the transcript). */
export interface HandshakeMessage {
  type: number;
  body: Uint8Array<ArrayBuffer>;
  raw: Uint8Array<ArrayBuffer>;
}

/**
 * Reads one handshake message of the `expected` type. The length is checked
 * before the body is allocated; an ALERT becomes the matching error.
 */
export async function readHandshakeMessage(
  reader: BufferedReader,
  expected: number,
  peer: string,
): Promise<HandshakeMessage> {
  const head = new Uint8Array(3);
  try {
    await reader.readExact(head, "a handshake message");
  } catch (err) {
    if (err instanceof IntegrityError) {
      throw new ProtocolError(`${peer} closed the connection during the handshake`);
    }
    throw err;
  }
  const type = head[0];
  const len = u16At(head, 1);
  if (type !== expected && type !== HandshakeType.ALERT) {
    throw new ProtocolError(
      `unexpected handshake message from ${peer} (type ${type}, wanted ${expected}); not an efx peer?`,
    );
  }
  if (len > MAX_HANDSHAKE_BODY) {
    throw new ProtocolError(`handshake message from ${peer} too large (${len} bytes)`);
  }
  const body = new Uint8Array(len);
  try {
    await reader.readExact(body, "a handshake message");
  } catch (err) {
    if (err instanceof IntegrityError) {
      throw new ProtocolError(`${peer} closed the connection during the handshake`);
    }
    throw err;
  }
  if (type === HandshakeType.ALERT) throw alertToError(body, peer);
  return { type, body, raw: concat(head, body) };
}

/** Runs `work` with a deadline; on timeout calls `onTimeout` (which should close the connection). */
export async function withDeadline<T>(
  work: Promise<T>,
  ms: number,
  onTimeout: () => void,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new TimeoutError(`${what} timed out after ${ms / 1000} s`));
    }, ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
    work.catch(() => {}); // the loser's rejection is expected after a timeout
  }
}

/** Options for {@linkcode clientHandshake}. */
export interface ClientHandshakeOptions {
  /** Decides whether the server's key is trusted; throws AuthError if not. Called before any secret is sent. */
  verifyServerKey: (spki: Uint8Array) => Promise<void>;
  /** Protocol version to offer (tests only). */
  version?: number;
}

/** The client side of the handshake. */
export async function clientHandshake(
  out: Writable,
  reader: BufferedReader,
  opts: ClientHandshakeOptions,
): Promise<HandshakeResult> {
  // State 1: send CLIENT_HELLO.
  const ch = encodeClientHello(randomBytes(NONCE_LEN), opts.version ?? PROTOCOL_VERSION);
  await writeAll(out, ch);
  // State 2: expect SERVER_HELLO; authenticate the server key before anything secret.
  const sh = await readHandshakeMessage(reader, HandshakeType.SERVER_HELLO, "server");
  const hello = parseServerHello(sh.body);
  if (hello.version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      `server speaks protocol version ${hello.version}; this client speaks ${PROTOCOL_VERSION}`,
    );
  }
  // Check that the key is a usable RSA key of at least 2048 bits BEFORE the
  // trust decision, so that trust-on-first-use never records a key that is
  // then refused.
  const { encryptKey } = await importServerPublicKey(hello.spki);
  await opts.verifyServerKey(hello.spki);
  // State 3: key transport and our key confirmation.
  const secret = randomBytes(SECRET_LEN);
  const ct = new Uint8Array(await crypto.subtle.encrypt({ name: "RSA-OAEP" }, encryptKey, secret));
  const ck = encodeClientKey(ct);
  const th = await sha256(ch, sh.raw, ck);
  const keys = await deriveSessionKeys(secret, th);
  const cf = encodeHandshakeMessage(
    HandshakeType.CLIENT_FINISHED,
    finishedMac(keys.clientFinishedKey, "client", th),
  );
  await writeAll(out, concat(ck, cf));
  // State 4: the server proves it could decrypt the secret.
  const sf = await readHandshakeMessage(reader, HandshakeType.SERVER_FINISHED, "server");
  if (!constantTimeEqual(sf.body, finishedMac(keys.serverFinishedKey, "server", th))) {
    throw new AuthError(
      "server failed key confirmation: it does not hold the private key it presented, or the handshake was tampered with",
    );
  }
  return { send: keys.c2s, recv: keys.s2c, transcriptHash: th, serverSpki: hello.spki };
}

/** The modulus of each server key, big-endian, without leading zero bytes (computed once per key). */
const moduli = new WeakMap<ServerPrivateKey, Uint8Array>();

async function modulusOf(key: ServerPrivateKey): Promise<Uint8Array> {
  let n = moduli.get(key);
  if (n === undefined) {
    const pub = await crypto.subtle.importKey(
      "spki",
      key.spki as Uint8Array<ArrayBuffer>,
      { name: "RSA-OAEP", hash: "SHA-256" },
      true,
      ["encrypt"],
    );
    const b64 = String((await crypto.subtle.exportKey("jwk", pub)).n).replace(/-/g, "+")
      .replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    let z = 0;
    while (z < bytes.length - 1 && bytes[z] === 0) z++;
    n = bytes.slice(z);
    moduli.set(key, n);
  }
  return n;
}

/** Whether the big-endian `x` is below `n` (same length; both public). */
function belowModulus(x: Uint8Array, n: Uint8Array): boolean {
  for (let i = 0; i < n.length; i++) {
    if (x[i] !== n[i]) return x[i] < n[i];
  }
  return false;
}

/** Options for {@linkcode serverHandshake}. */
export interface ServerHandshakeOptions {
  key: ServerPrivateKey;
}

/** The server side of the handshake. Sends an ALERT before throwing when it can. */
export async function serverHandshake(
  out: Writable,
  reader: BufferedReader,
  opts: ServerHandshakeOptions,
): Promise<HandshakeResult> {
  const alert = async (code: number, message: string) => {
    try {
      await writeAll(out, encodeAlert(code, message));
    } catch { /* the peer may be gone already */ }
  };
  // State 1: expect CLIENT_HELLO of our version.
  const ch = await readHandshakeMessage(reader, HandshakeType.CLIENT_HELLO, "client");
  const hello = parseClientHello(ch.body);
  if (hello.version !== PROTOCOL_VERSION) {
    const msg =
      `unsupported protocol version ${hello.version}; this server speaks ${PROTOCOL_VERSION}`;
    await alert(AlertCode.VERSION, msg);
    throw new ProtocolError(`client offered ${msg}`);
  }
  // State 2: present our key.
  const sh = encodeServerHello(randomBytes(NONCE_LEN), opts.key.spki);
  await writeAll(out, sh);
  // State 3: expect CLIENT_KEY then CLIENT_FINISHED.
  const ck = await readHandshakeMessage(reader, HandshakeType.CLIENT_KEY, "client");
  const ct = parseClientKey(ck.body);
  const cf = await readHandshakeMessage(reader, HandshakeType.CLIENT_FINISHED, "client");
  const th = await sha256(ch.raw, sh, ck.raw);
  // Implicit rejection: a ciphertext that does not decrypt to a 32-byte
  // secret is replaced by a random secret, and the failure shows up only as
  // the key-confirmation failure below. Every CLIENT_KEY costs exactly one
  // RSA private-key operation: a ciphertext of the wrong length (which the
  // RSA code refuses at once, before any modular arithmetic), or of the
  // right length but not below the modulus (refused at once too), is
  // replaced by a dummy of the modulus length whose first byte is 0: it is
  // below the modulus, goes through the whole decryption, and its OAEP
  // padding then fails as a forged ciphertext's does. Both checks compare
  // public values only.
  const n = await modulusOf(opts.key);
  const usable = ct.length === n.length && belowModulus(ct, n);
  let input = ct;
  if (!usable) {
    input = randomBytes(n.length);
    input[0] = 0;
  }
  let secret = randomBytes(SECRET_LEN);
  try {
    const plain = new Uint8Array(
      await crypto.subtle.decrypt({ name: "RSA-OAEP" }, opts.key.decryptKey, input),
    );
    if (usable && plain.length === SECRET_LEN) secret = plain;
  } catch { /* keep the random secret */ }
  const keys = await deriveSessionKeys(secret, th);
  if (!constantTimeEqual(cf.body, finishedMac(keys.clientFinishedKey, "client", th))) {
    await alert(AlertCode.AUTH, "handshake failed: key confirmation failed");
    throw new AuthError("client failed key confirmation (tampered or replayed handshake)");
  }
  // State 4: confirm our side.
  await writeAll(
    out,
    encodeHandshakeMessage(
      HandshakeType.SERVER_FINISHED,
      finishedMac(keys.serverFinishedKey, "server", th),
    ),
  );
  return { send: keys.s2c, recv: keys.c2s, transcriptHash: th, serverSpki: opts.key.spki };
}
