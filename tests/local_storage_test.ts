/**
 * Unit tests of the local backend's own mechanisms (src/storage/local*.ts)
 * on real temp folders: link records, rename, remove, mkdir, the free-space
 * reserve and partial claims.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { statfsSync } from "node:fs";
import { join } from "node:path";
import { StorageError } from "../src/storage/errors.ts";
import { LocalStorage, STAGING_DIR } from "../src/storage/local.ts";
import { LINK_HEADER_BYTES } from "../src/storage/local_links.ts";
import type { PartialClaim } from "../src/storage/backend.ts";

const enc = new TextEncoder();
const TTL = 86_400_000;

interface Env {
  base: string;
  root: string;
  outside: string;
  storage: LocalStorage;
}

/** A temp base with `root/` (the storage) and `outside/` (must stay unchanged). */
async function withStorage(fn: (env: Env) => Promise<void>): Promise<void> {
  const base = await Deno.realPath(await Deno.makeTempDir({ prefix: "efx-local-test-" }));
  try {
    const outside = join(base, "outside");
    Deno.mkdirSync(join(outside, "sub"), { recursive: true, mode: 0o755 });
    Deno.chmodSync(outside, 0o755);
    Deno.writeTextFileSync(join(outside, "secret.txt"), "secret");
    Deno.utimeSync(outside, 1e9, 1e9);
    const before = describe(outside);
    const root = join(base, "root");
    const storage = await LocalStorage.open(root, { partialTtlMs: TTL, reserveBytes: 0 });
    await fn({ base, root, outside, storage });
    assert.deepEqual(describe(outside), before, "something outside the root changed");
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

/** Names, kinds, modes, mtimes and contents below `dir` (links not followed). */
function describe(dir: string): string[] {
  const out: string[] = [];
  const st = Deno.lstatSync(dir);
  out.push(`. ${st.mode} ${st.mtime?.getTime()}`);
  const walk = (d: string, prefix: string) => {
    for (const e of [...Deno.readDirSync(d)].sort((a, b) => a.name < b.name ? -1 : 1)) {
      const p = join(d, e.name);
      const s = Deno.lstatSync(p);
      const what = e.isFile ? `=${Deno.readTextFileSync(p)}` : e.isSymlink ? "@" : "/";
      out.push(`${prefix}${e.name}${what} ${s.mode} ${s.mtime?.getTime()}`);
      if (e.isDirectory) walk(p, `${prefix}${e.name}/`);
    }
  };
  walk(dir, "");
  return out;
}

/** Client-visible names below the root, excluding the staging folder. */
function tree(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string, prefix: string) => {
    for (const e of Deno.readDirSync(d)) {
      if (prefix === "" && e.name === STAGING_DIR) continue;
      const p = join(d, e.name);
      if (e.isDirectory) {
        out.push(`${prefix}${e.name}/`);
        walk(p, `${prefix}${e.name}/`);
      } else if (e.isFile) {
        const text = Deno.readTextFileSync(p);
        out.push(`${prefix}${e.name}${text.startsWith("efx-link\n") ? " (record)" : `=${text}`}`);
      } else out.push(`${prefix}${e.name}@`);
    }
  };
  walk(root, "");
  return out.sort();
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp | string) {
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof StorageError, `expected StorageError(${code}), got ${err}`);
    assert.equal(err.code, code, err.message);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return true;
  });
}

