/**
 * `efx serve`: accepts connections, runs the handshake, and serves requests
 * against a {@linkcode Storage} root.
 *
 * Each connection is handled on its own (a slow or hostile client only holds
 * its own connection, bounded by the handshake and idle timeouts). Resource
 * limits (limits.ts): connection slots in total and per address, where the
 * oldest connection not yet admitted is evicted when a cap is reached; a
 * deadline to authenticate when an authorized-clients file is set; small
 * records only and no keystreams computed ahead until a connection is
 * admitted; one memory budget for large records across all connections;
 * and at most {@linkcode MAX_OWED_REPLIES} replies owed to a client that does
 * not read them before its requests stop being read. A request
 * that fails in a way that leaves the channel in step (missing file, name
 * refused, disk full, hash mismatch) gets an error reply and the connection
 * goes on; anything that breaks the channel (tampering, truncation, timeout,
 * protocol violation) ends the connection with an ALERT.
 *
 * @example
 * ```ts
 * const server = await EfxServer.start({ port: 0, root: "storage", keyPath: "keys/server.key.pem" });
 * console.log(server.port, server.fingerprint);
 * await server.shutdown();
 * ```
 * @module
 */
import {
  allows,
  type AuthorizedClients,
  loadAuthorizedClients,
  type Rights,
  verifyClientAuth,
} from "./auth.ts";
import { safeClose, SecureChannel, type Transport } from "./channel.ts";
import { describeError, EfxError, RemoteError } from "./errors.ts";
import { AlertCode, DEFAULT_HANDSHAKE_TIMEOUT_MS, encodeAlert, withDeadline } from "./handshake.ts";
import {
  ConnectionSlots,
  DEFAULT_AUTH_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_MEMORY,
  DEFAULT_MAX_PER_ADDRESS,
  MAX_OWED_REPLIES,
  MemoryBudget,
  PRE_AUTH_MAX_BODY,
  type Slot,
} from "./limits.ts";
import { MAX_RECORD_BODY } from "./record.ts";
import { writeAll } from "./io.ts";
import { type EphemeralKeyRing, startEphemeralKeys } from "./ephemeral.ts";
import { ensureServerKey, type ServerPrivateKey } from "./keys.ts";
import { type Logger, makeLogger } from "./log.ts";
import { errorReply, parseRequest, type Request } from "./messages.ts";
import type { StorageBackend } from "./storage/backend.ts";
import { drainFile, newPipelineRun, RequestHandler } from "./requests.ts";
import { formatBytes, formatDuration } from "./progress.ts";

/** Settings of a server. */
export interface ServerOptions {
  host?: string;
  port: number;
  /** Local storage folder (used when `openStorage` is not given). */
  root: string;
  /**
   * Opens the storage backend (default: the local folder `root`, loaded on
   * demand so that another backend's server loads none of its disk code).
   * May log what it found (e.g. the free-space reserve).
   */
  openStorage?: (log: Logger) => Promise<StorageBackend>;
  keyPath: string;
  /** Largest upload accepted, in bytes (default: no limit). */
  maxSize?: number;
  handshakeTimeoutMs?: number;
  /** Longest wait for the next record from a client (default 5 minutes). */
  idleTimeoutMs?: number;
  /**
   * Connections served at once (default 256). When full, the oldest
   * connection not yet admitted is evicted; if there is none, the newcomer
   * gets a "server busy" alert.
   */
  maxConnections?: number;
  /** Connections from one remote address (default 64; same eviction rule). */
  maxPerAddress?: number;
  /** Bytes of large-record buffers and keystreams in flight over all connections (default 256 MiB). */
  maxMemory?: number;
  /** With an authorized-clients file: time after the handshake to authenticate (default 10 s). */
  authTimeoutMs?: number;
  /** Admit only clients listed in this file (see auth.ts); re-read for every connection. */
  authorizedClientsPath?: string;
  /** Downloads and listings only, for every client. */
  readOnly?: boolean;
  /** How long an interrupted resumable upload is kept (default 24 h). */
  partialTtlMs?: number;
  /** Free space an upload must leave (default 1 GiB or 5 % of the disk); 0: no check. */
  minFreeBytes?: number;
  log?: Logger;
  /** Announces a freshly made key (default: the logger). */
  onKeyCreated?: (fingerprint: string, path: string) => void;
  /** Lifetime of each ephemeral (forward-secrecy) key (default 1 h; see ephemeral.ts). */
  ephemeralLifetimeMs?: number;
  /** Highest protocol version answered (default 2); 1 makes a v1-only server (tests). */
  maxVersion?: number;
  /** The clock the ephemeral windows are signed with (tests shift it). */
  ephemeralClock?: () => number;
}

