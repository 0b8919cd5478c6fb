/**
 * Per-client quotas (`quota=SIZE` in authorized_clients): how many bytes of
 * stored files a client may own.
 *
 * A client owns the files it uploaded, under the name it uploaded them,
 * until they are removed, replaced or renamed (a rename keeps the owner).
 * Only clients with a quota are tracked. The ledger is an append-only log per
 * identity in the storage's private staging area
 * (`<root>/.efx-staging/usage/<sha256(identity)>.log`, one JSON line per
 * change), read once at start and compacted then. Files changed behind the
 * server's back (by the operator) are not seen until they are touched
 * through efx; a removed file simply stops counting.
 *
 * @example
 * ```ts
 * const ledger = QuotaLedger.open("/srv/efx/.efx-staging/usage", ensureDir);
 * ledger.check("SHA256:...", 10 << 30, "big.iso", 4 << 30); // throws StorageError("quota")
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { formatBytes } from "../progress.ts";
import { StorageError } from "./errors.ts";

interface Owned {
  who: string;
  size: number;
}

/** An upload's hold on quota room: confirmed before it lands, released however it ends. */
export interface Reservation {
  confirm(): void;
  release(): void;
}

/** Ledger key of the partial upload at `rel` (its path in the staging area): partials count too. */
export function partialKey(rel: string): string {
  return `\0partial/${rel}`;
}

/** Who owns what, for the clients that have a quota. */
export class QuotaLedger {
  #dir: string;
  #ensureDir: () => void;
  #owners = new Map<string, Owned>();
  #usage = new Map<string, number>();
  /** Declared sizes of uploads under way, per identity. */
  #pending = new Map<string, number>();
  /** Lines in each identity's log since it was last compacted. */
  #lines = new Map<string, number>();
  /** Entries each identity's log held when last compacted. */
  #compacted = new Map<string, number>();

  private constructor(dir: string, ensureDir: () => void) {
    this.#dir = dir;
    this.#ensureDir = ensureDir;
  }

