/**
 * The local storage backend (src/storage/local.ts) against real temp
 * folders: names, confinement, links (never created, followed or resolved),
 * atomic uploads, listings.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { TEMP_PREFIX } from "../src/atomic_file.ts";
import { IntegrityError, RemoteError } from "../src/errors.ts";
import type { FileInfo } from "../src/storage/backend.ts";
import { StorageError } from "../src/storage/errors.ts";
import { LocalStorage, STAGING_DIR } from "../src/storage/local.ts";
import { checkName, RESERVED_PREFIX } from "../src/storage/names.ts";

const enc = new TextEncoder();
const TTL = 86_400_000;

interface Env {
  base: string;
  root: string;
  outside: string;
  storage: LocalStorage;
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
    const modesBefore = modes(outside);
    const root = join(base, "root");
    // No free-space reserve here (a full CI disk must not fail every test);
    // the reserve has its own tests.
    const storage = await LocalStorage.open(root, { partialTtlMs: TTL, reserveBytes: 0 });
    await fn({ base, root, outside, storage });
    assert.deepEqual(await snapshot(outside), before, "something was written outside the root");
    assert.deepEqual(modes(outside), modesBefore, "a mode outside the root changed");
    const top: string[] = [];
    for await (const e of Deno.readDir(base)) top.push(e.name);
    assert.deepEqual(top.sort(), ["outside", "root"]);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

/**
 * Recursive listing of names, types and contents (links not followed, shown
 * as `name@`). The staging folder's content is binary and the server's own:
 * it is shown as `.efx-staging/` only.
 */
async function snapshot(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix + e.name;
    const path = join(dir, e.name);
    if (e.isDirectory) {
      out.push(`${rel}/`);
      if (!(prefix === "" && e.name === STAGING_DIR)) {
        out.push(...(await snapshot(path, rel + "/")));
      }
    } else if (e.isFile) {
      out.push(`${rel}=${await Deno.readTextFile(path)}`);
    } else out.push(`${rel}@`);
  }
  return out.sort();
}

/** Mode bits of `dir` and everything below it (links not followed). */
function modes(dir: string): Record<string, number> {
  const out: Record<string, number> = { ".": Deno.lstatSync(dir).mode! };
  const walk = (d: string, prefix: string) => {
    for (const e of Deno.readDirSync(d)) {
      const p = join(d, e.name);
      out[prefix + e.name] = Deno.lstatSync(p).mode!;
      if (e.isDirectory) walk(p, `${prefix}${e.name}/`);
    }
  };
  walk(dir, "");
  return out;
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp | string) {
  assert.ok(p instanceof Promise, "expected a promise (not a synchronous throw)");
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof StorageError, `expected StorageError(${code}), got ${err}`);
    assert.ok(err instanceof RemoteError);
    assert.equal(err.code, code, err.message);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return true;
  });
}

