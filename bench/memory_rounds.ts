/**
 * `deno task bench-memory`: one server's memory and CPU over repeated
 * transfers, round after round, to tell a bounded peak from a slow leak.
 *
 *     deno task bench-memory [--size 1G] [--rounds 5] [--files N] [--main PATH] [--out FILE]
 *
 * Starts a real `efx serve` (the serve task's V8 flags, a throwaway
 * 3072-bit key and storage), then each round uploads a random file of
 * `--size` and downloads it back with the `efx` CLI (the efx task's V8
 * flags), checking the SHA-256. Before each transfer the server's VmHWM is
 * reset (/proc/PID/clear_refs), so each figure is that transfer's peak; after
 * it the anonymous and file-backed parts of its RSS (RssAnon, RssFile) and
 * the server's CPU time for it are read from /proc. `--files N` adds to each
 * round an upload of N files of 4 KiB in one invocation (as `deno task
 * bench` does between its rounds). `--main` runs another
 * checkout's main.ts (for an A/B of two versions of the code, alternating).
 * Needs `-A` (Deno guards /proc behind it). Linux only.
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
  makeRandomFile,
  makeSmallFiles,
  parseSize,
  resetPeakRss,
  runMeasured,
  sha256File,
  startEfxServer,
  statusKiB,
} from "./measure.ts";
import { writeKeyPair } from "../src/keys.ts";

/** One transfer's figures. */
export interface RoundFigures {
  round: number;
  direction: "upload" | "download" | "small files";
  ms: number;
  serverPeakKiB: number;
  serverAnonKiB: number;
  serverFileKiB: number;
  serverCpuMs: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      size: { type: "string" },
      rounds: { type: "string" },
      files: { type: "string" },
      main: { type: "string" },
      out: { type: "string" },
    },
  });
  const size = parseSize(values.size ?? "1G");
  const rounds = Number(values.rounds ?? 5);
  const nFiles = Number(values.files ?? 0);
  const mainTs = values.main ?? new URL("../main.ts", import.meta.url).pathname;
  const clientFlags = benchFlags("efx");
  const serverFlags = benchFlags("serve");

  const tmp = await Deno.makeTempDir({ prefix: "efx-bench-mem-" });
  let server: Deno.ChildProcess | undefined;
  try {
    const kp = await writeKeyPair(join(tmp, "keys"), { bits: 3072 });
    const big = join(tmp, "big.bin");
    const back = join(tmp, "back.bin");
    await makeRandomFile(big, size);
    const sha = await sha256File(big);
    const smallDir = join(tmp, "small");
    await Deno.mkdir(smallDir);
    const smallNames = await makeSmallFiles(smallDir, nFiles);
    const port = await freePort();
    server = await startEfxServer({
      main: mainTs,
      flags: serverFlags,
      port,
      root: join(tmp, "storage"),
      key: kp.privatePath,
    });
    const pid = server.pid;
    const conn = ["--server", `127.0.0.1:${port}`, "--server-key", kp.publicPath, "--quiet"];
    const figures: RoundFigures[] = [];
    const transfer = async (round: number, direction: RoundFigures["direction"]) => {
      const args = direction === "upload"
        ? ["upload", big, "--as", "big.bin", "--force"]
        : direction === "download"
        ? ["download", "big.bin", "-o", back, "--force"]
        : ["upload", ...smallNames, "--force"];
      resetPeakRss(pid);
      const cpu0 = cpuMsOf(pid);
      const r = await runMeasured([
        Deno.execPath(),
        "run",
        ...clientFlags,
        mainTs,
        ...args,
        ...conn,
      ], { cwd: smallDir });
      if (r.code !== 0) throw new Error(`efx ${direction} failed: ${r.stderr.trim()}`);
      const kib = statusKiB(pid, ["VmHWM", "RssAnon", "RssFile"]);
      figures.push({
        round,
        direction,
        ms: r.ms,
        serverPeakKiB: kib.VmHWM,
        serverAnonKiB: kib.RssAnon,
        serverFileKiB: kib.RssFile,
        serverCpuMs: cpuMsOf(pid) - cpu0,
      });
    };
    for (let round = 1; round <= rounds; round++) {
      await transfer(round, "upload");
      await transfer(round, "download");
      if (await sha256File(back) !== sha) throw new Error(`round ${round}: the download differs`);
      if (nFiles > 0) await transfer(round, "small files");
    }
    const mib = (kib: number) => (kib / 1024).toFixed(1);
    console.log(
      `efx server memory, ${rounds} rounds of ${size} bytes up and down, ${mainTs}, ${
        new Date().toISOString().slice(0, 10)
      }`,
    );
    console.log(formatTable(
      ["round", "transfer", "MB/s", "peak RSS MiB", "anon MiB", "file MiB", "server CPU ms"],
      figures.map((f) => [
        String(f.round),
        f.direction,
        f.direction === "small files" ? "-" : (size / 1e6 / (f.ms / 1000)).toFixed(0),
        mib(f.serverPeakKiB),
        mib(f.serverAnonKiB),
        mib(f.serverFileKiB),
        f.serverCpuMs.toFixed(0),
      ]),
    ));
    if (values.out) {
      await Deno.writeTextFile(
        values.out,
        JSON.stringify({ size, rounds, files: nFiles, main: mainTs, figures }, null, 2) + "\n",
      );
    }
  } finally {
    if (server) {
      server.kill("SIGTERM");
      await server.status;
    }
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) await main();
