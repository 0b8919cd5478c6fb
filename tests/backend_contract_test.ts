/**
 * One behaviour suite, two backends: every test here runs against the local
 * folder ({@linkcode LocalStorage}) and against the S3 backend on a real
 * store ({@linkcode S3Storage} on Ceph RGW, see tests/helpers/s3.ts), and
 * must see the same results (same FileInfo entries, same error codes).
 *
 * Where the backends may differ by design it is said in the test: a
 * resumable partial keeps every byte on the local folder, whole chunks only
 * on S3.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { FileInfo, StorageBackend, Upload } from "../src/storage/backend.ts";
import { LocalStorage } from "../src/storage/local.ts";
import { S3Storage } from "../src/storage/s3.ts";
import { removePrefix, S3_AVAILABLE, s3TestConfig } from "./helpers/s3.ts";

/** Chunk size of the S3 backend in these tests: several chunks per test file. */
const CHUNK = 64 * 1024;

interface Opened {
  storage: StorageBackend;
  /** The same files through a second backend object (a second node on S3). */
  another(): Promise<StorageBackend>;
  cleanup(): Promise<void>;
}

interface Kind {
  name: string;
  available: boolean;
  open(ttlMs?: number): Promise<Opened>;
}

const KINDS: Kind[] = [
  {
    name: "local",
    available: true,
    async open(ttlMs = 3_600_000) {
      const root = await Deno.makeTempDir({ prefix: "efx-contract-" });
      const opts = { partialTtlMs: ttlMs, reserveBytes: 0 };
      return {
        storage: await LocalStorage.open(root, opts),
        another: () => LocalStorage.open(root, opts),
        cleanup: () => Deno.remove(root, { recursive: true }),
      };
    },
  },
  {
    name: "s3",
    available: S3_AVAILABLE,
    async open(ttlMs = 3_600_000) {
      const config = s3TestConfig()!;
      const opts = { partialTtlMs: ttlMs, chunkBytes: CHUNK };
      return {
        storage: await S3Storage.open(config, opts),
        another: () => S3Storage.open(config, opts),
        cleanup: () => removePrefix(config),
      };
    },
  },
];

const enc = new TextEncoder();
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed * 2654435761;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

async function put(
  s: StorageBackend,
  name: string,
  data: Uint8Array,
  opts: { force?: boolean; mode?: number; mtime?: number } = {},
): Promise<void> {
  const up = await s.beginWrite(name, { force: opts.force ?? false, size: data.length, who: "" });
  await writeIn(up, data, 10_000);
  await up.commit({
    mode: opts.mode ?? 0o644,
    mtime: opts.mtime ?? 1_700_000_000_000,
    expectedSha256: sha(data),
    force: opts.force ?? false,
  });
}

async function writeIn(up: Upload, data: Uint8Array, piece: number): Promise<void> {
  for (let i = 0; i < data.length; i += piece) await up.write(data.subarray(i, i + piece));
}

async function readAll(s: StorageBackend, name: string, from = 0): Promise<Uint8Array> {
  const h = await s.openRead(name);
  try {
    await h.seek(from);
    const parts: Uint8Array[] = [];
    const buf = new Uint8Array(7_777);
    while (true) {
      const n = await h.read(buf);
      if (n === null) break;
      parts.push(buf.slice(0, n));
    }
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  } finally {
    h.close();
  }
}

async function rejectsCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.equal((err as { code?: string }).code, code, String(err));
    return true;
  });
}

/** Entries without folder mtimes (a local folder's mtime moves when its content does). */
function shape(entries: FileInfo[]): unknown[] {
  return entries.map((e) => e.type === "dir" ? { ...e, mtime: undefined, mode: undefined } : e);
}

function contract(title: string, fn: (o: Opened, kind: Kind) => Promise<void>, ttlMs?: number) {
  for (const kind of KINDS) {
    Deno.test({
      name: `contract[${kind.name}]: ${title}`,
      ignore: !kind.available,
      sanitizeResources: false,
      sanitizeOps: false,
      async fn() {
        const o = await kind.open(ttlMs);
        try {
          await fn(o, kind);
        } finally {
          await o.cleanup();
        }
      },
    });
  }
}

