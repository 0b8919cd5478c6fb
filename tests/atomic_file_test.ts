import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  AtomicWriter,
  FileExistsError,
  osMessage,
  removeStaleTemps,
  TEMP_PREFIX,
} from "../src/atomic_file.ts";
import { EfxError, IntegrityError } from "../src/errors.ts";

const enc = new TextEncoder();

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "efx-atomic-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

Deno.test("atomic: file is invisible under its final name until commit", async () => {
  await withDir(async (dir) => {
    const final = join(dir, "out.txt");
    const w = await AtomicWriter.create(final);
    assert.equal(w.finalPath, final);
    assert.ok(w.tempPath.startsWith(join(dir, TEMP_PREFIX)));
    assert.match(w.tempPath.slice(join(dir, TEMP_PREFIX).length), /^[0-9a-f]{24}$/);
    assert.equal((await Deno.stat(w.tempPath)).mode! & 0o777, 0o600);
    await w.write(enc.encode("hello "));
    await w.write(enc.encode("world"));
    assert.equal(w.bytesWritten, 11);
    assert.equal(await exists(final), false);
    const res = await w.commit();
    assert.deepEqual(res, { sha256: sha256(enc.encode("hello world")), bytes: 11 });
    assert.equal(await Deno.readTextFile(final), "hello world");
    assert.deepEqual(await names(dir), ["out.txt"]);
    assert.equal((await Deno.stat(final)).mode! & 0o777, 0o644);
  });
});

Deno.test("atomic: many chunks and an empty file hash correctly", async () => {
  await withDir(async (dir) => {
    const data = crypto.getRandomValues(new Uint8Array(65536));
    const big = new Uint8Array(3 * 1024 * 1024 + 17);
    for (let i = 0; i < big.length; i += data.length) big.set(data.subarray(0, big.length - i), i);
    const w = await AtomicWriter.create(join(dir, "big.bin"));
    for (let off = 0; off < big.length;) {
      const n = Math.min(big.length - off, 1 + Math.floor(Math.random() * 200_000));
      await w.write(big.subarray(off, off + n));
      off += n;
    }
    const res = await w.commit({ expectedSha256: sha256(big) });
    assert.equal(res.bytes, big.length);
    assert.deepEqual(await Deno.readFile(join(dir, "big.bin")), big);

    const e = await AtomicWriter.create(join(dir, "empty"));
    const r2 = await e.commit({ expectedSha256: sha256(new Uint8Array(0)) });
    assert.equal(r2.bytes, 0);
    assert.equal((await Deno.stat(join(dir, "empty"))).size, 0);
  });
});