  /** Reads (and compacts) the logs in `dir`; nothing is written until the first change. */
  static open(dir: string, ensureDir: () => void): QuotaLedger {
    const l = new QuotaLedger(dir, ensureDir);
    let entries: Deno.DirEntry[] = [];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch { /* none yet */ }
    for (const e of entries) {
      if (!e.isFile || !e.name.endsWith(".log")) continue;
      const path = join(dir, e.name);
      let who: string | null = null;
      const owned = new Map<string, number>();
      for (const line of Deno.readTextFileSync(path).split("\n")) {
        if (line === "") continue;
        try {
          const r = JSON.parse(line);
          if (typeof r.who === "string") who = r.who;
          else if (typeof r.n === "string" && typeof r.s === "number") {
            if (r.s < 0) owned.delete(r.n);
            else owned.set(r.n, r.s);
          }
        } catch { /* a torn last line after a crash */ }
      }
      if (who === null) continue;
      for (const [name, size] of owned) l.#owners.set(name, { who, size });
      l.#lines.set(who, owned.size + 1);
      l.#compacted.set(who, owned.size);
      const lines = [
        JSON.stringify({ who }),
        ...[...owned].map(([n, s]) => JSON.stringify({ n, s })),
      ];
      const tmp = `${path}.tmp`;
      try {
        Deno.writeTextFileSync(tmp, lines.join("\n") + "\n", { mode: 0o600 });
        Deno.renameSync(tmp, path);
      } catch { /* read-only: keep the long log */ }
    }
    // An entry may appear in two logs (a file replaced by another client):
    // the later open wins; usage follows the owners map.
    for (const o of l.#owners.values()) l.#usage.set(o.who, (l.#usage.get(o.who) ?? 0) + o.size);
    return l;
  }

  /** Bytes owned by `who`. */
  usage(who: string): number {
    return this.#usage.get(who) ?? 0;
  }

  /**
   * Refuses (StorageError "quota") an upload of `size` bytes as `name` that
   * would take `who` over `quota`, counting its uploads under way and
   * crediting a file of the same name it already owns; else reserves the
   * bytes until {@linkcode QuotaLedger.settle}.
   */
  reserve(who: string, quota: number, name: string, size: number): Reservation {
    this.#check(who, quota, name, size, 0);
    this.#pending.set(who, (this.#pending.get(who) ?? 0) + size);
    let done = false;
    return {
      // Again right before the name appears (synchronously with it): the
      // file it replaces may have been renamed away meanwhile, so its
      // credit is taken from the ledger as it is now.
      confirm: () => {
        if (!done) this.#check(who, quota, name, size, size);
      },
      release: () => {
        if (done) return;
        done = true;
        this.#pending.set(who, (this.#pending.get(who) ?? size) - size);
      },
    };
  }

  /** Throws when `size` more bytes as `name` (`held` of them already pending) exceed `quota`. */
  #check(who: string, quota: number, name: string, size: number, held: number): void {
    const replaced = this.#owners.get(name);
    const credit = replaced?.who === who ? replaced.size : 0;
    const used = this.usage(who) + (this.#pending.get(who) ?? 0) - held;
    if (used + size - credit > quota) {
      throw new StorageError(
        "quota",
        `${name} would exceed your quota on the server: ${formatBytes(used)} of ${
          formatBytes(quota)
        } used, ${formatBytes(size)} more asked`,
      );
    }
  }

  /** A file `name` of `size` bytes was committed by `who` (tracked when `tracked`). */
  wrote(name: string, size: number, who: string, tracked: boolean): void {
    this.removed(name);
    if (!tracked) return;
    this.#owners.set(name, { who, size });
    this.#usage.set(who, this.usage(who) + size);
    this.#append(who, { n: name, s: size });
  }

  /** `name` (and, with `tree`, everything below it) no longer exists. */
  removed(name: string, tree = false): void {
    for (const n of this.#names(name, tree)) {
      const o = this.#owners.get(n)!;
      this.#owners.delete(n);
      this.#usage.set(o.who, this.usage(o.who) - o.size);
      this.#append(o.who, { n, s: -1 });
    }
  }

  /** `from` (a file or a folder) is now `to`; owners are kept. */
  moved(from: string, to: string): void {
    this.removed(to, true);
    for (const n of this.#names(from, true)) {
      const o = this.#owners.get(n)!;
      const m = to + n.slice(from.length);
      this.#owners.delete(n);
      this.#owners.set(m, o);
      this.#append(o.who, { n, s: -1 });
      this.#append(o.who, { n: m, s: o.size });
    }
  }

  #ownedBy(who: string): [string, number][] {
    const out: [string, number][] = [];
    for (const [n, o] of this.#owners) if (o.who === who) out.push([n, o.size]);
    return out;
  }

  /** Rewrites `who`'s log as what it owns now: the log stays proportional to that. */
  #compact(who: string, path: string): void {
    const owned = this.#ownedBy(who);
    const text = [JSON.stringify({ who }), ...owned.map(([n, s]) => JSON.stringify({ n, s }))]
      .join("\n") + "\n";
    try {
      this.#ensureDir();
      const tmp = `${path}.tmp`;
      Deno.writeTextFileSync(tmp, text, { mode: 0o600 });
      Deno.renameSync(tmp, path);
      this.#lines.set(who, owned.length + 1);
      this.#compacted.set(who, owned.length);
    } catch { /* best effort */ }
  }

  #names(name: string, tree: boolean): string[] {
    const out: string[] = [];
    if (this.#owners.has(name)) out.push(name);
    if (tree) {
      const prefix = `${name}/`;
      for (const n of this.#owners.keys()) if (n.startsWith(prefix)) out.push(n);
    }
    return out;
  }

  #append(who: string, rec: Record<string, unknown>): void {
    const path = join(this.#dir, `${createHash("sha256").update(who).digest("hex")}.log`);
    const lines = (this.#lines.get(who) ?? 0) + 1;
    this.#lines.set(who, lines);
    // Compacted once it is four times what it describes (checked cheaply).
    if (lines > 64 + 4 * (this.#compacted.get(who) ?? 0)) {
      this.#compact(who, path);
      return;
    }
    try {
      this.#ensureDir();
      let head = "";
      try {
        Deno.lstatSync(path);
      } catch {
        head = JSON.stringify({ who }) + "\n";
      }
      Deno.writeTextFileSync(path, head + JSON.stringify(rec) + "\n", {
        append: true,
        mode: 0o600,
      });
    } catch { /* best effort: the in-memory ledger still enforces until restart */ }
  }
}