function sha256(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

async function put(storage: LocalStorage, name: string, text: string, force = false) {
  const data = enc.encode(text);
  const w = await storage.beginWrite(name, { force, size: data.length, who: "" });
  await w.write(data);
  return await w.commit({
    mode: 0o644,
    mtime: Date.now(),
    expectedSha256: sha256(data),
    force,
  });
}

async function readAll(storage: LocalStorage, name: string): Promise<string> {
  const h = await storage.openRead(name);
  try {
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await h.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    return new TextDecoder().decode(await new Blob(chunks as BlobPart[]).bytes());
  } finally {
    h.close();
  }
}

const names = (l: FileInfo[]) => l.map((e) => e.name);

const GOOD_NAMES = [
  "a.txt",
  "photos/a b.png",
  "données/été 🎉.txt",
  "日本語/ファイル.txt",
  ".hidden",
  ".efx", // only the full reserved prefix ".efx-" is reserved
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
  [STAGING_DIR, "the staging folder"],
  [`${STAGING_DIR}/link-secret`, "the link secret"],
  [`${STAGING_DIR}/partials`, "the partials"],
  [`a/${RESERVED_PREFIX}x/b`, "reserved prefix in the middle"],
  ["\ud800", "lone surrogate"],
];

/** How an operator-made filesystem link is refused. */
const LINK_REFUSED = /is a link on the server(, and|;) links are never followed/;

Deno.test("storage: open creates the root and resolves its real path", async () => {
  await withStorage(async ({ base, root, storage }) => {
    assert.equal(storage.root, root);
    assert.equal(storage.label, root);
    assert.equal(storage.removedTemps, 0);
    assert.deepEqual(storage.space, { enforced: false, why: "turned off (--min-free 0)" });
    // a fresh root stays empty: no staging folder until one is needed
    assert.deepEqual(await snapshot(root), []);
    const nested = await LocalStorage.open(join(root, "deep", "er"), { partialTtlMs: TTL });
    assert.equal(nested.root, join(root, "deep", "er"));
    assert.equal(nested.space.enforced, true);
    await Deno.symlink(root, join(base, "root-link"));
    try {
      const viaLink = await LocalStorage.open(join(base, "root-link"), { partialTtlMs: TTL });
      assert.equal(viaLink.root, root);
    } finally {
      await Deno.remove(join(base, "root-link"));
    }
    await Deno.writeTextFile(join(root, "file"), "x");
    await assert.rejects(
      LocalStorage.open(join(root, "file"), { partialTtlMs: TTL }),
      /cannot open storage folder .*: not a folder/,
    );
    // a staging "folder" that is a file or a link is refused, never used
    await Deno.mkdir(join(root, "s1"));
    await Deno.writeTextFile(join(root, "s1", STAGING_DIR), "x");
    await assert.rejects(
      LocalStorage.open(join(root, "s1"), { partialTtlMs: TTL }),
      /cannot open storage folder .*\.efx-staging is not a plain folder/,
    );
    await Deno.mkdir(join(root, "s2"));
    await Deno.symlink(join(base, "outside"), join(root, "s2", STAGING_DIR));
    await assert.rejects(
      LocalStorage.open(join(root, "s2"), { partialTtlMs: TTL }),
      /\.efx-staging is not a plain folder/,
    );
  });
});

Deno.test("storage: checkName accepts ordinary, unicode and spaced names", () => {
  for (const name of GOOD_NAMES) assert.deepEqual(checkName(name), name.split("/"), name);
  // exactly 4096 bytes in total is accepted
  const long = Array(16).fill("q".repeat(254)).join("/") + "/" + "r".repeat(16);
  assert.equal(enc.encode(long).length, 4096);
  assert.equal(checkName(long).length, 17);
});

Deno.test("storage: checkName rejects every escape attempt with bad-name", () => {
  for (const [name, why] of BAD_NAMES) {
    assert.throws(() => checkName(name), (err) => {
      assert.ok(err instanceof StorageError, why);
      assert.equal(err.code, "bad-name", why);
      assert.match(err.message, /^invalid file name ".*": /, why);
      // control characters are escaped in the message
      assert.ok(![...err.message].some((c) => c < " " || c === "\x7f"), why);
      return true;
    }, why);
  }
});

Deno.test("storage: every operation refuses bad names and writes nothing", async () => {
  await withStorage(async ({ root, storage }) => {
    await Deno.mkdir(join(root, "a"));
    await Deno.writeTextFile(join(root, "a", "f.txt"), "f");
    const opts = (force: boolean) => ({ force, size: 1, who: "" });
    for (const [name] of BAD_NAMES) {
      await rejectsWith(storage.stat(name), "bad-name");
      await rejectsWith(storage.openRead(name), "bad-name");
      await rejectsWith(storage.tree(name), "bad-name");
      await rejectsWith(storage.checkWrite(name, opts(false)), "bad-name");
      await rejectsWith(storage.beginWrite(name, opts(false)), "bad-name");
      await rejectsWith(storage.beginWrite(name, opts(true)), "bad-name");
      await rejectsWith(storage.mkdir(name), "bad-name");
      await rejectsWith(storage.mkdir(name, { mode: 0o777, mtime: 0 }), "bad-name");
      await rejectsWith(storage.symlink(name, "a/f.txt", { force: true }), "bad-name");
      await rejectsWith(storage.remove(name), "bad-name");
      await rejectsWith(storage.remove(name, { recursive: true }), "bad-name");
      await rejectsWith(storage.remove(name, { dir: true }), "bad-name");
      await rejectsWith(storage.rename(name, "b", { force: true }), "bad-name");
      await rejectsWith(storage.rename("a/f.txt", name, { force: true }), "bad-name");
      await rejectsWith(storage.rename("a", name, { force: true }), "bad-name");
      await rejectsWith(storage.claimPartial(name, "", () => {}), "bad-name");
    }
    // bad link targets are refused too
    for (const target of ["", "a\nb", "x\0y", "\ud800", "t".repeat(4097)]) {
      await rejectsWith(
        storage.symlink("l", target, { force: true }),
        "bad-name",
        /^refusing link/,
      );
    }
    // not even the staging folder was made
    assert.deepEqual(await snapshot(root), ["a/", "a/f.txt=f"]);
  });
});

/**
 * Everything a client may try through `link` (an operator-made filesystem
 * link, used as a folder) is refused, and nothing is created anywhere.
 */
async function assertRefusedAsFolder(storage: LocalStorage, link: string): Promise<void> {
  const w = { force: true, size: 1, who: "" };
  const through = [`${link}/secret.txt`, `${link}/passwd`, `${link}/sub/x`, `${link}/new.txt`];
  for (const name of through) {
    await rejectsWith(storage.stat(name), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.openRead(name), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.checkWrite(name, w), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.beginWrite(name, w), "not-a-file", LINK_REFUSED);
    await rejectsWith(
      storage.beginWrite(name, { ...w, force: false }),
      "not-a-file",
      `cannot create ${name}: ${link} is a link on the server, and links are never followed`,
    );
    await rejectsWith(storage.mkdir(name, { mode: 0o777 }), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.symlink(name, "x", { force: true }), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.remove(name), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.remove(name, { recursive: true }), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.rename(name, "moved", { force: true }), "not-a-file", LINK_REFUSED);
  }
  await rejectsWith(
    storage.beginWrite(`${link}/deeper/x/y.txt`, w),
    "not-a-file",
    LINK_REFUSED,
  );
  await rejectsWith(storage.openRead(link), "not-a-file", LINK_REFUSED);
  await rejectsWith(storage.tree(link), "not-a-file", `${link} is not a folder on the server`);
  await rejectsWith(storage.mkdir(link), "not-a-file", LINK_REFUSED);
  await rejectsWith(storage.mkdir(link, { mode: 0o700, mtime: 0 }), "not-a-file", LINK_REFUSED);
  await rejectsWith(storage.remove(link, { dir: true }), "not-a-file", `${link} is not a folder`);
  const info = await storage.stat(link);
  assert.equal(info.type, "symlink");
  assert.equal(info.size, 0);
  assert.equal(info.mode, 0o777);
  assert.equal(info.target, undefined, "the target of an operator's link is not revealed");
  assert.deepEqual(await storage.list(`${link}/*`), []);
}

Deno.test("storage: a link to /etc is refused for every operation, shown as a link", async () => {
  await withStorage(async ({ root, storage }) => {
    await Deno.symlink("/etc", join(root, "etc"));
    await assertRefusedAsFolder(storage, "etc");
    await rejectsWith(
      storage.openRead("etc/passwd"),
      "not-a-file",
      "etc/passwd: etc is a link on the server, and links are never followed",
    );
    await rejectsWith(
      storage.openRead("etc"),
      "not-a-file",
      "etc is a link on the server; links are never followed (download its target)",
    );
    // listing does not follow it and says nothing about its target
    const list = await storage.list();
    assert.deepEqual(list.map((e) => [e.name, e.type, e.size, e.target]), [
      ["etc", "symlink", 0, undefined],
    ]);
    assert.deepEqual(names(await storage.list(undefined, { recursive: true })), ["etc"]);
    assert.deepEqual(names(await storage.list("*", { recursive: true })), ["etc"]);
    // removing it removes the link only
    await storage.remove("etc");
    assert.deepEqual(await snapshot(root), []);
    assert.ok(Deno.lstatSync("/etc").isDirectory);
  });
});

Deno.test("storage: a link to a folder outside the root is refused for reads and writes", async () => {
  await withStorage(async ({ root, outside, storage }) => {
    await Deno.symlink(outside, join(root, "out"));
    await Deno.symlink("../outside", join(root, "rel-out"));
    for (const link of ["out", "rel-out"]) await assertRefusedAsFolder(storage, link);
    assert.deepEqual(
      (await storage.list()).map((e) => [e.name, e.type, e.size]),
      [["out", "symlink", 0], ["rel-out", "symlink", 0]],
    );
    // rm -r of the link removes the link, not the folder it points to
    await storage.remove("out", { recursive: true });
    await storage.remove("rel-out");
    assert.deepEqual(await snapshot(root), []);
    // withStorage checks that outside/ is unchanged
  });
});

Deno.test("storage: a link to a file outside: reads refused, a forced upload replaces the link itself", async () => {
  await withStorage(async ({ root, outside, storage }) => {
    await Deno.symlink(join(outside, "secret.txt"), join(root, "secret-link"));
    await rejectsWith(storage.openRead("secret-link"), "not-a-file", LINK_REFUSED);
    assert.equal((await storage.stat("secret-link")).type, "symlink");
    await rejectsWith(
      storage.beginWrite("secret-link", { force: false, size: 1, who: "" }),
      "exists",
    );
    await rejectsWith(storage.symlink("secret-link", "x", { force: false }), "exists");
    // with force the link entry is replaced; the file it pointed to is untouched
    await put(storage, "secret-link", "replaced", true);
    assert.equal(Deno.lstatSync(join(root, "secret-link")).isFile, true);
    assert.equal(await readAll(storage, "secret-link"), "replaced");
    // removing a link removes only the link
    await Deno.symlink(join(outside, "secret.txt"), join(root, "link2"));
    await storage.remove("link2");
    // renaming a link moves the link, not its target
    await Deno.symlink(join(outside, "secret.txt"), join(root, "link3"));
    await storage.rename("link3", "link4", { force: false });
    assert.equal(Deno.readLinkSync(join(root, "link4")), join(outside, "secret.txt"));
    await rejectsWith(storage.openRead("link4"), "not-a-file", LINK_REFUSED);
    await storage.remove("link4");
    assert.deepEqual(await snapshot(root), ["secret-link=replaced"]);
  });
});

Deno.test("storage: broken links are never followed, nothing is created at their target", async () => {
  await withStorage(async ({ root, outside, storage }) => {
    await Deno.symlink(join(outside, "not-yet"), join(root, "dang"));
    await Deno.symlink(join(outside, "not-yet-file"), join(root, "dangfile"));
    await assertRefusedAsFolder(storage, "dang");
    await rejectsWith(storage.openRead("dangfile"), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.beginWrite("dangfile", { force: false, size: 1, who: "" }), "exists");
    assert.deepEqual(
      (await storage.list()).map((e) => [e.name, e.type, e.size]),
      [["dang", "symlink", 0], ["dangfile", "symlink", 0]],
    );
    // the link itself may be replaced by an upload with force, never written through
    await put(storage, "dangfile", "file now", true);
    assert.equal(await Deno.readTextFile(join(root, "dangfile")), "file now");
    await storage.remove("dang");
    assert.deepEqual(await snapshot(root), ["dangfile=file now"]);
  });
});

Deno.test("storage: a link loop is refused without server paths", async () => {
  await withStorage(async ({ base, root, storage }) => {
    await Deno.symlink("loop", join(root, "loop"));
    await Deno.symlink("ping", join(root, "pong"));
    await Deno.symlink("pong", join(root, "ping"));
    for (const link of ["loop", "ping"]) await assertRefusedAsFolder(storage, link);
    const attempts = [
      () => storage.openRead("loop"),
      () => storage.openRead("loop/x"),
      () => storage.stat("loop/x"),
      () => storage.beginWrite("loop/x", { force: true, size: 1, who: "" }),
      () => storage.mkdir("loop/x"),
      () => storage.tree("pong"),
    ];
    for (const attempt of attempts) {
      await assert.rejects(attempt(), (err) => {
        assert.ok(err instanceof StorageError);
        assert.ok(!err.message.includes(base), err.message);
        return true;
      });
    }
    assert.deepEqual(names(await storage.list(undefined, { recursive: true })), [
      "loop",
      "ping",
      "pong",
    ]);
    await storage.remove("loop");
    await storage.remove("ping");
    await storage.remove("pong");
    assert.deepEqual(await snapshot(root), []);
  });
});

Deno.test("storage: links the operator made inside the root are refused too (never followed)", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "docs/real.txt", "real");
    await Deno.symlink("docs/real.txt", join(root, "alias.txt"));
    await Deno.symlink(join(root, "docs"), join(root, "docslink"));
    await Deno.symlink("docs", join(root, "reldocs"));
    await rejectsWith(storage.openRead("alias.txt"), "not-a-file", LINK_REFUSED);
    for (const link of ["docslink", "reldocs"]) {
      await assertRefusedAsFolder(storage, link);
      await rejectsWith(storage.openRead(`${link}/real.txt`), "not-a-file", LINK_REFUSED);
    }
    assert.equal((await storage.stat("alias.txt")).type, "symlink");
    const list = await storage.list();
    assert.deepEqual(list.map((e) => [e.name, e.type, e.size]), [
      ["alias.txt", "symlink", 0],
      ["docs", "dir", 0],
      ["docslink", "symlink", 0],
      ["reldocs", "symlink", 0],
    ]);
    // a recursive listing does not descend into the links
    assert.deepEqual(names(await storage.list(undefined, { recursive: true })), [
      "alias.txt",
      "docs",
      "docs/real.txt",
      "docslink",
      "reldocs",
    ]);
    assert.deepEqual(names(await storage.tree("docs")), ["docs/real.txt"]);
    const docsMode = Deno.lstatSync(join(root, "docs")).mode;
    // rm -r / rm of the links removes the links, never what they point to
    await storage.remove("docslink", { recursive: true });
    await storage.remove("reldocs");
    await storage.remove("alias.txt");
    assert.deepEqual(await snapshot(root), ["docs/", "docs/real.txt=real"]);
    assert.equal(Deno.lstatSync(join(root, "docs")).mode, docsMode);
  });
});

