/**
 * Whole folders: `efx upload -r DIR` and `efx download -r DIR`.
 *
 * A tree moves as its parts: folders first (made, then given their mode and
 * mtime last, deepest first, since adding files changes a folder's mtime),
 * every file through the normal atomic, hash-checked transfer, and symlinks
 * kept as links. A link is only carried when its target is relative and
 * stays inside the tree; others are skipped with a notice. On download the
 * client checks every name and link the server sends the same way, so a
 * hostile server cannot make the client write outside the target folder.
 *
 * @module
 */
import { basename, dirname, join, normalize, relative } from "node:path";
import type { EfxClient } from "./client.ts";
import { EfxError, ProtocolError } from "./errors.ts";

/** What a tree transfer did. */
export interface TreeSummary {
  files: number;
  folders: number;
  links: number;
  bytes: number;
  skipped: number;
}

/** Moves one file; returns its size. */
export type FileMover = (from: string, to: string) => Promise<number>;

/** True when link `target`, found at relative path `at` inside a tree, stays inside that tree. */
export function linkStaysInside(at: string, target: string): boolean {
  if (target === "" || target.startsWith("/") || target.includes("\\") || target.includes("\0")) {
    return false;
  }
  const resolved = normalize(join(dirname(at), target));
  return resolved !== ".." && !resolved.startsWith("../") && !resolved.startsWith("/");
}

/** Uploads folder `localDir` as remote folder `remoteBase`. */
export async function uploadTree(
  client: EfxClient,
  localDir: string,
  remoteBase: string,
  opts: { force: boolean; moveFile: FileMover; notice: (text: string) => void },
): Promise<TreeSummary> {
  const sum: TreeSummary = { files: 0, folders: 0, links: 0, bytes: 0, skipped: 0 };
  const top = await Deno.lstat(localDir).catch(() => null);
  if (!top?.isDirectory) throw new EfxError(`cannot upload ${localDir}: not a folder`);
  const dirs: { remote: string; mode: number; mtime?: number }[] = [];
  const walk = async (local: string, remote: string, rel: string, st: Deno.FileInfo) => {
    await client.mkdir(remote);
    sum.folders++;
    dirs.push({ remote, mode: (st.mode ?? 0o755) & 0o777, mtime: st.mtime?.getTime() });
    const entries: Deno.DirEntry[] = [];
    for await (const e of Deno.readDir(local)) entries.push(e);
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const l = join(local, e.name);
      const r = `${remote}/${e.name}`;
      const relE = rel ? `${rel}/${e.name}` : e.name;
      if (e.isSymlink) {
        const target = await Deno.readLink(l);
        if (!linkStaysInside(relE, target)) {
          opts.notice(`skipping symbolic link ${l} -> ${target}: it leads outside ${localDir}`);
          sum.skipped++;
          continue;
        }
        await client.symlink(r, target, opts.force);
        sum.links++;
      } else if (e.isDirectory) {
        await walk(l, r, relE, await Deno.lstat(l));
      } else if (e.isFile) {
        sum.bytes += await opts.moveFile(l, r);
        sum.files++;
      } else {
        opts.notice(`skipping ${l}: not a regular file, folder or link`);
        sum.skipped++;
      }
    }
  };
  await walk(localDir, remoteBase, "", top);
  for (const d of dirs.reverse()) await client.mkdir(d.remote, d.mode, d.mtime);
  return sum;
}

/** Downloads remote folder `remoteDir` into local folder `localDir`. */
export async function downloadTree(
  client: EfxClient,
  remoteDir: string,
  localDir: string,
  opts: { force: boolean; moveFile: FileMover; notice: (text: string) => void },
): Promise<TreeSummary> {
  const sum: TreeSummary = { files: 0, folders: 1, links: 0, bytes: 0, skipped: 0 };
  const base = remoteDir.replace(/\/+$/, "");
  const entries = await client.tree(base);
  await Deno.mkdir(localDir, { recursive: true });
  const realTop = await Deno.realPath(localDir);
  const dirs: { path: string; mode: number; mtime: number }[] = [];
  const links: { local: string; target: string }[] = [];
  const top = (await client.list(base)).find((e) => e.name === base && e.type === "dir");
  if (top) dirs.push({ path: localDir, mode: top.mode, mtime: top.mtime });
  for (const e of entries) {
    if (typeof e.name !== "string" || !e.name.startsWith(base + "/")) {
      throw new ProtocolError(`server listed ${JSON.stringify(e.name)} outside ${base}`);
    }
    const rel = e.name.slice(base.length + 1);
    const parts = rel.split("/");
    if (parts.some((p) => p === "" || p === "." || p === ".." || p.includes("\\"))) {
      throw new ProtocolError(`server sent an unsafe name ${JSON.stringify(e.name)}`);
    }
    const local = join(localDir, ...parts);
    // Never write through a local link that leads out of the target folder.
    const parentReal = await Deno.realPath(dirname(local)).catch(() => null);
    if (parentReal === null || relative(realTop, parentReal).startsWith("..")) {
      throw new EfxError(`refusing to write ${local}: it would land outside ${localDir}`);
    }
    if (e.type === "dir") {
      await Deno.mkdir(local, { recursive: true });
      dirs.push({ path: local, mode: e.mode, mtime: e.mtime });
      sum.folders++;
    } else if (e.type === "file") {
      sum.bytes += await opts.moveFile(e.name, local);
      sum.files++;
    } else if (
      e.type === "symlink" && typeof e.target === "string" && linkStaysInside(rel, e.target)
    ) {
      links.push({ local, target: e.target }); // made last, once every folder exists
    } else {
      opts.notice(`skipping ${e.name}: a link that leads outside the folder`);
      sum.skipped++;
    }
  }
  for (const l of links) {
    const existing = await Deno.lstat(l.local).catch(() => null);
    if (existing && !opts.force) {
      throw new EfxError(`${l.local} already exists (use --force to overwrite)`);
    }
    if (existing) await Deno.remove(l.local);
    await Deno.symlink(l.target, l.local);
    sum.links++;
  }
  // Each link's text stayed inside, but links can combine (`a -> ..`, then
  // `b -> a/..`): now that the tree is complete, resolve every new link and
  // remove any that leads out of the folder.
  for (const l of links) {
    const real = await Deno.realPath(l.local).catch(() => null);
    if (real !== null && relative(realTop, real).startsWith("..")) {
      await Deno.remove(l.local);
      sum.links--;
      sum.skipped++;
      opts.notice(
        `removed link ${l.local} -> ${l.target}: through other links it leads outside ${localDir}`,
      );
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
