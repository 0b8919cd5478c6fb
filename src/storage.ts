/**
 * The server's storage root: every client-supplied name goes through here.
 *
 * Invariants:
 * - A client name is a "/"-separated relative path of non-empty components
 *   with no ".", "..", backslash, control character, drive letter or reserved
 *   temp prefix ({@linkcode Storage.resolveName}). It is mapped to a path
 *   under {@linkcode Storage.root} (the real path of the root folder) by plain
 *   joining, so lexically it can never leave the root.
 * - Symbolic links are checked with `realPath`: any operation whose path,
 *   once resolved, leads outside the root is refused with `bad-name`
 *   ({@linkcode Storage.confine}). Broken links are never followed.
 * - Reads follow a final symlink when it stays inside the root. Writes and
 *   removals act on the entry itself: an upload replaces a symlink with a
 *   regular file (never writes through it), a removal removes the link.
 * - Parent folders of an upload are created one level at a time, each one
 *   checked to be a real folder inside the root before going deeper.
 * - Uploads go through an {@linkcode AtomicWriter} with its temp file in the
 *   target's folder: a file appears under its name only once complete and
 *   verified. Temp files are hidden from listings, their names are reserved,
 *   and {@linkcode Storage.open} removes leftovers anywhere under the root.
 * - Every error for a client is a {@linkcode StorageError} whose message
 *   names the file by the client's name and never contains a server path.
 * - The checks see the file system at the time of the call: a local user who
 *   can write inside the root and races the server is out of scope.
 *
 * @example
 * ```ts
 * const storage = await Storage.open("storage");
 * const w = await storage.beginWrite("photos/a b.png", { size: 5, maxSize: 1 << 30 });
 * await w.write(new TextEncoder().encode("hello"));
 * await w.commit({ mode: 0o644 });
 * console.log(await storage.list("photos/*"));
 * ```
 * Metadata calls (lstat, realPath, mkdir, stat) are synchronous on purpose:
 * about 4 us each here against about 40 us for Deno's asynchronous file-system
 * calls (measured), and a small-file upload makes a dozen of them. Reading,
 * writing and syncing file data stays asynchronous.
 *
 * @module
 */
import { dirname, join, normalize } from "node:path";
import {
  AtomicWriter,
  FileExistsError,
  osMessage,
  removeStaleTemps,
  TEMP_PREFIX,
} from "./atomic_file.ts";
import { EfxError, IntegrityError, RemoteError } from "./errors.ts";

/** One entry of the storage, as sent to clients. */
export interface FileInfo {
  /** Client name: "/"-separated path relative to the storage root. */
  name: string;
  /** Size in bytes (0 for folders and for links leading outside the root). */
  size: number;
  /** Permission bits (`& 0o777`). */
  mode: number;
  /** Modification time in ms since the epoch. */
  mtime: number;
  /** Entry kind; `symlink` only appears in listings. */
  type: "file" | "dir" | "symlink";
  /** For a symlink that stays inside the root: the link's text (relative), as stored. */
  target?: string;
}

/** Reason codes of a {@linkcode StorageError}, sent to the client. */
export type StorageErrorCode =
  | "bad-name"
  | "not-found"
  | "exists"
  | "permission"
  | "not-a-file"
  | "too-large"
  | "io";

/** A storage operation failed; the message is safe to send to the client. */
export class StorageError extends RemoteError {
  declare readonly code: StorageErrorCode;
  constructor(code: StorageErrorCode, message: string) {
    super(code, message);
    this.name = "StorageError";
  }
}

/** Longest accepted name component, in UTF-8 bytes. */
export const MAX_COMPONENT_BYTES = 255;
/** Longest accepted name, in UTF-8 bytes. */
export const MAX_NAME_BYTES = 4096;

const encoder = new TextEncoder();

/**
 * The storage root of a server.
 *
 * @example
 * ```ts
 * const storage = await Storage.open("/srv/efx");
 * const { file, info } = await storage.openRead("reports/q3.pdf");
 * try {
 *   console.log(info.size);
 * } finally {
 *   file.close();
 * }
 * ```
 */
