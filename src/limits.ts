/**
 * The server's resource limits against hostile (or just numerous) clients:
 * a global memory budget for record buffers and keystreams, and connection
 * slots with a global and a per-address cap.
 *
 * Design (what a peer can make the server hold):
 * - Memory: a record's body buffer and keystream are allocated only once its
 *   first body bytes have arrived (record.ts), and a large record (above
 *   {@linkcode SMALL_RECORD}) first reserves its bytes from one
 *   {@linkcode MemoryBudget} shared by all connections. When the budget is
 *   spent, the connection waits (it stops reading, so TCP pushes back on the
 *   peer) instead of allocating. Small records are bounded per connection
 *   and by the connection caps. Before a connection is admitted (its first
 *   message accepted: authenticated on a server with an authorized-clients
 *   file), records are limited to {@linkcode PRE_AUTH_MAX_BODY} bytes and no
 *   keystream is computed ahead.
 * - Slots: {@linkcode ConnectionSlots} caps connections in total and per
 *   remote address. When a cap is reached, the oldest connection in that
 *   scope that has not been admitted yet is evicted to make room; only when
 *   every connection in scope is admitted is the newcomer refused ("busy").
 *   On a server with an authorized-clients file a connection is admitted
 *   once it has authenticated (which it must do within the auth timeout);
 *   on an open server, where anyone may connect and there is nothing to
 *   prove, once its handshake is done (an idle interactive session is a
 *   legitimate user there). So idle unauthenticated connections cannot lock
 *   authorized clients out, slow handshakes cannot hold slots, and one
 *   address cannot take every slot.
 *
 * @module
 */

/** Records up to this body size skip the budget (bounded per connection instead). */
export const SMALL_RECORD = 64 * 1024;
/** Largest record body accepted before a connection is admitted. */
export const PRE_AUTH_MAX_BODY = 64 * 1024;
/** Default of `--max-memory`: bytes of large-record buffers and keystreams in flight. */
export const DEFAULT_MAX_MEMORY = 256 * 1024 * 1024;
/** Default of `--max-per-address`. */
export const DEFAULT_MAX_PER_ADDRESS = 64;
/** Default of `--max-connections`. */
export const DEFAULT_MAX_CONNECTIONS = 256;
/** Default of `--auth-timeout`: time after the handshake to authenticate (authorized-clients servers). */
export const DEFAULT_AUTH_TIMEOUT_MS = 10_000;
/**
 * Replies a connection may owe (pipelined uploads answered but not yet
 * written because the client does not read) before the server stops
 * reading its requests.
 */
export const MAX_OWED_REPLIES = 64;

/**
 * A count of bytes in flight with an upper bound, shared by all
 * connections. {@linkcode acquire} waits (first come, first served) until
 * the bytes fit; a single request larger than the whole budget is granted
 * when nothing else is held, so it cannot wait forever. Whoever acquires
 * must release exactly the same number of bytes once.
 *
 * Holders must not wait for more while holding: a reservation is taken
 * once per record, for all it needs, and returned when the record is done.
 *
 * @example
 * ```ts
 * const budget = new MemoryBudget(256 * 1024 * 1024);
 * await budget.acquire(1 << 20);
 * try { ... } finally { budget.release(1 << 20); }
 * ```
 */
export class MemoryBudget {
  /** The bound, in bytes. */
  readonly max: number;
  #used = 0;
  #waiters: { n: number; grant: () => void }[] = [];

  constructor(max: number) {
    if (!(max > 0)) throw new RangeError("memory budget must be positive");
    this.max = max;
  }

  /** Bytes currently reserved. */
  get used(): number {
    return this.#used;
  }

  /** Connections waiting for room. */
  get waiting(): number {
    return this.#waiters.length;
  }

