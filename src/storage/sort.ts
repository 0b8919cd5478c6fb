/**
 * Sorting listings without stalling the server: every backend's `list` and
 * `tree` return entries through {@linkcode sortByName}.
 *
 * @module
 */
import type { FileInfo } from "../messages.ts";

const yieldNow = () => new Promise<void>((r) => setTimeout(r, 0));

/**
 * Sorts by name (UTF-16 code units) with a bottom-up merge sort that yields
 * to the event loop every few thousand comparisons: names sharing long
 * prefixes make comparisons slow, and no listing may stall other clients.
 */
export async function sortByName(out: FileInfo[]): Promise<FileInfo[]> {
  const n = out.length;
  let src = out;
  let dst = new Array<FileInfo>(n);
  let work = 0;
  for (let width = 1; width < n; width *= 2) {
    for (let lo = 0; lo < n; lo += 2 * width) {
      const mid = Math.min(lo + width, n);
      const hi = Math.min(lo + 2 * width, n);
      let i = lo, j = mid, k = lo;
      while (i < mid && j < hi) {
        dst[k++] = src[j].name < src[i].name ? src[j++] : src[i++];
        if (++work % 4096 === 0) await yieldNow();
      }
      while (i < mid) dst[k++] = src[i++];
      while (j < hi) dst[k++] = src[j++];
    }
    [src, dst] = [dst, src];
  }
  return src;
}