function sha256(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

async function put(
  storage: LocalStorage,
  name: string,
  data: Uint8Array | string,
  opts: { force?: boolean; mode?: number } = {},
) {
  const bytes = typeof data === "string" ? enc.encode(data) : data;
  const force = opts.force ?? false;
  const w = await storage.beginWrite(name, { force, size: bytes.length, who: "" });
  await w.write(bytes);
  return await w.commit({
    mode: opts.mode ?? 0o644,
    mtime: Date.now(),
    expectedSha256: sha256(bytes),
    force,
  });
}

async function readAll(storage: LocalStorage, name: string): Promise<Uint8Array> {
  const h = await storage.openRead(name);
  try {
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await h.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    return await new Blob(chunks as BlobPart[]).bytes();
  } finally {
    h.close();
  }
}

const open = (root: string) => LocalStorage.open(root, { partialTtlMs: TTL, reserveBytes: 0 });

// ---- link records ---------------------------------------------------------

Deno.test("link records: a file that merely starts like a record stays a file", async () => {
  const lookalike = (secret: Uint8Array) =>
    new Uint8Array([...enc.encode("efx-link\n"), ...secret, ...enc.encode("/etc/passwd")]);
  await withStorage(async ({ root, storage }) => {
    // before any link exists there is no secret: nothing can be a record
    await put(storage, "early.bin", lookalike(new Uint8Array(16)));
    Deno.chmodSync(join(root, "early.bin"), 0o1600);
    assert.equal((await storage.stat("early.bin")).type, "file");
    // and neither uploads nor listings make the staging folder
    await storage.list(undefined, { recursive: true });
    assert.throws(() => Deno.lstatSync(join(root, STAGING_DIR)), Deno.errors.NotFound);
  });
  await withStorage(async ({ root, storage }) => {
    await storage.symlink("real", "/etc/passwd", { force: false });
    const secret = Deno.readFileSync(join(root, STAGING_DIR, "link-secret"));
    assert.equal(secret.length, 16);
    const record = Deno.readFileSync(join(root, "real"));
    assert.equal(record.length, LINK_HEADER_BYTES + "/etc/passwd".length);
    assert.deepEqual(record, lookalike(secret));

    // the right header with a wrong secret, uploaded or made on disk with the marker
    const wrong = crypto.getRandomValues(new Uint8Array(16));
    await put(storage, "upload.bin", lookalike(wrong));
    Deno.writeFileSync(join(root, "disk.bin"), lookalike(wrong));
    Deno.chmodSync(join(root, "disk.bin"), 0o1600);
    // the right secret with a different magic
    const badMagic = lookalike(secret);
    badMagic[0] ^= 0x20;
    Deno.writeFileSync(join(root, "magic.bin"), badMagic);
    Deno.chmodSync(join(root, "magic.bin"), 0o1600);
    // a header and nothing after it
    Deno.writeFileSync(join(root, "short.bin"), record.subarray(0, LINK_HEADER_BYTES));
    Deno.chmodSync(join(root, "short.bin"), 0o1600);
    for (const name of ["upload.bin", "disk.bin", "magic.bin", "short.bin"]) {
      const info = await storage.stat(name);
      assert.equal(info.type, "file", name);
      assert.equal(info.target, undefined, name);
      assert.deepEqual(await readAll(storage, name), Deno.readFileSync(join(root, name)), name);
    }
    // a client uploading the exact bytes of a record still gets a file: its
    // mode never carries the marker (where the file system keeps it)
    if (storage.linkMarkerKept) {
      await put(storage, "copy.bin", record, { mode: 0o1777 });
      assert.equal((await storage.stat("copy.bin")).type, "file");
      assert.equal((Deno.lstatSync(join(root, "copy.bin")).mode ?? 0) & 0o1000, 0);
    }
    const listed = (await storage.list()).map((e) => [e.name, e.type]);
    assert.deepEqual(listed.filter(([, t]) => t === "symlink"), [["real", "symlink"]]);
    // the genuine record is recognized (the format is what the module says)
    Deno.writeFileSync(join(root, "crafted"), lookalike(secret));
    Deno.chmodSync(join(root, "crafted"), 0o1600);
    assert.equal((await storage.stat("crafted")).target, "/etc/passwd");
  });
});

Deno.test("link records survive a server restart and keep one secret", async () => {
  await withStorage(async ({ root, storage }) => {
    const mtime = Date.UTC(2022, 2, 3, 4, 5, 6);
    await storage.symlink("dir/to-passwd", "/etc/passwd", { force: false, mtime });
    await storage.symlink("rel", "../outside/secret.txt", { force: false });
    const secret = Deno.readFileSync(join(root, STAGING_DIR, "link-secret"));
    const second = await open(root);
    assert.deepEqual(await second.stat("dir/to-passwd"), {
      name: "dir/to-passwd",
      size: 11,
      mode: 0o777,
      mtime,
      type: "symlink",
      target: "/etc/passwd",
    });
    await second.symlink("later", "dir", { force: false });
    assert.deepEqual(Deno.readFileSync(join(root, STAGING_DIR, "link-secret")), secret);
    const third = await open(root);
    assert.deepEqual(
      (await third.list(undefined, { recursive: true })).map((e) => [e.name, e.type, e.target]),
      [
        ["dir", "dir", undefined],
        ["dir/to-passwd", "symlink", "/etc/passwd"],
        ["later", "symlink", "dir"],
        ["rel", "symlink", "../outside/secret.txt"],
      ],
    );
    // still never followed
    await rejectsWith(third.openRead("rel"), "not-a-file", /links are never followed/);
    await rejectsWith(third.openRead("later/to-passwd"), "not-a-file", /later is a link/);
    // a renamed record stays a record
    await third.rename("rel", "dir/rel2", { force: false });
    assert.equal((await third.stat("dir/rel2")).target, "../outside/secret.txt");
    assert.equal((await (await open(root)).stat("dir/rel2")).type, "symlink");
  });
});

// ---- rename -----------------------------------------------------------------

Deno.test("rename: no clobbering without force, never into itself, folders move whole", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "a.txt", "a");
    await put(storage, "b.txt", "b");
    await put(storage, "d/in.txt", "in");
    await put(storage, "e/x.txt", "x");
    await storage.symlink("l", "a.txt", { force: false });
    const exists = (n: string) => `${n} already exists on the server (use --force to overwrite)`;
    await rejectsWith(
      storage.rename("a.txt", "b.txt", { force: false }),
      "exists",
      exists("b.txt"),
    );
    await rejectsWith(storage.rename("a.txt", "l", { force: false }), "exists", exists("l"));
    await rejectsWith(storage.rename("l", "a.txt", { force: false }), "exists", exists("a.txt"));
    await rejectsWith(storage.rename("d", "e", { force: false }), "exists", exists("e"));
    await rejectsWith(storage.rename("d", "a.txt", { force: false }), "exists", exists("a.txt"));
    for (const to of ["d/sub", "d/in.txt/x", "d/a/b/c"]) {
      await rejectsWith(
        storage.rename("d", to, { force: true }),
        "bad-name",
        "cannot move d into itself",
      );
    }
    assert.deepEqual(tree(root), [
      "a.txt=a",
      "b.txt=b",
      "d/",
      "d/in.txt=in",
      "e/",
      "e/x.txt=x",
      "l (record)",
    ]);
    // a folder is never replaced, even with force, and never replaces a file
    await rejectsWith(
      storage.rename("a.txt", "e", { force: true }),
      "not-a-file",
      "e is a folder on the server",
    );
    await rejectsWith(
      storage.rename("d", "e", { force: true }),
      "not-a-file",
      "e is a folder on the server",
    );
    await rejectsWith(
      storage.rename("d", "b.txt", { force: true }),
      "not-a-file",
      "b.txt is not a folder on the server: a folder cannot replace it",
    );
    // with force a file replaces a file
    await storage.rename("a.txt", "b.txt", { force: true });
    assert.equal(new TextDecoder().decode(await readAll(storage, "b.txt")), "a");
    await rejectsWith(storage.stat("a.txt"), "not-found");
    // a folder moves with its content, into new parents
    await storage.rename("d", "new/place/d2", { force: false });
    assert.deepEqual(await storage.tree("new").then((l) => l.map((e) => e.name)), [
      "new/place",
      "new/place/d2",
      "new/place/d2/in.txt",
    ]);
    await rejectsWith(storage.stat("d"), "not-found");
    await rejectsWith(
      storage.rename("b.txt", "e/x.txt/y", { force: false }),
      "not-a-file",
      "cannot create e/x.txt/y: e/x.txt is not a folder on the server",
    );
    await rejectsWith(
      storage.rename("b.txt", "l/y", { force: false }),
      "not-a-file",
      /l is a link/,
    );
  });
});

