/**
 * Several nodes on one bucket behind a load balancer: three `efx serve
 * --storage s3://...` nodes behind HAProxy (TCP mode, round robin, all on
 * 127.0.0.1), 20 concurrent CLI clients uploading and downloading, one node
 * SIGKILLed mid-run. Every transfer either completes, or fails with one
 * clear line and then succeeds on retry through the load balancer (uploads
 * with `--resume`, sending only what the store does not have). At the end
 * every object's SHA-256 matches, nothing partial is listed, and two
 * clients racing to create one name give exactly one winner.
 *
 * Prints its outcome counts (`cluster:` lines) for the record.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { efx, freePort, makeWorkDir, randomFile, sha256File } from "./helpers/server.ts";
import {
  removePrefix,
  S3_AVAILABLE,
  type S3Node,
  s3TestConfig,
  startS3Node,
} from "./helpers/s3.ts";
import { S3Client } from "../src/storage/s3_client.ts";
import { S3Storage } from "../src/storage/s3.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const CLIENTS = 20;
const SIZES = [200 * KiB, 3 * MiB, 25 * MiB + 77];
const MAX_ATTEMPTS = 6;

function haproxyPath(): string {
  for (const p of ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"]) {
    try {
      Deno.statSync(p);
      return p;
    } catch { /* next */ }
  }
  throw new Error(
    "haproxy not found: install the Debian package haproxy (scripts/s3-store-start.sh does)",
  );
}

