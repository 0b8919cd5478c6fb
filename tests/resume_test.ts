/**
 * Resumable transfers, end to end: the real CLI against a real `efx serve`,
 * with the connection cut at chosen points by the in-the-middle proxy
 * (tests/helpers/mitm.ts), then resumed directly. Every resumed file is
 * compared byte for byte and by SHA-256 with its source.
 *
 * Record layout of the transfers cut here (no client identity, so no auth
 * message; files of 4 MiB = 16 DATA records of 256 KiB):
 *
 *     upload --resume   c2s: 0 put, 1 {offset}, 2..17 DATA (17 END), 18 trailer
 *                       s2c: 0 offer {ok, offset, prefixSha256}, 1 {ok}, 2 result
 *     download --resume s2c: 0 {ok, size, mode, mtime, offset}, 1..16 DATA, 17 trailer
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/resume_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { STAGING_DIR } from "../src/storage/local.ts";
import { partialRelPath } from "../src/storage/local_partials.ts";
import { Mitm, type Tamper, truncateAfterRecords, truncateInRecord } from "./helpers/mitm.ts";
import {
  assertExit,
  assertSameFile,
  clientArgs,
  connectClient,
  efx,
  type EfxResult,
  listTree,
  makeWorkDir,
  randomFile,
  sha256File,
  startServer,
  tempFilesIn,
  type TestServer,
  waitFor,
} from "./helpers/server.ts";

const MiB = 1 << 20;
const CHUNK = 256 * 1024;
const SIZE = 4 * MiB;

/** The server shared by the tests of this file (default partial TTL); stopped by the last test. */
const S: TestServer = await startServer();

