/**
 * Atomic file writes, used by the server (uploads into storage) and by the
 * client (downloads to the local disk).
 *
 * Invariants:
 * - Data is written to a temp file `<tempDir>/.efx-tmp-<24 hex>` created with
 *   `createNew` (O_EXCL: never follows or reuses an existing path) and mode
 *   0600, so a half-written file is never visible under its final name and
 *   never readable by other users while it is being written.
 * - The final name appears only after the data is on disk (`syncData`), the
 *   whole-file SHA-256 matched (when one was expected), and mode and mtime
 *   were applied; it then appears in one step (a hard link or a rename).
 * - Only the permission bits (`mode & 0o777`) are ever applied: setuid,
 *   setgid and sticky bits sent by a peer are dropped.
 * - Without `force` an existing file is never replaced: the no-clobber step
 *   is `link(temp, final)`, which fails atomically when `final` exists. On
 *   file systems without hard links it falls back to "check, then rename";
 *   there a file created by another process between the check and the rename
 *   would be replaced (Deno has no `renameat2(RENAME_NOREPLACE)`).
 * - On any failure the temp file is removed ({@linkcode AtomicWriter.abort}
 *   never throws). A temp file left by a crash is removed by
 *   {@linkcode removeStaleTemps}.
 * - Errors are {@linkcode EfxError}s whose messages name the file by its
 *   `label` (default: the final path) and never contain the temp path.
 *
 * @example
 * ```ts
 * const w = await AtomicWriter.create("out/report.pdf");
 * try {
 *   for await (const chunk of source) await w.write(chunk);
 *   await w.commit({ mode: 0o644, mtime: new Date(1700000000000), expectedSha256: hex });
 * } catch (err) {
 *   await w.abort();
 *   throw err;
 * }
 * ```
 * Metadata calls (open, lstat, chmod, utime, link, rename, remove) are
 * synchronous on purpose: about 4 us each against about 40 us for Deno's
 * asynchronous file-system calls (measured), which dominate small files.
 * Data writes and syncs stay asynchronous.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { dirname, join } from "node:path";
import { EfxError, IntegrityError } from "./errors.ts";
import { lstatOrNull, openChecked } from "./safe_fs.ts";

/** Name prefix of temp files; names starting with it are reserved. */
export const TEMP_PREFIX = ".efx-tmp-";

/** Options of {@linkcode AtomicWriter.commit}. */
export interface CommitOptions {
  /** Permission bits of the final file; only `mode & 0o777` is applied. Default 0o644. */
  mode?: number;
  /** Modification time to set (atime becomes now). Ignored when not a valid date. */
  mtime?: Date;
  /** Keep the sticky bit of `mode` (the storage's link-record marker); peers never get it. */
  keepSticky?: boolean;
  /**
   * Called synchronously right before the file gets its final name (no
   * other task runs in between); throwing aborts the commit. The server
   * makes its last quota check here.
   */
  beforePlace?: () => void;
  /** Expected hex SHA-256 of the whole file (any case); a mismatch aborts. */
  expectedSha256?: string;
  /** Replace an existing final file. Default: the value given to {@linkcode AtomicWriter.create}. */
  force?: boolean;
  /**
   * Sync the folder after the rename, so that the new name is durable too
   * (default true). A caller committing many files in a row may pass false
   * and call {@linkcode syncDir} once per folder at the end.
   */
  syncDir?: boolean;
}

/** Options of {@linkcode AtomicWriter.create}. */
export interface CreateOptions {
  /** Replace an existing final file at commit. Default false. */
  force?: boolean;
  /** Folder of the temp file; must be on the same file system. Default: `dirname(finalPath)`. */
  tempDir?: string;
  /**
   * Name of the file in error messages (default: `finalPath`). The server
   * passes the client's name so that no server path reaches a client.
   */
  label?: string;
  /**
   * Maps every error thrown by `create`, `write` and `commit` (after the temp
   * file was cleaned up). The server uses it to turn errors into its own
   * error codes.
   */
  mapError?: (err: unknown) => unknown;
  /**
   * Resumable mode: write through the partial file at `path` instead of a
   * fresh temp file, continuing after its first `offset` bytes (which are
   * re-hashed, so the commit still checks the whole file; the rest is cut
   * off). The partial is KEPT when the transfer fails, so that it can be
   * resumed later, except when the whole-file hash does not match (it is
   * then worthless and removed). Use {@linkcode AtomicWriter.discard} to
   * drop it.
   */
  partial?: {
    path: string;
    offset: number;
    /**
     * Opens (or creates) the partial for reading and writing; by default a
     * plain open with create. The client passes one that refuses anything
     * but a regular file of its own (see resume.ts `openLocalPartial`).
     */
    open?: () => Promise<Deno.FsFile>;
  };
}