Deno.test("rename: two renames racing for one name without force: exactly one wins", async () => {
  await withStorage(async ({ root, storage }) => {
    for (let round = 0; round < 20; round++) {
      await put(storage, "a", "from a", { force: true });
      await put(storage, "b", "from b", { force: true });
      const results = await Promise.allSettled([
        storage.rename("a", "t", { force: false }),
        storage.rename("b", "t", { force: false }),
      ]);
      const won = results.filter((r) => r.status === "fulfilled").length;
      assert.equal(won, 1, JSON.stringify(results));
      const lost = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
      assert.equal((lost.reason as StorageError).code, "exists");
      const t = Deno.readTextFileSync(join(root, "t"));
      assert.ok(t === "from a" || t === "from b");
      // the loser is still there, untouched
      assert.equal(tree(root).length, 2, tree(root).join(", "));
      await storage.remove("t");
      const left = ["a", "b"].filter((n) => tree(root).some((l) => l.startsWith(`${n}=`)));
      assert.equal(left.length, 1);
      await storage.remove(left[0]);
    }
  });
});

// ---- remove -------------------------------------------------------------------

Deno.test("remove: files, rmdir only when empty, rm -r of a whole tree without following links", async () => {
  await withStorage(async ({ root, outside, storage }) => {
    await put(storage, "top/a/b/c.txt", "c");
    await put(storage, "top/a/d.txt", "d");
    await storage.symlink("top/a/rec", "/etc", { force: false });
    Deno.symlinkSync(outside, join(root, "top", "a", "out"));
    Deno.symlinkSync(join(outside, "secret.txt"), join(root, "top", "secret"));
    await storage.mkdir("top/empty");
    await rejectsWith(storage.remove("top"), "not-a-file", /^top is a folder \(use rmdir/);
    await rejectsWith(
      storage.remove("top", { dir: true }),
      "not-empty",
      "top is not empty (use rm -r)",
    );
    await rejectsWith(
      storage.remove("top/a/d.txt", { dir: true }),
      "not-a-file",
      "top/a/d.txt is not a folder",
    );
    await rejectsWith(storage.remove("top/a/rec", { dir: true }), "not-a-file");
    await rejectsWith(storage.remove("top/a/out", { dir: true }), "not-a-file");
    await storage.remove("top/empty", { dir: true });
    await rejectsWith(storage.stat("top/empty"), "not-found");
    // recursive on a file is just remove
    await storage.remove("top/a/d.txt", { recursive: true });
    // an upload under way in the tree is not a reason to fail
    const w = await storage.beginWrite("top/a/b/late.txt", { force: false, size: 1, who: "" });
    await w.write(enc.encode("l"));
    await storage.remove("top", { recursive: true });
    await w.abort();
    assert.deepEqual(tree(root), []);
    await rejectsWith(
      storage.remove("top", { recursive: true }),
      "not-found",
      "no such file on the server: top",
    );
    // withStorage checks that outside/ (the links' targets) is unchanged
  });
});

// ---- mkdir -------------------------------------------------------------------

Deno.test("mkdir never changes the root, a link's target or a record", async () => {
  await withStorage(async ({ root, outside, storage }) => {
    await storage.mkdir("x");
    Deno.symlinkSync(outside, join(root, "out"));
    Deno.symlinkSync(".", join(root, "self"));
    Deno.symlinkSync("..", join(root, "parent"));
    await storage.symlink("rec", "x", { force: false });
    const recBefore = await storage.stat("rec");
    Deno.chmodSync(root, 0o755);
    Deno.utimeSync(root, 1e9, 1e9);
    const rootBefore = Deno.lstatSync(root);
    for (const link of ["out", "self", "parent", "rec"]) {
      for (const name of [link, `${link}/x`, `${link}/sub`, `${link}/a/b`]) {
        await rejectsWith(
          storage.mkdir(name, { mode: 0o777, mtime: 0 }),
          "not-a-file",
          /is a link on the server, and links are never followed/,
        );
        await rejectsWith(storage.mkdir(name), "not-a-file", /is a link on the server/);
      }
    }
    // an existing folder gets the mode and mtime; the root (its parent) does not
    await storage.mkdir("x", { mode: 0o000, mtime: 0 });
    const x = Deno.lstatSync(join(root, "x"));
    assert.equal(x.mode! & 0o777, 0o700);
    assert.equal(x.mtime?.getTime(), 0);
    const rootAfter = Deno.lstatSync(root);
    assert.equal(rootAfter.mode, rootBefore.mode);
    assert.equal(rootAfter.mtime?.getTime(), rootBefore.mtime?.getTime());
    assert.deepEqual(await storage.stat("rec"), recBefore);
    assert.deepEqual(tree(root), ["out@", "parent@", "rec (record)", "self@", "x/"]);
  });
});

// ---- free-space reserve ---------------------------------------------------------

function freeBytes(path: string): number {
  const s = statfsSync(path);
  return Number(s.bavail) * Number(s.bsize);
}

Deno.test("reserve: an upload that would leave less than the reserve is refused before anything exists", async () => {
  await withStorage(async ({ root }) => {
    const reserveBytes = freeBytes(root) + 2 ** 30;
    const storage = await LocalStorage.open(root, { partialTtlMs: TTL, reserveBytes });
    assert.deepEqual(storage.space, { enforced: true, reserveBytes });
    for (const size of [0, 1, 1e12]) {
      for (const name of ["a.bin", "new/dir/a.bin"]) {
        const opts = { force: false, size, who: "" };
        const msg =
          `not enough free space on the server for ${name} (${size} bytes; 0 available above the server's reserve)`;
        await rejectsWith(storage.checkWrite(name, opts), "no-space", msg);
        await rejectsWith(storage.beginWrite(name, opts), "no-space", msg);
      }
    }
    // a resumable upload too: nothing staged either
    const claim = await storage.claimPartial("a.bin", "who", () => {});
    await rejectsWith(
      storage.beginWrite("a.bin", {
        force: false,
        size: 5,
        who: "who",
        partial: { claim, offset: 0 },
      }),
      "no-space",
    );
    claim.release();
    assert.deepEqual([...Deno.readDirSync(root)], []);
  });
});

Deno.test("reserve: an announced upload holds no room; the reserve is enforced while bytes arrive", async () => {
  // A private 16 MiB tmpfs: nothing else writes there, so free space is exact.
  const root = await Deno.makeTempDir({ prefix: "efx-reserve-" });
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=16m", "tmpfs", root],
    stderr: "piped",
  }).output();
  assert.equal(mount.code, 0, new TextDecoder().decode(mount.stderr));
  try {
    const storage = await LocalStorage.open(root, { partialTtlMs: TTL, reserveBytes: 8 << 20 });
    const opts = (size: number) => ({ force: false, size, who: "" });
    // Over the room at the start: refused before anything is made.
    await rejectsWith(storage.beginWrite("huge.bin", opts(9 << 20)), "no-space");
    // Two announced uploads of 6 MiB each fit at the start, one after the other:
    // a declared size is not held (an upload announced and never sent locks nobody out).
    const one = await storage.beginWrite("one.bin", opts(6 << 20));
    const two = await storage.beginWrite("two.bin", opts(6 << 20));
    // Bytes arriving past the reserve are refused, and the temp file goes.
    const chunk = new Uint8Array(256 << 10).fill(1);
    let refused: unknown = null;
    try {
      for (let i = 0; i < 48; i++) await one.write(chunk); // 12 MiB > the 8 MiB of room
    } catch (err) {
      refused = err;
    }
    assert.ok(refused instanceof StorageError && refused.code === "no-space", String(refused));
    await two.abort();
    assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name), []);
  } finally {
    await new Deno.Command("umount", { args: [root] }).output();
    await Deno.remove(root, { recursive: true });
  }
});

