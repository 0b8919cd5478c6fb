/**
 * Error types shared by every part of efx.
 *
 * Every failure that can reach a user is an {@linkcode EfxError}: it carries a
 * one-line message that names the cause and the process exit code to use.
 * `main.ts` prints `efx: <message>` and exits with that code; nothing else
 * (no stack trace) is ever shown for these.
 *
 * Exit codes: 0 success, 1 transfer or remote error, 2 usage error (including
 * bad key files), 3 trust or authentication failure.
 *
 * @module
 */

/** Process exit codes used by the CLI. */
export const ExitCode = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  AUTH: 3,
} as const;

/** One of the values of {@linkcode ExitCode}. */
export type ExitCode = typeof ExitCode[keyof typeof ExitCode];

/** Base class of all expected, user-facing errors. */
export class EfxError extends Error {
  /** Exit code the CLI uses when this error ends the process. */
  readonly exitCode: ExitCode;
  constructor(message: string, exitCode: ExitCode = ExitCode.FAILURE, options?: ErrorOptions) {
    super(message, options);
    this.name = "EfxError";
    this.exitCode = exitCode;
  }
}

/** Bad command line or bad input file given by the user (exit 2). */
export class UsageError extends EfxError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.USAGE, options);
    this.name = "UsageError";
  }
}

/** A key file that is missing, unreadable, of the wrong kind, corrupt or too small (exit 2). */
export class KeyFileError extends UsageError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KeyFileError";
  }
}

/**
 * The peer could not be authenticated: unknown or changed server key, failed
 * key confirmation, refused client (exit 3).
 */
export class AuthError extends EfxError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.AUTH, options);
    this.name = "AuthError";
  }
}

/**
 * Data on the wire failed an integrity check: a bad tag, a replayed,
 * reordered or dropped record, a truncated stream, or a whole-file hash
 * mismatch (exit 1).
 */
export class IntegrityError extends EfxError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.FAILURE, options);
    this.name = "IntegrityError";
  }
}

/** The peer broke the protocol: bad framing, limits exceeded, bad version (exit 1). */
export class ProtocolError extends EfxError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.FAILURE, options);
    this.name = "ProtocolError";
  }
}

/** The operation failed on the other side and the peer said why (exit 1). */
export class RemoteError extends EfxError {
  /** Machine-readable reason sent by the peer, e.g. `not-found`. */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message, ExitCode.FAILURE);
    this.name = "RemoteError";
    this.code = code;
  }
}

/** A timeout on the network (handshake, idle) (exit 1). */
export class TimeoutError extends EfxError {
  constructor(message: string) {
    super(message, ExitCode.FAILURE);
    this.name = "TimeoutError";
  }
}

/**
 * Turns any thrown value into a one-line message for the user. Unknown errors
 * (bugs) still print one line; set `EFX_DEBUG=1` to see the stack.
 */
export function describeError(err: unknown): string {
  if (err instanceof EfxError) return err.message;
  if (err instanceof Deno.errors.ConnectionRefused) return `connection refused (${err.message})`;
  if (
    err instanceof Deno.errors.BrokenPipe || err instanceof Deno.errors.ConnectionReset ||
    err instanceof Deno.errors.ConnectionAborted || err instanceof Deno.errors.BadResource
  ) {
    return `connection lost: the other side closed it (${err.message.split("\n")[0]})`;
  }
  if (err instanceof Deno.errors.NotFound) return `not found: ${err.message}`;
  if (err instanceof Deno.errors.PermissionDenied) return `permission denied: ${err.message}`;
  if (err instanceof Deno.errors.NotCapable) {
    return `not allowed by Deno permissions: ${err.message}`;
  }
  if (err instanceof Error) return err.message.split("\n")[0];
  return String(err);
}

/** Exit code for any thrown value: the error's own for {@linkcode EfxError}, else 1. */
export function exitCodeOf(err: unknown): ExitCode {
  return err instanceof EfxError ? err.exitCode : ExitCode.FAILURE;
}