/** The final file already exists and `force` was not given. */
export class FileExistsError extends EfxError {
  constructor(message: string) {
    super(message);
    this.name = "FileExistsError";
  }
}

/**
 * The OS part of a Deno error message without the paths Deno appends, e.g.
 * `"No such file or directory (os error 2)"` for
 * `"No such file or directory (os error 2): open '/x'"`.
 */
export function osMessage(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const line = err.message.split("\n")[0];
  const m = /^(.*?\(os error \d+\))/.exec(line);
  if (m) return m[1];
  // No OS error number: keep the message only when it does not name a path.
  return line.includes("'") || line.includes("/") ? err.name : line;
}

type State = "open" | "committing" | "committed" | "aborted";

/**
 * Writes one file atomically through a temp file in the same folder.
 *
 * Calls must not overlap: await each {@linkcode AtomicWriter.write} before
 * the next call. After a failed `write` or `commit` the writer is aborted.
 *
 * @example
 * ```ts
 * const w = await AtomicWriter.create("/data/a.bin", { force: true });
 * await w.write(new TextEncoder().encode("hello"));
 * const { sha256, bytes } = await w.commit({ mode: 0o600 });
 * ```
 */
export class AtomicWriter {
  /** Absolute or relative path of the temp file being written. */
  readonly tempPath: string;
  /** Path the file gets at commit. */
  readonly finalPath: string;
  #file: Deno.FsFile | null;
  #hash: Hash = createHash("sha256");
  #bytes = 0;
  #state: State = "open";
  #busy = false;
  #force: boolean;
  #label: string;
  #mapError: (err: unknown) => unknown;
  #keep = false;

  private constructor(
    file: Deno.FsFile,
    tempPath: string,
    finalPath: string,
    force: boolean,
    label: string,
    mapError: (err: unknown) => unknown,
  ) {
    this.#file = file;
    this.tempPath = tempPath;
    this.finalPath = finalPath;
    this.#force = force;
    this.#label = label;
    this.#mapError = mapError;
  }

  /**
   * Creates the temp file (createNew, mode 0600) in `opts.tempDir` (default:
   * the folder of `finalPath`). Fails early with a {@linkcode FileExistsError}
   * when `finalPath` exists and `force` is not set, and with an
   * {@linkcode EfxError} when `finalPath` is a folder.
   */
  static async create(finalPath: string, opts: CreateOptions = {}): Promise<AtomicWriter> {
    const force = opts.force ?? false;
    const label = opts.label ?? finalPath;
    const mapError = opts.mapError ?? ((err: unknown) => err);
    try {
      const existing = await lstatOrNull(finalPath);
      if (existing?.isDirectory) {
        throw new EfxError(`cannot write ${label}: it is a folder`);
      }
      if (existing && !force) {
        throw new FileExistsError(`${label} already exists (use --force to overwrite)`);
      }
      if (opts.partial) return await AtomicWriter.#resume(finalPath, opts, force, label, mapError);
      const dir = opts.tempDir ?? dirname(finalPath);
      for (let attempt = 0;; attempt++) {
        const tempPath = join(dir, TEMP_PREFIX + randomHex(12));
        try {
          const file = Deno.openSync(tempPath, { write: true, createNew: true, mode: 0o600 });
          file.lockSync(true); // held while alive: see removeStaleTemps
          return new AtomicWriter(file, tempPath, finalPath, force, label, mapError);
        } catch (err) {
          if (err instanceof Deno.errors.AlreadyExists && attempt < 3) continue;
          throw err;
        }
      }
    } catch (err) {
      throw mapError(wrapOsError(err, label));
    }
  }

