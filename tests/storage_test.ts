import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { TEMP_PREFIX } from "../src/atomic_file.ts";
import { IntegrityError, RemoteError } from "../src/errors.ts";
import { type FileInfo, Storage, StorageError } from "../src/storage.ts";

const enc = new TextEncoder();

interface Env {
  base: string;
  root: string;
  outside: string;
  storage: Storage;
}

/**
 * A temp base folder holding `root/` (the storage) and `outside/` (with
 * `secret.txt` and an empty `sub/`). After the test, `outside/` must be
 * exactly as it was: nothing may ever be written outside the root.
 */
async function withStorage(fn: (env: Env) => Promise<void> | void): Promise<void> {
  const base = await Deno.realPath(await Deno.makeTempDir({ prefix: "efx-storage-test-" }));
  try {
    const outside = join(base, "outside");
    await Deno.mkdir(join(outside, "sub"), { recursive: true });
    await Deno.writeTextFile(join(outside, "secret.txt"), "secret");
    const before = await snapshot(outside);
    const root = join(base, "root");
    const storage = await Storage.open(root);
    await fn({ base, root, outside, storage });
    assert.deepEqual(await snapshot(outside), before, "something was written outside the root");
    const top: string[] = [];
    for await (const e of Deno.readDir(base)) top.push(e.name);
    assert.deepEqual(top.sort(), ["outside", "root"]);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

/** Recursive listing of names, types and contents (no symlink following). */
async function snapshot(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix + e.name;
    const path = join(dir, e.name);
    if (e.isDirectory) {
      out.push(`${rel}/`, ...(await snapshot(path, rel + "/")));
    } else if (e.isFile) {
      out.push(`${rel}=${await Deno.readTextFile(path)}`);
    } else out.push(`${rel}@`);
  }
  return out.sort();
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp | string) {
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof StorageError, `expected StorageError(${code}), got ${err}`);
    assert.ok(err instanceof RemoteError);
    assert.equal(err.code, code, err.message);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return true;
  });
}

async function put(storage: Storage, name: string, text: string, force = false) {
  const w = await storage.beginWrite(name, { force });
  await w.write(enc.encode(text));
  return await w.commit();
}

async function readAll(storage: Storage, name: string): Promise<string> {
  const { file } = await storage.openRead(name);
  try {
    const chunks: Uint8Array[] = [];
    for await (const c of file.readable) chunks.push(c);
    return new TextDecoder().decode(await new Blob(chunks as BlobPart[]).bytes());
  } catch (err) {
    file.close();
    throw err;
  }
}

const GOOD_NAMES = [
  "a.txt",
  "photos/a b.png",
  "données/été 🎉.txt",
  "日本語/ファイル.txt",
  ".hidden",
  "a..b",
  "...",
  "a/b/c/d.txt",
  "x".repeat(255),
  "é".repeat(127), // 254 bytes
  "C", // a plain letter is fine
  "c_:x", // colon not in drive position
  "name with trailing space ",
];

const BAD_NAMES: [string, string][] = [
  ["", "empty"],
  ["/x", "absolute"],
  ["/etc/passwd", "absolute"],
  ["//x", "absolute"],
  ["..", "dotdot"],
  [".", "dot"],
  ["../x", "dotdot"],
  ["../outside/secret.txt", "dotdot"],
  ["a/../../x", "dotdot inside"],
  ["a/..", "trailing dotdot"],
  ["a/./b", "dot component"],
  ["./a", "leading dot"],
  ["a//b", "empty component"],
  ["a/", "trailing slash"],
  ["a\0b", "NUL"],
  ["a.txt\0.png", "NUL"],
  ["..\\x", "backslash dotdot"],
  ["a\\b", "backslash"],
  ["C:/x", "drive letter"],
  ["c:x", "drive relative"],
  ["Z:", "drive letter"],
  ["x".repeat(256), "256-byte component"],
  ["é".repeat(128), "256-byte component (multi-byte)"],
  ["ok/" + "y".repeat(256), "256-byte nested component"],
  [Array(20).fill("z".repeat(250)).join("/"), "over 4096 bytes"],
  ["a\nb", "newline"],
  ["a\rb", "CR"],
  ["a\tb", "tab"],
  ["\x1b[31mred", "escape"],
  ["del\x7f", "DEL"],
  [TEMP_PREFIX + "abc", "reserved temp prefix"],
  ["dir/" + TEMP_PREFIX + "abc", "reserved temp prefix nested"],
  ["\ud800", "lone surrogate"],
];

