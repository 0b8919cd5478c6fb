/**
 * The storage interface: everything the server's request handling may do to
 * stored files, so that a backend (the local folder today, an S3-compatible
 * store later) fits without touching the request code.
 *
 * Contract every backend keeps:
 * - Names are client names ({@linkcode checkName}); nothing else reaches a
 *   backend, and every error a client may see is a {@linkcode StorageError}
 *   (an {@linkcode IntegrityError} for a hash mismatch at commit).
 * - An upload appears under its name only complete and SHA-256-verified
 *   ({@linkcode Upload.commit}); without `force` an existing name is never
 *   replaced, decided atomically by the store.
 * - Links are data: {@linkcode StorageBackend.symlink} records a name and a
 *   target that the backend never resolves or follows; listings show them
 *   with `type: "symlink"` and their target; reads and writes refuse to go
 *   through them.
 * - Partial uploads (`--resume`) are private per client identity and
 *   unreachable by any client name.
 *
 * @module
 */
import type { FileInfo } from "../messages.ts";
import type { QuotaLedger } from "./quota.ts";

export type { FileInfo };
export { StorageError, type StorageErrorCode } from "./errors.ts";

/** An open file being read for a download. */
export interface ReadHandle {
  /** The file as it was when opened. */
  readonly info: FileInfo;
  /** Reads into `p`; null at the end. */
  read(p: Uint8Array): Promise<number | null>;
  /** Moves the read position to `offset` bytes from the start. */
  seek(offset: number): Promise<void>;
  close(): void;
}

/** Options of {@linkcode Upload.commit}. */
export interface CommitRequest {
  /** Permission bits (`& 0o777` is applied). */
  mode: number;
  /** Modification time in ms since the epoch. */
  mtime: number;
  /** The sender's whole-file SHA-256 (hex); a mismatch refuses the commit. */
  expectedSha256: string;
  /** Replace an existing file. */
  force: boolean;
  /**
   * Make the new name durable now (default true). A run of small uploads
   * passes false and calls {@linkcode StorageBackend.sync} once at the end.
   */
  durable?: boolean;
  /** Called synchronously right before the name appears; throwing refuses the commit. */
  beforePlace?: () => void;
}

/** One upload in progress. Calls must not overlap. */
export interface Upload {
  /** Identifies the final name: commits with the same key run in order. */
  readonly key: string;
  /** Bytes written so far (including a resumed prefix). */
  readonly bytesWritten: number;
  /** Appends `chunk` (and hashes it). */
  write(chunk: Uint8Array): Promise<void>;
  /** Verifies the hash and makes the file visible under its name. */
  commit(req: CommitRequest): Promise<{ sha256: string; bytes: number; syncKey?: string }>;
  /** Gives up; a resumable partial is kept. Never throws. */
  abort(): Promise<void>;
}

/** Limits an upload must fit in, checked before anything is created. */
export interface WriteOptions {
  force: boolean;
  /** Declared size in bytes. */
  size: number;
  /** Client identity (key fingerprint, "" when anonymous). */
  who: string;
  /** Resumable upload: continue the claimed partial from `offset`. */
  partial?: { claim: PartialClaim; offset: number };
}

/** A resumable upload's hold on its partial (one at a time per identity and name). */
export interface PartialClaim {
  /** Length of the partial already there (what may be offered). */
  readonly offset: number;
  /** Whether the partial starts with `length` bytes of this SHA-256 (hex). */
  checkPrefix(length: number, sha256: string): Promise<boolean>;
  /** Ends the claim, however the upload ended. Idempotent. */
  release(): void;
}

/** What a server's request handling may do to its storage. */
export interface StorageBackend {
  /** Where the files are, for the server's log (never sent to clients). */
  readonly label: string;
  /** One entry, not following links. */
  stat(name: string): Promise<FileInfo>;
  /** Entries matching `pattern` (see {@linkcode compileGlob}), sorted by name. */
  list(pattern?: string, opts?: { recursive?: boolean }): Promise<FileInfo[]>;
  /** Every entry below folder `name`, sorted; links as links. */
  tree(name: string): Promise<FileInfo[]>;
  /** Opens a regular file for reading (never through a link). */
  openRead(name: string): Promise<ReadHandle>;
  /** Every check {@linkcode beginWrite} makes, creating nothing. */
  checkWrite(name: string, opts: WriteOptions): Promise<void>;
  /** Starts an upload; nothing appears under `name` before its commit. */
  beginWrite(name: string, opts: WriteOptions): Promise<Upload>;
  /** Makes folder `name` (and missing parents); applies mode and mtime to it. */
  mkdir(name: string, opts?: { mode?: number; mtime?: number }): Promise<void>;
  /** Records a link `name -> target` as data (the target is never resolved). */
  symlink(name: string, target: string, opts: { force: boolean; mtime?: number }): Promise<void>;
  /**
   * Removes a file or link; a folder only when `recursive` (its whole
   * content) or `dir` (only when empty).
   */
  remove(name: string, opts?: { recursive?: boolean; dir?: boolean }): Promise<void>;
  /** Renames `from` to `to` in one step; an existing `to` only with `force`. */
  rename(from: string, to: string, opts: { force: boolean }): Promise<void>;
  /**
   * Claims the partial of `name` for `who`. A claim still held (its
   * connection died unseen) is taken over: `preempt` of the old holder is
   * called and its release awaited.
   */
  claimPartial(name: string, who: string, preempt: () => void): Promise<PartialClaim>;
  /** Removes the partial of `name` for `who` (after a completed upload). */
  dropPartial(name: string, who: string): Promise<void>;
  /** Bytes held by `who`'s partial uploads, but for the one of `except` (for quotas). */
  partialBytes(who: string, except?: string): Promise<number>;
  /** Removes partials untouched for longer than the TTL; returns how many. */
  sweepPartials(): Promise<number>;
  /** Makes the commits reported with these sync keys durable. */
  sync(keys: Iterable<string>): Promise<void>;
  /** Who owns how many bytes, for per-client quotas (kept in the backend's private area). */
  readonly quotas: QuotaLedger;
}