// ---- partial claims ---------------------------------------------------------------

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** Whether `p` settled within `ms`. */
async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let done = false;
  p.then(() => done = true, () => done = true);
  await tick(ms);
  return done;
}

async function writePartial(
  storage: LocalStorage,
  claim: PartialClaim,
  name: string,
  who: string,
  data: string,
) {
  const up = await storage.beginWrite(name, {
    force: false,
    size: 100,
    who,
    partial: { claim, offset: claim.offset },
  });
  await up.write(enc.encode(data));
  await up.abort(); // the partial is kept
}

Deno.test("partials: a second claim preempts the first and gets the claim once it lets go", async () => {
  await withStorage(async ({ root, storage }) => {
    let preempted1 = 0;
    let preempted2 = 0;
    const first = await storage.claimPartial("big.bin", "alice", () => preempted1++);
    assert.equal(first.offset, 0);
    await writePartial(storage, first, "big.bin", "alice", "0123");
    const second = storage.claimPartial("big.bin", "alice", () => preempted2++);
    await tick();
    assert.equal(preempted1, 1, "the old holder is told to stop");
    assert.equal(await settledWithin(second, 100), false, "the new claim waits for the old one");
    first.release();
    const claim2 = await second;
    assert.equal(claim2.offset, 4, "the new claim sees the partial the first one left");
    assert.equal(preempted2, 0);
    assert.equal(await claim2.checkPrefix(4, sha256("0123")), true);
    assert.equal(await claim2.checkPrefix(4, sha256("0124")), false);
    assert.equal(await claim2.checkPrefix(3, sha256("012")), true);
    first.release(); // idempotent: does not end the second claim
    let preempted3 = 0;
    const third = storage.claimPartial("big.bin", "alice", () => preempted3++);
    await tick();
    assert.equal(preempted2, 1);
    claim2.release();
    const claim3 = await third;
    // resume and finish the upload: the whole file is checked
    const up = await storage.beginWrite("big.bin", {
      force: false,
      size: 10,
      who: "alice",
      partial: { claim: claim3, offset: 4 },
    });
    assert.equal(up.bytesWritten, 4);
    await up.write(enc.encode("456789"));
    await up.commit({ mode: 0o644, mtime: 0, expectedSha256: sha256("0123456789"), force: false });
    claim3.release();
    assert.equal(preempted3, 0);
    await storage.dropPartial("big.bin", "alice");
    assert.equal(Deno.readTextFileSync(join(root, "big.bin")), "0123456789");
    const again = await storage.claimPartial("big.bin", "alice", () => {});
    assert.equal(again.offset, 0, "the partial is gone after the upload completed");
    again.release();
  });
});

