/**
 * The S3 storage backend: a {@linkcode StorageBackend} over one bucket (and
 * key prefix) of an S3-compatible object store, so that several `efx serve`
 * nodes can serve the same files.
 *
 * Layout below the prefix (client names can never reach a component that
 * starts with `.efx-`, see {@linkcode checkName}):
 * - `NAME`: the entry of a file or link. Its metadata (`x-amz-meta-efx-*`)
 *   holds the type, mode, mtime, whole-file SHA-256 and size. A file of at
 *   most {@linkcode CHUNK_BYTES} is stored in the entry itself (a plain
 *   object under its name); a larger one, or any resumable upload, is stored
 *   as fixed-size chunk objects `.efx-data/UUID/NNNNNNNN` that the entry
 *   names (`efx-data`). A link's body is its target (data, never resolved).
 * - `NAME/`: the marker of a folder (mode and mtime in its metadata). Folders
 *   are prefixes: a folder with files but no marker (made by another tool) is
 *   shown too.
 * - `.efx-partials/sha256(identity)/sha256(name)`: the record of an
 *   interrupted resumable upload (which chunk set it is), private per client
 *   identity; `.efx-uploads/UUID`: the record of a large upload under way.
 *
 * Guarantees, as on the local folder:
 * - An entry appears only after the whole file was received and its SHA-256
 *   checked; it is then made visible by one PUT of the entry. Without
 *   `force` that PUT carries `If-None-Match: *`: the store decides, so of two
 *   nodes racing on one name exactly one wins. With `force` the entry is
 *   replaced by a conditional PUT on the ETag it replaces (retried), so the
 *   last complete upload wins and the replaced file's chunks are removed by
 *   the one writer that replaced it. Chunks are written once (create-only)
 *   and never changed, so a reader never sees a mix: a read of a replaced
 *   file either finishes on the old chunks or fails with a clear error.
 * - Memory per upload is bounded: at most {@linkcode CHUNKS_IN_FLIGHT} + 1
 *   chunk buffers.
 * - The state of a resumable upload is in the store, so a client resumes
 *   through any node: the chunks written are kept, their bytes re-read from
 *   the store to check the client's prefix hash and to continue the
 *   whole-file SHA-256. Only whole chunks survive an interruption.
 * - Every store failure reaches the client as one {@linkcode StorageError}
 *   line naming the cause; idempotent calls are retried with backoff
 *   ({@linkcode S3Client}).
 *
 * Not guaranteed (see README, Several servers): a folder rename or `rm -r`
 * is a walk, not one atomic step; a file and a folder of the same name
 * created at the same instant on two nodes may both appear; quotas are
 * counted per node.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { EfxError, IntegrityError } from "../errors.ts";
import type { FileInfo } from "../messages.ts";
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
import { checkLinkTarget, checkName, RESERVED_PREFIX } from "./names.ts";
import { QuotaLedger } from "./quota.ts";
import { type ListedObject, S3Client, type S3Config, unquote } from "./s3_client.ts";

/** Chunk size of large files and resumable uploads (also the largest inline file). */
export const CHUNK_BYTES = 8 * 1024 * 1024;
/** Chunk uploads one upload may have under way while it receives the next. */
export const CHUNKS_IN_FLIGHT = 2;
/** Most entries one listing may return (as on the local backend). */
export const MAX_LIST_ENTRIES = 100_000;
/** Longest object key the store accepts, in UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;
/** Store requests one listing runs at once (entry metadata). */
const LIST_CONCURRENCY = 16;

const DATA = `${RESERVED_PREFIX}data/`;
const PARTIALS = `${RESERVED_PREFIX}partials/`;
const UPLOADS = `${RESERVED_PREFIX}uploads/`;
const M = "x-amz-meta-efx-";
/** Bodies are not hashed for the signature: Content-MD5 lets the store check them. */
const UNSIGNED = "UNSIGNED-PAYLOAD";
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Settings of an S3 backend. */
export interface S3StorageOptions {
  /** How long an interrupted resumable upload is kept. */
  partialTtlMs: number;
  /** Chunk size (tests use a small one); default {@linkcode CHUNK_BYTES}. */
  chunkBytes?: number;
}

/** What an entry object says about itself. */
interface Entry {
  type: "file" | "symlink";
  size: number;
  mode: number;
  mtime: number;
  sha256: string;
  /** Chunk set of a large file, or null when the data is in the entry. */
  data: string | null;
  chunk: number;
  etag: string;
}

/** A claim on a resumable upload's record. */
interface S3Claim extends PartialClaim {
  readonly recordKey: string;
  /** The chunk set already there (null: none). */
  readonly data: string | null;
  readonly chunk: number;
  /** Hash of the checked prefix, set by a successful checkPrefix. */
  prefixHash: Hash | null;
}

const sha256hex = (s: string) => createHash("sha256").update(s).digest("hex");
const md5b64 = (b: Uint8Array) => createHash("md5").update(b).digest("base64");
const chunkKey = (data: string, i: number) => `${DATA}${data}/${String(i).padStart(8, "0")}`;

/** Runs `fn` over `items`, at most `n` at once, keeping the order of results. */
async function mapLimit<T, R>(items: T[], n: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}

interface Held {
  preempt: () => void;
  released: Promise<void>;
}

/** Files in a bucket of an S3-compatible store. */
export class S3Storage implements StorageBackend {
  readonly quotas: QuotaLedger;
  readonly client: S3Client;
  readonly ttlMs: number;
  readonly chunkBytes: number;
  /** Folders this node made or saw (their markers exist): skips repeated checks. */
  #knownDirs = new Set<string>();
  /** Entry metadata by key, valid while the listed ETag and time are the same. */
  #infoCache = new Map<string, { tag: string; info: FileInfo }>();
  #held = new Map<string, Held>();
  #renaming: Promise<void> = Promise.resolve();

