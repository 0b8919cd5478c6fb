/**
 * The one error type every storage backend throws for a client: a code the
 * client can act on and a message safe to send (it names files by the
 * client's name, never by a server path).
 *
 * @module
 */
import { RemoteError } from "../errors.ts";

/** Reason codes of a {@linkcode StorageError}, sent to the client. */
export type StorageErrorCode =
  | "bad-name"
  | "not-found"
  | "exists"
  | "permission"
  | "not-a-file"
  | "not-empty"
  | "too-large"
  | "no-space"
  | "quota"
  | "busy"
  | "io";

/** A storage operation failed; the message is safe to send to the client. */
export class StorageError extends RemoteError {
  declare readonly code: StorageErrorCode;
  constructor(code: StorageErrorCode, message: string) {
    super(code, message);
    this.name = "StorageError";
  }
}

/** `no such file on the server: NAME`. */
export function notFound(name: string): StorageError {
  return new StorageError("not-found", `no such file on the server: ${name}`);
}

/** A folder (or a special file) where a regular file is needed. */
export function notAFile(name: string, isDir = false): StorageError {
  return new StorageError(
    "not-a-file",
    isDir ? `${name} is a folder, not a file` : `${name} is not a regular file`,
  );
}

/** The name exists and `force` was not given. */
export function existsError(name: string): StorageError {
  return new StorageError(
    "exists",
    `${name} already exists on the server (use --force to overwrite)`,
  );
}