async function startHaproxy(dir: string, port: number, backends: number[]) {
  const cfg = join(dir, "haproxy.cfg");
  await Deno.writeTextFile(
    cfg,
    [
      "global",
      "  maxconn 2000",
      "defaults",
      "  mode tcp",
      "  timeout connect 2s",
      "  timeout client 120s",
      "  timeout server 120s",
      "  retries 3",
      "  option redispatch",
      "frontend efx",
      `  bind 127.0.0.1:${port}`,
      "  default_backend nodes",
      "backend nodes",
      "  balance roundrobin",
      ...backends.map((p, i) => `  server n${i} 127.0.0.1:${p} check inter 300ms fall 1 rise 2`),
      "",
    ].join("\n"),
  );
  const proc = new Deno.Command(haproxyPath(), {
    args: ["-db", "-f", cfg],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const reader = (async () => {
    for await (const c of proc.stderr.pipeThrough(new TextDecoderStream())) log += c;
  })();
  // Listening once a TCP connect succeeds.
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      if (i === 199) throw new Error(`haproxy did not listen:\n${log}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  return {
    async stop() {
      try {
        proc.kill("SIGTERM");
      } catch { /* gone */ }
      await proc.status;
      await reader.catch(() => {});
    },
  };
}

interface Outcome {
  firstTry: number;
  retried: number;
  resumed: number;
  /** Retries that found the upload had completed (its reply was lost with the node). */
  completedUnseen: number;
  failedLines: string[];
}

Deno.test({
  name: "s3 cluster: 3 nodes behind HAProxy, 20 clients, one node SIGKILLed mid-run",
  ignore: !S3_AVAILABLE,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const config = s3TestConfig()!;
    const work = await makeWorkDir("efx-cluster-");
    const nodes: S3Node[] = [];
    let lb: { stop(): Promise<void> } | undefined;
    const t0 = performance.now();
    try {
      for (let i = 0; i < 3; i++) nodes.push(await startS3Node(config));
      const lbPort = freePort();
      lb = await startHaproxy(work, lbPort, nodes.map((n) => n.port));
      const conn = ["--server", `127.0.0.1:${lbPort}`, "--server-key", nodes[0].pubKeyPath];

      const files: { local: string; name: string; sha: string; size: number }[] = [];
      for (let i = 0; i < CLIENTS; i++) {
        const size = SIZES[i % SIZES.length];
        const local = join(work, `f${i}.bin`);
        files.push({
          local,
          name: `c${i % 4}/f${i}.bin`,
          sha: await randomFile(local, size),
          size,
        });
      }
      const store = new S3Client(config);
      const storedSha = async (name: string) =>
        (await store.head(store.key(name)))?.get("x-amz-meta-efx-sha256") ?? null;

      const up: Outcome = {
        firstTry: 0,
        retried: 0,
        resumed: 0,
        completedUnseen: 0,
        failedLines: [],
      };
      const down: Outcome = {
        firstTry: 0,
        retried: 0,
        resumed: 0,
        completedUnseen: 0,
        failedLines: [],
      };
      const oneLine = (stderr: string, o: Outcome) => {
        const lines = stderr.trim().split("\n").filter((l) => l.startsWith("efx: "));
        assert.equal(lines.length, 1, `a failure must be one line:\n${stderr}`);
        o.failedLines.push(lines[0]);
      };

      let killed = false;
      const transfer = async (f: typeof files[number], i: number) => {
        // Upload, retried through the load balancer with --resume.
        for (let a = 1;; a++) {
          assert.ok(a <= MAX_ATTEMPTS, `upload ${f.name}: still failing after ${MAX_ATTEMPTS}`);
          const r = await efx(["upload", f.local, "--as", f.name, "--resume", ...conn]);
          if (r.code === 0) {
            if (a === 1) up.firstTry++;
            else up.retried++;
            if (/resumed after [1-9]\d* bytes/.test(r.stdout + r.stderr)) up.resumed++;
            break;
          }
          if (a > 1 && /already exists/.test(r.stderr) && await storedSha(f.name) === f.sha) {
            up.completedUnseen++;
            break;
          }
          oneLine(r.stderr, up);
          await new Promise((res) => setTimeout(res, 200 * a));
        }
        // Download and compare.
        const back = join(work, `back-${i}.bin`);
        for (let a = 1;; a++) {
          assert.ok(a <= MAX_ATTEMPTS, `download ${f.name}: still failing after ${MAX_ATTEMPTS}`);
          const r = await efx(["download", f.name, "-o", back, "--resume", ...conn]);
          if (r.code === 0) {
            if (a === 1) down.firstTry++;
            else down.retried++;
            if (/resumed/.test(r.stdout + r.stderr)) down.resumed++;
            break;
          }
          oneLine(r.stderr, down);
          await new Promise((res) => setTimeout(res, 200 * a));
        }
        assert.equal(await sha256File(back), f.sha, `${f.name} came back different`);
      };

      const killer = (async () => {
        // Kill one node while large uploads are under way on the nodes.
        const deadline = Date.now() + 60_000;
        while (Date.now() < deadline) {
          let chunks = 0;
          for await (const page of store.list(store.key(".efx-data/"))) {
            chunks += page.objects.length;
          }
          if (chunks >= 8) break;
          await new Promise((r) => setTimeout(r, 20));
        }
        nodes[1].proc.kill("SIGKILL");
        killed = true;
      })();
      await Promise.all([...files.map(transfer), killer]);
      assert.ok(killed);
      const runMs = performance.now() - t0;

      // Two clients race to create one name, three times: exactly one wins each time.
      let raceWins = 0;
      for (let round = 0; round < 3; round++) {
        const [x, y] = [files[round], files[round + 3]];
        const rs = await Promise.all(
          [x, y].map((f) => efx(["upload", f.local, "--as", `race-${round}.bin`, ...conn])),
        );
        const wins = rs.filter((r) => r.code === 0).length;
        assert.equal(wins, 1, rs.map((r) => r.stderr).join("\n"));
        const loser = rs.find((r) => r.code !== 0)!;
        assert.match(loser.stderr, /already exists/);
        const winner = rs[0].code === 0 ? x : y;
        assert.equal(await storedSha(`race-${round}.bin`), winner.sha);
        raceWins += wins;
      }

      // Every object's SHA-256 (kept in the store's metadata) matches; nothing partial is listed.
      for (const f of files) assert.equal(await storedSha(f.name), f.sha, f.name);
      const ls = await efx(["ls", "-r", ...conn]);
      assert.equal(ls.code, 0, ls.stderr);
      const names = ls.stdout.trim().split("\n").map((l) => l.split(" ").at(-1)!.replace(/\/$/, ""))
        .sort();
      const want = [
        "c0",
        "c1",
        "c2",
        "c3",
        ...files.map((f) => f.name),
        "race-0.bin",
        "race-1.bin",
        "race-2.bin",
      ].sort();
      assert.deepEqual(names, want);
      // A record may be left by the killed node when it died between publishing a file and
      // removing the record; the sweep (here with TTL 0) removes such records and never
      // the chunks of a published file.
      const records = async () => {
        const keys: string[] = [];
        for (const area of [".efx-partials/", ".efx-uploads/"]) {
          for await (const page of store.list(store.key(area))) {
            for (const o of page.objects) keys.push(o.key);
          }
        }
        return keys;
      };
      const leftover = (await records()).length;
      const sweeper = await S3Storage.open(config, { partialTtlMs: 0 });
      await sweeper.sweepPartials();
      assert.deepEqual(await records(), []);
      for (const f of files.filter((f) => f.size > 20 * MiB)) {
        const back = join(work, "after-sweep.bin");
        const r = await efx(["download", f.name, "-o", back, "-f", ...conn]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(await sha256File(back), f.sha, `${f.name} after the sweep`);
      }

      console.log(
        `cluster: ${CLIENTS} clients, node 1 SIGKILLed; uploads ${up.firstTry} first try, ` +
          `${up.retried} after retry (${up.resumed} resumed, ${up.completedUnseen} had completed ` +
          `unseen); downloads ${down.firstTry} first try, ${down.retried} after retry; ` +
          `${up.failedLines.length + down.failedLines.length} failed attempts; race winners ` +
          `${raceWins}/3; ${leftover} record(s) left by the killed node; transfers took ${
            (runMs / 1000).toFixed(1)
          } s`,
      );
      for (const l of new Set([...up.failedLines, ...down.failedLines])) {
        console.log(`cluster: failure line seen: ${l}`);
      }
    } finally {
      await lb?.stop();
      await Promise.all(nodes.map((n) => n.stop("SIGKILL")));
      await removePrefix(config);
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