  private constructor(client: S3Client, opts: S3StorageOptions) {
    this.client = client;
    this.ttlMs = opts.partialTtlMs;
    this.chunkBytes = opts.chunkBytes ?? CHUNK_BYTES;
    // Counted in this node's memory from its start: not shared between nodes
    // and not kept across restarts (README, Several servers).
    this.quotas = QuotaLedger.open("", () => {
      throw new Error("quota usage is kept in memory in S3 mode");
    });
  }

  get label(): string {
    const c = this.client.config;
    return `s3://${c.bucket}/${c.prefix} at ${c.endpoint}`;
  }

  /** Start-up facts for the server's log. */
  get startupNotes(): string[] {
    return [
      `object store: ${this.label} (chunks of ${this.chunkBytes >> 20} MiB)`,
      "quotas (if any) are counted per node in memory, not shared between nodes",
    ];
  }

  /**
   * Connects to the bucket and checks it answers a listing with these
   * credentials. Failures are one-line {@linkcode EfxError}s naming the cause.
   */
  static async open(config: S3Config, opts: S3StorageOptions): Promise<S3Storage> {
    const s = new S3Storage(new S3Client(config), opts);
    try {
      for await (const _ of s.client.list(config.prefix, "/")) break;
    } catch (err) {
      throw new EfxError(
        `cannot use object store s3://${config.bucket}/${config.prefix}: ${(err as Error).message}`,
      );
    }
    return s;
  }

  // ---- names and entries --------------------------------------------------

