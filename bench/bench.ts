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
 *      then twice as many from 16 clients at once (per second, p50/p99, the
 *      server's CPU per handshake),
 *      then protocol v1 against v2 (forward secrecy) interleaved on the same
 *      server, and v2 against a second server that rotates its ephemeral
 *      key every 5 s (the background key generation must not stall handshakes),
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
  benchFlags,
  cpuMsOf,
  formatTable,
  freePort,
  machineInfo,
  makeRandomFile,
  makeSmallFiles,
  median,
  parseSize,
  peakRssOf,
  percentile,
  resetPeakRss,
  runMeasured,
  sha256File,
  startEfxServer,
} from "./measure.ts";
import { type SshdHandle, startSshd } from "./sshd.ts";
import { SecureChannel } from "../src/channel.ts";
import { describeFloor, type Floor, measureFloor } from "./floor.ts";
import { describeOneSide, oneSide } from "./one_side.ts";
import { EfxClient } from "../src/client.ts";
import { writeKeyPair } from "../src/keys.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MAIN = join(ROOT, "main.ts");

/** The clients': the `efx` task's V8 flags. */
const CLIENT_FLAGS = benchFlags("efx");
/** The servers': the `serve` task's V8 flags (a 1 MiB young generation: see README). */
const SERVER_FLAGS = benchFlags("serve");

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
    "one-side": { type: "boolean" },
    out: { type: "string" },
  },
});

const quick = opt.quick === true;
const size = parseSize(opt.size ?? (quick ? "256M" : "1G"));
const runs = Number(opt.runs ?? 3);
const nFiles = Number(opt.files ?? (quick ? 200 : 1000));
const nHandshakes = Number(opt.handshakes ?? (quick ? 50 : 200));
const outPath = opt.out ?? join(ROOT, "bench", quick ? "results-quick.json" : "results.json");

const MB = 1e6;
/** Clients at once in the concurrent handshake measurement. */
const HS_CONCURRENCY = 16;
/** Ephemeral key lifetime of the rotating server in the handshake benchmark. */
const ROT_LIFETIME_S = 5;
const log = (s: string) => console.error(`bench: ${s}`);