Deno.test("storage: links uploaded by clients are records: listed with their target, never followed", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "docs/real.txt", "real");
    const mtime = Date.UTC(2021, 5, 6, 7, 8, 9);
    await storage.symlink("to-passwd", "/etc/passwd", { force: false, mtime });
    await storage.symlink("to-docs", "docs", { force: false });
    await storage.symlink("up", "../../outside/secret.txt", { force: false });
    // stored as regular files, never as filesystem links
    for (const n of ["to-passwd", "to-docs", "up"]) {
      const st = Deno.lstatSync(join(root, n));
      assert.ok(st.isFile && !st.isSymlink, n);
    }
    assert.deepEqual(
      await storage.stat("to-passwd"),
      {
        name: "to-passwd",
        size: "/etc/passwd".length,
        mode: 0o777,
        mtime,
        type: "symlink",
        target: "/etc/passwd",
      } satisfies FileInfo,
    );
    assert.deepEqual(
      (await storage.list()).map((e) => [e.name, e.type, e.target]),
      [
        ["docs", "dir", undefined],
        ["to-docs", "symlink", "docs"],
        ["to-passwd", "symlink", "/etc/passwd"],
        ["up", "symlink", "../../outside/secret.txt"],
      ],
    );
    await rejectsWith(storage.openRead("to-passwd"), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.openRead("up"), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.openRead("to-docs/real.txt"), "not-a-file", LINK_REFUSED);
    await rejectsWith(
      storage.beginWrite("to-docs/new.txt", { force: true, size: 1, who: "" }),
      "not-a-file",
      LINK_REFUSED,
    );
    await rejectsWith(storage.mkdir("to-docs"), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.mkdir("to-docs/x"), "not-a-file", LINK_REFUSED);
    await rejectsWith(storage.tree("to-docs"), "not-a-file");
    await rejectsWith(storage.symlink("to-docs", "elsewhere", { force: false }), "exists");
    // with force a record is replaced by another record
    await storage.symlink("to-docs", "elsewhere", { force: true });
    assert.equal((await storage.stat("to-docs")).target, "elsewhere");
    // a link cannot replace a folder
    await rejectsWith(
      storage.symlink("docs", "x", { force: true }),
      "not-a-file",
      "docs is a folder on the server",
    );
    for (const n of ["to-passwd", "to-docs", "up"]) await storage.remove(n);
    assert.deepEqual(await snapshot(root), [`${STAGING_DIR}/`, "docs/", "docs/real.txt=real"]);
  });
});

