/**
 * Whole folders: `efx upload -r DIR` and `efx download -r DIR`.
 *
 * A tree moves as its parts: folders first (made, then given their mode and
 * mtime last, deepest first, since adding files changes a folder's mtime),
 * every file through the normal atomic, hash-checked transfer, and symlinks
 * kept as links, with their mtimes.
 *
 * Links. The server stores a link as data (any target, never followed), so
 * `upload -r` sends every link as it is: relative, absolute or dangling. On
 * download the client judges where a link leads: the link itself is always
 * created inside the target folder (its name is checked like every name);
 * a link whose target is absolute or leads (lexically, or once the tree is
 * complete through other links) outside the tree is skipped with a notice,
 * unless `keepLinks` (`--keep-links`), which recreates such a link exactly
 * as it was stored. efx never writes through any link. A link's mtime is
 * set without following it (`lutimes`).
 *
 * Re-runs. With `update`, a file whose size and mtime already match on the
 * other side is left alone (and one that differs is replaced: an implied
 * `--force` for that file); with `checksum`, the SHA-256 decides instead
 * (see {@linkcode EfxClient.sameRemoteFile}: the protocol has no "hash of a
 * file" request, so a same-size file is compared by asking the server to
 * resume a download after the whole local file; a download of a changed
 * file goes on as the real download, an upload reads the server's copy
 * once and drops it). `dryRun` lists what would move and moves nothing.
 * `exclude` patterns (`*`, `?`; with a "/" matched against the path
 * relative to the tree's top, without against each base name) leave
 * entries, and whole folders, out. A refusal by the server for one entry
 * (e.g. a folder where a file would go) is shown and counted, and the rest
 * goes on; missing rights stop the transfer at once (one line).
 *
 * @module
 */
import { basename, dirname, join, normalize, relative } from "node:path";
import { lutimes } from "node:fs/promises";
import { createHash } from "node:crypto";
import type { EfxClient } from "./client.ts";
import { EfxError, ProtocolError, RemoteError } from "./errors.ts";
import type { FileInfo } from "./messages.ts";
import { compileGlob } from "./storage/glob.ts";

/** What a tree transfer did (or, with `dryRun`, would do). */
export interface TreeSummary {
  files: number;
  folders: number;
  links: number;
  bytes: number;
  /** Links left out (leading outside), special files. */
  skipped: number;
  /** Files and links that already matched (`update`, `checksum`). */
  unchanged: number;
  /** Entries matching an `exclude` pattern. */
  excluded: number;
  /** Entries the server refused. */
  refused: number;
}

/** Moves one file; returns its size, or null when it was unchanged (not moved). */
export type FileMover = (
  from: string,
  to: string,
  how: { force: boolean; unlessSame?: { size: number; sha256: string } },
) => Promise<number | null>;

/** Options of a tree transfer. */
export interface TreeOptions {
  force: boolean;
  moveFile: FileMover;
  notice: (text: string) => void;
  /** Skip files whose size and mtime match. */
  update?: boolean;
  /** Skip files whose SHA-256 matches (implies update). */
  checksum?: boolean;
  /** Say what would move; move nothing. */
  dryRun?: boolean;
  /** Glob patterns of relative paths (or base names) to leave out. */
  exclude?: string[];
  /** (download) Recreate links that lead outside the tree as they are. */
  keepLinks?: boolean;
  /** Where `dryRun` lines go. */
  out?: (line: string) => void;
}

function emptySummary(): TreeSummary {
  return {
    files: 0,
    folders: 0,
    links: 0,
    bytes: 0,
    skipped: 0,
    unchanged: 0,
    excluded: 0,
    refused: 0,
  };
}

/** True when link `target`, found at relative path `at` inside a tree, stays inside that tree. */
export function linkStaysInside(at: string, target: string): boolean {
  if (target === "" || target.startsWith("/") || target.includes("\\") || target.includes("\0")) {
    return false;
  }
  const resolved = normalize(join(dirname(at), target));
  return resolved !== ".." && !resolved.startsWith("../") && !resolved.startsWith("/");
}

/**
 * A test for `--exclude` patterns: a pattern with "/" is matched against the
 * whole relative path, one without against the base name (at any depth).
 */
