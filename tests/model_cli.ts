/**
 * A seeded, model-based end-to-end test of the CLI: random sequences of
 * operations (uploads of several files of random sizes into remote folders,
 * pattern and multi-name downloads, `-r` trees with links, `--update` and
 * `--checksum` re-runs, `mv`, `rm [-r]`, `mkdir`, `rmdir`, an upload killed
 * half-way and continued with `--resume`, prompt sessions) run through the
 * real `efx` CLI against a real server started under the serve task's
 * permissions. After every step the server's storage folder on disk and an
 * `ls -r` are compared with an in-memory model of the remote tree, and the
 * local folder the step wrote with the model of local files.
 *
 * Names are typed by their first letter (`f`/`n`/`r` files, `d`/`k`/`t`
 * folders, `l` links, `m` anything moved), so a path never changes its kind
 * and the model stays simple; refusals are still exercised on purpose
 * (existing names without -f, rmdir of a full folder, rm of a folder
 * without -r, moving onto an existing name).
 *
 * Used by tests/model_cli_test.ts (a fixed seed in CI) and tests/fuzz_cli.ts
 * (`deno task fuzz-cli --seed N --ops M`). A failure names the seed and the
 * step, so it can be replayed.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { lutimes } from "node:fs/promises";
import {
  clientArgs,
  connectClient,
  efx,
  type EfxResult,
  makeWorkDir,
  sha256,
  sha256File,
  spawnEfx,
  startServer,
} from "./helpers/server.ts";
import { linkStaysInside } from "../src/folders.ts";
import type { FileInfo } from "../src/messages.ts";

/** One remote (or local) entry of the model. */
export type Entry =
  | { type: "file"; sha: string; size: number; mtime: number }
  | { type: "dir" }
  | { type: "symlink"; target: string };

/** Options of a run. */
export interface ModelOptions {
  seed: number;
  /** Operations to run (a prompt session counts each of its commands). */
  ops: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/** What a run did. */
export interface ModelReport {
  ops: number;
  steps: number;
  cliRuns: number;
  bytesUp: number;
  /** Killed uploads that `--resume` continued from a partial (not from zero). */
  resumed: number;
  ms: number;
  kinds: Record<string, number>;
}

/** A small, fast, seeded generator (mulberry32). */
export function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick<T>(xs: readonly T[]): T {
      return xs[Math.floor(next() * xs.length)];
    },
    chance: (p: number) => next() < p,
    bytes(n: number): Uint8Array {
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i += 4) {
        const v = (next() * 4294967296) >>> 0;
        out[i] = v;
        if (i + 1 < n) out[i + 1] = v >>> 8;
        if (i + 2 < n) out[i + 2] = v >>> 16;
        if (i + 3 < n) out[i + 3] = v >>> 24;
      }
      return out;
    },
  };
}

type Rng = ReturnType<typeof rng>;

/** Random file size: mostly small, some medium, a few up to 3 MiB; zero included. */
function size(r: Rng): number {
  const x = r.next();
  if (x < 0.1) return 0;
  if (x < 0.75) return 1 + r.int(4096);
  if (x < 0.95) return 4096 + r.int(200_000);
  return 1_000_000 + r.int(2 * 1024 * 1024);
}

const parentOf = (name: string) => name.includes("/") ? name.slice(0, name.lastIndexOf("/")) : "";
const baseOf = (name: string) => name.slice(name.lastIndexOf("/") + 1);
const join2 = (dir: string, name: string) => dir === "" ? name : `${dir}/${name}`;

/** The model of the server's tree. */
export class RemoteModel {
  entries = new Map<string, Entry>();

  dirs(): string[] {
    return ["", ...[...this.entries].filter(([, e]) => e.type === "dir").map(([n]) => n)];
  }

  ofType(type: Entry["type"]): string[] {
    return [...this.entries].filter(([, e]) => e.type === type).map(([n]) => n);
  }

  /** True when `name` could be created: every parent is a folder or absent. */
  creatable(name: string): boolean {
    for (let p = parentOf(name); p !== ""; p = parentOf(p)) {
      const e = this.entries.get(p);
      if (e && e.type !== "dir") return false;
    }
    return true;
  }

