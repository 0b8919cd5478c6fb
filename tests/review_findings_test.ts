/**
 * Findings of the attacker review (clients with valid credentials against a
 * real `efx serve` on loopback). Each test states the guarantee it checks and
 * FAILS while the finding stands; none is ignored.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/review_findings_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { EfxClient } from "../src/client.ts";
import { STAGING_DIR } from "../src/storage/local.ts";
import { sendBytes } from "../src/transfer.ts";
import {
  connectClient,
  makeClientKey,
  makeWorkDir,
  startServer,
  TEMP_PREFIX,
  type TestServer,
  waitFor,
} from "./helpers/server.ts";

const MB = 1024 * 1024;

function connectAs(s: TestServer, keyPath: string): Promise<EfxClient> {
  return connectClient(s, { identityPath: keyPath, handshakeTimeoutMs: 20_000 });
}

/** Sends a plain (form a) `put` and waits for its go-ahead. */
async function putStart(c: EfxClient, name: string, size: number, force = false): Promise<void> {
  await c.channel.sendMessage({ op: "put", name, size, mode: 0o644, mtime: Date.now(), force });
  const go = await c.channel.recvMessage();
  assert.equal(go.ok, true, `put ${name}: ${JSON.stringify(go)}`);
}

/** Sends the data and trailer of a started `put`; returns the server's result. */
async function putFinish(c: EfxClient, data: Uint8Array): Promise<Record<string, unknown>> {
  await sendBytes(c.channel, data);
  return await c.channel.recvMessage();
}

async function request(c: EfxClient, msg: object): Promise<Record<string, unknown>> {
  await c.channel.sendMessage(msg);
  return await c.channel.recvMessage();
}

/** Every `.efx-tmp-` file anywhere under `dir`, staging excluded. */
async function tempsUnder(dir: string): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  const stack = [dir];
  while (stack.length > 0) {
    const d = stack.pop()!;
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      if (e.isDirectory && e.name !== STAGING_DIR) stack.push(p);
      else if (e.isFile && e.name.startsWith(TEMP_PREFIX)) {
        out.push({ path: p, size: (await Deno.lstat(p)).size });
      }
    }
  }
  return out;
}

