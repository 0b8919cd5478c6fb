/**
 * Links as data in a local folder: a link `NAME -> TARGET` uploaded by a
 * client is stored as a small regular file at `NAME`, never as a filesystem
 * link, so nothing the server opens, walks or renames can lead anywhere
 * else.
 *
 * Format of a link record (a regular file):
 * `"efx-link\n"` (9 bytes) ‖ the root's 16-byte link secret ‖ the target in
 * UTF-8 (1 to 4096 bytes). The file's mode has the sticky bit (0o1000) set
 * where the file system keeps it, which client uploads never have (their
 * modes are masked to 0o777): a cheap marker, so listings read only the
 * files that carry it. The secret lives in `<root>/.efx-staging/link-secret`
 * (made with the first link) and never leaves the server, so no uploaded file can pass for a link by
 * its content, and a file whose content merely starts like a record stays a
 * file.
 *
 * @module
 */
import { join } from "node:path";
import { lstatOrNull } from "../safe_fs.ts";
import { MAX_LINK_TARGET_BYTES } from "./names.ts";
import { utf8, utf8Decoder } from "../bytes.ts";

const MAGIC = utf8.encode("efx-link\n");
const SECRET_BYTES = 16;
/** Bytes of a record before the target. */
export const LINK_HEADER_BYTES = MAGIC.length + SECRET_BYTES;
/** Mode of a link record on disk: sticky marker, readable by the owner only. */
export const LINK_RECORD_MODE = 0o1600;

/** The link records of one storage root. */
export class LinkRecords {
  #dir: string;
  #ensureDir: () => void;
  /** null until a secret exists (then no record can exist either). */
  #secret: Uint8Array | null = null;
  /** Whether the file system keeps the sticky bit on files (else every small file is checked). */
  #stickyKept = false;

  /**
   * The records whose secret lives in `stagingDir`. Nothing is written until
   * the first link is made ({@linkcode LinkRecords.encode}), so a root
   * without links stays untouched (and may be read-only).
   */
  constructor(stagingDir: string, ensureDir: () => void) {
    this.#dir = stagingDir;
    this.#ensureDir = ensureDir;
    try {
      this.#load(Deno.readFileSync(join(stagingDir, "link-secret")));
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }

  #load(secret: Uint8Array): void {
    if (secret.length !== SECRET_BYTES) throw new Error("link-secret has the wrong size");
    this.#secret = secret;
    const probe = join(this.#dir, `probe-${crypto.randomUUID()}`);
    try {
      Deno.writeFileSync(probe, new Uint8Array(0), { createNew: true, mode: 0o600 });
      Deno.chmodSync(probe, LINK_RECORD_MODE);
      this.#stickyKept = ((lstatOrNull(probe)?.mode ?? 0) & 0o1000) !== 0;
    } catch {
      /* not kept, or read-only: records are recognized by content alone */
    } finally {
      try {
        Deno.removeSync(probe);
      } catch { /* gone */ }
    }
  }

  /** Whether records carry the sticky marker here. */
  get stickyKept(): boolean {
    return this.#stickyKept;
  }

  #secretForWriting(): Uint8Array {
    if (this.#secret) return this.#secret;
    this.#ensureDir();
    const path = join(this.#dir, "link-secret");
    const secret = crypto.getRandomValues(new Uint8Array(SECRET_BYTES));
    try {
      Deno.writeFileSync(path, secret, { createNew: true, mode: 0o600 });
      this.#load(secret);
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
      this.#load(Deno.readFileSync(path)); // made by another process meanwhile
    }
    return this.#secret!;
  }

  /** The bytes of a record for `target`. */
  encode(target: string): Uint8Array {
    const secret = this.#secretForWriting();
    const t = utf8.encode(target);
    const out = new Uint8Array(LINK_HEADER_BYTES + t.length);
    out.set(MAGIC, 0);
    out.set(secret, MAGIC.length);
    out.set(t, LINK_HEADER_BYTES);
    return out;
  }

  /** Whether an entry with this `lstat` may be a record (worth reading). */
  mayBeRecord(st: Deno.FileInfo): boolean {
    if (!st.isFile || this.#secret === null) return false;
    if (st.size <= LINK_HEADER_BYTES || st.size > LINK_HEADER_BYTES + MAX_LINK_TARGET_BYTES) {
      return false;
    }
    return !this.stickyKept || ((st.mode ?? 0) & 0o1000) !== 0;
  }

  /** The target when the regular file at `path` (with `lstat` `st`) is a record, else null. */
  read(path: string, st: Deno.FileInfo): string | null {
    if (!this.mayBeRecord(st)) return null;
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(path);
    } catch {
      return null;
    }
    const secret = this.#secret!;
    if (bytes.length <= LINK_HEADER_BYTES) return null;
    let diff = 0;
    for (let i = 0; i < MAGIC.length; i++) diff |= bytes[i] ^ MAGIC[i];
    for (let i = 0; i < SECRET_BYTES; i++) diff |= bytes[MAGIC.length + i] ^ secret[i];
    if (diff !== 0) return null;
    try {
      return utf8Decoder.decode(bytes.subarray(LINK_HEADER_BYTES));
    } catch {
      return null;
    }
  }
}