contract(
  "upload, stat, read back (small, chunked, empty), mode and mtime kept",
  async ({ storage: s }) => {
    const small = bytes(1000);
    const big = bytes(5 * CHUNK + 123, 2);
    await put(s, "small.bin", small, { mode: 0o640, mtime: 1_600_000_000_000 });
    await put(s, "d/big.bin", big, { mode: 0o600 });
    await put(s, "empty", new Uint8Array(0));
    assert.deepEqual(await s.stat("small.bin"), {
      name: "small.bin",
      size: 1000,
      mode: 0o640,
      mtime: 1_600_000_000_000,
      type: "file",
    });
    assert.deepEqual(await s.stat("d/big.bin"), {
      name: "d/big.bin",
      size: big.length,
      mode: 0o600,
      mtime: 1_700_000_000_000,
      type: "file",
    });
    assert.equal((await s.stat("d")).type, "dir");
    assert.equal((await s.stat("empty")).size, 0);
    assert.deepEqual(await readAll(s, "small.bin"), small);
    assert.equal(sha(await readAll(s, "d/big.bin")), sha(big));
    assert.deepEqual(await readAll(s, "d/big.bin", 3 * CHUNK - 5), big.subarray(3 * CHUNK - 5));
    assert.equal((await readAll(s, "empty")).length, 0);
    await rejectsCode(s.openRead("d"), "not-a-file");
    await rejectsCode(s.openRead("nope"), "not-found");
    await rejectsCode(s.stat("nope"), "not-found");
  },
);

contract(
  "nothing is visible before commit; a hash mismatch publishes nothing",
  async ({ storage: s }) => {
    const data = bytes(3 * CHUNK + 1);
    const up = await s.beginWrite("x/pending.bin", { force: false, size: data.length, who: "" });
    await writeIn(up, data, 50_000);
    await rejectsCode(s.stat("x/pending.bin"), "not-found");
    assert.deepEqual((await s.list("x/*")).map((e) => e.name), []);
    await assert.rejects(
      up.commit({ mode: 0o644, mtime: 0, expectedSha256: "0".repeat(64), force: false }),
      /file hash mismatch/,
    );
    await rejectsCode(s.stat("x/pending.bin"), "not-found");
    assert.deepEqual((await s.list("*", { recursive: true })).map((e) => e.name), ["x"]);
    // An aborted upload leaves nothing either.
    const up2 = await s.beginWrite("x/aborted", { force: false, size: data.length, who: "" });
    await writeIn(up2, data, 50_000);
    await up2.abort();
    await rejectsCode(s.stat("x/aborted"), "not-found");
  },
);

contract(
  "without force an existing name is kept; with force the last upload wins",
  async ({ storage: s }) => {
    await put(s, "a.txt", enc.encode("one"));
    await rejectsCode(put(s, "a.txt", enc.encode("two")), "exists");
    await rejectsCode(s.checkWrite("a.txt", { force: false, size: 3, who: "" }), "exists");
    assert.deepEqual(await readAll(s, "a.txt"), enc.encode("one"));
    const big = bytes(2 * CHUNK + 7, 3);
    await put(s, "a.txt", big, { force: true });
    assert.equal(sha(await readAll(s, "a.txt")), sha(big));
    await put(s, "a.txt", enc.encode("three"), { force: true });
    assert.deepEqual(await readAll(s, "a.txt"), enc.encode("three"));
    await s.mkdir("folder");
    await rejectsCode(put(s, "folder", enc.encode("x"), { force: true }), "not-a-file");
    await put(s, "f", enc.encode("file"));
    await rejectsCode(put(s, "f/under", enc.encode("x")), "not-a-file");
  },
);

contract("two uploads racing on one new name: exactly one wins", async (o) => {
  // Two backend objects: two nodes on S3, two opens of one folder locally.
  const nodes = [o.storage, await o.another()];
  for (let round = 0; round < 3; round++) {
    const name = `race-${round}.bin`;
    const datas = [bytes(2 * CHUNK + 10, 10 + round), bytes(1000, 20 + round)];
    const ups = await Promise.all(
      nodes.map((n, i) => n.beginWrite(name, { force: false, size: datas[i].length, who: "" })),
    );
    await Promise.all(ups.map((u, i) => writeIn(u, datas[i], 30_000)));
    const results = await Promise.allSettled(
      ups.map((u, i) =>
        u.commit({ mode: 0o644, mtime: 0, expectedSha256: sha(datas[i]), force: false })
      ),
    );
    const won = results.filter((r) => r.status === "fulfilled").length;
    assert.equal(won, 1, `round ${round}: ${won} winners`);
    const lost = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    assert.equal(lost.reason.code, "exists");
    const winner = results.findIndex((r) => r.status === "fulfilled");
    assert.equal(sha(await readAll(o.storage, name)), sha(datas[winner]));
  }
});