  /** Adds `name` and the folders it needs. */
  set(name: string, e: Entry): void {
    for (let p = parentOf(name); p !== ""; p = parentOf(p)) {
      if (!this.entries.has(p)) this.entries.set(p, { type: "dir" });
    }
    this.entries.set(name, e);
  }

  /** Everything below `name` (not `name` itself), with names relative to it. */
  below(name: string): [string, Entry][] {
    return [...this.entries].filter(([n]) => n.startsWith(name + "/")).map((
      [n, e],
    ) => [n.slice(name.length + 1), e]);
  }

  remove(name: string): void {
    this.entries.delete(name);
    for (const [rel] of this.below(name)) this.entries.delete(`${name}/${rel}`);
  }

  move(from: string, to: string): void {
    const e = this.entries.get(from)!;
    const inner = this.below(from);
    this.remove(from);
    this.set(to, e);
    for (const [rel, x] of inner) this.entries.set(`${to}/${rel}`, x);
  }
}

/** Reads the server's storage folder as the model sees it (links are records on disk). */
export async function readStorage(root: string): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const walk = async (abs: string, rel: string) => {
    for await (const e of Deno.readDir(abs)) {
      if (e.name.startsWith(".efx-")) continue;
      const r = join2(rel, e.name);
      const p = join(abs, e.name);
      const st = await Deno.lstat(p);
      assert.ok(!st.isSymlink, `${r}: the server made a filesystem link`);
      if (st.isDirectory) {
        out.set(r, { type: "dir" });
        await walk(p, r);
        continue;
      }
      const data = await Deno.readFile(p);
      const magic = new TextEncoder().encode("efx-link\n");
      if (
        ((st.mode ?? 0) & 0o1000) !== 0 && data.length > 25 &&
        magic.every((b, i) => data[i] === b)
      ) {
        out.set(r, { type: "symlink", target: new TextDecoder().decode(data.subarray(25)) });
      } else {
        out.set(r, {
          type: "file",
          sha: sha256(data),
          size: data.length,
          mtime: st.mtime!.getTime(),
        });
      }
    }
  };
  await walk(root, "");
  return out;
}

/** Reads a local folder (links not followed). */
export async function readLocal(dir: string): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const walk = async (abs: string, rel: string) => {
    for await (const e of Deno.readDir(abs)) {
      const r = join2(rel, e.name);
      const p = join(abs, e.name);
      const st = await Deno.lstat(p);
      if (st.isSymlink) out.set(r, { type: "symlink", target: await Deno.readLink(p) });
      else if (st.isDirectory) {
        out.set(r, { type: "dir" });
        await walk(p, r);
      } else {
        out.set(r, {
          type: "file",
          sha: await sha256File(p),
          size: st.size,
          mtime: st.mtime!.getTime(),
        });
      }
    }
  };
  await walk(dir, "");
  return out;
}

function describe(m: Map<string, Entry>): string[] {
  return [...m].map(([n, e]) =>
    e.type === "file"
      ? `${n} file ${e.size} ${e.sha.slice(0, 12)}`
      : e.type === "symlink"
      ? `${n} -> ${e.target}`
      : `${n}/`
  ).sort();
}

/** A local tree the run uploads (and changes, and uploads again). */
interface LocalTree {
  name: string;
  dir: string;
  /** Where it was uploaded: remote folder names of its top. */
  uploadedAs: Set<string>;
}

/** A local download folder and the model of what must be in it. */
interface Download {
  /** The folder, relative to the work folder. */
  dir: string;
  /** For trees: the `-o` folder and the remote folder. */
  into?: string;
  base?: string;
  model: Map<string, Entry>;
}