  static async #resume(
    finalPath: string,
    opts: CreateOptions,
    force: boolean,
    label: string,
    mapError: (err: unknown) => unknown,
  ): Promise<AtomicWriter> {
    const { path, offset, open } = opts.partial!;
    // Never through a link: the caller's opener (the client's checks), or an
    // existing partial that is a regular file still the one lstat saw, or a
    // missing one created exclusively.
    let file: Deno.FsFile;
    if (open) file = await open();
    else {
      try {
        file = openChecked(path, { read: true, write: true }).file;
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
        file = Deno.openSync(path, { read: true, write: true, createNew: true, mode: 0o600 });
      }
    }
    try {
      if (!file.tryLockSync(true)) {
        throw new EfxError(`cannot write ${label}: another transfer is using its partial copy`);
      }
      const size = (await file.stat()).size;
      const keep = Math.min(offset, size);
      await file.truncate(keep);
      const w = new AtomicWriter(file, path, finalPath, force, label, mapError);
      w.#keep = true;
      // Re-hash the kept prefix so that commit checks the whole file.
      const buf = new Uint8Array(1 << 20);
      let done = 0;
      while (done < keep) {
        const n = await file.read(buf.subarray(0, Math.min(buf.length, keep - done)));
        if (n === null) break;
        w.#hash.update(buf.subarray(0, n));
        done += n;
      }
      await file.seek(done, Deno.SeekMode.Start);
      w.#bytes = done;
      return w;
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /** Number of bytes written so far. */
  get bytesWritten(): number {
    return this.#bytes;
  }

  /** Writes all of `chunk` and adds it to the running SHA-256. */
  async write(chunk: Uint8Array): Promise<void> {
    const file = this.#enter("write");
    try {
      this.#hash.update(chunk);
      let off = 0;
      while (off < chunk.length) {
        const n = await file.write(chunk.subarray(off));
        if (n <= 0) throw new Error("short write");
        off += n;
      }
      this.#bytes += chunk.length;
    } catch (err) {
      await this.abort();
      throw this.#mapError(wrapOsError(err, this.#label));
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Makes the file visible under its final name: syncs the data, closes,
   * checks `expectedSha256` (an {@linkcode IntegrityError}
   * `file hash mismatch: sent <x>, received <y>` on mismatch), applies
   * `mode & 0o777` (default 0o644) and `mtime`, then links or renames it to
   * `finalPath` (refusing with a {@linkcode FileExistsError} when it exists
   * and `force` is off) and syncs the folder (best effort). On any error the
   * temp file is removed and the error rethrown.
   */
  async commit(opts: CommitOptions = {}): Promise<{ sha256: string; bytes: number }> {
    const file = this.#enter("commit");
    this.#state = "committing";
    try {
      await file.syncData();
      // The file stays open (and locked) until it has its final name, so a
      // stale-temp sweep in another process can never take it for dead.
      const sha256 = this.#hash.digest("hex");
      const expected = opts.expectedSha256?.toLowerCase();
      if (expected !== undefined && expected !== sha256) {
        this.#keep = false; // a partial that hashes wrong is worthless
        throw new IntegrityError(`file hash mismatch: sent ${expected}, received ${sha256}`);
      }
      // The temp name must still be the file we wrote: chmod goes by name,
      // and must never follow a link swapped in (a shared folder).
      const named = Deno.lstatSync(this.tempPath);
      const open = file.statSync();
      if (named.isSymlink || named.dev !== open.dev || named.ino !== open.ino) {
        throw new EfxError(`cannot write ${this.#label}: its temp file was replaced while written`);
      }
      Deno.chmodSync(this.tempPath, (opts.mode ?? 0o644) & (opts.keepSticky ? 0o1777 : 0o777));
      if (opts.mtime && !Number.isNaN(opts.mtime.getTime())) {
        file.utimeSync(new Date(), opts.mtime);
      }
      opts.beforePlace?.();
      if (opts.force ?? this.#force) {
        Deno.renameSync(this.tempPath, this.finalPath);
      } else {
        await this.#placeNoClobber();
      }
      this.#state = "committed";
      file.close();
      this.#file = null;
      if (opts.syncDir !== false) await syncDir(dirname(this.finalPath));
      return { sha256, bytes: this.#bytes };
    } catch (err) {
      this.#state = "open"; // let abort() clean up
      await this.abort();
      throw this.#mapError(wrapOsError(err, this.#label));
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Closes and removes the temp file (a resumable partial is kept, flushed).
   * Idempotent; never throws; no-op after a commit.
   */
  async abort(): Promise<void> {
    if (this.#state === "committed" || this.#state === "aborted") return;
    this.#state = "aborted";
    try {
      if (this.#keep) await this.#file?.syncData();
    } catch { /* best effort */ }
    try {
      this.#file?.close();
    } catch { /* already closed */ }
    this.#file = null;
    if (this.#keep) return;
    try {
      await Deno.remove(this.tempPath);
    } catch { /* gone already, or removed later by removeStaleTemps */ }
  }

  /** Like {@linkcode AtomicWriter.abort}, but a resumable partial is removed too. */
  async discard(): Promise<void> {
    this.#keep = false;
    if (this.#state === "aborted") {
      await Deno.remove(this.tempPath).catch(() => {});
      return;
    }
    await this.abort();
  }

  /** True when a failed transfer leaves a partial that can be resumed. */
  get resumable(): boolean {
    return this.#keep;
  }

  /** Link without replacing; falls back to check-then-rename where links are unsupported. */
  async #placeNoClobber(): Promise<void> {
    const exists = () =>
      new FileExistsError(`${this.#label} already exists (use --force to overwrite)`);
    try {
      Deno.linkSync(this.tempPath, this.finalPath);
    } catch (err) {
      if (err instanceof Deno.errors.AlreadyExists) throw exists();
      // No hard links here (e.g. FAT, some network file systems): tiny race, see module doc.
      if (await lstatOrNull(this.finalPath)) throw exists();
      await Deno.rename(this.tempPath, this.finalPath);
      return;
    }
    try {
      Deno.removeSync(this.tempPath);
    } catch { /* the final file is in place; a leftover temp is removed at next start */ }
  }

  #enter(op: string): Deno.FsFile {
    if (this.#busy) throw new Error(`AtomicWriter.${op}: a previous call is still running`);
    if (this.#state !== "open" || !this.#file) {
      throw new EfxError(`cannot write ${this.#label}: the transfer was already ${this.#state}`);
    }
    this.#busy = true;
    return this.#file;
  }
}

/**
 * Removes stale temp files (`<dir>/.efx-tmp-*`, regular files only, not
 * recursive) left by a crash or a SIGKILL. Every live writer holds an
 * exclusive lock (flock) on its temp file until the file has its final name,
 * so a temp whose lock can be taken belongs to nobody and is removed, while
 * transfers under way in other processes are left alone. With `minAgeMs`,
 * temps modified more recently are left alone too (a writer creates its
 * temp, then locks it). Best effort: files that cannot be removed are
 * skipped; a missing folder counts as empty.
 *
 * @returns how many files were removed.
 */
export async function removeStaleTemps(dir: string, minAgeMs = 0): Promise<number> {
  let count = 0;
  const now = Date.now();
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.isFile || !entry.name.startsWith(TEMP_PREFIX)) continue;
      const path = join(dir, entry.name);
      try {
        // A live writer holds an exclusive lock on its temp file until it
        // is renamed; only a temp nobody holds is a leftover of a crash.
        using f = Deno.openSync(path, { read: true });
        // A writer creates its temp and then locks it: a young temp may be
        // in that gap, so callers that can race live writers pass minAgeMs.
        if (minAgeMs > 0 && now - (f.statSync().mtime?.getTime() ?? now) < minAgeMs) continue;
        if (!f.tryLockSync(true)) continue;
        Deno.removeSync(path);
        count++;
      } catch { /* skip */ }
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return count;
    }
    throw err;
  }
  return count;
}

function randomHex(n: number): string {
  const bytes = crypto.getRandomValues(new Uint8Array(n));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Syncs a folder's entries to disk (best effort: not supported everywhere). */
export async function syncDir(dir: string): Promise<void> {
  try {
    using d = await Deno.open(dir, { read: true });
    await d.sync();
  } catch { /* best effort: not supported everywhere */ }
}

function wrapOsError(err: unknown, label: string): unknown {
  if (err instanceof EfxError) return err;
  if (err instanceof Error && !(err instanceof Deno.errors.NotCapable) && isOsError(err)) {
    return new EfxError(`cannot write ${label}: ${osMessage(err)}`, undefined, { cause: err });
  }
  return err;
}

function isOsError(err: Error): boolean {
  return /\(os error \d+\)/.test(err.message) || err.message === "short write";
}