export function excluder(patterns: string[] = []): (rel: string) => boolean {
  const tests = patterns.map((p) => {
    const g = compileGlob(p.replace(/^\.\//, "").replace(/\/+$/, ""));
    const whole = p.includes("/") && !/^[^/]*\/$/.test(p);
    return (rel: string) => g.test(whole ? rel : rel.slice(rel.lastIndexOf("/") + 1));
  });
  return (rel) => tests.some((t) => t(rel));
}

/** A refusal that concerns one entry only: shown, counted, and the transfer goes on. */
function entryRefusal(client: EfxClient, err: unknown): boolean {
  return err instanceof RemoteError && err.code !== "permission" && !client.channel.broken;
}

/** Hex SHA-256 of a local file. */
export async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path, { read: true });
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

/** The remote tree below `name`, by name; empty when `name` does not exist. */
async function remoteIndex(client: EfxClient, name: string): Promise<Map<string, FileInfo>> {
  try {
    return new Map((await client.tree(name)).map((e) => [e.name, e]));
  } catch (err) {
    if (err instanceof RemoteError && err.code === "not-found") return new Map();
    throw err;
  }
}

/** Uploads folder `localDir` as remote folder `remoteBase`. */
export async function uploadTree(
  client: EfxClient,
  localDir: string,
  remoteBase: string,
  opts: TreeOptions,
): Promise<TreeSummary> {
  const sum = emptySummary();
  const top = await Deno.lstat(localDir).catch(() => null);
  if (!top?.isDirectory) throw new EfxError(`cannot upload ${localDir}: not a folder`);
  const compare = opts.update || opts.checksum;
  const there = compare ? await remoteIndex(client, remoteBase) : new Map<string, FileInfo>();
  const excluded = excluder(opts.exclude);
  const say = opts.out ?? (() => {});
  const dirs: { remote: string; mode: number; mtime?: number }[] = [];
  const attempt = async (step: () => Promise<void>) => {
    try {
      await step();
    } catch (err) {
      if (!entryRefusal(client, err)) throw err;
      opts.notice((err as Error).message);
      sum.refused++;
    }
  };
  const walk = async (local: string, remote: string, rel: string, st: Deno.FileInfo) => {
    if (!opts.dryRun) await client.mkdir(remote);
    sum.folders++;
    dirs.push({ remote, mode: (st.mode ?? 0o755) & 0o777, mtime: st.mtime?.getTime() });
    const entries: Deno.DirEntry[] = [];
    for await (const e of Deno.readDir(local)) entries.push(e);
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const l = join(local, e.name);
      const r = `${remote}/${e.name}`;
      const relE = rel ? `${rel}/${e.name}` : e.name;
      if (excluded(relE)) {
        sum.excluded++;
        continue;
      }
      const old = there.get(r);
      if (e.isSymlink) {
        // Links are data on the server: every target goes as it is.
        const target = await Deno.readLink(l);
        const mtime = (await Deno.lstat(l)).mtime?.getTime();
        if (compare && old?.type === "symlink" && old.target === target) {
          sum.unchanged++;
          continue;
        }
        if (opts.dryRun) {
          say(`would link ${r} -> ${target}`);
          sum.links++;
          continue;
        }
        await attempt(async () => {
          await client.symlink(
            r,
            target,
            opts.force || (compare === true && old !== undefined),
            mtime,
          );
          sum.links++;
        });
      } else if (e.isDirectory) {
        await walk(l, r, relE, await Deno.lstat(l));
      } else if (e.isFile) {
        const lst = await Deno.stat(l);
        let same = false;
        if (compare && old?.type === "file" && old.size === lst.size) {
          same = opts.checksum
            ? await client.sameRemoteFile(r, lst.size, await sha256OfFile(l))
            : old.mtime === lst.mtime?.getTime();
        }
        if (same) {
          sum.unchanged++;
          continue;
        }
        if (opts.dryRun) {
          say(`would upload ${l} as ${r} (${lst.size} bytes)`);
          sum.files++;
          sum.bytes += lst.size;
          continue;
        }
        await attempt(async () => {
          const force = opts.force || (compare === true && old !== undefined);
          sum.bytes += (await opts.moveFile(l, r, { force })) ?? 0;
          sum.files++;
        });
      } else {
        opts.notice(`skipping ${l}: not a regular file, folder or link`);
        sum.skipped++;
      }
    }
  };
  await walk(localDir, remoteBase, "", top);
  if (!opts.dryRun) {
    for (const d of dirs.reverse()) await client.mkdir(d.remote, d.mode, d.mtime);
  }
  return sum;
}

