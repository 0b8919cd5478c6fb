/**
 * Generic measuring helpers for the efx-vs-scp benchmark.
 *
 * Only Deno built-ins and node:* modules are used.
 *
 * Memory measurement: `runMeasured` samples `VmHWM` (the kernel's own
 * high-water mark of resident memory) from `/proc/<pid>/status` every ~20 ms
 * while the command runs. Because VmHWM is a high-water mark, a spike between
 * two samples is still caught by the next sample, as long as the process is
 * still alive then. The limitation: whatever happens after the last sample
 * (the final <=20 ms before exit) is missed, since once the process has exited
 * its memory map is gone and /proc no longer reports VmHWM (not even for a
 * zombie). For commands that run for more than a few hundred ms this is
 * negligible; for very short commands the figure is a lower bound, and a
 * command that exits before the first sample reports 0.
 *
 * Many tools do their work in child processes (`scp` runs `ssh`, which does
 * the crypto and holds the buffers), so `runMeasured` also discovers the
 * process tree (by scanning /proc/<n>/stat for parent pids, ~every 100 ms:
 * this kernel has no /proc/<pid>/task/<tid>/children) and reports
 * `treePeakRssKiB`: the sum of each tree member's own VmHWM. That sum is an
 * upper bound of the tree's true simultaneous peak: members may have peaked
 * at different moments, and pages shared between them (libc, libcrypto, a
 * forked parent's pages) are counted once per process. It misses children
 * that lived less than ~100 ms. `watchRss(pid)` does the same for an
 * already-running server (e.g. sshd with its per-connection children), and
 * `resetPeakRss(pid)` resets a long-lived process's VmHWM between runs.
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { denoTask } from "../tests/helpers/deno_task.ts";

export interface MeasureOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Capture stdout and return it (default: discarded to /dev/null). */
  captureStdout?: boolean;
  /** Kill the process (SIGKILL) after this many ms; the result then has timedOut: true. */
  timeoutMs?: number;
  /** RSS sampling interval in ms (default 20). */
  sampleMs?: number;
}

export interface MeasureResult extends RssSample {
  /** Wall-clock time from spawn until the exit status is known. */
  ms: number;
  /**
   * CPU time (user + system, all threads) of the root process, as last
   * sampled from /proc before it exited: a lower bound, short by at most one
   * sampling interval of work.
   */
  cpuMs: number;
  /** Exit code (128 + signal number when killed by a signal). */
  code: number;
  stderr: string;
  /** Only when captureStdout was set. */
  stdout?: string;
  timedOut: boolean;
}

const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGABRT: 6,
  SIGKILL: 9,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
};

