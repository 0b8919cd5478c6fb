/**
 * Hostile clients with valid credentials against the storage layer: each
 * finding of the hostile-clients review as a test. The server runs under
 * the permissions of this run (`deno task test` runs this file under broad
 * flags and again under the serve task's exact flags).
 *
 * Findings pinned here: writes outside the root through links and a planted
 * partial (1), other clients' partials reached through a link (2), reads
 * outside the root by racing link replacement (3), a wildcard pattern that
 * froze the server (4), mkdir through a link changing the root (8), a tree
 * with links failing under the serve task's flags (15), and an upload that
 * would fill the disk (14).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { EfxClient } from "../src/client.ts";
import { STAGING_DIR } from "../src/storage/local.ts";
import { partialRelPath } from "../src/storage/local_partials.ts";
import { Mitm, truncateAfterRecords } from "./helpers/mitm.ts";
import {
  assertExit,
  assertServing,
  clientArgs,
  connectClient,
  efx,
  listTree,
  makeClientKey,
  makeWorkDir,
  startServer,
  type TestServer,
  waitFor,
} from "./helpers/server.ts";

const enc = new TextEncoder();

/** Every entry below `dir` that is a filesystem link (there must be none). */
async function linksOnDisk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const rel of await listTree(dir)) {
    if ((await Deno.lstat(join(dir, rel))).isSymlink) out.push(rel);
  }
  return out;
}

async function snapshot(path: string): Promise<string> {
  const st = await Deno.lstat(path);
  const data = st.isFile ? await Deno.readFile(path) : new Uint8Array();
  return `${st.mode?.toString(8)} ${st.mtime?.getTime()} ${
    createHash("sha256").update(data).digest("hex")
  }`;
}

async function withServer(
  opts: Parameters<typeof startServer>[0],
  fn: (s: TestServer, work: string) => Promise<void>,
): Promise<void> {
  const s = await startServer(opts);
  const work = await makeWorkDir("efx-hostile-");
  try {
    await fn(s, work);
  } finally {
    await s.stop();
    await Deno.remove(work, { recursive: true });
  }
}

function connectAs(s: TestServer, keyPath: string): Promise<EfxClient> {
  return connectClient(s, { identityPath: keyPath, handshakeTimeoutMs: 10_000 });
}

/** The server's log line for the end of a connection, however it ended. */
const CONNECTION_END = /connection ended by client|connection dropped|disconnected after/g;

/** Leaves a partial of `remote` on the server: a resumable upload cut after its data. */
async function cutResumableUpload(
  s: TestServer,
  local: string,
  remote: string,
  work: string,
  identity?: string,
): Promise<void> {
  // c2s records: [auth], put, resume answer, then DATA: keep two DATA records.
  const keep = identity ? 5 : 4;
  const ended = () => s.stderr().match(CONNECTION_END)?.length ?? 0;
  const endedBefore = ended();
  const mitm = await Mitm.start({ target: s.port, tamper: truncateAfterRecords("c2s", keep) });
  try {
    const r = await efx([
      "upload",
      local,
      "--as",
      remote,
      "--resume",
      "--server",
      mitm.address,
      "--server-key",
      s.pubKeyPath,
      ...(identity ? ["--identity", identity] : []),
    ], { cwd: work });
    assert.notEqual(r.code, 0, "the cut upload must fail");
    // The client gives up before the server has written what it received:
    // the partial is settled only once the server has ended that connection.
    await waitFor(() => ended() > endedBefore, { what: "the server to end the cut connection" });
  } finally {
    await mitm.close();
  }
}

Deno.test("hostile: links and a planted partial never lead a write outside the root (finding 1)", async () => {
  await withServer({}, async (s, work) => {
    // The file beside the root that the attack overwrote.
    const victim = join(s.dir, "victim.txt");
    await Deno.writeTextFile(victim, "precious, outside the storage root\n");
    const before = await snapshot(victim);
    // A first resumable upload, cut: the staging area exists from then on.
    const warm = join(work, "warm.bin");
    await Deno.writeFile(warm, new Uint8Array(600_000));
    await cutResumableUpload(s, warm, "warm.bin", work);
    const c = await connectClient(s);
    try {
      const name = "target.bin";
      const part = partialRelPath(name, "");
      // Each step of the original attack; links are data now, so each either
      // succeeds as a harmless record or is refused.
      const steps: [string, () => Promise<unknown>][] = [
        ["p -> staging", () => c.symlink("p", `${STAGING_DIR}/partials`)],
        ["planted partial", () => c.symlink(`p/${part}`, "../x/victim.txt")],
        ["x -> d/..", () => c.symlink("x", "d/..")],
        ["d -> .", () => c.symlink("d", ".")],
      ];
      for (const [what, step] of steps) await step().catch((err) => `${what}: ${err.message}`);
      const src = join(work, "attacker.bin");
      await Deno.writeFile(src, enc.encode("attacker data that must never land outside\n"));
      const r = await c.upload(src, name, { resume: true, force: true });
      assert.equal(r.resumedFrom ?? 0, 0, "the resume offer revealed a size");
    } finally {
      await c.close();
    }
    assert.equal(await snapshot(victim), before, "the file outside the root changed");
    assert.deepEqual(await linksOnDisk(s.root), [], "the server made a filesystem link");
    await assertServing(s, work);
  });
});

