/**
 * Client names: the only way a client refers to anything in storage.
 *
 * A name is a "/"-separated relative path of non-empty components with no
 * ".", "..", backslash, control character, drive letter or reserved prefix.
 * Names starting with {@linkcode RESERVED_PREFIX} (any component) belong to
 * the server: temp files, staging and link secrets live under them, so no
 * client name can ever reach them. Every backend checks names with
 * {@linkcode checkName} before anything else.
 *
 * @example
 * ```ts
 * checkName("photos/a b.png"); // ["photos", "a b.png"]
 * checkName("../etc/passwd"); // throws StorageError("bad-name")
 * ```
 * @module
 */
import { StorageError } from "./errors.ts";

/** Longest accepted name component, in UTF-8 bytes. */
export const MAX_COMPONENT_BYTES = 255;
/** Longest accepted name, in UTF-8 bytes. */
export const MAX_NAME_BYTES = 4096;
/** Component prefix reserved for the server's own files. */
export const RESERVED_PREFIX = ".efx-";

const encoder = new TextEncoder();

/** Validates a client name; returns its components. @throws {StorageError} `bad-name`. */
export function checkName(name: string): string[] {
  const bad = (why: string) => {
    const shown = typeof name === "string" && name.length > 80 ? name.slice(0, 80) + "…" : name;
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
    if (p.startsWith(RESERVED_PREFIX)) {
      throw bad(`names starting with ${RESERVED_PREFIX} are reserved`);
    }
  }
  return parts;
}

/** Longest accepted link target, in UTF-8 bytes. */
export const MAX_LINK_TARGET_BYTES = 4096;

/**
 * Checks a link target as data: any non-empty text up to
 * {@linkcode MAX_LINK_TARGET_BYTES} without control characters. The server
 * never resolves it; only a client recreating the link judges where it leads.
 */
export function checkLinkTarget(name: string, target: string): string {
  const bad = (why: string) =>
    new StorageError("bad-name", `refusing link ${name}: its target ${why}`);
  if (typeof target !== "string" || target === "") throw bad("is empty");
  if (!target.isWellFormed()) throw bad("is not valid Unicode");
  if (encoder.encode(target).length > MAX_LINK_TARGET_BYTES) {
    throw bad(`is longer than ${MAX_LINK_TARGET_BYTES} bytes`);
  }
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(target)) throw bad("contains control characters");
  return target;
}
