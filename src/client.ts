/**
 * The client side of the transfer protocol: connect (with server
 * authentication), upload, download, list, remove.
 *
 * Downloads land atomically (temp file beside the target, hash checked, then
 * renamed) and never replace an existing local file unless `force` is set.
 *
 * @example
 * ```ts
 * const client = await EfxClient.connect({ host: "127.0.0.1", port: 9000, verifier });
 * await client.upload("photo.png", "photo.png", { force: false });
 * await client.download("photo.png", "/tmp/photo.png", { force: true });
 * await client.close();
 * ```
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { AtomicWriter, FileExistsError } from "./atomic_file.ts";
import { removeOrphanTemps } from "./local_temps.ts";
import { dirname } from "node:path";
import { clientAuthMessage, type ClientIdentity } from "./auth.ts";
import { SecureChannel } from "./channel.ts";
import { RequestQueue } from "./client_queue.ts";
import { describeError, EfxError, IntegrityError, ProtocolError, RemoteError } from "./errors.ts";
import { hashPrefix, inspectLocalPartial, localPartialPath, openLocalPartial } from "./resume.ts";
import { expectOk, parseGetReply, parseTrailer } from "./messages.ts";
import type { FileInfo } from "./messages.ts";
import { receiveFile, sendBytes, sendFile, type TransferResult } from "./transfer.ts";
import type { ServerVerifier } from "./trust.ts";

/** How to reach and trust a server. */
export interface ConnectOptions {
  host: string;
  port: number;
  /** Decides whether the server's key is trusted (see trust.ts). */
  verifier: ServerVerifier;
  handshakeTimeoutMs?: number;
  /** Client identity key, proven to the server right after the handshake. */
  identity?: ClientIdentity;
  /** Longest silence from the server before giving up (default 5 minutes; 0: none). */
  idleTimeoutMs?: number;
}

/** Hooks for progress display. */
export interface TransferHooks {
  /** Called once the size is known, before any data moves. */
  onStart?: (size: number) => void;
  onBytes?: (n: number) => void;
  /** Something the user should know (e.g. a resume restarting from zero). */
  onNotice?: (text: string) => void;
}

/** A finished transfer as the client reports it. */
export interface ClientTransferResult extends TransferResult {
  ms: number;
  /** Bytes skipped because a resume found them already transferred. */
  resumedFrom: number;
  /** A download with `unlessSame` found the local file identical: nothing was written. */
  unchanged?: boolean;
}

/** Options of a download. */
export interface DownloadOptions extends TransferHooks {
  force?: boolean;
  resume?: boolean;
  /**
   * The local file's size and SHA-256: the server is asked to send only
   * what differs (see {@linkcode EfxClient.sameRemoteFile}); when its file
   * is the same, nothing is written and the result says `unchanged`.
   * Needs `force` (a changed file replaces the local one).
   */
  unlessSame?: { size: number; sha256: string };
}

/** Options of an upload. */
export interface UploadOptions extends TransferHooks {
  force?: boolean;
  resume?: boolean;
  /** Permission bits to give the remote file instead of the local file's (e.g. for stdin). */
  mode?: number;
}

/** Files up to this size are uploaded without waiting for the server in between. */
export const PIPELINE_MAX = 1 << 20;

/** A connected, authenticated client. */
export class EfxClient {
  readonly channel: SecureChannel;
  /** The server's key fingerprint and how it was trusted. */
  readonly trust: { fingerprint: string; status: string };
  /** Rights the server granted to our identity ("" when we sent none). */
  rights = "";
  /** Every request goes through here: one owns the channel at a time (see client_queue.ts). */
  readonly #queue = new RequestQueue();

  private constructor(channel: SecureChannel, trust: { fingerprint: string; status: string }) {
    this.channel = channel;
    this.trust = trust;
  }

