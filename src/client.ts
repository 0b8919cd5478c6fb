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
import { AtomicWriter } from "./atomic_file.ts";
import { clientAuthMessage, type ClientIdentity } from "./auth.ts";
import { SecureChannel } from "./channel.ts";
import { describeError, EfxError, IntegrityError } from "./errors.ts";
import { expectOk, parseGetReply, parseTrailer } from "./messages.ts";
import type { FileInfo } from "./storage.ts";
import { receiveFile, sendFile, type TransferResult } from "./transfer.ts";
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
}

/** Hooks for progress display. */
export interface TransferHooks {
  /** Called once the size is known, before any data moves. */
  onStart?: (size: number) => void;
  onBytes?: (n: number) => void;
}

/** A finished transfer as the client reports it. */
export interface ClientTransferResult extends TransferResult {
  ms: number;
}

/** A connected, authenticated client. */
export class EfxClient {
  readonly channel: SecureChannel;
  /** The server's key fingerprint and how it was trusted. */
  readonly trust: { fingerprint: string; status: string };
  /** Rights the server granted to our identity ("" when we sent none). */
  rights = "";

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
      verifyServerKey: async (spki) => {
        trust = await opts.verifier(label, spki);
      },
    });
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

  /** Uploads `localPath` as `remoteName`, carrying its mode bits and mtime. */
  async upload(
    localPath: string,
    remoteName: string,
    opts: { force?: boolean } & TransferHooks = {},
  ): Promise<ClientTransferResult> {
    const t0 = performance.now();
    let file: Deno.FsFile;
    try {
      file = await Deno.open(localPath, { read: true });
    } catch (err) {
      throw new EfxError(`cannot read ${localPath}: ${localReason(err)}`);
    }
    try {
      const st = await file.stat();
      if (!st.isFile) throw new EfxError(`cannot upload ${localPath}: not a regular file`);
      const ch = this.channel;
      await ch.sendMessage({
        op: "put",
        name: remoteName,
        size: st.size,
        mode: (st.mode ?? 0o644) & 0o777,
        mtime: st.mtime?.getTime() ?? Date.now(),
        force: opts.force === true,
      });
      expectOk(await ch.recvMessage());
      opts.onStart?.(st.size);
      const sent = await sendFile(ch, file, st.size, opts.onBytes);
      const reply = parseTrailer(await ch.recvMessage());
      if (reply.sha256 !== sent.sha256 || reply.bytes !== sent.bytes) {
        throw new IntegrityError(
          `server stored a different file: sent sha256 ${sent.sha256}, server has ${reply.sha256}`,
        );
      }
      return {
        bytes: sent.bytes,
        sha256: sent.sha256,
        peerSha256: reply.sha256,
        ms: performance.now() - t0,
      };
    } finally {
      file.close();
    }
  }

  /**
   * Downloads `remoteName` to `localPath` atomically, restoring mode bits
   * (never setuid/setgid) and mtime. Refuses an existing `localPath` unless
   * `force`, before asking the server for anything.
   */
  async download(
    remoteName: string,
    localPath: string,
    opts: { force?: boolean } & TransferHooks = {},
  ): Promise<ClientTransferResult> {
    const t0 = performance.now();
    const writer = await AtomicWriter.create(localPath, { force: opts.force === true });
    try {
      const ch = this.channel;
      await ch.sendMessage({ op: "get", name: remoteName });
      const meta = parseGetReply(await ch.recvMessage());
      opts.onStart?.(meta.size);
      const res = await receiveFile(
        ch,
        writer,
        meta.size,
        (peerSha) =>
          writer.commit({
            mode: meta.mode,
            mtime: new Date(meta.mtime),
            expectedSha256: peerSha,
            force: opts.force === true,
          }),
        opts.onBytes,
      );
      return { ...res, ms: performance.now() - t0 };
    } finally {
      await writer.abort(); // no-op after a commit
    }
  }

  /** Lists the server's files matching an optional glob pattern. */
  async list(pattern?: string, recursive = false): Promise<FileInfo[]> {
    await this.channel.sendMessage({ op: "ls", pattern, recursive });
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

  /** Removes a file on the server. */
  async remove(name: string): Promise<void> {
    await this.channel.sendMessage({ op: "rm", name });
    expectOk(await this.channel.recvMessage());
  }

  /** Ends the session in order. */
  async close(): Promise<void> {
    await this.channel.close();
  }
}

function localReason(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such file";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "is a folder";
  return describeError(err);
}