Deno.test("storage: open creates the root and resolves its real path", async () => {
  await withStorage(async ({ base, root, storage }) => {
    assert.equal(storage.root, root);
    assert.equal(storage.removedTemps, 0);
    const nested = await Storage.open(join(root, "deep", "er"));
    assert.equal(nested.root, join(root, "deep", "er"));
    await Deno.symlink(root, join(root, "..", "root-link"));
    try {
      const viaLink = await Storage.open(join(base, "root-link"));
      assert.equal(viaLink.root, root);
    } finally {
      await Deno.remove(join(base, "root-link"));
    }
    await Deno.writeTextFile(join(root, "file"), "x");
    await assert.rejects(Storage.open(join(root, "file")), /cannot open storage folder/);
  });
});

Deno.test("storage: resolveName accepts ordinary, unicode and spaced names", async () => {
  await withStorage(({ root, storage }) => {
    for (const name of GOOD_NAMES) {
      assert.equal(storage.resolveName(name), join(root, ...name.split("/")), name);
    }
    // exactly 4096 bytes in total is accepted
    const long = Array(16).fill("q".repeat(254)).join("/") + "/" + "r".repeat(16);
    assert.equal(enc.encode(long).length, 4096);
    storage.resolveName(long);
  });
});

Deno.test("storage: resolveName rejects every escape attempt with bad-name", async () => {
  await withStorage(({ storage }) => {
    for (const [name, why] of BAD_NAMES) {
      assert.throws(() => storage.resolveName(name), (err) => {
        assert.ok(err instanceof StorageError, why);
        assert.equal(err.code, "bad-name", why);
        assert.match(err.message, /^invalid file name ".*": /, why);
        // control characters are escaped in the message
        assert.ok(![...err.message].some((c) => c < " " || c === "\x7f"), why);
        return true;
      }, why);
    }
  });
});

Deno.test("storage: every operation refuses bad names and writes nothing", async () => {
  await withStorage(async ({ root, storage }) => {
    await Deno.mkdir(join(root, "a"));
    for (const [name] of BAD_NAMES) {
      await rejectsWith(storage.confine(name), "bad-name");
      await rejectsWith(storage.stat(name), "bad-name");
      await rejectsWith(storage.openRead(name), "bad-name");
      await rejectsWith(storage.beginWrite(name, {}), "bad-name");
      await rejectsWith(storage.beginWrite(name, { force: true }), "bad-name");
      await rejectsWith(storage.remove(name), "bad-name");
    }
    assert.deepEqual(await snapshot(root), ["a/"]);
  });
});

Deno.test("storage: symlink to /etc is refused for every operation", async () => {
  await withStorage(async ({ root, storage }) => {
    await Deno.symlink("/etc", join(root, "etc"));
    const outsideMsg = /^etc(\/[^ ]+)? leads outside the storage root$/;
    await rejectsWith(storage.openRead("etc/passwd"), "bad-name", outsideMsg);
    await rejectsWith(storage.stat("etc/passwd"), "bad-name", outsideMsg);
    await rejectsWith(storage.stat("etc"), "bad-name", outsideMsg);
    await rejectsWith(storage.confine("etc/efx-never-created"), "bad-name", outsideMsg);
    await rejectsWith(storage.openRead("etc/hostname"), "bad-name");
    // listing does not follow it and says nothing about its target
    const list = await storage.list();
    assert.deepEqual(list.map((e) => [e.name, e.type, e.size]), [["etc", "symlink", 0]]);
    assert.deepEqual(await storage.list("etc/*"), []);
    assert.deepEqual((await storage.list(undefined, { recursive: true })).map((e) => e.name), [
      "etc",
    ]);
  });
});

