/**
 * Soak test: one real `efx serve` subprocess (tests/helpers/server.ts) on
 * loopback, many concurrent clients for a fixed time, every file checked.
 *
 *     deno run --allow-net=127.0.0.1 --allow-read --allow-write --allow-run \
 *       --allow-env --allow-sys tests/soak.ts [--clients 100] [--seconds 30] \
 *       [--cli 3] [--short] [--seed N]
 *
 * - `--clients N` in-process clients (EfxClient over real TCP), each on its
 *   own connection, run a loop of uploads, downloads, listings and removals
 *   of files from 0 B to 4 MiB; about one iteration in eight reconnects (a
 *   fresh handshake). Downloads read the client's own uploads and a shared
 *   pool that every client reads at the same time.
 * - `--cli N` CLI workers run `efx upload` / `efx download` / `efx rm` as
 *   subprocesses in a loop.
 * - Every upload's SHA-256 (sent and as the server computed it) and every
 *   downloaded file's SHA-256 (read back from disk) must equal the source's.
 * - The server's RSS (/proc/PID/status VmRSS) is sampled about every 250 ms; it
 *   must stay under 300 MiB and must not grow steadily over the last half
 *   (median of the last quarter at most 1.25 x that of the third quarter
 *   plus 16 MiB).
 * - At the end: no `.efx-tmp-*` left on the server, no "internal error" or
 *   dropped connection in its log, the server stops cleanly on SIGTERM.
 *
 * `--short`: 10 s with 100 clients (for CI). The run stops by itself: new
 * operations stop at the deadline, each operation has a 60 s timeout, and a
 * watchdog ends everything 90 s after the deadline. Exit 0 only when there
 * were no failures and every check passed; the figures are printed either way.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import type { EfxClient } from "../src/client.ts";
import {
  clientArgs,
  connectClient,
  efx,
  makeWorkDir,
  randomFile,
  sha256File,
  startServer,
  tempFilesIn,
  type TestServer,
} from "./helpers/server.ts";
import { mulberry32 } from "./helpers/mitm.ts";

const MiB = 1024 * 1024;
const RSS_LIMIT = 300 * MiB;
const OP_TIMEOUT_MS = 60_000;
const SIZES = [0, 1, 100, 4096, 65_535, 262_144, 262_145, 1_000_000, 1_048_577, 2_500_000, 4 * MiB];

const { values } = parseArgs({
  args: Deno.args,
  options: {
    clients: { type: "string" },
    seconds: { type: "string" },
    cli: { type: "string" },
    seed: { type: "string" },
    short: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log(
    "usage: deno run <perms> tests/soak.ts [--clients 100] [--seconds 30] [--cli 3] [--short] [--seed N]",
  );
  Deno.exit(0);
}
const int = (v: string | undefined, fallback: number, name: string, max: number) => {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0 || n > max) {
    console.error(`soak: ${name} must be a whole number from 0 to ${max}`);
    Deno.exit(2);
  }
  return n;
};
const CLIENTS = int(values.clients, 100, "--clients", 2000);
const SECONDS = int(values.seconds, values.short ? 10 : 30, "--seconds", 3600);
const CLI_WORKERS = int(values.cli, 3, "--cli", 32);
const SEED = int(values.seed, Date.now() % 1_000_000, "--seed", 2 ** 31);

// ---------------------------------------------------------------------------

interface Stats {
  uploads: number;
  downloads: number;
  lists: number;
  removes: number;
  connects: number;
  cliRuns: number;
  bytes: number;
  failures: number;
  errors: Map<string, number>;
}

const stats: Stats = {
  uploads: 0,
  downloads: 0,
  lists: 0,
  removes: 0,
  connects: 0,
  cliRuns: 0,
  bytes: 0,
  failures: 0,
  errors: new Map(),
};

function fail(what: string, err: unknown): void {
  stats.failures++;
  const msg = `${what}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`;
  stats.errors.set(msg, (stats.errors.get(msg) ?? 0) + 1);
}

function withTimeout<T>(p: Promise<T>, what: string, onTimeout: () => void): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new Error(`${what} timed out after ${OP_TIMEOUT_MS / 1000} s`));
    }, OP_TIMEOUT_MS);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

interface PoolFile {
  path: string;
  size: number;
  sha: string;
  /** Name of the shared copy on the server. */
  remote: string;
}