/** Default time an interrupted resumable upload is kept. */
export const DEFAULT_PARTIAL_TTL_MS = 24 * 3_600_000;

/** The default backend: the local folder `opts.root`, its start-up facts logged. */
async function openLocalStorage(opts: ServerOptions, log: Logger): Promise<StorageBackend> {
  const { LocalStorage } = await import("./storage/local.ts");
  const storage = await LocalStorage.open(opts.root, {
    partialTtlMs: opts.partialTtlMs ?? DEFAULT_PARTIAL_TTL_MS,
    reserveBytes: opts.minFreeBytes,
  });
  log.info(
    storage.space.enforced
      ? `free-space reserve: uploads must leave ${formatBytes(storage.space.reserveBytes)} free`
      : `free-space reserve not enforced: ${storage.space.why}`,
  );
  if (storage.removedTemps > 0) {
    log.info(`removed ${storage.removedTemps} unfinished upload(s) left from an earlier run`);
  }
  return storage;
}

/** A running server. */
export class EfxServer {
  #listener: Deno.Listener;
  #key: ServerPrivateKey;
  #ephemeral: EphemeralKeyRing | undefined;
  #storage: StorageBackend;
  #requests: RequestHandler;
  #sweeper: ReturnType<typeof setInterval>;
  #opts: ServerOptions;
  #log: Logger;
  #active = new Set<SecureChannel | Transport>();
  #slots: ConnectionSlots;
  #budget: MemoryBudget;
  #handlers = new Set<Promise<void>>();
  #stopping = false;
  #stopped: Promise<void> | undefined;
  /** Resolves when the accept loop has ended. */
  readonly done: Promise<void>;