  /** Connects and authenticates the server (its key is checked before any secret is sent). */
  static async connect(opts: ConnectOptions): Promise<EfxClient> {
    const label = opts.host.includes(":")
      ? `[${opts.host}]:${opts.port}`
      : `${opts.host}:${opts.port}`;
    let conn: Deno.Conn;
    try {
      conn = await Deno.connect({ hostname: opts.host, port: opts.port });
    } catch (err) {
      const why = err instanceof Deno.errors.ConnectionRefused
        ? "connection refused (is 'efx serve' running there?)"
        : describeError(err);
      throw new EfxError(`cannot connect to ${label}: ${why}`);
    }
    let trust = { fingerprint: "", status: "" };
    const channel = await SecureChannel.client(conn, {
      handshakeTimeoutMs: opts.handshakeTimeoutMs,
      verifyServerKey: async (spki, hello) => {
        trust = await opts.verifier(label, spki, hello);
      },
    });
    channel.idleTimeoutMs = opts.idleTimeoutMs ?? 5 * 60_000;
    const client = new EfxClient(channel, trust);
    if (opts.identity) {
      try {
        await channel.sendMessage(
          await clientAuthMessage(opts.identity, channel.session.transcriptHash),
        );
        const reply = expectOk<{ ok: true; rights: string }>(await channel.recvMessage());
        client.rights = String(reply.rights);
      } catch (err) {
        channel.abort();
        throw err;
      }
    }
    return client;
  }

  /**
   * Waits until every request queued so far has ended (their own promises
   * carry their results).
   */
  async settle(): Promise<void> {
    await this.#queue.idle();
  }

