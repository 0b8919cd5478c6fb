/**
 * The application protocol carried in MSG records: requests from the client,
 * replies from the server, and the trailer that ends every file stream.
 * PROTOCOL.md ("Application messages") is the normative description.
 *
 * Every field read from the peer goes through a checker here, so a malformed
 * message becomes a clear `bad-request` error rather than a crash.
 *
 * @module
 */
import { ProtocolError, RemoteError } from "./errors.ts";
import { sanitize } from "./bytes.ts";

/** Client requests. */
export type Request =
  | {
    op: "put";
    name: string;
    size: number;
    mode: number;
    mtime: number;
    force: boolean;
    /** Keep a partial on failure and continue an earlier one (see resume.ts). */
    resume: boolean;
    /**
     * The client sends the data right after the request without waiting: no
     * intermediate reply; a refused upload's data is read and dropped.
     */
    pipelined: boolean;
  }
  | {
    op: "get";
    name: string;
    /** Resume: the client already has this many bytes... */
    offset: number;
    /** ...whose SHA-256 (hex) is this. */
    prefixSha256?: string;
  }
  | { op: "ls"; pattern?: string; recursive?: boolean }
  | { op: "tree"; name: string }
  | { op: "rm"; name: string; recursive: boolean }
  | { op: "rmdir"; name: string }
  | { op: "mv"; from: string; to: string; force: boolean }
  | { op: "mkdir"; name: string; mode?: number; mtime?: number }
  | { op: "symlink"; name: string; target: string; force: boolean; mtime?: number };

/** One entry of a listing (`ls`, `tree`), as the server sends it. */
export interface FileInfo {
  /** Client name: "/"-separated path relative to the storage root. */
  name: string;
  /** Size in bytes (0 for folders; a link's target length for links). */
  size: number;
  /** Permission bits (`& 0o777`; 0o777 for links). */
  mode: number;
  /** Modification time in ms since the epoch. */
  mtime: number;
  /** Entry kind. Links are data: the server never follows them. */
  type: "file" | "dir" | "symlink";
  /** For a link: its target, as uploaded (never resolved by the server). */
  target?: string;
}

/** A failed reply or trailer: machine code and a message for the user. */
export interface ErrorReply {
  ok: false;
  code: string;
  message: string;
}

/** Metadata of a file offered for download. */
export interface GetReply {
  ok: true;
  size: number;
  mode: number;
  mtime: number;
  /** Where the data starts (resume); 0 for the whole file. */
  offset?: number;
}

/** Sent after the END record of every file stream. */
export type Trailer = { ok: true; sha256: string; bytes: number } | ErrorReply;

/** Listing entries per `ls` reply message (more follow while `more` is true). */
export const LS_BATCH = 1000;

function fail(what: string): never {
  throw new RemoteError("bad-request", `malformed request: ${what}`);
}

function str(v: unknown, what: string, max = 8192): string {
  if (typeof v !== "string" || v.length > max) fail(`${what} must be a string`);
  return v;
}

function uint(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    fail(`${what} must be a non-negative integer`);
  }
  return v;
}

function finite(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isFinite(v)) fail(`${what} must be a number`);
  return v;
}

function hex64(v: unknown): string {
  if (typeof v !== "string" || !/^[0-9a-f]{64}$/.test(v)) {
    fail("prefixSha256 must be 64 hex digits");
  }
  return v;
}

/**
 * Checks the client's answer to a resume offer: 0 (start over), or the
 * offered length with the SHA-256 of the client's own first bytes of that
 * length.
 */
export function parseResumeAnswer(
  msg: Record<string, unknown>,
  offered: number,
): { offset: number; prefixSha256?: string } {
  const offset = uint(msg.offset, "offset");
  if (offset === 0) return { offset };
  if (offset !== offered) fail("offset must be 0 or the offered length");
  return { offset, prefixSha256: hex64(msg.prefixSha256) };
}