export class Storage {
  /** Real (symlink-free, absolute) path of the storage root. */
  readonly root: string;
  /** How many stale temp files {@linkcode Storage.open} removed. */
  readonly removedTemps: number;

  private constructor(root: string, removedTemps: number) {
    this.root = root;
    this.removedTemps = removedTemps;
  }

  /**
   * Creates `root` if needed (like `mkdir -p`), resolves its real path and
   * removes stale temp files anywhere under it (not following symlinks).
   * Failures are {@linkcode EfxError}s naming the local folder.
   */
  static async open(root: string): Promise<Storage> {
    let real: string;
    try {
      await Deno.mkdir(root, { recursive: true });
      real = await Deno.realPath(root);
      if (!(await Deno.stat(real)).isDirectory) throw new Error("not a folder");
    } catch (err) {
      const why = err instanceof Deno.errors.AlreadyExists ? "not a folder" : osMessage(err);
      throw new EfxError(`cannot open storage folder ${root}: ${why}`, undefined, { cause: err });
    }
    return new Storage(real, await removeTempsUnder(real));
  }

  /**
   * Validates a client-supplied name and returns its path inside the root
   * (lexically; symlinks are not looked at, see {@linkcode Storage.confine}).
   *
   * @throws {StorageError} `bad-name` with the reason.
   * @example
   * ```ts
   * storage.resolveName("photos/a b.png"); // "<root>/photos/a b.png"
   * storage.resolveName("../etc/passwd"); // throws StorageError("bad-name")
   * ```
   */
  resolveName(name: string): string {
    return join(this.root, ...checkName(name));
  }

  /**
   * Like {@linkcode Storage.resolveName}, then resolves symlinks: the real
   * path of the deepest existing ancestor (or of the path itself) must be
   * inside the root. Returns that real path joined with the components that
   * do not exist yet.
   *
   * @throws {StorageError} `bad-name` "… leads outside the storage root";
   * `not-found` for a broken symbolic link on the way.
   */
  async confine(name: string): Promise<string> {
    return await this.#confineParts(name, checkName(name));
  }

  /**
   * Information about a file or folder (symlinks inside the root are
   * followed and reported as their target).
   *
   * @throws {StorageError} `not-found`; `not-a-file` for special files
   * (devices, pipes, sockets); `bad-name`.
   */
  async stat(name: string): Promise<FileInfo> {
    const real = await this.confine(name);
    const st = await fsCall(name, () => Promise.resolve(Deno.statSync(real)));
    if (!st.isFile && !st.isDirectory) throw notAFile(name);
    return toInfo(name, st, st.isFile ? "file" : "dir");
  }