  /**
   * Queues an upload without waiting for the server between files: a file
   * of at most {@linkcode PIPELINE_MAX} bytes is sent at once (request, data
   * and trailer back to back) and `done` settles when its reply arrives,
   * while the caller goes on with the next file. Larger files (and resumed
   * ones) go the normal way, with a progress display. Errors that concern
   * only this file (e.g. it is unreadable) reject `done`; the connection
   * goes on.
   */
  async uploadQueued(
    localPath: string,
    remoteName: string,
    opts: UploadOptions = {},
  ): Promise<{ done: Promise<ClientTransferResult> }> {
    const t0 = performance.now();
    const settled = <T>(p: Promise<T>) => {
      p.catch(() => {});
      return { done: p };
    };
    // Small files are read whole with synchronous calls (a few microseconds
    // each, against ~40 us per asynchronous call): this loop is the client's
    // per-file cost when many files go out back to back.
    let st: Deno.FileInfo;
    try {
      st = Deno.statSync(localPath);
      if (st.isDirectory) throw new EfxError(`cannot upload ${localPath}: it is a folder (use -r)`);
      if (!st.isFile) throw new EfxError(`cannot upload ${localPath}: not a regular file`);
    } catch (err) {
      const e = err instanceof EfxError
        ? err
        : new EfxError(`cannot read ${localPath}: ${localReason(err)}`);
      return settled(Promise.reject(e));
    }
    if (st.size > PIPELINE_MAX || opts.resume) {
      // Queued like every request: the next one waits until this has ended.
      return settled(this.upload(localPath, remoteName, opts));
    }
    let data: Uint8Array;
    try {
      data = Deno.readFileSync(localPath); // what is sent is exactly what was read
    } catch (err) {
      return settled(Promise.reject(new EfxError(`cannot read ${localPath}: ${localReason(err)}`)));
    }
    const ch = this.channel;
    let sent = { bytes: 0, sha256: "" };
    const size = data.length;
    const { sent: out, reply } = this.#queue.pipeline(async () => {
      try {
        await ch.sendMessage(putRequest(remoteName, size, st, opts, { pipelined: true }));
        sent = await sendBytes(ch, data);
      } catch (err) {
        throw await this.#explain(err);
      }
    }, async () => {
      const peerSha256 = checkStored(await ch.recvMessage(), sent, size);
      return { ...sent, peerSha256, ms: performance.now() - t0, resumedFrom: 0 };
    });
    await out;
    return settled(reply);
  }

  /**
   * Uploads `localPath` as `remoteName`, carrying its mode bits and mtime.
   * With `resume`, an interrupted earlier upload of the same name continues
   * where it stopped when the server's partial matches our file's prefix
   * (SHA-256 compared through the channel), and a cut now leaves a partial
   * on the server for next time.
   */
  upload(
    localPath: string,
    remoteName: string,
    opts: UploadOptions = {},
  ): Promise<ClientTransferResult> {
    return this.#queue.run(() => this.#upload(localPath, remoteName, opts));
  }

  async #upload(
    localPath: string,
    remoteName: string,
    opts: UploadOptions,
  ): Promise<ClientTransferResult> {
    const t0 = performance.now();
    let file: Deno.FsFile;
    try {
      await checkRegularFile(localPath);
      file = await Deno.open(localPath, { read: true });
    } catch (err) {
      if (err instanceof EfxError) throw err;
      throw new EfxError(`cannot read ${localPath}: ${localReason(err)}`);
    }
    try {
      const st = await file.stat();
      if (!st.isFile) throw new EfxError(`cannot upload ${localPath}: not a regular file`);
      const ch = this.channel;
      await ch.sendMessage(
        putRequest(remoteName, st.size, st, opts, { resume: opts.resume === true }),
      );
      const offer = expectOk<{ ok: true; offset?: number }>(
        await ch.recvMessage(),
      );
      let offset = 0;
      let hash: Hash | undefined;
      if (opts.resume) {
        // The server tells only how much it has; we prove we have the same
        // first bytes by their SHA-256, and it decides where to go on from.
        const offered = offer.offset ?? 0;
        let h: Hash | undefined;
        let answer: { offset: number; prefixSha256?: string } = { offset: 0 };
        if (offered > 0 && offered <= st.size) {
          h = await hashPrefix(file, offered);
          answer = { offset: offered, prefixSha256: h.copy().digest("hex") };
        }
        await ch.sendMessage(answer);
        const go = expectOk<{ ok: true; offset?: number }>(await ch.recvMessage());
        offset = go.offset ?? 0;
        if (offset !== 0 && offset !== answer.offset) {
          throw new ProtocolError("server chose an impossible resume offset");
        }
        if (offset > 0) hash = h;
        else if (offered > 0) {
          opts.onNotice?.(
            `${remoteName}: the server's partial copy differs from ${localPath}; restarting from zero`,
          );
        }
        await file.seek(offset, Deno.SeekMode.Start);
      }
      opts.onStart?.(st.size - offset);
      let sent;
      try {
        sent = await sendFile(ch, file, { length: st.size - offset, hash, onBytes: opts.onBytes });
      } catch (err) {
        // Our trailer said the file changed: the server's reply to it is
        // still owed and must be read, or the next request gets it.
        if (err instanceof RemoteError && !ch.broken) await ch.recvMessage().catch(() => {});
        throw await this.#explain(err);
      }
      const peerSha256 = checkStored(await ch.recvMessage(), sent, st.size);
      return { ...sent, peerSha256, ms: performance.now() - t0, resumedFrom: offset };
    } finally {
      file.close();
    }
  }

  /**
   * Downloads `remoteName` to `localPath` atomically, restoring mode bits
   * (never setuid/setgid) and mtime. Refuses an existing `localPath` unless
   * `force`, before asking the server for anything. With `resume`, the data
   * goes through `.<name>.efx-partial` beside the target, which survives a
   * cut and is continued next time if the server's file has the same prefix.
   */
  download(
    remoteName: string,
    localPath: string,
    opts: DownloadOptions = {},
  ): Promise<ClientTransferResult> {
    return this.#queue.run(() => this.#download(remoteName, localPath, opts));
  }

  async #download(
    remoteName: string,
    localPath: string,
    opts: DownloadOptions,
  ): Promise<ClientTransferResult> {
    const t0 = performance.now();
    const force = opts.force === true;
    const ch = this.channel;
    let writer: AtomicWriter;
    let offset = 0;
    let meta;
    await sweepOnce(dirname(localPath));
    const same = opts.unlessSame;
    if (!opts.resume) {
      writer = await AtomicWriter.create(localPath, { force });
      try {
        // The probe of sameRemoteFile, folded into the download itself.
        const probe = same && same.size > 0 ? { offset: same.size, prefixSha256: same.sha256 } : {};
        await ch.sendMessage({ op: "get", name: remoteName, ...probe });
        meta = parseGetReply(await ch.recvMessage());
        const at = typeof meta.offset === "number" ? meta.offset : 0;
        if (at !== 0 && (!same || at !== same.size)) {
          ch.abort();
          throw new ProtocolError("bad resume offset from server");
        }
        if (same && at === same.size) {
          // Our file is the server's first `at` bytes: only the rest comes.
          let rest = 0;
          for await (const chunk of ch.recvStream()) {
            rest += chunk.length;
            if (rest > meta.size - at) {
              ch.markBroken();
              throw new ProtocolError(`peer sent more than the announced ${meta.size} bytes`);
            }
          }
          const trailer = parseTrailer(await ch.recvMessage());
          await writer.abort();
          if (meta.size === same.size && trailer.sha256 === same.sha256 && rest === 0) {
            return {
              bytes: 0,
              sha256: same.sha256,
              peerSha256: trailer.sha256,
              ms: performance.now() - t0,
              resumedFrom: same.size,
              unchanged: true,
            };
          }
          // It grew meanwhile: fetch it whole.
          return await this.#download(remoteName, localPath, { ...opts, unlessSame: undefined });
        }
      } catch (err) {
        await writer.abort();
        throw err;
      }
    } else {
      if (!force && await exists(localPath)) {
        throw new FileExistsError(`${localPath} already exists (use --force to overwrite)`);
      }
      const part = localPartialPath(localPath);
      // Only a regular file of ours is read or written (a planted link is refused).
      const found = await inspectLocalPartial(part, localPath);
      const have = found?.size ?? 0;
      const prefixSha256 = found?.prefixSha256;
      await ch.sendMessage({ op: "get", name: remoteName, offset: have, prefixSha256 });
      meta = parseGetReply(await ch.recvMessage());
      offset = typeof meta.offset === "number" ? meta.offset : 0;
      if (offset !== 0 && offset !== have) {
        ch.abort(); // its data is on the way: this connection cannot go on
        throw new ProtocolError("bad resume offset from server");
      }
      if (have > 0 && offset === 0) {
        opts.onNotice?.(
          `${localPath}: the server's file no longer starts like our partial copy; restarting from zero`,
        );
      }
      try {
        writer = await AtomicWriter.create(localPath, {
          force,
          partial: {
            path: part,
            offset,
            open: () => openLocalPartial(part, localPath, { create: true }),
          },
        });
      } catch (err) {
        ch.abort(); // the data is already on its way; this connection cannot go on
        throw err;
      }
    }
    try {
      opts.onStart?.(meta.size - offset);
      const res = await receiveFile(
        ch,
        writer,
        meta.size - offset,
        (peerSha) =>
          writer.commit({
            mode: meta.mode,
            mtime: new Date(meta.mtime),
            expectedSha256: peerSha,
            force,
          }),
        opts.onBytes,
      );
      return { ...res, bytes: res.bytes - offset, ms: performance.now() - t0, resumedFrom: offset };
    } finally {
      await writer.abort(); // no-op after a commit; keeps a resumable partial
    }
  }

  /**
   * Streams `remoteName` into `sink` as it arrives (e.g. standard output,
   * which cannot be renamed into place). Every record is authenticated by
   * the channel, but the whole-file SHA-256 is known only at the end: a
   * mismatch (or a short stream) then throws after the data was written, so
   * the caller must report the failure (exit code) and the reader must not
   * trust the bytes of a failed run.
   */
  downloadToSink(
    remoteName: string,
    sink: (chunk: Uint8Array) => Promise<void>,
    opts: TransferHooks = {},
  ): Promise<ClientTransferResult> {
    return this.#queue.run(async () => {
      const t0 = performance.now();
      const ch = this.channel;
      await ch.sendMessage({ op: "get", name: remoteName });
      const meta = parseGetReply(await ch.recvMessage());
      opts.onStart?.(meta.size);
      const hash = createHash("sha256");
      let received = 0;
      let localError: unknown = undefined;
      for await (const chunk of ch.recvStream()) {
        received += chunk.length;
        if (received > meta.size) {
          ch.markBroken();
          throw new ProtocolError(`peer sent more than the announced ${meta.size} bytes`);
        }
        if (localError !== undefined) continue; // drain: the connection stays usable
        hash.update(chunk);
        try {
          await sink(chunk);
          opts.onBytes?.(chunk.length);
        } catch (err) {
          localError = err;
        }
      }
      const trailer = parseTrailer(await ch.recvMessage());
      if (localError !== undefined) {
        throw new EfxError(`cannot write ${remoteName}: ${localReason(localError)}`);
      }
      const sha256 = hash.digest("hex");
      if (received !== meta.size || trailer.bytes !== meta.size) {
        throw new IntegrityError(
          `size mismatch: ${meta.size} bytes announced, ${received} received, ${trailer.bytes} reported`,
        );
      }
      if (trailer.sha256 !== sha256) {
        throw new IntegrityError(
          `${remoteName}: sha256 mismatch (server sent ${trailer.sha256}, received ${sha256}); ` +
            `the output is damaged`,
        );
      }
      return {
        bytes: received,
        sha256,
        peerSha256: trailer.sha256,
        ms: performance.now() - t0,
        resumedFrom: 0,
      };
    });
  }

  /** Every entry below remote folder `name` (files, folders, symlinks with their targets). */
  tree(name: string): Promise<FileInfo[]> {
    return this.#queue.run(async () => {
      await this.channel.sendMessage({ op: "tree", name });
      return await this.#batches();
    });
  }

  /** Makes a remote folder (and parents); sets mode and mtime when given. */
  mkdir(name: string, mode?: number, mtime?: number): Promise<void> {
    return this.#queue.run(async () => {
      await this.channel.sendMessage({ op: "mkdir", name, mode, mtime });
      expectOk(await this.channel.recvMessage());
    });
  }

  /**
   * Records remote link `name` -> `target`. Links are data on the server:
   * any target (relative, absolute, dangling) is stored as given, with
   * `mtime` when given.
   */
  symlink(name: string, target: string, force = false, mtime?: number): Promise<void> {
    return this.#simple({ op: "symlink", name, target, force, mtime });
  }

  /** Removes an empty remote folder. */
  rmdir(name: string): Promise<void> {
    return this.#simple({ op: "rmdir", name });
  }

  /** Renames `from` to `to` in one step on the server (`force`: replace a file `to`). */
  rename(from: string, to: string, force = false): Promise<void> {
    return this.#simple({ op: "mv", from, to, force });
  }

  /**
   * A request whose answer means nothing, to keep an idle connection alive
   * (the server drops connections silent for longer than its idle timeout):
   * a listing of a name no listing ever shows (names starting with `.efx-`
   * are reserved), so it costs the server one look at its root folder.
   */
  ping(): Promise<void> {
    return this.#queue.run(async () => {
      await this.channel.sendMessage({ op: "ls", pattern: ".efx-keepalive" });
      await this.#batches();
    });
  }

  /**
   * Whether the server's file `name` has exactly `size` bytes with SHA-256
   * `sha256`. The protocol has no "hash of a file" request; this asks for a
   * resumed download of `name` from offset `size` with the prefix hash
   * `sha256` (PROTOCOL.md, `get`): the server continues at `size` only when
   * its first `size` bytes hash to `sha256`, and then sends an empty stream
   * and its whole-file hash in the trailer, which must be `sha256` too
   * (so the file has no more bytes). When it does not match, the server
   * sends the whole file from 0, which is read and dropped: the price of a
   * changed file of the same size. An empty `size` is compared by size alone.
   */
  sameRemoteFile(name: string, size: number, sha256: string): Promise<boolean> {
    return this.#queue.run(async () => {
      const ch = this.channel;
      if (size === 0) {
        await ch.sendMessage({ op: "ls", pattern: globLiteral(name) });
        const found = (await this.#batches()).find((e) => e.name === name);
        return found?.type === "file" && found.size === 0;
      }
      await ch.sendMessage({ op: "get", name, offset: size, prefixSha256: sha256 });
      const meta = parseGetReply(await ch.recvMessage());
      const offset = typeof meta.offset === "number" ? meta.offset : 0;
      if (offset !== 0 && offset !== size) {
        ch.abort();
        throw new ProtocolError("bad resume offset from server");
      }
      let received = 0;
      for await (const chunk of ch.recvStream()) {
        received += chunk.length;
        if (received > meta.size - offset) {
          ch.markBroken();
          throw new ProtocolError(`peer sent more than the announced ${meta.size} bytes`);
        }
      }
      const trailer = parseTrailer(await ch.recvMessage());
      return offset === size && meta.size === size && trailer.sha256 === sha256;
    });
  }

  async #simple(request: Record<string, unknown>): Promise<void> {
    return await this.#queue.run(async () => {
      await this.channel.sendMessage(request);
      expectOk(await this.channel.recvMessage());
    });
  }

  /**
   * A write that failed because the server hung up usually has the reason
   * waiting in the receive buffer (an ALERT, e.g. "not authorized"): read it
   * briefly and report that instead of "broken pipe".
   */
  async #explain(err: unknown): Promise<unknown> {
    if (err instanceof EfxError) return err;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const reason = await Promise.race([
        this.channel.recvMessage().then(() => null, (e) => e),
        new Promise((r) => timer = setTimeout(r, 500, null)),
      ]);
      return reason instanceof EfxError ? reason : err;
    } finally {
      clearTimeout(timer);
    }
  }

  async #batches(): Promise<FileInfo[]> {
    const out: FileInfo[] = [];
    while (true) {
      const reply = expectOk<{ ok: true; entries: FileInfo[]; more: boolean }>(
        await this.channel.recvMessage(),
      );
      if (!Array.isArray(reply.entries)) throw new EfxError("malformed listing from server");
      out.push(...reply.entries);
      if (!reply.more) return out;
    }
  }

  /** Lists the server's files matching an optional glob pattern. */
  list(pattern?: string, recursive = false): Promise<FileInfo[]> {
    return this.#queue.run(async () => {
      await this.channel.sendMessage({ op: "ls", pattern, recursive });
      return await this.#batches();
    });
  }

  /** Removes a file or link on the server; a folder (with everything in it) only with `recursive`. */
  remove(name: string, recursive = false): Promise<void> {
    return this.#simple(recursive ? { op: "rm", name, recursive } : { op: "rm", name });
  }

  /** Ends the session in order. */
  close(): Promise<void> {
    return this.#queue.run(async () => {
      await this.channel.closeAndWait(); // the server's answer may report a last failure
    });
  }
}