Deno.test("hostile: another client's partial is unreachable, even through a link to staging (finding 2)", async () => {
  const keys = await makeWorkDir("efx-hostile-keys-");
  try {
    const [alice, mallory] = await Promise.all([
      makeClientKey(keys, "alice"),
      makeClientKey(keys, "mallory"),
    ]);
    await withServer({
      authorizedClients: `${alice.fingerprint} rights=write\n${mallory.fingerprint} rights=rw\n`,
    }, async (s, work) => {
      const secret = enc.encode(`alice's secret ${crypto.randomUUID()}\n`.repeat(40_000));
      const local = join(work, "secret.bin");
      await Deno.writeFile(local, secret);
      await cutResumableUpload(s, local, "secret.bin", work, alice.path);
      const partial = join(
        s.root,
        STAGING_DIR,
        "partials",
        partialRelPath("secret.bin", alice.fingerprint),
      );
      await waitFor(async () => ((await Deno.stat(partial).catch(() => null))?.size ?? 0) > 0, {
        what: "alice's partial",
      });
      const kept = (await Deno.stat(partial)).size;
      const m = await connectAs(s, mallory.path);
      try {
        await m.symlink("s", STAGING_DIR);
        await m.symlink(
          "t",
          `${STAGING_DIR}/partials/${partialRelPath("secret.bin", alice.fingerprint)}`,
        );
        // Listing: nothing of staging shows, under any pattern.
        for (const pattern of ["*", "s/*", "s/partials/*/*", ".efx-*", "t"]) {
          const names = (await m.list(pattern, false).catch(() => [])).map((e) => e.name);
          assert.ok(!names.some((n) => n.includes(".part") || n.startsWith(STAGING_DIR)), pattern);
        }
        const all = await m.list(undefined, true);
        assert.ok(!all.some((e) => e.name.includes(".part")), "ls -r shows a partial");
        // Reading, overwriting, removing through the links: refused.
        const rel = `partials/${partialRelPath("secret.bin", alice.fingerprint)}`;
        for (const name of [`s/${rel}`, "t", `${STAGING_DIR}/${rel}`]) {
          await assert.rejects(
            m.download(name, join(work, "stolen")),
            /reserved|link on the server|no such file/,
            name,
          );
        }
        const junk = join(work, "junk");
        await Deno.writeTextFile(junk, "junk");
        await assert.rejects(m.upload(junk, `s/${rel}`, { force: true }));
        await assert.rejects(m.upload(junk, `${STAGING_DIR}/${rel}`, { force: true }));
        await assert.rejects(m.remove(`s/${rel}`));
        // Mallory's own resumable upload of the same name is offered nothing of alice's.
        const r = await m.upload(junk, "secret.bin", { resume: true });
        assert.equal(r.resumedFrom ?? 0, 0);
      } finally {
        await m.close();
      }
      assert.equal(await Deno.lstat(join(work, "stolen")).catch(() => null), null);
      assert.equal((await Deno.stat(partial)).size, kept, "alice's partial was touched");
    });
  } finally {
    await Deno.remove(keys, { recursive: true });
  }
});

Deno.test("hostile: racing link replacement against downloads never reads outside the root (finding 3)", async () => {
  await withServer({}, async (s, work) => {
    const secret = "outside secret: never to be served\n";
    await Deno.writeTextFile(join(s.dir, "outside.txt"), secret);
    const src = join(work, "decoy.txt");
    await Deno.writeTextFile(src, "decoy inside the root\n");
    const writer = await connectClient(s);
    const readers = await Promise.all([0, 1, 2].map(() => connectClient(s)));
    const ITERATIONS = 150;
    let served = 0;
    let leaked = 0;
    try {
      const write = (async () => {
        for (let i = 0; i < ITERATIONS; i++) {
          await writer.symlink("chain/a", "..", true).catch(() => {});
          await writer.symlink("NAME", "chain/a/../outside.txt", true).catch(() => {});
          await writer.upload(src, "NAME", { force: true });
        }
      })();
      const read = readers.map(async (r, k) => {
        for (let i = 0; i < ITERATIONS; i++) {
          const out = join(work, `got-${k}`);
          try {
            await r.download("NAME", out, { force: true });
            served++;
            if ((await Deno.readTextFile(out)) === secret) leaked++;
          } catch { /* refused while it was a link, or missing: fine */ }
        }
      });
      await Promise.all([write, ...read]);
    } finally {
      await writer.close();
      for (const r of readers) await r.close();
    }
    console.log(`  ${ITERATIONS} link swaps, ${served} downloads served, ${leaked} leaked`);
    assert.equal(leaked, 0, "a download returned the file outside the root");
    assert.ok(served > 0, "no download was ever served: the race did not run");
    assert.deepEqual(await linksOnDisk(s.root), []);
  });
});