/** Downloads remote folder `remoteDir` into local folder `localDir`. */
export async function downloadTree(
  client: EfxClient,
  remoteDir: string,
  localDir: string,
  opts: TreeOptions,
): Promise<TreeSummary> {
  const sum = emptySummary();
  sum.folders = 1;
  const base = remoteDir.replace(/\/+$/, "");
  const entries = await client.tree(base);
  const compare = opts.update || opts.checksum;
  const excluded = excluder(opts.exclude);
  const say = opts.out ?? (() => {});
  const exists = await Deno.lstat(localDir).then(() => true, () => false);
  if (!opts.dryRun) await Deno.mkdir(localDir, { recursive: true });
  const realTop = exists || !opts.dryRun ? await Deno.realPath(localDir) : null;
  const dirs: { path: string; mode: number; mtime: number }[] = [];
  const links: { local: string; target: string; mtime: number; inside: boolean }[] = [];
  const top = (await client.list(base)).find((e) => e.name === base && e.type === "dir");
  if (top) dirs.push({ path: localDir, mode: top.mode, mtime: top.mtime });
  const skippedDirs: string[] = [];
  for (const e of entries) {
    if (typeof e.name !== "string" || !e.name.startsWith(base + "/")) {
      throw new ProtocolError(`server listed ${JSON.stringify(e.name)} outside ${base}`);
    }
    const rel = e.name.slice(base.length + 1);
    const parts = rel.split("/");
    if (parts.some((p) => p === "" || p === "." || p === ".." || p.includes("\\"))) {
      throw new ProtocolError(`server sent an unsafe name ${JSON.stringify(e.name)}`);
    }
    if (skippedDirs.some((d) => rel.startsWith(d + "/"))) continue;
    if (excluded(rel)) {
      sum.excluded++;
      if (e.type === "dir") skippedDirs.push(rel);
      continue;
    }
    const local = join(localDir, ...parts);
    // Never write through a local link that leads out of the target folder.
    const parentReal = await Deno.realPath(dirname(local)).catch(() => null);
    if (realTop !== null && !(opts.dryRun && parentReal === null)) {
      if (parentReal === null || relative(realTop, parentReal).startsWith("..")) {
        throw new EfxError(`refusing to write ${local}: it would land outside ${localDir}`);
      }
    }
    if (e.type === "dir") {
      if (!opts.dryRun) await Deno.mkdir(local, { recursive: true });
      dirs.push({ path: local, mode: e.mode, mtime: e.mtime });
      sum.folders++;
    } else if (e.type === "file") {
      const have = compare ? await Deno.lstat(local).catch(() => null) : null;
      let unlessSame: { size: number; sha256: string } | undefined;
      if (have?.isFile && have.size === e.size) {
        if (!opts.checksum && have.mtime?.getTime() === e.mtime) {
          sum.unchanged++;
          continue;
        }
        if (opts.checksum) {
          unlessSame = { size: e.size, sha256: await sha256OfFile(local) };
          if (
            e.size === 0 ||
            (opts.dryRun && await client.sameRemoteFile(e.name, e.size, unlessSame.sha256))
          ) {
            sum.unchanged++;
            continue;
          }
        }
      }
      if (opts.dryRun) {
        say(`would download ${e.name} to ${local} (${e.size} bytes)`);
        sum.files++;
        sum.bytes += e.size;
        continue;
      }
      const moved = await opts.moveFile(e.name, local, {
        force: opts.force || (compare === true && have !== null),
        unlessSame,
      });
      if (moved === null) sum.unchanged++;
      else {
        sum.bytes += moved;
        sum.files++;
      }
    } else if (e.type === "symlink" && typeof e.target === "string" && e.target !== "") {
      const inside = linkStaysInside(rel, e.target);
      if (!inside && !opts.keepLinks) {
        opts.notice(
          `skipping ${e.name}: a link that leads outside the folder (-> ${e.target}; ` +
            `--keep-links keeps it)`,
        );
        sum.skipped++;
        continue;
      }
      links.push({ local, target: e.target, mtime: e.mtime, inside }); // made last
    } else {
      opts.notice(`skipping ${e.name}: a link that leads outside the folder (no target)`);
      sum.skipped++;
    }
  }
  const made: typeof links = [];
  for (const l of links) {
    const existing = await Deno.lstat(l.local).catch(() => null);
    if (existing?.isSymlink && compare && await Deno.readLink(l.local) === l.target) {
      sum.unchanged++;
      continue;
    }
    if (opts.dryRun) {
      say(`would link ${l.local} -> ${l.target}`);
      sum.links++;
      continue;
    }
    if (existing && !opts.force && !compare) {
      throw new EfxError(`${l.local} already exists (use --force to overwrite)`);
    }
    if (existing?.isDirectory) {
      throw new EfxError(`cannot make link ${l.local}: a folder is in the way`);
    }
    if (existing) await Deno.remove(l.local);
    await Deno.symlink(l.target, l.local);
    made.push(l);
    sum.links++;
  }
  // Each link's text stayed inside, but links can combine (`a -> ..`, then
  // `b -> a/..`): now that the tree is complete, resolve every new link and
  // remove any that leads out of the folder (unless links are kept as-is).
  for (const l of made) {
    if (opts.keepLinks) break;
    const real = await Deno.realPath(l.local).catch(() => null);
    if (real !== null && realTop !== null && relative(realTop, real).startsWith("..")) {
      await Deno.remove(l.local);
      sum.links--;
      sum.skipped++;
      opts.notice(
        `removed link ${l.local} -> ${l.target}: through other links it leads outside ${localDir}`,
      );
    }
  }
  if (opts.dryRun) return sum;
  for (const l of made) {
    const t = new Date(l.mtime);
    // Deno.utime follows links; lutimes sets the link's own time.
    if (await Deno.lstat(l.local).then((s) => s.isSymlink, () => false)) {
      await lutimes(l.local, t, t).catch(() => {});
    }
  }
  for (const d of dirs.reverse()) {
    await Deno.chmod(d.path, d.mode & 0o777);
    await Deno.utime(d.path, new Date(), new Date(d.mtime));
  }
  return sum;
}

/** The default remote name of an uploaded folder: its base name. */
export function folderName(path: string): string {
  return basename(normalize(path).replace(/\/+$/, "")) || "folder";
}
