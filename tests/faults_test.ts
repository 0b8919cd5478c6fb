/**
 * Fault injection against the REAL CLI (main.ts) and the real `efx serve`
 * subprocess on loopback (tests/helpers/server.ts): processes killed
 * mid-transfer, a server killed and restarted on the same root, storage that
 * is read-only, full or cannot hold a name, idle and silent clients, the
 * connection cap, and SIGTERM during an upload.
 *
 * For every fault the tests check what the user is told (exit code and the
 * one `efx: ...` line), that nothing partial is visible on either side (no
 * final file, no `.efx-tmp-*` file), that a pre-existing file of the same
 * name is untouched, and that the server goes on serving.
 *
 * Disk faults need `mount` (a tmpfs, a read-only bind mount). We run as root,
 * so `chmod` would not stop the server; when mounting is not permitted those
 * tests are ignored and the reason is printed. Every mount is undone in a
 * `finally`.
 *
 * Every observed outcome is printed (`[fault] ...`) so a run documents what
 * each side said.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/faults_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { AlertCode, encodeAlert } from "../src/handshake.ts";
import {
  assertExit,
  assertSameFile,
  assertServing,
  clientArgs,
  connectClient,
  efx,
  type EfxResult,
  listTree,
  makeWorkDir,
  randomFile,
  sha256File,
  spawnEfx,
  startServer,
  TEMP_PREFIX,
  type TestServer,
  waitFor,
} from "./helpers/server.ts";

const enc = new TextEncoder();

/** Size of the files that are interrupted: ~1.5 s of transfer on the test VM. */
const BIG = 150 * 1000 * 1000;
/** An interrupted transfer is killed once this much has arrived. */
const FLOWING = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Helpers

/** Prints what was observed, for the record. */
function report(what: string, ...lines: string[]): void {
  console.log(`[fault] ${what}${lines.map((l) => `\n  ${l}`).join("")}`);
}

/** A file of `size` zero bytes made instantly (sparse): transfer time without generation time. */
async function sparseFile(path: string, size: number): Promise<void> {
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  await f.truncate(size);
}

/** Every `.efx-tmp-*` entry under `dir`, at any depth (and anything inside one). */
async function leftovers(dir: string): Promise<string[]> {
  return (await listTree(dir)).filter((rel) =>
    rel.split("/").some((c) => c.startsWith(TEMP_PREFIX))
  );
}

/** The regular temp files (`.efx-tmp-<hex>`) directly in `dir`. */
async function tempFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.startsWith(TEMP_PREFIX)) out.push(e.name);
    }
  } catch { /* gone */ }
  return out.sort();
}

/** Waits until no `.efx-tmp-*` entry is left under `dir` (cleanup is async), then asserts it. */
async function assertNoLeftovers(dir: string, what: string): Promise<void> {
  await waitFor(async () => (await leftovers(dir)).length === 0, {
    timeoutMs: 5000,
    intervalMs: 20,
  }).catch(() => {});
  assert.deepEqual(await leftovers(dir), [], `${what}: temp files left in ${dir}`);
}

/** Asserts that stderr is exactly one `efx: ...` line matching `re`. */
function assertOneLine(r: EfxResult, re: RegExp, what: string): void {
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `${what}: expected one stderr line, got:\n${r.stderr}`);
  assert.ok(lines[0].startsWith("efx: "), `${what}: stderr ${r.stderr}`);
  assert.match(lines[0], re, `${what}: stderr`);
}

/** Runs `fn` with a fresh client-side work folder, removed afterwards. */
async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await makeWorkDir("efx-faults-work-");
  try {
    await fn(work);
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** Runs `fn` with a server, always stopped afterwards; asserts it logged no internal error. */
async function withServer(
  args: string[],
  fn: (server: TestServer) => Promise<void>,
): Promise<void> {
  const server = await startServer({ args });
  try {
    await fn(server);
    assert.doesNotMatch(server.stderr(), /internal error/, "server log");
    assert.doesNotMatch(server.stderr(), /^\s+at /m, "stack trace in the server log");
  } finally {
    await server.stop();
  }
}

/** Resolves once `run` has ended (true) or not (false) without waiting. */
function tracker(run: { result: Promise<unknown> }): () => boolean {
  let finished = false;
  run.result.then(() => finished = true, () => finished = true);
  return () => finished;
}

/** Waits until a temp file in `dir` has grown past {@linkcode FLOWING}; returns its name. */
async function waitForFlowingTemp(dir: string, finished: () => boolean, what: string) {
  return await waitFor(async () => {
    if (finished()) throw new Error(`${what} ended before it could be interrupted`);
    for (const t of await tempFiles(dir)) {
      const st = await Deno.stat(join(dir, t)).catch(() => null);
      if (st && st.size > FLOWING) return t;
    }
    return null;
  }, { timeoutMs: 30_000, intervalMs: 2, what: `${what}: data flowing` });
}

// ---- mounts ----

async function sh(cmd: string, ...args: string[]): Promise<{ ok: boolean; text: string }> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    const dec = new TextDecoder();
    return { ok: out.success, text: (dec.decode(out.stderr) + dec.decode(out.stdout)).trim() };
  } catch (err) {
    return { ok: false, text: `${cmd}: ${err instanceof Error ? err.message : String(err)}` };
  }
}