/** Runs the model-based test; throws (naming seed and step) on the first difference. */
export async function runModel(opts: ModelOptions): Promise<ModelReport> {
  const r = rng(opts.seed);
  const log = opts.log ?? (() => {});
  const t0 = performance.now();
  const server = await startServer({ perms: "serve-task" });
  const work = await makeWorkDir("efx-model-");
  const src = join(work, "src");
  await Deno.mkdir(src);
  const remote = new RemoteModel();
  const trees: LocalTree[] = [];
  const downloads: Download[] = [];
  const report: ModelReport = {
    ops: 0,
    steps: 0,
    cliRuns: 0,
    bytesUp: 0,
    resumed: 0,
    ms: 0,
    kinds: {},
  };
  let fresh = 0;
  const history: string[] = [];
  const cli = async (args: string[], stdin?: string): Promise<EfxResult> => {
    report.cliRuns++;
    history.push(`efx ${args.join(" ")}${stdin ? ` <<< ${JSON.stringify(stdin)}` : ""}`);
    return await efx([...args, ...clientArgs(server)], { cwd: work, stdin, timeoutMs: 60_000 });
  };
  const expectExit = (res: EfxResult, code: number, what: string) => {
    assert.equal(
      res.code,
      code,
      `${what}: exit ${res.code}, expected ${code}\nstdout: ${res.stdout}\nstderr: ${res.stderr}`,
    );
  };

  /** Writes local file `path` with `n` seeded bytes; returns its model entry. */
  const writeLocal = async (path: string, n: number): Promise<Entry & { type: "file" }> => {
    const data = r.bytes(n);
    await Deno.writeFile(path, data);
    // Distinct, whole-second mtimes in the past, as real files have.
    const mtime = new Date(Date.UTC(2020, 0, 1) + r.int(1e9) * 1000);
    await Deno.utime(path, mtime, mtime);
    return { type: "file", sha: sha256(data), size: n, mtime: mtime.getTime() };
  };

  // ---- operations ----

  const uploadFiles = async () => {
    const count = 1 + r.int(4);
    const dir = r.chance(0.3) ? "" : r.chance(0.7) ? r.pick(remote.dirs()) : `k${++fresh}`;
    const force = r.chance(0.4);
    const pool = ["f0.bin", "f1.bin", "f2.bin", "f3.bin", "f4.bin", "f5.bin"];
    const names = [...new Set(Array.from({ length: count }, () => r.pick(pool)))];
    const local = new Map<string, Entry & { type: "file" }>();
    for (const n of names) {
      const e = await writeLocal(join(src, n), size(r));
      local.set(n, e);
      report.bytesUp += e.size;
    }
    const args = ["upload", ...names.map((n) => join("src", n))];
    if (dir !== "" || r.chance(0.5)) {
      if (r.chance(0.5)) args.push(`${dir}/`);
      else args.push("--to", dir === "" ? "/" : dir);
    }
    if (force) args.push("-f");
    let ok = true;
    const expect: [string, Entry][] = [];
    for (const n of names) {
      const name = join2(dir, n);
      const old = remote.entries.get(name);
      if (!remote.creatable(name) || old?.type === "dir" || (old && !force)) ok = false;
      else expect.push([name, local.get(n)!]);
    }
    const res = await cli(args);
    expectExit(res, ok ? 0 : 1, args.join(" "));
    for (const [name, e] of expect) remote.set(name, e);
  };

  const downloadFiles = async () => {
    const files = remote.ofType("file");
    const dl: Download = { dir: `dl${++fresh}`, model: new Map() };
    if (r.chance(0.4)) {
      // A pattern: the files of one folder.
      const dir = r.pick(remote.dirs());
      const pattern = dir === "" ? "f*" : `${dir}/*`;
      const matches = [...remote.entries].filter(([n]) =>
        parentOf(n) === dir && (dir !== "" || n.startsWith("f"))
      );
      const res = await cli(["download", pattern, "-o", `${dl.dir}/`]);
      expectExit(res, matches.length === 0 ? 1 : 0, `download ${pattern}`);
      for (const [n, e] of matches) if (e.type === "file") dl.model.set(baseOf(n), e);
    } else {
      const byBase = new Map<string, string>();
      for (let i = 0; i < 1 + r.int(3) && files.length > 0; i++) {
        const f = r.pick(files);
        byBase.set(baseOf(f), f);
      }
      const wanted = [...byBase.values()];
      let ok = true;
      if (r.chance(0.2)) {
        const links = remote.ofType("symlink");
        wanted.push(links.length && r.chance(0.5) ? r.pick(links) : `f-none-${fresh}.bin`);
        ok = false;
      }
      if (wanted.length === 0) return false;
      const res = await cli(["download", ...wanted, "-o", `${dl.dir}/`]);
      expectExit(res, ok ? 0 : 1, `download ${wanted.join(" ")}`);
      for (const f of byBase.values()) dl.model.set(baseOf(f), remote.entries.get(f)!);
    }
    await checkLocal(dl);
    return true;
  };

  const makeTree = async (): Promise<LocalTree> => {
    const t: LocalTree = { name: `t${++fresh}`, dir: "", uploadedAs: new Set() };
    t.dir = join(work, "trees", t.name);
    await Deno.mkdir(t.dir, { recursive: true });
    const dirs = [""];
    for (let i = 0; i < r.int(4); i++) {
      const d = join2(r.pick(dirs), `d${i}`);
      await Deno.mkdir(join(t.dir, d), { recursive: true });
      dirs.push(d);
    }
    for (let i = 0; i < 1 + r.int(6); i++) {
      await writeLocal(
        join(t.dir, r.pick(dirs), `n${i}.dat`),
        r.chance(0.9) ? r.int(3000) : size(r),
      );
    }
    for (let i = 0; i < r.int(4); i++) {
      const at = r.pick(dirs);
      const depth = at === "" ? 0 : at.split("/").length;
      const target = r.pick([
        "n0.dat",
        `${"../".repeat(depth)}n0.dat`,
        `missing-${i}`,
        `/abs/elsewhere-${i}`,
        `${"../".repeat(depth + 1)}outside-${i}`,
      ]);
      const p = join(t.dir, at, `l${i}`);
      await Deno.symlink(target, p);
      const old = new Date(Date.UTC(2019, 5, 1) + r.int(1e8) * 1000);
      await lutimes(p, old, old);
    }
    trees.push(t);
    return t;
  };

  /** Changes a tree: new contents (other size or other mtime), a new file. */
  const changeTree = async (t: LocalTree) => {
    const files = [...(await readLocal(t.dir))].filter(([, e]) => e.type === "file");
    for (const [rel, e] of files) {
      if (!r.chance(0.3) || e.type !== "file") continue;
      if (r.chance(0.5)) await writeLocal(join(t.dir, rel), r.int(3000));
      else {
        // Same size, other bytes, same mtime: only --checksum can see this one.
        const p = join(t.dir, rel);
        const data = r.bytes(e.size);
        await Deno.writeFile(p, data);
        await Deno.utime(p, new Date(e.mtime), new Date(e.mtime));
      }
    }
    if (r.chance(0.5)) await writeLocal(join(t.dir, `n${10 + fresh++}.dat`), r.int(2000));
  };

  const uploadTree = async () => {
    let t: LocalTree;
    let base: string;
    let mode: "plain" | "update" | "checksum" = "plain";
    if (trees.length > 0 && r.chance(0.6)) {
      t = r.pick(trees);
      await changeTree(t);
      base = t.uploadedAs.size > 0 && r.chance(0.8)
        ? r.pick([...t.uploadedAs])
        : join2(r.pick(remote.dirs().filter((d) => !d.includes(t.name))), t.name);
      mode = r.pick(["plain", "update", "checksum"] as const);
    } else {
      t = await makeTree();
      base = join2(r.chance(0.5) ? "" : r.pick(remote.dirs()), t.name);
    }
    const folder = parentOf(base);
    const local = await readLocal(t.dir);
    const exclude = r.chance(0.2) ? "n1.dat" : undefined;
    const dry = r.chance(0.1);
    const args = ["upload", "-r", join("trees", t.name)];
    if (folder !== "") args.push("--to", folder);
    if (mode !== "plain") args.push(`--${mode}`);
    if (exclude) args.push("--exclude", exclude);
    if (dry) args.push("--dry-run");
    const baseOk = remote.creatable(base) && remote.entries.get(base)?.type !== "file" &&
      remote.entries.get(base)?.type !== "symlink";
    let refused = 0;
    const changes: [string, Entry][] = [];
    for (const [rel, e] of local) {
      if (exclude && baseOf(rel) === exclude) continue;
      if (exclude && rel.split("/").includes(exclude)) continue;
      const name = `${base}/${rel}`;
      const old = remote.entries.get(name);
      if (e.type === "dir") {
        changes.push([name, e]);
        continue;
      }
      if (!old) {
        changes.push([name, e]);
        continue;
      }
      if (mode === "plain") {
        refused++;
        continue;
      }
      if (e.type === "symlink" && old.type === "symlink" && old.target === e.target) continue;
      if (e.type === "file" && old.type === "file" && old.size === e.size) {
        if (mode === "update" && old.mtime === e.mtime) continue;
        if (mode === "checksum" && old.sha === e.sha) continue;
      }
      changes.push([name, e]);
    }
    const res = await cli(args);
    if (!baseOk) {
      expectExit(res, 1, args.join(" "));
      return;
    }
    expectExit(res, refused > 0 && !dry ? 1 : 0, args.join(" "));
    if (dry) {
      assert.match(res.stdout, /^would upload /m);
      return;
    }
    if (!remote.entries.has(base)) remote.set(base, { type: "dir" });
    for (const [name, e] of changes) remote.set(name, e);
    t.uploadedAs.add(base);
  };

  const downloadTree = async () => {
    const candidates = remote.dirs().filter((d) => d !== "");
    let dl: Download;
    let mode: "plain" | "update" | "checksum" = "plain";
    const again = downloads.filter((d) => remote.entries.get(d.base!)?.type === "dir");
    if (again.length > 0 && r.chance(0.4)) {
      dl = r.pick(again);
      mode = r.pick(["update", "checksum"] as const);
    } else {
      if (candidates.length === 0) return false;
      const base = r.pick(candidates);
      const into = `tree${++fresh}`;
      dl = { dir: `${into}/${baseOf(base)}`, into, base, model: new Map() };
      downloads.push(dl);
    }
    const keep = r.chance(0.3);
    // "-o DIR/": into DIR, so that a re-run lands in the same place.
    const args = ["download", "-r", dl.base!, "-o", `${dl.into}/`];
    if (mode !== "plain") args.push(`--${mode}`);
    if (keep) args.push("--keep-links");
    const res = await cli(args);
    expectExit(res, 0, args.join(" "));
    for (const [rel, e] of remote.below(dl.base!)) {
      if (e.type === "symlink" && !keep && !linkStaysInside(rel, e.target)) continue;
      const old = dl.model.get(rel);
      if (old?.type === "file" && e.type === "file" && old.size === e.size) {
        if (mode === "update" && old.mtime === e.mtime) continue; // trusted: size and mtime
        if (mode === "checksum" && old.sha === e.sha) continue;
      }
      dl.model.set(rel, e);
    }
    await checkLocal(dl);
    return true;
  };

  const move = async () => {
    const names = [...remote.entries.keys()];
    if (names.length === 0) return false;
    const from = r.pick(names);
    const e = remote.entries.get(from)!;
    let to: string;
    let force = false;
    let expectOk = true;
    const x = r.next();
    if (x < 0.5) to = `m${++fresh}`;
    else if (x < 0.8) {
      const into = r.pick(remote.dirs().filter((d) => d !== from && !d.startsWith(from + "/")));
      to = join2(into, baseOf(from));
      if (to === from) return false;
      const old = remote.entries.get(to);
      if (old) expectOk = false;
      const res = await cli(["mv", from, `${into === "" ? "." : into}/`]);
      if (into === "") {
        // "./" is the top folder.
      }
      expectExit(res, expectOk && remote.creatable(to) ? 0 : 1, `mv ${from} ${into}/`);
      if (expectOk && remote.creatable(to)) remote.move(from, to);
      return true;
    } else {
      // Onto an existing file: refused without -f; a file replaces a file with -f.
      const files = remote.ofType("file").filter((f) => f !== from);
      if (e.type !== "file" || files.length === 0) return false;
      to = r.pick(files);
      force = r.chance(0.6);
      expectOk = force;
    }
    const args = ["mv", from, to, ...(force ? ["-f"] : [])];
    const res = await cli(args);
    expectExit(res, expectOk ? 0 : 1, args.join(" "));
    if (expectOk) {
      remote.remove(to);
      remote.move(from, to);
    }
    return true;
  };

  const remove = async () => {
    const names = [...remote.entries.keys()];
    if (names.length === 0) return false;
    const name = r.pick(names);
    const e = remote.entries.get(name)!;
    const recursive = e.type === "dir" && r.chance(0.8);
    const args = ["rm", ...(recursive ? ["-r"] : []), name];
    const res = await cli(args);
    const ok = e.type !== "dir" || recursive;
    expectExit(res, ok ? 0 : 1, args.join(" "));
    if (ok) remote.remove(name);
    return true;
  };

  const mkdirRmdir = async () => {
    const dirs = remote.dirs().filter((d) => d !== "");
    if (dirs.length > 0 && r.chance(0.4)) {
      const d = r.pick(dirs);
      const empty = remote.below(d).length === 0;
      const res = await cli(["rmdir", d]);
      expectExit(res, empty ? 0 : 1, `rmdir ${d}`);
      if (empty) remote.remove(d);
      return true;
    }
    const d = join2(r.pick(remote.dirs()), `k${++fresh}/k${++fresh}`);
    const res = await cli(["mkdir", d]);
    const ok = remote.creatable(d);
    expectExit(res, ok ? 0 : 1, `mkdir ${d}`);
    if (ok) remote.set(d, { type: "dir" });
    return true;
  };

  const killAndResume = async () => {
    const n = `r${++fresh}.bin`;
    const e = await writeLocal(join(src, n), 1_500_000 + r.int(1_600_000));
    report.bytesUp += e.size;
    report.cliRuns++;
    history.push(`efx upload --resume src/${n} (killed)`);
    const run = spawnEfx(["upload", "--resume", "-q", join("src", n), ...clientArgs(server)], {
      cwd: work,
      allowStackTrace: true,
    });
    // Kill it once the server holds part of it (or give up waiting: it may finish first).
    const staging = join(server.root, ".efx-staging", "partials");
    const deadline = performance.now() + 5000;
    while (performance.now() < deadline) {
      const found = await Array.fromAsync(Deno.readDir(staging)).catch(() => []);
      let any = false;
      for (const d of found) {
        const dir = join(staging, d.name);
        for (const f of await Array.fromAsync(Deno.readDir(dir)).catch(() => [])) {
          // Some bytes arrived: cut it now.
          if ((await Deno.stat(join(dir, f.name)).catch(() => null))?.size) any = true;
        }
      }
      if (any) break;
      await new Promise((res) => setTimeout(res, 2));
    }
    try {
      run.proc.kill("SIGKILL");
    } catch { /* ended already */ }
    await run.result;
    const res = await cli(["upload", "--resume", "-f", join("src", n)]);
    expectExit(res, 0, `upload --resume ${n}`);
    if (/resumed after \d+ bytes/.test(res.stdout)) report.resumed++;
    remote.set(n, e);
  };

  /** A prompt session of several commands over one connection. */
  const shellSession = async (): Promise<number> => {
    const d = `k${++fresh}`;
    const names = ["f0.bin", "f1.bin", "f2.bin"].slice(0, 1 + r.int(3));
    const local = new Map<string, Entry & { type: "file" }>();
    for (const n of names) local.set(n, await writeLocal(join(src, n), r.int(5000)));
    const back = `sh${++fresh}`;
    const lines = [
      `mkdir ${d}/in`,
      `cd ${d}`,
      `lcd src`,
      `put ${names.join(" ")} in/`,
      `cd in`,
      `rename ${names[0]} moved.bin`,
      `lcd ..`,
      `get * ${back}/`,
      `cd /`,
      `ls -r ${d}`,
      "quit",
    ];
    const res = await cli(["shell"], lines.join("\n") + "\n");
    expectExit(res, 0, "prompt session");
    for (const n of names.slice(1)) remote.set(`${d}/in/${n}`, local.get(n)!);
    remote.set(`${d}/in/moved.bin`, local.get(names[0])!);
    const dl: Download = { dir: back, model: new Map() };
    for (const [n, e] of remote.below(`${d}/in`)) dl.model.set(n, e);
    await checkLocal(dl);
    return lines.length - 1;
  };

  // ---- checks ----

  const checkLocal = async (dl: Download) => {
    const got = await readLocal(join(work, dl.dir)).catch(() => new Map<string, Entry>());
    const want = new Map(dl.model);
    // Folders are implied by their contents (and the model does not track local mtimes).
    for (const n of [...want.keys()]) {
      for (let p = parentOf(n); p !== ""; p = parentOf(p)) want.set(p, { type: "dir" });
    }
    assert.deepEqual(
      describe(got).map((l) => l),
      describe(want),
      `local folder ${dl.dir} differs from the model`,
    );
    for (const [n, e] of want) {
      const g = got.get(n)!;
      if (e.type === "file" && g.type === "file") {
        assert.equal(g.mtime, e.mtime, `${dl.dir}/${n}: mtime`);
      }
    }
  };

  const checkRemote = async () => {
    const disk = await readStorage(server.root);
    assert.deepEqual(
      describe(disk),
      describe(remote.entries),
      "storage folder differs from the model",
    );
    for (const [n, e] of remote.entries) {
      const d = disk.get(n)!;
      if (e.type === "file" && d.type === "file") assert.equal(d.mtime, e.mtime, `${n}: mtime`);
    }
    const c = await connectClient(server);
    let listed: FileInfo[];
    try {
      listed = await c.list(undefined, true);
    } finally {
      await c.close();
    }
    const fromLs = new Map<string, Entry>(listed.map((x) => [
      x.name,
      x.type === "symlink"
        ? { type: "symlink", target: x.target ?? "" }
        : x.type === "dir"
        ? { type: "dir" }
        : {
          type: "file",
          sha: (remote.entries.get(x.name) as { sha?: string })?.sha ?? "?",
          size: x.size,
          mtime: x.mtime,
        },
    ]));
    assert.deepEqual(describe(fromLs), describe(remote.entries), "ls -r differs from the model");
    for (const [n, e] of remote.entries) {
      const l = fromLs.get(n)!;
      if (e.type === "file" && l.type === "file") assert.equal(l.mtime, e.mtime, `ls: ${n} mtime`);
    }
  };

  // ---- the run ----

  const kinds: [string, number, () => Promise<boolean | number | void>][] = [
    ["upload", 26, uploadFiles],
    ["download", 16, downloadFiles],
    ["upload -r", 14, uploadTree],
    ["download -r", 10, downloadTree],
    ["mv", 8, move],
    ["rm", 6, remove],
    ["mkdir/rmdir", 6, mkdirRmdir],
    ["prompt", 5, shellSession],
  ];
  const total = kinds.reduce((a, k) => a + k[1], 0);
  let step = 0;
  try {
    while (report.ops < opts.ops) {
      step++;
      let kind: (typeof kinds)[number];
      if (step % 40 === 20) kind = ["kill + --resume", 0, killAndResume];
      else {
        let x = r.int(total);
        kind = kinds.find((k) => (x -= k[1]) < 0)!;
      }
      const before = history.length;
      const done = await kind[2]();
      if (done === false) continue;
      report.ops += typeof done === "number" ? done : 1;
      report.steps++;
      report.kinds[kind[0]] = (report.kinds[kind[0]] ?? 0) + 1;
      await checkRemote();
      log(`step ${step} (${report.ops} ops): ${history.slice(before).join(" ; ")}`);
    }
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(
      `model test failed at step ${step} with seed ${opts.seed} ` +
        `(replay: deno task fuzz-cli --seed ${opts.seed} --ops ${opts.ops})\n` +
        `last commands:\n  ${history.slice(-6).join("\n  ")}\n${msg}`,
      { cause: err },
    );
  } finally {
    await server.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  report.ms = performance.now() - t0;
  return report;
}