contract("folders, listings, patterns and trees", async ({ storage: s }) => {
  await s.mkdir("docs/empty", { mode: 0o750, mtime: 1_500_000_000_000 });
  await put(s, "docs/a.txt", enc.encode("aa"));
  await put(s, "docs/sub/b.md", enc.encode("bbb"));
  await put(s, "top.txt", enc.encode("t"));
  await s.symlink("docs/link", "../top.txt", { force: false, mtime: 1_650_000_000_000 });
  const top = await s.list();
  assert.deepEqual(top.map((e) => [e.name, e.type]), [["docs", "dir"], ["top.txt", "file"]]);
  assert.deepEqual(shape(await s.list("docs/*")), [
    { name: "docs/a.txt", size: 2, mode: 0o644, mtime: 1_700_000_000_000, type: "file" },
    { name: "docs/empty", size: 0, mode: undefined, mtime: undefined, type: "dir" },
    {
      name: "docs/link",
      size: 10,
      mode: 0o777,
      mtime: 1_650_000_000_000,
      type: "symlink",
      target: "../top.txt",
    },
    { name: "docs/sub", size: 0, mode: undefined, mtime: undefined, type: "dir" },
  ]);
  const empty = await s.stat("docs/empty");
  assert.equal(empty.mode, 0o750);
  assert.equal(empty.mtime, 1_500_000_000_000);
  assert.deepEqual((await s.list("*.txt")).map((e) => e.name), ["top.txt"]);
  assert.deepEqual((await s.list("*/*.md")).map((e) => e.name), []);
  assert.deepEqual((await s.list("docs/sub/*.md")).map((e) => e.name), ["docs/sub/b.md"]);
  assert.deepEqual((await s.list("*.md", { recursive: true })).map((e) => e.name), [
    "docs/sub/b.md",
  ]);
  assert.deepEqual((await s.list(undefined, { recursive: true })).map((e) => e.name), [
    "docs",
    "docs/a.txt",
    "docs/empty",
    "docs/link",
    "docs/sub",
    "docs/sub/b.md",
    "top.txt",
  ]);
  assert.deepEqual((await s.tree("docs")).map((e) => e.name), [
    "docs/a.txt",
    "docs/empty",
    "docs/link",
    "docs/sub",
    "docs/sub/b.md",
  ]);
  await rejectsCode(s.tree("top.txt"), "not-a-file");
  await rejectsCode(s.tree("nope"), "not-found");
  // mkdir over a file, and of an existing folder (no error).
  await rejectsCode(s.mkdir("top.txt"), "not-a-file");
  await s.mkdir("docs");
});

contract("links are data: recorded, listed, never followed", async ({ storage: s }) => {
  await put(s, "real.txt", enc.encode("real"));
  await s.symlink("l", "/etc/passwd", { force: false });
  const st = await s.stat("l");
  assert.equal(st.type, "symlink");
  assert.equal(st.target, "/etc/passwd");
  assert.equal(st.size, 11);
  await rejectsCode(s.openRead("l"), "not-a-file");
  await rejectsCode(s.symlink("l", "x", { force: false }), "exists");
  await s.symlink("l", "ünïcode target ✓", { force: true });
  assert.equal((await s.stat("l")).target, "ünïcode target ✓");
  await rejectsCode(s.symlink("l2", "bad\ntarget", { force: false }), "bad-name");
  await rejectsCode(put(s, "l/x", enc.encode("x")), "not-a-file");
});