Deno.test("storage: error messages never contain server paths", async () => {
  await withStorage(async ({ base, root, storage }) => {
    await Deno.mkdir(join(root, "dir"));
    await Deno.writeTextFile(join(root, "dir", "in.txt"), "x");
    await Deno.writeTextFile(join(root, "file.txt"), "x");
    await Deno.symlink("/etc", join(root, "etc"));
    await Deno.symlink(join(base, "outside"), join(root, "out"));
    const w = (force: boolean) => ({ force, size: 1, who: "" });
    const attempts: (() => Promise<unknown>)[] = [
      () => storage.stat("nope.txt"),
      () => storage.openRead("nope/nope.txt"),
      () => storage.openRead("dir"),
      () => storage.openRead("file.txt/x"),
      () => storage.beginWrite("file.txt/x", w(false)),
      () => storage.beginWrite("dir", w(true)),
      () => storage.beginWrite("file.txt", w(false)),
      () => storage.checkWrite("file.txt", w(false)),
      () => storage.remove("dir"),
      () => storage.remove("dir", { dir: true }),
      () => storage.remove("nope"),
      () => storage.remove("file.txt", { dir: true }),
      () => storage.openRead("etc/passwd"),
      () => storage.openRead("etc"),
      () => storage.openRead("out/secret.txt"),
      () => storage.beginWrite("out/new.txt", w(true)),
      () => storage.mkdir("file.txt"),
      () => storage.mkdir("out/x"),
      () => storage.tree("file.txt"),
      () => storage.tree("nope"),
      () => storage.rename("nope", "x", { force: false }),
      () => storage.rename("file.txt", "dir/in.txt", { force: false }),
      () => storage.rename("file.txt", "dir", { force: true }),
      () => storage.rename("dir", "dir/sub", { force: false }),
      () => storage.symlink("dir", "x", { force: true }),
      () => storage.list("a".repeat(2000)),
    ];
    for (const attempt of attempts) {
      await assert.rejects(attempt(), (err) => {
        assert.ok(err instanceof StorageError, String(err));
        assert.ok(!err.message.includes(base), err.message);
        assert.ok(!err.message.includes("/tmp"), err.message);
        assert.ok(!err.message.includes(STAGING_DIR), err.message);
        return true;
      });
    }
  });
});

