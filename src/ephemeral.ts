/**
 * Short-lived RSA keys for forward secrecy (protocol v2), in the manner of
 * SSH protocol 1's "server key".
 *
 * The server makes an RSA key pair at start and a new one every lifetime
 * (default 1 h), keeps it only in memory (the private key is generated
 * non-extractable, so its bytes never exist in JavaScript memory, are never
 * exported and never written anywhere), and signs the public half once, with
 * its long-term key (RSA-PSS SHA-256, salt 32), together with its validity
 * window. Clients encrypt the session secret to the ephemeral key; the
 * long-term key only vouches for it. Once a key has been replaced and a
 * short grace for handshakes in flight has passed, every reference to it is
 * dropped, so that nothing in the process can decrypt with it any more.
 *
 * The next key is generated in the background before the current one
 * expires (WebCrypto's generateKey is asynchronous and runs off the event
 * loop), so handshakes never wait for a key generation.
 *
 * Signed data (see PROTOCOL.md, "SERVER_HELLO, version 2"):
 *
 *     "efx2 ephemeral key" | not_before u64be | not_after u64be | spki_len u16be | spki
 *
 * with times in milliseconds since the Unix epoch.
 *
 * @module
 */
import { concat, u16, u64, utf8 } from "./bytes.ts";
import { EfxError } from "./errors.ts";
import { fingerprint, MIN_BITS, type ServerPrivateKey } from "./keys.ts";
import type { Logger } from "./log.ts";

/** Label at the start of the signed data (18 ASCII bytes). */
export const EPHEMERAL_LABEL = utf8.encode("efx2 ephemeral key");
/** Default lifetime of an ephemeral key. */
export const DEFAULT_EPHEMERAL_LIFETIME_MS = 3_600_000;
/** Longest lifetime a server may give (and a client accepts in a window). */
export const MAX_EPHEMERAL_LIFETIME_MS = 24 * 3_600_000;
/** Shortest lifetime a server accepts (a key must outlive its own generation). */
export const MIN_EPHEMERAL_LIFETIME_MS = 1_000;
/** Largest ephemeral modulus (keeps SERVER_HELLO within the handshake limit). */
export const MAX_EPHEMERAL_BITS = 4096;
/** RSA-PSS salt length used for the signature (the SHA-256 length). */
export const PSS_SALT_LEN = 32;

/** The public, signed half of an ephemeral key, as SERVER_HELLO v2 carries it. */
export interface SignedEphemeralKey {
  /** SPKI DER of the ephemeral RSA public key. */
  spki: Uint8Array<ArrayBuffer>;
  /** Start of the validity window, ms since the epoch. */
  notBefore: number;
  /** End of the validity window, ms since the epoch. */
  notAfter: number;
  /** RSA-PSS SHA-256 signature of {@linkcode signedEphemeralData} by the long-term key. */
  signature: Uint8Array<ArrayBuffer>;
}

/** The bytes the long-term key signs: label | not_before | not_after | spki_len | spki. */
export function signedEphemeralData(
  spki: Uint8Array,
  notBefore: number,
  notAfter: number,
): Uint8Array<ArrayBuffer> {
  return concat(
    EPHEMERAL_LABEL,
    u64(BigInt(notBefore)),
    u64(BigInt(notAfter)),
    u16(spki.length),
    spki,
  );
}

/** Signs an ephemeral public key and its window with the long-term RSA-PSS key. */
export async function signEphemeralKey(
  signKey: CryptoKey,
  spki: Uint8Array<ArrayBuffer>,
  notBefore: number,
  notAfter: number,
): Promise<SignedEphemeralKey> {
  const signature = new Uint8Array(
    await crypto.subtle.sign(
      { name: "RSA-PSS", saltLength: PSS_SALT_LEN },
      signKey,
      signedEphemeralData(spki, notBefore, notAfter),
    ),
  );
  return { spki, notBefore, notAfter, signature };
}

/** One ephemeral key: the signed public half and, until erased, the private key. */
export class EphemeralKey {
  readonly signed: SignedEphemeralKey;
  readonly fingerprint: string;
  readonly bits: number;
  #privateKey: CryptoKey | null;

  constructor(signed: SignedEphemeralKey, privateKey: CryptoKey, fp: string, bits: number) {
    this.signed = signed;
    this.#privateKey = privateKey;
    this.fingerprint = fp;
    this.bits = bits;
  }

