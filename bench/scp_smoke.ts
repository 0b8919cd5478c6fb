/**
 * Smoke test of the OpenSSH side of the benchmark harness:
 *
 *   deno run -A bench/scp_smoke.ts [--size-mib 256] [--runs 3] [--files 1000] [--file-kib 4]
 *
 * Starts a throwaway sshd on 127.0.0.1, then with scp:
 *  - uploads and downloads a random file (default 256 MiB) with the default
 *    cipher and with aes128-gcm@openssh.com, checking SHA-256 of the remote
 *    copy and of the round-tripped file;
 *  - copies 1000 x 4 KiB files in one scp invocation, three ways: an explicit
 *    file list (relative names, cwd = the source dir, so argv stays ~10 KB),
 *    `-r` of the directory, and `-O -r` (legacy scp protocol instead of SFTP);
 *    then downloads the directory with `-r`; checks every file's SHA-256;
 * prints a table (MB = 10^6 bytes; RSS = peak VmHWM, client side per
 * process and summed over scp + its ssh child, server side summed over the
 * sshd listener, its per-connection children and sftp-server) and stops sshd. Exit code 0 when all
 * checks pass, 1 on a failed check, 2 when sshd could not be started.
 *
 * "Remote" and local are the same machine and filesystem, so both ends' disk
 * I/O (mostly page cache) and both ends' CPU (2 cores shared by scp, ssh, sshd
 * and sftp-server) are in the figures.
 */

import { parseArgs } from "node:util";
import {
  formatTable,
  machineInfo,
  makeRandomFile,
  type MeasureResult,
  median,
  runMeasured,
  sha256File,
  watchRss,
} from "./measure.ts";
import { startSshd } from "./sshd.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "size-mib": { type: "string", default: "256" },
    runs: { type: "string", default: "3" },
    files: { type: "string", default: "1000" },
    "file-kib": { type: "string", default: "4" },
  },
});
const sizeBytes = Number(values["size-mib"]) * 1024 * 1024;
const runs = Math.max(1, Number(values.runs));
const nFiles = Math.max(1, Number(values.files));
const fileBytes = Number(values["file-kib"]) * 1024;

const t0 = performance.now();
const h = await startSshd();
if ("skipped" in h) {
  console.error(`SKIPPED: cannot start sshd: ${h.skipped}`);
  Deno.exit(2);
}
console.error(`sshd up on 127.0.0.1:${h.port} in ${(performance.now() - t0).toFixed(0)} ms`);

const sshdPid = h.pid;
const local = await Deno.makeTempDir({ prefix: "efx-scp-smoke-" });
const remoteDir = `${h.dir}/remote`;
await Deno.mkdir(remoteDir);
let failures = 0;

function check(ok: boolean, what: string) {
  if (!ok) {
    failures++;
    console.error(`FAIL: ${what}`);
  }
}

type Run = MeasureResult & { serverTreeKiB: number };

/** Runs argv measured, also watching the sshd side (listener + per-connection children). */
async function mustRun(argv: string[], cwd?: string): Promise<Run> {
  const server = watchRss(sshdPid);
  const m = await runMeasured(argv, { cwd, timeoutMs: 300_000 });
  const r = { ...m, serverTreeKiB: server.stop().treePeakRssKiB };
  if (r.code !== 0) {
    throw new Error(`${argv.slice(0, 3).join(" ")}… exited ${r.code}: ${r.stderr.trim()}`);
  }
  return r;
}

const rows: string[][] = [];
const mb = (bytes: number, ms: number) => (bytes / 1e6 / (ms / 1000)).toFixed(1);
const mibOf = (kib: number) => (kib / 1024).toFixed(1) + " MiB";

