/**
 * `deno task bench --s3 [--size 256M] [--runs 3] [--quick]`: efx through the
 * S3 backend against the store itself.
 *
 * One `efx serve --storage s3://...` node on the store of the S3 tests (see
 * tests/helpers/s3.ts: started by scripts/s3-store-start.sh), and for the
 * same random file (256 MiB; 32 MiB with --quick):
 *   - efx upload / efx download (the real CLI, encrypted channel, chunked
 *     objects, hash checks) through the node,
 *   - a direct signed PUT / GET of one object of the same size with the same
 *     library (`aws4fetch`), the store's own speed on this machine,
 * reported as medians and as ratios efx / direct (1.0 = as fast as the
 * store; above 1, efx takes that many times longer).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { AwsClient } from "aws4fetch";
import { makeRandomFile, median, runMeasured, sha256File } from "./measure.ts";
import { removePrefix, s3Env, startS3Node } from "../tests/helpers/s3.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MAIN = join(ROOT, "main.ts");
const CLIENT_FLAGS = ["--allow-net", "--allow-read", "--allow-write", "--allow-env"];
const MB = 1e6;

function parseSize(s: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(s);
  if (!m) throw new Error(`bad --size ${s}`);
  return Number(m[1]) * ({ "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2].toUpperCase()]!);
}

/** Runs the S3 benchmark with `args` (bench.ts's arguments without `--s3`); returns an exit code. */
export async function main(args: string[]): Promise<number> {
  const { values: opt } = parseArgs({
    args,
    options: {
      size: { type: "string" },
      runs: { type: "string" },
      quick: { type: "boolean" },
      "no-ssh": { type: "boolean" }, // accepted (and meaningless here), as for bench.ts
      out: { type: "string" },
    },
  });
  const size = parseSize(opt.size ?? (opt.quick ? "32M" : "256M"));
  const runs = Number(opt.runs ?? 3);
  const env = s3Env();
  if (env === null) {
    console.error(
      "bench --s3: no S3 store configured: run scripts/s3-store-start.sh (or set S3_ENDPOINT, " +
        "S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET)",
    );
    return 1;
  }
  const config = { ...env, prefix: `bench-${crypto.randomUUID()}/` };
  const log = (s: string) => console.error(`bench s3: ${s}`);
  const work = await Deno.makeTempDir({ prefix: "efx-bench-s3-" });
  const node = await startS3Node(config);
  try {
    const file = join(work, "data.bin");
    await makeRandomFile(file, size);
    const want = await sha256File(file);
    const conn = ["--server", `127.0.0.1:${node.port}`, "--server-key", node.pubKeyPath];
    const efx = (a: string[]) =>
      runMeasured([Deno.execPath(), "run", ...CLIENT_FLAGS, MAIN, ...a, ...conn]);
    const aws = new AwsClient({
      accessKeyId: config.accessKey,
      secretAccessKey: config.secretKey,
      service: "s3",
      region: config.region,
      retries: 0,
    });
    const url = `${config.endpoint}/${config.bucket}/${config.prefix}direct.bin`;
    const t = {
      efxUp: [] as number[],
      efxDown: [] as number[],
      putMs: [] as number[],
      getMs: [] as number[],
    };
    for (let i = 0; i < runs; i++) {
      const up = await efx(["upload", file, "--as", "data.bin", "-f"]);
      if (up.code !== 0) throw new Error(`efx upload failed (exit ${up.code})`);
      t.efxUp.push(up.ms);
      const back = join(work, "back.bin");
      const down = await efx(["download", "data.bin", "-o", back, "-f"]);
      if (down.code !== 0) throw new Error(`efx download failed (exit ${down.code})`);
      if (await sha256File(back) !== want) throw new Error("efx download: wrong content");
      await Deno.remove(back);
      t.efxDown.push(down.ms);
      // Direct: one signed PUT of the whole file (read into memory first, not timed), one GET.
      const body = await Deno.readFile(file);
      let t0 = performance.now();
      const put = await aws.fetch(url, {
        method: "PUT",
        body,
        headers: { "x-amz-content-sha256": "UNSIGNED-PAYLOAD" },
      });
      await put.body?.cancel();
      if (!put.ok) throw new Error(`direct PUT: HTTP ${put.status}`);
      t.putMs.push(performance.now() - t0);
      t0 = performance.now();
      const get = await aws.fetch(url);
      if (!get.ok) throw new Error(`direct GET: HTTP ${get.status}`);
      let got = 0;
      for await (const c of get.body!) got += c.length;
      t.getMs.push(performance.now() - t0);
      if (got !== size) throw new Error(`direct GET: ${got} of ${size} bytes`);
      log(
        `run ${i + 1}/${runs}: efx up ${up.ms.toFixed(0)} ms, down ${down.ms.toFixed(0)} ms; ` +
          `direct PUT ${t.putMs.at(-1)!.toFixed(0)} ms, GET ${t.getMs.at(-1)!.toFixed(0)} ms`,
      );
    }
    const rate = (ms: number) => `${(size / MB / (ms / 1000)).toFixed(0)} MB/s`;
    const m = {
      efxUp: median(t.efxUp),
      efxDown: median(t.efxDown),
      put: median(t.putMs),
      get: median(t.getMs),
    };
    const result = {
      when: new Date().toISOString(),
      sizeBytes: size,
      runs,
      store: "Ceph RGW (scripts/s3-store-start.sh), loopback",
      medianMs: m,
      ratioUpload: m.efxUp / m.put,
      ratioDownload: m.efxDown / m.get,
      note: "efx times are whole CLI runs (process start, handshake, hash checks included); " +
        "direct times are one PUT/GET with aws4fetch, body already in memory for the PUT",
    };
    console.log(
      [
        `S3 backend, ${(size / 1024 / 1024).toFixed(0)} MiB, median of ${runs}:`,
        `  upload:   efx ${m.efxUp.toFixed(0)} ms (${rate(m.efxUp)})  direct PUT ${
          m.put.toFixed(0)
        } ms (${rate(m.put)})  ratio ${result.ratioUpload.toFixed(2)}`,
        `  download: efx ${m.efxDown.toFixed(0)} ms (${rate(m.efxDown)})  direct GET ${
          m.get.toFixed(0)
        } ms (${rate(m.get)})  ratio ${result.ratioDownload.toFixed(2)}`,
      ].join("\n"),
    );
    if (opt.out) await Deno.writeTextFile(opt.out, JSON.stringify(result, null, 2) + "\n");
    return 0;
  } finally {
    await node.stop();
    await removePrefix(config).catch(() => {});
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
