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
 * continues only if its file has the same prefix.
 *
 * In both directions the whole-file SHA-256 in the trailer still decides the
 * commit: a prefix check can only save time, never let a wrong byte through.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { basename, dirname, join } from "node:path";

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