Deno.test("storage: symlink to a folder outside the root is refused for reads and writes", async () => {
  await withStorage(async ({ root, storage }) => {
    await Deno.symlink(join(root, "..", "outside"), join(root, "out"));
    await Deno.symlink("../outside", join(root, "rel-out"));
    for (const link of ["out", "rel-out"]) {
      const msg = new RegExp(`^${link}/.* leads outside the storage root$`);
      await rejectsWith(storage.openRead(`${link}/secret.txt`), "bad-name", msg);
      await rejectsWith(storage.stat(`${link}/secret.txt`), "bad-name", msg);
      await rejectsWith(storage.beginWrite(`${link}/new.txt`, {}), "bad-name", msg);
      await rejectsWith(storage.beginWrite(`${link}/secret.txt`, { force: true }), "bad-name");
      await rejectsWith(storage.beginWrite(`${link}/sub/new.txt`, { force: true }), "bad-name");
      await rejectsWith(storage.beginWrite(`${link}/deeper/x/y.txt`, { force: true }), "bad-name");
      await rejectsWith(storage.remove(`${link}/secret.txt`), "bad-name");
      await rejectsWith(storage.confine(`${link}/nope/nope`), "bad-name");
    }
    // withStorage checks that outside/ is unchanged
  });
});

Deno.test("storage: symlink to a file outside: reads refused, writes replace the link", async () => {
  await withStorage(async ({ root, outside, storage }) => {
    await Deno.symlink(join(outside, "secret.txt"), join(root, "secret-link"));
    await rejectsWith(storage.openRead("secret-link"), "bad-name");
    await rejectsWith(storage.stat("secret-link"), "bad-name");
    await rejectsWith(storage.beginWrite("secret-link", {}), "exists");
    await put(storage, "secret-link", "replaced", true);
    assert.equal((await Deno.lstat(join(root, "secret-link"))).isFile, true);
    assert.equal(await readAll(storage, "secret-link"), "replaced");
    // removing a link removes only the link
    await Deno.symlink(join(outside, "secret.txt"), join(root, "link2"));
    await storage.remove("link2");
    assert.deepEqual(await snapshot(root), ["secret-link=replaced"]);
  });
});

Deno.test("storage: broken symlinks are never followed", async () => {
  await withStorage(async ({ root, outside, storage }) => {
    await Deno.symlink(join(outside, "not-yet"), join(root, "dang"));
    await rejectsWith(storage.beginWrite("dang/x.txt", {}), "not-found", /broken symbolic link/);
    await rejectsWith(storage.beginWrite("dang/a/b.txt", { force: true }), "not-found");
    await rejectsWith(storage.openRead("dang"), "not-found");
    await rejectsWith(storage.stat("dang/x"), "not-found");
    // the link itself may be replaced by an upload with --force, never written through
    await rejectsWith(storage.beginWrite("dang", {}), "exists");
    await put(storage, "dang", "file now", true);
    assert.equal(await Deno.readTextFile(join(root, "dang")), "file now");
  });
});

Deno.test("storage: a symlink loop is an error without server paths", async () => {
  await withStorage(async ({ base, root, storage }) => {
    await Deno.symlink("loop", join(root, "loop"));
    for (const name of ["loop", "loop/x"]) {
      await assert.rejects(storage.openRead(name), (err) => {
        assert.ok(err instanceof StorageError);
        assert.ok(!err.message.includes(base), err.message);
        return true;
      });
      await assert.rejects(storage.stat(name), (err) => {
        assert.ok(err instanceof StorageError);
        assert.ok(!err.message.includes(base), err.message);
        return true;
      });
    }
  });
});

Deno.test("storage: symlinks inside the root are fine", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "docs/real.txt", "real");
    await Deno.symlink("docs/real.txt", join(root, "alias.txt"));
    await Deno.symlink(join(root, "docs"), join(root, "docslink"));
    assert.equal(await readAll(storage, "alias.txt"), "real");
    assert.equal(await readAll(storage, "docslink/real.txt"), "real");
    assert.equal((await storage.stat("alias.txt")).type, "file");
    assert.equal((await storage.stat("docslink")).type, "dir");
    assert.equal(await storage.confine("docslink/new.txt"), join(root, "docs", "new.txt"));
    await put(storage, "docslink/new.txt", "via link");
    assert.equal(await Deno.readTextFile(join(root, "docs", "new.txt")), "via link");
    await put(storage, "docslink/more/deep.txt", "deep");
    assert.equal(await Deno.readTextFile(join(root, "docs", "more", "deep.txt")), "deep");
    const list = await storage.list();
    assert.deepEqual(list.map((e) => [e.name, e.type, e.size]), [
      ["alias.txt", "symlink", 4],
      ["docs", "dir", 0],
      ["docslink", "symlink", 0],
    ]);
  });
});