Deno.test("storage: stat", async () => {
  await withStorage(async ({ storage }) => {
    const mtime = Date.UTC(2020, 0, 2, 3, 4, 5, 6);
    const w = await storage.beginWrite("sub/a.txt", { force: false, size: 5, who: "" });
    await w.write(enc.encode("hello"));
    await w.commit({ mode: 0o4640, mtime, expectedSha256: sha256("hello"), force: false });
    assert.deepEqual(
      await storage.stat("sub/a.txt"),
      {
        name: "sub/a.txt",
        size: 5,
        mode: 0o640, // setuid dropped
        mtime,
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
    await rejectsWith(
      storage.stat("nope/x.txt"),
      "not-found",
      "no such file on the server: nope/x.txt",
    );
    // a file used as a folder: said so (the old backend said not-found)
    await rejectsWith(
      storage.stat("sub/a.txt/x"),
      "not-a-file",
      "sub/a.txt/x: sub/a.txt is not a folder on the server",
    );
  });
});

Deno.test({
  name: "storage: special files (a FIFO) are not regular files, and are never opened",
  fn: async () => {
    await withStorage(async ({ root, storage }) => {
      await Deno.mkdir(join(root, "sub"));
      // A FIFO: opening it for reading would block forever, so this also
      // shows that storage checks the type before it opens anything.
      const made = await new Deno.Command("mkfifo", {
        args: [join(root, "fifo"), join(root, "sub", "fifo2")],
      }).output();
      assert.ok(made.success, "mkfifo failed");
      await rejectsWith(storage.stat("fifo"), "not-a-file", "fifo is not a regular file");
      await rejectsWith(storage.openRead("fifo"), "not-a-file", "fifo is not a regular file");
      await rejectsWith(storage.openRead("sub/fifo2"), "not-a-file");
      await rejectsWith(storage.tree("fifo"), "not-a-file");
      await rejectsWith(storage.mkdir("fifo", { mode: 0o755 }), "not-a-file");
      await rejectsWith(storage.stat("fifo/x"), "not-a-file", /fifo is not a folder/);
      await rejectsWith(storage.beginWrite("fifo", { force: false, size: 1, who: "" }), "exists");
      assert.deepEqual(names(await storage.list()), ["sub"]);
      assert.deepEqual(names(await storage.list(undefined, { recursive: true })), ["sub"]);
      assert.deepEqual(await storage.tree("sub"), []);
      // removing one unlinks it without opening it
      await storage.remove("sub/fifo2");
      assert.equal(Deno.readDirSync(join(root, "sub")).next().done, true);
    });
  },
});

Deno.test("storage: openRead", async () => {
  await withStorage(async ({ storage }) => {
    await put(storage, "a.txt", "content");
    const h = await storage.openRead("a.txt");
    try {
      assert.equal(h.info.name, "a.txt");
      assert.equal(h.info.size, 7);
      assert.equal(h.info.type, "file");
      await h.seek(3);
      const buf = new Uint8Array(16);
      const n = await h.read(buf);
      assert.equal(new TextDecoder().decode(buf.subarray(0, n!)), "tent");
    } finally {
      h.close();
      h.close(); // idempotent
    }
    assert.equal(await readAll(storage, "a.txt"), "content");
    await Deno.mkdir(join(storage.root, "d"));
    await rejectsWith(storage.openRead("d"), "not-a-file", "d is a folder, not a file");
    await rejectsWith(storage.openRead("b.txt"), "not-found", "no such file on the server: b.txt");
  });
});

Deno.test("storage: beginWrite creates folders and is invisible until commit", async () => {
  await withStorage(async ({ root, storage }) => {
    // checkWrite makes every check and creates nothing
    await storage.checkWrite("x/y/z.bin", { force: false, size: 3, who: "" });
    assert.deepEqual(await snapshot(root), []);
    const w = await storage.beginWrite("x/y/z.bin", { force: false, size: 3, who: "" });
    await w.write(new Uint8Array([1, 2, 3]));
    assert.equal(w.bytesWritten, 3);
    await rejectsWith(storage.stat("x/y/z.bin"), "not-found");
    await rejectsWith(storage.openRead("x/y/z.bin"), "not-found");
    assert.deepEqual(await storage.list("x/y/*"), []); // temp hidden
    assert.deepEqual(await storage.list(undefined, { recursive: true }).then(names), ["x", "x/y"]);
    assert.deepEqual(await storage.tree("x").then(names), ["x/y"]);
    const snap = await snapshot(root);
    assert.equal(snap.length, 3, snap.join(", "));
    assert.deepEqual(snap.slice(0, 2), ["x/", "x/y/"]);
    assert.match(snap[2], new RegExp(`^x/y/${TEMP_PREFIX}[0-9a-f]{24}=\x01\x02\x03$`));
    const sha = sha256(new Uint8Array([1, 2, 3]));
    const res = await w.commit({ mode: 0o600, mtime: 1e12, expectedSha256: sha, force: false });
    assert.equal(res.sha256, sha);
    assert.equal(res.bytes, 3);
    assert.equal((await storage.stat("x/y/z.bin")).size, 3);
    assert.equal((await storage.stat("x/y/z.bin")).mode, 0o600);
    assert.deepEqual(await snapshot(root), ["x/", "x/y/", "x/y/z.bin=\x01\x02\x03"]);
    // a second commit is refused
    await assert.rejects(
      w.commit({ mode: 0o600, mtime: 1e12, expectedSha256: sha, force: false }),
      /already committed/,
    );
  });
});

Deno.test("storage: overwrite refused without force, allowed with force", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "a.txt", "one");
    await rejectsWith(
      storage.beginWrite("a.txt", { force: false, size: 3, who: "" }),
      "exists",
      "a.txt already exists on the server (use --force to overwrite)",
    );
    await rejectsWith(
      storage.checkWrite("a.txt", { force: false, size: 3, who: "" }),
      "exists",
      "a.txt already exists on the server (use --force to overwrite)",
    );
    await put(storage, "a.txt", "two", true);
    assert.equal(await readAll(storage, "a.txt"), "two");
    // created by someone else during the upload: refused at commit, nothing clobbered
    const w = await storage.beginWrite("b.txt", { force: false, size: 4, who: "" });
    await w.write(enc.encode("mine"));
    await Deno.writeTextFile(join(root, "b.txt"), "theirs");
    await rejectsWith(
      w.commit({ mode: 0o644, mtime: 0, expectedSha256: sha256("mine"), force: false }),
      "exists",
      "b.txt already exists on the server (use --force to overwrite)",
    );
    assert.deepEqual(await snapshot(root), ["a.txt=two", "b.txt=theirs"]);
  });
});

