/**
 * The local-folder storage backend: a {@linkcode StorageBackend} over one
 * folder on this machine.
 *
 * Invariants (OpenSSH's sftp-server and SFTPGo are the models):
 * - Every client name goes through {@linkcode checkName} and is mapped to a
 *   path under {@linkcode LocalStorage.root} by joining its components, so
 *   lexically it never leaves the root.
 * - The server never creates, follows or resolves a filesystem link for a
 *   client. Every existing component of a path is checked with `lstat`: a
 *   link anywhere on the way (made by someone else, e.g. by an older efx or
 *   the operator) is refused, never followed. Links uploaded by clients are
 *   data ({@linkcode LinkRecords}): regular files the server never
 *   interprets as a path.
 * - What is opened is what was checked: files are opened through
 *   {@linkcode openChecked} (device and inode of the open file must equal
 *   the `lstat`ed entry), folders whose mode or mtime is set likewise.
 * - New files are created exclusively (`createNew`) under temp names no
 *   client can address (`.efx-tmp-…`, see {@linkcode AtomicWriter}) and
 *   appear under their name only complete and verified. Mode and mtime are
 *   applied to the temp file before it is renamed, never through a path a
 *   client names, and never to the root.
 * - Staging (partials, the link secret) lives in `<root>/.efx-staging`,
 *   private per client identity ({@linkcode LocalPartials}).
 * - Uploads are refused when their declared size would leave less than the
 *   free-space reserve, counting the uploads already under way.
 * - Every error for a client is a {@linkcode StorageError} naming the file
 *   by the client's name, never a server path.
 *
 * Metadata calls (lstat, mkdir, rename) are synchronous on purpose: about
 * 4 us each here against about 40 us for Deno's asynchronous ones (measured);
 * walks over many entries yield to the event loop every few hundred entries.
 *
 * @example
 * ```ts
 * const storage = await LocalStorage.open("storage", { partialTtlMs: 86_400_000 });
 * const up = await storage.beginWrite("a.txt", { force: false, size: 5, who: "" });
 * await up.write(new TextEncoder().encode("hello"));
 * await up.commit({ mode: 0o644, mtime: Date.now(), force: false,
 *   expectedSha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" });
 * ```
 * @module
 */
import { join } from "node:path";
import { statfsSync } from "node:fs";
import {
  AtomicWriter,
  FileExistsError,
  osMessage,
  removeStaleTemps,
  syncDir,
} from "../atomic_file.ts";
import { EfxError, IntegrityError, RemoteError } from "../errors.ts";
import { utf8 } from "../bytes.ts";
import type { FileInfo } from "../messages.ts";
import { lstatOrNull, openChecked, UnsafePathError } from "../safe_fs.ts";
import type {
  CommitRequest,
  PartialClaim,
  ReadHandle,
  StorageBackend,
  Upload,
  WriteOptions,
} from "./backend.ts";
import { existsError, notAFile, notFound, StorageError } from "./errors.ts";
import { sortByName } from "./sort.ts";
import { compileGlob, type Glob } from "./glob.ts";
import { LINK_RECORD_MODE, LinkRecords } from "./local_links.ts";
import { ensurePrivateFolder, type LocalClaim, LocalPartials } from "./local_partials.ts";
import { checkLinkTarget, checkName, MAX_NAME_BYTES, RESERVED_PREFIX } from "./names.ts";
import { QuotaLedger } from "./quota.ts";
import { noteGarbage } from "../gc.ts";

/** Name of the server's own folder inside the root. */
export const STAGING_DIR = `${RESERVED_PREFIX}staging`;
/** Most entries one listing may return. */
export const MAX_LIST_ENTRIES = 100_000;
/** Most bytes of names (UTF-16) one listing may hold: bounds its memory whatever the names. */
export const MAX_LIST_NAME_BYTES = 8 << 20;
/** Entries handled between two yields to the event loop. */
const YIELD_EVERY = 256;
/** Default free-space reserve: 1 GiB, or 5 % of the file system when that is less. */
export const DEFAULT_RESERVE_BYTES = 1 << 30;
export const DEFAULT_RESERVE_FRACTION = 0.05;

/** Settings of a local storage root. */
export interface LocalStorageOptions {
  /** How long an interrupted resumable upload is kept. */
  partialTtlMs: number;
  /**
   * Free space an upload must leave, in bytes (default: 1 GiB or 5 % of the
   * file system, whichever is less); 0 turns the check off.
   */
  reserveBytes?: number;
}

