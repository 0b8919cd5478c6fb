/**
 * Request handling of `efx serve`: one authenticated connection's requests
 * against a {@linkcode StorageBackend}. Connection lifecycle (accept,
 * handshake, authorization, limits) stays in server.ts; this module only
 * turns requests into storage calls and replies, so any backend fits.
 *
 * Every request either gets its reply and leaves the channel in step, or
 * throws (the connection is then dropped). File data is committed only after
 * the whole-file SHA-256 the client sent matches what was received.
 *
 * @module
 */
import type { SecureChannel } from "./channel.ts";
import { describeError, RemoteError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { MemoryBudget } from "./limits.ts";
import { q } from "./log.ts";
import { errorReply, LS_BATCH, parseResumeAnswer, type Request } from "./messages.ts";
import { hashPrefix } from "./resume.ts";
import type { PartialClaim, StorageBackend, Upload } from "./storage/backend.ts";
import { StorageError } from "./storage/errors.ts";
import type { Reservation } from "./storage/quota.ts";
import { receiveFile, receiveStream, sendFile } from "./transfer.ts";
import { formatBytes, formatDuration, formatRate } from "./progress.ts";

/** Commits of pipelined uploads that may run at once on one connection. */
const MAX_PARALLEL_COMMITS = 16;

/** Per-connection state of a run of pipelined uploads. */
export interface PipelineRun {
  /** Sync keys of commits not yet made durable (see StorageBackend.sync). */
  dirty: Set<string>;
  /** The latest commit per final name (same-name commits run in order). */
  byKey: Map<string, Promise<unknown>>;
  /** Commits started and not yet awaited (bounded). */
  inflight: Promise<unknown>[];
}

/** A fresh {@linkcode PipelineRun}. */
export function newPipelineRun(): PipelineRun {
  return { dirty: new Set(), byKey: new Map(), inflight: [] };
}

/** Who sent a request, for rights-independent decisions and the log. */
export interface Requester {
  ch: SecureChannel;
  /** Address for the log. */
  peer: string;
  /** Client identity (key fingerprint; "" when anonymous). */
  who: string;
  /** Most bytes of stored files this client may own (authorized_clients `quota=`). */
  quota?: number;
}

/** Settings the request layer enforces itself (the backend enforces space). */
export interface RequestLimits {
  /** Largest upload accepted, in bytes. */
  maxSize?: number;
}

/** Memory a listing reserves: its names are capped at a third of this (see storage/local.ts). */
export const LISTING_RESERVE = 24 << 20;
/**
 * Listings built or being sent at once, server-wide. Each holds
 * {@linkcode LISTING_RESERVE} from before its walk until it is sent, so
 * listings nobody reads cannot grow memory: the next ones wait instead. Kept
 * apart from the record budget, so that stalled records never hold up
 * listings (nor the reverse).
 */
export const MAX_LISTINGS = 4;
/** A listing reply message is cut at about this many bytes of JSON (and 1000 entries). */
const LISTING_BATCH_BYTES = 256 << 10;

/** Serves requests against one storage backend. */
export class RequestHandler {
  #storage: StorageBackend;
  #limits: RequestLimits;
  #listings = new MemoryBudget(MAX_LISTINGS * LISTING_RESERVE);
  #log: Logger;

  constructor(storage: StorageBackend, limits: RequestLimits, log: Logger) {
    this.#storage = storage;
    this.#limits = limits;
    this.#log = log;
  }

  /** Makes a run's commits durable (once per folder at the end of a run). */
  async flush(run: PipelineRun): Promise<void> {
    const keys = [...run.dirty];
    run.dirty.clear();
    await this.#storage.sync(keys);
  }

  /** Waits for a run's commits still under way, then flushes it. Never throws. */
  async settle(run: PipelineRun): Promise<void> {
    await Promise.allSettled(run.inflight);
    await this.flush(run).catch(() => {});
  }

  /**
   * Checks the client's quota for an upload of `size` bytes as `name`; its
   * other partial uploads count too. The reservation is confirmed again
   * right before the name appears, and released however the upload ends.
   */
  async #reserve(r: Requester, name: string, size: number): Promise<Reservation> {
    if (r.quota === undefined) return { confirm: () => {}, release: () => {} };
    const partials = await this.#storage.partialBytes(r.who, name);
    return this.#storage.quotas.reserve(r.who, r.quota - partials, name, size);
  }

  #checkSize(name: string, size: number): void {
    const max = this.#limits.maxSize;
    if (max !== undefined && size > max) {
      throw new StorageError(
        "too-large",
        `${name} is too large for the server: ${size} bytes, the limit is ${max} bytes`,
      );
    }
  }

  /**
   * A pipelined upload (small files sent back to back): checks, receives
   * and verifies it now, and returns the step that commits it and replies,
   * to be run after the replies owed before it. Throws only when the
   * connection must be dropped.
   */
  async pipelinedPut(
    r: Requester,
    req: Extract<Request, { op: "put" }>,
    run: PipelineRun,
  ): Promise<() => Promise<void>> {
    const { ch, peer, who } = r;
    const t0 = performance.now();
    const what = `put ${q(req.name)}`;
    const refuse = (err: unknown) => async () => {
      if (ch.broken) throw err;
      await ch.sendMessage(errorReply(err));
      this.#log.info(`${peer} ${what}: failed: ${describeError(err)}`);
    };
    let upload: Upload;
    let held: Reservation | undefined;
    const unreserve = () => held?.release();
    try {
      this.#checkSize(req.name, req.size);
      held = await this.#reserve(r, req.name, req.size);
      upload = await this.#storage.beginWrite(req.name, {
        force: req.force,
        size: req.size,
        who,
      });
    } catch (err) {
      unreserve();
      await drainFile(ch);
      return refuse(err);
    }
    let peerSha256: string;
    try {
      ({ peerSha256 } = await receiveStream(ch, upload, req.size));
    } catch (err) {
      unreserve();
      if (ch.broken) throw err;
      return refuse(err);
    }
    // Commit now, while the next files are received; several commits (and
    // their fsyncs) may run at once, but two of the same name run in order.
    while (run.inflight.length >= MAX_PARALLEL_COMMITS) {
      await run.inflight.shift()!.catch(() => {});
    }
    const key = upload.key;
    const before = run.byKey.get(key) ?? Promise.resolve();
    const committed = before.catch(() => {}).then(() =>
      upload.commit({
        mode: req.mode,
        mtime: req.mtime,
        expectedSha256: peerSha256,
        force: req.force,
        durable: false, // once per folder at the end of the run
        beforePlace: held?.confirm,
      })
    );
    committed.then(
      (res) => this.#storage.quotas.wrote(req.name, res.bytes, who, r.quota !== undefined),
      () => {},
    ).finally(unreserve);
    run.byKey.set(key, committed);
    run.inflight.push(committed);
    return async () => {
      let res;
      try {
        res = await committed;
      } catch (err) {
        return await refuse(err)();
      } finally {
        if (run.byKey.get(key) === committed) run.byKey.delete(key);
      }
      if (res.syncKey !== undefined) run.dirty.add(res.syncKey);
      await this.#storage.dropPartial(req.name, who); // an older partial is stale now
      await ch.sendMessage({ ok: true, sha256: res.sha256, bytes: res.bytes });
      const ms = performance.now() - t0;
      this.#log.info(
        `${peer} ${what} ${formatBytes(res.bytes)} in ${formatDuration(ms)} (${
          formatRate(res.bytes / (ms / 1000))
        }): ok`,
      );
    };
  }

  /** Serves one request. Throws only when the connection must be dropped. */
  async serve(r: Requester, req: Request): Promise<void> {
    const { ch, peer } = r;
    const t0 = performance.now();
    const log = this.#log;
    const storage = this.#storage;
    const done = (what: string, bytes: number, result: string) => {
      const ms = performance.now() - t0;
      log.info(
        `${peer} ${what} ${formatBytes(bytes)} in ${formatDuration(ms)} (${
          formatRate(bytes / (ms / 1000))
        }): ${result}`,
      );
    };
    const replyError = async (what: string, err: unknown) => {
      if (ch.broken) throw err;
      await ch.sendMessage(errorReply(err));
      log.info(`${peer} ${what}: failed: ${describeError(err)}`);
    };
    /** Runs a storage step whose success reply is `{ok: true}`. */
    const simple = async (what: string, step: () => Promise<void>) => {
      try {
        await step();
      } catch (err) {
        return await replyError(what, err);
      }
      await ch.sendMessage({ ok: true });
      done(what, 0, "ok");
    };
    switch (req.op) {
      case "put":
        return await this.#put(r, req, t0);
      case "get":
        return await this.#get(r, req, t0);
      case "tree":
      case "ls": {
        const what = req.op === "ls" ? `ls ${q(req.pattern ?? "")}` : `tree ${q(req.name)}`;
        const budget = this.#listings;
        const abort = new AbortController();
        const onBroken = setInterval(() => ch.broken && abort.abort(), 1000);
        try {
          await budget.acquire(LISTING_RESERVE, abort.signal);
        } finally {
          clearInterval(onBroken);
        }
        try {
          let entries;
          try {
            entries = req.op === "ls"
              ? await storage.list(req.pattern, { recursive: req.recursive })
              : await storage.tree(req.name);
          } catch (err) {
            return await replyError(what, err);
          }
          await sendBatches(ch, entries);
          log.debug(`${peer} ${what}: ${entries.length} entries`);
        } finally {
          budget.release(LISTING_RESERVE);
        }
        return;
      }
      case "mkdir":
        return await simple(
          `mkdir ${q(req.name)}`,
          () => storage.mkdir(req.name, { mode: req.mode, mtime: req.mtime }),
        );
      case "symlink":
        return await simple(`symlink ${q(req.name)} -> ${q(req.target)}`, async () => {
          // A link is stored data too: it counts against the quota (and the
          // backend checks the free-space reserve).
          const size = new TextEncoder().encode(req.target).length;
          const held = await this.#reserve(r, req.name, size);
          try {
            await storage.symlink(req.name, req.target, { force: req.force, mtime: req.mtime });
            storage.quotas.wrote(req.name, size, r.who, r.quota !== undefined);
          } finally {
            held.release();
          }
        });
      case "rm":
        return await simple(`rm${req.recursive ? " -r" : ""} ${q(req.name)}`, async () => {
          await storage.remove(req.name, { recursive: req.recursive });
          storage.quotas.removed(req.name, req.recursive);
        });
      case "rmdir":
        return await simple(`rmdir ${q(req.name)}`, () => storage.remove(req.name, { dir: true }));
      case "mv":
        return await simple(`mv ${q(req.from)} ${q(req.to)}`, async () => {
          await storage.rename(req.from, req.to, { force: req.force });
          storage.quotas.moved(req.from, req.to);
        });
    }
  }

  async #put(r: Requester, req: Extract<Request, { op: "put" }>, t0: number): Promise<void> {
    const { ch, peer, who } = r;
    const storage = this.#storage;
    const what = `put ${q(req.name)}`;
    const replyError = async (err: unknown) => {
      if (ch.broken) throw err;
      await ch.sendMessage(errorReply(err));
      this.#log.info(`${peer} ${what}: failed: ${describeError(err)}`);
    };
    const limits = { force: req.force, size: req.size, who };
    let claim: PartialClaim | null = null;
    let upload: Upload;
    let offset = 0;
    let held: Reservation | undefined;
    const unreserve = () => held?.release();
    try {
      this.#checkSize(req.name, req.size);
      held = await this.#reserve(r, req.name, req.size);
      if (req.resume) {
        // Check before the offer: nothing may be created for a refused name.
        await storage.checkWrite(req.name, limits);
        claim = await storage.claimPartial(req.name, who, () => ch.abort());
        await ch.sendMessage({ ok: true, offset: claim.offset });
        const answer = parseResumeAnswer(await ch.recvMessage(), claim.offset);
        // Go on only if the client proves it has the same prefix; else
        // start over (which overwrites the partial).
        if (answer.offset > 0 && await claim.checkPrefix(answer.offset, answer.prefixSha256!)) {
          offset = answer.offset;
        }
      }
      upload = await storage.beginWrite(req.name, {
        ...limits,
        partial: claim ? { claim, offset } : undefined,
      });
    } catch (err) {
      claim?.release();
      unreserve();
      return await replyError(err);
    }
    try {
      await ch.sendMessage({ ok: true, offset });
      const res = await receiveFile(ch, upload, req.size - offset, (peerSha) =>
        upload.commit({
          mode: req.mode,
          mtime: req.mtime,
          expectedSha256: peerSha,
          force: req.force,
          beforePlace: held?.confirm,
        }));
      storage.quotas.wrote(req.name, res.bytes, who, r.quota !== undefined);
      await ch.sendMessage({ ok: true, sha256: res.sha256, bytes: res.bytes });
      if (!claim) await storage.dropPartial(req.name, who); // an older partial is stale now
      this.#log.debug(`${peer} ${what} sha256 sent ${res.peerSha256} received ${res.sha256}`);
      const ms = performance.now() - t0;
      this.#log.info(
        `${peer} ${what} ${formatBytes(res.bytes - offset)} in ${formatDuration(ms)} (${
          formatRate((res.bytes - offset) / (ms / 1000))
        }): ${offset ? `ok (resumed at byte ${offset})` : "ok"}`,
      );
    } catch (err) {
      await upload.abort(); // a resumable partial is kept for a later resume
      return await replyError(err);
    } finally {
      claim?.release();
      unreserve();
    }
  }

  async #get(r: Requester, req: Extract<Request, { op: "get" }>, t0: number): Promise<void> {
    const { ch, peer } = r;
    const what = `get ${q(req.name)}`;
    let file;
    try {
      file = await this.#storage.openRead(req.name);
    } catch (err) {
      if (ch.broken) throw err;
      await ch.sendMessage(errorReply(err));
      this.#log.info(`${peer} ${what}: failed: ${describeError(err)}`);
      return;
    }
    const info = file.info;
    try {
      // Resume only when our file starts with exactly the client's prefix.
      let offset = 0;
      let hash;
      if (req.offset > 0 && req.prefixSha256 && req.offset <= info.size) {
        const h = await hashPrefix(file, req.offset);
        if (h.copy().digest("hex") === req.prefixSha256) {
          offset = req.offset;
          hash = h;
        }
      }
      await file.seek(offset);
      await ch.sendMessage({
        ok: true,
        size: info.size,
        mode: info.mode,
        mtime: info.mtime,
        offset,
      });
      const sent = await sendFile(ch, file, { length: info.size - offset, hash });
      this.#log.debug(`${peer} ${what} sha256 ${sent.sha256}`);
      const ms = performance.now() - t0;
      this.#log.info(
        `${peer} ${what} ${formatBytes(sent.bytes)} in ${formatDuration(ms)} (${
          formatRate(sent.bytes / (ms / 1000))
        }): ${offset ? `sent (resumed at byte ${offset})` : "sent"}`,
      );
    } catch (err) {
      if (err instanceof RemoteError && !ch.broken) {
        this.#log.info(`${peer} ${what}: failed: ${describeError(err)}`);
        return;
      }
      throw err;
    } finally {
      file.close();
    }
  }
}

/** Reads and drops one incoming file stream and its trailer. */
export async function drainFile(ch: SecureChannel): Promise<void> {
  for await (const _ of ch.recvStream()) { /* dropped */ }
  await ch.recvMessage();
}

/**
 * Sends a listing as `{ok, entries, more}` messages of at most LS_BATCH
 * entries and about {@linkcode LISTING_BATCH_BYTES} of JSON each, so that no
 * message comes near the record limit whatever the names.
 */
async function sendBatches(ch: SecureChannel, entries: unknown[]): Promise<void> {
  let i = 0;
  do {
    const batch: unknown[] = [];
    let bytes = 0;
    while (i < entries.length && batch.length < LS_BATCH && bytes < LISTING_BATCH_BYTES) {
      const e = entries[i++];
      bytes += JSON.stringify(e).length * 3; // UTF-8 of JSON text: at most 3 bytes per unit
      batch.push(e);
    }
    await ch.sendMessage({ ok: true, entries: batch, more: i < entries.length });
  } while (i < entries.length);
}
