/**
 * Partial uploads (`--resume`) of a local storage root.
 *
 * Layout: `<root>/.efx-staging/partials/<sha256(identity)>/<sha256(name)>.part`,
 * folders mode 0700. The staging folder's name is reserved (no client name
 * can start with `.efx-`) and the server never follows a link, so no client
 * can reach, list or name another's partials; the identity is the client
 * key's fingerprint ("" when anonymous).
 *
 * One claim at a time per identity and name. A claim whose connection died
 * without the server noticing yet is taken over by the next claim: the old
 * holder is told to stop (its connection is aborted, its partial kept) and
 * the new claim waits for it to let go, so a client cut off can resume at
 * once.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { hashPrefix } from "../resume.ts";
import { lstatOrNull, openChecked } from "../safe_fs.ts";
import { StorageError } from "./errors.ts";
import type { PartialClaim } from "./backend.ts";

/** How long a new claim waits for a taken-over one to let go. */
const TAKEOVER_WAIT_MS = 5_000;

interface Held {
  preempt: () => void;
  released: Promise<void>;
}

/** A claim on one partial file. */
export interface LocalClaim extends PartialClaim {
  /** Path of the partial file (may not exist yet). */
  readonly path: string;
  /** Makes the partial's folders (before the partial is first written). */
  prepare(): void;
}

/**
 * Makes `dir` (mode 0700) when missing and checks it is a plain folder: the
 * staging area is made only when first needed, so a fresh root stays empty.
 */
export function ensurePrivateFolder(dir: string): void {
  try {
    Deno.mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
  }
  const st = Deno.lstatSync(dir);
  if (st.isSymlink || !st.isDirectory) {
    throw new StorageError("io", "the server's staging folder is not a plain folder");
  }
}

function identityFolder(who: string): string {
  return createHash("sha256").update(`id\0${who}`).digest("hex");
}

/**
 * Where the partial of `name` for identity `who` lives, relative to the
 * staging folder's `partials/`: `<sha256("id" NUL who)>/<sha256("name" NUL name)>.part`.
 */
export function partialRelPath(name: string, who: string): string {
  const file = createHash("sha256").update(`name\0${name}`).digest("hex");
  return join(identityFolder(who), `${file}.part`);
}

/** The partial uploads under one staging folder. */
export class LocalPartials {
  readonly dir: string;
  readonly ttlMs: number;
  #held = new Map<string, Held>();

  #staging: string;

  constructor(stagingDir: string, ttlMs: number) {
    this.#staging = stagingDir;
    this.dir = join(stagingDir, "partials");
    this.ttlMs = ttlMs;
  }

  #folderOf(who: string): string {
    return join(this.dir, identityFolder(who));
  }

  /** Path of the partial of `name` for `who`. */
  pathOf(name: string, who: string): string {
    return join(this.dir, partialRelPath(name, who));
  }

  async claim(name: string, who: string, preempt: () => void): Promise<LocalClaim> {
    const key = `${who}\0${name}`;
    const old = this.#held.get(key);
    if (old) {
      old.preempt();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        old.released,
        new Promise((r) => timer = setTimeout(r, TAKEOVER_WAIT_MS)),
      ]);
      clearTimeout(timer);
      if (this.#held.get(key) === old) {
        throw new StorageError("busy", `another resumable upload of ${name} is in progress`);
      }
    }
    if (this.#held.has(key)) {
      throw new StorageError("busy", `another resumable upload of ${name} is in progress`);
    }
    let release!: () => void;
    const held: Held = { preempt, released: new Promise((r) => release = r) };
    this.#held.set(key, held);
    const let_go = () => {
      if (this.#held.get(key) === held) this.#held.delete(key);
      release();
    };
    try {
      const path = this.pathOf(name, who);
      const st = lstatOrNull(path);
      const offset = st?.isFile ? st.size : 0;
      if (st && !st.isFile) Deno.removeSync(path, { recursive: false });
      return {
        path,
        offset,
        checkPrefix: async (length: number, sha256: string) => {
          try {
            const { file } = openChecked(path, { read: true });
            try {
              return (await hashPrefix(file, length)).digest("hex") === sha256;
            } finally {
              file.close();
            }
          } catch {
            return false;
          }
        },
        release: let_go,
        prepare: () => {
          for (const d of [this.#staging, this.dir, this.#folderOf(who)]) ensurePrivateFolder(d);
        },
      };
    } catch (err) {
      let_go();
      throw err;
    }
  }

  /** Bytes of `who`'s partials on disk, but for the one of `except` (counted against quotas). */
  bytesOf(who: string, except?: string): number {
    const skip = except === undefined ? "" : this.pathOf(except, who);
    const dir = this.#folderOf(who);
    let n = 0;
    try {
      for (const e of Deno.readDirSync(dir)) {
        const p = join(dir, e.name);
        if (!e.isFile || p === skip) continue;
        n += lstatOrNull(p)?.size ?? 0;
      }
    } catch { /* none */ }
    return n;
  }

  /** Removes the partial of `name` for `who`, unless a claim holds it. */
  drop(name: string, who: string): void {
    if (this.#held.has(`${who}\0${name}`)) return;
    try {
      Deno.removeSync(this.pathOf(name, who));
    } catch { /* none: the common case */ }
  }

  /** Removes partials untouched for longer than the TTL (not held ones); returns how many. */
  async sweep(now = Date.now()): Promise<number> {
    const heldPaths = new Set<string>();
    for (const key of this.#held.keys()) {
      const i = key.indexOf("\0");
      heldPaths.add(this.pathOf(key.slice(i + 1), key.slice(0, i)));
    }
    let n = 0;
    const folders: string[] = [];
    try {
      for await (const e of Deno.readDir(this.dir)) {
        if (e.isDirectory && !e.isSymlink) folders.push(join(this.dir, e.name));
      }
    } catch {
      return 0; // no staging folder yet
    }
    for (const folder of folders) {
      try {
        for await (const e of Deno.readDir(folder)) {
          const p = join(folder, e.name);
          if (!e.isFile || !e.name.endsWith(".part") || heldPaths.has(p)) continue;
          const st = lstatOrNull(p);
          if (st?.isFile && now - (st.mtime?.getTime() ?? 0) > this.ttlMs) {
            Deno.removeSync(p);
            n++;
          }
        }
      } catch { /* raced or unreadable: next time */ }
    }
    return n;
  }
}