Deno.test("storage: error messages never contain server paths", async () => {
  await withStorage(async ({ base, root, storage }) => {
    await Deno.mkdir(join(root, "dir"));
    await Deno.writeTextFile(join(root, "file.txt"), "x");
    await Deno.symlink("/etc", join(root, "etc"));
    const attempts: (() => Promise<unknown>)[] = [
      () => storage.stat("nope.txt"),
      () => storage.openRead("nope/nope.txt"),
      () => storage.openRead("dir"),
      () => storage.openRead("file.txt/x"),
      () => storage.beginWrite("file.txt/x", {}),
      () => storage.beginWrite("dir", { force: true }),
      () => storage.beginWrite("file.txt", {}),
      () => storage.remove("dir"),
      () => storage.remove("nope"),
      () => storage.openRead("etc/passwd"),
    ];
    for (const attempt of attempts) {
      await assert.rejects(attempt(), (err) => {
        assert.ok(err instanceof StorageError, String(err));
        assert.ok(!err.message.includes(base), err.message);
        assert.ok(!err.message.includes("/tmp"), err.message);
        return true;
      });
    }
  });
});

Deno.test("storage: stat", async () => {
  await withStorage(async ({ storage }) => {
    const mtime = new Date(Date.UTC(2020, 0, 2, 3, 4, 5, 6));
    const w = await storage.beginWrite("sub/a.txt", {});
    await w.write(enc.encode("hello"));
    await w.commit({ mode: 0o4640, mtime });
    assert.deepEqual(
      await storage.stat("sub/a.txt"),
      {
        name: "sub/a.txt",
        size: 5,
        mode: 0o640,
        mtime: mtime.getTime(),
        type: "file",
      } satisfies FileInfo,
    );
    const dir = await storage.stat("sub");
    assert.equal(dir.type, "dir");
    assert.equal(dir.size, 0);
    await rejectsWith(
      storage.stat("nope.txt"),
      "not-found",
      "no such file on the server: nope.txt",
    );
    await rejectsWith(storage.stat("sub/a.txt/x"), "not-found");
  });
});

Deno.test({
  name: "storage: special files (a FIFO) are not regular files, and are never opened",
  fn: async () => {
    await withStorage(async ({ root, storage }) => {
      await Deno.mkdir(join(root, "sub"));
      // A FIFO: opening it for reading would block forever, so this also
      // shows that storage checks the type before it opens anything.
      const made = await new Deno.Command("mkfifo", { args: [join(root, "fifo")] }).output();
      assert.ok(made.success, "mkfifo failed");
      await rejectsWith(storage.stat("fifo"), "not-a-file");
      await rejectsWith(storage.openRead("fifo"), "not-a-file");
      assert.deepEqual((await storage.list()).map((e) => e.name), ["sub"]);
    });
  },
});

Deno.test("storage: openRead", async () => {
  await withStorage(async ({ storage }) => {
    await put(storage, "a.txt", "content");
    const { file, info } = await storage.openRead("a.txt");
    file.close();
    assert.equal(info.name, "a.txt");
    assert.equal(info.size, 7);
    assert.equal(info.type, "file");
    assert.equal(await readAll(storage, "a.txt"), "content");
    await Deno.mkdir(join(storage.root, "d"));
    await rejectsWith(storage.openRead("d"), "not-a-file", "d is a folder, not a file");
    await rejectsWith(storage.openRead("b.txt"), "not-found", "no such file on the server: b.txt");
  });
});

Deno.test("storage: beginWrite creates folders and is invisible until commit", async () => {
  await withStorage(async ({ root, storage }) => {
    const w = await storage.beginWrite("x/y/z.bin", { size: 3, maxSize: 10 });
    assert.equal(w.finalPath, join(root, "x", "y", "z.bin"));
    assert.ok(w.tempPath.startsWith(join(root, "x", "y", TEMP_PREFIX)));
    await w.write(new Uint8Array([1, 2, 3]));
    await rejectsWith(storage.stat("x/y/z.bin"), "not-found");
    assert.deepEqual(await storage.list("x/y/*"), []); // temp hidden
    assert.deepEqual(await snapshot(root), [
      "x/",
      "x/y/",
      `x/y/${w.tempPath.split("/").pop()}=\x01\x02\x03`,
    ]);
    const sha = createHash("sha256").update(new Uint8Array([1, 2, 3])).digest("hex");
    assert.deepEqual(await w.commit({ expectedSha256: sha }), { sha256: sha, bytes: 3 });
    assert.equal((await storage.stat("x/y/z.bin")).size, 3);
    assert.deepEqual(await snapshot(root), ["x/", "x/y/", "x/y/z.bin=\x01\x02\x03"]);
  });
});

