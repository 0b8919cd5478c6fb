/**
 * Client authorization: who may use a server.
 *
 * The handshake authenticates the server. A client that has an identity key
 * (`efx keygen --client`) then proves possession of it inside the encrypted
 * channel: its first message is
 *
 *     {"op":"auth","key":base64(SPKI DER),"sig":base64(RSA-PSS-SHA256(label || th))}
 *
 * with label "efx1 client auth", salt length 32, and `th` the transcript
 * hash of this very handshake — so a signature recorded from one session is
 * useless in any other. The server checks the signature and looks the key's
 * fingerprint up in its authorized-clients file, which grants `read`,
 * `write` or `rw` rights.
 *
 * Authorized-clients file: one client per line,
 *
 *     SHA256:<base64> [rights=read|write|rw] [# comment]
 *
 * blank lines and lines starting with `#` are ignored; anything else is an
 * error naming the line. The server re-reads the file for every connection,
 * so removing a line revokes that client at once.
 *
 * @module
 */
import { concat, utf8 } from "./bytes.ts";
import { AuthError, UsageError } from "./errors.ts";
import { sizeFlag } from "./cli/flags.ts";
import {
  fingerprint,
  fromBase64,
  MIN_BITS,
  parseFingerprint,
  readPrivateKeyFile,
  toBase64,
} from "./keys.ts";

const LABEL = utf8.encode("efx1 client auth");
const PSS = { name: "RSA-PSS", hash: "SHA-256" } as const;
/** RSA-PSS salt length (bytes), equal to the hash length. */
export const PSS_SALT_LENGTH = 32;
/** Largest client key accepted from the network (DER bytes). */
const MAX_SPKI = 4096;

/** What a client may do. */
export type Rights = "read" | "write" | "rw";

/** A client's identity key, ready to sign. */
export interface ClientIdentity {
  signKey: CryptoKey;
  spki: Uint8Array;
  fingerprint: string;
}

/** Loads a client private key (PKCS#8 PEM, RSA ≥ 2048 bits) for signing. */
export async function loadClientIdentity(path: string): Promise<ClientIdentity> {
  const file = await readPrivateKeyFile(path);
  const signKey = await crypto.subtle.importKey(
    "pkcs8",
    file.pkcs8 as BufferSource,
    PSS,
    false,
    ["sign"],
  );
  return { signKey, spki: file.spki, fingerprint: file.fingerprint };
}

/** The `auth` message a client sends first, bound to this session's transcript hash. */
export async function clientAuthMessage(id: ClientIdentity, th: Uint8Array) {
  const sig = await crypto.subtle.sign(
    { name: "RSA-PSS", saltLength: PSS_SALT_LENGTH },
    id.signKey,
    concat(LABEL, th),
  );
  return { op: "auth", key: toBase64(id.spki), sig: toBase64(new Uint8Array(sig)) };
}

/**
 * Checks an `auth` message against this session's transcript hash; returns
 * the client key's fingerprint. Throws {@linkcode AuthError} when the key is
 * malformed or too small, or the signature does not verify.
 */
export async function verifyClientAuth(
  msg: Record<string, unknown>,
  th: Uint8Array,
): Promise<string> {
  if (typeof msg.key !== "string" || typeof msg.sig !== "string" || msg.key.length > MAX_SPKI * 2) {
    throw new AuthError("malformed client authentication");
  }
  let spki: Uint8Array<ArrayBuffer>, sig: Uint8Array<ArrayBuffer>;
  try {
    spki = fromBase64(msg.key) as Uint8Array<ArrayBuffer>;
    sig = fromBase64(msg.sig) as Uint8Array<ArrayBuffer>;
  } catch {
    throw new AuthError("malformed client authentication (bad base64)");
  }
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey("spki", spki, PSS, false, ["verify"]);
  } catch {
    throw new AuthError("client sent an invalid public key");
  }
  const bits = (key.algorithm as RsaHashedKeyAlgorithm).modulusLength;
  if (bits < MIN_BITS) throw new AuthError(`client key too small (${bits} bits < ${MIN_BITS})`);
  const ok = await crypto.subtle.verify(
    { name: "RSA-PSS", saltLength: PSS_SALT_LENGTH },
    key,
    sig,
    concat(LABEL, th),
  );
  const fp = await fingerprint(spki);
  if (!ok) {
    throw new AuthError(`client ${fp} failed authentication (bad signature for this session)`);
  }
  return fp;
}

/**
 * The parsed authorized-clients file: fingerprint -> rights, and in
 * `quotas` fingerprint -> most bytes of stored files (for `quota=SIZE`).
 */
export type AuthorizedClients = Map<string, Rights> & { quotas: Map<string, number> };

/**
 * Parses an authorized-clients file. Throws {@linkcode UsageError} naming the
 * first malformed line.
 */
export function parseAuthorizedClients(text: string, path: string): AuthorizedClients {
  const out = Object.assign(new Map<string, Rights>(), { quotas: new Map<string, number>() });
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const hash = lines[i].indexOf("#");
    const line = (hash >= 0 ? lines[i].slice(0, hash) : lines[i]).trim();
    if (line === "") continue;
    const where = `${path}:${i + 1}`;
    const [fp, ...opts] = line.split(/\s+/);
    let parsed: string;
    try {
      parsed = parseFingerprint(fp);
    } catch {
      throw new UsageError(`${where}: expected a SHA256:... fingerprint, found '${fp}'`);
    }
    let rights: Rights = "rw";
    for (const o of opts) {
      const m = /^rights=(read|write|rw)$/.exec(o);
      const q = /^quota=(.*)$/.exec(o);
      if (m) rights = m[1] as Rights;
      else if (q) out.quotas.set(parsed, parseQuota(q[1], where));
      else {
        throw new UsageError(
          `${where}: unknown option '${o}' (want rights=read|write|rw or quota=SIZE)`,
        );
      }
    }
    out.set(parsed, rights);
  }
  return out;
}

function parseQuota(v: string, where: string): number {
  try {
    return sizeFlag(v, "quota")!;
  } catch (err) {
    throw new UsageError(`${where}: ${(err as Error).message}`);
  }
}

/** Reads and parses an authorized-clients file (errors name the file and line). */
export async function loadAuthorizedClients(path: string): Promise<AuthorizedClients> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound ? "no such file" : (err as Error).message;
    throw new UsageError(`cannot read authorized-clients file ${path}: ${why}`);
  }
  return parseAuthorizedClients(text, path);
}

/** Whether `rights` allow operation `op` (read: get, ls, tree; write: put, rm, mkdir, symlink). */
export function allows(rights: Rights, op: string): boolean {
  if (rights === "rw") return true;
  if (READ_OPS.has(op)) return rights === "read";
  return WRITE_OPS.has(op) && rights === "write";
}

/** Requests that only read. */
const READ_OPS = new Set(["get", "ls", "tree"]);
/** Requests that change storage (anything else is refused to partial rights). */
const WRITE_OPS = new Set(["put", "rm", "rmdir", "mv", "mkdir", "symlink"]);