try {
  // Which cipher does "default" negotiate? (ssh -v prints the kex result.)
  const probe = await runMeasured([...h.sshArgs(["-v"]), "true"]);
  const defaultCipher = /kex: server->client cipher: (\S+)/.exec(probe.stderr)?.[1] ?? "default";

  // Connection setup cost: ssh login + `true`.
  const conn: number[] = [];
  for (let i = 0; i < 5; i++) conn.push((await mustRun([...h.sshArgs(), "true"])).ms);
  rows.push(["ssh login+true", defaultCipher, "", median(conn).toFixed(0), "", "", "", ""]);

  // --- one large file ---
  const src = `${local}/big.bin`;
  console.error(`writing ${sizeBytes} random bytes…`);
  await makeRandomFile(src, sizeBytes);
  const srcSha = await sha256File(src);

  for (const cipher of [defaultCipher, "aes128-gcm@openssh.com"]) {
    const extra = cipher === defaultCipher ? [] : ["-c", cipher];
    const up: Run[] = [];
    const down: Run[] = [];
    for (let i = 0; i < runs; i++) {
      const rpath = `${remoteDir}/big.bin`;
      await Deno.remove(rpath).catch(() => {});
      up.push(await mustRun([...h.scpArgs(extra), src, h.remote(rpath)]));
      if (i === 0) check((await sha256File(rpath)) === srcSha, `upload sha (${cipher})`);

      const dst = `${local}/down.bin`;
      await Deno.remove(dst).catch(() => {});
      down.push(await mustRun([...h.scpArgs(extra), h.remote(rpath), dst]));
      if (i === 0) check((await sha256File(dst)) === srcSha, `round-trip sha (${cipher})`);
    }
    for (const [name, rs] of [["upload", up], ["download", down]] as const) {
      const ms = median(rs.map((r) => r.ms));
      rows.push([
        `${name} ${sizeBytes / 1048576} MiB`,
        cipher,
        String(runs),
        ms.toFixed(0),
        mb(sizeBytes, ms),
        mibOf(Math.max(...rs.map((r) => r.peakRssKiB))),
        mibOf(Math.max(...rs.map((r) => r.treePeakRssKiB))),
        mibOf(Math.max(...rs.map((r) => r.serverTreeKiB))),
      ]);
    }
  }
  await Deno.remove(src);
  await Deno.remove(`${local}/down.bin`).catch(() => {});
  await Deno.remove(`${remoteDir}/big.bin`).catch(() => {});

  // --- many small files ---
  const smallDir = `${local}/small`;
  await Deno.mkdir(smallDir);
  const names: string[] = [];
  const shas = new Map<string, string>();
  for (let i = 0; i < nFiles; i++) {
    const name = `f${String(i).padStart(5, "0")}.bin`;
    names.push(name);
    await makeRandomFile(`${smallDir}/${name}`, fileBytes);
    shas.set(name, await sha256File(`${smallDir}/${name}`));
  }
  const verifyDir = async (dir: string, what: string) => {
    let ok = 0;
    for (const [name, sha] of shas) {
      if ((await sha256File(`${dir}/${name}`).catch(() => "")) === sha) ok++;
    }
    check(ok === shas.size, `${what}: ${ok}/${shas.size} files intact`);
  };
  const total = nFiles * fileBytes;
  const smallCases: { label: string; argv: () => string[]; dst: string; cwd?: string }[] = [
    {
      label: "upload file list",
      dst: `${remoteDir}/list`,
      argv: () => [...h.scpArgs(), ...names, h.remote(`${remoteDir}/list/`)],
      cwd: smallDir,
    },
    {
      label: "upload -r dir",
      dst: `${remoteDir}/rdir`,
      argv: () => [...h.scpArgs(["-r"]), smallDir, h.remote(`${remoteDir}/rdir`)],
    },
    {
      label: "upload -O -r dir",
      dst: `${remoteDir}/odir`,
      argv: () => [...h.scpArgs(["-O", "-r"]), smallDir, h.remote(`${remoteDir}/odir`)],
    },
    {
      label: "download -r dir",
      dst: `${local}/back`,
      argv: () => [...h.scpArgs(["-r"]), h.remote(`${remoteDir}/rdir`), `${local}/back`],
    },
  ];
  for (const c of smallCases) {
    const rs: Run[] = [];
    for (let i = 0; i < runs; i++) {
      await Deno.remove(c.dst, { recursive: true }).catch(() => {});
      // The file-list form needs the target dir to exist; -r creates it.
      if (c.label === "upload file list") await Deno.mkdir(c.dst);
      // The download case needs its source, made by the "upload -r dir" case.
      rs.push(await mustRun(c.argv(), c.cwd));
      if (i === 0) await verifyDir(c.dst, c.label);
    }
    const ms = median(rs.map((r) => r.ms));
    rows.push([
      `${c.label} ${nFiles}x${fileBytes / 1024} KiB`,
      defaultCipher,
      String(runs),
      ms.toFixed(0),
      mb(total, ms),
      mibOf(Math.max(...rs.map((r) => r.peakRssKiB))),
      mibOf(Math.max(...rs.map((r) => r.treePeakRssKiB))),
      mibOf(Math.max(...rs.map((r) => r.serverTreeKiB))),
    ]);
  }
} finally {
  await h.stop();
  await Deno.remove(local, { recursive: true }).catch(() => {});
}

const m = machineInfo();
console.log(`${h.version}; ${m.cpu}, ${m.cores} cores; loopback, same disk both ends`);
console.log(
  formatTable(
    ["case", "cipher", "runs", "median ms", "MB/s", "RSS scp", "RSS scp+ssh", "RSS sshd side"],
    rows,
  ),
);
if (failures > 0) {
  console.error(`${failures} check(s) FAILED`);
  Deno.exit(1);
}
console.log("all checks passed");