contract("remove: files, links, empty and full folders", async ({ storage: s }) => {
  await put(s, "d/e/f.bin", bytes(2 * CHUNK + 1));
  await put(s, "d/g", enc.encode("g"));
  await s.symlink("d/l", "g", { force: false });
  await s.mkdir("empty");
  await rejectsCode(s.remove("d"), "not-a-file");
  await rejectsCode(s.remove("d", { dir: true }), "not-empty");
  await rejectsCode(s.remove("d/g", { dir: true }), "not-a-file");
  await s.remove("d/l");
  await rejectsCode(s.stat("d/l"), "not-found");
  await s.remove("empty", { dir: true });
  await rejectsCode(s.stat("empty"), "not-found");
  await s.remove("d", { recursive: true });
  await rejectsCode(s.stat("d"), "not-found");
  await rejectsCode(s.stat("d/e/f.bin"), "not-found");
  assert.deepEqual(await s.list(undefined, { recursive: true }), []);
  await rejectsCode(s.remove("d"), "not-found");
});

contract("rename: files, links and folders; no-clobber unless forced", async ({ storage: s }) => {
  const big = bytes(3 * CHUNK + 5);
  await put(s, "a.bin", big, { mode: 0o600, mtime: 1_234_000 });
  await put(s, "b.txt", enc.encode("b"));
  await rejectsCode(s.rename("a.bin", "b.txt", { force: false }), "exists");
  await s.rename("a.bin", "moved/a.bin", { force: false });
  await rejectsCode(s.stat("a.bin"), "not-found");
  assert.deepEqual(await s.stat("moved/a.bin"), {
    name: "moved/a.bin",
    size: big.length,
    mode: 0o600,
    mtime: 1_234_000,
    type: "file",
  });
  assert.equal(sha(await readAll(s, "moved/a.bin")), sha(big));
  await s.rename("b.txt", "moved/a.bin", { force: true });
  assert.deepEqual(await readAll(s, "moved/a.bin"), enc.encode("b"));
  await s.symlink("ln", "t", { force: false });
  await s.rename("ln", "moved/ln", { force: false });
  assert.equal((await s.stat("moved/ln")).target, "t");
  await s.mkdir("moved/empty");
  await put(s, "moved/deep/x", enc.encode("x"));
  await rejectsCode(s.rename("moved", "moved/inner", { force: false }), "bad-name");
  await put(s, "plain", enc.encode("p"));
  await rejectsCode(s.rename("moved", "plain", { force: true }), "not-a-file");
  await s.rename("moved", "renamed", { force: false });
  assert.deepEqual((await s.list(undefined, { recursive: true })).map((e) => e.name), [
    "plain",
    "renamed",
    "renamed/a.bin",
    "renamed/deep",
    "renamed/deep/x",
    "renamed/empty",
    "renamed/ln",
  ]);
  assert.deepEqual(await readAll(s, "renamed/deep/x"), enc.encode("x"));
  await rejectsCode(s.rename("nope", "x", { force: false }), "not-found");
});

contract("names are checked exactly like the local backend", async ({ storage: s }) => {
  for (const bad of ["../x", "a/../b", ".efx-staging/x", "a/.efx-tmp-1", "/abs", "a//b", "c:x"]) {
    await rejectsCode(s.stat(bad), "bad-name");
    await rejectsCode(s.beginWrite(bad, { force: false, size: 1, who: "" }), "bad-name");
    await rejectsCode(s.mkdir(bad), "bad-name");
    await rejectsCode(s.claimPartial(bad, "", () => {}), "bad-name");
  }
  // Unusual but valid names round-trip.
  for (const name of ["sp ace.txt", "plus+and%25.txt", "q?#&=.txt", "ünï/cødé.txt"]) {
    await put(s, name, enc.encode(name));
    assert.deepEqual(await readAll(s, name), enc.encode(name));
    assert.equal((await s.stat(name)).name, name);
  }
  assert.deepEqual((await s.list("*", { recursive: true })).map((e) => e.name), [
    "plus+and%25.txt",
    "q?#&=.txt",
    "sp ace.txt",
    "ünï",
    "ünï/cødé.txt",
  ]);
});

