/**
 * Resumable transfers: where partial files live and how a prefix is checked.
 *
 * Server: a resumable upload (`put` with `resume: true`) writes through a
 * partial file in the storage's private staging area, per client identity
 * (the client key's fingerprint, or empty when anonymous; see
 * src/storage/local_partials.ts). When the
 * connection is cut the partial stays; a later resumable upload of the same
 * name by the same identity is offered the partial's LENGTH only. The client
 * answers with the SHA-256 of its own first bytes of that length; the server
 * goes on from there if its partial has the same hash, and otherwise starts
 * over from zero, overwriting the partial. So the server never reveals
 * anything of a partial's content: a client without the data learns one
 * "no", once, and the partial is gone. Partials untouched for longer than
 * the TTL are removed.
 *
 * Client: a resumable download writes through `.<name>.efx-partial` beside
 * the target; the client sends its length and prefix SHA-256, and the server
 * continues only if its file has the same prefix. The target's folder may be
 * shared (e.g. /tmp), so a partial is only ever read or written when it is a
 * regular file of ours ({@linkcode openLocalPartial}): never through a
 * symlink, never a file with other names, another user's, or anything else
 * planted there; a new one is created with O_EXCL.
 *
 * In both directions the whole-file SHA-256 in the trailer still decides the
 * commit: a prefix check can only save time, never let a wrong byte through.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { basename, dirname, join } from "node:path";
import { TEMP_PREFIX } from "./atomic_file.ts";
import { EfxError } from "./errors.ts";

/** SHA-256 state over the first `length` bytes of an open file (read from the start). */
export async function hashPrefix(
  file: {
    read(p: Uint8Array): Promise<number | null>;
    seek(offset: number, whence: Deno.SeekMode): Promise<unknown>;
  },
  length: number,
): Promise<Hash> {
  const hash = createHash("sha256");
  await file.seek(0, Deno.SeekMode.Start);
  const buf = new Uint8Array(1 << 20);
  let done = 0;
  while (done < length) {
    const n = await file.read(buf.subarray(0, Math.min(buf.length, length - done)));
    if (n === null) break;
    hash.update(buf.subarray(0, n));
    done += n;
  }
  if (done !== length) throw new Error("file shorter than the prefix");
  return hash;
}

/** Hex SHA-256 of the first `length` bytes of the file at `path`. */
export async function prefixSha256(path: string, length: number): Promise<string> {
  using file = await Deno.open(path, { read: true });
  return (await hashPrefix(file, length)).digest("hex");
}

/** Where a resumable download of `target` keeps its partial data. */
export function localPartialPath(target: string): string {
  return join(dirname(target), `.${basename(target)}.efx-partial`);
}

/** Opens flags for an existing partial: read and write, never create or truncate. */
const OPEN_EXISTING = { read: true, write: true } as const;

/**
 * Opens the local partial download `path` (of the target `label`) for
 * reading and writing, only if it is a regular file of ours:
 * `lstat` must show a regular file (not a symlink), owned by the current
 * user, with no other name (one link), and the opened file (`fstat`) must be
 * that same file (device and inode), so a link swapped in between the two
 * is caught before a byte is read or written. Anything else is refused with
 * an {@linkcode EfxError} naming the cause, and left as it is. With
 * `create`, a missing partial is created (mode 0600, O_EXCL: never through
 * a planted link); without, a missing partial is null.
 */
export function openLocalPartial(
  path: string,
  label: string,
  opts: { create: true },
): Promise<Deno.FsFile>;
export function openLocalPartial(
  path: string,
  label: string,
  opts?: { create?: boolean },
): Promise<Deno.FsFile | null>;
export async function openLocalPartial(
  path: string,
  label: string,
  opts: { create?: boolean } = {},
): Promise<Deno.FsFile | null> {
  const refuse = (why: string) =>
    new EfxError(
      `refusing to resume ${label}: its partial file ${path} ${why}; remove it and try again`,
    );
  for (let attempt = 0;; attempt++) {
    let st: Deno.FileInfo;
    try {
      st = await Deno.lstat(path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) {
        throw refuse(`cannot be examined (${osText(err)})`);
      }
      if (!opts.create) return null;
      try {
        return await Deno.open(path, { ...OPEN_EXISTING, createNew: true, mode: 0o600 });
      } catch (err) {
        // Something appeared in between: examine it like any existing partial.
        if (err instanceof Deno.errors.AlreadyExists && attempt === 0) continue;
        throw refuse(`cannot be created (${osText(err)})`);
      }
    }
    checkOurs(st, dirname(path), refuse);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, OPEN_EXISTING);
    } catch (err) {
      throw refuse(`cannot be opened (${osText(err)})`);
    }
    try {
      const now = await file.stat();
      if (!now.isFile || now.dev !== st.dev || now.ino !== st.ino) {
        throw refuse("was replaced while it was being opened");
      }
      checkOurs(now, dirname(path), refuse);
      return file;
    } catch (err) {
      file.close();
      throw err;
    }
  }
}

/** The size and prefix SHA-256 of a local partial download (see {@linkcode openLocalPartial}); null when there is none. */
export async function inspectLocalPartial(
  path: string,
  label: string,
): Promise<{ size: number; prefixSha256?: string } | null> {
  const file = await openLocalPartial(path, label);
  if (file === null) return null;
  try {
    const size = (await file.stat()).size;
    if (size === 0) return { size };
    return { size, prefixSha256: (await hashPrefix(file, size)).digest("hex") };
  } finally {
    file.close();
  }
}

function checkOurs(st: Deno.FileInfo, dir: string, refuse: (why: string) => EfxError): void {
  if (st.isSymlink) throw refuse("is a symbolic link, not a partial download of ours");
  if (!st.isFile) throw refuse("is not a regular file");
  if (Deno.build.os === "windows") return;
  const uid = ourUid(dir);
  if (uid !== null && st.uid !== null && st.uid !== uid) {
    throw refuse(`belongs to another user (uid ${st.uid})`);
  }
  if (st.nlink !== null && st.nlink > 1) throw refuse("has other names (hard links)");
}

const probedUid = new Map<string, number | null>();

/**
 * The user id our files get in `dir`: `Deno.uid()` needs `--allow-sys`,
 * which the CLI is not given, so else the owner of a probe file created
 * (O_EXCL, mode 0600, a `.efx-tmp-` name that the stale-temp sweep removes
 * if we die) and removed at once, once per folder and process. Null when
 * neither works (the link, type and link-count checks still hold).
 */
function ourUid(dir: string): number | null {
  try {
    const uid = Deno.uid();
    if (uid !== null) return uid;
  } catch { /* no sys permission */ }
  if (probedUid.has(dir)) return probedUid.get(dir)!;
  let uid: number | null = null;
  const probe = join(dir, `${TEMP_PREFIX}${crypto.randomUUID()}`);
  try {
    const f = Deno.openSync(probe, { write: true, createNew: true, mode: 0o600 });
    try {
      uid = f.statSync().uid;
    } finally {
      f.close();
      Deno.removeSync(probe);
    }
  } catch { /* cannot tell */ }
  probedUid.set(dir, uid);
  return uid;
}

function osText(err: unknown): string {
  const line = err instanceof Error ? err.message.split("\n")[0] : String(err);
  const m = /^(.*?\(os error \d+\))/.exec(line);
  return m ? m[1] : line;
}