async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await makeWorkDir("efx-resume-work-");
  try {
    await fn(work);
    assert.deepEqual(await tempFilesIn(work), [], "temp files left in the client folder");
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

/** Path of the server's partial upload of `name` under `root`. */
function partialOf(root: string, name: string): string {
  return join(root, STAGING_DIR, "partials", partialRelPath(name, ""));
}

async function sizeOrNull(path: string): Promise<number | null> {
  return (await Deno.lstat(path).catch(() => null))?.size ?? null;
}

/** The byte count of "(resumed after N bytes already there)", or null when the line says nothing. */
function resumedAfter(r: EfxResult): number | null {
  const m = /\(resumed after (\d+) bytes already there\)/.exec(r.stdout);
  return m ? Number(m[1]) : null;
}

/**
 * Runs `efx ...args` through a proxy to `server` that applies `tamper`, and
 * waits until the server has finished with that connection (so its resume
 * claim is released and the partial flushed). Returns the CLI's result.
 */
async function throughCut(
  server: TestServer,
  tamper: Tamper,
  args: string[],
  cwd: string,
): Promise<EfxResult> {
  const mitm = await Mitm.start({ target: server.port, tamper });
  try {
    const r = await efx([
      ...args,
      "--server",
      mitm.address,
      "--server-key",
      server.pubKeyPath,
    ], { cwd });
    const port = (await mitm.session(0)).upstreamPort;
    await server.waitForLog(
      new RegExp(`127\\.0\\.0\\.1:${port} (connection dropped|connection ended|disconnected)`),
    );
    return r;
  } finally {
    await mitm.close();
  }
}

/** `efx upload --resume FILE --as NAME` straight to `server`. */
function resumeUpload(server: TestServer, file: string, name: string, cwd: string) {
  return efx(["upload", "--resume", file, "--as", name, ...clientArgs(server)], { cwd });
}

/** `efx download --resume NAME -o OUT` straight to `server`. */
function resumeDownload(server: TestServer, name: string, out: string, cwd: string) {
  return efx(["download", "--resume", name, "-o", out, ...clientArgs(server)], { cwd });
}

/** Asserts the state between a cut upload and its resume; returns the partial's size. */
async function assertCutUpload(r: EfxResult, name: string, cwd: string): Promise<number> {
  assertExit(r, 1, `cut upload of ${name}`);
  assert.equal(await sizeOrNull(join(S.root, name)), null, "nothing under the final name");
  const ls = await efx(["ls", "-r", ...clientArgs(S)], { cwd });
  assertExit(ls, 0, "ls");
  assert.doesNotMatch(ls.stdout, new RegExp(name.replace(".", "\\.")), "listed before complete");
  assert.doesNotMatch(ls.stdout, /efx-tmp/, "staging folder listed");
  const part = await sizeOrNull(partialOf(S.root, name));
  assert.notEqual(part, null, "the server kept a partial");
  return part!;
}

// ---------------------------------------------------------------------------
// Uploads

const UPLOAD_CUTS: { what: string; tamper: Tamper; min: number; max: number }[] = [
  // One DATA record reached the server.
  {
    what: "early (after 1 DATA record)",
    tamper: truncateAfterRecords("c2s", 3),
    min: 0,
    max: CHUNK,
  },
  // Mid-record: DATA records 2..9 complete, record 10 cut after 1000 bytes.
  {
    what: "middle (inside DATA record 9)",
    tamper: truncateInRecord("c2s", 10, 1000),
    min: CHUNK,
    max: 8 * CHUNK,
  },
  // All but the last DATA record.
  {
    what: "late (before the END record)",
    tamper: truncateAfterRecords("c2s", 17),
    min: CHUNK,
    max: 15 * CHUNK,
  },
  // Everything but the trailer: the whole file is there, unconfirmed.
  { what: "at the trailer", tamper: truncateAfterRecords("c2s", 18), min: SIZE, max: SIZE },
];

for (const [i, cut] of UPLOAD_CUTS.entries()) {
  Deno.test(`resume: upload cut ${cut.what}, then resumed: same bytes, summary says resumed`, async () => {
    await withWork(async (work) => {
      const name = `up-cut-${i}.bin`;
      const src = join(work, "src.bin");
      const sha = await randomFile(src, SIZE);
      const r = await throughCut(S, cut.tamper, ["upload", "--resume", src, "--as", name], work);
      const part = await assertCutUpload(r, name, work);
      assert.ok(part >= cut.min && part <= cut.max, `partial of ${part} bytes`);
      assert.equal(part, (await Deno.stat(partialOf(S.root, name))).size);
      // The partial is private to the server process.
      assert.equal((await Deno.stat(partialOf(S.root, name))).mode! & 0o777, 0o600);
      assert.equal((await Deno.stat(join(S.root, STAGING_DIR))).mode! & 0o777, 0o700);

      const again = await resumeUpload(S, src, name, work);
      assertExit(again, 0, "resumed upload");
      if (part > 0) {
        assert.equal(resumedAfter(again), part, again.stdout);
      }
      assert.match(again.stdout, new RegExp(sha));
      await assertSameFile(join(S.root, name), src);
      assert.equal(await sha256File(join(S.root, name)), sha);
      assert.equal(await sizeOrNull(partialOf(S.root, name)), null, "partial left after commit");
      await S.waitForLog(
        new RegExp(`put "${name}" .*: ok( \\(resumed at byte ${part}\\))?$`, "m"),
      );
    });
  });
}

Deno.test("resume: upload cut just after the resume offer (either way) keeps the partial intact", async () => {
  await withWork(async (work) => {
    const name = "up-offer.bin";
    const src = join(work, "src.bin");
    await randomFile(src, SIZE);
    const args = ["upload", "--resume", src, "--as", name];
    const part = await assertCutUpload(
      await throughCut(S, truncateInRecord("c2s", 8, 100), args, work),
      name,
      work,
    );
    assert.ok(part > 0);
    // The client's answer never arrives.
    const a = await throughCut(S, truncateAfterRecords("c2s", 1), args, work);
    assert.equal(await assertCutUpload(a, name, work), part);
    // The answer arrives, the server's go-ahead does not.
    const b = await throughCut(S, truncateAfterRecords("s2c", 1), args, work);
    assert.equal(await assertCutUpload(b, name, work), part);
    const again = await resumeUpload(S, src, name, work);
    assertExit(again, 0, "resumed upload");
    assert.equal(resumedAfter(again), part);
    await assertSameFile(join(S.root, name), src);
  });
});

Deno.test("resume: the staging folder is hidden and its names are reserved", async () => {
  await withWork(async (work) => {
    const name = "hidden.bin";
    const src = join(work, name);
    await randomFile(src, SIZE);
    const cut = await throughCut(
      S,
      truncateAfterRecords("c2s", 6),
      ["upload", "--resume", src],
      work,
    );
    await assertCutUpload(cut, name, work);
    for (const pattern of [`${STAGING_DIR}/*`, `${STAGING_DIR}/partials/*/*`, ".efx-*", "*"]) {
      const ls = await efx(["ls", pattern, ...clientArgs(S)], { cwd: work });
      assert.doesNotMatch(ls.stdout, /efx-tmp|\.part/, pattern);
    }
    const get = await efx(
      [
        "download",
        `${STAGING_DIR}/partials/${partialRelPath(name, "")}`,
        "-o",
        "stolen",
        ...clientArgs(S),
      ],
      { cwd: work },
    );
    assertExit(get, 1, "download of a partial");
    assert.match(get.stderr, /names starting with \.efx- are reserved/);
    assert.equal(await sizeOrNull(join(work, "stolen")), null);
    const put = await efx(
      [
        "upload",
        src,
        "--as",
        `${STAGING_DIR}/partials/${partialRelPath(name, "")}`,
        "--force",
        ...clientArgs(S),
      ],
      { cwd: work },
    );
    assertExit(put, 1, "upload over a partial");
    assert.match(put.stderr, /reserved/);
    await Deno.remove(partialOf(S.root, name));
  });
});

Deno.test("resume: a changed source (same size, other prefix; other size) restarts cleanly", async () => {
  await withWork(async (work) => {
    const variants: [string, (src: string) => Promise<void>][] = [
      ["same size, first byte changed", async (src) => {
        using f = await Deno.open(src, { read: true, write: true });
        const b = new Uint8Array(1);
        await f.read(b);
        await f.seek(0, Deno.SeekMode.Start);
        await f.write(Uint8Array.of(b[0] ^ 0xff));
      }],
      ["same size, a byte inside the prefix changed", async (src) => {
        using f = await Deno.open(src, { read: true, write: true });
        await f.seek(CHUNK + 17, Deno.SeekMode.Start);
        await f.write(Uint8Array.of(1, 2, 3, 4));
      }],
      ["a bigger, different file", async (src) => {
        await randomFile(src, SIZE + 12345);
      }],
      ["a smaller, different file", async (src) => {
        await randomFile(src, CHUNK + 1);
      }],
    ];
    for (const [i, [what, change]] of variants.entries()) {
      const name = `changed-${i}.bin`;
      const src = join(work, name);
      await randomFile(src, SIZE);
      const cut = await throughCut(
        S,
        truncateAfterRecords("c2s", 9),
        ["upload", "--resume", src],
        work,
      );
      const part = await assertCutUpload(cut, name, work);
      assert.ok(part > 0, what);
      await change(src);
      const again = await resumeUpload(S, src, name, work);
      assertExit(again, 0, what);
      assert.equal(resumedAfter(again), null, `${what}: must not resume\n${again.stdout}`);
      assert.match(
        again.stderr,
        new RegExp(`${name}: the server's partial copy differs from .*; restarting from zero`),
        what,
      );
      await assertSameFile(join(S.root, name), src);
      assert.equal(await sizeOrNull(partialOf(S.root, name)), null);
    }
  });
});

Deno.test("resume: a source that kept its prefix ends as exactly the new file (longer: resumed; shorter: restarted)", async () => {
  await withWork(async (work) => {
    for (const [i, newSize] of [3 * CHUNK + 5, SIZE + 3 * CHUNK].entries()) {
      const name = `kept-prefix-${i}.bin`;
      const src = join(work, name);
      await randomFile(src, SIZE);
      const cut = await throughCut(
        S,
        truncateAfterRecords("c2s", 12),
        ["upload", "--resume", src],
        work,
      );
      const part = await assertCutUpload(cut, name, work);
      assert.ok(part > 3 * CHUNK + 5, `partial ${part}`);
      if (newSize < SIZE) {
        await Deno.truncate(src, newSize);
      } else {
        const more = join(work, "more.bin");
        await randomFile(more, newSize - SIZE);
        using f = await Deno.open(src, { append: true });
        await f.write(await Deno.readFile(more));
      }
      const again = await resumeUpload(S, src, name, work);
      assertExit(again, 0, `new size ${newSize}`);
      // Only the partial's whole length is ever offered (a length the client
      // picks would make the offer an oracle): a source now shorter than the
      // partial starts over; a longer one with the same prefix resumes.
      assert.equal(resumedAfter(again), newSize < part ? null : part);
      await assertSameFile(join(S.root, name), src);
    }
  });
});

Deno.test("resume: a plain (non-resumable) upload of the same name drops a stale partial", async () => {
  await withWork(async (work) => {
    const name = "plain-after-cut.bin";
    const src = join(work, name);
    await randomFile(src, SIZE);
    await assertCutUpload(
      await throughCut(S, truncateAfterRecords("c2s", 7), ["upload", "--resume", src], work),
      name,
      work,
    );
    assertExit(await efx(["upload", src, ...clientArgs(S)], { cwd: work }), 0, "plain upload");
    await assertSameFile(join(S.root, name), src);
    await waitFor(async () => (await sizeOrNull(partialOf(S.root, name))) === null, {
      what: "the stale partial to go",
    });
  });
});

// ---------------------------------------------------------------------------
// Downloads

const DOWNLOAD_CUTS: { what: string; tamper: Tamper; min: number; max: number }[] = [
  {
    what: "early (after 1 DATA record)",
    tamper: truncateAfterRecords("s2c", 2),
    min: 0,
    max: CHUNK,
  },
  {
    what: "middle (inside DATA record 8)",
    tamper: truncateInRecord("s2c", 9, 5000),
    min: CHUNK,
    max: 8 * CHUNK,
  },
  {
    what: "late (before the END record)",
    tamper: truncateAfterRecords("s2c", 16),
    min: CHUNK,
    max: 15 * CHUNK,
  },
  { what: "at the trailer", tamper: truncateAfterRecords("s2c", 17), min: 0, max: SIZE },
];

for (const [i, cut] of DOWNLOAD_CUTS.entries()) {
  Deno.test(`resume: download cut ${cut.what}, then resumed: same bytes, summary says resumed`, async () => {
    await withWork(async (work) => {
      const name = `down-cut-${i}.bin`;
      const sha = await randomFile(join(S.root, name), SIZE);
      const out = join(work, "got.bin");
      const partial = join(work, ".got.bin.efx-partial");
      const r = await throughCut(S, cut.tamper, ["download", "--resume", name, "-o", out], work);
      assertExit(r, 1, "cut download");
      assert.equal(await sizeOrNull(out), null, "nothing under the final name");
      const part = await sizeOrNull(partial);
      assert.notEqual(part, null, "the client kept a partial");
      assert.ok(part! >= cut.min && part! <= cut.max, `partial of ${part} bytes`);
      assert.equal((await Deno.stat(partial)).mode! & 0o777, 0o600);
      const again = await resumeDownload(S, name, out, work);
      assertExit(again, 0, "resumed download");
      if (part! > 0) assert.equal(resumedAfter(again), part, again.stdout);
      assert.match(again.stdout, new RegExp(sha));
      await assertSameFile(out, join(S.root, name));
      assert.equal(await sizeOrNull(partial), null, "partial left after commit");
      assert.deepEqual(await listTree(work), ["got.bin"]);
    });
  });
}

Deno.test("resume: download cut just after the server's reply, twice, then resumed", async () => {
  await withWork(async (work) => {
    const name = "down-offer.bin";
    await randomFile(join(S.root, name), SIZE);
    const out = join(work, "got.bin");
    const partial = join(work, ".got.bin.efx-partial");
    const args = ["download", "--resume", name, "-o", out];
    assertExit(await throughCut(S, truncateAfterRecords("s2c", 6), args, work), 1);
    const part = await sizeOrNull(partial);
    assert.ok(part !== null && part > 0);
    for (let k = 0; k < 2; k++) {
      assertExit(await throughCut(S, truncateAfterRecords("s2c", 1), args, work), 1);
      assert.equal(await sizeOrNull(partial), part, "the partial is untouched");
    }
    const again = await resumeDownload(S, name, out, work);
    assertExit(again, 0);
    assert.equal(resumedAfter(again), part);
    await assertSameFile(out, join(S.root, name));
  });
});

Deno.test("resume: a download resume after the server's file changed (or the partial was damaged) restarts", async () => {
  await withWork(async (work) => {
    const cases: [string, (name: string, partial: string) => Promise<void>][] = [
      ["server file rewritten, same size", async (name) => {
        await randomFile(join(S.root, name), SIZE);
      }],
      ["server file now shorter than the partial", async (name) => {
        await randomFile(join(S.root, name), 1000);
      }],
      ["server file one byte changed at the start", async (name) => {
        using f = await Deno.open(join(S.root, name), { read: true, write: true });
        const b = new Uint8Array(1);
        await f.read(b);
        await f.seek(0, Deno.SeekMode.Start);
        await f.write(Uint8Array.of(b[0] ^ 1));
      }],
      ["local partial damaged", async (_name, partial) => {
        using f = await Deno.open(partial, { write: true });
        await f.seek(100, Deno.SeekMode.Start);
        await f.write(new Uint8Array(8));
      }],
    ];
    for (const [i, [what, change]] of cases.entries()) {
      const name = `down-changed-${i}.bin`;
      await randomFile(join(S.root, name), SIZE);
      const out = join(work, `out-${i}.bin`);
      const partial = join(work, `.out-${i}.bin.efx-partial`);
      const args = ["download", "--resume", name, "-o", out];
      assertExit(await throughCut(S, truncateAfterRecords("s2c", 8), args, work), 1, what);
      assert.ok(((await sizeOrNull(partial)) ?? 0) > 0, what);
      await change(name, partial);
      const again = await resumeDownload(S, name, out, work);
      assertExit(again, 0, what);
      assert.equal(resumedAfter(again), null, `${what}: must not resume`);
      assert.match(
        again.stderr,
        /the server's file no longer starts like our partial copy; restarting from zero/,
        what,
      );
      await assertSameFile(out, join(S.root, name));
      assert.equal(await sizeOrNull(partial), null, what);
    }
  });
});

Deno.test("resume: download --resume refuses an existing target without --force, keeps the partial", async () => {
  await withWork(async (work) => {
    const name = "down-exists.bin";
    await randomFile(join(S.root, name), SIZE);
    const out = join(work, "got.bin");
    const partial = join(work, ".got.bin.efx-partial");
    assertExit(
      await throughCut(
        S,
        truncateAfterRecords("s2c", 5),
        ["download", "--resume", name, "-o", out],
        work,
      ),
      1,
    );
    const part = await sizeOrNull(partial);
    await Deno.writeTextFile(out, "mine\n");
    const r = await resumeDownload(S, name, out, work);
    assertExit(r, 1, "existing target");
    assert.match(r.stderr, /already exists \(use --force to overwrite\)/);
    assert.equal(await Deno.readTextFile(out), "mine\n");
    assert.equal(await sizeOrNull(partial), part);
    const forced = await efx(
      ["download", "--resume", "--force", name, "-o", out, ...clientArgs(S)],
      { cwd: work },
    );
    assertExit(forced, 0, "with --force");
    assert.equal(resumedAfter(forced), part);
    await assertSameFile(out, join(S.root, name));
  });
});

Deno.test("resume: a resumable upload whose connection is still open but dead is taken over at once", async () => {
  await withWork(async (work) => {
    const name = `takeover-${crypto.randomUUID()}.bin`;
    const src = join(work, "src.bin");
    await randomFile(src, 2 * CHUNK + 1000);
    const data = await Deno.readFile(src);
    // A client that started a resumable upload, sent one DATA record and went
    // silent with its connection open (a laptop lid closed, a dead NAT entry).
    const stale = await connectClient(S);
    await stale.channel.sendMessage({
      op: "put",
      name,
      size: data.length,
      mode: 0o644,
      mtime: Date.now(),
      force: false,
      resume: true,
    });
    const offer = await stale.channel.recvMessage();
    assert.equal(offer.offset, 0);
    await stale.channel.sendMessage({ offset: 0 });
    assert.equal((await stale.channel.recvMessage()).ok, true);
    let hang!: () => void;
    const hung = new Promise<void>((r) => hang = r);
    const sending = stale.channel.sendStream((async function* () {
      yield data.slice(0, CHUNK); // sent once the next chunk comes (the last carries END)
      yield data.slice(CHUNK, 2 * CHUNK);
      await hung; // never sends END
    })()).catch(() => {});
    const partial = join(S.root, STAGING_DIR, "partials", partialRelPath(name, ""));
    await waitFor(async () => (await Deno.stat(partial).catch(() => null))?.size === CHUNK, {
      what: "the stale upload's partial",
    });
    // The same client comes back: its resume takes over right away and sends only the rest.
    const t0 = performance.now();
    const again = await efx(["upload", src, "--as", name, "--resume", ...clientArgs(S)], {
      cwd: work,
    });
    assertExit(again, 0, "resume while the stale connection is open");
    assert.match(again.stdout, new RegExp(`resumed after ${CHUNK} bytes`));
    assert.ok(performance.now() - t0 < 8_000, "the takeover waited too long");
    await assertSameFile(join(S.root, name), data);
    hang();
    await sending;
    await stale.close().catch(() => {});
  });
});

// ---------------------------------------------------------------------------
// Partial TTL

Deno.test("resume: --partial-ttl: the start sweep removes expired partials and keeps young ones", async () => {
  const root = await makeWorkDir("efx-resume-root-");
  const work = await makeWorkDir("efx-resume-work-");
  let a: TestServer | undefined;
  let b: TestServer | undefined;
  try {
    // A later --root overrides the helper's own (a server on a root that outlives it).
    a = await startServer({ args: ["--root", root], perms: "broad" });
    const files: Record<string, string> = {};
    for (const name of ["old.bin", "young.bin"]) {
      files[name] = join(work, name);
      await randomFile(files[name], SIZE);
      const r = await throughCut(a, truncateAfterRecords("c2s", 8), [
        "upload",
        "--resume",
        files[name],
      ], work);
      assertExit(r, 1);
    }
    await a.stop();
    const old = partialOf(root, "old.bin");
    const young = partialOf(root, "young.bin");
    const youngSize = await sizeOrNull(young);
    assert.ok(youngSize! > 0);
    // Two hours old and ten minutes old, against a TTL of one hour.
    await Deno.utime(old, new Date(), new Date(Date.now() - 2 * 3_600_000));
    await Deno.utime(young, new Date(), new Date(Date.now() - 10 * 60_000));
    b = await startServer({ args: ["--root", root, "--partial-ttl", "1h"], perms: "broad" });
    await b.waitForLog(/removed 1 expired partial upload\(s\)/);
    assert.equal(await sizeOrNull(old), null, "expired partial kept");
    assert.equal(await sizeOrNull(young), youngSize, "young partial removed");
    const o = await resumeUpload(b, files["old.bin"], "old.bin", work);
    assertExit(o, 0);
    assert.equal(resumedAfter(o), null, "an expired partial must not be resumed");
    await assertSameFile(join(root, "old.bin"), files["old.bin"]);
    const y = await resumeUpload(b, files["young.bin"], "young.bin", work);
    assertExit(y, 0);
    assert.equal(resumedAfter(y), youngSize);
    await assertSameFile(join(root, "young.bin"), files["young.bin"]);
  } finally {
    await a?.stop();
    await b?.stop();
    await Deno.remove(root, { recursive: true });
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("resume: with --partial-ttl 1s a running server sweeps an abandoned partial soon", async () => {
  const server = await startServer({ args: ["--partial-ttl", "1s"] });
  try {
    await withWork(async (work) => {
      const src = join(work, "abandoned.bin");
      await randomFile(src, SIZE);
      const r = await throughCut(server, truncateAfterRecords("c2s", 8), [
        "upload",
        "--resume",
        src,
      ], work);
      assertExit(r, 1);
      await waitFor(
        async () => (await sizeOrNull(partialOf(server.root, "abandoned.bin"))) === null,
        {
          timeoutMs: 8000,
          what: "the sweep",
        },
      );
      await server.waitForLog(/removed 1 expired partial upload\(s\)/);
      const again = await resumeUpload(server, src, "abandoned.bin", work);
      assertExit(again, 0);
      assert.equal(resumedAfter(again), null);
      await assertSameFile(join(server.root, "abandoned.bin"), src);
    });
  } finally {
    await server.stop();
  }
});

// ---------------------------------------------------------------------------
// The shell

Deno.test("resume: the shell's reput and reget continue interrupted transfers", async () => {
  await withWork(async (work) => {
    const src = join(work, "shell-up.bin");
    await randomFile(src, SIZE);
    await assertCutUpload(
      await throughCut(S, truncateAfterRecords("c2s", 10), ["upload", "--resume", src], work),
      "shell-up.bin",
      work,
    );
    const part = await sizeOrNull(partialOf(S.root, "shell-up.bin"));
    await randomFile(join(S.root, "shell-down.bin"), SIZE);
    assertExit(
      await throughCut(
        S,
        truncateAfterRecords("s2c", 7),
        ["download", "--resume", "shell-down.bin", "-o", "got.bin"],
        work,
      ),
      1,
    );
    const localPart = await sizeOrNull(join(work, ".got.bin.efx-partial"));
    assert.ok(localPart! > 0);
    const r = await efx(["shell", ...clientArgs(S)], {
      cwd: work,
      stdin: "reput shell-up.bin\nreget shell-down.bin got.bin\nls shell-*\nquit\n",
    });
    assertExit(r, 0, "shell");
    assert.match(
      r.stdout,
      new RegExp(`^shell-up\\.bin: uploaded .*\\(resumed after ${part} bytes`, "m"),
    );
    assert.match(
      r.stdout,
      new RegExp(`^got\\.bin: downloaded .*\\(resumed after ${localPart} bytes`, "m"),
    );
    assert.match(r.stdout, /shell-down\.bin\n.*shell-up\.bin/);
    await assertSameFile(join(S.root, "shell-up.bin"), src);
    await assertSameFile(join(work, "got.bin"), join(S.root, "shell-down.bin"));
  });
});

// ---------------------------------------------------------------------------

Deno.test({
  // Regression (fixed bug): EfxClient.upload (the non-pipelined path: files over 1 MiB, and every
  // resumable upload) throws as soon as sendFile has sent an error trailer
  // ("source file changed while being sent") and never reads the server's
  // reply to that put ({ok:false, code:"changed"}). That reply is then taken
  // as the answer to the NEXT request on the same connection: the next `ls`
  // (or the offer of the next upload) fails with the previous file's error,
  // and later requests are off by one. uploadQueued handles this case; upload
  // does not.
  name: "resume: a source that shrinks while uploading leaves the connection in step",
  fn: async () => {
    const work = await makeWorkDir("efx-resume-work-");
    const client = await connectClient(S);
    try {
      const src = join(work, "shrinks.bin");
      await randomFile(src, 3 * MiB);
      let first = true;
      await assert.rejects(
        client.upload(src, "shrinks.bin", {
          resume: true,
          onBytes: () => {
            if (first) Deno.truncateSync(src, 1000);
            first = false;
          },
        }),
        /source file changed while being sent/,
      );
      assert.equal(client.channel.broken, false);
      // The connection must still answer the next request correctly.
      const entries = await client.list("shrinks*");
      assert.deepEqual(entries, []);
    } finally {
      client.channel.abort();
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("resume: the shared server logged no internal error and stops cleanly", async () => {
  try {
    assert.doesNotMatch(S.stderr(), /internal error/);
  } finally {
    assert.equal((await S.stop()).code, 0);
  }
});