/**
 * VmRSS of process `pid` from /proc/PID/status, in bytes (null when gone).
 * Read through `cat`: Deno lets only --allow-all read another process's /proc files.
 */
async function rss(pid: number): Promise<number | null> {
  try {
    const out = await new Deno.Command("cat", {
      args: [`/proc/${pid}/status`],
      stdout: "piped",
      stderr: "null",
    }).output();
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(new TextDecoder().decode(out.stdout));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

// ---------------------------------------------------------------------------

/** One in-process client's loop until `deadline`. */
async function clientLoop(
  id: number,
  server: TestServer,
  pool: PoolFile[],
  work: string,
  deadline: number,
): Promise<void> {
  const rnd = mulberry32(SEED * 7919 + id);
  const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)];
  const mine: { name: string; file: PoolFile }[] = [];
  let client: EfxClient | null = null;
  let k = 0;
  const dir = `soak/c${id}`;
  while (performance.now() < deadline) {
    k++;
    try {
      if (client === null) {
        const c = await withTimeout(connectClient(server), `client ${id} connect`, () => {});
        client = c;
        stats.connects++;
      }
      const c: EfxClient = client;
      const abort = () => c.channel.abort();
      const r = rnd();
      if (r < 0.45 || (r < 0.9 && mine.length === 0)) {
        const file = pick(pool);
        const name = `${dir}/f${k}.bin`;
        const res = await withTimeout(c.upload(file.path, name), `upload ${name}`, abort);
        stats.uploads++;
        stats.bytes += res.bytes;
        if (res.sha256 !== file.sha || res.peerSha256 !== file.sha || res.bytes !== file.size) {
          throw new Error(
            `upload ${name}: sha256 sent ${res.sha256}, server ${res.peerSha256}, expected ${file.sha}`,
          );
        }
        mine.push({ name, file });
        if (mine.length > 3) {
          const old = mine.shift()!;
          await withTimeout(c.remove(old.name), `rm ${old.name}`, abort);
          stats.removes++;
        }
      } else if (r < 0.9) {
        const shared = rnd() < 0.4;
        const { name, file } = shared
          ? (() => {
            const f = pick(pool);
            return { name: f.remote, file: f };
          })()
          : pick(mine);
        const local = join(work, `c${id}-${k}.bin`);
        const res = await withTimeout(c.download(name, local), `download ${name}`, abort);
        stats.downloads++;
        stats.bytes += res.bytes;
        const onDisk = await sha256File(local);
        await Deno.remove(local);
        if (onDisk !== file.sha || res.sha256 !== file.sha || res.bytes !== file.size) {
          throw new Error(
            `download ${name}: file on disk ${onDisk}, reported ${res.sha256}, expected ${file.sha}`,
          );
        }
      } else {
        const entries = await withTimeout(c.list(`${dir}/*`), `ls ${dir}`, abort);
        stats.lists++;
        const got = entries.map((e) => e.name).sort();
        const want = mine.map((m) => m.name).sort();
        if (JSON.stringify(got) !== JSON.stringify(want)) {
          throw new Error(`ls ${dir}: ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
        }
      }
      if (rnd() < 0.125) {
        await withTimeout(c.close(), `client ${id} close`, abort);
        client = null;
      }
    } catch (err) {
      fail(`client ${id}`, err);
      if (client?.channel.broken) client.channel.abort();
      client?.channel.abort();
      client = null;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  if (client) {
    await withTimeout(client.close(), `client ${id} final close`, () => client?.channel.abort())
      .catch((e) => fail(`client ${id}`, e));
  }
}

/** One CLI worker's loop until `deadline`: upload, download, check, remove. */
async function cliLoop(
  id: number,
  server: TestServer,
  pool: PoolFile[],
  work: string,
  deadline: number,
) {
  const rnd = mulberry32(SEED * 104_729 + id);
  let k = 0;
  while (performance.now() < deadline) {
    k++;
    const file = pool[Math.floor(rnd() * pool.length)];
    const name = `cli/w${id}-${k}.bin`;
    const local = join(work, `cli-${id}-${k}.bin`);
    try {
      const up = await efx(["upload", file.path, "--as", name, "-q", ...clientArgs(server)], {
        timeoutMs: OP_TIMEOUT_MS,
      });
      stats.cliRuns++;
      if (up.code !== 0) throw new Error(`efx upload exit ${up.code}: ${up.stderr.trim()}`);
      stats.uploads++;
      stats.bytes += file.size;
      const down = await efx(["download", name, "-o", local, "-q", ...clientArgs(server)], {
        timeoutMs: OP_TIMEOUT_MS,
      });
      stats.cliRuns++;
      if (down.code !== 0) throw new Error(`efx download exit ${down.code}: ${down.stderr.trim()}`);
      stats.downloads++;
      stats.bytes += file.size;
      const sha = await sha256File(local);
      await Deno.remove(local);
      if (sha !== file.sha) {
        throw new Error(`efx download ${name}: sha256 ${sha}, expected ${file.sha}`);
      }
      const rm = await efx(["rm", name, "-q", ...clientArgs(server)], { timeoutMs: OP_TIMEOUT_MS });
      stats.cliRuns++;
      if (rm.code !== 0) throw new Error(`efx rm exit ${rm.code}: ${rm.stderr.trim()}`);
      stats.removes++;
    } catch (err) {
      fail(`cli worker ${id}`, err);
    }
  }
}

// ---------------------------------------------------------------------------

async function main(): Promise<number> {
  console.log(
    `soak: ${CLIENTS} in-process clients + ${CLI_WORKERS} CLI workers for ${SECONDS} s, seed ${SEED}`,
  );
  const work = await makeWorkDir("efx-soak-");
  const extra = CLIENTS + CLI_WORKERS > 200
    ? ["--max-connections", String(CLIENTS + CLI_WORKERS + 56)]
    : [];
  // Every simulated client comes from 127.0.0.1: the per-address cap (64 by
  // default, pinned in hostile_resources_test.ts) would evict them; here they
  // stand for many hosts.
  extra.push("--max-per-address", String(CLIENTS + CLI_WORKERS + 56));
  const server = await startServer({ args: extra });
  const problems: string[] = [];
  const samples: { t: number; rss: number }[] = [];
  let watchdog: ReturnType<typeof setTimeout> | undefined;
  try {
    // The pool: every size once, uploaded once as shared copies.
    const pool: PoolFile[] = [];
    for (const [i, size] of SIZES.entries()) {
      const path = join(work, `pool-${i}-${size}.bin`);
      const sha = await randomFile(path, size);
      pool.push({ path, size, sha, remote: `pool/${i}-${size}.bin` });
    }
    const seedClient = await connectClient(server);
    for (const f of pool) await seedClient.upload(f.path, f.remote);
    await seedClient.close();
    const dl = join(work, "dl");
    await Deno.mkdir(dl);

    const pid = server.proc.pid;
    const t0 = performance.now();
    const deadline = t0 + SECONDS * 1000;
    const sample = async () => {
      const t = (performance.now() - t0) / 1000;
      const v = await rss(pid);
      if (v !== null) samples.push({ t, rss: v });
    };
    await sample();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        await new Promise((r) => setTimeout(r, 250));
        await sample();
      }
    })();
    watchdog = setTimeout(() => {
      console.error(`soak: FAILED: still running ${SECONDS + 90} s after the start; giving up`);
      try {
        server.proc.kill("SIGKILL");
      } catch { /* gone */ }
      Deno.exit(1);
    }, (SECONDS + 90) * 1000);

    const workers = [
      ...Array.from({ length: CLIENTS }, (_, i) => clientLoop(i, server, pool, dl, deadline)),
      ...Array.from({ length: CLI_WORKERS }, (_, i) => cliLoop(i, server, pool, dl, deadline)),
    ];
    let last = 0;
    const progress = setInterval(() => {
      const done = stats.uploads + stats.downloads;
      const s = samples.at(-1);
      console.log(
        `  t=${((performance.now() - t0) / 1000).toFixed(0)}s transfers ${done} (+${
          done - last
        }) ` +
          `failures ${stats.failures} server RSS ${s ? mib(s.rss) : "?"}`,
      );
      last = done;
    }, 5000);
    await Promise.all(workers);
    clearInterval(progress);
    const elapsed = (performance.now() - t0) / 1000;
    sampling = false;
    await sampler;
    await sample();

    // Checks after the run.
    const left = await tempFilesIn(server.root);
    if (left.length) problems.push(`temp files left on the server: ${left.join(", ")}`);
    const log = server.stderr();
    const internal = log.match(/^.*internal error.*$/m);
    if (internal) problems.push(`server logged: ${internal[0]}`);
    const dropped = log.match(/^.*connection dropped.*$/gm) ?? [];
    if (dropped.length) {
      problems.push(`server dropped ${dropped.length} connection(s), e.g. ${dropped[0]}`);
    }

    // Memory: bounded, and not growing steadily over the last half.
    const peak = Math.max(...samples.map((s) => s.rss));
    const half = samples.filter((s) => s.t >= SECONDS / 2 && s.t <= SECONDS);
    const q3 = half.filter((s) => s.t < (SECONDS * 3) / 4).map((s) => s.rss);
    const q4 = half.filter((s) => s.t >= (SECONDS * 3) / 4).map((s) => s.rss);
    const med = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1] ?? 0;
    let slope = 0;
    if (half.length >= 2) {
      const mt = half.reduce((n, s) => n + s.t, 0) / half.length;
      const mr = half.reduce((n, s) => n + s.rss, 0) / half.length;
      const num = half.reduce((n, s) => n + (s.t - mt) * (s.rss - mr), 0);
      const den = half.reduce((n, s) => n + (s.t - mt) ** 2, 0);
      slope = den > 0 ? num / den : 0;
    }
    if (samples.length < 4) problems.push(`only ${samples.length} RSS sample(s) of the server`);
    if (peak >= RSS_LIMIT) problems.push(`server peak RSS ${mib(peak)} >= ${mib(RSS_LIMIT)}`);
    if (q3.length && q4.length && med(q4) > med(q3) * 1.25 + 16 * MiB) {
      problems.push(
        `server RSS grows over the last half: median ${mib(med(q3))} -> ${mib(med(q4))}`,
      );
    }

    const transfers = stats.uploads + stats.downloads;
    console.log("soak: results");
    console.log(
      `  duration          ${
        elapsed.toFixed(1)
      } s (${CLIENTS} clients, ${CLI_WORKERS} CLI workers)`,
    );
    console.log(
      `  transfers         ${transfers} (${stats.uploads} up, ${stats.downloads} down): ${
        (transfers / elapsed).toFixed(1)
      } transfers/s`,
    );
    console.log(
      `  other requests    ${stats.lists} ls, ${stats.removes} rm; ${stats.connects} connections, ${stats.cliRuns} CLI runs`,
    );
    console.log(
      `  bytes moved       ${mib(stats.bytes)} (${(stats.bytes / MiB / elapsed).toFixed(1)} MiB/s)`,
    );
    console.log(`  failures          ${stats.failures}`);
    for (const [msg, n] of [...stats.errors].slice(0, 10)) console.log(`    ${n} x ${msg}`);
    console.log(
      `  server RSS        start ${mib(samples[0]?.rss ?? 0)}, peak ${mib(peak)}, end ${
        mib(samples.at(-1)?.rss ?? 0)
      }; ` +
        `last half: median ${mib(med(q3))} -> ${mib(med(q4))}, slope ${
          (slope / MiB).toFixed(2)
        } MiB/s (${samples.length} samples)`,
    );
    console.log(`  soak process RSS  ${mib(Deno.memoryUsage().rss)}`);
  } catch (err) {
    problems.push(`soak aborted: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
  } finally {
    const status = await server.stop();
    if (status.code !== 0) problems.push(`server exit status ${JSON.stringify(status)}`);
    clearTimeout(watchdog);
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  if (stats.failures > 0) problems.push(`${stats.failures} failed operation(s)`);
  if (stats.uploads + stats.downloads === 0) problems.push("no transfer completed");
  for (const p of problems) console.error(`soak: FAILED: ${p}`);
  if (!problems.length) console.log("soak: OK");
  return problems.length ? 1 : 0;
}

Deno.exit(await main());