Deno.test("atomic: abort removes the temp file, is idempotent and final", async () => {
  await withDir(async (dir) => {
    const w = await AtomicWriter.create(join(dir, "a.txt"));
    await w.write(enc.encode("partial"));
    assert.equal(await exists(w.tempPath), true);
    await w.abort();
    await w.abort();
    assert.deepEqual(await names(dir), []);
    await assert.rejects(w.write(enc.encode("x")), EfxError);
    await assert.rejects(w.commit(), EfxError);
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("atomic: abort after commit keeps the file", async () => {
  await withDir(async (dir) => {
    const w = await AtomicWriter.create(join(dir, "a.txt"));
    await w.write(enc.encode("done"));
    await w.commit();
    await w.abort();
    assert.equal(await Deno.readTextFile(join(dir, "a.txt")), "done");
  });
});

Deno.test("atomic: abort never throws even when the temp file is already gone", async () => {
  await withDir(async (dir) => {
    const w = await AtomicWriter.create(join(dir, "a.txt"));
    await Deno.remove(w.tempPath);
    await w.abort();
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("atomic: hash mismatch aborts and leaves no file", async () => {
  await withDir(async (dir) => {
    const w = await AtomicWriter.create(join(dir, "a.txt"));
    await w.write(enc.encode("tampered"));
    const claimed = sha256(enc.encode("original"));
    const actual = sha256(enc.encode("tampered"));
    await assert.rejects(w.commit({ expectedSha256: claimed }), (err) => {
      assert.ok(err instanceof IntegrityError);
      assert.equal(err.message, `file hash mismatch: sent ${claimed}, received ${actual}`);
      return true;
    });
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("atomic: expected hash is compared case-insensitively", async () => {
  await withDir(async (dir) => {
    const w = await AtomicWriter.create(join(dir, "a.txt"));
    await w.write(enc.encode("abc"));
    await w.commit({ expectedSha256: sha256(enc.encode("abc")).toUpperCase() });
    assert.equal(await Deno.readTextFile(join(dir, "a.txt")), "abc");
  });
});

Deno.test("atomic: only permission bits are applied (setuid/setgid/sticky stripped)", async () => {
  await withDir(async (dir) => {
    const cases: [number | undefined, number][] = [
      [0o4755, 0o755],
      [0o2750, 0o750],
      [0o1777, 0o777],
      [0o7600, 0o600],
      [0o100640, 0o640],
      [0o400, 0o400],
      [undefined, 0o644],
    ];
    for (const [i, [mode, want]] of cases.entries()) {
      const path = join(dir, `f${i}`);
      const w = await AtomicWriter.create(path);
      await w.write(enc.encode("x"));
      await w.commit({ mode });
      const got = (await Deno.stat(path)).mode!;
      assert.equal(got & 0o7777, want, `mode ${mode?.toString(8)}`);
    }
  });
});

Deno.test("atomic: mtime is restored", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "old.txt");
    const mtime = new Date(Date.UTC(2001, 8, 9, 1, 46, 40, 123));
    const w = await AtomicWriter.create(path);
    await w.write(enc.encode("x"));
    await w.commit({ mtime });
    assert.equal((await Deno.stat(path)).mtime!.getTime(), mtime.getTime());

    // An invalid date is ignored rather than failing the transfer.
    const w2 = await AtomicWriter.create(join(dir, "now.txt"));
    await w2.commit({ mtime: new Date(NaN) });
    const age = Date.now() - (await Deno.stat(join(dir, "now.txt"))).mtime!.getTime();
    assert.ok(age >= -5000 && age < 60_000);
  });
});

Deno.test("atomic: overwrite is refused without force (early) and allowed with force", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "a.txt");
    await Deno.writeTextFile(path, "old");
    await assert.rejects(AtomicWriter.create(path), (err) => {
      assert.ok(err instanceof FileExistsError);
      assert.equal(err.message, `${path} already exists (use --force to overwrite)`);
      return true;
    });
    assert.deepEqual(await names(dir), ["a.txt"]);
    const w = await AtomicWriter.create(path, { force: true });
    await w.write(enc.encode("new"));
    await w.commit();
    assert.equal(await Deno.readTextFile(path), "new");
    assert.deepEqual(await names(dir), ["a.txt"]);
  });
});

Deno.test("atomic: a file created during the transfer is not clobbered without force", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "a.txt");
    const w = await AtomicWriter.create(path, { label: "a.txt" });
    await w.write(enc.encode("mine"));
    await Deno.writeTextFile(path, "theirs");
    await assert.rejects(w.commit(), (err) => {
      assert.ok(err instanceof FileExistsError);
      assert.equal(err.message, "a.txt already exists (use --force to overwrite)");
      return true;
    });
    assert.equal(await Deno.readTextFile(path), "theirs");
    assert.deepEqual(await names(dir), ["a.txt"]);

    // force given at commit time wins over create's default
    const w2 = await AtomicWriter.create(join(dir, "b.txt"));
    await w2.write(enc.encode("mine"));
    await Deno.writeTextFile(join(dir, "b.txt"), "theirs");
    await w2.commit({ force: true });
    assert.equal(await Deno.readTextFile(join(dir, "b.txt")), "mine");
    assert.deepEqual(await names(dir), ["a.txt", "b.txt"]);
  });
});

Deno.test("atomic: a symlink at the final name is replaced, never written through", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "target.txt"), "target");
    await Deno.symlink("target.txt", join(dir, "link"));
    await assert.rejects(AtomicWriter.create(join(dir, "link")), FileExistsError);
    const w = await AtomicWriter.create(join(dir, "link"), { force: true });
    await w.write(enc.encode("new"));
    await w.commit();
    assert.equal((await Deno.lstat(join(dir, "link"))).isFile, true);
    assert.equal(await Deno.readTextFile(join(dir, "target.txt")), "target");
  });
});