Deno.test("hostile: no wildcard pattern stalls the server; patterns are bounded (finding 4)", async () => {
  await withServer({}, async (s, work) => {
    const c = await connectClient(s);
    try {
      // 200 names of 40 characters, none ending in "b".
      for (let i = 0; i < 200; i++) {
        await Deno.writeTextFile(
          join(s.root, `${String(i).padStart(3, "0")}${"a".repeat(37)}`),
          "",
        );
      }
      const patterns = [
        "********b",
        "**********b",
        "*a*a*a*a*a*a*a*a*a*a*a*a*b",
        "*?".repeat(100) + "b",
      ];
      for (const p of patterns) {
        const t0 = performance.now();
        // Another client's handshake and listing during the pattern must not wait for it.
        const [entries, other] = await Promise.all([
          c.list(p),
          (async () => {
            const o = await connectClient(s);
            try {
              return await o.list("000*");
            } finally {
              await o.close();
            }
          })(),
        ]);
        const ms = performance.now() - t0;
        console.log(`  ls ${JSON.stringify(p.slice(0, 30))}: ${ms.toFixed(0)} ms`);
        assert.deepEqual(entries, [], p);
        assert.equal(other.length, 1);
        assert.ok(ms < 5_000, `pattern ${p} took ${ms} ms`);
      }
      await assert.rejects(c.list("*".repeat(3000) + "x"), /pattern/);
    } finally {
      await c.close();
    }
    await assertServing(s, work);
  });
});

Deno.test("hostile: mkdir never changes the root or anything through a link (finding 8)", async () => {
  await withServer({}, async (s, work) => {
    const c = await connectClient(s);
    const rootBefore = await snapshot(s.root);
    const outside = join(s.dir, "outside-dir");
    await Deno.mkdir(outside, { mode: 0o755 });
    const outsideBefore = await snapshot(outside);
    try {
      await c.symlink("self", ".");
      await c.symlink("up", "..");
      for (const name of ["self", "up", "self/x", "up/outside-dir"]) {
        await assert.rejects(c.mkdir(name, 0o000, 0), /link on the server/, name);
        await assert.rejects(c.mkdir(name, 0o777, 1e12), /link on the server/, name);
      }
      // A real folder gets its mode (owner rwx kept, so the server can still manage it).
      await c.mkdir("real", 0o000, 86_400_000);
      const st = await Deno.lstat(join(s.root, "real"));
      assert.equal(st.mode! & 0o777, 0o700);
      assert.equal(st.mtime?.getTime(), 86_400_000);
    } finally {
      await c.close();
    }
    const rootAfter = await Deno.lstat(s.root);
    assert.equal(rootAfter.mode!.toString(8), rootBefore.split(" ")[0], "root mode changed");
    assert.equal(await snapshot(outside), outsideBefore, "a folder outside changed");
    await assertServing(s, work);
  });
});

Deno.test("hostile: a tree with links uploads and comes back under the serve task's own flags (finding 15)", async () => {
  await withServer({ perms: "serve-task" }, async (s, work) => {
    const tree = join(work, "tree");
    await Deno.mkdir(join(tree, "sub"), { recursive: true });
    await Deno.writeTextFile(join(tree, "sub/a.txt"), "a\n");
    await Deno.writeTextFile(join(tree, "z.txt"), "z\n");
    await Deno.symlink("sub/a.txt", join(tree, "link-to-a"));
    await Deno.symlink("sub", join(tree, "dirlink"));
    const up = await efx(["upload", "-r", "tree", ...clientArgs(s)], { cwd: work });
    assertExit(up, 0, "upload -r under the serve task's flags");
    assert.match(up.stdout, /2 files, 2 folders, 2 links/);
    assert.deepEqual(await linksOnDisk(s.root), []);
    const down = await efx(["download", "-r", "tree", "-o", "back", ...clientArgs(s)], {
      cwd: work,
    });
    assertExit(down, 0, "download -r");
    assert.equal(await Deno.readLink(join(work, "back/link-to-a")), "sub/a.txt");
    assert.equal(await Deno.readLink(join(work, "back/dirlink")), "sub");
    assert.equal(await Deno.readTextFile(join(work, "back/z.txt")), "z\n");
  });
});

