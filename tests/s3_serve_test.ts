/**
 * `efx serve --storage s3://...` end to end, against the real store (Ceph
 * RGW, see tests/helpers/s3.ts): real CLI clients, real nodes under the
 * `serve-s3` task's permissions, several nodes on one bucket, store failures.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  clientArgs,
  efx,
  makeWorkDir,
  randomFile,
  sha256File,
  spawnEfx,
  waitFor,
} from "./helpers/server.ts";
import {
  listKeys,
  removePrefix,
  S3_AVAILABLE,
  type S3Node,
  s3TestConfig,
  startS3Node,
} from "./helpers/s3.ts";
import type { S3Config } from "../src/storage/s3_client.ts";
import { writeKeyPair } from "../src/keys.ts";
import { loadClientIdentity } from "../src/auth.ts";
import { EfxClient } from "../src/client.ts";
import { makeServerVerifier } from "../src/trust.ts";

const MiB = 1024 * 1024;

function s3test(name: string, fn: (config: S3Config, work: string) => Promise<void>) {
  Deno.test({
    name: `s3 serve: ${name}`,
    ignore: !S3_AVAILABLE,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const config = s3TestConfig()!;
      const work = await makeWorkDir();
      try {
        await fn(config, work);
      } finally {
        await removePrefix(config);
        await Deno.remove(work, { recursive: true }).catch(() => {});
      }
    },
  });
}

async function withNodes(
  config: S3Config,
  n: number,
  fn: (nodes: S3Node[]) => Promise<void>,
  args: string[] = [],
): Promise<void> {
  const nodes: S3Node[] = [];
  try {
    for (let i = 0; i < n; i++) nodes.push(await startS3Node(config, { args }));
    await fn(nodes);
  } finally {
    await Promise.all(nodes.map((x) => x.stop()));
  }
}

/** The one line a failed CLI run prints (no stack trace is checked by the helper). */
function errorLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.startsWith("efx:") && /error|fail|cannot/i.test(l));
}