/** Null when this process may mount a tmpfs and a read-only bind mount, else why not. */
async function mountProblem(): Promise<string | null> {
  const dir = await Deno.makeTempDir({ prefix: "efx-faults-mountprobe-" });
  try {
    const t = await sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir);
    if (!t.ok) return `cannot mount a tmpfs: ${t.text}`;
    await unmount(dir);
    const b = await sh("mount", "--bind", dir, dir);
    if (!b.ok) return `cannot bind-mount: ${b.text}`;
    const r = await sh("mount", "-o", "remount,ro,bind", dir);
    await unmount(dir);
    if (!r.ok) return `cannot remount read-only: ${r.text}`;
    return null;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Unmounts `dir` (lazily when busy); never throws. */
async function unmount(dir: string): Promise<void> {
  const r = await sh("umount", dir);
  if (!r.ok) await sh("umount", "-l", dir);
}

async function mountTmpfs(dir: string, size: string): Promise<void> {
  const r = await sh("mount", "-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir);
  if (!r.ok) throw new Error(`mount tmpfs on ${dir}: ${r.text}`);
}

async function mountReadOnly(dir: string): Promise<void> {
  const b = await sh("mount", "--bind", dir, dir);
  if (!b.ok) throw new Error(`mount --bind ${dir}: ${b.text}`);
  const r = await sh("mount", "-o", "remount,ro,bind", dir);
  if (!r.ok) {
    await unmount(dir);
    throw new Error(`remount ro ${dir}: ${r.text}`);
  }
}

const MOUNT_PROBLEM = await mountProblem();
if (MOUNT_PROBLEM) {
  console.log(`[fault] SKIPPING the disk tests (read-only, full disk): ${MOUNT_PROBLEM}`);
}
/** Name suffix of the tests that need mounts, saying why they are skipped. */
const SKIP_NOTE = MOUNT_PROBLEM ? ` [SKIPPED: mount not permitted: ${MOUNT_PROBLEM}]` : "";

// ---------------------------------------------------------------------------
// Processes killed mid-transfer

Deno.test("client SIGKILLed mid-upload: nothing partial on the server, existing file untouched, server serves", async () => {
  await withServer([], async (server) => {
    await withWork(async (work) => {
      const original = enc.encode("the original victim.bin, must survive\n");
      await Deno.writeFile(join(server.root, "victim.bin"), original);
      const local = join(work, "big.bin");
      await sparseFile(local, BIG);
      const run = spawnEfx([
        "upload",
        local,
        "--as",
        "victim.bin",
        "--force",
        "-q",
        ...clientArgs(server),
      ], {
        cwd: work,
        allowStackTrace: true,
      });
      const temp = await waitForFlowingTemp(server.root, tracker(run), "upload");
      const size = (await Deno.stat(join(server.root, temp))).size;
      run.proc.kill("SIGKILL");
      const r = await run.result;
      assert.equal(r.signal, "SIGKILL");
      const line = await server.waitForLog(/^\S+ \S+ (connection (?:dropped|ended by client).*)$/m);
      report(
        "client SIGKILLed mid-upload",
        `server temp ${temp} had ${size} bytes when the client was killed`,
        `server: ${line[1]}`,
      );
      await assertNoLeftovers(server.root, "after the client was killed");
      assert.deepEqual(
        await listTree(server.root),
        [
          "victim.bin",
        ],
      );
      await assertSameFile(join(server.root, "victim.bin"), original);
      assert.deepEqual(await leftovers(work), [], "client folder");
      await assertServing(server, work);
    });
  });
});

Deno.test("client SIGKILLed mid-download: existing local file untouched, server clean and serving", async () => {
  await withServer([], async (server) => {
    await withWork(async (work) => {
      await sparseFile(join(server.root, "big.bin"), BIG);
      const dl = join(work, "dl");
      await Deno.mkdir(dl);
      const target = join(dl, "big.bin");
      const original = enc.encode("the original local big.bin, must survive\n");
      await Deno.writeFile(target, original);
      const run = spawnEfx([
        "download",
        "big.bin",
        "-o",
        target,
        "--force",
        "-q",
        ...clientArgs(server),
      ], {
        cwd: work,
        allowStackTrace: true,
      });
      const temp = await waitForFlowingTemp(dl, tracker(run), "download");
      run.proc.kill("SIGKILL");
      const r = await run.result;
      assert.equal(r.signal, "SIGKILL");
      const line = await server.waitForLog(/^\S+ \S+ (connection (?:dropped|ended by client).*)$/m);
      const left = await tempFiles(dl);
      report(
        "client SIGKILLed mid-download",
        `server: ${line[1]}`,
        `client folder afterwards: ${JSON.stringify(await listTree(dl))}`,
        left.length
          ? `the killed client's temp ${temp} stays behind (a SIGKILLed process cannot clean up; the next download into this folder sweeps it)`
          : "no temp file left",
      );
      // The final name still holds the old bytes; nothing else under a visible name.
      await assertSameFile(target, original);
      assert.deepEqual((await listTree(dl)).filter((p) => !p.startsWith(TEMP_PREFIX)), ["big.bin"]);
      // The server side: no temp, its file intact, still serving.
      await assertNoLeftovers(server.root, "server after the client was killed");
      assert.equal((await Deno.stat(join(server.root, "big.bin"))).size, BIG);
      await assertServing(server, work);
    });
  });
});

Deno.test({
  // Regression (fixed bug): a download killed with SIGKILL (or by a crash, the OOM killer, a
  // power loss) leaves its partial data forever as a hidden `.efx-tmp-<hex>`
  // file in the destination folder. SIGINT/SIGTERM are handled (the client
  // discards its temp file, src/commands/client.ts), but SIGKILL cannot be,
  // and no later client run removes stale temps: only the server cleans its
  // storage, at start (removeTempsUnder in src/storage.ts). A fix: hold an
  // exclusive lock (Deno.FsFile.lock) on the temp file while it is written,
  // and have the client remove the `.efx-tmp-*` files of the folder it
  // downloads into whose lock it can take (their writer is dead).
  // Repro: efx download big.bin; kill -9 the client mid-way; run another
  // efx download into the same folder; ls -a still shows .efx-tmp-...
  name: "a SIGKILLed download's temp file is removed by the next download into that folder",
  fn: async () => {
    await withServer([], async (server) => {
      await withWork(async (work) => {
        await sparseFile(join(server.root, "big.bin"), BIG);
        await Deno.writeFile(join(server.root, "small.bin"), enc.encode("small\n"));
        const run = spawnEfx(["download", "big.bin", "-q", ...clientArgs(server)], {
          cwd: work,
          allowStackTrace: true,
        });
        await waitForFlowingTemp(work, tracker(run), "download");
        run.proc.kill("SIGKILL");
        await run.result;
        // A sweep leaves temps younger than a minute alone (a live writer
        // creates its temp, then locks it); make the dead one look old.
        const left = await tempFiles(work);
        assert.equal(left.length, 1, `temp of the killed download: ${left}`);
        const old = new Date(Date.now() - 120_000);
        for (const t of left) await Deno.utime(join(work, t), old, old);
        assertExit(
          await efx(["download", "small.bin", "-q", ...clientArgs(server)], { cwd: work }),
          0,
        );
        assert.deepEqual(await tempFiles(work), [], "stale temp of the killed download");
      });
    });
  },
});

Deno.test("server SIGKILLed mid-upload, restarted on the same root: temps removed at start (logged), files intact, uploads work", async () => {
  const first = await startServer();
  let second: TestServer | undefined;
  try {
    await withWork(async (work) => {
      const keep = enc.encode("keep.bin: written before the crash\n");
      await Deno.writeFile(join(first.root, "keep.bin"), keep);
      await Deno.mkdir(join(first.root, "sub"));
      await Deno.writeFile(join(first.root, "sub", "deep.txt"), enc.encode("deep\n"));
      const local = join(work, "big.bin");
      await sparseFile(local, BIG);
      // Two uploads at once, one of them over keep.bin (--force), one into sub/.
      const runs = [
        spawnEfx(["upload", local, "--as", "keep.bin", "--force", "-q", ...clientArgs(first)]),
        spawnEfx(["upload", local, "--as", "sub/new.bin", "-q", ...clientArgs(first)]),
      ];
      await waitForFlowingTemp(first.root, tracker(runs[0]), "upload over keep.bin");
      await waitForFlowingTemp(join(first.root, "sub"), tracker(runs[1]), "upload into sub/");
      first.proc.kill("SIGKILL");
      const status = await first.exited;
      assert.equal(status.signal, "SIGKILL");
      // The crash left the temp files behind: that is what the restart must clean.
      const crashed = [...await tempFiles(first.root), ...await tempFiles(join(first.root, "sub"))];
      assert.equal(crashed.length, 2, `temp files after the crash: ${crashed}`);
      const results = await Promise.all(runs.map((r) => r.result));
      for (const r of results) {
        assertExit(r, 1, "client of the killed server");
        assertOneLine(r, /^efx: /, "client of the killed server");
      }

      second = await startServer({ args: ["--root", first.root, "--key", first.keyPath] });
      const line = await second.waitForLog(
        /^\S+ (removed (\d+) unfinished upload\(s\) left from an earlier run)$/m,
      );
      report(
        "server SIGKILLed mid-upload, then restarted",
        `clients: ${results.map((r) => `exit ${r.code}: ${r.stderr.trim()}`).join(" | ")}`,
        `temps after the crash: ${crashed.join(", ")}`,
        `restarted server: ${line[1]}`,
      );
      assert.equal(Number(line[2]), 2);
      assert.deepEqual(await leftovers(first.root), [], "temps after the restart");
      assert.deepEqual(
        await listTree(first.root),
        ["keep.bin", "sub", "sub/deep.txt"],
      );
      await assertSameFile(join(first.root, "keep.bin"), keep);
      // A normal upload (CLI) and download work on the restarted server.
      const small = join(work, "after.bin");
      const sha = await randomFile(small, 300_000);
      const up = await efx(["upload", small, ...clientArgs(second)], { cwd: work });
      assertExit(up, 0, "upload after the restart");
      await assertSameFile(join(first.root, "after.bin"), small);
      const back = join(work, "after.back");
      assertExit(await efx(["download", "after.bin", "-o", back, ...clientArgs(second)]), 0);
      assert.equal(await sha256File(back), sha);
      await assertServing(second, work);
      assert.doesNotMatch(second.stderr(), /internal error/);
    });
  } finally {
    await second?.stop();
    await first.stop();
  }
});

Deno.test("SIGTERM during an upload: the server exits 0 promptly, removes its temp, existing file untouched", async () => {
  const server = await startServer();
  let again: TestServer | undefined;
  try {
    await withWork(async (work) => {
      const original = enc.encode("victim.bin before the SIGTERM\n");
      await Deno.writeFile(join(server.root, "victim.bin"), original);
      const local = join(work, "big.bin");
      await sparseFile(local, BIG);
      const run = spawnEfx([
        "upload",
        local,
        "--as",
        "victim.bin",
        "--force",
        "-q",
        ...clientArgs(server),
      ]);
      await waitForFlowingTemp(server.root, tracker(run), "upload");
      const t0 = performance.now();
      server.proc.kill("SIGTERM");
      const status = await server.exited;
      const ms = performance.now() - t0;
      const r = await run.result;
      report(
        "SIGTERM during an upload",
        `server exit ${status.code} after ${ms.toFixed(0)} ms`,
        `client: exit ${r.code}: ${r.stderr.trim()}`,
        `server log tail: ${server.stderr().trim().split("\n").slice(-3).join(" | ")}`,
      );
      assert.equal(status.code, 0, server.stderr());
      assert.ok(ms < 5000, `the server took ${ms.toFixed(0)} ms to stop`);
      assert.match(server.stderr(), /shutting down/);
      assertExit(r, 1, "client of the stopped server");
      assertOneLine(r, /^efx: /, "client of the stopped server");
      // The server removed its temp itself (no restart needed) and kept the old file.
      assert.deepEqual(await tempFiles(server.root), []);
      assert.deepEqual(await leftovers(server.root), []);
      await assertSameFile(join(server.root, "victim.bin"), original);
      // A restart on the same root finds nothing to clean.
      again = await startServer({ args: ["--root", server.root, "--key", server.keyPath] });
      await assertServing(again, work);
      assert.doesNotMatch(again.stderr(), /unfinished upload/);
    });
  } finally {
    await again?.stop();
    await server.stop();
  }
});

// ---------------------------------------------------------------------------
// Disk problems

Deno.test("a name whose parent is a regular file cannot be created: clear error, nothing written, serving", async () => {
  await withServer([], async (server) => {
    await withWork(async (work) => {
      await Deno.writeFile(join(server.root, "a"), enc.encode("a is a file\n"));
      const local = join(work, "x.bin");
      await randomFile(local, 200_000);
      const cases: [string, RegExp][] = [
        ["a/b", /^efx: cannot create a\/b: a is not a folder on the server$/],
        ["a/b/c.bin", /^efx: cannot create a\/b\/c\.bin: a is not a folder on the server$/],
      ];
      for (const [name, re] of cases) {
        const r = await efx(["upload", local, "--as", name, ...clientArgs(server)]);
        report(`upload as ${name} (a is a file)`, `client: exit ${r.code}: ${r.stderr.trim()}`);
        assertExit(r, 1, name);
        assertOneLine(r, re, name);
      }
      assert.deepEqual(await listTree(server.root), ["a"]);
      await assertNoLeftovers(server.root, "a/b");
      // A local target whose parent is a file: the download is refused the same way.
      await Deno.writeFile(join(work, "f"), enc.encode("local file\n"));
      const d = await efx(["download", "a", "-o", join(work, "f", "a"), ...clientArgs(server)]);
      report("download -o f/a (f is a local file)", `client: exit ${d.code}: ${d.stderr.trim()}`);
      assertExit(d, 1, "download under a file");
      assertOneLine(d, /^efx: .*(Not a directory|not a folder)/i, "download under a file");
      await assertServing(server, work);
    });
  });
});

Deno.test({
  name:
    `read-only storage root (read-only bind mount): uploads and rm refused, reads served${SKIP_NOTE}`,
  ignore: MOUNT_PROBLEM !== null,
  fn: async () => {
    await withWork(async (work) => {
      const root = join(work, "root");
      await Deno.mkdir(root);
      const keep = enc.encode("keep.txt in a read-only root\n");
      await Deno.writeFile(join(root, "keep.txt"), keep);
      await mountReadOnly(root);
      try {
        await withServer(["--root", root], async (server) => {
          const local = join(work, "new.bin");
          await randomFile(local, 500_000);
          const attempts: [string, string[]][] = [
            ["upload a new file", ["upload", local]],
            ["upload --force over keep.txt", ["upload", local, "--as", "keep.txt", "--force"]],
            ["upload into a new folder", ["upload", local, "--as", "dir/new.bin"]],
            ["rm keep.txt", ["rm", "keep.txt"]],
          ];
          for (const [what, args] of attempts) {
            const r = await efx([...args, ...clientArgs(server)]);
            report(`read-only root: ${what}`, `client: exit ${r.code}: ${r.stderr.trim()}`);
            assertExit(r, 1, what);
            assertOneLine(r, /Read-only file system/, what);
          }
          assert.deepEqual(await listTree(root), ["keep.txt"]);
          await assertSameFile(join(root, "keep.txt"), keep);
          // Reads still work.
          const back = join(work, "keep.back");
          assertExit(await efx(["download", "keep.txt", "-o", back, ...clientArgs(server)]), 0);
          await assertSameFile(back, keep);
          const ls = await efx(["ls", ...clientArgs(server)]);
          assertExit(ls, 0, "ls");
          assert.match(ls.stdout, /keep\.txt/);
        });
      } finally {
        await unmount(root);
      }
    });
  },
});

Deno.test({
  name:
    `a name under a read-only sub-folder cannot be created; the rest of the root works${SKIP_NOTE}`,
  ignore: MOUNT_PROBLEM !== null,
  fn: async () => {
    await withServer([], async (server) => {
      await withWork(async (work) => {
        const ro = join(server.root, "ro");
        await Deno.mkdir(ro);
        const keep = enc.encode("ro/keep.txt\n");
        await Deno.writeFile(join(ro, "keep.txt"), keep);
        await mountReadOnly(ro);
        try {
          const local = join(work, "x.bin");
          await randomFile(local, 400_000);
          for (const name of ["ro/x.bin", "ro/sub/x.bin"]) {
            const r = await efx(["upload", local, "--as", name, ...clientArgs(server)]);
            report(
              `upload as ${name} (ro/ is read-only)`,
              `client: exit ${r.code}: ${r.stderr.trim()}`,
            );
            assertExit(r, 1, name);
            assertOneLine(
              r,
              new RegExp(`^efx: ${name.replaceAll(".", "\\.")}: Read-only file system`),
              name,
            );
          }
          const f = await efx([
            "upload",
            local,
            "--as",
            "ro/keep.txt",
            "--force",
            ...clientArgs(server),
          ]);
          assertExit(f, 1, "--force over ro/keep.txt");
          await assertSameFile(join(ro, "keep.txt"), keep);
          assert.deepEqual(await listTree(ro), ["keep.txt"]);
          // Elsewhere in the root, uploads work.
          assertExit(await efx(["upload", local, "--as", "rw/x.bin", ...clientArgs(server)]), 0);
          await assertSameFile(join(server.root, "rw", "x.bin"), local);
          await assertNoLeftovers(server.root, "read-only sub-folder");
          await assertServing(server, work);
        } finally {
          await unmount(ro);
        }
      });
    });
  },
});

Deno.test({
  name:
    `full disk (2 MiB tmpfs root): a 5 MiB upload fails naming 'no space', no temp left, serving${SKIP_NOTE}`,
  ignore: MOUNT_PROBLEM !== null,
  fn: async () => {
    await withWork(async (work) => {
      const root = join(work, "small");
      await Deno.mkdir(root);
      await mountTmpfs(root, "2m");
      try {
        // No free-space reserve: the disk itself must run full here (the
        // reserve, which refuses such an upload before it starts, is pinned
        // in hostile_storage_test.ts).
        await withServer(["--root", root, "--min-free", "0"], async (server) => {
          const keep = await randomFile(join(root, "keep.bin"), 300_000);
          const big = join(work, "big.bin");
          await randomFile(big, 5 * 1024 * 1024);
          for (const args of [["--as", "big.bin"], ["--as", "keep.bin", "--force"]]) {
            const r = await efx(["upload", big, ...args, ...clientArgs(server)]);
            report(
              `full disk: upload 5 MiB ${args.join(" ")}`,
              `client: exit ${r.code}: ${r.stderr.trim()}`,
            );
            assertExit(r, 1, "upload on a full disk");
            assertOneLine(
              r,
              /^efx: (big|keep)\.bin: No space left on device \(os error 28\)$/,
              "full disk",
            );
            await assertNoLeftovers(root, "full disk");
            assert.deepEqual(await tempFiles(root), []);
          }
          const log = server.stderr().match(/put "big\.bin": failed: .*/)?.[0];
          report("full disk: server log", log ?? "(none)");
          assert.ok(log, "the server logged the failed put");
          assert.deepEqual(await listTree(root), ["keep.bin"]);
          assert.equal(await sha256File(join(root, "keep.bin")), keep);
          // The space of the failed uploads is free again: a 1 MiB upload fits.
          const mid = join(work, "mid.bin");
          await randomFile(mid, 1024 * 1024);
          assertExit(
            await efx(["upload", mid, ...clientArgs(server)]),
            0,
            "1 MiB after the failure",
          );
          await assertSameFile(join(root, "mid.bin"), mid);
          await Deno.remove(join(root, "mid.bin"));
          await assertServing(server, work);
        });
      } finally {
        await unmount(root);
      }
    });
  },
});

Deno.test({
  name:
    `full local disk during a download: clear error, no temp, existing local file untouched${SKIP_NOTE}`,
  ignore: MOUNT_PROBLEM !== null,
  fn: async () => {
    await withServer([], async (server) => {
      await withWork(async (work) => {
        await randomFile(join(server.root, "big.bin"), 5 * 1024 * 1024);
        const dest = join(work, "dest");
        await Deno.mkdir(dest);
        await mountTmpfs(dest, "2m");
        try {
          const original = enc.encode("local big.bin before the download\n");
          await Deno.writeFile(join(dest, "big.bin"), original);
          for (
            const extra of [["-o", join(dest, "new.bin")], ["-o", join(dest, "big.bin"), "--force"]]
          ) {
            const r = await efx(["download", "big.bin", ...extra, ...clientArgs(server)]);
            report(
              `full local disk: download ${extra.join(" ")}`,
              `client: exit ${r.code}: ${r.stderr.trim()}`,
            );
            assertExit(r, 1, "download onto a full disk");
            assertOneLine(
              r,
              /No space left on device \(os error 28\)/,
              "download onto a full disk",
            );
          }
          assert.deepEqual(await listTree(dest), ["big.bin"]);
          await assertSameFile(join(dest, "big.bin"), original);
          await assertServing(server, work);
        } finally {
          await unmount(dest);
        }
      });
    });
  },
});

// ---------------------------------------------------------------------------
// Idle and silent clients, the connection cap

Deno.test("idle timeout drops a silent client after the handshake; handshake timeout drops a mute TCP client; others served meanwhile", async () => {
  // Event-driven: nothing here sleeps or races a wall-clock window. Lower
  // bounds (a drop never comes before its timeout) are exact properties;
  // upper bounds only catch a timeout that does not work at all, with a
  // margin a loaded machine keeps.
  // 2 s, not 1: the other clients must get their work done inside this window.
  const TIMEOUT_S = 2;
  const LATEST_MS = 30_000;
  await withServer(
    ["--idle-timeout", String(TIMEOUT_S), "--handshake-timeout", String(TIMEOUT_S)],
    async (server) => {
      await withWork(async (work) => {
        // 1. A client that completes the handshake, then says nothing.
        const idle = await connectClient(server);
        const idleSince = performance.now();
        let idleDropped = false;
        const idleEnd = idle.channel.recvMessageOrClose().then(
          () => ({ ms: performance.now() - idleSince, why: "no error" }),
          (err: Error) => ({
            ms: performance.now() - idleSince,
            why: `${err.name}: ${err.message}`,
          }),
        ).finally(() => idleDropped = true);
        // 2. A raw TCP client that never sends a byte.
        const mute = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
        const muteSince = performance.now();
        const muteEnd = (async () => {
          const buf = new Uint8Array(4096);
          const got: number[] = [];
          while (true) {
            const n = await mute.read(buf).catch(() => null);
            if (n === null) break;
            got.push(...buf.subarray(0, n));
          }
          return { ms: performance.now() - muteSince, got: new Uint8Array(got) };
        })();
        // 3. Meanwhile another client works...
        let served = false;
        const serving = assertServing(server, work).then(() => served = true);
        // ...and one that keeps talking (requests back to back, never silent
        // for long) is kept for as long as it takes the idle one to be dropped.
        const busy = await connectClient(server);
        let busyRequests = 0;
        const busySince = performance.now();
        while (!idleDropped) {
          assert.ok(Array.isArray(await busy.list()), "the talking client was served");
          busyRequests++;
          assert.ok(performance.now() - busySince < LATEST_MS, "the idle client was never dropped");
        }
        // One more request after the drop: the talking client outlived it.
        await busy.list();
        busyRequests++;
        const busyMs = performance.now() - busySince;
        await busy.close();
        await serving;

        const { ms: idleMs, why: idleWhy } = await idleEnd;
        const m = await muteEnd;
        mute.close();
        const idleLine = await server.waitForLog(
          /connection dropped: (waiting for the peer timed out.*)$/m,
          LATEST_MS,
        );
        const muteLine = await server.waitForLog(
          /handshake failed: (handshake timed out.*)$/m,
          LATEST_MS,
        );
        report(
          `idle / mute clients (--idle-timeout ${TIMEOUT_S} --handshake-timeout ${TIMEOUT_S})`,
          `another client was served meanwhile; a client talking back to back was kept for ${
            busyMs.toFixed(0)
          } ms (${busyRequests} requests)`,
          `idle client: dropped after ~${idleMs.toFixed(0)} ms, it saw ${idleWhy}`,
          `server: connection dropped: ${idleLine[1]}`,
          `mute TCP client: closed after ${m.ms.toFixed(0)} ms, received ${m.got.length} bytes: ${
            JSON.stringify(new TextDecoder().decode(m.got))
          }`,
          `server: handshake failed: ${muteLine[1]}`,
        );
        assert.equal(idleLine[1], `waiting for the peer timed out after ${TIMEOUT_S} s`);
        assert.equal(muteLine[1], `handshake timed out after ${TIMEOUT_S} s`);
        // Never before the timeout (a little slack for timer rounding), and it did happen.
        assert.ok(idleMs >= TIMEOUT_S * 1000 - 50, `idle client dropped after ${idleMs} ms`);
        assert.ok(idleMs < LATEST_MS, `idle client dropped after ${idleMs} ms`);
        assert.ok(m.ms >= TIMEOUT_S * 1000 - 50, `mute client dropped after ${m.ms} ms`);
        assert.ok(m.ms < LATEST_MS, `mute client dropped after ${m.ms} ms`);
        // All it got is a handshake ALERT(TIMEOUT) saying why, then the close.
        assert.deepEqual(
          m.got,
          encodeAlert(AlertCode.TIMEOUT, `handshake timed out after ${TIMEOUT_S} s`),
        );
        assert.notEqual(idleWhy, "no error");
        assert.ok(served, "the other client was served");
        // Served while the idle one was held: requests answered before the drop.
        assert.ok(busyRequests >= 2, "no request was answered while the idle client was held");
        // The talking client was busy longer than the idle timeout, and ended
        // in order, not by a drop.
        assert.ok(busyMs >= TIMEOUT_S * 1000 - 50, `the talking client ran ${busyMs} ms`);
        await server.waitForLog(
          new RegExp(`disconnected after ${busyRequests} request\\(s\\)`),
          LATEST_MS,
        );
        assert.equal(server.stderr().match(/connection dropped/g)?.length, 1);
        idle.channel.abort();
      });
    },
  );
});

Deno.test({
  // Regression (fixed bug): a client dropped by the server's idle timeout is not told why. The
  // server means to send an ALERT (src/server.ts #handle: sendAlert(alertCode
  // (err), why) with code "timeout"), but the idle deadline in
  // SecureChannel.#nextRecord has already aborted (closed) the connection
  // (withDeadline's onTimeout: () => this.abort()), so the alert is never
  // written. The client then reports "connection closed unexpectedly
  // (truncated: no close record)" — the same words as an attacker cutting
  // the connection — e.g. in `efx shell` left idle for 5 minutes. Fix: on
  // the idle timeout, send the ALERT first, then close.
  name: "a client dropped for idleness is told so (ALERT 'timeout'), not 'truncated'",
  fn: async () => {
    await withServer(["--idle-timeout", "1"], async (server) => {
      const idle = await connectClient(server);
      try {
        await assert.rejects(idle.channel.recvMessageOrClose(), {
          name: "RemoteError",
          message: /timed out/,
        });
      } finally {
        idle.channel.abort();
      }
    });
  },
});

Deno.test("--max-connections 3: a 4th client gets 'server busy' (exit 1); after one leaves, a new client works", async () => {
  await withServer(["--max-connections", "3"], async (server) => {
    await withWork(async (work) => {
      const held = [
        await connectClient(server),
        await connectClient(server),
        await connectClient(server),
      ];
      try {
        // The CLI: one clear line, exit 1.
        const r = await efx(["ls", ...clientArgs(server)]);
        // The in-process client: the same error.
        const err = await connectClient(server).then(
          (c) => {
            c.channel.abort();
            return null;
          },
          (e: Error) => e,
        );
        const line = await server.waitForLog(/refused: (server busy \(\d+ connections\))$/m);
        report(
          "4th client with --max-connections 3",
          `CLI: exit ${r.code}: ${r.stderr.trim()}`,
          `in-process: ${err?.name}: ${err?.message}`,
          `server: refused: ${line[1]}`,
        );
        assertExit(r, 1, "4th client");
        assertOneLine(
          r,
          /^efx: server refused the handshake before authentication \(unverified message from the network: "too many connections; try again later"\)$/,
          "4th client",
        );
        assert.ok(err, "the in-process 4th client was admitted");
        assert.equal(
          err.message,
          'server refused the handshake before authentication (unverified message from the network: "too many connections; try again later")',
        );
        assert.equal(line[1], "server busy (3 connections)");
        // The three held connections still work.
        for (const c of held) assert.ok(Array.isArray(await c.list()));
        // One leaves; a new client (CLI and in-process) works.
        await held.shift()!.close();
        await server.waitForLog(/disconnected after 1 request\(s\)/);
        const ok = await efx(["ls", ...clientArgs(server)]);
        assertExit(ok, 0, "client after one left");
        await assertServing(server, work);
      } finally {
        for (const c of held) await c.close().catch(() => {});
      }
    });
  });
});

// ---------------------------------------------------------------------------
// Refused requests

Deno.test({
  // Regression (found by this suite, since fixed in src/server.ts): small
  // uploads are pipelined (request, DATA and trailer without waiting), and a
  // refusal by the permission check in the server's #handle did not drain
  // the refused file's data, so the next DATA record was read as a request
  // ("connection dropped: unexpected data record where a control message was
  // due") and the following files failed with "efx: Broken pipe".
  name:
    "a read-only server refusing several small uploads answers each one and keeps the connection",
  fn: async () => {
    await withServer(["--read-only"], async (server) => {
      await withWork(async (work) => {
        const files = [join(work, "a.bin"), join(work, "b.bin"), join(work, "c.bin")];
        for (const f of files) await randomFile(f, 10_000);
        const r = await efx(["upload", ...files, ...clientArgs(server)]);
        assertExit(r, 1, "uploads to a read-only server");
        const lines = r.stderr.trim().split("\n");
        assert.deepEqual(
          lines,
          files.map(() => "efx: not permitted: this connection has read-only access"),
        );
        assert.doesNotMatch(server.stderr(), /connection dropped/);
        assert.deepEqual(await listTree(server.root), []);
      });
    });
  },
});
