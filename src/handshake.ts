/**
 * The handshake: server authentication by RSA key transport, and key
 * agreement bound to the whole transcript.
 *
 *     client                                   server
 *     CLIENT_HELLO  magic, highest version, nonce_c  ->
 *                 <-  SERVER_HELLO  magic, version, nonce_s, server SPKI
 *                       [v2: ephemeral SPKI, window, PSS signature by the server key]
 *     (client checks the SPKI against its trust store BEFORE any secret;
 *      v2: then the signature and the window)
 *     CLIENT_KEY    RSA-OAEP-SHA256(v2: ephemeral SPKI, v1: server SPKI, secret) ->
 *     CLIENT_FINISHED  HMAC(k_cf, label || th)  ->
 *                 <-  SERVER_FINISHED  HMAC(k_sf, label || th)
 *
 *     th   = SHA-256(CLIENT_HELLO || SERVER_HELLO || CLIENT_KEY)   (whole messages)
 *     keys = HKDF-SHA256(ikm = secret, salt = th, info = "efx1 keys", 192 bytes)
 *          = c2s_enc | c2s_mac | s2c_enc | s2c_mac | k_cf | k_sf
 *
 * Versions: the client offers the highest version it speaks, the server
 * answers with min(client's, its own). Version 2 gives forward secrecy: the
 * secret travels under a short-lived key (ephemeral.ts) that the server
 * erases after its lifetime. Both hellos are in th, so a version rewritten
 * on the path makes the key confirmations fail; a client that requires
 * forward secrecy refuses a v1 answer before sending anything.
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
  u64,
  utf8,
  utf8Decoder,
} from "./bytes.ts";
import { AuthError, EfxError, IntegrityError, ProtocolError, TimeoutError } from "./errors.ts";
import { BufferedReader, type Writable, writeAll } from "./io.ts";
import {
  type EphemeralKey,
  MAX_EPHEMERAL_BITS,
  MAX_EPHEMERAL_LIFETIME_MS,
  PSS_SALT_LEN,
  signedEphemeralData,
  type SignedEphemeralKey,
} from "./ephemeral.ts";
import {
  fingerprint,
  importServerPublicKey,
  importServerVerifyKey,
  type ServerPrivateKey,
} from "./keys.ts";
import type { DirectionKeys } from "./record.ts";

/** Highest protocol version spoken (2: forward secrecy with ephemeral keys). */
export const PROTOCOL_VERSION = 2;
/** Lowest protocol version spoken (1: key transport to the long-term key). */
export const MIN_PROTOCOL_VERSION = 1;
/** How far the client's clock may be off the server's when checking an ephemeral key's window. */
export const CLOCK_SKEW_MS = 5 * 60_000;
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
  /** The negotiated protocol version. */
  version: number;
  /** v2: fingerprint of the ephemeral key the secret was encrypted to. */
  ephemeralFingerprint?: string;
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

/** SERVER_HELLO body, version 1: magic(4) | version u16 | nonce_s(32) | spki_len u16 | spki. */
export function encodeServerHello(nonce: Uint8Array, spki: Uint8Array, version = 1) {
  return encodeHandshakeMessage(
    HandshakeType.SERVER_HELLO,
    concat(MAGIC, u16(version), nonce, u16(spki.length), spki),
  );
}

/**
 * SERVER_HELLO body, version 2: magic(4) | version u16 = 2 | nonce_s(32) |
 * spki_len u16 | spki | eph_len u16 | eph_spki | not_before u64 | not_after u64 |
 * sig_len u16 | sig.
 */