/** Checks a request received by the server; throws RemoteError("bad-request"). */
export function parseRequest(msg: Record<string, unknown>): Request {
  switch (msg.op) {
    case "put":
      return {
        op: "put",
        name: str(msg.name, "name"),
        size: uint(msg.size, "size"),
        mode: uint(msg.mode, "mode") & 0o7777,
        mtime: typeof msg.mtime === "number" && Number.isFinite(msg.mtime) ? msg.mtime : Date.now(),
        force: msg.force === true,
        resume: msg.resume === true,
        pipelined: msg.pipelined === true && msg.resume !== true,
      };
    case "get":
      return {
        op: "get",
        name: str(msg.name, "name"),
        offset: msg.offset === undefined ? 0 : uint(msg.offset, "offset"),
        prefixSha256: msg.prefixSha256 === undefined ? undefined : hex64(msg.prefixSha256),
      };
    case "rm":
      return { op: "rm", name: str(msg.name, "name"), recursive: msg.recursive === true };
    case "rmdir":
    case "tree":
      return { op: msg.op, name: str(msg.name, "name") };
    case "mv":
      return {
        op: "mv",
        from: str(msg.from, "from"),
        to: str(msg.to, "to"),
        force: msg.force === true,
      };
    case "mkdir":
      return {
        op: "mkdir",
        name: str(msg.name, "name"),
        mode: msg.mode === undefined ? undefined : uint(msg.mode, "mode") & 0o777,
        mtime: msg.mtime === undefined ? undefined : finite(msg.mtime, "mtime"),
      };
    case "symlink":
      return {
        op: "symlink",
        name: str(msg.name, "name"),
        target: str(msg.target, "target"),
        force: msg.force === true,
        mtime: msg.mtime === undefined ? undefined : finite(msg.mtime, "mtime"),
      };
    case "ls":
      return {
        op: "ls",
        pattern: msg.pattern === undefined ? undefined : str(msg.pattern, "pattern"),
        recursive: msg.recursive === true,
      };
    default:
      fail(`unknown operation ${JSON.stringify(String(msg.op)).slice(0, 40)}`);
  }
}

/** Throws the peer's error when `msg` is a failed reply; returns it otherwise. */
export function expectOk<T extends { ok: true }>(msg: Record<string, unknown>): T {
  if (msg.ok === true) return msg as unknown as T;
  if (msg.ok === false) {
    // Text from the peer never reaches the terminal with control characters in it.
    throw new RemoteError(
      sanitize(String(msg.code ?? "error")),
      sanitize(String(msg.message ?? "request failed")),
    );
  }
  throw new ProtocolError("malformed reply from peer (no ok field)");
}

/** Checks a trailer; returns the sender's SHA-256 (hex) and byte count. */
export function parseTrailer(msg: Record<string, unknown>): { sha256: string; bytes: number } {
  const t = expectOk<{ ok: true; sha256: unknown; bytes: unknown }>(msg);
  if (typeof t.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(t.sha256)) {
    throw new ProtocolError("malformed trailer: bad sha256");
  }
  if (typeof t.bytes !== "number" || !Number.isSafeInteger(t.bytes) || t.bytes < 0) {
    throw new ProtocolError("malformed trailer: bad byte count");
  }
  return { sha256: t.sha256, bytes: t.bytes };
}

/** Checks the metadata of a download offer. */
export function parseGetReply(msg: Record<string, unknown>): GetReply {
  const r = expectOk<GetReply>(msg);
  for (const k of ["size", "mode", "mtime"] as const) {
    // mtime may be negative: files from before 1970 exist.
    if (typeof r[k] !== "number" || !Number.isFinite(r[k]) || (k !== "mtime" && r[k] < 0)) {
      throw new ProtocolError(`malformed reply: bad ${k}`);
    }
  }
  if (
    r.offset !== undefined &&
    (typeof r.offset !== "number" || !(r.offset >= 0 && r.offset <= r.size))
  ) {
    throw new ProtocolError("malformed reply: bad offset");
  }
  return r;
}

/** The reply for any thrown error: its code when it is a RemoteError, else "error". */
export function errorReply(err: unknown): ErrorReply {
  if (err instanceof RemoteError) return { ok: false, code: err.code, message: err.message };
  const message = err instanceof Error ? err.message.split("\n")[0] : String(err);
  return { ok: false, code: "error", message };
}