s3test("upload through one node, list and download through another", async (config, work) => {
  await withNodes(config, 2, async ([a, b]) => {
    const big = join(work, "big.bin");
    const bigSha = await randomFile(big, 20 * MiB + 12345);
    const small = join(work, "small.txt");
    await Deno.writeTextFile(small, "hello s3\n");
    await Deno.chmod(small, 0o640);
    let r = await efx(["upload", big, "--as", "dir/big.bin", ...clientArgs(a)]);
    assert.equal(r.code, 0, r.stderr);
    r = await efx(["upload", small, ...clientArgs(a)]);
    assert.equal(r.code, 0, r.stderr);
    r = await efx(["upload", small, ...clientArgs(b)]);
    assert.equal(r.code, 1, "no-clobber through the other node");
    assert.match(r.stderr, /already exists/);
    r = await efx(["ls", "-r", ...clientArgs(b)]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 3, r.stdout);
    assert.match(lines.find((l) => l.endsWith(" dir/big.bin"))!, new RegExp(`${20 * MiB + 12345}`));
    assert.match(lines.find((l) => l.endsWith(" small.txt"))!, /^-rw-r-----/);
    const back = join(work, "back.bin");
    r = await efx(["download", "dir/big.bin", "-o", back, ...clientArgs(b)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await sha256File(back), bigSha);
    r = await efx(["rm", "dir/big.bin", ...clientArgs(b)]);
    assert.equal(r.code, 0, r.stderr);
    // The removed file's chunks are gone from the store; nothing else lingers.
    assert.deepEqual(await listKeys(config), ["dir/", "small.txt"]);
  });
});

s3test("start refused with one line: bad credentials, missing bucket, no store", async (config) => {
  const cases: [Partial<S3Config>, RegExp][] = [
    [{ secretKey: "wrong-secret" }, /refused this server's credentials/],
    [{ bucket: "efx-no-such-bucket" }, /bucket efx-no-such-bucket does not exist/],
    [{ endpoint: "http://127.0.0.1:9" }, /object store unreachable at http:\/\/127\.0\.0\.1:9/],
  ];
  for (const [change, want] of cases) {
    const err = await startS3Node({ ...config, ...change, attempts: 1 }).then(
      async (n) => {
        await n.stop();
        return null;
      },
      (e: Error) => e.message,
    );
    assert.ok(err, `started with ${JSON.stringify(change)}`);
    assert.match(err, want);
    const errs = err.split("\n").filter((l) => l.startsWith("efx: "));
    assert.ok(errs.some((l) => want.test(l)), err);
    assert.doesNotMatch(err, /^\s+at /m);
  }
});

s3test("credentials from --s3-credentials FILE (under the serve-s3 task)", async (config, work) => {
  const node = await startS3Node(config, { credentialsFile: true });
  try {
    const f = join(work, "c.txt");
    await Deno.writeTextFile(f, "credentials from a file\n");
    const r = await efx(["upload", f, ...clientArgs(node)]);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    await node.stop();
  }
});

/** A TCP relay to the store that a test can cut and restore. */
function relay(target: URL) {
  let listener: Deno.Listener | null = null;
  const conns = new Set<Deno.Conn>();
  let port = 0;
  const serve = (l: Deno.Listener) => {
    (async () => {
      for await (const c of l) {
        conns.add(c);
        (async () => {
          let up: Deno.Conn | undefined;
          try {
            up = await Deno.connect({ hostname: target.hostname, port: Number(target.port) });
            conns.add(up);
            await Promise.all([
              c.readable.pipeTo(up.writable).catch(() => {}),
              up.readable.pipeTo(c.writable).catch(() => {}),
            ]);
          } catch {
            /* cut */
          } finally {
            for (const x of [c, up]) {
              if (!x) continue;
              conns.delete(x);
              try {
                x.close();
              } catch { /* closed */ }
            }
          }
        })();
      }
    })().catch(() => {});
  };
  const open = () => {
    listener = Deno.listen({ hostname: "127.0.0.1", port });
    port = (listener.addr as Deno.NetAddr).port;
    serve(listener);
  };
  open();
  return {
    get endpoint() {
      return `http://127.0.0.1:${port}`;
    },
    cut() {
      listener?.close();
      listener = null;
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      conns.clear();
    },
    restore: open,
  };
}

s3test(
  "store cut mid-run: one clear line, nothing partial, the node stays up",
  async (config, work) => {
    const r0 = relay(new URL(config.endpoint));
    const viaRelay = { ...config, endpoint: r0.endpoint };
    await withNodes(viaRelay, 1, async ([node]) => {
      const file = join(work, "f.bin");
      const sha = await randomFile(file, 64 * MiB);
      // Cut while no request is running: the next one fails after its retries.
      r0.cut();
      let r = await efx(["upload", file, "--as", "early.bin", ...clientArgs(node)]);
      assert.equal(r.code, 1);
      const lines = errorLines(r.stderr);
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], /object store unreachable at http:\/\/127\.0\.0\.1:\d+ \(connection/);
      r0.restore();
      // Cut in the middle of an upload, once its first chunk is being written.
      const run = spawnEfx(["upload", file, "--as", "mid.bin", ...clientArgs(node)]);
      await waitFor(async () => (await listKeys(config)).some((k) => k.startsWith(".efx-data/")), {
        timeoutMs: 30_000,
        intervalMs: 20,
        what: "the first chunk in the store",
      });
      r0.cut();
      r = await run.result;
      assert.equal(r.code, 1, r.stderr);
      assert.equal(errorLines(r.stderr).length, 1, r.stderr);
      assert.match(r.stderr, /object store unreachable|object store stopped/);
      if (Deno.env.get("EFX_TEST_SHOW")) console.log("mid-cut:", r.stderr);
      r0.restore();
      assert.equal(node.proc.pid > 0 && !/internal error/.test(node.stderr()), true, node.stderr());
      r = await efx(["ls", "-r", ...clientArgs(node)]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "", "nothing partial is listed");
      // The same node serves again once the store is back.
      r = await efx(["upload", file, "--as", "mid.bin", ...clientArgs(node)]);
      assert.equal(r.code, 0, r.stderr);
      const back = join(work, "back.bin");
      r = await efx(["download", "mid.bin", "-o", back, ...clientArgs(node)]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await sha256File(back), sha);
    });
    r0.cut();
  },
);

s3test("an upload cut off from one node resumes through another", async (config, work) => {
  await withNodes(config, 2, async ([a, b]) => {
    const file = join(work, "r.bin");
    const sha = await randomFile(file, 48 * MiB + 999);
    const run = spawnEfx(["upload", file, "--resume", ...clientArgs(a)], { allowStackTrace: true });
    await waitFor(
      async () => (await listKeys(config)).filter((k) => k.startsWith(".efx-data/")).length >= 2,
      { timeoutMs: 60_000, intervalMs: 20, what: "two chunks in the store" },
    );
    run.proc.kill("SIGKILL");
    await run.result;
    const r = await efx(["upload", file, "--resume", ...clientArgs(b)]);
    assert.equal(r.code, 0, r.stderr);
    const m = /resumed after (\d+) bytes/.exec(r.stdout + r.stderr);
    assert.ok(m, r.stdout + r.stderr);
    const offset = Number(m[1]);
    if (Deno.env.get("EFX_TEST_SHOW")) console.log("resume:", r.stdout, r.stderr);
    assert.ok(offset >= 8 * MiB && offset % (8 * MiB) === 0, `resumed at ${offset}`);
    await waitFor(() => /resumed at byte \d+/.test(b.stderr()), { what: "node b's log" });
    const back = join(work, "back.bin");
    const d = await efx(["download", "r.bin", "-o", back, ...clientArgs(a)]);
    assert.equal(d.code, 0, d.stderr);
    assert.equal(await sha256File(back), sha);
    const keys = await listKeys(config);
    assert.ok(!keys.some((k) => k.startsWith(".efx-partials/")), keys.join("\n"));
  });
});

s3test("quotas work per node (in memory) and never crash a node", async (config, work) => {
  const kp = await writeKeyPair(join(work, "client"), { bits: 2048, prefix: "client" });
  const acl = `${kp.fingerprint} rights=rw quota=100K\n`;
  const node = await startS3Node(config, { authorizedClients: acl });
  try {
    const c = await EfxClient.connect({
      host: "127.0.0.1",
      port: node.port,
      verifier: makeServerVerifier({
        pinnedFingerprint: node.fingerprint,
        knownServersFile: "/nonexistent/efx/known_servers",
        acceptNew: false,
      }),
      identity: await loadClientIdentity(kp.privatePath),
      handshakeTimeoutMs: 10_000,
    });
    try {
      const file = async (name: string, size: number) => {
        const p = join(work, name);
        await Deno.writeFile(p, new Uint8Array(size).fill(7));
        return p;
      };
      await c.upload(await file("a", 60_000), "a");
      await assert.rejects(c.upload(await file("b", 60_000), "b"), /exceed your quota/);
      await c.remove("a");
      await c.upload(await file("b", 60_000), "b");
    } finally {
      await c.close();
    }
    assert.match(node.stderr(), /quotas .* counted per node in memory/);
  } finally {
    await node.stop();
  }
});

Deno.test("s3 client: a 5xx is retried with backoff, then one clear line; 4xx is not retried", async () => {
  // A stand-in for a failing store (no real store needed): counts the requests it gets.
  let hits = 0;
  const times: number[] = [];
  let status = 503;
  const srv = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    hits++;
    times.push(performance.now());
    return new Response(
      `<?xml version="1.0"?><Error><Code>${
        status === 503 ? "SlowDown" : "NoSuchBucket"
      }</Code></Error>`,
      { status },
    );
  });
  try {
    const { S3Storage } = await import("../src/storage/s3.ts");
    const { S3Client } = await import("../src/storage/s3_client.ts");
    const config = {
      endpoint: `http://127.0.0.1:${srv.addr.port}`,
      region: "us-east-1",
      bucket: "efx",
      prefix: "",
      accessKey: "a",
      secretKey: "b",
      attempts: 4,
      backoffMs: 40,
    };
    const c = new S3Client(config);
    await assert.rejects(c.head("x"), (err: Error & { code?: string }) => {
      assert.equal(err.code, "io");
      assert.equal(err.message, "object store error (HTTP 503); try again later");
      return true;
    });
    assert.equal(hits, 4, "an idempotent call is tried 4 times");
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    assert.ok(gaps[0] >= 35 && gaps[2] >= 150, `backoff doubles: ${gaps.map(Math.round)}`);
    // A non-idempotent call is sent once.
    hits = 0;
    await assert.rejects(c.request("POST", "x", { idempotent: false }), /HTTP 503/);
    assert.equal(hits, 1);
    // A missing bucket is not retried and is named.
    hits = 0;
    status = 404;
    await assert.rejects(
      S3Storage.open(config, { partialTtlMs: 1000 }),
      /cannot use object store s3:\/\/efx\/: object store: bucket efx does not exist at http/,
    );
    assert.equal(hits, 1);
  } finally {
    await srv.shutdown();
  }
});
