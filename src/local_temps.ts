/**
 * Removing the temp files (`.efx-tmp-*`) that a killed client left in a
 * local folder, whatever their age, as soon as their owner is gone.
 *
 * Every live writer holds an exclusive lock (flock) on its temp file from
 * right after creating it until the file has its final name (see
 * atomic_file.ts). A temp whose lock can be taken therefore belongs to
 * nobody, with one exception: the instant between a writer's create and its
 * lock (two back-to-back system calls). A temp that is unlocked and older
 * than {@linkcode SURE_AGE_MS} is removed at once; a younger one is looked at
 * again {@linkcode RECHECK_MS} later, and removed only when it is still the
 * same file and still unlocked, which a live writer cannot be after that
 * long. So a download killed a second ago is cleaned up by the next run of
 * efx in its folder, and a transfer under way in another process is never
 * touched.
 *
 * @module
 */
import { join } from "node:path";
import { TEMP_PREFIX } from "./atomic_file.ts";

/** Unlocked temps at least this old are orphans without a second look. */
export const SURE_AGE_MS = 10_000;
/** Delay before the second look at a young unlocked temp. */
export const RECHECK_MS = 150;

/** Outcome of a look at one temp file. */
type Look = "live" | "gone" | { ino: number | null };

function look(path: string, now: number): Look {
  try {
    using f = Deno.openSync(path, { read: true });
    const st = f.statSync();
    if (!st.isFile) return "live";
    if (!f.tryLockSync(true)) return "live";
    const young = now - (st.mtime?.getTime() ?? 0) < SURE_AGE_MS;
    if (!young) {
      Deno.removeSync(path); // still holding the lock: nobody can be writing it
      return "gone";
    }
    return { ino: st.ino };
  } catch {
    return "live"; // vanished, unreadable: not ours to judge
  }
}

/**
 * Removes orphaned temp files directly in `dir` (not recursive). Best
 * effort: a missing or unreadable folder, or a file that cannot be removed,
 * is skipped. Returns how many files were removed.
 */
export async function removeOrphanTemps(dir: string): Promise<number> {
  const candidates: { path: string; ino: number | null }[] = [];
  let count = 0;
  const now = Date.now();
  try {
    for (const entry of Deno.readDirSync(dir)) {
      if (!entry.isFile || !entry.name.startsWith(TEMP_PREFIX)) continue;
      const path = join(dir, entry.name);
      const r = look(path, now);
      if (r === "gone") count++;
      else if (r !== "live") candidates.push({ path, ino: r.ino });
    }
  } catch {
    return count;
  }
  if (candidates.length === 0) return count;
  await new Promise((r) => setTimeout(r, RECHECK_MS));
  for (const c of candidates) {
    try {
      // Second look: same file, still unlocked RECHECK_MS later: an orphan.
      using f = Deno.openSync(c.path, { read: true });
      if (f.statSync().ino !== c.ino || !f.tryLockSync(true)) continue;
      Deno.removeSync(c.path);
      count++;
    } catch { /* raced or not removable: skip */ }
  }
  return count;
}