Deno.test("storage: beginWrite refusals", async () => {
  await withStorage(async ({ root, storage }) => {
    await Deno.mkdir(join(root, "dir"));
    await Deno.writeTextFile(join(root, "dir", "keep.txt"), "keep");
    await put(storage, "file.txt", "x");
    await rejectsWith(
      storage.beginWrite("dir", { force: true, size: 1, who: "" }),
      "not-a-file",
      "dir is a folder on the server",
    );
    await rejectsWith(
      storage.beginWrite("file.txt/b.txt", { force: false, size: 1, who: "" }),
      "not-a-file",
      "cannot create file.txt/b.txt: file.txt is not a folder on the server",
    );
    await rejectsWith(
      storage.checkWrite("file.txt/b.txt", { force: false, size: 1, who: "" }),
      "not-a-file",
    );
    // An operator's link to a folder: the old backend refused to write
    // "through" it; now it is an entry like any other, so a forced upload
    // replaces the link itself and never touches the folder.
    await Deno.symlink("dir", join(root, "dirlink"));
    await rejectsWith(storage.beginWrite("dirlink", { force: false, size: 1, who: "" }), "exists");
    await put(storage, "dirlink", "now a file", true);
    // a declared size beyond the free space (with the default reserve) creates nothing
    const reserved = await LocalStorage.open(root, { partialTtlMs: TTL });
    assert.equal(reserved.space.enforced, true);
    for (const name of ["big.bin", "new/big.bin"]) {
      await rejectsWith(
        reserved.beginWrite(name, { force: false, size: Number.MAX_SAFE_INTEGER, who: "" }),
        "no-space",
        new RegExp(`^not enough free space on the server for ${name} \\(`),
      );
      await rejectsWith(
        reserved.checkWrite(name, { force: false, size: Number.MAX_SAFE_INTEGER, who: "" }),
        "no-space",
      );
    }
    assert.deepEqual(await snapshot(root), [
      "dir/",
      "dir/keep.txt=keep",
      "dirlink=now a file",
      "file.txt=x",
    ]);
  });
});

