/**
 * Folder transfers (`upload -r`, `download -r`, `ls -r`, the shell's
 * `put -r` / `get -r`): a tree with nested folders, an executable, a PNG, an
 * empty folder, unicode names and inside symlinks must come back exactly
 * (`diff -r`, modes and mtimes of files AND folders, link texts). Links that
 * lead outside the tree are skipped and never followed, and a hostile server
 * (scripted in this process) cannot make the client write outside the
 * target folder.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/folders_test.ts
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join, relative } from "node:path";
import { deflateSync } from "node:zlib";
import type { SecureChannel } from "../src/channel.ts";
import { linkStaysInside } from "../src/folders.ts";
import type { FileInfo } from "../src/messages.ts";
import {
  assertExit,
  clientArgs,
  connectClient,
  efx,
  type EfxResult,
  type FakeServer,
  listTree,
  makeWorkDir,
  startFakeServer,
  startServer,
  tempFilesIn,
  type TestServer,
} from "./helpers/server.ts";

const enc = new TextEncoder();

/** The server shared by the tests of this file; stopped by the last test. */
const S: TestServer = await startServer();

async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await makeWorkDir("efx-folders-work-");
  try {
    await fn(work);
    assert.deepEqual(await tempFilesIn(work), [], "temp files left in the client folder");
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

// ---------------------------------------------------------------------------
// A tiny PNG, written by hand (signature, IHDR, IDAT, IEND with CRC-32s).

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  out.set(enc.encode(type), 4);
  out.set(data, 8);
  v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** A valid `w` x `h` RGB PNG with a colour gradient. */
function makePng(w: number, h: number): Uint8Array {
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, w);
  v.setUint32(4, h);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB, deflate, no filter, no interlace
  const raw = new Uint8Array(h * (1 + 3 * w));
  for (let y = 0; y < h; y++) {
    const row = y * (1 + 3 * w);
    raw[row] = 0; // filter: none
    for (let x = 0; x < w; x++) raw.set([x * 16, y * 16, 128], row + 1 + 3 * x);
  }
  const parts = [
    Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a),
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", new Uint8Array(deflateSync(raw))),
    pngChunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------
// The sample tree

const UNICODE_DIR = "ünïcødé 文件";
const UNICODE_FILE = "naïve café ✓.txt";

/** Builds the sample tree at `dir` with fixed modes and (past, millisecond) mtimes. */
async function makeTree(dir: string): Promise<void> {
  const files: [string, Uint8Array, number][] = [
    ["a.txt", enc.encode("hello, tree\n"), 0o644],
    ["spaced name.txt", enc.encode("with spaces\n"), 0o600],
    ["bin/run.sh", enc.encode("#!/bin/sh\necho ran\n"), 0o755],
    ["img/pixel.png", makePng(8, 6), 0o640],
    [`${UNICODE_DIR}/${UNICODE_FILE}`, enc.encode("unicode ✓\n"), 0o644],
    ["nested/deep/deeper/data.bin", crypto.getRandomValues(new Uint8Array(60_000)), 0o644],
    ["nested/deep/deeper/empty.txt", new Uint8Array(0), 0o444],
  ];
  const dirs: [string, number][] = [
    ["", 0o755],
    ["bin", 0o755],
    ["img", 0o750],
    ["empty", 0o700],
    [UNICODE_DIR, 0o755],
    ["nested", 0o755],
    ["nested/deep", 0o750],
    ["nested/deep/deeper", 0o711],
  ];
  for (const [d] of dirs) await Deno.mkdir(join(dir, d), { recursive: true });
  let t = Date.UTC(2021, 4, 6, 7, 8, 9, 123);
  for (const [name, data, mode] of files) {
    await Deno.writeFile(join(dir, name), data);
    await Deno.chmod(join(dir, name), mode);
    await Deno.utime(join(dir, name), new Date(), new Date(t += 86_400_123));
  }
  // Links inside the tree: to a file, up and back down, to a folder.
  await Deno.symlink("a.txt", join(dir, "link-to-a"));
  await Deno.symlink("../../a.txt", join(dir, "nested/deep/up-to-a"));
  await Deno.symlink("nested/deep", join(dir, "dirlink"));
  // Folder modes and mtimes last, deepest first (adding entries changes a folder's mtime).
  for (const [d, mode] of [...dirs].reverse()) {
    await Deno.chmod(join(dir, d), mode);
    await Deno.utime(join(dir, d), new Date(), new Date(t += 3_600_007));
  }
}

/** Path -> "kind mode mtime" (or the link text) for every entry, the top folder included. */
async function metadata(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const rel of ["", ...await listTree(dir)]) {
    const st = await Deno.lstat(join(dir, rel));
    out[rel || "."] = st.isSymlink
      ? `link ${await Deno.readLink(join(dir, rel))}`
      : `${st.isDirectory ? "dir" : "file"} ${
        ((st.mode ?? 0) & 0o777).toString(8)
      } ${st.mtime?.getTime()}`;
  }
  return out;
}