  /**
   * Opens a regular file for reading. A symlink to a file inside the root is
   * followed; one leading outside is refused. The caller closes `file`.
   *
   * @throws {StorageError} `not-found`, `not-a-file` (folders, special
   * files), `bad-name`, `permission`, `io`.
   */
  async openRead(name: string): Promise<{ file: Deno.FsFile; info: FileInfo }> {
    const real = await this.confine(name);
    // stat first: opening a FIFO for reading would block.
    const st = await fsCall(name, () => Promise.resolve(Deno.statSync(real)));
    if (!st.isFile) throw notAFile(name, st.isDirectory);
    const file = await fsCall(name, () => Deno.open(real, { read: true }));
    try {
      const fst = await fsCall(name, () => file.stat());
      if (!fst.isFile) throw notAFile(name, fst.isDirectory);
      return { file, info: toInfo(name, fst, "file") };
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /**
   * Starts an upload of `name`: checks the name and `size <= maxSize`,
   * refuses an existing entry (unless `force`) and folders, creates missing
   * parent folders inside the root, then creates an {@linkcode AtomicWriter}
   * whose temp file lives in the target's folder. Errors from the writer's
   * `write`/`commit` are {@linkcode StorageError}s too (except the
   * {@linkcode IntegrityError} of a hash mismatch).
   *
   * @throws {StorageError} `too-large`, `exists`, `not-a-file`, `bad-name`,
   * `permission`, `io`.
   * @example
   * ```ts
   * const w = await storage.beginWrite("a.txt", { force: false, size: 5 });
   * await w.write(new TextEncoder().encode("hello"));
   * await w.commit({ expectedSha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" });
   * ```
   */
  async beginWrite(
    name: string,
    opts: {
      force?: boolean;
      size?: number;
      maxSize?: number;
      /** Resumable upload: write through this partial file from `offset` (see resume.ts). */
      partial?: { path: string; offset: number };
    } = {},
  ): Promise<AtomicWriter> {
    const parts = await this.checkWrite(name, opts);
    const realParent = await this.#mkdirs(name, parts);
    const path = join(realParent, parts[parts.length - 1]);
    return await AtomicWriter.create(path, {
      force: opts.force ?? false,
      tempDir: realParent,
      label: name,
      mapError: (err) => toStorageError(err, name),
      partial: opts.partial,
    });
  }

  /**
   * Every check {@linkcode Storage.beginWrite} makes, without creating
   * anything: the name, the size limit, and the target (not a folder; not
   * existing unless `force`). Returns the name's components.
   */
  async checkWrite(
    name: string,
    opts: { force?: boolean; size?: number; maxSize?: number } = {},
  ): Promise<string[]> {
    const parts = checkName(name);
    const force = opts.force ?? false;
    if (opts.size !== undefined && opts.maxSize !== undefined && opts.size > opts.maxSize) {
      throw new StorageError(
        "too-large",
        `${name} is too large for the server: ${opts.size} bytes, the limit is ${opts.maxSize} bytes`,
      );
    }
    // Check the target before creating any folder.
    const parent = await this.#confineParts(name, parts.slice(0, -1));
    const existing = await lstatOrNull(name, join(parent, parts[parts.length - 1]));
    if (existing) {
      let isDir = existing.isDirectory;
      if (existing.isSymlink) {
        const target = await this.#confineParts(name, parts).catch(() => null);
        isDir = target !== null && ((await lstatOrNull(name, target))?.isDirectory ?? false);
      }
      if (isDir) throw new StorageError("not-a-file", `${name} is a folder on the server`);
      if (!force) throw existsError(name);
    }
    return parts;
  }

  /**
   * Lists entries sorted by name; temp files are hidden, symlinks are not
   * followed (a link inside the root shows its target's size, mode and mtime
   * with type `symlink`; a link leading outside or broken shows size 0).
   *
   * `pattern` uses `*` (any run of characters except "/") and `?` (one
   * character except "/"), everything else is literal. Without `recursive`
   * the listing goes as deep as the pattern has components ("*" or no
   * pattern: the top level; "photos/*": inside photos) and a pattern is
   * matched against the full name. With `recursive` every entry at any depth
   * is considered: a pattern containing "/" is matched against the full
   * name, one without "/" against the last component (like rsync), so
   * `list("*.png", { recursive: true })` finds PNGs in every folder.
   *
   * @example
   * ```ts
   * await storage.list(); // top-level entries
   * await storage.list("photos/*.png");
   * await storage.list("*.png", { recursive: true });
   * ```
   */
  async list(pattern?: string, opts: { recursive?: boolean } = {}): Promise<FileInfo[]> {
    const out: FileInfo[] = [];
    const pat = pattern === undefined || pattern === "" ? undefined : pattern;
    if (opts.recursive) {
      const re = pat === undefined ? null : globToRegExp(pat);
      const onName = pat !== undefined && !pat.includes("/");
      await this.#walk(this.root, "", out, (rel, base) => {
        const keep = re === null || re.test(onName ? base : rel);
        return { keep, descend: true };
      });
    } else {
      const segs = (pat ?? "*").split("/").map(globToRegExp);
      await this.#walk(this.root, "", out, (_rel, base, depth) => {
        const matches = segs[depth].test(base);
        const last = depth === segs.length - 1;
        return { keep: last && matches, descend: !last && matches };
      });
    }
    out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return out;
  }

  /**
   * Every entry below folder `name`, at any depth (names include `name/`),
   * sorted; symlinks are not followed. Used to download a folder.
   */
  async tree(name: string): Promise<FileInfo[]> {
    const parts = checkName(name);
    const real = await this.#confineParts(name, parts);
    const st = await fsCall(name, () => Promise.resolve(Deno.statSync(real)));
    if (!st.isDirectory) {
      throw new StorageError("not-a-file", `${name} is not a folder on the server`);
    }
    const out: FileInfo[] = [];
    await this.#walk(real, parts.join("/"), out, () => ({ keep: true, descend: true }));
    out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return out;
  }

  /**
   * Makes folder `name` (and its parents) when missing, then applies
   * `mode & 0o777` and `mtime` when given. Used to upload a folder.
   */
  async mkdir(name: string, opts: { mode?: number; mtime?: number } = {}): Promise<void> {
    const parts = checkName(name);
    const real = await this.#mkdirs(name, [...parts, "-"]);
    if (opts.mode !== undefined) await fsCall(name, () => Deno.chmod(real, opts.mode! & 0o777));
    if (opts.mtime !== undefined && Number.isFinite(opts.mtime)) {
      await fsCall(name, () => Deno.utime(real, new Date(), new Date(opts.mtime!)));
    }
  }

  /**
   * Makes a symlink `name` -> `target`. The target must be relative and,
   * resolved from the link's folder, stay inside the root (links are kept
   * as links, never a way out). An existing entry is replaced only with
   * `force`.
   */
  async symlink(name: string, target: string, opts: { force?: boolean } = {}): Promise<void> {
    const parts = checkName(name);
    const bad = (why: string) =>
      new StorageError("bad-name", `refusing symbolic link ${name} -> ${target}: ${why}`);
    if (typeof target !== "string" || target === "" || target.length > MAX_NAME_BYTES) {
      throw bad("bad target");
    }
    if (target.startsWith("/")) throw bad("absolute targets are not allowed");
    // deno-lint-ignore no-control-regex
    if (/[\x00-\x1f\x7f\\]/.test(target)) throw bad("control characters or backslashes");
    const resolved = normalize(join(dirname(parts.join("/")), target));
    if (resolved === ".." || resolved.startsWith("../") || resolved.startsWith("/")) {
      throw bad("it leads outside the storage root");
    }
    const realParent = await this.#mkdirs(name, parts);
    const path = join(realParent, parts[parts.length - 1]);
    const existing = await lstatOrNull(name, path);
    if (existing) {
      if (existing.isDirectory) throw notAFile(name, true);
      if (!opts.force) throw existsError(name);
      await fsCall(name, () => Deno.remove(path));
    }
    await fsCall(name, () => Deno.symlink(target, path));
    // The text check above cannot see through other links (`a -> ..` then
    // `b -> a/..`): resolve the new link for real and undo it if it leads out.
    let real: string | null = null;
    try {
      real = Deno.realPathSync(path);
    } catch { /* dangling: only its text can be judged, and that passed */ }
    if (real !== null && !this.#inside(real)) {
      Deno.removeSync(path);
      throw bad("through other links it leads outside the storage root");
    }
  }

  /**
   * Removes a file (or a symlink itself, never its target). Folders are
   * refused.
   *
   * @throws {StorageError} `not-found`, `not-a-file`, `bad-name`,
   * `permission`, `io`.
   */
  async remove(name: string): Promise<void> {
    const parts = checkName(name);
    const parent = await this.#confineParts(name, parts.slice(0, -1));
    const path = join(parent, parts[parts.length - 1]);
    const st = await fsCall(name, () => Deno.lstat(path));
    if (st.isDirectory) {
      throw new StorageError("not-a-file", `${name} is a folder; only files can be removed`);
    }
    if (!st.isFile && !st.isSymlink) throw notAFile(name);
    await fsCall(name, () => Deno.remove(path));
  }

  #inside(path: string): boolean {
    const prefix = this.root.endsWith("/") ? this.root : this.root + "/";
    return path === this.root || path.startsWith(prefix);
  }

  /** Real path of root/parts (deepest existing ancestor resolved), checked inside the root. */
  async #confineParts(name: string, parts: string[]): Promise<string> {
    for (let i = parts.length; i >= 0; i--) {
      const candidate = join(this.root, ...parts.slice(0, i));
      let real: string;
      try {
        real = Deno.realPathSync(candidate);
      } catch (err) {
        if (
          i > 0 &&
          (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory)
        ) {
          // A broken symlink: never follow it (it could be made to point anywhere).
          if ((await lstatOrNull(name, candidate))?.isSymlink) {
            throw new StorageError(
              "not-found",
              `no such file on the server: ${name} (broken symbolic link)`,
            );
          }
          continue;
        }
        throw toStorageError(err, name);
      }
      if (!this.#inside(real)) {
        throw new StorageError("bad-name", `${name} leads outside the storage root`);
      }
      return join(real, ...parts.slice(i));
    }
    throw new StorageError("io", `${name}: storage root is unavailable`);
  }

  /** Creates the parent folders of `parts` one level at a time; returns the real parent. */
  async #mkdirs(name: string, parts: string[]): Promise<string> {
    let cur = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      const next = join(cur, parts[i]);
      try {
        Deno.mkdirSync(next);
      } catch (err) {
        if (!(err instanceof Deno.errors.AlreadyExists)) throw toStorageError(err, name);
      }
      const real = await this.#confineParts(name, parts.slice(0, i + 1));
      const st = await fsCall(name, () => Promise.resolve(Deno.statSync(real)));
      if (!st.isDirectory) {
        const prefix = parts.slice(0, i + 1).join("/");
        throw new StorageError(
          "not-a-file",
          `cannot create ${name}: ${prefix} is not a folder on the server`,
        );
      }
      cur = real;
    }
    return cur;
  }

  async #walk(
    dir: string,
    prefix: string,
    out: FileInfo[],
    decide: (rel: string, base: string, depth: number) => { keep: boolean; descend: boolean },
    depth = 0,
  ): Promise<void> {
    const entries: Deno.DirEntry[] = [];
    try {
      for await (const e of Deno.readDir(dir)) entries.push(e);
    } catch (err) {
      if (depth === 0) throw toStorageError(err, prefix || "/");
      return; // unreadable or vanished subfolder: skip
    }
    for (const e of entries) {
      if (e.name.startsWith(TEMP_PREFIX)) continue;
      const rel = prefix ? `${prefix}/${e.name}` : e.name;
      const path = join(dir, e.name);
      const { keep, descend } = decide(rel, e.name, depth);
      if (keep) {
        const info = await this.#entryInfo(rel, path);
        if (info) out.push(info);
      }
      if (descend && e.isDirectory && !e.isSymlink) {
        await this.#walk(path, rel, out, decide, depth + 1);
      }
    }
  }

  async #entryInfo(rel: string, path: string): Promise<FileInfo | null> {
    let st: Deno.FileInfo;
    try {
      st = await Deno.lstat(path);
    } catch {
      return null; // vanished
    }
    if (st.isFile) return toInfo(rel, st, "file");
    if (st.isDirectory) return toInfo(rel, st, "dir");
    if (!st.isSymlink) return null; // devices, pipes, sockets are not shown
    try {
      const real = await Deno.realPath(path);
      if (this.#inside(real)) {
        const target = await Deno.stat(real);
        const link = await Deno.readLink(path);
        if (target.isFile) return { ...toInfo(rel, target, "symlink"), target: link };
        if (target.isDirectory) return { ...toInfo(rel, st, "symlink"), size: 0, target: link };
      }
    } catch { /* broken */ }
    // Outside the root, broken, or to a folder: say nothing about the target.
    return { ...toInfo(rel, st, "symlink"), size: 0 };
  }
}