  /** Whether the private key has been erased. */
  get erased(): boolean {
    return this.#privateKey === null;
  }

  /** RSA-OAEP SHA-256 decryption; throws once the key is erased. */
  async decrypt(ciphertext: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
    const key = this.#privateKey;
    if (key === null) throw new Error("ephemeral key erased");
    return new Uint8Array(await crypto.subtle.decrypt({ name: "RSA-OAEP" }, key, ciphertext));
  }

  /** Drops the only reference to the private key (its bytes were never in JS memory). */
  erase(): void {
    this.#privateKey = null;
  }

  /** TEST HOOK: the live private key, as a thief of the process memory would get it. */
  privateKeyForTesting(): CryptoKey | null {
    return this.#privateKey;
  }
}

/** Generates an RSA-OAEP SHA-256 key pair (private half non-extractable) and signs it. */
export async function makeEphemeralKey(
  signKey: CryptoKey,
  bits: number,
  notBefore: number,
  notAfter: number,
): Promise<EphemeralKey> {
  const pair = await crypto.subtle.generateKey(
    {
      name: "RSA-OAEP",
      hash: "SHA-256",
      modulusLength: bits,
      publicExponent: new Uint8Array([1, 0, 1]),
    },
    false,
    ["encrypt", "decrypt"],
  );
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const signed = await signEphemeralKey(signKey, spki, notBefore, notAfter);
  return new EphemeralKey(signed, pair.privateKey, await fingerprint(spki), bits);
}

/** Settings of an {@linkcode EphemeralKeyRing}. */
export interface EphemeralOptions {
  /** The long-term key as RSA-PSS SHA-256 (usage `sign`). */
  signKey: CryptoKey;
  /** Modulus size of the ephemeral keys (2048..4096). */
  bits: number;
  /** Validity of each key (default 1 h). */
  lifetimeMs?: number;
  /** How long a replaced key is kept for handshakes in flight (default 12 s). */
  graceMs?: number;
  /** The clock (ms since the epoch); tests shift it. */
  now?: () => number;
  /** Called when a key becomes the one offered (the first one included). */
  onRotate?: (key: EphemeralKey) => void;
  /** Called when a background generation fails (it is retried). */
  onError?: (message: string) => void;
}

/**
 * Validates an ephemeral lifetime; returns an error message, or undefined
 * when it is acceptable.
 */
export function checkLifetime(ms: number): string | undefined {
  if (!Number.isFinite(ms) || ms <= 0) {
    return "the ephemeral key lifetime must be positive (0 would mean a new key for every " +
      "handshake, or none at all); give e.g. 1h or 10m";
  }
  if (ms < MIN_EPHEMERAL_LIFETIME_MS) return "the ephemeral key lifetime must be at least 1 s";
  if (ms > MAX_EPHEMERAL_LIFETIME_MS) {
    return "the ephemeral key lifetime must be at most 24 h (the key would no longer be short-lived)";
  }
  return undefined;
}

/**
 * The server's current ephemeral key and its successor, rotated in the
 * background. {@linkcode current} never waits.
 */
type RingOptions = Required<Omit<EphemeralOptions, "onError" | "onRotate">> & EphemeralOptions;

export class EphemeralKeyRing {
  #opts: RingOptions;
  #current: EphemeralKey;
  /** Replaced keys still inside their grace period. */
  #retiring = new Set<EphemeralKey>();
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #stopped = false;
  /** Rotations done (for tests and the bench). */
  rotations = 0;

  private constructor(opts: RingOptions, first: EphemeralKey) {
    this.#opts = opts;
    this.#current = first;
  }

  /** Makes the first key (awaited), then rotates in the background until {@linkcode stop}. */
  static async start(options: EphemeralOptions): Promise<EphemeralKeyRing> {
    const opts = {
      lifetimeMs: DEFAULT_EPHEMERAL_LIFETIME_MS,
      graceMs: 12_000,
      now: Date.now,
      ...options,
    };
    const bad = checkLifetime(opts.lifetimeMs);
    if (bad) throw new RangeError(bad);
    if (opts.bits < MIN_BITS || opts.bits > MAX_EPHEMERAL_BITS) {
      throw new RangeError(
        `ephemeral key size must be ${MIN_BITS} to ${MAX_EPHEMERAL_BITS} bits, not ${opts.bits}`,
      );
    }
    const t = Math.floor(opts.now());
    const first = await makeEphemeralKey(opts.signKey, opts.bits, t, t + opts.lifetimeMs);
    const ring = new EphemeralKeyRing(opts, first);
    opts.onRotate?.(first);
    ring.#scheduleNext();
    return ring;
  }

