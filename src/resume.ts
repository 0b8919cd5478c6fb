/**
 * Resumable transfers: where partial files live and how a prefix is checked.
 *
 * Server: a resumable upload (`put` with `resume: true`) writes through
 * `<root>/.efx-tmp-partial/<sha256(name)>.part` (the `.efx-tmp-` prefix makes
 * the folder reserved and invisible to clients). When the connection is cut
 * the partial stays; a later resumable upload of the same name is offered
 * its length and the SHA-256 of that prefix, and goes on from there only if
 * the client's own file has the same prefix. Partials untouched for longer
 * than the TTL are removed.
 *
 * Client: a resumable download writes through `.<name>.efx-partial` beside
 * the target; the client sends its length and prefix SHA-256, and the server
 * continues only if its file has the same prefix.
 *
 * In both directions the whole-file SHA-256 in the trailer still decides the
 * commit: a prefix check can only save time, never let a wrong byte through.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { basename, dirname, join } from "node:path";
import { TEMP_PREFIX } from "./atomic_file.ts";
import { RemoteError } from "./errors.ts";

/** Folder (inside the storage root) of partial uploads. */
export const STAGING_DIR = `${TEMP_PREFIX}partial`;

/** SHA-256 state over the first `length` bytes of an open file (read from the start). */
export async function hashPrefix(file: Deno.FsFile, length: number): Promise<Hash> {
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

/** The server's partial uploads. */
export class PartialUploads {
  readonly dir: string;
  readonly ttlMs: number;
  #busy = new Set<string>();

  constructor(root: string, ttlMs: number) {
    this.dir = join(root, STAGING_DIR);
    this.ttlMs = ttlMs;
  }

  /** Path of the partial of `name`. */
  async pathOf(name: string): Promise<string> {
    const key = createHash("sha256").update(name).digest("hex");
    await Deno.mkdir(this.dir, { recursive: true, mode: 0o700 });
    return join(this.dir, `${key}.part`);
  }

  /**
   * Claims `name` for one resumable upload at a time and returns what can be
   * offered: the partial's length (at most `size`) and its prefix SHA-256.
   * Call {@linkcode release} when the upload ends, however it ends.
   */
  async claim(
    name: string,
    size: number,
  ): Promise<{ path: string; offset: number; sha256: string }> {
    if (this.#busy.has(name)) {
      throw new RemoteError("busy", `another resumable upload of ${name} is in progress`);
    }
    this.#busy.add(name);
    try {
      const path = await this.pathOf(name);
      let have = 0;
      try {
        have = Math.min((await Deno.stat(path)).size, size);
      } catch { /* no partial */ }
      const sha256 = have > 0 ? await prefixSha256(path, have) : "";
      return { path, offset: have, sha256 };
    } catch (err) {
      this.#busy.delete(name);
      throw err;
    }
  }

  /** Ends a claim. */
  release(name: string): void {
    this.#busy.delete(name);
  }

  /** Removes the partial of `name` (after a completed upload of that name). */
  drop(name: string): void {
    if (this.#busy.has(name)) return;
    const key = createHash("sha256").update(name).digest("hex");
    try {
      Deno.removeSync(join(this.dir, `${key}.part`));
    } catch { /* none: the common case, one cheap failed unlink */ }
  }

  /** Removes partials untouched for longer than the TTL; returns how many. */
  async sweep(now = Date.now()): Promise<number> {
    let n = 0;
    try {
      for await (const e of Deno.readDir(this.dir)) {
        if (!e.isFile || !e.name.endsWith(".part")) continue;
        const p = join(this.dir, e.name);
        try {
          const st = await Deno.stat(p);
          if (now - (st.mtime?.getTime() ?? 0) > this.ttlMs) {
            await Deno.remove(p);
            n++;
          }
        } catch { /* raced with an upload or already gone */ }
      }
    } catch { /* no staging folder yet */ }
    return n;
  }
}

/** Where a resumable download of `target` keeps its partial data. */
export function localPartialPath(target: string): string {
  return join(dirname(target), `.${basename(target)}.efx-partial`);
}
