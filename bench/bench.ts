/**
 * `deno task bench`: efx against OpenSSH's scp on this machine, in one run.
 *
 *     deno task bench [--size 1G] [--quick] [--runs 3] [--files 1000] [--handshakes 200]
 *                     [--no-ssh] [--out bench/results.json]
 *
 * Starts a real `efx serve` (throwaway 3072-bit key and storage, loopback
 * port) and a throwaway `sshd` (bench/sshd.ts), then measures, each run at
 * least `--runs` times (median and min-max reported):
 *   1. upload of a random file (1 GiB; 256 MiB with --quick),
 *   2. download of it back,
 *   3. 1000 files of 4 KiB in one client invocation,
 *   4. handshakes: 200 sequential connections (p50/p99 latency, per second),
 * with the same workloads through scp (default cipher and aes128-gcm). Peak
 * RSS of the efx client (sampled from /proc) and server (VmHWM, reset before
 * each run through /proc/PID/clear_refs) is recorded for 1 and 2. Every
 * transferred file's SHA-256 is checked, so a fast wrong result cannot count.
 * Prints one table and writes the raw figures to `--out`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import {
  formatTable,
  freePort,
  machineInfo,
  makeRandomFile,
  median,
  percentile,
  runMeasured,
  sha256File,
} from "./measure.ts";
import { type SshdHandle, startSshd } from "./sshd.ts";
import { EfxClient } from "../src/client.ts";
import { writeKeyPair } from "../src/keys.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MAIN = join(ROOT, "main.ts");
/** The same permissions as the `efx` and `serve` tasks in deno.json. */
const CLIENT_FLAGS = ["--allow-net", "--allow-read", "--allow-write", "--allow-env"];

// `--s3`: the S3 backend's benchmark instead (bench/s3.ts).
if (Deno.args.includes("--s3")) {
  const { main } = await import("./s3.ts");
  Deno.exit(await main(Deno.args.filter((a) => a !== "--s3")));
}

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string" },
    quick: { type: "boolean" },
    runs: { type: "string" },
    files: { type: "string" },
    handshakes: { type: "string" },
    "no-ssh": { type: "boolean" },
    out: { type: "string" },
  },
});