Deno.test("storage: overwrite refused without force, allowed with force", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "a.txt", "one");
    await rejectsWith(
      storage.beginWrite("a.txt", {}),
      "exists",
      "a.txt already exists on the server (use --force to overwrite)",
    );
    await put(storage, "a.txt", "two", true);
    assert.equal(await readAll(storage, "a.txt"), "two");
    // created by someone else during the upload: refused at commit, nothing clobbered
    const w = await storage.beginWrite("b.txt", {});
    await w.write(enc.encode("mine"));
    await Deno.writeTextFile(join(root, "b.txt"), "theirs");
    await rejectsWith(
      w.commit(),
      "exists",
      "b.txt already exists on the server (use --force to overwrite)",
    );
    assert.deepEqual(await snapshot(root), ["a.txt=two", "b.txt=theirs"]);
  });
});

Deno.test("storage: beginWrite refusals", async () => {
  await withStorage(async ({ root, storage }) => {
    await Deno.mkdir(join(root, "dir"));
    await put(storage, "file.txt", "x");
    await rejectsWith(
      storage.beginWrite("dir", { force: true }),
      "not-a-file",
      "dir is a folder on the server",
    );
    await Deno.symlink("dir", join(root, "dirlink"));
    await rejectsWith(storage.beginWrite("dirlink", { force: true }), "not-a-file");
    await rejectsWith(
      storage.beginWrite("file.txt/b.txt", {}),
      "not-a-file",
      "cannot create file.txt/b.txt: file.txt is not a folder on the server",
    );
    await rejectsWith(
      storage.beginWrite("big.bin", { size: 11, maxSize: 10 }),
      "too-large",
      "big.bin is too large for the server: 11 bytes, the limit is 10 bytes",
    );
    await rejectsWith(storage.beginWrite("new/big.bin", { size: 11, maxSize: 10 }), "too-large");
    await (await storage.beginWrite("ok.bin", { size: 10, maxSize: 10 })).abort();
    assert.deepEqual((await snapshot(root)).filter((n) => !n.startsWith("ok")), [
      "dir/",
      "dirlink@",
      "file.txt=x",
    ]);
  });
});

Deno.test("storage: hash mismatch on upload leaves no file", async () => {
  await withStorage(async ({ root, storage }) => {
    const w = await storage.beginWrite("sub/a.txt", {});
    await w.write(enc.encode("tampered"));
    await assert.rejects(w.commit({ expectedSha256: "ab".repeat(32) }), IntegrityError);
    assert.deepEqual(await snapshot(root), ["sub/"]);
  });
});

Deno.test("storage: aborted upload leaves no temp file", async () => {
  await withStorage(async ({ root, storage }) => {
    const w = await storage.beginWrite("a.txt", {});
    await w.write(enc.encode("part"));
    await w.abort();
    assert.deepEqual(await snapshot(root), []);
  });
});

Deno.test("storage: remove", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "d/a.txt", "x");
    await storage.remove("d/a.txt");
    assert.deepEqual(await snapshot(root), ["d/"]);
    await rejectsWith(
      storage.remove("d"),
      "not-a-file",
      "d is a folder; only files can be removed",
    );
    await rejectsWith(
      storage.remove("d/a.txt"),
      "not-found",
      "no such file on the server: d/a.txt",
    );
  });
});