/** Bytes of all regular files under `dir` (recursively). */
async function bytesUnder(dir: string): Promise<number> {
  let n = 0;
  try {
    for await (const e of Deno.readDir(dir)) {
      const p = join(dir, e.name);
      if (e.isDirectory) n += await bytesUnder(p);
      else if (e.isFile) n += (await Deno.lstat(p)).size;
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return n;
}

async function rss(pid: number): Promise<number> {
  const out = await new Deno.Command("cat", { args: [`/proc/${pid}/status`], stderr: "inherit" })
    .output();
  assert.equal(out.code, 0, `cannot read /proc/${pid}/status`);
  const m = new TextDecoder().decode(out.stdout).match(/^VmRSS:\s+(\d+) kB$/m);
  assert.ok(m, "VmRSS missing");
  return Number(m[1]) * 1024;
}

async function withQuotaServer(
  quota: string,
  fn: (s: TestServer, key: { path: string; fingerprint: string }, work: string) => Promise<void>,
  args: string[] = [],
): Promise<void> {
  const work = await makeWorkDir("efx-review-");
  try {
    const key = await makeClientKey(work, "small");
    const s = await startServer({
      args,
      authorizedClients: `${key.fingerprint} rights=rw quota=${quota}\n`,
    });
    try {
      await fn(s, key, work);
    } finally {
      await s.stop();
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

// ---------------------------------------------------------------------------

Deno.test("review finding 1: a quota client exceeds its quota by renaming a file while replacing it (mv during put)", async () => {
  await withQuotaServer("100K", async (s, key) => {
    const quota = 100 * 1024;
    const data = new Uint8Array(60_000).fill(1);
    const a = await connectAs(s, key.path);
    const b = await connectAs(s, key.path);
    try {
      await putStart(a, "a", data.length);
      assert.equal((await putFinish(a, data)).ok, true);
      // Each round: replace "a" (its own file is credited), and while the
      // upload is under way rename the old "a" away on a second connection.
      for (let i = 1; i <= 3; i++) {
        await a.channel.sendMessage({
          op: "put",
          name: "a",
          size: data.length,
          mode: 0o644,
          mtime: 0,
          force: true,
        });
        if ((await a.channel.recvMessage()).ok !== true) break; // refused: the quota held
        const mv = await request(b, { op: "mv", from: "a", to: `b${i}`, force: false });
        assert.equal(mv.ok, true, JSON.stringify(mv));
        const res = await putFinish(a, data);
        if (res.ok !== true) break; // the server refused: the quota held
      }
      const stored = (await a.list("*")).reduce((n, e) => n + e.size, 0);
      assert.ok(
        stored <= quota,
        `a client with quota=100K stores ${stored} bytes (${
          (await a.list("*")).map((e) => `${e.name}:${e.size}`).join(", ")
        })`,
      );
    } finally {
      await a.close().catch(() => {});
      await b.close().catch(() => {});
    }
  });
});

Deno.test("review finding 2: renaming the folder of an upload under way orphans its temp file (hidden, uncounted, kept until restart)", async () => {
  const s = await startServer();
  try {
    const a = await connectClient(s);
    const b = await connectClient(s);
    try {
      assert.equal((await request(a, { op: "mkdir", name: "d" })).ok, true);
      const data = new Uint8Array(2 * MB).fill(2);
      await putStart(a, "d/x", data.length);
      // The server may refuse the move while the upload is under way (it does:
      // "busy"); if it moves the folder, nothing may be left behind.
      const mv = await request(b, { op: "mv", from: "d", to: "e", force: false });
      assert.ok(mv.ok === true || mv.code === "busy", JSON.stringify(mv));
      const res = await putFinish(a, data);
      if (mv.ok !== true) assert.equal(res.ok, true, "the upload goes on when the move is refused");
      // Whatever the result, nothing of this upload may stay behind hidden.
      await a.close();
      a.channel.abort();
      await waitFor(async () => (await tempsUnder(s.root)).length === 0, {
        what: `no temp files left (result was ${JSON.stringify(res)})`,
        timeoutMs: 5_000,
      }).catch(async () => {
        const left = await tempsUnder(s.root);
        const listed = await b.list(undefined, true);
        assert.fail(
          `upload result ${JSON.stringify(res)}; left on the server's disk: ${
            left.map((t) => `${t.path.slice(s.root.length + 1)} (${t.size} bytes)`).join(", ")
          }; the client's ls -r shows only: ${listed.map((e) => e.name).join(", ")}`,
        );
      });
    } finally {
      a.channel.abort();
      await b.close().catch(() => {});
    }
  } finally {
    await s.stop();
  }
});

Deno.test("review finding 3: interrupted resumable uploads are not counted against the client's quota", async () => {
  await withQuotaServer("100K", async (s, key) => {
    const quota = 100 * 1024;
    const chunk = new Uint8Array(90_000).fill(3);
    const partials = join(s.root, STAGING_DIR, "partials");
    // Three resumable uploads of 100000 bytes each, cut after 90000 bytes.
    for (let i = 0; i < 3; i++) {
      const c = await connectAs(s, key.path);
      const name = `p${i}`;
      await c.channel.sendMessage({
        op: "put",
        name,
        size: 100_000,
        mode: 0o644,
        mtime: Date.now(),
        resume: true,
      });
      const offer = await c.channel.recvMessage();
      if (offer.ok !== true) {
        c.channel.abort();
        break; // refused: the quota held
      }
      await c.channel.sendMessage({ offset: 0 });
      assert.equal((await c.channel.recvMessage()).ok, true);
      // Two DATA records (the second one is held back by sendStream until
      // the source ends), then the connection is cut.
      let release!: () => void;
      const hold = new Promise<void>((r) => release = r);
      const sending = c.channel.sendStream((async function* () {
        yield chunk.subarray(0, 45_000);
        yield chunk.subarray(45_000);
        yield chunk.subarray(0, 1); // held: not sent before `hold`
        await hold;
      })()).catch(() => {});
      // Wait until the server has written both records into the partial.
      await waitFor(async () => (await bytesUnder(partials)) >= (i + 1) * 90_000, {
        what: `partial of ${name} written`,
        timeoutMs: 15_000,
      });
      c.channel.abort();
      release();
      await sending;
    }
    await new Promise((r) => setTimeout(r, 500));
    const held = await bytesUnder(partials);
    assert.ok(
      held <= quota,
      `a client with quota=100K holds ${held} bytes in partial uploads on the server`,
    );
  });
});

Deno.test("review finding 4: link records are neither counted against the quota nor refused by the free-space reserve", async () => {
  // quota=1K, and a reserve no disk can meet: every upload is refused...
  await withQuotaServer("1K", async (s, key) => {
    const c = await connectAs(s, key.path);
    try {
      await c.channel.sendMessage({
        op: "put",
        name: "f",
        size: 10,
        mode: 0o644,
        mtime: 0,
        force: false,
      });
      const put = await c.channel.recvMessage();
      assert.equal(put.ok, false, "an upload must be refused here");
      // ...but links carry 4 KiB of client-chosen data each, without limit.
      const target = "x".repeat(4000);
      const refused: string[] = [];
      for (let i = 0; i < 50; i++) {
        const r = await request(c, { op: "symlink", name: `l${i}`, target, force: false });
        if (r.ok !== true) refused.push(String(r.code));
      }
      const entries = await c.list("*");
      const stored = entries.reduce((n, e) => n + e.size, 0);
      assert.ok(
        refused.length > 0,
        `put was refused (${put.code}), yet 50 links of 4000 bytes were all stored: ${stored} bytes ` +
          `of link targets (readable back with ls) for a client with quota=1K, and each link ` +
          `record takes a file on a disk already below the reserve`,
      );
    } finally {
      await c.close().catch(() => {});
    }
  }, ["--min-free", "1000T"]);
});

Deno.test("review finding 5: recursive listings that clients do not read hold unbounded server memory", async () => {
  const s = await startServer({ args: ["--max-memory", "64M"] });
  const peers: EfxClient[] = [];
  try {
    // Names of ~760 bytes (3 folders of 250), 30000 entries: each listing
    // is one array of every entry, held until it is sent. Made directly on
    // disk for speed; a write client makes the same with mkdir + put.
    let dir = s.root;
    for (let i = 0; i < 3; i++) dir = join(dir, `${i}`.padEnd(250, "x"));
    await Deno.mkdir(dir, { recursive: true });
    const empty = new Uint8Array(0);
    for (let i = 0; i < 30_000; i++) Deno.writeFileSync(join(dir, `f${i}`), empty);
    const before = await rss(s.proc.pid);
    // 40 connections (under the per-address cap) ask for `ls -r` and never read.
    for (let i = 0; i < 40; i++) {
      const c = await connectClient(s);
      peers.push(c);
      await c.channel.sendMessage({ op: "ls", recursive: true });
    }
    const limit = 256 * MB;
    let peak = before;
    const end = performance.now() + 120_000;
    while (performance.now() < end && peak - before <= limit) {
      peak = Math.max(peak, await rss(s.proc.pid));
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.ok(
      peak - before <= limit,
      `with --max-memory 64M, 40 unread listings took the server from ${
        (before / MB).toFixed(0)
      } to ${(peak / MB).toFixed(0)} MB resident`,
    );
  } finally {
    for (const p of peers) p.channel.abort();
    await s.stop();
  }
});

Deno.test("review finding 6: a write client makes every recursive listing fail for everyone (a listing batch over 1 MiB)", async () => {
  const s = await startServer();
  try {
    const w = await connectClient(s);
    const deep = Array.from({ length: 13 }, (_, i) => `${i}`.padEnd(250, "x")).join("/");
    try {
      assert.equal((await request(w, { op: "mkdir", name: deep })).ok, true);
      // 400 empty files with valid names (about 3.3 kB each), pipelined.
      const n = 400;
      for (let i = 0; i < n; i++) {
        await w.channel.sendMessage({
          op: "put",
          name: `${deep}/f${i}`,
          size: 0,
          mode: 0o644,
          mtime: 0,
          pipelined: true,
        });
        await sendBytes(w.channel, new Uint8Array(0));
      }
      for (let i = 0; i < n; i++) assert.equal((await w.channel.recvMessage()).ok, true);
    } finally {
      await w.close().catch(() => {});
    }
    const r = await connectClient(s);
    try {
      const all = await r.list(undefined, true);
      assert.equal(all.filter((e) => e.type === "file").length, 400);
      const tree = await r.tree("0".padEnd(250, "x"));
      assert.equal(tree.filter((e) => e.type === "file").length, 400);
    } finally {
      r.channel.abort();
    }
  } finally {
    await s.stop();
  }
});

Deno.test("review finding 7: the quota ledger grows without bound while the client owns almost nothing (mv back and forth)", async () => {
  await withQuotaServer("100K", async (s, key) => {
    const c = await connectAs(s, key.path);
    // A long but valid name: every ledger line repeats it.
    const long = (tag: string) => `${tag}`.padEnd(250, "n") + "/" + "m".repeat(250);
    try {
      await putStart(c, long("a"), 10);
      assert.equal((await putFinish(c, new Uint8Array(10))).ok, true);
      for (let i = 0; i < 300; i++) {
        const [from, to] = i % 2 === 0 ? [long("a"), long("b")] : [long("b"), long("a")];
        const r = await request(c, { op: "mv", from, to, force: false });
        assert.equal(r.ok, true, JSON.stringify(r));
      }
    } finally {
      await c.close().catch(() => {});
    }
    const usage = await bytesUnder(join(s.root, STAGING_DIR, "usage"));
    assert.ok(
      usage <= 64 * 1024,
      `a client owning one 10-byte file made the server's quota ledger ${usage} bytes ` +
        `(300 renames; it grows by ~2 kB per rename until the next restart, with no reserve or quota check)`,
    );
  });
});

Deno.test("review finding 8: one client announcing an upload it never sends locks every other client out of uploading", async () => {
  const s = await startServer({ args: ["--min-free", "1M"] });
  try {
    const { statfsSync } = await import("node:fs");
    const freeNow = () => {
      const st = statfsSync(s.root);
      return Number(st.bavail) * Number(st.bsize);
    };
    const free = freeNow();
    const hog = await connectClient(s);
    const other = await connectClient(s);
    try {
      // Announce all the free space above the 1 MiB reserve but 100 bytes,
      // then send nothing (an idle connection is kept for 5 minutes, and a
      // byte now and then keeps it). Retried if the disk moved meanwhile.
      let granted = false;
      for (let i = 0; i < 5 && !granted; i++) {
        await hog.channel.sendMessage({
          op: "put",
          name: "hog.bin",
          size: freeNow() - MB - 100,
          mode: 0o644,
          mtime: 0,
          force: false,
        });
        granted = (await hog.channel.recvMessage()).ok === true;
      }
      assert.ok(granted, "the hog's upload was never granted");
      await other.channel.sendMessage({
        op: "put",
        name: "small.txt",
        size: 1000,
        mode: 0o644,
        mtime: 0,
        force: false,
      });
      const r = await other.channel.recvMessage();
      assert.equal(
        r.ok,
        true,
        `a 1000-byte upload on a disk with ${(free / MB).toFixed(0)} MB free was refused: ` +
          JSON.stringify(r),
      );
    } finally {
      hog.channel.abort();
      other.channel.abort();
    }
  } finally {
    await s.stop();
  }
});

Deno.test("review finding 9: mv of a folder under a deep folder makes names past PATH_MAX: listings then fail with the server's storage path, and rm -r cannot remove them", async () => {
  const s = await startServer();
  try {
    const c = await connectClient(s);
    const chain = (tag: string, n: number) =>
      Array.from({ length: n }, (_, i) => `${tag}${i}`.padEnd(250, "q")).join("/");
    const replies: string[] = [];
    const ask = async (msg: object) => {
      const r = await request(c, msg);
      replies.push(JSON.stringify(r));
      while (r.more === true) replies.push(JSON.stringify(await c.channel.recvMessage()));
      return r;
    };
    try {
      // Two valid chains of about 3.8 kB each; then one is moved under the other.
      assert.equal((await ask({ op: "mkdir", name: chain("a", 15) })).ok, true);
      assert.equal((await ask({ op: "mkdir", name: chain("b", 15) })).ok, true);
      const mv = await ask({
        op: "mv",
        from: "a0".padEnd(250, "q"),
        to: `${chain("b", 15)}/x`,
        force: false,
      });
      const ls = await ask({ op: "ls", recursive: true });
      const tree = await ask({ op: "tree", name: "b0".padEnd(250, "q") });
      const rm = await ask({ op: "rm", name: "b0".padEnd(250, "q"), recursive: true });
      const shown = replies.map((r) => r.replace(/[a-z]{20,}/g, "…")).join("\n");
      assert.ok(
        !replies.some((r) => r.includes(s.root)),
        `a reply names the server path:\n${shown}`,
      );
      if (mv.ok === true) {
        // The move was allowed: the tree must stay listable and removable.
        assert.equal(ls.ok, true, `ls -r: ${shown}`);
        assert.equal(tree.ok, true, `tree: ${shown}`);
        assert.equal(rm.ok, true, `rm -r: ${shown}`);
      }
    } finally {
      await c.close().catch(() => {});
    }
  } finally {
    await s.stop();
  }
});

Deno.test("review finding 10: sorting a listing of long names blocks the whole server for seconds (ls -r of 99000 deep entries)", async () => {
  const s = await startServer();
  const peers: EfxClient[] = [];
  try {
    // Names of about 3.8 kB sharing their folders (a write client makes the
    // same with mkdir + put; made on disk here for speed). Under the
    // 100000-entry listing cap.
    let dir = s.root;
    for (let i = 0; i < 15; i++) dir = join(dir, `${i}`.padEnd(250, "x"));
    await Deno.mkdir(dir, { recursive: true });
    const empty = new Uint8Array(0);
    for (let i = 0; i < 99_000; i++) Deno.writeFileSync(join(dir, `f${i}`), empty);
    const probe = await connectClient(s);
    peers.push(probe);
    // Three connections ask for the listing at once.
    const listers = await Promise.all([0, 1, 2].map(() => connectClient(s)));
    peers.push(...listers);
    const ended = listers.map(async (c) => {
      await c.channel.sendMessage({ op: "ls", recursive: true });
      try {
        while ((await c.channel.recvMessage()).more === true) { /* next batch */ }
      } catch { /* a failed listing ends the connection: also an end */ }
    });
    let allDone = false;
    const done = Promise.all(ended).then(() => allDone = true);
    // Meanwhile another client asks for a one-entry listing again and again.
    let worst = 0;
    const until = performance.now() + 120_000;
    while (!allDone && performance.now() < until) {
      const t = performance.now();
      await probe.list("nothing-matches-this");
      worst = Math.max(worst, performance.now() - t);
      await new Promise((r) => setTimeout(r, 20));
    }
    await Promise.race([done, new Promise((r) => setTimeout(r, 1000))]);
    assert.ok(
      worst < 1500,
      `another client's one-entry ls waited ${worst.toFixed(0)} ms while three listings ran`,
    );
  } finally {
    for (const p of peers) p.channel.abort();
    await s.stop();
  }
});