Deno.test("hostile: an upload that would leave less than the free-space reserve is refused first (finding 14)", async () => {
  await withServer({ args: ["--min-free", "1000T"] }, async (s, work) => {
    const src = join(work, "f.bin");
    await Deno.writeFile(src, new Uint8Array(10));
    const r = await efx(["upload", src, ...clientArgs(s)], { cwd: work });
    assertExit(r, 1, "upload over the reserve");
    assert.match(r.stderr, /^efx: not enough free space on the server for f\.bin/m);
    assert.deepEqual(await listTree(s.root), []);
    await s.waitForLog(/free-space reserve: uploads must leave 1000(\.0+)? TiB free/);
  });
  // The default reserve is in force, and a declared size beyond the disk is refused
  // before any byte is written (the client lies about the size).
  await withServer({}, async (s, work) => {
    await s.waitForLog(/free-space reserve: uploads must leave/);
    const c = await connectClient(s);
    try {
      await c.channel.sendMessage({
        op: "put",
        name: "huge.bin",
        size: 2 ** 52,
        mode: 0o644,
        mtime: 0,
        force: false,
      });
      const reply = await c.channel.recvMessage();
      assert.equal(reply.ok, false);
      assert.equal(reply.code, "no-space");
    } finally {
      await c.close();
    }
    assert.deepEqual(await listTree(s.root), []);
    await assertServing(s, work);
  });
});

Deno.test("hostile: a per-client quota bounds what one client can store, across restarts", async () => {
  const keys = await makeWorkDir("efx-hostile-keys-");
  const root = await makeWorkDir("efx-hostile-root-");
  const work = await makeWorkDir("efx-hostile-");
  try {
    const [small, free] = await Promise.all([
      makeClientKey(keys, "small"),
      makeClientKey(keys, "free"),
    ]);
    const acl = `${small.fingerprint} rights=rw quota=100K\n${free.fingerprint} rights=rw\n`;
    const file = async (name: string, size: number) => {
      const p = join(work, name);
      await Deno.writeFile(p, new Uint8Array(size).fill(7));
      return p;
    };
    // The root outlives the servers (a later --root overrides the helper's own).
    const serve = () =>
      startServer({ args: ["--root", root], perms: "broad", authorizedClients: acl });
    const s = await serve();
    try {
      const c = await connectAs(s, small.path);
      try {
        await c.upload(await file("a", 60_000), "a");
        await assert.rejects(c.upload(await file("b", 60_000), "b"), /exceed your quota/);
        // Replacing its own file counts only the difference.
        await c.upload(await file("a2", 90_000), "a", { force: true });
        // Small files sent back to back (the pipelined path) stop at the quota too.
        const outcomes: string[] = [];
        for (let i = 0; i < 3; i++) {
          const q = await c.uploadQueued(await file(`q${i}`, 5_000), `q${i}`);
          q.done.then(() => outcomes.push("ok"), (e) => outcomes.push(String(e.message)));
        }
        await c.settle().catch(() => {});
        await waitFor(() => outcomes.length === 3, { what: "three queued uploads" });
        assert.equal(outcomes.filter((o) => o === "ok").length, 2, outcomes.join("; "));
        assert.ok(outcomes.some((o) => /exceed your quota/.test(o)), outcomes.join("; "));
        await c.remove("a");
        await c.upload(await file("b", 60_000), "b");
      } finally {
        await c.close();
      }
      // Another client, without a quota, is not limited by it.
      const f = await connectAs(s, free.path);
      try {
        await f.upload(await file("big", 300_000), "big");
      } finally {
        await f.close();
      }
    } finally {
      await s.stop();
    }
    // After a restart the ledger still knows: b (60 kB) + q0, q1 (10 kB) are owned.
    const s2 = await serve();
    try {
      const c = await connectAs(s2, small.path);
      try {
        await assert.rejects(c.upload(await file("c", 40_000), "c"), /exceed your quota/);
        await c.upload(await file("d", 25_000), "d");
        await c.channel.sendMessage({ op: "mv", from: "d", to: "e", force: false });
        assert.equal((await c.channel.recvMessage()).ok, true);
        await assert.rejects(c.upload(await file("f", 10_000), "f"), /exceed your quota/);
      } finally {
        await c.close();
      }
    } finally {
      await s2.stop();
    }
  } finally {
    for (const d of [keys, root, work]) await Deno.remove(d, { recursive: true });
  }
});