/** Runs `diff -r --no-dereference a b` (links compared as links); asserts no difference. */
async function assertNoDiff(a: string, b: string): Promise<void> {
  const out = await new Deno.Command("diff", {
    args: ["-r", "--no-dereference", a, b],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `diff -r ${a} ${b}:\n${text}`);
  // And the plain, link-following diff agrees (the links resolve to the same content).
  const follow = await new Deno.Command("diff", { args: ["-r", a, b], stdout: "piped" }).output();
  assert.equal(follow.code, 0, `diff -r (following links) ${a} ${b}`);
}

async function assertSameTree(a: string, b: string): Promise<void> {
  await assertNoDiff(a, b);
  assert.deepEqual(await metadata(b), await metadata(a));
}

/**
 * The server stored the tree at `remote` with no filesystem link anywhere
 * (links are data), and lists every link of local tree `src` as a link with
 * the same target.
 */
async function assertStoredTree(src: string, remote: string): Promise<void> {
  const onDisk = join(S.root, remote);
  for (const rel of await listTree(onDisk)) {
    assert.ok(
      !(await Deno.lstat(join(onDisk, rel))).isSymlink,
      `a filesystem link on the server: ${rel}`,
    );
  }
  const client = await connectClient(S);
  try {
    const listed = new Map(
      (await client.tree(remote)).map((e) => [e.name.slice(remote.length + 1), e]),
    );
    for (const rel of await listTree(src)) {
      const st = await Deno.lstat(join(src, rel));
      const e = listed.get(rel);
      assert.ok(e, `${rel} not listed`);
      if (st.isSymlink) {
        assert.equal(e.type, "symlink", rel);
        assert.equal(e.target, await Deno.readLink(join(src, rel)), rel);
      } else {
        assert.equal(e.type, st.isDirectory ? "dir" : "file", rel);
        if (st.isFile) {
          assert.equal(e.size, st.size, rel);
          assert.equal(e.mode, st.mode! & 0o777, rel);
        }
      }
    }
  } finally {
    await client.close();
  }
}

// ---------------------------------------------------------------------------
// Round trips

Deno.test("folders: upload -r then download -r gives back the tree exactly (content, modes, mtimes, links)", async () => {
  await withWork(async (work) => {
    const src = join(work, "tree");
    await makeTree(src);
    // The PNG is a real one.
    const png = await Deno.readFile(join(src, "img/pixel.png"));
    assert.deepEqual([...png.subarray(1, 4)], [...enc.encode("PNG")]);

    const up = await efx(["upload", "-r", "tree", ...clientArgs(S)], { cwd: work });
    assertExit(up, 0, "upload -r");
    assert.match(up.stdout, /^uploaded tree as tree: 7 files, 8 folders, 3 links, /m);
    await assertStoredTree(src, "tree");

    const down = await efx(["download", "-r", "tree", "-o", "back", ...clientArgs(S)], {
      cwd: work,
    });
    assertExit(down, 0, "download -r");
    assert.match(down.stdout, /^downloaded tree to back: 7 files, 8 folders, 3 links, /m);
    assert.doesNotMatch(down.stderr, /skipping/);
    await assertSameTree(src, join(work, "back"));
    // The executable still runs.
    const ran = await new Deno.Command(join(work, "back/bin/run.sh"), { stdout: "piped" }).output();
    assert.equal(new TextDecoder().decode(ran.stdout), "ran\n");
    // Links stayed links.
    assert.equal(await Deno.readLink(join(work, "back/dirlink")), "nested/deep");
    assert.ok((await Deno.lstat(join(work, "back/dirlink"))).isSymlink);
  });
});

Deno.test("folders: ls -r shows the uploaded tree; a folder listing is sorted, folders end with /", async () => {
  await withWork(async (work) => {
    await makeTree(join(work, "lstree"));
    assertExit(await efx(["upload", "-r", "lstree", ...clientArgs(S)], { cwd: work }), 0);
    const ls = await efx(["ls", "-r", "lstree*", ...clientArgs(S)], { cwd: work });
    assertExit(ls, 0, "ls -r");
    const names = ls.stdout.trim().split("\n").map((l) => l.split(/\s+/).slice(4).join(" "));
    assert.ok(names.includes("lstree/"), ls.stdout);
    const all = await efx(["ls", "-r", ...clientArgs(S)], { cwd: work });
    const lines = all.stdout.split("\n");
    const line = (name: string) => lines.find((l) => l.endsWith(` ${name}`));
    assert.match(line("lstree/")!, /^drwxr-xr-x /);
    assert.match(line("lstree/empty/")!, /^drwx------ /);
    assert.match(line("lstree/bin/run.sh")!, /^-rwxr-xr-x /);
    // Links always show their target (also without -l).
    assert.match(line("lstree/link-to-a -> a.txt")!, /^l/);
    assert.match(line("lstree/dirlink -> nested/deep")!, /^l/);
    assert.ok(line(`lstree/${UNICODE_DIR}/${UNICODE_FILE}`), all.stdout);
    assert.ok(line("lstree/nested/deep/deeper/data.bin"), all.stdout);
    assert.match(line("lstree/nested/deep/deeper/data.bin")!, /^-rw-r--r-- +60000 /);
    const mine = lines.filter((l) => / lstree\//.test(l)).map((l) => l.replace(/^.* lstree/, ""));
    assert.deepEqual(mine, [...mine].sort(), "sorted by name");
    assert.equal(mine.length, 18);
    // Without -r only the top level shows.
    const top = await efx(["ls", ...clientArgs(S)], { cwd: work });
    assert.match(top.stdout, / lstree\/$/m);
    assert.doesNotMatch(top.stdout, /lstree\/a\.txt/);
  });
});

Deno.test("folders: the shell's put -r and get -r move a tree both ways", async () => {
  await withWork(async (work) => {
    await makeTree(join(work, "shtree"));
    const r = await efx(["shell", ...clientArgs(S)], {
      cwd: work,
      stdin:
        `put -r shtree remote-shtree\nget -r remote-shtree "got tree"\nls remote-shtree\nquit\n`,
    });
    assertExit(r, 0, "shell");
    assert.match(r.stdout, /uploaded shtree as remote-shtree: 7 files, 8 folders, 3 links/);
    assert.match(r.stdout, /downloaded remote-shtree to got tree: 7 files, 8 folders, 3 links/);
    await assertStoredTree(join(work, "shtree"), "remote-shtree");
    await assertSameTree(join(work, "shtree"), join(work, "got tree"));
    // Without -f an existing tree is not overwritten file by file.
    const again = await efx(["shell", ...clientArgs(S)], {
      cwd: work,
      stdin: `get -r remote-shtree "got tree"\nquit\n`,
    });
    assert.match(again.stderr, /already exists \(use --force to overwrite\)/);
  });
});

Deno.test("folders: links leading outside the tree go up as links (never followed); a download skips them unless --keep-links", async () => {
  await withWork(async (work) => {
    const secret = "TOP SECRET outside the tree\n";
    await Deno.writeTextFile(join(work, "outside.txt"), secret);
    await Deno.mkdir(join(work, "outside-dir"));
    await Deno.writeTextFile(join(work, "outside-dir/also-secret.txt"), secret);
    const src = join(work, "leaky");
    await Deno.mkdir(join(src, "inner"), { recursive: true });
    await Deno.writeTextFile(join(src, "ok.txt"), "fine\n");
    const outside: Record<string, string> = {
      "escape": "../outside.txt",
      "inner/escape-deeper": "../../outside.txt",
      "absolute": join(work, "outside.txt"),
      "escape-dir": "../outside-dir",
      "parent": "..",
    };
    for (const [at, target] of Object.entries(outside)) {
      await Deno.symlink(target, join(src, at));
    }
    await Deno.symlink("ok.txt", join(src, "fine-link"));

    // Upload: the server stores every link as data, so every link goes as a link.
    const up = await efx(["upload", "-r", "leaky", ...clientArgs(S)], { cwd: work });
    assertExit(up, 0, "upload -r");
    assert.doesNotMatch(up.stderr, /skipping/);
    assert.match(up.stdout, /: 1 files, 2 folders, 6 links, /);
    const ls = await efx(["ls", "-r", "leaky", ...clientArgs(S)], { cwd: work });
    assertExit(ls, 0, "ls -r leaky");
    for (const [at, target] of Object.entries({ ...outside, "fine-link": "ok.txt" })) {
      assert.ok(ls.stdout.includes(` leaky/${at} -> ${target}\n`), `${at}\n${ls.stdout}`);
    }
    // Nothing of the secret reached the server, under any name: no link was followed.
    for (const rel of await listTree(S.root)) {
      const st = await Deno.lstat(join(S.root, rel));
      assert.ok(!st.isSymlink, `${rel} is no filesystem link`);
      if (st.isFile && st.size >= secret.length) {
        assert.ok(!(await Deno.readTextFile(join(S.root, rel))).includes(secret), rel);
      }
    }

    // Download: links leading outside are skipped with a notice...
    const down = await efx(["download", "-r", "leaky", "-o", "back", ...clientArgs(S)], {
      cwd: work,
    });
    assertExit(down, 0, "download -r");
    for (const at of Object.keys(outside)) {
      assert.match(
        down.stderr,
        new RegExp(`skipping leaky/${at}: a link that leads outside the folder .*--keep-links`),
        at,
      );
    }
    assert.match(down.stdout, /: 1 files, 2 folders, 1 links, 5 skipped, /);
    assert.deepEqual(await listTree(join(work, "back")), ["fine-link", "inner", "ok.txt"]);
    // ...and recreated as they are with --keep-links (never followed: no secret copied).
    const keep = await efx(
      ["download", "-r", "leaky", "-o", "kept", "--keep-links", ...clientArgs(S)],
      { cwd: work },
    );
    assertExit(keep, 0, "download -r --keep-links");
    assert.match(keep.stdout, /: 1 files, 2 folders, 6 links, /);
    for (const [at, target] of Object.entries(outside)) {
      assert.equal(await Deno.readLink(join(work, "kept", at)), target, at);
    }
    for (const rel of await listTree(join(work, "kept"))) {
      const st = await Deno.lstat(join(work, "kept", rel));
      if (st.isFile) assert.equal(await Deno.readTextFile(join(work, "kept", rel)), "fine\n");
    }
    assert.equal(await Deno.readTextFile(join(work, "outside.txt")), secret, "outside untouched");
  });
});

Deno.test("folders: link targets are data: any target is stored as given, never made a filesystem link", async () => {
  const client = await connectClient(S);
  try {
    await client.mkdir("links");
    for (const target of ["/etc/passwd", "../../x", "../..", "a\\..\\..\\x", "dangling"]) {
      await client.symlink("links/l", target, true);
      assert.ok(!(await Deno.lstat(join(S.root, "links/l"))).isSymlink, target);
      const e = (await client.tree("links")).find((x) => x.name === "links/l");
      assert.equal(e?.type, "symlink", target);
      assert.equal(e?.target, target);
      await assert.rejects(
        client.download("links/l", join(S.dir, "never")),
        /links\/l is a link on the server; links are never followed/,
        target,
      );
    }
    for (const target of ["", "a\x00b", "new\nline", "x".repeat(4097)]) {
      await assert.rejects(client.symlink("links/bad", target), /refusing link links\/bad/, target);
    }
    assert.equal(await Deno.lstat(join(S.root, "links/bad")).catch(() => null), null);
  } finally {
    await client.close();
  }
});

// ---------------------------------------------------------------------------
// A hostile server

/**
 * A scripted server offering folder `base` as `entries` (file contents from
 * `files`, else "x"). Answers `tree`, `ls` (the top folder) and `get`.
 */
async function hostileServer(
  entries: Partial<FileInfo>[],
  files: Record<string, string> = {},
): Promise<FakeServer> {
  return await startFakeServer(async (ch: SecureChannel) => {
    while (true) {
      const req = await ch.recvMessageOrClose();
      if (req === null) return;
      const now = Date.now();
      if (req.op === "tree") {
        const full = entries.map((e) => ({ size: 0, mode: 0o644, mtime: now, ...e }));
        await ch.sendMessage({ ok: true, entries: full, more: false });
      } else if (req.op === "ls") {
        const top = { name: req.pattern, type: "dir", size: 0, mode: 0o755, mtime: now };
        await ch.sendMessage({ ok: true, entries: [top], more: false });
      } else if (req.op === "get") {
        const data = enc.encode(files[String(req.name)] ?? "x");
        await ch.sendMessage({ ok: true, size: data.length, mode: 0o644, mtime: now, offset: 0 });
        await ch.sendStream((async function* () {
          yield data;
        })());
        const sha256 = createHash("sha256").update(data).digest("hex");
        await ch.sendMessage({ ok: true, sha256, bytes: data.length });
      } else {
        await ch.sendMessage({ ok: false, code: "bad-request", message: "not scripted" });
      }
    }
  });
}

/** `efx download -r base -o <work>/dl` against `fake`; the folder `<work>/dl`. */
async function hostileDownload(fake: FakeServer, work: string): Promise<EfxResult> {
  return await efx(["download", "-r", "base", "-o", "dl", ...clientArgs(fake)], { cwd: work });
}

/** Asserts that nothing but `dl` (and `keep`) exists in `work`, and nothing inside `outside`. */
async function assertContained(work: string, keep: string[] = []): Promise<void> {
  const top = (await listTree(work)).filter((p) => !p.includes("/"));
  assert.deepEqual(top.filter((p) => p !== "dl" && !keep.includes(p)), [], "written outside dl");
}

Deno.test("folders: a hostile server's names with .., empty parts or outside the folder are refused", async () => {
  const cases: [string, Partial<FileInfo>[], RegExp][] = [
    ["dot-dot", [{ name: "base/../escaped.txt", type: "file" }], /unsafe name/],
    ["deep dot-dot", [{ name: "base/a/../../escaped.txt", type: "file" }], /unsafe name/],
    ["empty part", [{ name: "base//escaped.txt", type: "file" }], /unsafe name/],
    ["dot", [{ name: "base/./x", type: "file" }], /unsafe name/],
    ["backslash", [{ name: "base/..\\escaped.txt", type: "file" }], /unsafe name/],
    ["other folder", [{ name: "other/escaped.txt", type: "file" }], /outside base/],
    ["prefix trick", [{ name: "base-evil/escaped.txt", type: "file" }], /outside base/],
    ["absolute", [{ name: "/tmp/escaped.txt", type: "file" }], /outside base/],
    ["not a string", [{ name: 42 as unknown as string, type: "file" }], /outside base/],
  ];
  for (const [what, entries, re] of cases) {
    const fake = await hostileServer(entries);
    try {
      await withWork(async (work) => {
        const r = await hostileDownload(fake, work);
        assertExit(r, 1, what);
        assert.match(r.stderr, re, what);
        await assertContained(work);
        assert.deepEqual(await listTree(join(work, "dl")), [], what);
      });
    } finally {
      await fake.close();
    }
  }
});

Deno.test("folders: a hostile server's links leading out of the folder are skipped, not created", async () => {
  const fake = await hostileServer([
    { name: "base/abs", type: "symlink", target: "/etc/passwd" },
    { name: "base/sub", type: "dir", mode: 0o755 },
    { name: "base/sub/up2", type: "symlink", target: "../../outside.txt" },
    { name: "base/up", type: "symlink", target: ".." },
    { name: "base/weird", type: "symlink", target: "x\\..\\..\\y" },
    { name: "base/notarget", type: "symlink" },
    { name: "base/ok", type: "symlink", target: "sub" },
    { name: "base/sub/ok2", type: "symlink", target: "../ok" },
  ]);
  try {
    await withWork(async (work) => {
      const r = await hostileDownload(fake, work);
      assertExit(r, 0, "download");
      for (const n of ["abs", "sub/up2", "up", "weird", "notarget"]) {
        assert.match(
          r.stderr,
          new RegExp(`skipping base/${n}: a link that leads outside the folder`),
          n,
        );
      }
      assert.match(r.stdout, /2 links, 5 skipped/);
      assert.deepEqual(await listTree(join(work, "dl")), ["ok", "sub", "sub/ok2"]);
      await assertContained(work);
    });
  } finally {
    await fake.close();
  }
});

Deno.test("folders: a hostile server cannot write through a link out of the target folder", async () => {
  const fake = await hostileServer([
    // A local link planted before the download (or an escaping link the server made us create).
    { name: "base/planted", type: "dir" },
    { name: "base/planted/pwned.txt", type: "file" },
  ], { "base/planted/pwned.txt": "pwned\n" });
  try {
    await withWork(async (work) => {
      await Deno.mkdir(join(work, "victim"));
      // `-o dl` names an existing folder: the tree lands in dl/base.
      await Deno.mkdir(join(work, "dl/base"), { recursive: true });
      await Deno.symlink("../../victim", join(work, "dl/base/planted"));
      const r = await hostileDownload(fake, work);
      assertExit(r, 1, "download");
      assert.match(r.stderr, /refusing to write .*pwned\.txt: it would land outside dl\/base/);
      assert.deepEqual(await listTree(join(work, "victim")), []);
      await assertContained(work, ["victim"]);
    });
  } finally {
    await fake.close();
  }
  // The same through a chain of two links that each look inside on their own.
  const chain = await hostileServer([
    { name: "base/sub", type: "dir" },
    { name: "base/sub/lnk", type: "symlink", target: ".." },
    { name: "base/z", type: "symlink", target: "sub/lnk/.." },
    { name: "base/z/pwned.txt", type: "file" },
  ], { "base/z/pwned.txt": "pwned\n" });
  try {
    await withWork(async (work) => {
      const r = await hostileDownload(chain, work);
      assertExit(r, 1, "download through a link chain");
      assert.match(r.stderr, /refusing to write .*pwned\.txt: it would land outside dl/);
      assert.equal(await Deno.lstat(join(work, "pwned.txt")).catch(() => null), null);
    });
  } finally {
    await chain.close();
  }
});

Deno.test({
  // Regression (fixed bug): linkStaysInside (client, downloadTree) and Storage.symlink (server)
  // check a link target only lexically, one link at a time. Two links that
  // each look inside compose into one that leads out: "sub/lnk" -> ".."
  // (lexically the tree's top) and then "z" -> "sub/lnk/.." (lexically
  // "sub"), which the OS resolves as <top>/.. = the folder ABOVE the target.
  // A hostile server can so plant, in the user's download folder, a link to
  // its parent (writes through it are refused by the realPath check, see the
  // test above, but the link stays for the user or other tools to follow).
  // Likewise an uploader can create such a link in the server's storage
  // (never followed by efx, which checks realPath on every access).
  name: "folders: no link created by download -r resolves outside the target folder",
  fn: async () => {
    const chain = await hostileServer([
      { name: "base/sub", type: "dir" },
      { name: "base/sub/lnk", type: "symlink", target: ".." },
      { name: "base/z", type: "symlink", target: "sub/lnk/.." },
    ]);
    try {
      await withWork(async (work) => {
        await hostileDownload(chain, work);
        const top = await Deno.realPath(join(work, "dl"));
        for (const rel of await listTree(join(work, "dl"))) {
          const real = await Deno.realPath(join(work, "dl", rel)).catch(() => null);
          if (real === null) continue;
          assert.ok(
            !relative(top, real).startsWith(".."),
            `dl/${rel} resolves to ${real}, outside ${top}`,
          );
        }
      });
    } finally {
      await chain.close();
    }
  },
});

Deno.test("folders: a link chain out of the server's root is never followed by the server", async () => {
  const client = await connectClient(S);
  const work = await makeWorkDir("efx-folders-work-");
  try {
    await client.mkdir("chain/sub");
    await client.symlink("chain/sub/lnk", "..");
    // Lexically "chain"; as filesystem links, <root>/chain/sub/lnk/../.. would be above the root.
    await client.symlink("chain/z", "sub/lnk/../..");
    // Both are stored as data: no filesystem link exists to follow.
    assert.ok(!(await Deno.lstat(join(S.root, "chain/z"))).isSymlink);
    assert.ok(!(await Deno.lstat(join(S.root, "chain/sub/lnk"))).isSymlink);
    // <root>/../keys/server.pub.pem exists (the test server's folder): never served.
    await assert.rejects(
      client.download("chain/z/keys/server.pub.pem", join(work, "x")),
      /chain\/z is a link on the server, and links are never followed/,
    );
    await Deno.writeTextFile(join(work, "y"), "y");
    await assert.rejects(
      client.upload(join(work, "y"), "chain/z/planted.txt"),
      /chain\/z is a link on the server, and links are never followed/,
    );
    await assert.rejects(
      client.upload(join(work, "y"), "chain/sub/lnk/planted.txt"),
      /is a link on the server/,
    );
    assert.equal(await Deno.lstat(join(S.root, "../planted.txt")).catch(() => null), null);
    assert.equal(await Deno.lstat(join(S.root, "chain/planted.txt")).catch(() => null), null);
    const entry = (await client.tree("chain")).find((e) => e.name === "chain/z");
    assert.equal(entry?.type, "symlink");
    assert.equal(entry?.target, "sub/lnk/../..");
  } finally {
    await Deno.remove(work, { recursive: true });
    await client.close();
  }
});

Deno.test({
  // Regression (fixed bug): parseRequest reads mkdir's mtime with uint() (non-negative
  // integers only) while put accepts any finite mtime, and downloads accept
  // pre-1970 times too. `upload -r` of a tree with a folder last modified
  // before 1970 therefore fails with "malformed request: mtime must be a
  // non-negative integer" (exit 1) when it applies folder metadata, and the
  // remaining folders keep neither their mode nor their mtime.
  name: "folders: a folder with a pre-1970 mtime goes up and comes back",
  fn: async () => {
    await withWork(async (work) => {
      await Deno.mkdir(join(work, "old/sub"), { recursive: true });
      await Deno.writeTextFile(join(work, "old/sub/f.txt"), "x");
      await Deno.utime(join(work, "old/sub/f.txt"), new Date(), new Date(-400 * 86_400_000));
      await Deno.utime(join(work, "old/sub"), new Date(), new Date(-365 * 86_400_000));
      await Deno.chmod(join(work, "old"), 0o750);
      const up = await efx(["upload", "-r", "old", ...clientArgs(S)], { cwd: work });
      assertExit(up, 0, "upload -r");
      await assertSameTree(join(work, "old"), join(S.root, "old"));
    });
  },
});

Deno.test("folders: linkStaysInside (relative path of the link, its text)", () => {
  const inside: [string, string][] = [
    ["a", "b"],
    ["a", "."],
    ["a", "./b/c"],
    ["d/a", "../b"],
    ["d/a", ".."],
    ["d/e/a", "../../b"],
    ["d/a", "../d/../b"],
    ["a", "ünï ✓"],
  ];
  const outside: [string, string][] = [
    ["a", ".."],
    ["a", "../b"],
    ["d/a", "../../b"],
    ["d/a", "../.."],
    ["a", "b/../../c"],
    ["a", "/etc/passwd"],
    ["a", "/"],
    ["a", ""],
    ["a", "b\\..\\..\\c"],
    ["a", "b\0"],
    ["d/e/a", "../../../x"],
  ];
  for (const [at, target] of inside) {
    assert.equal(linkStaysInside(at, target), true, `${at} -> ${target}`);
  }
  for (const [at, target] of outside) {
    assert.equal(linkStaysInside(at, target), false, `${at} -> ${target}`);
  }
});

Deno.test("folders: the shared server logged no internal error and stops cleanly", async () => {
  try {
    assert.doesNotMatch(S.stderr(), /internal error/);
  } finally {
    assert.equal((await S.stop()).code, 0);
  }
});