  /** Checks a client name and that its keys fit the store; returns its components. */
  #check(name: string): string[] {
    const parts = checkName(name);
    if (utf8.encode(this.client.key(name)).length + 1 > MAX_KEY_BYTES) {
      throw new StorageError(
        "bad-name",
        `invalid file name ${
          JSON.stringify(name.length > 80 ? name.slice(0, 80) + "…" : name)
        }: longer than the object store allows (${MAX_KEY_BYTES} bytes with the prefix)`,
      );
    }
    return parts;
  }

  #entryOf(h: Headers): Entry {
    const type = h.get(`${M}type`) === "link" ? "symlink" : "file";
    const len = Number(h.get("content-length") ?? "0");
    const data = h.get(`${M}data`);
    const mtime = Number(h.get(`${M}mtime`));
    const mode = parseInt(h.get(`${M}mode`) ?? "", 8);
    return {
      type,
      size: data ? Number(h.get(`${M}size`) ?? "0") : len,
      mode: type === "symlink" ? 0o777 : Number.isFinite(mode) ? mode & 0o777 : 0o644,
      mtime: Number.isFinite(mtime) && h.has(`${M}mtime`)
        ? mtime
        : Date.parse(h.get("last-modified") ?? "") || 0,
      sha256: h.get(`${M}sha256`) ?? "",
      data: data && /^[0-9a-f-]{36}$/.test(data) ? data : null,
      chunk: Number(h.get(`${M}chunk`) ?? "0") || this.chunkBytes,
      etag: unquote(h.get("etag")),
    };
  }

  /** The entry object of `name` (a file or link), or null. */
  async #entry(name: string): Promise<Entry | null> {
    const h = await this.client.head(this.client.key(name), name);
    if (h === null) return null;
    if (h.get(`${M}type`) === "dir") return null; // a key "x" that claims to be a folder: ignored
    return this.#entryOf(h);
  }

  /** A link's target (its entry's body). */
  async #linkTarget(name: string): Promise<string> {
    const got = await this.client.getSmall(this.client.key(name), 16384, name);
    if (got === null) throw notFound(name);
    return fromUtf8.decode(got.body);
  }

  async #infoOfEntry(name: string, e: Entry): Promise<FileInfo> {
    if (e.type === "symlink") {
      const target = await this.#linkTarget(name);
      return {
        name,
        size: utf8.encode(target).length,
        mode: 0o777,
        mtime: e.mtime,
        type: "symlink",
        target,
      };
    }
    return { name, size: e.size, mode: e.mode, mtime: e.mtime, type: "file" };
  }

  /** The folder `name` as a client sees it, or null when there is none. */
  async #dirInfo(name: string): Promise<FileInfo | null> {
    const key = this.client.key(name) + "/";
    const h = await this.client.head(key, name);
    if (h !== null) {
      this.#knownDirs.add(name);
      const mode = parseInt(h.get(`${M}mode`) ?? "", 8);
      const mtime = Number(h.get(`${M}mtime`));
      return {
        name,
        size: 0,
        mode: Number.isFinite(mode) ? mode & 0o777 : 0o755,
        mtime: Number.isFinite(mtime) && h.has(`${M}mtime`)
          ? mtime
          : Date.parse(h.get("last-modified") ?? "") || 0,
        type: "dir",
      };
    }
    // A folder without a marker: files below it only (made by another tool).
    for await (const page of this.client.list(key, "/")) {
      if (page.objects.length > 0 || page.prefixes.length > 0) {
        return { name, size: 0, mode: 0o755, mtime: 0, type: "dir" };
      }
      break;
    }
    return null;
  }

  // ---- reading ------------------------------------------------------------

  async stat(name: string): Promise<FileInfo> {
    this.#check(name);
    const e = await this.#entry(name);
    if (e) return await this.#infoOfEntry(name, e);
    const d = await this.#dirInfo(name);
    if (d) return d;
    throw notFound(name);
  }

  async openRead(name: string): Promise<ReadHandle> {
    this.#check(name);
    const e = await this.#entry(name);
    if (e === null) {
      if (await this.#isDir(name)) throw notAFile(name, true);
      throw notFound(name);
    }
    if (e.type === "symlink") {
      throw new StorageError(
        "not-a-file",
        `${name} is a link on the server; links are never followed (download its target)`,
      );
    }
    return new S3Reader(this.client, name, e, await this.#infoOfEntry(name, e));
  }

  /** One level of folder `dir` ("" for the top): its files and links, and its subfolders. */
  async #level(dir: string): Promise<{ entries: ListedObject[]; dirs: string[] }> {
    const prefix = this.client.key(dir === "" ? "" : `${dir}/`);
    const entries: ListedObject[] = [];
    const dirs: string[] = [];
    for await (const page of this.client.list(prefix, "/")) {
      for (const o of page.objects) {
        const base = o.key.slice(prefix.length);
        if (base === "" || !validBase(base)) continue; // the folder's own marker, or foreign
        entries.push({ ...o, key: base });
      }
      for (const p of page.prefixes) {
        const base = p.slice(prefix.length, -1);
        if (validBase(base)) dirs.push(base);
      }
      if (entries.length + dirs.length > MAX_LIST_ENTRIES) throw tooMany();
    }
    return { entries, dirs };
  }

  /** FileInfo of a listed entry object, from the cache while its ETag and time are the same. */
  async #listedInfo(name: string, o: ListedObject): Promise<FileInfo | null> {
    const key = this.client.key(name);
    const tag = `${o.etag}/${o.lastModified}/${o.size}`;
    const hit = this.#infoCache.get(key);
    if (hit && hit.tag === tag) return { ...hit.info, name };
    const e = await this.#entry(name);
    if (e === null) return null; // vanished
    const info = await this.#infoOfEntry(name, e);
    if (this.#infoCache.size > 50_000) this.#infoCache.clear();
    this.#infoCache.set(key, { tag, info });
    return info;
  }

  /**
   * Walks folders from `top`, collecting what `decide` keeps (the local
   * backend's rules: `rel` is the path below the walk's start, `base` the
   * last component, `depth` 0 at the top).
   */
  async #walk(
    top: string,
    out: FileInfo[],
    decide: (rel: string, base: string, depth: number) => { keep: boolean; descend: boolean },
  ): Promise<void> {
    const stack: { dir: string; depth: number }[] = [{ dir: top, depth: 0 }];
    while (stack.length > 0) {
      const at = stack.pop()!;
      const { entries, dirs } = await this.#level(at.dir);
      // Names are always full client names (as on the local backend).
      const join = (b: string) => (at.dir ? `${at.dir}/${b}` : b);
      const rel = join;
      const keptFiles: ListedObject[] = [];
      for (const o of entries) {
        if (decide(rel(o.key), o.key, at.depth).keep) keptFiles.push(o);
      }
      const infos = await mapLimit(
        keptFiles,
        LIST_CONCURRENCY,
        (o) => this.#listedInfo(join(o.key), o),
      );
      for (const i of infos) if (i) push(out, i);
      const keptDirs: string[] = [];
      for (const d of dirs) {
        const { keep, descend } = decide(rel(d), d, at.depth);
        if (keep) keptDirs.push(d);
        if (descend) stack.push({ dir: join(d), depth: at.depth + 1 });
      }
      const dinfos = await mapLimit(keptDirs, LIST_CONCURRENCY, (d) => this.#dirInfo(join(d)));
      for (const i of dinfos) if (i) push(out, i);
    }
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
      await this.#walk("", out, (rel, base) => ({
        keep: g === null || g.test(onName ? base : rel),
        descend: true,
      }));
    } else {
      const segs = (pat ?? "*").split("/").map(compile);
      await this.#walk("", out, (_rel, base, depth) => {
        const matches = segs[depth].test(base);
        const last = depth === segs.length - 1;
        return { keep: last && matches, descend: !last && matches };
      });
    }
    return await sortByName(out);
  }

  async tree(name: string): Promise<FileInfo[]> {
    this.#check(name);
    if (await this.#entry(name)) {
      throw new StorageError("not-a-file", `${name} is not a folder on the server`);
    }
    if (!(await this.#dirInfo(name))) throw notFound(name);
    const out: FileInfo[] = [];
    await this.#walk(name, out, () => ({ keep: true, descend: true }));
    return await sortByName(out);
  }

  // ---- writing ------------------------------------------------------------

  /** Checks every folder on the way to `parts`' last component is not a file or link. */
  async #checkParents(name: string, parts: string[]): Promise<void> {
    for (let i = 0; i < parts.length - 1; i++) {
      const prefix = parts.slice(0, i + 1).join("/");
      if (this.#knownDirs.has(prefix)) continue;
      const e = await this.#entry(prefix);
      if (e) {
        throw new StorageError(
          "not-a-file",
          e.type === "symlink"
            ? `cannot create ${name}: ${prefix} is a link on the server, and links are never followed`
            : `cannot create ${name}: ${prefix} is not a folder on the server`,
        );
      }
    }
  }

  /** Makes the markers of the folders on the way to `parts`' last component. */
  async #makeParents(parts: string[]): Promise<void> {
    for (let i = 0; i < parts.length - 1; i++) {
      const prefix = parts.slice(0, i + 1).join("/");
      if (this.#knownDirs.has(prefix)) continue;
      await this.#putMarker(prefix, 0o755, Date.now(), false);
      this.#knownDirs.add(prefix);
    }
  }

  async #putMarker(name: string, mode: number, mtime: number, replace: boolean): Promise<void> {
    const res = await this.client.request("PUT", this.client.key(name) + "/", {
      headers: {
        [`${M}type`]: "dir",
        [`${M}mode`]: (mode & 0o777).toString(8),
        [`${M}mtime`]: String(Math.round(mtime)),
        ...(replace ? {} : { "If-None-Match": "*" }),
      },
      body: new Uint8Array(0),
      idempotent: true,
      ok: [412],
      what: name,
    });
    await res.body?.cancel();
  }

  /** Whether folder `name` exists (a marker or anything below it): one listing. */
  async #isDir(name: string): Promise<boolean> {
    for await (const page of this.client.list(this.client.key(name) + "/", undefined, 1)) {
      return page.objects.length > 0;
    }
    return false;
  }

  /** The target of a write: refused when a folder, or (without force) when it exists. */
  async #checkTarget(name: string, force: boolean): Promise<Entry | null> {
    if (await this.#isDir(name)) {
      throw new StorageError("not-a-file", `${name} is a folder on the server`);
    }
    const e = await this.#entry(name);
    if (e && !force) throw existsError(name);
    return e;
  }

  async checkWrite(name: string, opts: WriteOptions): Promise<void> {
    const parts = this.#check(name);
    await this.#checkParents(name, parts);
    await this.#checkTarget(name, opts.force);
  }

  async beginWrite(name: string, opts: WriteOptions): Promise<Upload> {
    const parts = this.#check(name);
    await this.#checkParents(name, parts);
    await this.#checkTarget(name, opts.force);
    await this.#makeParents(parts);
    const claim = opts.partial?.claim as S3Claim | undefined;
    const up = new S3Upload(this, name, opts.size);
    if (claim) await up.startResumable(claim, opts.partial!.offset);
    return up;
  }

  /**
   * Makes `name`'s entry point at what `put` writes: without `force` only if
   * absent (`If-None-Match: *`, decided by the store); with it by a
   * conditional replace on the current ETag, retried, after which the
   * replaced file's chunks are removed. `put` gets the condition headers.
   */
  async publish(
    name: string,
    force: boolean,
    put: (cond: Record<string, string>) => Promise<Response>,
    token: string,
  ): Promise<void> {
    const key = this.client.key(name);
    for (let attempt = 0; attempt < 8; attempt++) {
      const old = force ? await this.#entry(name) : null;
      const cond: Record<string, string> = old
        ? { "If-Match": old.etag }
        : { "If-None-Match": "*" };
      const res = await put(cond);
      await res.body?.cancel();
      if (res.status !== 412) {
        if (old?.data) await this.deleteChunks(old.data);
        this.#infoCache.delete(key);
        return;
      }
      // 412: someone else got there first (or our own earlier attempt did).
      const h = await this.client.head(key, name);
      if (h && h.get(`${M}id`) === token) return;
      if (!force) throw existsError(name);
    }
    throw new StorageError("busy", `${name} is being replaced by others; try again`);
  }

  async mkdir(name: string, opts: { mode?: number; mtime?: number } = {}): Promise<void> {
    const parts = this.#check(name);
    for (let i = 0; i < parts.length; i++) {
      const prefix = parts.slice(0, i + 1).join("/");
      const last = i === parts.length - 1;
      if (!last && this.#knownDirs.has(prefix)) continue;
      const e = await this.#entry(prefix);
      if (e) {
        throw new StorageError(
          "not-a-file",
          last
            ? e.type === "symlink"
              ? `${name} is a link on the server, and links are never followed`
              : `${name} exists on the server and is not a folder`
            : `cannot create ${name}: ${prefix} is not a folder on the server`,
        );
      }
      if (last && (opts.mode !== undefined || opts.mtime !== undefined)) {
        const cur = await this.#dirInfo(prefix);
        const mode = opts.mode !== undefined ? (opts.mode & 0o777) | 0o700 : cur?.mode ?? 0o755;
        const mtime = opts.mtime !== undefined && Number.isFinite(opts.mtime)
          ? opts.mtime
          : cur?.mtime || Date.now();
        await this.#putMarker(prefix, mode, mtime, true);
      } else {
        await this.#putMarker(prefix, 0o755, Date.now(), false);
      }
      this.#knownDirs.add(prefix);
    }
  }

  async symlink(
    name: string,
    target: string,
    opts: { force: boolean; mtime?: number },
  ): Promise<void> {
    const parts = this.#check(name);
    checkLinkTarget(name, target);
    await this.#checkParents(name, parts);
    await this.#checkTarget(name, opts.force);
    await this.#makeParents(parts);
    const body = utf8.encode(target);
    const token = crypto.randomUUID();
    await this.publish(
      name,
      opts.force,
      (cond) =>
        this.client.request("PUT", this.client.key(name), {
          headers: {
            [`${M}type`]: "link",
            [`${M}mode`]: "777",
            [`${M}mtime`]: String(Math.round(opts.mtime ?? Date.now())),
            [`${M}id`]: token,
            "Content-MD5": md5b64(body),
            ...cond,
          },
          body,
          idempotent: true,
          ok: [412],
          what: name,
        }),
      token,
    );
  }

  async remove(name: string, opts: { recursive?: boolean; dir?: boolean } = {}): Promise<void> {
    this.#check(name);
    const e = await this.#entry(name);
    if (e) {
      if (opts.dir) throw new StorageError("not-a-file", `${name} is not a folder`);
      await this.client.delete(this.client.key(name));
      this.#infoCache.delete(this.client.key(name));
      if (e.data) await this.deleteChunks(e.data);
      return;
    }
    if (!(await this.#dirInfo(name))) throw notFound(name);
    if (!opts.recursive && !opts.dir) {
      throw new StorageError(
        "not-a-file",
        `${name} is a folder (use rmdir for an empty folder, or rm -r)`,
      );
    }
    const marker = this.client.key(name) + "/";
    const below: ListedObject[] = [];
    for await (const page of this.client.list(marker)) {
      for (const o of page.objects) if (o.key !== marker) below.push(o);
      if (!opts.recursive && below.length > 0) {
        throw new StorageError("not-empty", `${name} is not empty (use rm -r)`);
      }
    }
    // Entries first (deepest last is not needed: folders are markers), the marker last.
    await mapLimit(below, LIST_CONCURRENCY, async (o) => {
      let data: string | null = null;
      if (o.size === 0 && !o.key.endsWith("/")) {
        const h = await this.client.head(o.key);
        data = h?.get(`${M}data`) ?? null;
      }
      await this.client.delete(o.key);
      this.#infoCache.delete(o.key);
      if (data) await this.deleteChunks(data);
    });
    await this.client.delete(marker);
    const prefix = `${name}/`;
    for (const d of [...this.#knownDirs]) {
      if (d === name || d.startsWith(prefix)) this.#knownDirs.delete(d);
    }
  }

  rename(from: string, to: string, opts: { force: boolean }): Promise<void> {
    const run = this.#renaming.then(() => this.#rename(from, to, opts));
    this.#renaming = run.then(() => {}, () => {});
    return run;
  }

  async #rename(from: string, to: string, opts: { force: boolean }): Promise<void> {
    this.#check(from);
    const toParts = this.#check(to);
    const src = await this.#entry(from);
    const srcDir = src ? null : await this.#dirInfo(from);
    if (!src && !srcDir) throw notFound(from);
    if (to === from) return;
    if (to.startsWith(`${from}/`)) {
      throw new StorageError("bad-name", `cannot move ${from} into itself`);
    }
    await this.#checkParents(to, toParts);
    const there = await this.#entry(to);
    const thereDir = there ? null : await this.#dirInfo(to);
    if (there || thereDir) {
      if (!opts.force) throw existsError(to);
      if (thereDir) throw new StorageError("not-a-file", `${to} is a folder on the server`);
      if (srcDir) {
        throw new StorageError(
          "not-a-file",
          `${to} is not a folder on the server: a folder cannot replace it`,
        );
      }
    }
    await this.#makeParents(toParts);
    if (src) {
      await this.#moveEntry(from, to, opts.force);
      return;
    }
    // A folder: every key below it, then its marker. Not one atomic step.
    const fromKey = this.client.key(from) + "/";
    const toKey = this.client.key(to) + "/";
    const keys: string[] = [];
    for await (const page of this.client.list(fromKey)) {
      for (const o of page.objects) keys.push(o.key);
    }
    await mapLimit(keys.filter((k) => k !== fromKey), LIST_CONCURRENCY, async (k) => {
      const rel = k.slice(fromKey.length);
      await this.#copyObject(k, toKey + rel, false, rel);
      await this.client.delete(k);
      this.#infoCache.delete(k);
    });
    if (keys.includes(fromKey)) {
      await this.#copyObject(fromKey, toKey, true, to);
      await this.client.delete(fromKey);
    } else {
      await this.#putMarker(to, srcDir!.mode, srcDir!.mtime, true);
    }
    const prefix = `${from}/`;
    for (const d of [...this.#knownDirs]) {
      if (d === from || d.startsWith(prefix)) this.#knownDirs.delete(d);
    }
  }

  /** Copies one small object (an entry or a marker) with its metadata. */
  async #copyObject(fromKey: string, toKey: string, replace: boolean, what: string) {
    const got = await this.client.getSmall(fromKey, this.chunkBytes + 1024, what);
    if (got === null) return; // vanished meanwhile
    const res = await this.client.request("PUT", toKey, {
      headers: { ...metaOf(got.headers), ...(replace ? {} : { "If-None-Match": "*" }) },
      body: got.body,
      idempotent: true,
      ok: [412],
      what,
    });
    await res.body?.cancel();
  }

  /** Moves a file or link entry (its chunks stay where they are). */
  async #moveEntry(from: string, to: string, force: boolean): Promise<void> {
    const fromKey = this.client.key(from);
    const got = await this.client.getSmall(fromKey, this.chunkBytes + 1024, from);
    if (got === null) throw notFound(from);
    const token = crypto.randomUUID();
    await this.publish(to, force, (cond) =>
      this.client.request("PUT", this.client.key(to), {
        headers: { ...metaOf(got.headers), [`${M}id`]: token, ...cond },
        body: got.body,
        idempotent: true,
        ok: [412],
        what: to,
      }), token);
    await this.client.delete(fromKey);
    this.#infoCache.delete(fromKey);
  }

  /** Removes every chunk of a chunk set. */
  async deleteChunks(data: string): Promise<void> {
    const keys: string[] = [];
    for await (const page of this.client.list(this.client.key(`${DATA}${data}/`))) {
      for (const o of page.objects) keys.push(o.key);
    }
    await mapLimit(keys, 8, (k) => this.client.delete(k));
  }

  /** The chunks of a chunk set, in order, as far as they are contiguous. */
  async listChunks(data: string): Promise<ListedObject[]> {
    const prefix = this.client.key(`${DATA}${data}/`);
    const all: ListedObject[] = [];
    for await (const page of this.client.list(prefix)) all.push(...page.objects);
    all.sort((a, b) => (a.key < b.key ? -1 : 1));
    const out: ListedObject[] = [];
    for (const o of all) {
      if (o.key !== this.client.key(chunkKey(data, out.length))) break;
      out.push(o);
    }
    return out;
  }

  // ---- partials -----------------------------------------------------------

  #recordKey(name: string, who: string): string {
    return this.client.key(
      `${PARTIALS}${sha256hex(`id\0${who}`)}/${sha256hex(`name\0${name}`)}`,
    );
  }

  async claimPartial(name: string, who: string, preempt: () => void): Promise<PartialClaim> {
    this.#check(name);
    const key = `${who}\0${name}`;
    const old = this.#held.get(key);
    if (old) {
      old.preempt();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([old.released, new Promise((r) => timer = setTimeout(r, 5_000))]);
      clearTimeout(timer);
    }
    if (this.#held.has(key)) {
      throw new StorageError("busy", `another resumable upload of ${name} is in progress`);
    }
    let release!: () => void;
    const held: Held = { preempt, released: new Promise((r) => release = r) };
    this.#held.set(key, held);
    const letGo = () => {
      if (this.#held.get(key) === held) this.#held.delete(key);
      release();
    };
    try {
      const recordKey = this.#recordKey(name, who);
      let rec = await this.#readRecord(recordKey);
      if (rec && await this.#inUse(rec.name ?? name, rec.data)) {
        // Published already (the node died before removing the record).
        await this.client.delete(recordKey);
        rec = null;
      }
      let chunks: ListedObject[] = [];
      let chunk = this.chunkBytes;
      if (rec) {
        chunk = rec.chunk;
        // Only whole chunks count (the last one of a finished upload may be short).
        chunks = await this.listChunks(rec.data);
        const short = chunks.findIndex((o) => o.size !== chunk);
        if (short >= 0) chunks = chunks.slice(0, short);
      }
      const claim: S3Claim = {
        recordKey,
        data: rec?.data ?? null,
        chunk,
        offset: chunks.length * chunk,
        prefixHash: null,
        checkPrefix: async (length: number, sha256: string) => {
          if (!rec || length !== claim.offset || length === 0) return false;
          try {
            const h = createHash("sha256");
            const reader = new S3Reader(this.client, name, {
              type: "file",
              size: length,
              mode: 0o600,
              mtime: 0,
              sha256: "",
              data: rec.data,
              chunk,
              etag: "",
            }, { name, size: length, mode: 0o600, mtime: 0, type: "file" });
            const buf = new Uint8Array(1 << 20);
            let done = 0;
            try {
              while (done < length) {
                const n = await reader.read(buf);
                if (n === null) break;
                h.update(buf.subarray(0, n));
                done += n;
              }
            } finally {
              reader.close();
            }
            if (done !== length) return false;
            if (h.copy().digest("hex") !== sha256) return false;
            claim.prefixHash = h;
            return true;
          } catch {
            return false;
          }
        },
        release: letGo,
      };
      return claim;
    } catch (err) {
      letGo();
      throw err;
    }
  }

  /**
   * Whether chunk set `data` is the published content of `name`: a record
   * left behind by a node that died right after publishing must never lead
   * to the file's chunks being removed.
   */
  async #inUse(name: string | null, data: string): Promise<boolean> {
    if (name === null) return true; // unknown owner: keep the chunks (safe side)
    const e = await this.#entry(name);
    return e?.data === data;
  }

  async #readRecord(
    key: string,
  ): Promise<{ data: string; chunk: number; name: string | null } | null> {
    const got = await this.client.getSmall(key, 4096, "a partial upload");
    if (got === null) return null;
    try {
      const r = JSON.parse(fromUtf8.decode(got.body));
      if (typeof r.data === "string" && /^[0-9a-f-]{36}$/.test(r.data) && r.chunk > 0) {
        return { data: r.data, chunk: r.chunk, name: typeof r.name === "string" ? r.name : null };
      }
    } catch { /* torn or foreign: treated as none */ }
    return null;
  }

  /** Writes the record of an upload's chunk set (a resumable one's, or a large one under way). */
  async writeRecord(key: string, data: string, name: string): Promise<void> {
    const res = await this.client.request("PUT", key, {
      body: utf8.encode(JSON.stringify({ data, chunk: this.chunkBytes, name })),
      idempotent: true,
      what: "a partial upload",
    });
    await res.body?.cancel();
  }

  uploadRecordKey(data: string): string {
    return this.client.key(`${UPLOADS}${data}`);
  }

  async dropPartial(name: string, who: string): Promise<void> {
    if (this.#held.has(`${who}\0${name}`)) return;
    const key = this.#recordKey(name, who);
    try {
      const rec = await this.#readRecord(key);
      if (!rec) return;
      await this.client.delete(key);
      if (!(await this.#inUse(rec.name ?? name, rec.data))) await this.deleteChunks(rec.data);
    } catch { /* best effort: the sweep gets it later */ }
  }

  /**
   * Not counted in S3 mode: partials live in the store as chunk objects and
   * summing them would cost a listing per upload. A client's interrupted
   * resumable uploads are bounded by --partial-ttl only (README, Several servers).
   */
  partialBytes(_who: string, _except?: string): Promise<number> {
    return Promise.resolve(0);
  }

  async sweepPartials(): Promise<number> {
    const now = Date.now();
    const held = new Set<string>();
    for (const k of this.#held.keys()) {
      const i = k.indexOf("\0");
      held.add(this.#recordKey(k.slice(i + 1), k.slice(0, i)));
    }
    let n = 0;
    try {
      for (const area of [PARTIALS, UPLOADS]) {
        const old: ListedObject[] = [];
        for await (const page of this.client.list(this.client.key(area))) {
          for (const o of page.objects) {
            if (now - o.lastModified > this.ttlMs && !held.has(o.key)) old.push(o);
          }
        }
        for (const o of old) {
          const rec = await this.#readRecord(o.key);
          if (rec) {
            const chunks = await this.listChunks(rec.data);
            const newest = Math.max(0, ...chunks.map((c) => c.lastModified));
            if (now - newest <= this.ttlMs) continue; // still being written
            if (!(await this.#inUse(rec.name, rec.data))) await this.deleteChunks(rec.data);
          }
          await this.client.delete(o.key);
          n++;
        }
      }
    } catch { /* the store is unreachable now: next time */ }
    return n;
  }

  sync(_keys: Iterable<string>): Promise<void> {
    return Promise.resolve(); // an acknowledged PUT is durable in the store
  }
}

/** The `x-amz-meta-*` headers of a response (to copy an object with its metadata). */
function metaOf(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of h) if (k.startsWith("x-amz-meta-")) out[k] = v;
  return out;
}

/** One upload in progress: buffered chunks, written create-only, published at commit. */
class S3Upload implements Upload {
  readonly key: string;
  #s: S3Storage;
  #name: string;
  #hash: Hash = createHash("sha256");
  #bytes = 0;
  #buf: Uint8Array | null = null;
  #fill = 0;
  /** The chunk set (null while everything fits in one inline object). */
  #data: string | null = null;
  #next = 0;
  #inflight: Promise<void>[] = [];
  #failed: unknown = null;
  #claim: S3Claim | null = null;
  #record: string | null = null;
  #done = false;

  constructor(s: S3Storage, name: string, _size: number) {
    this.#s = s;
    this.#name = name;
    this.key = s.client.key(name);
  }

  get bytesWritten(): number {
    return this.#bytes;
  }

  /** Continues (or restarts) a resumable upload on its chunk set in the store. */
  async startResumable(claim: S3Claim, offset: number): Promise<void> {
    this.#claim = claim;
    this.#record = claim.recordKey;
    if (offset > 0 && claim.data && claim.prefixHash && offset === claim.offset) {
      this.#data = claim.data;
      this.#hash = claim.prefixHash.copy();
      this.#bytes = offset;
      this.#next = offset / claim.chunk;
      // Chunks past the resumed prefix (a short last one, say) would block
      // the create-only writes of the ones that follow.
      const all = await this.#s.listChunks(claim.data);
      await mapLimit(all.slice(this.#next), 8, (o) => this.#s.client.delete(o.key));
      return;
    }
    if (claim.data) await this.#s.deleteChunks(claim.data).catch(() => {});
    this.#data = crypto.randomUUID();
    await this.#s.writeRecord(claim.recordKey, this.#data, this.#name);
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.#failed) throw this.#failed;
    const size = this.#s.chunkBytes;
    this.#hash.update(chunk);
    this.#bytes += chunk.length;
    let at = 0;
    while (at < chunk.length) {
      // A full buffer is sent only when more follows: a file of exactly one
      // chunk stays one inline object.
      if (this.#fill === size) await this.#flush();
      this.#buf ??= new Uint8Array(size);
      const n = Math.min(size - this.#fill, chunk.length - at);
      this.#buf.set(chunk.subarray(at, at + n), this.#fill);
      this.#fill += n;
      at += n;
    }
  }

  /** Sends the buffer as the next chunk (waits while too many are under way). */
  async #flush(): Promise<void> {
    if (this.#data === null) {
      this.#data = crypto.randomUUID();
      this.#record = this.#s.uploadRecordKey(this.#data);
      await this.#s.writeRecord(this.#record, this.#data, this.#name);
    }
    const body = this.#buf!.subarray(0, this.#fill);
    this.#buf = null;
    this.#fill = 0;
    const key = this.#s.client.key(chunkKey(this.#data, this.#next++));
    while (this.#inflight.length >= CHUNKS_IN_FLIGHT) await this.#inflight.shift();
    const p = this.#putChunk(key, body).catch((err) => {
      this.#failed ??= err;
    });
    this.#inflight.push(p);
    if (this.#failed) throw this.#failed;
  }

  async #putChunk(key: string, body: Uint8Array): Promise<void> {
    const md5 = createHash("md5").update(body);
    const res = await this.#s.client.request("PUT", key, {
      headers: {
        "Content-MD5": md5.copy().digest("base64"),
        "x-amz-content-sha256": UNSIGNED,
        "If-None-Match": "*",
      },
      body,
      idempotent: true,
      ok: [412],
      what: this.#name,
    });
    await res.body?.cancel();
    if (res.status === 412) {
      // Written already: by our own earlier attempt (same bytes), or by
      // another node still holding a dead connection's upload.
      const h = await this.#s.client.head(key, this.#name);
      if (unquote(h?.get("etag") ?? "") !== md5.digest("hex")) {
        throw new StorageError(
          "busy",
          `another upload of ${this.#name} wrote the same part; resume again`,
        );
      }
    }
  }

  async #settle(): Promise<void> {
    while (this.#inflight.length) await this.#inflight.shift();
    if (this.#failed) throw this.#failed;
  }

  async commit(req: CommitRequest): Promise<{ sha256: string; bytes: number }> {
    if (this.#done) throw new StorageError("io", `${this.#name}: upload already finished`);
    const s = this.#s;
    const name = this.#name;
    try {
      const chunked = this.#data !== null;
      if (chunked && this.#fill > 0) await this.#flush();
      await this.#settle();
      const sha256 = this.#hash.digest("hex");
      if (req.expectedSha256 !== sha256) {
        await this.#discard();
        throw new IntegrityError(
          `file hash mismatch: sent ${req.expectedSha256}, received ${sha256}`,
        );
      }
      const token = crypto.randomUUID();
      const meta: Record<string, string> = {
        [`${M}type`]: "file",
        [`${M}mode`]: (req.mode & 0o777).toString(8),
        [`${M}mtime`]: String(Math.round(req.mtime)),
        [`${M}sha256`]: sha256,
        [`${M}size`]: String(this.#bytes),
        [`${M}id`]: token,
      };
      let body: Uint8Array;
      if (chunked) {
        // Every chunk must be there, in order, with the sizes sent.
        const chunks = await s.listChunks(this.#data!);
        const total = chunks.reduce((a, c) => a + c.size, 0);
        if (total !== this.#bytes || chunks.length !== this.#next) {
          throw new StorageError("io", `${name}: parts of the upload are missing in the store`);
        }
        meta[`${M}data`] = this.#data!;
        meta[`${M}chunk`] = String(s.chunkBytes);
        body = new Uint8Array(0);
      } else {
        body = this.#buf ? this.#buf.subarray(0, this.#fill) : new Uint8Array(0);
      }
      const md5 = md5b64(body);
      await s.publish(name, req.force, (cond) =>
        s.client.request("PUT", this.key, {
          headers: { ...meta, "Content-MD5": md5, "x-amz-content-sha256": UNSIGNED, ...cond },
          body,
          idempotent: true,
          ok: [412],
          what: name,
        }), token);
      this.#done = true;
      this.#buf = null;
      if (this.#record) await s.client.delete(this.#record).catch(() => {});
      return { sha256, bytes: this.#bytes };
    } catch (err) {
      if (!this.#done && !this.#claim) await this.#discard();
      throw err;
    }
  }

  /** Removes this upload's chunks and record (nothing of it was published). */
  async #discard(): Promise<void> {
    this.#done = true;
    this.#buf = null;
    await Promise.allSettled(this.#inflight);
    if (this.#data) await this.#s.deleteChunks(this.#data).catch(() => {});
    if (this.#record) await this.#s.client.delete(this.#record).catch(() => {});
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    if (this.#claim) {
      // Resumable: the whole chunks written are the partial; the rest is lost.
      this.#done = true;
      if (this.#fill === this.#s.chunkBytes && !this.#failed) {
        await this.#flush().catch(() => {});
      }
      this.#buf = null;
      await Promise.allSettled(this.#inflight);
      return;
    }
    await this.#discard();
  }
}

/** Reads a file from its entry (inline) or its chunks, one GET at a time. */
class S3Reader implements ReadHandle {
  readonly info: FileInfo;
  #client: S3Client;
  #name: string;
  #e: Entry;
  #pos = 0;
  #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  #left: Uint8Array | null = null;
  /** Bytes the current GET still owes. */
  #owed = 0;
  /** The next chunk's GET, started while this one is read (large files only). */
  #ahead: { pos: number; res: Promise<Response | null> } | null = null;

  constructor(client: S3Client, name: string, e: Entry, info: FileInfo) {
    this.#client = client;
    this.#name = name;
    this.#e = e;
    this.info = info;
  }

  /** The GET of the bytes from `pos` to the end of their chunk (or of an inline file). */
  #get(pos: number): { res: Promise<Response>; length: number } {
    const e = this.#e;
    let key: string;
    let from: number;
    let end: number;
    const headers: Record<string, string> = {};
    if (e.data) {
      const i = Math.floor(pos / e.chunk);
      key = this.#client.key(chunkKey(e.data, i));
      from = pos - i * e.chunk;
      end = Math.min(e.chunk, e.size - i * e.chunk);
    } else {
      key = this.#client.key(this.#name);
      from = pos;
      end = e.size;
      if (e.etag) headers["If-Match"] = e.etag;
    }
    headers.Range = `bytes=${from}-${end - 1}`;
    const res = this.#client.request("GET", key, {
      headers,
      ok: [404, 412],
      what: this.#name,
    });
    return { res, length: end - from };
  }

  #dropAhead(): void {
    const a = this.#ahead;
    this.#ahead = null;
    a?.res.then((r) => r?.body?.cancel()).catch(() => {});
  }

  async #open(): Promise<void> {
    const e = this.#e;
    let res: Response | null = null;
    let length: number;
    if (this.#ahead && this.#ahead.pos === this.#pos) {
      const a = this.#ahead;
      this.#ahead = null;
      res = await a.res;
      length = Math.min(e.chunk, e.size - this.#pos);
    } else {
      this.#dropAhead();
      length = 0;
    }
    if (res === null) {
      const g = this.#get(this.#pos);
      res = await g.res;
      length = g.length;
    }
    if (e.data) {
      // Start the next chunk's GET now: the store sends it while this one is read.
      const next = (Math.floor(this.#pos / e.chunk) + 1) * e.chunk;
      if (next < e.size) {
        this.#ahead = { pos: next, res: this.#get(next).res.catch(() => null) };
      }
    }
    if (res.status === 404 || res.status === 412) {
      await res.body?.cancel();
      throw new StorageError(
        "io",
        `${this.#name} was replaced or removed on the server while being read; download it again`,
      );
    }
    this.#reader = res.body!.getReader();
    this.#owed = length;
  }

  async read(p: Uint8Array): Promise<number | null> {
    if (this.#pos >= this.#e.size) return null;
    while (true) {
      if (this.#left && this.#left.length > 0) {
        const n = Math.min(p.length, this.#left.length);
        p.set(this.#left.subarray(0, n));
        this.#left = this.#left.subarray(n);
        this.#pos += n;
        this.#owed -= n;
        return n;
      }
      if (this.#reader && this.#owed <= 0) {
        this.#reader.cancel().catch(() => {});
        this.#reader = null;
        if (this.#pos >= this.#e.size) return null;
      }
      if (!this.#reader) await this.#open();
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await this.#reader!.read();
      } catch {
        this.#reader = null;
        throw new StorageError("io", `${this.#name}: the object store stopped sending the file`);
      }
      if (r.done) {
        this.#reader = null;
        if (this.#owed > 0) {
          throw new StorageError("io", `${this.#name}: the object store sent a short file`);
        }
        continue;
      }
      this.#left = r.value.length > this.#owed ? r.value.subarray(0, this.#owed) : r.value;
    }
  }

  seek(offset: number): Promise<void> {
    this.close();
    this.#pos = offset;
    return Promise.resolve();
  }

  close(): void {
    this.#dropAhead();
    this.#reader?.cancel().catch(() => {});
    this.#reader = null;
    this.#left = null;
    this.#owed = 0;
  }
}

function validBase(base: string): boolean {
  if (base.startsWith(RESERVED_PREFIX) || base.includes("/")) return false;
  try {
    checkName(base);
    return true;
  } catch {
    return false;
  }
}

function push(out: FileInfo[], info: FileInfo): void {
  if (out.length >= MAX_LIST_ENTRIES) throw tooMany();
  out.push(info);
}

function tooMany(): StorageError {
  return new StorageError(
    "too-large",
    `more than ${MAX_LIST_ENTRIES} entries; list a folder or use a narrower pattern`,
  );
}