  #fits(n: number): boolean {
    return this.#used + n <= this.max || this.#used === 0;
  }

  /** Reserves `n` bytes now if they fit and nobody is waiting; false otherwise. */
  tryAcquire(n: number): boolean {
    if (this.#waiters.length > 0 || !this.#fits(n)) return false;
    this.#used += n;
    return true;
  }

  /**
   * Reserves `n` bytes, waiting until they fit. Rejects with `signal`'s
   * reason (nothing reserved) when it is aborted while waiting.
   */
  acquire(n: number, signal?: AbortSignal): Promise<void> {
    if (this.tryAcquire(n)) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<void>((resolve, reject) => {
      const w = {
        n,
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(signal!.reason);
        this.#wake(); // the first waiter may fit now that this one left
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(w);
    });
  }

  /** Returns `n` bytes reserved earlier; wakes waiters that now fit, in order. */
  release(n: number): void {
    if (n <= 0) return;
    this.#used -= n;
    if (this.#used < 0) this.#used = 0; // never below zero, even after a bug
    this.#wake();
  }

  #wake(): void {
    while (this.#waiters.length > 0 && this.#fits(this.#waiters[0].n)) {
      const w = this.#waiters.shift()!;
      this.#used += w.n;
      w.grant();
    }
  }
}

/** One connection's place in {@linkcode ConnectionSlots}. */
export interface Slot {
  /** The remote address (host only) it counts against. */
  readonly address: string;
  /** Marks the connection admitted: it can no longer be evicted. */
  admit(): void;
  /** Frees the slot (idempotent; an evicted slot is freed already). */
  release(): void;
  /** True once evicted (the connection is being closed). */
  readonly evicted: boolean;
}

interface Entry {
  address: string;
  since: number;
  admitted: boolean;
  evicted: boolean;
  evict: () => void;
}

/** Why a connection was not given a slot. */
export type Refusal = { reason: "busy" | "address"; message: string };

/**
 * Connection slots: at most `maxTotal` connections at once and at most
 * `maxPerAddress` from one remote address. {@linkcode take} makes room by
 * evicting the oldest not-yet-admitted connection in the full scope (the
 * address for the per-address cap, everyone for the global cap); the
 * caller decides when a connection is admitted (see the module doc).
 * Admitted connections are never evicted: they end by themselves (idle
 * timeout, close).
 */
export class ConnectionSlots {
  readonly maxTotal: number;
  readonly maxPerAddress: number;
  #entries = new Set<Entry>();
  #perAddress = new Map<string, number>();

  constructor(maxTotal: number, maxPerAddress: number) {
    this.maxTotal = maxTotal;
    this.maxPerAddress = maxPerAddress;
  }

  /** Connections holding a slot. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * A slot for a new connection from `address`, or a refusal. `evict` is
   * called (once) if this connection is later evicted to make room; it must
   * close the connection.
   */
  take(address: string, evict: () => void): Slot | Refusal {
    if ((this.#perAddress.get(address) ?? 0) >= this.maxPerAddress) {
      if (!this.#evictOldest((e) => e.address === address)) {
        return { reason: "address", message: "too many connections from your address" };
      }
    }
    if (this.#entries.size >= this.maxTotal && !this.#evictOldest(() => true)) {
      return { reason: "busy", message: "too many connections" };
    }
    const e: Entry = { address, since: performance.now(), admitted: false, evicted: false, evict };
    this.#add(e);
    const remove = () => this.#remove(e);
    return {
      address,
      admit: () => {
        e.admitted = true;
      },
      release: remove,
      get evicted() {
        return e.evicted;
      },
    };
  }

  #add(e: Entry): void {
    this.#entries.add(e);
    this.#perAddress.set(e.address, (this.#perAddress.get(e.address) ?? 0) + 1);
  }

  #remove(e: Entry): void {
    if (!this.#entries.delete(e)) return;
    const n = (this.#perAddress.get(e.address) ?? 1) - 1;
    if (n <= 0) this.#perAddress.delete(e.address);
    else this.#perAddress.set(e.address, n);
  }

  /** Evicts the oldest non-admitted entry matching `scope`; false if there is none. */
  #evictOldest(scope: (e: Entry) => boolean): boolean {
    let oldest: Entry | undefined;
    // Insertion order is age order: the first match is the oldest.
    for (const e of this.#entries) {
      if (!e.admitted && scope(e)) {
        oldest = e;
        break;
      }
    }
    if (!oldest) return false;
    oldest.evicted = true;
    this.#remove(oldest);
    try {
      oldest.evict();
    } catch { /* closing an already closed connection */ }
    return true;
  }
}