/** What the free-space check found at start. */
export type SpaceCheck =
  | { enforced: true; reserveBytes: number }
  | { enforced: false; why: string };

const yieldNow = () => new Promise<void>((r) => setTimeout(r, 0));

/** A storage root in a local folder. */
export class LocalStorage implements StorageBackend {
  /** Real (absolute) path of the root, resolved once at start. */
  readonly root: string;
  /** How many stale temp files {@linkcode LocalStorage.open} removed. */
  readonly removedTemps: number;
  /** The free-space reserve in force. */
  readonly space: SpaceCheck;
  readonly quotas: QuotaLedger;
  readonly #links: LinkRecords;
  readonly #partials: LocalPartials;
  /** Final paths of uploads under way (a folder holding one cannot move). */
  #uploading = new Set<string>();
  /** Renames run one at a time (their no-clobber checks for folders are two steps). */
  #renaming: Promise<void> = Promise.resolve();

  private constructor(
    root: string,
    removedTemps: number,
    links: LinkRecords,
    partials: LocalPartials,
    space: SpaceCheck,
    quotas: QuotaLedger,
  ) {
    this.root = root;
    this.quotas = quotas;
    this.removedTemps = removedTemps;
    this.#links = links;
    this.#partials = partials;
    this.space = space;
  }

  get label(): string {
    return this.root;
  }

  /** Whether links are marked by the sticky bit here (see {@linkcode LinkRecords}). */
  get linkMarkerKept(): boolean {
    return this.#links.stickyKept;
  }

  /**
   * Creates `root` if needed (like `mkdir -p`), resolves its real path once,
   * prepares the staging folder and removes stale temp files anywhere under
   * the root (never following links). Failures are {@linkcode EfxError}s
   * naming the local folder.
   */
  static async open(root: string, opts: LocalStorageOptions): Promise<LocalStorage> {
    let real: string;
    let links: LinkRecords;
    const staging = () => join(real, STAGING_DIR);
    try {
      await Deno.mkdir(root, { recursive: true });
      real = await Deno.realPath(root);
      if (!Deno.statSync(real).isDirectory) throw new Error("not a folder");
      const st = lstatOrNull(staging());
      if (st && (st.isSymlink || !st.isDirectory)) {
        throw new Error(`${STAGING_DIR} is not a plain folder`);
      }
      links = new LinkRecords(staging(), () => ensurePrivateFolder(staging()));
    } catch (err) {
      const why = err instanceof Deno.errors.AlreadyExists ? "not a folder" : osMessage(err);
      throw new EfxError(`cannot open storage folder ${root}: ${why}`, undefined, { cause: err });
    }
    const space = probeSpace(real, opts.reserveBytes);
    const removed = await removeTempsUnder(real);
    const usage = join(staging(), "usage");
    const quotas = QuotaLedger.open(usage, () => {
      ensurePrivateFolder(staging());
      ensurePrivateFolder(usage);
    });
    return new LocalStorage(
      real,
      removed,
      links,
      new LocalPartials(staging(), opts.partialTtlMs),
      space,
      quotas,
    );
  }

  // ---- paths ------------------------------------------------------------