export function encodeServerHelloV2(
  nonce: Uint8Array,
  spki: Uint8Array,
  eph: SignedEphemeralKey,
) {
  return encodeHandshakeMessage(
    HandshakeType.SERVER_HELLO,
    concat(
      MAGIC,
      u16(2),
      nonce,
      u16(spki.length),
      spki,
      u16(eph.spki.length),
      eph.spki,
      u64(BigInt(eph.notBefore)),
      u64(BigInt(eph.notAfter)),
      u16(eph.signature.length),
      eph.signature,
    ),
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

/**
 * Parses a CLIENT_HELLO body; returns the version and nonce (version
 * unchecked). Versions 1 and 2 have exactly 38 bytes; a higher version may
 * carry more after the nonce (ignored: the server answers with its own).
 */
export function parseClientHello(body: Uint8Array): { version: number; nonce: Uint8Array } {
  const version = checkMagic(body, "the client");
  const known = version >= MIN_PROTOCOL_VERSION && version <= PROTOCOL_VERSION;
  if (known ? body.length !== 6 + NONCE_LEN : body.length < 6 + NONCE_LEN && version !== 0) {
    throw new ProtocolError("malformed CLIENT_HELLO (wrong length)");
  }
  return { version, nonce: body.subarray(6, 6 + NONCE_LEN) };
}

/** A parsed SERVER_HELLO. */
export interface ServerHello {
  version: number;
  nonce: Uint8Array;
  /** The long-term SPKI (the key the client pins). */
  spki: Uint8Array;
  /** Version 2: the signed ephemeral key. */
  ephemeral?: SignedEphemeralKey;
}

/** Parses a SERVER_HELLO body (versions 1 and 2; any other version is returned unparsed). */
export function parseServerHello(body: Uint8Array): ServerHello {
  const version = checkMagic(body, "the server");
  if (version !== 1 && version !== 2) {
    return { version, nonce: new Uint8Array(0), spki: new Uint8Array(0) };
  }
  let pos = 6 + NONCE_LEN;
  // A length-prefixed field; every length is checked against what is left.
  const field = (what: string): Uint8Array<ArrayBuffer> => {
    if (body.length < pos + 2) throw new ProtocolError(`malformed SERVER_HELLO (too short)`);
    const len = u16At(body, pos);
    if (body.length < pos + 2 + len) {
      throw new ProtocolError(`malformed SERVER_HELLO (${what} length does not match)`);
    }
    pos += 2 + len;
    return body.slice(pos - len, pos);
  };
  const nonce = body.subarray(6, 6 + NONCE_LEN);
  if (version === 1) {
    if (body.length < pos + 2) throw new ProtocolError("malformed SERVER_HELLO (too short)");
    if (body.length !== pos + 2 + u16At(body, pos)) {
      throw new ProtocolError("malformed SERVER_HELLO (key length does not match)");
    }
    return { version, nonce, spki: body.slice(pos + 2) };
  }
  const spki = field("key");
  const ephSpki = field("ephemeral key");
  if (body.length < pos + 16) throw new ProtocolError("malformed SERVER_HELLO (too short)");
  const view = new DataView(body.buffer, body.byteOffset + pos, 16);
  const notBefore = Number(view.getBigUint64(0));
  const notAfter = Number(view.getBigUint64(8));
  pos += 16;
  const signature = field("signature");
  if (pos !== body.length) throw new ProtocolError("malformed SERVER_HELLO (trailing bytes)");
  return { version, nonce, spki, ephemeral: { spki: ephSpki, notBefore, notAfter, signature } };
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

/** What the client learned from SERVER_HELLO, for the trust decision. */
export interface ServerHelloFacts {
  /** The version the server chose. */
  version: number;
  /** Version 2: the ephemeral key's fingerprint and window (ms since the epoch). */
  ephemeral?: { fingerprint: string; notBefore: number; notAfter: number };
  /**
   * Version 2: checks the long-term key's signature on the ephemeral key and
   * the window (throws AuthError); the handshake runs it anyway after the
   * trust decision, a verifier awaits it before recording that this server
   * offers forward secrecy. Resolves false for a version 1 hello.
   */
  forwardSecrecy: () => Promise<boolean>;
}

/** Options for {@linkcode clientHandshake}. */
export interface ClientHandshakeOptions {
  /** Decides whether the server's key is trusted; throws AuthError if not. Called before any secret is sent. */
  verifyServerKey: (spki: Uint8Array, hello: ServerHelloFacts) => Promise<void>;
  /** Highest protocol version to offer (default {@linkcode PROTOCOL_VERSION}; tests offer 1). */
  version?: number;
  /** Refuse a server that answers version 1 (no forward secrecy). */
  requireForwardSecrecy?: boolean;
  /** The clock for the window check (ms since the epoch; tests shift it). */
  now?: () => number;
}

function isoTime(ms: number): string {
  return Number.isFinite(ms) && Math.abs(ms) < 8.64e15 ? new Date(ms).toISOString() : String(ms);
}

/**
 * Checks a signed ephemeral key from SERVER_HELLO v2: the long-term key's
 * RSA-PSS signature (salt 32) over label, window and key, then the window
 * against the clock with {@linkcode CLOCK_SKEW_MS} either way, then the key
 * itself (RSA, 2048 to 4096 bits). Returns the OAEP encryption key.
 */
export async function verifyEphemeralKey(
  serverSpki: Uint8Array,
  eph: SignedEphemeralKey,
  now: number,
): Promise<CryptoKey> {
  const verifyKey = await importServerVerifyKey(serverSpki);
  const ok = await crypto.subtle.verify(
    { name: "RSA-PSS", saltLength: PSS_SALT_LEN },
    verifyKey,
    eph.signature,
    signedEphemeralData(eph.spki, eph.notBefore, eph.notAfter),
  );
  if (!ok) {
    throw new AuthError(
      "server's ephemeral key is not signed by the server key it presented (possible man-in-the-middle)",
    );
  }
  if (!(eph.notAfter > eph.notBefore) || eph.notAfter - eph.notBefore > MAX_EPHEMERAL_LIFETIME_MS) {
    throw new AuthError(
      `server's ephemeral key has a bad validity window (${isoTime(eph.notBefore)} to ${
        isoTime(eph.notAfter)
      }; at most 24 h allowed)`,
    );
  }
  if (now > eph.notAfter + CLOCK_SKEW_MS) {
    throw new AuthError(
      `server's ephemeral key expired at ${isoTime(eph.notAfter)} (now ${
        isoTime(now)
      }, 5 min clock skew allowed): a replayed old key, or a wrong clock`,
    );
  }
  if (now < eph.notBefore - CLOCK_SKEW_MS) {
    throw new AuthError(
      `server's ephemeral key is not valid before ${isoTime(eph.notBefore)} (now ${
        isoTime(now)
      }, 5 min clock skew allowed): check the clocks`,
    );
  }
  let imported: { encryptKey: CryptoKey; bits: number };
  try {
    imported = await importServerPublicKey(eph.spki);
  } catch (err) {
    throw new AuthError(`server's ephemeral key is unusable: ${(err as Error).message}`);
  }
  if (imported.bits > MAX_EPHEMERAL_BITS) {
    throw new AuthError(
      `server's ephemeral key is too large (${imported.bits} bits > ${MAX_EPHEMERAL_BITS})`,
    );
  }
  return imported.encryptKey;
}

/** The client side of the handshake. */
export async function clientHandshake(
  out: Writable,
  reader: BufferedReader,
  opts: ClientHandshakeOptions,
): Promise<HandshakeResult> {
  // State 1: send CLIENT_HELLO with the highest version we speak.
  const offered = opts.version ?? PROTOCOL_VERSION;
  const ch = encodeClientHello(randomBytes(NONCE_LEN), offered);
  await writeAll(out, ch);
  // State 2: expect SERVER_HELLO; authenticate the server key before anything secret.
  const sh = await readHandshakeMessage(reader, HandshakeType.SERVER_HELLO, "server");
  const hello = parseServerHello(sh.body);
  if (hello.version < MIN_PROTOCOL_VERSION || hello.version > offered) {
    const speaks = offered === MIN_PROTOCOL_VERSION
      ? `${offered}`
      : `${MIN_PROTOCOL_VERSION} to ${offered}`;
    throw new ProtocolError(
      `server speaks protocol version ${hello.version}; this client speaks ${speaks}`,
    );
  }
  if (hello.version < 2 && opts.requireForwardSecrecy) {
    throw new AuthError(
      `server answered protocol version ${hello.version}, without forward secrecy, and ` +
        `--require-forward-secrecy refuses it (an old server, or a downgrade on the path); nothing was sent`,
    );
  }
  // Check that the key is a usable RSA key of at least 2048 bits BEFORE the
  // trust decision, so that trust-on-first-use never records a key that is
  // then refused.
  let { encryptKey } = await importServerPublicKey(hello.spki);
  // The ephemeral key's signature is checked once, after the trust decision
  // (the verifier may ask for it first, to record that the server has v2).
  let ephCheck: Promise<CryptoKey> | undefined;
  const eph = hello.ephemeral;
  const checkEphemeral = () => {
    if (eph === undefined) return undefined;
    ephCheck ??= verifyEphemeralKey(hello.spki, eph, (opts.now ?? Date.now)());
    return ephCheck;
  };
  await opts.verifyServerKey(hello.spki, {
    version: hello.version,
    ephemeral: eph && {
      fingerprint: await fingerprint(eph.spki),
      notBefore: eph.notBefore,
      notAfter: eph.notAfter,
    },
    forwardSecrecy: async () => (await checkEphemeral()) !== undefined,
  });
  const ephKey = await checkEphemeral();
  if (ephKey !== undefined) encryptKey = ephKey;
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
  return {
    send: keys.c2s,
    recv: keys.s2c,
    transcriptHash: th,
    serverSpki: hello.spki,
    version: hello.version,
    ephemeralFingerprint: eph && await fingerprint(eph.spki),
  };
}

/** The modulus of each key (by its SPKI), big-endian, without leading zero bytes (computed once per key). */
const moduli = new WeakMap<Uint8Array, Uint8Array>();

async function modulusOf(spki: Uint8Array): Promise<Uint8Array> {
  let n = moduli.get(spki);
  if (n === undefined) {
    const pub = await crypto.subtle.importKey(
      "spki",
      spki as Uint8Array<ArrayBuffer>,
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
    moduli.set(spki, n);
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
  /** The rotating ephemeral keys (ephemeral.ts); without them the server speaks version 1 only. */
  ephemeral?: { current(): EphemeralKey };
  /** Highest version to answer (default 2 with `ephemeral`, else 1); 1 keeps a v1-only server for tests. */
  maxVersion?: number;
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
  // State 1: expect CLIENT_HELLO; answer min(client's highest, ours).
  const ch = await readHandshakeMessage(reader, HandshakeType.CLIENT_HELLO, "client");
  const hello = parseClientHello(ch.body);
  const ours = opts.ephemeral ? Math.min(opts.maxVersion ?? PROTOCOL_VERSION, PROTOCOL_VERSION) : 1;
  if (hello.version < MIN_PROTOCOL_VERSION) {
    const speaks = ours === MIN_PROTOCOL_VERSION ? `${ours}` : `${MIN_PROTOCOL_VERSION} to ${ours}`;
    const msg = `unsupported protocol version ${hello.version}; this server speaks ${speaks}`;
    await alert(AlertCode.VERSION, msg);
    throw new ProtocolError(`client offered ${msg}`);
  }
  const version = Math.min(hello.version, ours);
  // State 2: present our key (v2: and the current signed ephemeral key,
  // which is kept for this handshake even if a rotation happens meanwhile).
  const eph = version >= 2 ? opts.ephemeral!.current() : undefined;
  const sh = eph
    ? encodeServerHelloV2(randomBytes(NONCE_LEN), opts.key.spki, eph.signed)
    : encodeServerHello(randomBytes(NONCE_LEN), opts.key.spki);
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
  const n = await modulusOf(eph ? eph.signed.spki : opts.key.spki);
  const usable = ct.length === n.length && belowModulus(ct, n);
  let input = ct;
  if (!usable) {
    input = randomBytes(n.length);
    input[0] = 0;
  }
  let secret = randomBytes(SECRET_LEN);
  try {
    // An ephemeral key erased meanwhile (a handshake slower than the grace)
    // fails here like a bad ciphertext.
    const plain = eph ? await eph.decrypt(input) : new Uint8Array(
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
  return {
    send: keys.s2c,
    recv: keys.c2s,
    transcriptHash: th,
    serverSpki: opts.key.spki,
    version,
    ephemeralFingerprint: eph?.fingerprint,
  };
}