interface Series {
  ms: number[];
  clientRssKiB: number[];
  serverRssKiB: number[];
  /** CPU time of the client process (all threads; see runMeasured). */
  clientCpuMs: number[];
  /** CPU time the server process used during the transfer. */
  serverCpuMs: number[];
}
const newSeries = (): Series => ({
  ms: [],
  clientRssKiB: [],
  serverRssKiB: [],
  clientCpuMs: [],
  serverCpuMs: [],
});

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
  const smallNames = await makeSmallFiles(smallDir, nFiles);
  const smallSha = new Map<string, string>();
  for (const name of smallNames) smallSha.set(name, await sha256File(join(smallDir, name)));

  // The crypto floor, measured in this process before and after the efx runs.
  const floors: Floor[] = [await measureFloor()];
  log(describeFloor(floors[0]));

  // --- efx server -------------------------------------------------------
  const keyDir = join(tmp, "keys");
  const kp = await writeKeyPair(keyDir, { bits: 3072 });
  const port = await freePort();
  const storage = join(tmp, "storage");
  const server = await startEfxServer({
    main: MAIN,
    flags: SERVER_FLAGS,
    port,
    root: storage,
    key: kp.privatePath,
    stderr: "piped",
  });
  procs.push(server);
  const efxConn = ["--server", `127.0.0.1:${port}`, "--server-key", kp.publicPath, "--quiet"];
  const efx = (args: string[], cwd?: string) =>
    runMeasured([Deno.execPath(), "run", ...CLIENT_FLAGS, MAIN, ...args, ...efxConn], { cwd });

  const results: Record<string, unknown> = {};
  // A client's start-up (Deno, modules, handshake) is not per MiB: the CPU of
  // an `efx ls` (the least of three) is subtracted from the client's figures.
  const startup: number[] = [];
  for (let i = 0; i < 3; i++) startup.push((await must("efx ls", efx(["ls"]))).cpuMs);
  const startupCpuMs = Math.min(...startup);
  results.clientStartupCpuMs = startup;
  log(`client start-up (efx ls): ${startupCpuMs.toFixed(0)} ms CPU`);
  const efxUp = newSeries(), efxDown = newSeries();
  const efxSmall: number[] = [];
  for (let r = 0; r < runs; r++) {
    resetPeakRss(server.pid);
    let cpu0 = cpuMsOf(server.pid);
    const up = await must("efx upload", efx(["upload", big, "--as", "big.bin", "--force"]));
    efxUp.ms.push(up.ms);
    efxUp.clientRssKiB.push(up.peakRssKiB);
    efxUp.serverRssKiB.push(peakRssOf(server.pid));
    efxUp.clientCpuMs.push(up.cpuMs);
    efxUp.serverCpuMs.push(cpuMsOf(server.pid) - cpu0);
    await checkSha(join(storage, "big.bin"), bigSha, "efx upload");
    const dl = join(tmp, "down.bin");
    resetPeakRss(server.pid);
    cpu0 = cpuMsOf(server.pid);
    const down = await must("efx download", efx(["download", "big.bin", "-o", dl, "--force"]));
    efxDown.ms.push(down.ms);
    efxDown.clientRssKiB.push(down.peakRssKiB);
    efxDown.serverRssKiB.push(peakRssOf(server.pid));
    efxDown.clientCpuMs.push(down.cpuMs);
    efxDown.serverCpuMs.push(cpuMsOf(server.pid) - cpu0);
    await checkSha(dl, bigSha, "efx download");
    await Deno.remove(dl);
    log(
      `efx run ${r + 1}: upload ${fmtRate(size, up.ms)} (CPU/MiB client ${
        perMiB(up.cpuMs)
      }, server ${perMiB(efxUp.serverCpuMs.at(-1)!)}), download ${fmtRate(size, down.ms)} (${
        perMiB(down.cpuMs)
      }, ${perMiB(efxDown.serverCpuMs.at(-1)!)})`,
    );

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
  floors.push(await measureFloor());
  log(describeFloor(floors[1]));
  const floor = floors[0].total / 2 + floors[1].total / 2;
  results.floor = { runs: floors, meanMsPerMiB: floor };

  let oneSideLine = "";
  if (opt["one-side"]) {
    const os = await oneSide(big, size, keyDir, tmp);
    results.oneSide = os;
    oneSideLine = describeOneSide(os, floor);
    log(oneSideLine);
  }

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

  // The same with HS_CONCURRENCY clients at once: what the server sustains
  // (sequential handshakes wait for each RSA decryption in turn). The
  // clients share the machine's cores with the server.
  const parMs: number[] = [];
  let parStarted = 0;
  const parCpu0 = cpuMsOf(server.pid);
  const tp = performance.now();
  await Promise.all(Array.from({ length: HS_CONCURRENCY }, async () => {
    while (parStarted++ < 2 * nHandshakes) {
      const t = performance.now();
      const c = await EfxClient.connect({ host: "127.0.0.1", port, verifier: pinned });
      parMs.push(performance.now() - t);
      await c.close();
    }
  }));
  const parTotal = performance.now() - tp;
  const parServerCpu = (cpuMsOf(server.pid) - parCpu0) / parMs.length;
  results.handshakesConcurrent = {
    clients: HS_CONCURRENCY,
    count: parMs.length,
    totalMs: parTotal,
    serverCpuMsPerHandshake: parServerCpu,
    ms: parMs,
  };
  log(
    `efx handshakes, ${HS_CONCURRENCY} at once: ${(parMs.length / (parTotal / 1000)).toFixed(0)}/s`,
  );

  // v1 (secret to the long-term key) against v2 (to the signed ephemeral key),
  // same server and key, interleaved so that drift hits both alike. The time
  // is connect + handshake; the close is not counted.
  const handshakeAt = async (p: number, version: number) => {
    const t = performance.now();
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: p });
    const ch = await SecureChannel.client(conn, {
      verifyServerKey: () => Promise.resolve(),
      version,
    });
    const ms = performance.now() - t;
    if (ch.session.version !== version) {
      throw new Error(`asked v${version}, got v${ch.session.version}`);
    }
    await ch.closeAndWait();
    return { ms, eph: ch.session.ephemeralFingerprint };
  };
  const v1Ms: number[] = [], v2Ms: number[] = [];
  for (let i = 0; i < nHandshakes; i++) {
    v1Ms.push((await handshakeAt(port, 1)).ms);
    v2Ms.push((await handshakeAt(port, 2)).ms);
  }
  const perSec = (ms: number[]) => 1000 / (ms.reduce((a, b) => a + b, 0) / ms.length);
  log(`handshakes v1 ${perSec(v1Ms).toFixed(0)}/s, v2 ${perSec(v2Ms).toFixed(0)}/s`);

  // v2 while the server rotates: a second server, ephemeral lifetime 5 s, for
  // at least 16 s (3 rotations or more, each a background 3072-bit key
  // generation of about 1-2 s of one core: a worst case, as with the default
  // 1 h it happens once an hour).
  const rotPort = await freePort();
  const rotServer = await startEfxServer({
    main: MAIN,
    flags: SERVER_FLAGS,
    port: rotPort,
    root: join(tmp, "storage-rot"),
    key: kp.privatePath,
    extra: ["--ephemeral-lifetime", `${ROT_LIFETIME_S}s`],
  });
  procs.push(rotServer);
  const rotMs: number[] = [];
  const rotKeys = new Set<string>();
  const rotStart = performance.now();
  while (rotMs.length < nHandshakes || performance.now() - rotStart < 16_000) {
    const r = await handshakeAt(rotPort, 2);
    rotMs.push(r.ms);
    rotKeys.add(r.eph!);
  }
  log(
    `v2 during rotations: ${rotMs.length} handshakes, ${rotKeys.size} ephemeral keys seen, ` +
      `p99 ${percentile(rotMs, 99).toFixed(1)} ms, max ${Math.max(...rotMs).toFixed(1)} ms`,
  );
  results.handshakeVersions = {
    note: "connect + handshake, close not counted; v1 and v2 interleaved on one server",
    v1: { count: v1Ms.length, ms: v1Ms, perSecond: perSec(v1Ms) },
    v2: { count: v2Ms.length, ms: v2Ms, perSecond: perSec(v2Ms) },
    v2Rotating: {
      lifetimeMs: ROT_LIFETIME_S * 1000,
      maxMs: Math.max(...rotMs),
      count: rotMs.length,
      keysSeen: rotKeys.size,
      ms: rotMs,
      perSecond: perSec(rotMs),
    },
  };

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
  const vsFloor = (cpu: number[]) => {
    const m = median(cpu) / (size / 1024 ** 2);
    return `${m.toFixed(2)} (${(m / floor).toFixed(2)}x)`;
  };
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
      vsFloor(series.clientCpuMs.map((c) => c - startupCpuMs)),
      vsFloor(series.serverCpuMs),
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
  const p5099 = (ms: number[]) =>
    `${percentile(ms, 50).toFixed(1)} / ${percentile(ms, 99).toFixed(1)}`;
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
  rows.push([
    `${HS_CONCURRENCY} at once: handshakes/s, p50/p99 ms`,
    `${(parMs.length / (parTotal / 1000)).toFixed(0)}/s, ${p5099(parMs)}`,
    "-",
    "-",
    "-",
    "-",
    "-",
  ]);
  for (
    const [name, ms] of [
      ["v1 (no forward secrecy)", v1Ms],
      ["v2 (ephemeral key)", v2Ms],
      [`v2, key rotated every ${ROT_LIFETIME_S} s (${rotKeys.size} keys)`, rotMs],
    ] as const
  ) {
    rows.push([
      `${name}: handshakes/s, p50/p99 ms`,
      `${perSec(ms).toFixed(0)}/s, ${p5099(ms)}`,
      "-",
      "-",
      "-",
      "-",
      "-",
    ]);
  }
  const header = [
    "workload",
    "efx",
    "scp",
    "scp aes128-gcm",
    "efx/scp speed",
    "client RSS",
    "server RSS",
    "client CPU ms/MiB",
    "server CPU ms/MiB",
  ];
  const table = formatTable(header, rows);
  const date = new Date().toISOString().slice(0, 10);
  console.log(
    `efx benchmark, ${date}, ${info.cores} cores, ${info.cpu}, runs=${runs}, median (min-max)`,
  );
  console.log(table);
  console.log(
    `${describeFloor(floors[0])}; after the runs ${
      floors[1].total.toFixed(2)
    }; CPU columns: median per MiB (x the mean floor ${
      floor.toFixed(2)
    }), client net of its start-up (${startupCpuMs.toFixed(0)} ms)`,
  );
  console.log(
    `handshakes ${HS_CONCURRENCY} at once: the server's CPU ${
      parServerCpu.toFixed(2)
    } ms each (one server core: ${(1000 / parServerCpu).toFixed(0)}/s)`,
  );
  if (oneSideLine) console.log(oneSideLine);
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

function perMiB(cpuMs: number): string {
  return `${(cpuMs / (size / 1024 ** 2)).toFixed(2)} ms`;
}

function fmtRate(bytes: number, ms: number): string {
  return `${(bytes / MB / (ms / 1000)).toFixed(0)} MB/s`;
}