contract(
  "resumable upload: the partial survives, is private, resumes on another node",
  async (o) => {
    const s = o.storage;
    const data = bytes(6 * CHUNK + 333, 7);
    const who = "SHA256:client-a";
    const c1 = await s.claimPartial("r.bin", who, () => {});
    assert.equal(c1.offset, 0);
    const up = await s.beginWrite("r.bin", {
      force: false,
      size: data.length,
      who,
      partial: { claim: c1, offset: 0 },
    });
    await writeIn(up, data.subarray(0, 4 * CHUNK + 100), 20_000);
    await up.abort();
    c1.release();
    await rejectsCode(s.stat("r.bin"), "not-found");
    assert.deepEqual(await s.list(undefined, { recursive: true }), []);
    // Another identity sees no partial.
    const other = await s.claimPartial("r.bin", "SHA256:client-b", () => {});
    assert.equal(other.offset, 0);
    other.release();
    // Resume through another node (another open on the local backend).
    const n2 = await o.another();
    const c2 = await n2.claimPartial("r.bin", who, () => {});
    // Local keeps every byte; S3 keeps whole chunks only.
    assert.ok(c2.offset > 0 && c2.offset <= 4 * CHUNK + 100, `offset ${c2.offset}`);
    assert.equal(await c2.checkPrefix(c2.offset, sha(data.subarray(1, c2.offset + 1))), false);
    assert.equal(await c2.checkPrefix(c2.offset, sha(data.subarray(0, c2.offset))), true);
    const up2 = await n2.beginWrite("r.bin", {
      force: false,
      size: data.length,
      who,
      partial: { claim: c2, offset: c2.offset },
    });
    assert.equal(up2.bytesWritten, c2.offset);
    await writeIn(up2, data.subarray(c2.offset), 20_000);
    const res = await up2.commit({
      mode: 0o644,
      mtime: 0,
      expectedSha256: sha(data),
      force: false,
    });
    c2.release();
    await n2.dropPartial("r.bin", who);
    assert.equal(res.sha256, sha(data));
    assert.equal(res.bytes, data.length);
    assert.equal(sha(await readAll(s, "r.bin")), sha(data));
    const c3 = await s.claimPartial("r.bin", who, () => {});
    assert.equal(c3.offset, 0);
    c3.release();
  },
);

contract(
  "a second claim takes over the first (its holder is told to stop)",
  async ({ storage: s }) => {
    let preempted = 0;
    const c1 = await s.claimPartial("t.bin", "me", () => {
      preempted++;
      setTimeout(() => c1.release(), 10);
    });
    const c2 = await s.claimPartial("t.bin", "me", () => {});
    assert.equal(preempted, 1);
    c2.release();
  },
);

contract("abandoned partials are removed after the TTL", async ({ storage: s }) => {
  const data = bytes(3 * CHUNK, 9);
  const c = await s.claimPartial("old.bin", "me", () => {});
  const up = await s.beginWrite("old.bin", {
    force: false,
    size: data.length + 10,
    who: "me",
    partial: { claim: c, offset: 0 },
  });
  await writeIn(up, data, 20_000);
  await up.abort();
  c.release();
  assert.equal(await s.sweepPartials(), 0, "kept while younger than the TTL");
  await new Promise((r) => setTimeout(r, 2_600));
  assert.ok(await s.sweepPartials() >= 1);
  const again = await s.claimPartial("old.bin", "me", () => {});
  assert.equal(again.offset, 0);
  again.release();
}, 2_000);

contract(
  "a reader of a file replaced meanwhile gets the old bytes or an error, never a mix",
  async (o) => {
    const s = o.storage;
    const old = bytes(6 * CHUNK + 11, 31);
    const fresh = bytes(6 * CHUNK + 11, 32);
    await put(s, "v.bin", old);
    const h = await s.openRead("v.bin");
    const got: Uint8Array[] = [];
    let error: unknown = null;
    try {
      const buf = new Uint8Array(CHUNK);
      const n = await h.read(buf);
      got.push(buf.slice(0, n!));
      // Replaced through another node while this read is under way.
      await put(await o.another(), "v.bin", fresh, { force: true });
      while (true) {
        const m = await h.read(buf);
        if (m === null) break;
        got.push(buf.slice(0, m));
      }
    } catch (err) {
      error = err;
    } finally {
      h.close();
    }
    if (error) {
      assert.match(String(error), /replaced or removed on the server while being read/);
    } else {
      const all = new Uint8Array(got.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of got) {
        all.set(p, at);
        at += p.length;
      }
      assert.equal(sha(all), sha(old), "the old file, whole");
    }
    assert.equal(sha(await readAll(s, "v.bin")), sha(fresh));
  },
);
