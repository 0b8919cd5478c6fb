/**
 * Small byte helpers: big-endian integers, concatenation, hex, UTF-8 and a
 * constant-time comparison. Nothing here allocates more than it returns.
 *
 * @module
 */
import { timingSafeEqual } from "node:crypto";

export const utf8 = new TextEncoder();
export const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** Concatenates byte arrays into one new array. */
export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** 2-byte big-endian encoding of `n` (0..65535). */
export function u16(n: number): Uint8Array {
  return new Uint8Array([(n >>> 8) & 0xff, n & 0xff]);
}

/** 8-byte big-endian encoding of a sequence number. */
export function u64(n: bigint): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, n);
  return out;
}

/** Lower-case hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of a hex string (even length, [0-9a-f]); throws on bad input. */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) throw new Error("bad hex string");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Compares two byte arrays in time that depends only on their lengths
 * (never on where they differ). Lengths are public (tags have a fixed size).
 *
 * @example
 * ```ts
 * constantTimeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2])); // true
 * ```
 */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}

/**
 * `text` with control characters (C0, DEL, C1) shown as `?`, so that names
 * and messages from a peer cannot send escape sequences to the terminal.
 */
export function sanitize(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
}

/** Fresh random bytes from the OS CSPRNG (any length; WebCrypto caps one call at 64 KiB). */
export function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  for (let o = 0; o < n; o += 65536) {
    crypto.getRandomValues(out.subarray(o, Math.min(n, o + 65536)));
  }
  return out;
}

/** SHA-256 of `data` (WebCrypto). */
export async function sha256(...parts: Uint8Array[]): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
}