Deno.test("storage: hash mismatch on upload leaves no file", async () => {
  await withStorage(async ({ root, storage }) => {
    const w = await storage.beginWrite("sub/a.txt", { force: false, size: 8, who: "" });
    await w.write(enc.encode("tampered"));
    await assert.rejects(
      w.commit({ mode: 0o644, mtime: 0, expectedSha256: "ab".repeat(32), force: false }),
      IntegrityError,
    );
    assert.deepEqual(await snapshot(root), ["sub/"]);
  });
});

Deno.test("storage: aborted upload leaves no temp file", async () => {
  await withStorage(async ({ root, storage }) => {
    const w = await storage.beginWrite("a.txt", { force: false, size: 4, who: "" });
    await w.write(enc.encode("part"));
    await w.abort();
    await w.abort(); // idempotent
    assert.deepEqual(await snapshot(root), []);
  });
});

Deno.test("storage: remove, rmdir and rm -r", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "d/a.txt", "x");
    await storage.remove("d/a.txt");
    assert.deepEqual(await snapshot(root), ["d/"]);
    // the old backend only removed files; a folder now needs dir or recursive
    await rejectsWith(
      storage.remove("d"),
      "not-a-file",
      "d is a folder (use rmdir for an empty folder, or rm -r)",
    );
    await rejectsWith(
      storage.remove("d/a.txt"),
      "not-found",
      "no such file on the server: d/a.txt",
    );
    await put(storage, "d/e/f.txt", "f");
    await rejectsWith(
      storage.remove("d", { dir: true }),
      "not-empty",
      "d is not empty (use rm -r)",
    );
    await rejectsWith(
      storage.remove("d/e/f.txt", { dir: true }),
      "not-a-file",
      "d/e/f.txt is not a folder",
    );
    await storage.remove("d/e/f.txt");
    await storage.remove("d/e", { dir: true });
    await put(storage, "d/e/g/h.txt", "h");
    await storage.symlink("d/e/l", "../../outside", { force: false });
    await storage.remove("d", { recursive: true });
    assert.deepEqual(await snapshot(root), [`${STAGING_DIR}/`]);
    await rejectsWith(storage.remove("d", { recursive: true }), "not-found");
  });
});

Deno.test("storage: mkdir creates parents, applies mode (owner rwx kept) and mtime", async () => {
  await withStorage(async ({ root, storage }) => {
    const mtime = Date.UTC(2019, 1, 2, 3, 4, 5);
    await storage.mkdir("a/b/c", { mode: 0o750, mtime });
    assert.deepEqual(await snapshot(root), ["a/", "a/b/", "a/b/c/"]);
    const c = await storage.stat("a/b/c");
    assert.equal(c.type, "dir");
    assert.equal(c.mode, 0o750);
    assert.equal(c.mtime, mtime);
    // no mode can lock the server out of its own folder
    await storage.mkdir("a/b/c", { mode: 0o000 });
    assert.equal((await storage.stat("a/b/c")).mode, 0o700);
    await storage.mkdir("a/b/c", { mode: 0o4777 });
    assert.equal((await storage.stat("a/b/c")).mode, 0o777);
    // an existing folder without options is fine and unchanged
    await storage.mkdir("a/b/c");
    assert.equal((await storage.stat("a/b/c")).mode, 0o777);
    await put(storage, "f.txt", "x");
    await rejectsWith(
      storage.mkdir("f.txt"),
      "not-a-file",
      "f.txt exists on the server and is not a folder",
    );
    await rejectsWith(
      storage.mkdir("f.txt/sub"),
      "not-a-file",
      /f\.txt is not a folder on the server/,
    );
  });
});

Deno.test("storage: rename files and folders", async () => {
  await withStorage(async ({ root, storage }) => {
    await put(storage, "a.txt", "a");
    await put(storage, "b.txt", "b");
    await rejectsWith(
      storage.rename("a.txt", "b.txt", { force: false }),
      "exists",
      "b.txt already exists on the server (use --force to overwrite)",
    );
    await storage.rename("a.txt", "sub/dir/a.txt", { force: false });
    assert.deepEqual(await snapshot(root), ["b.txt=b", "sub/", "sub/dir/", "sub/dir/a.txt=a"]);
    await storage.rename("sub/dir/a.txt", "b.txt", { force: true });
    assert.deepEqual(await snapshot(root), ["b.txt=a", "sub/", "sub/dir/"]);
    await storage.rename("sub", "moved", { force: false });
    assert.deepEqual(await snapshot(root), ["b.txt=a", "moved/", "moved/dir/"]);
    await rejectsWith(
      storage.rename("moved", "moved/dir/x", { force: false }),
      "bad-name",
      "cannot move moved into itself",
    );
    await rejectsWith(
      storage.rename("nope", "x", { force: false }),
      "not-found",
      "no such file on the server: nope",
    );
    await rejectsWith(
      storage.rename("b.txt", "moved", { force: true }),
      "not-a-file",
      "moved is a folder on the server",
    );
    await storage.rename("b.txt", "b.txt", { force: false }); // a no-op
    assert.deepEqual(await snapshot(root), ["b.txt=a", "moved/", "moved/dir/"]);
  });
});