/** A `put` request for a local file: its size, permission bits and mtime. */
function putRequest(
  name: string,
  size: number,
  st: Deno.FileInfo,
  opts: { force?: boolean; mode?: number },
  form: { pipelined: true } | { resume: boolean },
) {
  return {
    op: "put",
    name,
    size,
    mode: (opts.mode ?? st.mode ?? 0o644) & 0o777,
    mtime: st.mtime?.getTime() ?? Date.now(),
    force: opts.force === true,
    ...form,
  };
}

/**
 * Checks the server's result for an upload against what we sent: the same
 * whole-file SHA-256 and size. Returns the server's hash.
 */
function checkStored(
  reply: Record<string, unknown>,
  sent: { sha256: string },
  size: number,
): string {
  const r = parseTrailer(reply);
  if (r.sha256 !== sent.sha256 || r.bytes !== size) {
    throw new IntegrityError(
      `server stored a different file: sent sha256 ${sent.sha256}, server has ${r.sha256}`,
    );
  }
  return r.sha256;
}

const swept = new Set<string>();

/**
 * Removes temp files that an earlier, killed download left in `dir`, however
 * young (once per folder and process; live downloads are recognised by
 * their lock: see local_temps.ts).
 */
export async function sweepOnce(dir: string): Promise<void> {
  if (swept.has(dir)) return;
  swept.add(dir);
  await removeOrphanTemps(dir).catch(() => 0);
}

/**
 * Refuses anything but a regular file BEFORE opening it: opening a FIFO for
 * reading would block until a writer appears, and a device has no end.
 */
async function checkRegularFile(path: string): Promise<void> {
  const st = await Deno.stat(path);
  if (st.isDirectory) throw new EfxError(`cannot upload ${path}: it is a folder (use -r)`);
  if (!st.isFile) throw new EfxError(`cannot upload ${path}: not a regular file`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * An `ls` pattern matching `name` only, when it has no `*` or `?` (the
 * pattern language has no escape); else a pattern matching it among others
 * (callers filter the listing by exact name).
 */
export function globLiteral(name: string): string {
  return name.replace(/[*?]/g, "?");
}

function localReason(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such file";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "is a folder";
  return describeError(err);
}