/** KiB fields of /proc/<pid>/status (e.g. VmHWM, RssAnon); each 0 if absent or the pid is gone. */
export function statusKiB<F extends string>(pid: number, fields: F[]): Record<F, number> {
  let text = "";
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/status`);
  } catch { /* gone */ }
  const out = {} as Record<F, number>;
  for (const f of fields) {
    out[f] = Number(new RegExp(`^${f}:\\s+(\\d+)\\s+kB`, "m").exec(text)?.[1] ?? 0);
  }
  return out;
}

/** Peak RSS (VmHWM, KiB) of a running pid, or 0 if gone (or a zombie / kernel thread). */
export function peakRssOf(pid: number): number {
  return statusKiB(pid, ["VmHWM"]).VmHWM;
}

/** A `--size` value: bytes, or a count with K, M or G (binary units: `256M` is 256 MiB). */
export function parseSize(s: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(s);
  if (!m) throw new Error(`bad --size ${s}`);
  return Number(m[1]) * ({ "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2].toUpperCase()]!);
}

/** Broad permissions for the bench's own efx processes (throwaway paths, not the serve task's). */
export const BENCH_PERMISSIONS = ["--allow-net", "--allow-read", "--allow-write", "--allow-env"];

/** `--v8-flags=...` with the V8 flags deno.json task `task` sets (`DENO_V8_FLAGS=`). */
export function taskV8Flag(task: string): string {
  const v8 = denoTask(task).env.DENO_V8_FLAGS;
  if (!v8) throw new Error(`deno.json task ${task} sets no DENO_V8_FLAGS`);
  return `--v8-flags=${v8}`;
}

/** The bench's permissions with the V8 flags of deno.json task `task`. */
export function benchFlags(task: string): string[] {
  return [...BENCH_PERMISSIONS, taskV8Flag(task)];
}

/** Writes `n` random files of `bytes` named f0000.bin, f0001.bin, ... into `dir`; returns the names. */
export async function makeSmallFiles(dir: string, n: number, bytes = 4096): Promise<string[]> {
  const names: string[] = [];
  for (let i = 0; i < n; i++) {
    names.push(`f${String(i).padStart(4, "0")}.bin`);
    await makeRandomFile(join(dir, names[i]), bytes);
  }
  return names;
}

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux). */
const CLK_TCK = 100;

/** CPU time (user + system, ms, all threads) a running pid has used, or -1 if gone. */
export function cpuMsOf(pid: number): number {
  return cpuMsOfStat(`/proc/${pid}/stat`);
}

/** CPU time (user + system, ms) from a /proc stat file (a process's or /proc/PID/task/TID/stat), or -1. */
export function cpuMsOfStat(path: string): number {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return -1;
  }
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  return ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK;
}

/** Parent pid of a process from /proc/<pid>/stat, or -1 if gone. */
function parentOf(pid: number): number {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return -1;
  }
  // The comm field is in parentheses and may itself contain spaces or ')'.
  const close = text.lastIndexOf(")");
  const rest = text.slice(close + 2).split(" ");
  // rest[0] = state, rest[1] = ppid
  return Number(rest[1]);
}

/** Adds to `known` every live descendant of any pid already in `known`. */
function discoverDescendants(known: Set<number>): void {
  let grew = true;
  const parents = new Map<number, number>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!e.isDirectory || !/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    if (known.has(pid)) continue;
    const ppid = parentOf(pid);
    if (ppid > 0) parents.set(pid, ppid);
  }
  while (grew) {
    grew = false;
    for (const [pid, ppid] of parents) {
      if (known.has(ppid)) {
        known.add(pid);
        parents.delete(pid);
        grew = true;
      }
    }
  }
}

export interface RssSample {
  /** Peak VmHWM (KiB) of the root process itself. */
  peakRssKiB: number;
  /** Sum of per-process VmHWM (KiB) over the root process and every descendant seen. */
  treePeakRssKiB: number;
  /** Number of processes seen in the tree (including the root). */
  processes: number;
}

/** Samples VmHWM of a process and its descendants; see the module doc. */
class TreeRss {
  private known: Set<number>;
  private hwm = new Map<number, number>();
  private lastScan = -Infinity;
  private polls = 0;
  constructor(private root: number) {
    this.known = new Set([root]);
  }
  /** Discovers new descendants (often at first, then every ~100 ms) and samples. */
  poll(): void {
    const now = performance.now();
    // Short-lived helpers start early, so scan eagerly at first; later scans
    // are spaced out to keep the /proc walk cheap on a 2-core box.
    if (this.polls < 5 || now - this.lastScan >= 100) {
      try {
        discoverDescendants(this.known);
      } catch { /* /proc unreadable: root process only */ }
      this.lastScan = now;
    }
    this.polls++;
    this.sample();
  }
  sample(): void {
    for (const pid of this.known) {
      const v = peakRssOf(pid);
      if (v > (this.hwm.get(pid) ?? 0)) this.hwm.set(pid, v);
      // Forget dead descendants so a recycled pid is never counted; their
      // peak stays recorded in hwm.
      if (v === 0 && pid !== this.root) this.known.delete(pid);
    }
  }
  result(): RssSample {
    let tree = 0;
    for (const v of this.hwm.values()) tree += v;
    return {
      peakRssKiB: this.hwm.get(this.root) ?? 0,
      treePeakRssKiB: tree,
      processes: this.hwm.size,
    };
  }
}

/**
 * Resets the kernel's VmHWM of a running pid to its current RSS (writes "5"
 * to /proc/<pid>/clear_refs; needs root or the same user). Use before each
 * transfer to get a per-transfer peak for a long-running server. Returns
 * false if it could not.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/**
 * Watches an already-running process (e.g. a server) and its descendants
 * (e.g. sshd's per-connection children and sftp-server) until stop(), which
 * returns the peaks seen. With reset: true the root's VmHWM is reset first
 * (see resetPeakRss), so a long-lived server's earlier peaks don't count.
 * Descendants that live less than ~100 ms may be missed.
 */
export function watchRss(
  pid: number,
  opts: { sampleMs?: number; reset?: boolean } = {},
): { stop(): RssSample } {
  if (opts.reset) resetPeakRss(pid);
  const rss = new TreeRss(pid);
  rss.poll();
  const id = setInterval(() => rss.poll(), opts.sampleMs ?? 20);
  let final: RssSample | undefined;
  return {
    stop() {
      if (!final) {
        clearInterval(id);
        rss.sample();
        final = rss.result();
      }
      return final;
    },
  };
}

/**
 * Runs a command (argv) and returns wall time, exit code, stderr and peak RSS.
 * stdin is /dev/null; stdout is discarded unless captureStdout is set.
 * See the module doc for how RSS is sampled and its limits.
 */
export async function runMeasured(
  argv: string[],
  opts: MeasureOptions = {},
): Promise<MeasureResult> {
  if (argv.length === 0) throw new Error("runMeasured: empty argv");
  const sampleMs = opts.sampleMs ?? 20;
  const cmd = new Deno.Command(argv[0], {
    args: argv.slice(1),
    cwd: opts.cwd,
    env: opts.env,
    stdin: "null",
    stdout: opts.captureStdout ? "piped" : "null",
    stderr: "piped",
  });
  const t0 = performance.now();
  const child = cmd.spawn();
  const stderrP = new Response(child.stderr).text();
  const stdoutP = opts.captureStdout ? new Response(child.stdout).text() : undefined;

  let exited = false;
  let msAtExit = 0;
  const statusP = child.status.then((s) => {
    msAtExit = performance.now() - t0;
    exited = true;
    return s;
  });

  let timedOut = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (opts.timeoutMs !== undefined) {
    timer = setTimeout(() => {
      timedOut = true;
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, opts.timeoutMs);
  }

  const rss = new TreeRss(child.pid);
  let cpuMs = 0;
  while (!exited) {
    rss.poll();
    cpuMs = Math.max(cpuMs, cpuMsOf(child.pid));
    let tick: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([statusP, new Promise((r) => tick = setTimeout(r, sampleMs))]);
    clearTimeout(tick);
  }
  // The process may have exited during the wait; a last try costs nothing.
  rss.sample();
  cpuMs = Math.max(cpuMs, cpuMsOf(child.pid));

  const status = await statusP;
  if (timer !== undefined) clearTimeout(timer);
  const [stderr, stdout] = await Promise.all([stderrP, stdoutP]);
  let code = status.code;
  if (status.signal) code = 128 + (SIGNALS[status.signal] ?? 0);
  return { ms: msAtExit, cpuMs, code, stderr, stdout, ...rss.result(), timedOut };
}

/** Median (mean of the two middle values for even length); NaN for an empty list. */
export function median(xs: number[]): number {
  return percentile(xs, 50);
}

/**
 * p-th percentile (0..100) with linear interpolation between closest ranks
 * (numpy's default); NaN for an empty list.
 */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const clamped = Math.min(100, Math.max(0, p));
  const rank = (clamped / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo] + (s[hi] - s[lo]) * (rank - lo);
}

const MIB = 1024 * 1024;
/** crypto.getRandomValues refuses more than 65536 bytes per call. */
const RANDOM_MAX = 65536;

/** Writes a random file of `bytes` size, streamed in 1 MiB chunks. Overwrites. */
export async function makeRandomFile(path: string, bytes: number): Promise<void> {
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new Error(`makeRandomFile: bad size ${bytes}`);
  }
  const buf = new Uint8Array(MIB);
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  let left = bytes;
  while (left > 0) {
    const n = Math.min(left, MIB);
    const chunk = buf.subarray(0, n);
    for (let off = 0; off < n; off += RANDOM_MAX) {
      crypto.getRandomValues(chunk.subarray(off, Math.min(n, off + RANDOM_MAX)));
    }
    let written = 0;
    while (written < n) written += await f.write(chunk.subarray(written));
    left -= n;
  }
}

/** SHA-256 hex of a file, streamed. */
export async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  using f = await Deno.open(path, { read: true });
  const buf = new Uint8Array(MIB);
  while (true) {
    const n = await f.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
  }
  return h.digest("hex");
}

/**
 * A TCP port that was free on 127.0.0.1 a moment ago (listen on :0, read, close).
 * Inherently racy: another process may take it before the caller binds it.
 */
export function freePort(): Promise<number> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return Promise.resolve(port);
}

/** CPU model and core count from /proc/cpuinfo, for the results table. */
export function machineInfo(): { cpu: string; cores: number } {
  let text = "";
  try {
    text = Deno.readTextFileSync("/proc/cpuinfo");
  } catch { /* not Linux */ }
  const model = /^model name\s*:\s*(.+)$/m.exec(text)?.[1]?.trim().replace(/\s+/g, " ");
  const processors = text.match(/^processor\s*:/gm)?.length ?? 0;
  return {
    cpu: model || "unknown",
    cores: processors || navigator.hardwareConcurrency || 0,
  };
}

const NUMERIC = /^[-+]?[\d.,]+(\s*[%a-zA-Z/]+)?$/;

/**
 * Aligned plain-text table: columns separated by two spaces, a dashed rule
 * under the header, cells that look numeric right-aligned, others left-aligned.
 */
export function formatTable(header: string[], rows: string[][]): string {
  const ncol = Math.max(header.length, ...rows.map((r) => r.length));
  const cell = (r: string[], i: number) => r[i] ?? "";
  const widths: number[] = [];
  for (let i = 0; i < ncol; i++) {
    widths.push(Math.max(cell(header, i).length, ...rows.map((r) => cell(r, i).length)));
  }
  const numericCol = widths.map((_, i) =>
    rows.length > 0 && rows.every((r) => cell(r, i) === "" || NUMERIC.test(cell(r, i)))
  );
  const line = (r: string[]) =>
    widths.map((w, i) => numericCol[i] ? cell(r, i).padStart(w) : cell(r, i).padEnd(w))
      .join("  ").trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join(
    "\n",
  );
}

/** Waits until something accepts TCP connections on 127.0.0.1:`port` (10 s at most). */
export async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`efx server did not start on port ${port}`);
}

/** How {@linkcode startEfxServer} runs `efx serve`. */
export interface EfxServerOptions {
  /** Path of main.ts. */
  main: string;
  /** Deno flags (permissions, V8 flags). */
  flags: string[];
  port: number;
  root: string;
  /** The server's private key file. */
  key: string;
  /** More `serve` options, e.g. `--ephemeral-lifetime 5s`. */
  extra?: string[];
  stderr?: "piped" | "null";
}

/**
 * Starts a quiet `efx serve` on 127.0.0.1 and waits until it accepts
 * connections; a server that does not come up is killed before the error
 * is thrown.
 */
export async function startEfxServer(o: EfxServerOptions): Promise<Deno.ChildProcess> {
  const server = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...o.flags,
      o.main,
      "serve",
      "--port",
      String(o.port),
      "--host",
      "127.0.0.1",
      "--root",
      o.root,
      "--key",
      o.key,
      ...(o.extra ?? []),
      "--quiet",
    ],
    stdin: "null",
    stdout: "null",
    stderr: o.stderr ?? "null",
  }).spawn();
  try {
    await waitForPort(o.port);
  } catch (err) {
    server.kill("SIGKILL");
    await server.status;
    throw err;
  }
  return server;
}