Deno.test("partials: a taken-over claim that never lets go leaves the new claim busy", async () => {
  await withStorage(async ({ storage }) => {
    let preempted = 0;
    const stuck = await storage.claimPartial("x", "", () => preempted++);
    const t0 = performance.now();
    await rejectsWith(
      storage.claimPartial("x", "", () => {}),
      "busy",
      "another resumable upload of x is in progress",
    );
    assert.ok(performance.now() - t0 >= 4_000, "it waited for the old holder first");
    assert.equal(preempted, 1);
    stuck.release();
    (await storage.claimPartial("x", "", () => {})).release();
  });
});

Deno.test("partials: identities never see each other's partial, nor does any client name", async () => {
  await withStorage(async ({ root, storage }) => {
    const alice = await storage.claimPartial("doc.bin", "alice", () => {
      throw new Error("alice must not be preempted by another identity");
    });
    // another identity's claim on the same name neither waits nor preempts
    const bob = await storage.claimPartial("doc.bin", "bob", () => {});
    const anon = await storage.claimPartial("doc.bin", "", () => {});
    await writePartial(storage, alice, "doc.bin", "alice", "alice's part");
    await writePartial(storage, bob, "doc.bin", "bob", "bob");
    for (const c of [alice, bob, anon]) c.release();
    const a = await storage.claimPartial("doc.bin", "alice", () => {});
    const b = await storage.claimPartial("doc.bin", "bob", () => {});
    const n = await storage.claimPartial("doc.bin", "", () => {});
    assert.equal(a.offset, "alice's part".length);
    assert.equal(b.offset, 3);
    assert.equal(n.offset, 0);
    assert.equal(await b.checkPrefix(3, sha256("ali")), false);
    assert.equal(await a.checkPrefix(3, sha256("ali")), true);
    assert.equal(await n.checkPrefix(3, sha256("bob")), false);
    // dropping is per identity, and a held partial is not dropped
    await storage.dropPartial("doc.bin", "bob");
    b.release();
    await storage.dropPartial("doc.bin", "bob");
    assert.equal((await storage.claimPartial("doc.bin", "bob", () => {})).offset, 0);
    // the same identity, another name: its own partial
    assert.equal((await storage.claimPartial("other.bin", "alice", () => {})).offset, 0);
    // nothing of it is visible or reachable under a client name
    assert.deepEqual(tree(root), []);
    assert.deepEqual(await storage.list(undefined, { recursive: true }), []);
    await rejectsWith(storage.stat("doc.bin"), "not-found");
    assert.deepEqual(await storage.list(`${STAGING_DIR}/*`), []);
    assert.deepEqual(await storage.list(`${STAGING_DIR}/partials/*/*`), []);
    a.release();
    n.release();
  });
});