Deno.test("atomic: a folder at the final name is refused even with force", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(join(dir, "sub"));
    await assert.rejects(AtomicWriter.create(join(dir, "sub"), { force: true }), EfxError);
    assert.deepEqual(await names(dir), ["sub"]);
  });
});

Deno.test("atomic: tempDir option places the temp file elsewhere", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(join(dir, "tmp"));
    await Deno.mkdir(join(dir, "dst"));
    const w = await AtomicWriter.create(join(dir, "dst", "f"), { tempDir: join(dir, "tmp") });
    assert.ok(w.tempPath.startsWith(join(dir, "tmp", TEMP_PREFIX)));
    await w.write(enc.encode("x"));
    assert.deepEqual(await names(join(dir, "dst")), []);
    await w.commit();
    assert.deepEqual(await names(join(dir, "tmp")), []);
    assert.deepEqual(await names(join(dir, "dst")), ["f"]);
  });
});

Deno.test("atomic: OS errors are EfxErrors naming the label, not the temp path", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "missing", "a.txt");
    await assert.rejects(AtomicWriter.create(path, { label: "a.txt" }), (err) => {
      assert.ok(err instanceof EfxError);
      assert.match(err.message, /^cannot write a\.txt: .*\(os error 2\)$/);
      assert.ok(!err.message.includes(dir));
      return true;
    });
  });
});

Deno.test("atomic: mapError sees every failure", async () => {
  await withDir(async (dir) => {
    class Mapped extends Error {}
    const mapError = (err: unknown) => new Mapped(String(err));
    await Deno.writeTextFile(join(dir, "a"), "x");
    await assert.rejects(AtomicWriter.create(join(dir, "a"), { mapError }), Mapped);
    const w = await AtomicWriter.create(join(dir, "b"), { mapError });
    await assert.rejects(w.commit({ expectedSha256: "00" }), Mapped);
    assert.deepEqual(await names(dir), ["a"]);
  });
});

Deno.test("atomic: overlapping calls are refused", async () => {
  await withDir(async (dir) => {
    const w = await AtomicWriter.create(join(dir, "a"));
    const p1 = w.write(new Uint8Array(1024));
    await assert.rejects(w.write(new Uint8Array(1)), /still running/);
    await p1;
    await w.abort();
  });
});

Deno.test("removeStaleTemps: removes only regular temp files, not recursively", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(join(dir, `${TEMP_PREFIX}0a1b`), "stale");
    await Deno.writeTextFile(join(dir, `${TEMP_PREFIX}ffff`), "stale");
    await Deno.writeTextFile(join(dir, "keep.txt"), "keep");
    await Deno.writeTextFile(join(dir, ".efx-tmp"), "not the prefix");
    await Deno.mkdir(join(dir, `${TEMP_PREFIX}dir`));
    await Deno.mkdir(join(dir, "sub"));
    await Deno.writeTextFile(join(dir, "sub", `${TEMP_PREFIX}nested`), "stale");
    await Deno.writeTextFile(join(dir, "keep2.txt"), "keep");
    await Deno.symlink("keep2.txt", join(dir, `${TEMP_PREFIX}link`));
    assert.equal(await removeStaleTemps(dir), 2);
    assert.deepEqual(await names(dir), [
      ".efx-tmp",
      `${TEMP_PREFIX}dir`,
      `${TEMP_PREFIX}link`,
      "keep.txt",
      "keep2.txt",
      "sub",
    ]);
    assert.deepEqual(await names(join(dir, "sub")), [`${TEMP_PREFIX}nested`]);
    assert.equal(await removeStaleTemps(join(dir, "nope")), 0);
  });
});

Deno.test("osMessage strips the paths Deno appends", () => {
  const err = new Deno.errors.NotFound("No such file or directory (os error 2): open '/srv/x'");
  assert.equal(osMessage(err), "No such file or directory (os error 2)");
  assert.equal(osMessage(new Error("boom")), "boom");
  assert.equal(osMessage(new Error("bad thing at /srv/x")), "Error");
  assert.equal(osMessage("str"), "str");
});