  /** The key to offer now. */
  current(): EphemeralKey {
    return this.#current;
  }

  /** TEST HOOK: every key whose private half is still held (current first). */
  liveKeysForTesting(): EphemeralKey[] {
    return [this.#current, ...this.#retiring].filter((k) => !k.erased);
  }

  /** Stops rotating and erases every key. */
  stop(): void {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const k of this.#retiring) k.erase();
    this.#retiring.clear();
    this.#current.erase();
  }

  #later(ms: number, f: () => void): void {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      if (!this.#stopped) f();
    }, Math.max(0, ms));
    Deno.unrefTimer(t);
    this.#timers.add(t);
  }

  /** Generates the successor ahead of time, then switches at the current key's end. */
  #scheduleNext(): void {
    const { lifetimeMs, now } = this.#opts;
    const cur = this.#current;
    // Start early enough for a slow generation: half the lifetime, at most a minute.
    const lead = Math.min(lifetimeMs / 2, 60_000);
    this.#later(cur.signed.notAfter - lead - now(), () => this.#generate(cur));
  }

  async #generate(cur: EphemeralKey): Promise<void> {
    const { lifetimeMs, now, signKey, bits } = this.#opts;
    let next: EphemeralKey;
    try {
      const from = Math.max(cur.signed.notAfter, Math.floor(now()));
      next = await makeEphemeralKey(signKey, bits, from, from + lifetimeMs);
    } catch (err) {
      const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
      this.#opts.onError?.(`cannot make the next ephemeral key (retrying in 5 s): ${why}`);
      this.#later(5_000, () => this.#generate(cur));
      return;
    }
    if (this.#stopped) return;
    this.#later(next.signed.notBefore - now(), () => this.#activate(cur, next));
  }

  #activate(old: EphemeralKey, next: EphemeralKey): void {
    this.#current = next;
    this.rotations++;
    this.#retiring.add(old);
    // Handshakes that received the old key may still send CLIENT_KEY for it.
    this.#later(this.#opts.graceMs, () => {
      old.erase();
      this.#retiring.delete(old);
    });
    this.#opts.onRotate?.(next);
    this.#scheduleNext();
  }
}

/**
 * For the server: starts the ephemeral key ring for `key` (same size as the
 * long-term key, 2048 to 4096 bits), logging each
 * rotation; returns undefined for a v1-only server (`maxVersion: 1`, or a
 * key without a signing half).
 */
export async function startEphemeralKeys(
  key: ServerPrivateKey,
  opts: {
    ephemeralLifetimeMs?: number;
    maxVersion?: number;
    ephemeralClock?: () => number;
    handshakeTimeoutMs?: number;
  },
  log: Logger,
): Promise<EphemeralKeyRing | undefined> {
  if (opts.maxVersion === 1 || key.signKey === undefined) return undefined;
  if (key.bits > MAX_EPHEMERAL_BITS) {
    // Its SPKI and signature with an ephemeral key would not fit in one
    // SERVER_HELLO (2048 bytes): serve v1 only, and say so.
    log.error(
      `WARNING: the ${key.bits}-bit server key is too large for protocol v2; serving v1 only, ` +
        `WITHOUT forward secrecy (use a key of at most ${MAX_EPHEMERAL_BITS} bits: efx keygen)`,
    );
    return undefined;
  }
  const bits = key.bits;
  const lifetimeMs = opts.ephemeralLifetimeMs ?? DEFAULT_EPHEMERAL_LIFETIME_MS;
  const bad = checkLifetime(lifetimeMs);
  if (bad) throw new EfxError(bad);
  // A replaced key stays for handshakes in flight: the handshake deadline plus a margin.
  const graceMs = Math.max(opts.handshakeTimeoutMs ?? 10_000, 1_000) + 2_000;
  const now = opts.ephemeralClock ?? Date.now;
  return await EphemeralKeyRing.start({
    signKey: key.signKey,
    bits,
    lifetimeMs,
    graceMs,
    now,
    onRotate: (k) =>
      log.info(
        `ephemeral key ${k.fingerprint} (${k.bits} bits) valid ${
          new Date(k.signed.notBefore).toISOString()
        } to ${new Date(k.signed.notAfter).toISOString()}`,
      ),
    onError: (m) => log.error(m),
  });
}