Deno.test("storage: open removes stale temp files recursively, not via symlinks", async () => {
  await withStorage(async ({ root, outside, storage: _ }) => {
    await Deno.mkdir(join(root, "a", "b"), { recursive: true });
    await Deno.writeTextFile(join(root, `${TEMP_PREFIX}1`), "stale");
    await Deno.writeTextFile(join(root, "a", `${TEMP_PREFIX}2`), "stale");
    await Deno.writeTextFile(join(root, "a", "b", `${TEMP_PREFIX}3`), "stale");
    await Deno.writeTextFile(join(root, "a", "b", "keep.txt"), "keep");
    await Deno.symlink(outside, join(root, "out"));
    await Deno.writeTextFile(join(outside, `${TEMP_PREFIX}x`), "not ours");
    try {
      const s = await Storage.open(root);
      assert.equal(s.removedTemps, 3);
      assert.deepEqual(await snapshot(root), ["a/", "a/b/", "a/b/keep.txt=keep", "out@"]);
      assert.equal(await Deno.readTextFile(join(outside, `${TEMP_PREFIX}x`)), "not ours");
    } finally {
      await Deno.remove(join(outside, `${TEMP_PREFIX}x`));
    }
  });
});

Deno.test("storage: list with patterns, recursion, sorting and hidden temps", async () => {
  await withStorage(async ({ root, storage }) => {
    for (
      const n of [
        "b.txt",
        "a.txt",
        "c.png",
        "ab.txt",
        "a+b (1).txt",
        "photos/x.png",
        "photos/y.jpg",
        "photos/2024/z.png",
      ]
    ) {
      await put(storage, n, n);
    }
    await Deno.writeTextFile(join(root, "photos", `${TEMP_PREFIX}abc`), "in progress");
    const names = (l: FileInfo[]) => l.map((e) => e.name);

    const top = await storage.list();
    assert.deepEqual(names(top), ["a+b (1).txt", "a.txt", "ab.txt", "b.txt", "c.png", "photos"]);
    assert.deepEqual(top.find((e) => e.name === "photos")!.type, "dir");
    assert.deepEqual(top.find((e) => e.name === "a.txt"), {
      ...top.find((e) => e.name === "a.txt")!,
      size: 5,
      mode: 0o644,
      type: "file",
    });
    assert.deepEqual(names(await storage.list("*.txt")), [
      "a+b (1).txt",
      "a.txt",
      "ab.txt",
      "b.txt",
    ]);
    assert.deepEqual(names(await storage.list("?.txt")), ["a.txt", "b.txt"]);
    assert.deepEqual(names(await storage.list("a+b (?).txt")), ["a+b (1).txt"]);
    assert.deepEqual(names(await storage.list("a.*")), ["a.txt"]);
    assert.deepEqual(names(await storage.list("photos")), ["photos"]);
    assert.deepEqual(names(await storage.list("photos/*")), [
      "photos/2024",
      "photos/x.png",
      "photos/y.jpg",
    ]);
    assert.deepEqual(names(await storage.list("*/*.png")), ["photos/x.png"]);
    assert.deepEqual(names(await storage.list("nomatch*")), []);
    assert.deepEqual(names(await storage.list("../*")), []);
    assert.deepEqual(names(await storage.list("/*")), []);

    const all = await storage.list(undefined, { recursive: true });
    assert.deepEqual(names(all), [
      "a+b (1).txt",
      "a.txt",
      "ab.txt",
      "b.txt",
      "c.png",
      "photos",
      "photos/2024",
      "photos/2024/z.png",
      "photos/x.png",
      "photos/y.jpg",
    ]);
    assert.deepEqual(names(await storage.list("*.png", { recursive: true })), [
      "c.png",
      "photos/2024/z.png",
      "photos/x.png",
    ]);
    assert.deepEqual(names(await storage.list("photos/*.png", { recursive: true })), [
      "photos/x.png",
    ]);
    assert.deepEqual(names(await storage.list("photos/*/*", { recursive: true })), [
      "photos/2024/z.png",
    ]);
  });
});

Deno.test("storage: unicode and space names round-trip", async () => {
  await withStorage(async ({ root, storage }) => {
    for (const name of GOOD_NAMES) await put(storage, name, `<${name}>`);
    for (const name of GOOD_NAMES) {
      assert.equal(await readAll(storage, name), `<${name}>`);
      assert.equal((await storage.stat(name)).size, enc.encode(`<${name}>`).length);
    }
    const files = (await storage.list(undefined, { recursive: true })).filter((e) =>
      e.type === "file"
    );
    assert.deepEqual(files.map((e) => e.name), [...GOOD_NAMES].sort());
    assert.equal(
      await Deno.readTextFile(join(root, "données", "été 🎉.txt")),
      "<données/été 🎉.txt>",
    );
  });
});