Deno.test("storage: open removes stale temp files recursively, not via links", async () => {
  await withStorage(async ({ root, outside }) => {
    await Deno.mkdir(join(root, "a", "b"), { recursive: true });
    await Deno.writeTextFile(join(root, `${TEMP_PREFIX}1`), "stale");
    await Deno.writeTextFile(join(root, "a", `${TEMP_PREFIX}2`), "stale");
    await Deno.writeTextFile(join(root, "a", "b", `${TEMP_PREFIX}3`), "stale");
    await Deno.writeTextFile(join(root, "a", "b", "keep.txt"), "keep");
    await Deno.symlink(outside, join(root, "out"));
    await Deno.writeTextFile(join(outside, `${TEMP_PREFIX}x`), "not ours");
    try {
      const s = await LocalStorage.open(root, { partialTtlMs: TTL, reserveBytes: 0 });
      assert.equal(s.removedTemps, 3);
      assert.deepEqual(await snapshot(root), ["a/", "a/b/", "a/b/keep.txt=keep", "out@"]);
      assert.equal(await Deno.readTextFile(join(outside, `${TEMP_PREFIX}x`)), "not ours");
    } finally {
      await Deno.remove(join(outside, `${TEMP_PREFIX}x`));
    }
  });
});

Deno.test("storage: an upload under way survives another server opening the root", async () => {
  await withStorage(async ({ root, storage }) => {
    const w = await storage.beginWrite("live.txt", { force: false, size: 4, who: "" });
    await w.write(enc.encode("live"));
    // its temp file is locked, so a new LocalStorage.open leaves it alone
    const other = await LocalStorage.open(root, { partialTtlMs: TTL, reserveBytes: 0 });
    assert.equal(other.removedTemps, 0);
    await w.commit({ mode: 0o644, mtime: 0, expectedSha256: sha256("live"), force: false });
    assert.equal(await readAll(other, "live.txt"), "live");
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
    await storage.symlink("photos/link.png", "x.png", { force: false }); // makes the staging folder

    const top = await storage.list();
    assert.deepEqual(names(top), ["a+b (1).txt", "a.txt", "ab.txt", "b.txt", "c.png", "photos"]);
    assert.deepEqual(top.find((e) => e.name === "photos")!.type, "dir");
    assert.deepEqual(top.find((e) => e.name === "a.txt"), {
      ...top.find((e) => e.name === "a.txt")!,
      size: 5,
      mode: 0o644,
      type: "file",
    });
    assert.deepEqual(await storage.list(""), top);
    assert.deepEqual(names(await storage.list("*.txt")), [
      "a+b (1).txt",
      "a.txt",
      "ab.txt",
      "b.txt",
    ]);
    assert.deepEqual(names(await storage.list("**.txt")), names(await storage.list("*.txt")));
    assert.deepEqual(names(await storage.list("?.txt")), ["a.txt", "b.txt"]);
    assert.deepEqual(names(await storage.list("a+b (?).txt")), ["a+b (1).txt"]);
    assert.deepEqual(names(await storage.list("a.*")), ["a.txt"]);
    assert.deepEqual(names(await storage.list("[ab].txt")), []); // no character classes
    assert.deepEqual(names(await storage.list("photos")), ["photos"]);
    assert.deepEqual(names(await storage.list("photos/*")), [
      "photos/2024",
      "photos/link.png",
      "photos/x.png",
      "photos/y.jpg",
    ]);
    assert.deepEqual(names(await storage.list("*/*.png")), ["photos/link.png", "photos/x.png"]);
    assert.deepEqual(names(await storage.list("*/*/*")), ["photos/2024/z.png"]);
    assert.deepEqual(names(await storage.list("nomatch*")), []);
    assert.deepEqual(names(await storage.list("../*")), []);
    assert.deepEqual(names(await storage.list("/*")), []);
    assert.deepEqual(names(await storage.list("photos/")), []);
    assert.deepEqual(names(await storage.list(".efx-*")), []); // the server's own files
    assert.deepEqual(
      names(await storage.list("*", { recursive: true })).includes(STAGING_DIR),
      false,
    );
    await rejectsWith(storage.list("a".repeat(1025)), "bad-name", /^invalid pattern: /);
    await rejectsWith(storage.list("a".repeat(1025), { recursive: true }), "bad-name");

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
      "photos/link.png",
      "photos/x.png",
      "photos/y.jpg",
    ]);
    const link = all.find((e) => e.name === "photos/link.png")!;
    assert.equal(link.type, "symlink");
    assert.equal(link.target, "x.png");
    assert.deepEqual(names(await storage.list("*.png", { recursive: true })), [
      "c.png",
      "photos/2024/z.png",
      "photos/link.png",
      "photos/x.png",
    ]);
    assert.deepEqual(names(await storage.list("photos/*.png", { recursive: true })), [
      "photos/link.png",
      "photos/x.png",
    ]);
    assert.deepEqual(names(await storage.list("photos/*/*", { recursive: true })), [
      "photos/2024/z.png",
    ]);
    assert.deepEqual(names(await storage.tree("photos")), [
      "photos/2024",
      "photos/2024/z.png",
      "photos/link.png",
      "photos/x.png",
      "photos/y.jpg",
    ]);
    await rejectsWith(storage.tree("a.txt"), "not-a-file", "a.txt is not a folder on the server");
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