  private constructor(
    listener: Deno.Listener,
    key: ServerPrivateKey,
    storage: StorageBackend,
    opts: ServerOptions,
  ) {
    this.#listener = listener;
    this.#key = key;
    this.#storage = storage;
    this.#opts = opts;
    this.#log = opts.log ?? makeLogger("normal");
    this.#slots = new ConnectionSlots(
      opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      opts.maxPerAddress ?? DEFAULT_MAX_PER_ADDRESS,
    );
    this.#budget = new MemoryBudget(opts.maxMemory ?? DEFAULT_MAX_MEMORY);
    this.#requests = new RequestHandler(
      storage,
      { maxSize: opts.maxSize },
      this.#log,
    );
    const sweep = () =>
      storage.sweepPartials().then((n) => {
        if (n) this.#log.info(`removed ${n} expired partial upload(s)`);
      });
    sweep();
    const ttl = opts.partialTtlMs ?? DEFAULT_PARTIAL_TTL_MS;
    this.#sweeper = setInterval(sweep, Math.min(3_600_000, ttl));
    Deno.unrefTimer(this.#sweeper);
    this.done = this.#acceptLoop();
  }

  /** Opens storage (cleaning stale temp files), loads or makes the key, and listens. */
  static async start(opts: ServerOptions): Promise<EfxServer> {
    const log = opts.log ?? makeLogger("normal");
    const { key, created } = await ensureServerKey(opts.keyPath);
    if (created) {
      (opts.onKeyCreated ?? ((fp, p) => log.info(`made a new server key ${p}: ${fp}`)))(
        key.fingerprint,
        opts.keyPath,
      );
    }
    if (opts.authorizedClientsPath) await loadAuthorizedClients(opts.authorizedClientsPath);
    const storage = await (opts.openStorage ?? ((l) => openLocalStorage(opts, l)))(log);
    // The first ephemeral key exists before the port opens: no connection waits for it.
    const ephemeral = await startEphemeralKeys(key, opts, log);
    let listener: Deno.Listener;
    try {
      listener = Deno.listen({ hostname: opts.host ?? "0.0.0.0", port: opts.port });
    } catch (err) {
      ephemeral?.stop();
      const hint = err instanceof Deno.errors.NotCapable
        ? " ('deno task serve' may only use port 9000: see README, Least privilege)"
        : "";
      throw new EfxError(
        `cannot listen on ${opts.host ?? "0.0.0.0"}:${opts.port}: ${describeError(err)}${hint}`,
      );
    }
    const server = new EfxServer(listener, key, storage, { ...opts, log });
    server.#ephemeral = ephemeral;
    return server;
  }

  /** TEST HOOK: the ephemeral key ring (undefined for a v1-only server). */
  get ephemeralKeysForTesting(): EphemeralKeyRing | undefined {
    return this.#ephemeral;
  }

  /** The port actually listened on. */
  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  /** The server key's fingerprint. */
  get fingerprint(): string {
    return this.#key.fingerprint;
  }

  /** The limits in force, as one line for the startup log. */
  get limits(): string {
    const o = this.#opts;
    const auth = o.authorizedClientsPath
      ? `, ${(o.authTimeoutMs ?? DEFAULT_AUTH_TIMEOUT_MS) / 1000} s to authenticate`
      : "";
    const evictable = o.authorizedClientsPath ? "unauthenticated" : "still in the handshake";
    return `${this.#slots.maxTotal} connections (${this.#slots.maxPerAddress} per address; ` +
      `when full, the oldest ${evictable} is closed), ${
        formatBytes(this.#budget.max)
      } for records in flight, ` +
      `${(o.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS) / 1000} s handshake${auth}, ` +
      `${(o.idleTimeoutMs ?? 5 * 60_000) / 1000} s idle, ` +
      `max upload ${o.maxSize === undefined ? "unlimited" : formatBytes(o.maxSize)}`;
  }

  /** Where the files are (the local root's real path, or the store's address). */
  get root(): string {
    return this.#storage.label;
  }

  /** Stops accepting, aborts every connection (unfinished uploads are removed) and waits for cleanup. */
  shutdown(): Promise<void> {
    // Every caller waits for the same thing: connections aborted AND their
    // handlers finished (which is when unfinished uploads are removed).
    this.#stopped ??= (async () => {
      this.#stopping = true;
      clearInterval(this.#sweeper);
      this.#ephemeral?.stop();
      try {
        this.#listener.close();
      } catch { /* already closed */ }
      for (const c of this.#active) c instanceof SecureChannel ? c.abort() : safeClose(c);
      await this.done;
      await Promise.allSettled([...this.#handlers]);
    })();
    return this.#stopped;
  }

  async #acceptLoop(): Promise<void> {
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        if (this.#stopping) return;
        if (err instanceof Deno.errors.BadResource) return;
        this.#log.error(`accept failed: ${describeError(err)}`);
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      const h = this.#handle(conn).catch((err) =>
        this.#log.error(`internal error: ${describeError(err)}`)
      );
      this.#handlers.add(h);
      h.finally(() => this.#handlers.delete(h));
    }
  }

  async #handle(conn: Deno.Conn): Promise<void> {
    const addr = conn.remoteAddr as Deno.NetAddr;
    const peer = addr.hostname.includes(":")
      ? `[${addr.hostname}]:${addr.port}`
      : `${addr.hostname}:${addr.port}`;
    const log = this.#log;
    const closed = this.#opts.authorizedClientsPath !== undefined;
    // Evicted (to make room) while not admitted yet: say so, and hang up.
    let established: SecureChannel | undefined;
    const slot = this.#slots.take(addr.hostname, () => {
      log.info(
        `${peer} evicted: server full, and this connection had not ${
          closed ? "authenticated" : "finished its handshake"
        } yet`,
      );
      if (established) {
        established.sendAlert("busy", "server full: connection closed to make room; try again");
      } else safeClose(conn);
    });
    if (!("admit" in slot)) {
      log.info(
        `${peer} refused: ${
          slot.reason === "busy"
            ? `server busy (${this.#slots.size} connections)`
            : `${slot.message} (${this.#slots.maxPerAddress})`
        }`,
      );
      try {
        await writeAll(conn, encodeAlert(AlertCode.BUSY, `${slot.message}; try again later`));
      } catch { /* gone */ }
      safeClose(conn);
      return;
    }
    try {
      await this.#runConnection(conn, peer, slot, (c) => established = c);
    } finally {
      slot.release();
    }
  }

  async #runConnection(
    conn: Deno.Conn,
    peer: string,
    slot: Slot,
    established: (ch: SecureChannel) => void,
  ): Promise<void> {
    const log = this.#log;
    this.#active.add(conn);
    let ch: SecureChannel;
    const t0 = performance.now();
    try {
      ch = await SecureChannel.server(conn, {
        key: this.#key,
        ephemeral: this.#ephemeral,
        handshakeTimeoutMs: this.#opts.handshakeTimeoutMs,
        budget: this.#budget,
        maxBody: PRE_AUTH_MAX_BODY, // until admitted: small records, nothing computed ahead
        prefetch: false,
      });
    } catch (err) {
      this.#active.delete(conn);
      log.info(`${peer} handshake failed: ${describeError(err)}`);
      return;
    }
    this.#active.delete(conn);
    this.#active.add(ch);
    established(ch);
    if (slot.evicted) ch.abort(); // evicted during the handshake's last step
    // On an open server there is nothing to prove: admitted (no longer
    // evictable) now; with an authorized-clients file, once authenticated.
    if (this.#opts.authorizedClientsPath === undefined) slot.admit();
    ch.idleTimeoutMs = this.#opts.idleTimeoutMs ?? 5 * 60_000;
    log.info(`${peer} connected (handshake ${formatDuration(performance.now() - t0)})`);
    let requests = 0;
    const run = newPipelineRun();
    // Replies owed to pipelined uploads, sent strictly in request order; each
    // one's commit (fsync, rename) runs while the next file is received.
    let owed: Promise<void> = Promise.resolve();
    // The latest MAX_OWED_REPLIES steps, settled or not: when the oldest is
    // still unsettled, the client is not reading its replies, and its next
    // request is not read until it does (TCP then holds it back).
    const recent: Promise<unknown>[] = [];
    const later = (step: () => Promise<void>) => {
      owed = owed.then(step);
      owed.catch(() => {}); // rethrown by the next `await owed`
      recent.push(owed.catch(() => {}));
    };
    try {
      // With an authorized-clients file, a client must authenticate promptly.
      const authMs = this.#opts.authorizedClientsPath
        ? this.#opts.authTimeoutMs ?? DEFAULT_AUTH_TIMEOUT_MS
        : 0;
      let msg = authMs > 0
        ? await withDeadline(ch.recvMessageOrClose(), authMs, () => {}, "authenticating")
        : await ch.recvMessageOrClose();
      const auth = await this.#authorize(ch, msg, peer);
      if (auth === null) return;
      slot.admit();
      ch.setReceiveLimits({ maxBody: MAX_RECORD_BODY, prefetch: true });
      const rights = auth.rights;
      if (msg?.op === "auth") msg = await ch.recvMessageOrClose();
      while (msg !== null) {
        requests++;
        let req: Request | null = null;
        try {
          req = parseRequest(msg);
          if (!allows(rights, req.op)) {
            throw new RemoteError(
              "permission",
              `not permitted: this connection has ${
                rights === "rw" ? "read-write" : rights + "-only"
              } access`,
            );
          }
        } catch (err) {
          if (msg.op === "put" && msg.pipelined === true && msg.resume !== true) {
            // A pipelined upload's data follows its request regardless: read and drop it.
            await drainFile(ch);
            later(() => ch.sendMessage(errorReply(err)));
          } else {
            await owed;
            await ch.sendMessage(errorReply(err));
          }
          req = null;
        }
        const requester = { ch, peer, who: auth.who, quota: auth.quota };
        if (req?.op === "put" && req.pipelined) {
          later(await this.#requests.pipelinedPut(requester, req, run));
        } else if (req) {
          await owed;
          await this.#requests.flush(run);
          await this.#requests.serve(requester, req);
        }
        while (recent.length >= MAX_OWED_REPLIES) await recent.shift();
        msg = await ch.recvMessageOrClose();
      }
      await owed;
      await this.#requests.flush(run);
      await ch.close();
      log.info(`${peer} disconnected after ${requests} request(s)`);
    } catch (err) {
      const why = describeError(err);
      if (err instanceof RemoteError) {
        log.info(`${peer} connection ended by client: ${why}`);
        ch.abort();
      } else {
        log.info(`${peer} connection dropped: ${why}`);
        await ch.sendAlert(alertCode(err), why);
      }
    } finally {
      // Commits already under way finish (their data was complete and
      // verified) before the folders are synced and the handler ends.
      await this.#requests.settle(run);
      this.#active.delete(ch);
    }
  }

  /**
   * Decides what this connection may do from its first message: an `auth`
   * message is checked (signature over this session's transcript, then the
   * authorized-clients file when one is set); without one, an open server
   * grants its default rights and a closed one refuses. Returns null after
   * refusing (the connection is then closed).
   */
  async #authorize(
    ch: SecureChannel,
    first: Record<string, unknown> | null,
    peer: string,
  ): Promise<{ rights: Rights; who: string; quota?: number } | null> {
    const log = this.#log;
    const cap = (r: Rights): Rights | null =>
      this.#opts.readOnly ? (r === "write" ? null : "read") : r;
    const refuse = async (logLine: string, message: string) => {
      log.info(`${peer} refused: ${logLine}`);
      await ch.sendAlert("auth", message);
      return null;
    };
    const path = this.#opts.authorizedClientsPath;
    let list: AuthorizedClients | null = null;
    if (path) {
      try {
        list = await loadAuthorizedClients(path);
      } catch (err) {
        log.error(`authorized-clients file unusable, refusing everyone: ${describeError(err)}`);
        return await refuse("authorized-clients file unusable", "server misconfigured");
      }
    }
    if (first?.op !== "auth") {
      if (list) {
        return await refuse(
          "anonymous client (no identity key)",
          "this server admits only authorized clients; connect with --identity KEY (make one with 'efx keygen --client')",
        );
      }
      const r = cap("rw");
      return r ? { rights: r, who: "" } : null;
    }
    let fp: string;
    try {
      fp = await verifyClientAuth(first, ch.session.transcriptHash);
    } catch (err) {
      return await refuse(describeError(err), describeError(err));
    }
    const granted = list ? list.get(fp) : "rw";
    const rights = granted ? cap(granted) : null;
    if (!rights) {
      return await refuse(
        `client ${fp} is not authorized`,
        `client key ${fp} is not authorized on this server`,
      );
    }
    await ch.sendMessage({ ok: true, fingerprint: fp, rights });
    const quota = list?.quotas.get(fp);
    log.info(
      `${peer} authenticated as ${fp} (${rights}${
        quota === undefined ? "" : `, quota ${quota} bytes`
      })`,
    );
    return { rights, who: fp, quota };
  }
}

function alertCode(err: unknown): string {
  if (err instanceof EfxError) {
    const name = err.name.replace(/Error$/, "").toLowerCase();
    return name === "efx" ? "error" : name;
  }
  return "error";
}