  /**
   * The folder holding `parts`' last component, every existing component on
   * the way checked to be a plain folder (not a link, not a link record).
   * With `create`, missing folders are made one level at a time (mode 0755);
   * without it a missing one is `not-found`, or, with `partial`, ends the
   * walk (returns null: the rest does not exist yet).
   */
  #parent(name: string, parts: string[], mode: "create" | "existing"): string;
  #parent(name: string, parts: string[], mode: "partial"): string | null;
  #parent(name: string, parts: string[], mode: "create" | "existing" | "partial"): string | null {
    let cur = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      const next = join(cur, parts[i]);
      let st = lstatOrNull(next);
      if (st === null) {
        if (mode === "partial") return null;
        if (mode === "existing") throw notFound(name);
        try {
          Deno.mkdirSync(next, { mode: 0o755 });
        } catch (err) {
          if (!(err instanceof Deno.errors.AlreadyExists)) throw toStorageError(err, name);
        }
        st = lstatOrNull(next);
        if (st === null) throw notFound(name);
      }
      if (st.isSymlink || !st.isDirectory) {
        const prefix = parts.slice(0, i + 1).join("/");
        const what = mode === "existing" ? name : `cannot create ${name}`;
        throw new StorageError(
          "not-a-file",
          this.#kind(next, st) === "symlink"
            ? `${what}: ${prefix} is a link on the server, and links are never followed`
            : `${what}: ${prefix} is not a folder on the server`,
        );
      }
      cur = next;
    }
    return cur;
  }

  #kind(path: string, st: Deno.FileInfo): FileInfo["type"] | null {
    if (st.isSymlink) return "symlink";
    if (st.isDirectory) return "dir";
    if (st.isFile) return this.#links.read(path, st) === null ? "file" : "symlink";
    return null; // devices, pipes, sockets: never shown, never opened
  }

  /** The entry at `path` as a client sees it, or null for what is never shown. */
  #info(name: string, path: string, st: Deno.FileInfo): FileInfo | null {
    if (st.isSymlink) {
      // A filesystem link was made by someone else than a client (the
      // operator, an older efx): shown as a link, its target (a server path,
      // maybe) not revealed, never followed.
      return { ...toInfo(name, st, "symlink"), mode: 0o777, size: 0 };
    }
    if (st.isDirectory) return toInfo(name, st, "dir");
    if (!st.isFile) return null;
    const target = this.#links.read(path, st);
    if (target === null) return toInfo(name, st, "file");
    return {
      ...toInfo(name, st, "symlink"),
      mode: 0o777,
      size: utf8.encode(target).length,
      target,
    };
  }

  /** Path and `lstat` of an existing entry (its parents checked). */
  #existing(name: string): { path: string; st: Deno.FileInfo; parts: string[] } {
    const parts = checkName(name);
    const path = join(this.#parent(name, parts, "existing"), parts[parts.length - 1]);
    const st = lstatOrNull(path);
    if (st === null) throw notFound(name);
    return { path, st, parts };
  }

  // ---- reading ----------------------------------------------------------

  stat(name: string): Promise<FileInfo> {
    return guard(name, () => {
      const { path, st } = this.#existing(name);
      const info = this.#info(name, path, st);
      if (!info) throw notAFile(name);
      return info;
    });
  }

  openRead(name: string): Promise<ReadHandle> {
    return guard(name, () => {
      const { path, st } = this.#existing(name);
      const kind = this.#kind(path, st);
      if (kind === "symlink") {
        throw new StorageError(
          "not-a-file",
          `${name} is a link on the server; links are never followed (download its target)`,
        );
      }
      if (kind !== "file") throw notAFile(name, kind === "dir");
      // What is opened must be the entry checked above.
      const { file, info } = openChecked(path, { read: true }, "file", st);
      return {
        info: toInfo(name, info, "file"),
        read: (p) => file.read(p),
        seek: async (offset) => {
          await file.seek(offset, Deno.SeekMode.Start);
        },
        close: () => {
          try {
            file.close();
          } catch { /* closed */ }
        },
      };
    });
  }

  async list(pattern?: string, opts: { recursive?: boolean } = {}): Promise<FileInfo[]> {
    const pat = pattern === undefined || pattern === "" ? undefined : pattern;
    const out: FileInfo[] = [];
    const compile = (p: string): Glob => {
      try {
        return compileGlob(p);
      } catch (err) {
        throw new StorageError("bad-name", `invalid pattern: ${(err as Error).message}`);
      }
    };
    if (opts.recursive) {
      const g = pat === undefined ? null : compile(pat);
      const onName = pat !== undefined && !pat.includes("/");
      await this.#walk(this.root, "", out, (rel, base) => ({
        keep: g === null || g.test(onName ? base : rel),
        descend: true,
      }));
    } else {
      const segs = (pat ?? "*").split("/").map(compile);
      await this.#walk(this.root, "", out, (_rel, base, depth) => {
        const matches = segs[depth].test(base);
        const last = depth === segs.length - 1;
        return { keep: last && matches, descend: !last && matches };
      });
    }
    return await sortByName(out);
  }

  async tree(name: string): Promise<FileInfo[]> {
    const { path, st, parts } = await guard(name, () => this.#existing(name));
    if (!st.isDirectory) {
      throw new StorageError("not-a-file", `${name} is not a folder on the server`);
    }
    const out: FileInfo[] = [];
    await this.#walk(path, parts.join("/"), out, () => ({ keep: true, descend: true }));
    return await sortByName(out);
  }

  /** Walks folders (never through links), collecting what `decide` keeps; bounded and yielding. */
  async #walk(
    dir: string,
    prefix: string,
    out: FileInfo[],
    decide: (rel: string, base: string, depth: number) => { keep: boolean; descend: boolean },
  ): Promise<void> {
    const stack: { dir: string; prefix: string; depth: number }[] = [{ dir, prefix, depth: 0 }];
    let seen = 0;
    let nameBytes = 0;
    try {
      while (stack.length > 0) {
        const at = stack.pop()!;
        let names: string[];
        try {
          names = [];
          for (const e of Deno.readDirSync(at.dir)) {
            if (!e.name.startsWith(RESERVED_PREFIX)) names.push(e.name);
            if (++seen % YIELD_EVERY === 0) await yieldNow();
          }
        } catch (err) {
          if (at.depth === 0) throw toStorageError(err, prefix || "/");
          continue; // unreadable or vanished subfolder: skip
        }
        for (const base of names) {
          const rel = at.prefix ? `${at.prefix}/${base}` : base;
          const path = join(at.dir, base);
          const { keep, descend } = decide(rel, base, at.depth);
          if (!keep && !descend) continue;
          let st: Deno.FileInfo | null;
          try {
            st = lstatOrNull(path);
          } catch {
            continue; // unreadable (e.g. a name too long for the system): skipped, never a server path
          }
          if (st === null) continue; // vanished
          if (keep) {
            const info = this.#info(rel, path, st);
            if (info) {
              nameBytes += 2 * rel.length + 2 * (info.target?.length ?? 0);
              if (out.length >= MAX_LIST_ENTRIES || nameBytes > MAX_LIST_NAME_BYTES) {
                throw new StorageError(
                  "too-large",
                  `more than ${MAX_LIST_ENTRIES} entries or ${
                    MAX_LIST_NAME_BYTES >> 20
                  } MiB of names; list a folder or use a narrower pattern`,
                );
              }
              out.push(info);
            }
          }
          if (descend && st.isDirectory && !st.isSymlink) {
            stack.push({ dir: path, prefix: rel, depth: at.depth + 1 });
          }
          if (++seen % YIELD_EVERY === 0) await yieldNow();
        }
      }
    } finally {
      // A big walk leaves its strings behind at once: let them be collected
      // promptly, so that many listings in a row do not pile up garbage.
      noteGarbage(4 * nameBytes + 200 * seen);
    }
  }

  // ---- writing ----------------------------------------------------------

  checkWrite(name: string, opts: WriteOptions): Promise<void> {
    return guard(name, () => {
      const parts = checkName(name);
      const parent = this.#parent(name, parts, "partial");
      if (parent !== null) this.#checkTarget(name, join(parent, parts[parts.length - 1]), opts);
      this.#checkSpace(name, opts.size);
    });
  }

  #checkTarget(name: string, path: string, opts: { force: boolean }): void {
    const st = lstatOrNull(path);
    if (st === null) return;
    if (st.isDirectory) throw new StorageError("not-a-file", `${name} is a folder on the server`);
    if (!opts.force) throw existsError(name);
  }

  #checkSpace(name: string, size: number): void {
    if (!this.space.enforced) return;
    const free = freeBytes(this.root);
    if (free === null) return;
    const room = free - this.space.reserveBytes;
    if (size > room) {
      throw new StorageError(
        "no-space",
        `not enough free space on the server for ${name} (${size} bytes; ${
          Math.max(0, room)
        } available above the server's reserve)`,
      );
    }
  }

  /**
   * Starts an upload. Free space is checked twice: the declared size must fit
   * above the reserve at the start, and while the bytes arrive (every MiB)
   * the disk must stay above the reserve. Declared sizes are not held for
   * the upload's lifetime: an upload announced and never sent must not lock
   * everyone else out; uploads started together that would cross the reserve
   * fail when they reach it (their temp files removed).
   */
  async beginWrite(name: string, opts: WriteOptions): Promise<Upload> {
    const { parts, parent } = await guard(name, () => {
      const parts = checkName(name);
      this.#checkSpace(name, opts.size);
      const parent = this.#parent(name, parts, "create");
      this.#checkTarget(name, join(parent, parts[parts.length - 1]), opts);
      return { parts, parent };
    });
    const path = join(parent, parts[parts.length - 1]);
    this.#uploading.add(path);
    let tracked = true;
    const uncount = () => {
      if (tracked) this.#uploading.delete(path);
      tracked = false;
    };
    let sinceCheck = 0;
    const claim = opts.partial?.claim as LocalClaim | undefined;
    let writer: AtomicWriter;
    try {
      if (claim) await guard(name, () => claim.prepare());
      writer = await AtomicWriter.create(path, {
        force: opts.force,
        tempDir: parent,
        label: name,
        mapError: (err) => toStorageError(err, name),
        partial: claim ? { path: claim.path, offset: opts.partial!.offset } : undefined,
      });
    } catch (err) {
      uncount();
      throw err;
    }
    return {
      key: path,
      get bytesWritten() {
        return writer.bytesWritten;
      },
      write: async (chunk) => {
        sinceCheck += chunk.length;
        if (sinceCheck >= 1 << 20) {
          sinceCheck = 0;
          try {
            this.#checkSpace(name, 0);
          } catch (err) {
            await writer.abort();
            throw err;
          }
        }
        await writer.write(chunk);
      },
      commit: async (req: CommitRequest) => {
        try {
          const res = await writer.commit({
            mode: req.mode,
            mtime: new Date(req.mtime),
            expectedSha256: req.expectedSha256,
            force: req.force,
            syncDir: req.durable !== false,
            beforePlace: req.beforePlace,
          });
          return { ...res, syncKey: parent };
        } finally {
          uncount();
        }
      },
      abort: async () => {
        uncount();
        await writer.abort();
      },
    };
  }

  async mkdir(name: string, opts: { mode?: number; mtime?: number } = {}): Promise<void> {
    await guard(name, () => {
      const parts = checkName(name);
      const path = join(this.#parent(name, parts, "create"), parts[parts.length - 1]);
      // A folder takes a block too: below the reserve, none is made.
      if (lstatOrNull(path) === null) this.#checkSpace(name, 4096);
      try {
        Deno.mkdirSync(path, { mode: 0o755 });
      } catch (err) {
        if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
      }
      const st = lstatOrNull(path);
      if (st === null) throw notFound(name);
      if (!st.isDirectory || st.isSymlink) {
        throw new StorageError(
          "not-a-file",
          st.isSymlink || this.#kind(path, st) === "symlink"
            ? `${name} is a link on the server, and links are never followed`
            : `${name} exists on the server and is not a folder`,
        );
      }
      if (opts.mode === undefined && opts.mtime === undefined) return;
      // Apply to the folder that was checked, through its open handle where Deno allows.
      const { file } = openChecked(path, { read: true }, "dir");
      try {
        // The server keeps full access to its own folders (owner rwx).
        if (opts.mode !== undefined) Deno.chmodSync(path, (opts.mode & 0o777) | 0o700);
        if (opts.mtime !== undefined && Number.isFinite(opts.mtime)) {
          file.utimeSync(new Date(), new Date(opts.mtime));
        }
      } finally {
        file.close();
      }
    });
  }

  async symlink(
    name: string,
    target: string,
    opts: { force: boolean; mtime?: number },
  ): Promise<void> {
    const parts = checkName(name);
    checkLinkTarget(name, target);
    const parent = await guard(name, () => this.#parent(name, parts, "create"));
    const path = join(parent, parts[parts.length - 1]);
    await guard(name, () => this.#checkTarget(name, path, opts));
    const record = this.#links.encode(target);
    await guard(name, () => this.#checkSpace(name, record.length));
    const writer = await AtomicWriter.create(path, {
      force: opts.force,
      tempDir: parent,
      label: name,
      mapError: (err) => toStorageError(err, name),
    });
    await writer.write(record);
    await writer.commit({
      mode: LINK_RECORD_MODE,
      keepSticky: true,
      mtime: opts.mtime === undefined ? undefined : new Date(opts.mtime),
      force: opts.force,
    });
  }

  async remove(name: string, opts: { recursive?: boolean; dir?: boolean } = {}): Promise<void> {
    const { path, st } = await guard(name, () => this.#existing(name));
    if (st.isDirectory && !st.isSymlink) {
      if (opts.recursive) return await this.#removeTree(name, path);
      if (!opts.dir) {
        throw new StorageError(
          "not-a-file",
          `${name} is a folder (use rmdir for an empty folder, or rm -r)`,
        );
      }
      await guard(name, () => {
        try {
          Deno.removeSync(path);
        } catch (err) {
          if (isNotEmpty(err)) {
            throw new StorageError("not-empty", `${name} is not empty (use rm -r)`);
          }
          throw err;
        }
      });
      return;
    }
    if (opts.dir) throw new StorageError("not-a-file", `${name} is not a folder`);
    // unlink removes the entry itself: a file, a link record, or a link (never its target).
    await guard(name, () => Deno.removeSync(path));
  }

  /** Removes a folder and everything in it, depth first, never following links. */
  async #removeTree(name: string, top: string): Promise<void> {
    let n = 0;
    const visit = async (dir: string): Promise<void> => {
      const names = [...Deno.readDirSync(dir)].map((e) => e.name);
      for (const base of names) {
        const p = join(dir, base);
        const st = lstatOrNull(p);
        if (st === null) continue;
        if (st.isDirectory && !st.isSymlink) await visit(p);
        else Deno.removeSync(p);
        if (++n % YIELD_EVERY === 0) await yieldNow();
      }
      Deno.removeSync(dir);
    };
    try {
      await visit(top);
    } catch (err) {
      throw toStorageError(err, name);
    }
  }

  rename(from: string, to: string, opts: { force: boolean }): Promise<void> {
    const run = this.#renaming.then(async () => {
      await this.#checkMovedNames(from, to);
      return await guard(from, () => {
        const src = this.#existing(from);
        const toParts = checkName(to);
        if (to === from) return;
        if (to.startsWith(`${from}/`)) {
          throw new StorageError("bad-name", `cannot move ${from} into itself`);
        }
        const dest = join(this.#parent(to, toParts, "create"), toParts[toParts.length - 1]);
        const there = lstatOrNull(dest);
        if (there) {
          if (!opts.force) throw existsError(to);
          if (there.isDirectory && !there.isSymlink) {
            throw new StorageError("not-a-file", `${to} is a folder on the server`);
          }
          if (src.st.isDirectory) {
            // rename(2) would fail with ENOTDIR, reported as "no such file".
            throw new StorageError(
              "not-a-file",
              `${to} is not a folder on the server: a folder cannot replace it`,
            );
          }
        }
        if (!src.st.isDirectory && !opts.force) {
          // No-clobber in one step: link() fails when the name exists.
          try {
            Deno.linkSync(src.path, dest);
          } catch (err) {
            if (err instanceof Deno.errors.AlreadyExists) throw existsError(to);
            if (lstatOrNull(dest)) throw existsError(to);
            Deno.renameSync(src.path, dest);
            return;
          }
          Deno.removeSync(src.path);
          return;
        }
        Deno.renameSync(src.path, dest);
      });
    });
    this.#renaming = run.then(() => {}, () => {});
    return run;
  }

  /**
   * Before a folder moves: no upload may be under way inside it (its temp
   * file would be left behind under a path nobody can name), and no name
   * below it may grow past {@linkcode MAX_NAME_BYTES} at its new place.
   */
  async #checkMovedNames(from: string, to: string): Promise<void> {
    const { path, st } = await guard(from, () => this.#existing(from));
    if (!st.isDirectory || st.isSymlink) return;
    const prefix = `${path}/`;
    for (const p of this.#uploading) {
      if (p.startsWith(prefix)) {
        throw new StorageError("busy", `${from} has uploads under way; move it when they are done`);
      }
    }
    const room = MAX_NAME_BYTES - utf8.encode(to).length - 1;
    let longest = 0;
    let seen = 0;
    const stack: [string, number][] = [[path, 0]];
    while (stack.length > 0) {
      const [dir, len] = stack.pop()!;
      let entries: Deno.DirEntry[];
      try {
        entries = [...Deno.readDirSync(dir)];
      } catch {
        continue;
      }
      for (const e of entries) {
        const l = len + (len ? 1 : 0) + utf8.encode(e.name).length;
        longest = Math.max(longest, l);
        if (longest > room) {
          throw new StorageError(
            "bad-name",
            `cannot move ${from} to ${to}: names below it would be longer than ${MAX_NAME_BYTES} bytes`,
          );
        }
        if (e.isDirectory && !e.isSymlink) stack.push([join(dir, e.name), l]);
        if (++seen % YIELD_EVERY === 0) await yieldNow();
      }
    }
  }

  // ---- partials and durability -------------------------------------------

  claimPartial(name: string, who: string, preempt: () => void): Promise<PartialClaim> {
    // A bad name rejects (like every other call), never throws synchronously.
    return guard(name, () => {
      checkName(name);
      return this.#partials.claim(name, who, preempt);
    });
  }

  dropPartial(name: string, who: string): Promise<void> {
    this.#partials.drop(name, who);
    return Promise.resolve();
  }

  partialBytes(who: string, except?: string): Promise<number> {
    return Promise.resolve(this.#partials.bytesOf(who, except));
  }

  sweepPartials(): Promise<number> {
    return this.#partials.sweep();
  }

  async sync(keys: Iterable<string>): Promise<void> {
    for (const dir of keys) await syncDir(dir);
  }
}

/** Probes the free-space check: needs `statfs` (Deno: `--allow-sys=statfs`). */
function probeSpace(root: string, reserveBytes: number | undefined): SpaceCheck {
  if (reserveBytes === 0) return { enforced: false, why: "turned off (--min-free 0)" };
  try {
    const s = statfsSync(root);
    const total = Number(s.blocks) * Number(s.bsize);
    const reserve = reserveBytes ??
      Math.min(DEFAULT_RESERVE_BYTES, Math.floor(total * DEFAULT_RESERVE_FRACTION));
    return { enforced: true, reserveBytes: reserve };
  } catch (err) {
    return { enforced: false, why: `cannot read free space (${(err as Error).name})` };
  }
}

function freeBytes(root: string): number | null {
  try {
    const s = statfsSync(root);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}

function isNotEmpty(err: unknown): boolean {
  return err instanceof Error && /os error (39|66)\)/.test(err.message);
}

function toInfo(name: string, st: Deno.FileInfo, type: FileInfo["type"]): FileInfo {
  return {
    name,
    size: type === "dir" ? 0 : st.size,
    mode: (st.mode ?? 0) & 0o777,
    mtime: st.mtime?.getTime() ?? 0,
    type,
  };
}

/** Runs a synchronous storage step, turning every failure into a client-safe error. */
function guard<T>(name: string, fn: () => T): Promise<Awaited<T>> {
  try {
    return Promise.resolve(fn()).catch((err) => {
      throw toStorageError(err, name);
    }) as Promise<Awaited<T>>;
  } catch (err) {
    return Promise.reject(toStorageError(err, name));
  }
}

/** Maps any error to a client-safe {@linkcode StorageError} (integrity errors pass through). */
export function toStorageError(err: unknown, name: string): unknown {
  if (err instanceof StorageError || err instanceof IntegrityError) return err;
  if (err instanceof FileExistsError) return existsError(name);
  if (err instanceof UnsafePathError) {
    return new StorageError(
      err.reason === "changed" ? "io" : "not-a-file",
      err.reason === "link"
        ? `${name} is a link on the server, and links are never followed`
        : `${name}: ${err.message}`,
    );
  }
  if (err instanceof EfxError) {
    // AtomicWriter wraps OS errors; map by the original error.
    if (err.cause instanceof Error) return toStorageError(err.cause, name);
    if (err instanceof RemoteError) return err;
    return new StorageError("io", err.message); // names the file by the client's name
  }
  if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
    return notFound(name);
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new StorageError("permission", `permission denied on the server: ${name}`);
  }
  if (err instanceof Deno.errors.NotCapable) {
    return new StorageError("permission", `not allowed by the server's permissions: ${name}`);
  }
  if (err instanceof Deno.errors.AlreadyExists) return existsError(name);
  if (err instanceof Deno.errors.IsADirectory) return notAFile(name, true);
  if (err instanceof Error && /os error 28\)/.test(err.message)) {
    return new StorageError("no-space", `${name}: ${osMessage(err)}`);
  }
  return new StorageError("io", `${name}: ${osMessage(err)}`);
}

/** Removes stale temp files in `root` and every folder below it (links not followed). */
async function removeTempsUnder(root: string): Promise<number> {
  let count = 0;
  const stack = [root];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    try {
      count += await removeStaleTemps(dir);
      for await (const e of Deno.readDir(dir)) {
        if (e.isDirectory && !e.isSymlink) stack.push(join(dir, e.name));
      }
    } catch { /* unreadable folder: skip */ }
  }
  return count;
}