/** Validates a client name; returns its components. */
function checkName(name: string): string[] {
  const bad = (why: string) => {
    const shown = name.length > 80 ? name.slice(0, 80) + "…" : name;
    const quoted = JSON.stringify(shown).replaceAll("\x7f", "\\u007f");
    return new StorageError("bad-name", `invalid file name ${quoted}: ${why}`);
  };
  if (typeof name !== "string" || name === "") throw bad("the name is empty");
  if (!name.isWellFormed()) throw bad("not valid Unicode");
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c === 0) throw bad("it contains a NUL character");
    if (c < 0x20 || c === 0x7f) throw bad("it contains a control character");
  }
  if (name.includes("\\")) throw bad("backslashes are not allowed");
  if (name.startsWith("/")) throw bad("absolute names are not allowed");
  if (/^[A-Za-z]:/.test(name)) throw bad("drive letters are not allowed");
  if (encoder.encode(name).length > MAX_NAME_BYTES) {
    throw bad(`longer than ${MAX_NAME_BYTES} bytes`);
  }
  const parts = name.split("/");
  for (const p of parts) {
    if (p === "") throw bad('empty folder name ("//" or a trailing "/")');
    if (p === "." || p === "..") throw bad(`"${p}" is not allowed`);
    if (encoder.encode(p).length > MAX_COMPONENT_BYTES) {
      throw bad(`a component is longer than ${MAX_COMPONENT_BYTES} bytes`);
    }
    if (p.startsWith(TEMP_PREFIX)) throw bad(`names starting with ${TEMP_PREFIX} are reserved`);
  }
  return parts;
}