function parseSize(s: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(s);
  if (!m) throw new Error(`bad --size ${s}`);
  return Number(m[1]) * ({ "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2].toUpperCase()]!);
}

const quick = opt.quick === true;
const size = parseSize(opt.size ?? (quick ? "256M" : "1G"));
const runs = Number(opt.runs ?? 3);
const nFiles = Number(opt.files ?? (quick ? 200 : 1000));
const nHandshakes = Number(opt.handshakes ?? (quick ? 50 : 200));
const outPath = opt.out ?? join(ROOT, "bench", quick ? "results-quick.json" : "results.json");

const MB = 1e6;
const log = (s: string) => console.error(`bench: ${s}`);

interface Series {
  ms: number[];
  clientRssKiB: number[];
  serverRssKiB: number[];
}
const newSeries = (): Series => ({ ms: [], clientRssKiB: [], serverRssKiB: [] });

function resetPeak(pid: number) {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
  } catch { /* not permitted: the figure is then the process's all-time peak */ }
}

function serverPeakKiB(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

async function must<T extends { code: number; stderr: string }>(
  what: string,
  r: Promise<T>,
): Promise<T> {
  const res = await r;
  if (res.code !== 0) throw new Error(`${what} failed (exit ${res.code}): ${res.stderr.trim()}`);
  return res;
}

async function checkSha(path: string, want: string, what: string) {
  const got = await sha256File(path);
  if (got !== want) throw new Error(`${what}: SHA-256 mismatch (${got} != ${want})`);
}

const tmp = await Deno.makeTempDir({ prefix: "efx-bench-" });
const procs: Deno.ChildProcess[] = [];
let sshd: SshdHandle | null = null;
try {
  const info = machineInfo();
  log(`machine: ${info.cores} cores, ${info.cpu}`);
  log(`making a ${size / 1024 ** 2} MiB random file and ${nFiles} x 4 KiB files in ${tmp}`);
  const big = join(tmp, "big.bin");
  await makeRandomFile(big, size);
  const bigSha = await sha256File(big);
  const smallDir = join(tmp, "small");
  await Deno.mkdir(smallDir);
  const smallNames: string[] = [];
  const smallSha = new Map<string, string>();
  for (let i = 0; i < nFiles; i++) {
    const name = `f${String(i).padStart(4, "0")}.bin`;
    const p = join(smallDir, name);
    await makeRandomFile(p, 4096);
    smallNames.push(name);
    smallSha.set(name, await sha256File(p));
  }

  // --- efx server -------------------------------------------------------
  const keyDir = join(tmp, "keys");
  const kp = await writeKeyPair(keyDir, { bits: 3072 });
  const port = await freePort();
  const storage = join(tmp, "storage");
  const server = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...CLIENT_FLAGS,
      MAIN,
      "serve",
      "--port",
      String(port),
      "--host",
      "127.0.0.1",
      "--root",
      storage,
      "--key",
      kp.privatePath,
      "--quiet",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  procs.push(server);
  await waitForPort(port);
  const efxConn = ["--server", `127.0.0.1:${port}`, "--server-key", kp.publicPath, "--quiet"];
  const efx = (args: string[], cwd?: string) =>
    runMeasured([Deno.execPath(), "run", ...CLIENT_FLAGS, MAIN, ...args, ...efxConn], { cwd });

  const results: Record<string, unknown> = {};
  const efxUp = newSeries(), efxDown = newSeries();
  const efxSmall: number[] = [];
  for (let r = 0; r < runs; r++) {
    resetPeak(server.pid);
    const up = await must("efx upload", efx(["upload", big, "--as", "big.bin", "--force"]));
    efxUp.ms.push(up.ms);
    efxUp.clientRssKiB.push(up.peakRssKiB);
    efxUp.serverRssKiB.push(serverPeakKiB(server.pid));
    await checkSha(join(storage, "big.bin"), bigSha, "efx upload");
    const dl = join(tmp, "down.bin");
    resetPeak(server.pid);
    const down = await must("efx download", efx(["download", "big.bin", "-o", dl, "--force"]));
    efxDown.ms.push(down.ms);
    efxDown.clientRssKiB.push(down.peakRssKiB);
    efxDown.serverRssKiB.push(serverPeakKiB(server.pid));
    await checkSha(dl, bigSha, "efx download");
    await Deno.remove(dl);
    log(`efx run ${r + 1}: upload ${fmtRate(size, up.ms)}, download ${fmtRate(size, down.ms)}`);

    const s = await must(
      "efx upload (small files)",
      efx(["upload", ...smallNames, "--force"], smallDir),
    );
    efxSmall.push(s.ms);
    for (const n of smallNames) {
      await checkSha(join(storage, n), smallSha.get(n)!, `efx small ${n}`);
    }
    log(`efx run ${r + 1}: ${nFiles} x 4 KiB in ${(s.ms / 1000).toFixed(2)} s`);
  }
  results.efx = { upload: efxUp, download: efxDown, smallFilesMs: efxSmall };

  // Handshakes: sequential connections from this process (no process start-up in the figure).
  const pinned = () => Promise.resolve({ fingerprint: kp.fingerprint, status: "pinned" as const });
  const hsMs: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < nHandshakes; i++) {
    const t = performance.now();
    const c = await EfxClient.connect({ host: "127.0.0.1", port, verifier: pinned });
    hsMs.push(performance.now() - t);
    await c.close();
  }
  const hsTotal = performance.now() - t0;
  results.handshakes = { count: nHandshakes, totalMs: hsTotal, ms: hsMs };
  log(`efx handshakes: ${(nHandshakes / (hsTotal / 1000)).toFixed(0)}/s`);

  // --- scp ---------------------------------------------------------------
  const scpRows: Record<string, { up: number[]; down: number[]; small: number[] }> = {};
  let sshNote = "";
  if (opt["no-ssh"]) {
    sshNote = "scp skipped (--no-ssh)";
  } else {
    const started = await startSshd();
    if ("skipped" in started) sshNote = `scp skipped: ${started.skipped}`;
    else sshd = started;
  }
  const sshHs: number[] = [];
  if (sshd) {
    const remoteDir = join(tmp, "scp-remote");
    await Deno.mkdir(remoteDir);
    for (
      const [label, extra] of [["scp", []], ["scp aes128-gcm", [
        "-c",
        "aes128-gcm@openssh.com",
      ]]] as const
    ) {
      const row = { up: [] as number[], down: [] as number[], small: [] as number[] };
      for (let r = 0; r < runs; r++) {
        const up = await must(
          label,
          runMeasured([...sshd.scpArgs([...extra]), big, sshd.remote(join(remoteDir, "big.bin"))]),
        );
        row.up.push(up.ms);
        await checkSha(join(remoteDir, "big.bin"), bigSha, `${label} upload`);
        const dl = join(tmp, "scp-down.bin");
        const down = await must(
          label,
          runMeasured([...sshd.scpArgs([...extra]), sshd.remote(join(remoteDir, "big.bin")), dl]),
        );
        row.down.push(down.ms);
        await checkSha(dl, bigSha, `${label} download`);
        await Deno.remove(dl);
        const smallRemote = join(remoteDir, "small");
        await Deno.mkdir(smallRemote, { recursive: true });
        const s = await must(
          `${label} small files`,
          runMeasured(
            [...sshd.scpArgs([...extra]), ...smallNames, sshd.remote(smallRemote + "/")],
            { cwd: smallDir },
          ),
        );
        row.small.push(s.ms);
        for (const n of smallNames) {
          await checkSha(join(smallRemote, n), smallSha.get(n)!, `${label} small ${n}`);
        }
        log(
          `${label} run ${r + 1}: upload ${fmtRate(size, up.ms)}, download ${
            fmtRate(size, down.ms)
          }, small ${(s.ms / 1000).toFixed(2)} s`,
        );
      }
      scpRows[label] = row;
    }
    // ssh connections for reference (each includes starting the ssh client process).
    const nSsh = Math.min(nHandshakes, 50);
    for (let i = 0; i < nSsh; i++) {
      const r = await must("ssh", runMeasured([...sshd.sshArgs(), "true"]));
      sshHs.push(r.ms);
    }
    results.scp = scpRows;
    results.sshConnectMs = sshHs;
  }

  // --- table -----------------------------------------------------------
  const rate = (ms: number[]) => ms.map((m) => size / MB / (m / 1000));
  const spread = (xs: number[], digits = 0) =>
    `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}-${
      Math.max(...xs).toFixed(digits)
    })`;
  const scpDef = scpRows["scp"], scpGcm = scpRows["scp aes128-gcm"];
  const ratio = (a: number, b?: number) => (b ? (a / b).toFixed(2) + "x" : "-");
  const mib = (kib: number[]) => kib.length ? `${(Math.max(...kib) / 1024).toFixed(0)} MiB` : "-";
  const rows: string[][] = [];
  const sizeLabel = `${size / 1024 ** 2} MiB`;
  for (
    const [name, series, key] of [["upload " + sizeLabel, efxUp, "up"], [
      "download " + sizeLabel,
      efxDown,
      "down",
    ]] as const
  ) {
    const e = rate(series.ms);
    const s = scpDef ? rate(scpDef[key]) : undefined;
    const g = scpGcm ? rate(scpGcm[key]) : undefined;
    rows.push([
      name + " (MB/s)",
      spread(e),
      s ? spread(s) : "-",
      g ? spread(g) : "-",
      ratio(median(e), s && median(s)),
      mib(series.clientRssKiB),
      mib(series.serverRssKiB),
    ]);
  }
  const secs = (ms: number[]) => ms.map((m) => m / 1000);
  rows.push([
    `${nFiles} x 4 KiB (s)`,
    spread(secs(efxSmall), 2),
    scpDef ? spread(secs(scpDef.small), 2) : "-",
    scpGcm ? spread(secs(scpGcm.small), 2) : "-",
    scpDef ? ratio(median(scpDef.small), median(efxSmall)) : "-",
    "-",
    "-",
  ]);
  rows.push([
    `handshakes/s (${nHandshakes} seq.)`,
    (nHandshakes / (hsTotal / 1000)).toFixed(0),
    sshHs.length ? (1000 / median(sshHs)).toFixed(0) + " (ssh+exec)" : "-",
    "-",
    "-",
    "-",
    "-",
  ]);
  rows.push([
    "handshake p50/p99 (ms)",
    `${percentile(hsMs, 50).toFixed(1)} / ${percentile(hsMs, 99).toFixed(1)}`,
    sshHs.length
      ? `${percentile(sshHs, 50).toFixed(0)} / ${percentile(sshHs, 99).toFixed(0)}`
      : "-",
    "-",
    "-",
    "-",
    "-",
  ]);
  const header = [
    "workload",
    "efx",
    "scp",
    "scp aes128-gcm",
    "efx/scp speed",
    "client RSS",
    "server RSS",
  ];
  const table = formatTable(header, rows);
  const date = new Date().toISOString().slice(0, 10);
  console.log(
    `efx benchmark, ${date}, ${info.cores} cores, ${info.cpu}, runs=${runs}, median (min-max)`,
  );
  console.log(table);
  if (sshNote) console.log(sshNote);
  await Deno.writeTextFile(
    outPath,
    JSON.stringify(
      { date, machine: info, size, runs, files: nFiles, table, note: sshNote, results },
      null,
      2,
    ) + "\n",
  );
  log(`raw figures written to ${outPath}`);
} finally {
  for (const p of procs) {
    try {
      p.kill("SIGTERM");
      await p.status;
    } catch { /* gone */ }
  }
  await sshd?.stop();
  await Deno.remove(tmp, { recursive: true });
}

function fmtRate(bytes: number, ms: number): string {
  return `${(bytes / MB / (ms / 1000)).toFixed(0)} MB/s`;
}

async function waitForPort(port: number): Promise<void> {
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
