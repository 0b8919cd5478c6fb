/**
 * Opening files without following links, and checking that what was opened
 * is what was checked.
 *
 * Deno has no `openat`/`O_NOFOLLOW`, so the pattern is: `lstat` the path
 * (refusing a link or the wrong kind), open it, then compare the open file's
 * device and inode with the `lstat`ed ones. A link swapped in between the
 * two calls is caught by the identity check; a link in a parent folder is
 * the caller's to refuse (storage walks every component with `lstat`).
 *
 * @example
 * ```ts
 * const { file } = openChecked("/srv/efx/a.txt", { read: true });
 * file.close();
 * ```
 * @module
 */

/** The path is a link, not what was asked for, or changed while being opened. */
export class UnsafePathError extends Error {
  constructor(
    readonly reason: "link" | "kind" | "changed",
    message: string,
  ) {
    super(message);
    this.name = "UnsafePathError";
  }
}

/** `lstat`, or null when nothing is there. */
export function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return null;
    }
    throw err;
  }
}

/** Same device and inode. */
export function sameFile(a: Deno.FileInfo, b: Deno.FileInfo): boolean {
  return a.dev === b.dev && a.ino !== null && a.ino === b.ino;
}

/**
 * Opens an existing regular file (or folder, with `kind: "dir"`) that is not
 * a link, and checks that the open file is the one `lstat` saw — or, with
 * `expected`, the one the caller checked earlier (its own `lstat`).
 *
 * @throws {UnsafePathError} for a link, another kind of entry, or a swap;
 * Deno's own errors (NotFound, PermissionDenied, ...) otherwise.
 */
export function openChecked(
  path: string,
  options: Deno.OpenOptions,
  kind: "file" | "dir" = "file",
  expected?: Deno.FileInfo,
): { file: Deno.FsFile; info: Deno.FileInfo } {
  const before = expected ?? Deno.lstatSync(path);
  if (before.isSymlink) throw new UnsafePathError("link", "it is a symbolic link");
  if (kind === "file" ? !before.isFile : !before.isDirectory) {
    throw new UnsafePathError("kind", kind === "file" ? "not a regular file" : "not a folder");
  }
  const file = Deno.openSync(path, { ...options, create: false, createNew: false });
  try {
    const info = file.statSync();
    if (!sameFile(before, info)) {
      throw new UnsafePathError("changed", "it changed while being opened");
    }
    return { file, info };
  } catch (err) {
    file.close();
    throw err;
  }
}