/** Turns a `*`/`?` glob into an anchored RegExp; neither wildcard matches "/". */
function globToRegExp(glob: string): RegExp {
  let src = "";
  for (const ch of glob) {
    if (ch === "*") src += "[^/]*";
    else if (ch === "?") src += "[^/]";
    else src += ch.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }
  return new RegExp(`^${src}$`, "u");
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

function notAFile(name: string, isDir = false): StorageError {
  return new StorageError(
    "not-a-file",
    isDir ? `${name} is a folder, not a file` : `${name} is not a regular file`,
  );
}

function existsError(name: string): StorageError {
  return new StorageError(
    "exists",
    `${name} already exists on the server (use --force to overwrite)`,
  );
}

function lstatOrNull(name: string, path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return null;
    }
    throw toStorageError(err, name);
  }
}

async function fsCall<T>(name: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toStorageError(err, name);
  }
}

/** Maps any error to a client-safe {@linkcode StorageError} (integrity errors pass through). */
function toStorageError(err: unknown, name: string): unknown {
  if (err instanceof StorageError) return err;
  if (err instanceof FileExistsError) return existsError(name);
  if (err instanceof EfxError) {
    // AtomicWriter wraps OS errors; map by the original error.
    if (err.cause instanceof Error) return toStorageError(err.cause, name);
    if (err instanceof IntegrityError || err instanceof RemoteError) return err;
    return new StorageError("io", err.message); // names the file by the client's name
  }
  if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
    return new StorageError("not-found", `no such file on the server: ${name}`);
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new StorageError("permission", `permission denied on the server: ${name}`);
  }
  if (err instanceof Deno.errors.NotCapable) {
    return new StorageError("permission", `not allowed by the server's permissions: ${name}`);
  }
  if (err instanceof Deno.errors.AlreadyExists) return existsError(name);
  if (err instanceof Deno.errors.IsADirectory) return notAFile(name, true);
  return new StorageError("io", `${name}: ${osMessage(err)}`);
}

/** Removes stale temp files in `root` and every folder below it (symlinks not followed). */
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
