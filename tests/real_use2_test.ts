/**
 * Real use, part 2: remote folders and names, links as links, the prompt as
 * an sftp-class shell, re-running a tree. Every test drives the real CLI
 * against a real server started under the serve task's permissions.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { lutimes } from "node:fs/promises";
import {
  assertExit,
  assertSameFile,
  CLI_PERMISSIONS,
  clientArgs,
  connectClient,
  efx,
  listTree,
  MAIN_TS,
  makeWorkDir,
  randomFile,
  startServer,
  type TestServer,
} from "./helpers/server.ts";
import { completeLine, resolveRemote, ShellSession } from "../src/shell.ts";
import { excluder } from "../src/folders.ts";

const S = await startServer({ perms: "serve-task" });

async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await makeWorkDir("efx-ru2-");
  try {
    await fn(work);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

async function emptyStorage(server: TestServer = S): Promise<void> {
  for await (const e of Deno.readDir(server.root)) {
    if (e.name.startsWith(".efx-")) continue;
    await Deno.remove(join(server.root, e.name), { recursive: true });
  }
}

const run = (args: string[], cwd: string, server: TestServer = S) =>
  efx([...args, ...clientArgs(server)], { cwd });

/** The name column (and link target) of every listing line. */
function names(stdout: string): string[] {
  return stdout.split("\n").filter((l) => /^[-dl][rwx-]{9} /.test(l)).map((l) =>
    l.split(/\s+/).slice(4).join(" ")
  );
}

// ---- 1: remote folders and names ----

Deno.test("upload FILE... DIR/ and --to DIR land in a remote folder; download 'PATTERN' -o DIR/ fetches the matches", async () => {
  await withWork(async (work) => {
    for (const n of ["a.txt", "b.txt", "c.log"]) await randomFile(join(work, n), 1000);
    const up = await run(["upload", "a.txt", "b.txt", "c.log", "docs/2024/"], work);
    assertExit(up, 0, "upload into DIR/");
    assert.deepEqual(await listTree(join(S.root, "docs")), [
      "2024",
      "2024/a.txt",
      "2024/b.txt",
      "2024/c.log",
    ]);
    assertExit(await run(["upload", "a.txt", "--to", "other"], work), 0, "--to");
    await assertSameFile(join(S.root, "other/a.txt"), join(work, "a.txt"));
    // With -r, a last name ending in '/' that is a local folder is uploaded (Tab writes it so).
    await Deno.mkdir(join(work, "loc1"));
    await Deno.mkdir(join(work, "loc2"));
    await Deno.writeTextFile(join(work, "loc2/in.txt"), "in");
    assertExit(await run(["upload", "-r", "loc1/", "loc2/"], work), 0, "-r folders/");
    assert.equal(await Deno.readTextFile(join(S.root, "loc2/in.txt")), "in");
    assert.ok((await Deno.stat(join(S.root, "loc1"))).isDirectory);
    assertExit(await run(["upload", "-r", "loc2", "newdir/"], work), 0, "-r into DIR/");
    assert.equal(await Deno.readTextFile(join(S.root, "newdir/loc2/in.txt")), "in");
    const usage = await run(["upload", "a.txt", "--as", "x", "--to", "d"], work);
    assertExit(usage, 2, "--as with --to");

    const down = await run(["download", "docs/2024/*.txt", "-o", "got/"], work);
    assertExit(down, 0, "download pattern");
    assert.deepEqual(await listTree(join(work, "got")), ["a.txt", "b.txt"]);
    await assertSameFile(join(work, "got/b.txt"), join(work, "b.txt"));
    const none = await run(["download", "docs/*.nothing", "-o", "got/"], work);
    assertExit(none, 1, "no match");
    assert.match(none.stderr, /^efx: no file on the server matches docs\/\*\.nothing$/m);
    // Several names need a folder for -o.
    const notDir = await run(["download", "docs/2024/a.txt", "other/a.txt", "-o", "f"], work);
    assertExit(notDir, 2);
    await emptyStorage();
  });
});

Deno.test("mkdir, rmdir, rm -r and mv [-f] work on the server; ls DIR lists its contents, ls -r DIR its tree", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(join(work, "f.txt"), "one");
    await Deno.writeTextFile(join(work, "g.txt"), "two");
    assertExit(await run(["mkdir", "m/n/o", "empty"], work), 0, "mkdir");
    assert.ok((await Deno.stat(join(S.root, "m/n/o"))).isDirectory);
    assertExit(await run(["upload", "f.txt", "g.txt", "m/n/"], work), 0);

    const ls = await run(["ls", "m/n"], work);
    assertExit(ls, 0, "ls m/n");
    assert.deepEqual(names(ls.stdout), ["m/n/f.txt", "m/n/g.txt", "m/n/o/"]);
    const lsr = await run(["ls", "-r", "m"], work);
    assert.deepEqual(names(lsr.stdout), ["m/n/", "m/n/f.txt", "m/n/g.txt", "m/n/o/"]);
    const one = await run(["ls", "m/n/f.txt"], work);
    assert.deepEqual(names(one.stdout), ["m/n/f.txt"]);

    // mv: one step on the server; refuses to replace without -f.
    const ino = (await Deno.stat(join(S.root, "m/n/f.txt"))).ino;
    const mv = await run(["mv", "m/n/f.txt", "m/renamed.txt"], work);
    assertExit(mv, 0, "mv");
    assert.equal((await Deno.stat(join(S.root, "m/renamed.txt"))).ino, ino, "renamed, not copied");
    const clash = await run(["mv", "m/n/g.txt", "m/renamed.txt"], work);
    assertExit(clash, 1, "mv onto a file");
    assert.equal(clash.stderr.trim().split("\n").length, 1, clash.stderr);
    assertExit(await run(["mv", "-f", "m/n/g.txt", "m/renamed.txt"], work), 0, "mv -f");
    assert.equal(await Deno.readTextFile(join(S.root, "m/renamed.txt")), "two");
    assertExit(await run(["mv", "m/renamed.txt", "empty/"], work), 0, "mv into DIR/");
    assert.equal(await Deno.readTextFile(join(S.root, "empty/renamed.txt")), "two");

    const full = await run(["rmdir", "m"], work);
    assertExit(full, 1, "rmdir of a full folder");
    assert.match(full.stderr, /^efx: m is not empty/m);
    assertExit(await run(["rmdir", "m/n/o"], work), 0, "rmdir");
    const plain = await run(["rm", "m"], work);
    assertExit(plain, 1, "rm of a folder without -r");
    assertExit(await run(["rm", "-r", "m"], work), 0, "rm -r");
    assert.deepEqual(await listTree(S.root).then((l) => l.filter((p) => !p.startsWith(".efx"))), [
      "empty",
      "empty/renamed.txt",
    ]);
    await emptyStorage();
  });
});

Deno.test("a read-only server refuses mkdir, rmdir, rm -r, mv and uploads into folders with one line each", async () => {
  const ro = await startServer({ perms: "serve-task", args: ["--read-only"] });
  try {
    await withWork(async (work) => {
      await Deno.mkdir(join(ro.root, "d"));
      await Deno.writeTextFile(join(work, "f.txt"), "x");
      await Deno.mkdir(join(work, "tree/sub"), { recursive: true });
      await Deno.writeTextFile(join(work, "tree/sub/x"), "x");
      for (
        const args of [
          ["mkdir", "new"],
          ["rmdir", "d"],
          ["rm", "-r", "d"],
          ["mv", "d", "e"],
          ["upload", "f.txt", "d/"],
          ["upload", "-r", "tree", "--to", "d"],
        ]
      ) {
        const r = await run(args, work, ro);
        assertExit(r, 1, args.join(" "));
        const lines = r.stderr.trim().split("\n");
        assert.equal(lines.length, 1, `${args.join(" ")}: ${r.stderr}`);
        assert.match(lines[0], /^efx: .*not permitted.*read-only/, args.join(" "));
      }
      assert.deepEqual(
        await listTree(ro.root).then((l) => l.filter((p) => !p.startsWith(".efx"))),
        [
          "d",
        ],
      );
    });
  } finally {
    await ro.stop();
  }
});

// ---- 2: links as links ----

Deno.test("links round-trip as links: dangling and absolute ones with --keep-links, with their mtimes; ls shows '-> target'", async () => {
  await withWork(async (work) => {
    const src = join(work, "L");
    await Deno.mkdir(join(src, "sub"), { recursive: true });
    await Deno.writeTextFile(join(src, "sub/file"), "data");
    const links: Record<string, string> = {
      "dangling": "does/not/exist",
      "absolute": "/etc/hostname",
      "sub/inside": "file",
      "sub/up": "../dangling",
    };
    const old = new Date("2011-02-03T04:05:06.789Z");
    for (const [at, target] of Object.entries(links)) {
      await Deno.symlink(target, join(src, at));
      await lutimes(join(src, at), old, old);
    }
    assertExit(await run(["upload", "-r", "L"], work), 0, "upload -r");
    const c = await connectClient(S);
    try {
      const tree = await c.tree("L");
      for (const [at, target] of Object.entries(links)) {
        const e = tree.find((x) => x.name === `L/${at}`);
        assert.equal(e?.type, "symlink", at);
        assert.equal(e?.target, target, at);
        assert.equal(e?.mtime, old.getTime(), `${at}: mtime sent with the link`);
      }
    } finally {
      await c.close();
    }
    const ls = await run(["ls", "-r", "L"], work);
    assert.ok(ls.stdout.includes(" L/dangling -> does/not/exist\n"), ls.stdout);
    assert.ok(ls.stdout.includes(" L/absolute -> /etc/hostname\n"), ls.stdout);

    // Without --keep-links: only the absolute link is left out (the dangling ones stay inside).
    const d1 = await run(["download", "-r", "L", "-o", "d1"], work);
    assertExit(d1, 0, "download -r");
    assert.match(d1.stderr, /skipping L\/absolute: a link that leads outside the folder/);
    assert.deepEqual(await listTree(join(work, "d1")), [
      "dangling",
      "sub",
      "sub/file",
      "sub/inside",
      "sub/up",
    ]);
    const d2 = await run(["download", "-r", "L", "-o", "d2", "--keep-links"], work);
    assertExit(d2, 0, "download -r --keep-links");
    for (const [at, target] of Object.entries(links)) {
      const p = join(work, "d2", at);
      assert.equal(await Deno.readLink(p), target, at);
      const st = await Deno.lstat(p);
      assert.ok(st.isSymlink, at);
      assert.equal(st.mtime?.getTime(), old.getTime(), `${at}: the link's own mtime`);
    }
    await emptyStorage();
  });
});

// ---- 3: the prompt ----

Deno.test("prompt: cd/pwd, lcd/lpwd/lls, mkdir, rmdir, rename, rm -r, and put/get with several names and wildcards", async () => {
  await withWork(async (work) => {
    await Deno.mkdir(join(work, "src"));
    await Deno.mkdir(join(work, "dst"));
    for (const n of ["p1.txt", "p2.txt", "q.bin"]) await randomFile(join(work, "src", n), 2000);
    const script = [
      "pwd",
      "mkdir proj/a",
      "cd proj",
      "pwd",
      "lcd src",
      "lpwd",
      "lls",
      "put *.txt a/",
      "put q.bin",
      "put p1.txt renamed1.txt",
      "cd a",
      "ls",
      "get ../q.bin /proj/a/p* " + JSON.stringify(join(work, "dst")) + "/",
      "rename p2.txt ../moved.txt",
      "cd ..",
      "ls",
      "mkdir gone",
      "rmdir gone",
      "rm -r a",
      "rm q.bin",
      "cd /",
      "ls -r",
      "quit",
    ].join("\n") + "\n";
    const r = await efx(["shell", ...clientArgs(S)], { cwd: work, stdin: script });
    assertExit(r, 0, "shell");
    const out = r.stdout.split("\n");
    assert.equal(out[0], "/");
    assert.ok(out.includes("/proj"), r.stdout);
    assert.ok(out.includes(join(work, "src")), "lpwd shows the new local folder");
    assert.ok(out.some((l) => / q\.bin$/.test(l)), "lls lists the local folder");
    assert.match(r.stdout, /^proj\/a\/p1\.txt: uploaded/m);
    assert.match(r.stdout, /^proj\/a\/p2\.txt: uploaded/m);
    assert.match(r.stdout, /^proj\/q\.bin: uploaded/m);
    assert.match(r.stdout, /^proj\/renamed1\.txt: uploaded/m, "put LOCAL REMOTE keeps its meaning");
    assert.match(r.stdout, /^renamed proj\/a\/p2\.txt to proj\/moved\.txt$/m);
    assert.match(r.stdout, /^made folder proj\/gone$/m);
    assert.match(r.stdout, /^removed folder proj\/gone$/m);
    assert.match(r.stdout, /^removed proj\/a$/m);
    assert.deepEqual(await listTree(join(work, "dst")), ["p1.txt", "p2.txt", "q.bin"]);
    await assertSameFile(join(work, "dst/q.bin"), join(work, "src/q.bin"));
    await assertSameFile(join(work, "dst/p2.txt"), join(work, "src/p2.txt"));
    // What is left (the last ls -r).
    const last = names(r.stdout).slice(-3);
    assert.deepEqual(last, ["proj/", "proj/moved.txt", "proj/renamed1.txt"]);
    assert.equal(r.stderr, "");
    // Going above the top is refused on the client, with one line.
    const up = await efx(["shell", ...clientArgs(S)], { cwd: work, stdin: "cd ..\ncd nope\n" });
    assertExit(up, 2);
    assert.match(up.stderr, /^efx: \.\.: above the top folder of the server$/m);
    assert.match(up.stderr, /^efx: nope: no such folder on the server$/m);
    await emptyStorage();
  });
});

Deno.test("prompt: Tab completes remote names of the remote folder (cached briefly)", async () => {
  await withWork(async (work) => {
    await Deno.mkdir(join(S.root, "tabdir/inner"), { recursive: true });
    await Deno.writeTextFile(join(S.root, "tabdir/report-2024.pdf"), "x");
    await Deno.writeTextFile(join(S.root, "tabdir/report-2025.pdf"), "x");
    await Deno.writeTextFile(join(S.root, "top.txt"), "x");
    await Deno.writeTextFile(join(work, "local-only.txt"), "x");
    const client = await connectClient(S);
    const ui = { quiet: true, verbose: false, out: () => {}, err: () => {} };
    const session = new ShellSession(client, () => connectClient(S), ui);
    try {
      assert.deepEqual(await completeLine("get to", session), [["top.txt "], "to"]);
      assert.deepEqual(await completeLine("cd tab", session), [["tabdir/"], "tab"]);
      assert.deepEqual(await completeLine("get tabdir/rep", session), [
        ["tabdir/report-2024.pdf ", "tabdir/report-2025.pdf "],
        "tabdir/rep",
      ]);
      session.cwd = "tabdir";
      assert.deepEqual(await completeLine("rm in", session), [["inner/"], "in"]);
      assert.deepEqual(await completeLine("ls ../to", session), [["../top.txt "], "../to"]);
      // Cached: a file added now is not offered until the cache is forgotten.
      await Deno.writeTextFile(join(S.root, "tabdir/info.txt"), "x");
      assert.deepEqual(await completeLine("rm in", session), [["inner/"], "in"]);
      session.forget();
      assert.deepEqual(await completeLine("rm in", session), [["info.txt ", "inner/"], "in"]);
      // put completes local names, not remote ones.
      const cwd = Deno.cwd();
      Deno.chdir(work);
      try {
        assert.deepEqual(await completeLine("put local", session), [["local-only.txt "], "local"]);
      } finally {
        Deno.chdir(cwd);
      }
      assert.equal(resolveRemote("a/b", "../c"), "a/c");
      assert.equal(resolveRemote("a/b", "/x/./y"), "x/y");
    } finally {
      await session.client?.close();
    }
    await emptyStorage();
  });
});

/** Runs the prompt from a pipe, feeding `lines` with `pauseMs` of silence between them. */
async function slowShell(
  server: TestServer,
  extra: string[],
  lines: string[],
  pauseMs: number,
  cwd: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", ...CLI_PERMISSIONS, MAIN_TS, "shell", ...extra, ...clientArgs(server)],
    cwd,
    env: { NO_COLOR: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = proc.stdin.getWriter();
  for (const [i, line] of lines.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, pauseMs));
    await w.write(new TextEncoder().encode(line + "\n"));
  }
  await w.close();
  const out = await proc.output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

Deno.test("prompt: the session stays alive when idle (keepalive under the server's idle timeout), and a lost one reconnects saying so", async () => {
  const idle = await startServer({ perms: "serve-task", args: ["--idle-timeout", "2"] });
  try {
    await withWork(async (work) => {
      await Deno.writeTextFile(join(idle.root, "here.txt"), "x");
      const kept = await slowShell(idle, ["--keepalive", "0.5"], ["ls", "ls", "quit"], 4500, work);
      assert.equal(kept.code, 0, kept.stderr);
      assert.equal(names(kept.stdout).filter((n) => n === "here.txt").length, 2, kept.stdout);
      assert.equal(kept.stderr, "", "no reconnect was needed");
      // Without keepalive the server drops the idle connection; the next command
      // reconnects first, says so, and runs.
      const lost = await slowShell(idle, ["--keepalive", "0"], ["ls", "ls", "quit"], 4500, work);
      assert.equal(lost.code, 0, lost.stderr);
      assert.equal(names(lost.stdout).filter((n) => n === "here.txt").length, 2, lost.stdout);
      assert.match(
        lost.stderr,
        /^efx: the connection was lost while idle \(.*timed out.*\); reconnected$/m,
      );
      assert.equal(lost.stderr.trim().split("\n").length, 1, lost.stderr);
    });
  } finally {
    await idle.stop();
  }
});

// ---- 4: re-running a tree ----

Deno.test("upload -r / download -r --update skip what matches; --checksum compares SHA-256; --dry-run moves nothing; --exclude; the summary counts", async () => {
  await withWork(async (work) => {
    const src = join(work, "site");
    await Deno.mkdir(join(src, "css"), { recursive: true });
    await Deno.mkdir(join(src, "node_modules/x"), { recursive: true });
    await randomFile(join(src, "index.html"), 5000);
    await randomFile(join(src, "css/a.css"), 300);
    await randomFile(join(src, "big.bin"), 1_500_000);
    await randomFile(join(src, "node_modules/x/lib.js"), 100);
    await Deno.writeTextFile(join(src, "debug.log"), "log");
    await Deno.symlink("index.html", join(src, "home.html"));
    const ex = ["--exclude", "node_modules", "--exclude", "*.log"];

    const first = await run(["upload", "-r", "site", ...ex], work);
    assertExit(first, 0, "first upload");
    assert.match(first.stdout, /: 3 files, 2 folders, 1 links, 2 excluded, /);
    assert.deepEqual(await listTree(join(S.root, "site")), [
      "big.bin",
      "css",
      "css/a.css",
      "home.html",
      "index.html",
    ]);
    // Nothing changed: everything is unchanged, nothing is sent.
    const again = await run(["upload", "-r", "site", "--update", ...ex], work);
    assertExit(again, 0, "--update");
    assert.match(again.stdout, /: 0 files, 2 folders, 0 links, 4 unchanged, 2 excluded, 0 B /);
    assert.doesNotMatch(again.stdout, /uploaded [0-9.]+ [KM]?i?B in/);
    // A changed file (same size, same mtime: only --checksum sees it) and a new one.
    const idx = join(src, "index.html");
    const st = await Deno.stat(idx);
    const bytes = await Deno.readFile(idx);
    bytes[0] ^= 0xff;
    await Deno.writeFile(idx, bytes);
    await Deno.utime(idx, st.atime!, st.mtime!);
    await Deno.writeTextFile(join(src, "css/new.css"), "body{}");
    const upd = await run(["upload", "-r", "site", "--update", ...ex], work);
    assert.match(upd.stdout, /: 1 files, 2 folders, 0 links, 4 unchanged, 2 excluded, /);
    assert.notEqual(
      (await Deno.readFile(join(S.root, "site/index.html")))[0],
      bytes[0],
      "--update trusts size and mtime",
    );
    const dry = await run(["upload", "-r", "site", "--checksum", "--dry-run", ...ex], work);
    assertExit(dry, 0, "--dry-run");
    assert.match(
      dry.stdout,
      /^would upload .*site\/index\.html as site\/index\.html \(5000 bytes\)$/m,
    );
    assert.match(
      dry.stdout,
      /^would upload site as site: 1 files, 2 folders, 0 links, 4 unchanged/m,
    );
    const sum = await run(["upload", "-r", "site", "--checksum", ...ex], work);
    assertExit(sum, 0, "--checksum");
    assert.match(sum.stdout, /: 1 files, 2 folders, 0 links, 4 unchanged, 2 excluded, /);
    await assertSameFile(join(S.root, "site/index.html"), idx);

    // Download side.
    const d1 = await run(["download", "-r", "site", "-o", "back/"], work);
    assertExit(d1, 0, "download");
    assert.match(d1.stdout, /: 4 files, 2 folders, 1 links, /);
    const d2 = await run(["download", "-r", "site", "-o", "back/", "--update"], work);
    assert.match(d2.stdout, /: 0 files, 2 folders, 0 links, 5 unchanged, /);
    // Change one local file behind efx's back, same size and mtime: --checksum finds it.
    const mine = join(work, "back/site/css/a.css");
    const mst = await Deno.stat(mine);
    await Deno.writeFile(mine, new Uint8Array(300));
    await Deno.utime(mine, mst.atime!, mst.mtime!);
    const d3 = await run(
      ["download", "-r", "site", "-o", "back/", "--checksum", "--dry-run"],
      work,
    );
    assert.match(d3.stdout, /^would download site\/css\/a\.css to .*\(300 bytes\)$/m);
    assert.match(d3.stdout, /: 1 files, 2 folders, 0 links, 4 unchanged, /);
    const d4 = await run(["download", "-r", "site", "-o", "back/", "--checksum"], work);
    assertExit(d4, 0, "download --checksum");
    assert.match(d4.stdout, /: 1 files, 2 folders, 0 links, 4 unchanged, /);
    await assertSameFile(mine, join(S.root, "site/css/a.css"));
    const d5 = await run(["download", "-r", "site", "-o", "back2/", "--exclude", "css/*"], work);
    assert.match(d5.stdout, /: 2 files, 2 folders, 1 links, 2 excluded, /);

    // A refusal for one entry is counted; the rest goes on; exit 1.
    await Deno.mkdir(join(S.root, "site/blocked.txt"));
    await Deno.writeTextFile(join(src, "blocked.txt"), "a file where the server has a folder");
    await Deno.writeTextFile(join(src, "zzz.txt"), "after the refusal");
    const ref = await run(["upload", "-r", "site", "--update", ...ex], work);
    assertExit(ref, 1, "refused entry");
    assert.match(ref.stdout, /: 1 files, 2 folders, 0 links, 5 unchanged, 2 excluded, 1 refused, /);
    assert.match(ref.stderr, /blocked\.txt/);
    assert.equal(await Deno.readTextFile(join(S.root, "site/zzz.txt")), "after the refusal");
    // Flags of re-runs go with -r only.
    assertExit(await run(["upload", "x", "--update"], work), 2);
    await emptyStorage();
  });
});

Deno.test("--exclude patterns: base names without '/', relative paths with it", () => {
  const ex = excluder(["*.log", "build/", "docs/*.tmp"]);
  assert.equal(ex("a.log"), true);
  assert.equal(ex("deep/er/b.log"), true);
  assert.equal(ex("build"), true);
  assert.equal(ex("src/build"), true);
  assert.equal(ex("docs/x.tmp"), true);
  assert.equal(ex("other/docs/x.tmp"), false);
  assert.equal(ex("docs/sub/x.tmp"), false);
  assert.equal(ex("main.ts"), false);
});

Deno.test("help: the new commands and options are described", async () => {
  const help = await efx(["help"]);
  assertExit(help, 0);
  for (const w of ["efx mkdir", "efx rmdir", "efx mv", "--to DIR", "--update", "--checksum"]) {
    assert.ok(help.stdout.includes(w), `efx help mentions ${w}`);
  }
  for (const w of ["--dry-run", "--exclude", "--keep-links", "--keepalive", "rm [-r]"]) {
    assert.ok(help.stdout.includes(w), `efx help mentions ${w}`);
  }
  const expect: Record<string, string[]> = {
    upload: ["DIR/", "--to", "--update", "--checksum", "--dry-run", "--exclude"],
    download: [
      "a pattern with",
      "--keep-links",
      "--update",
      "--checksum",
      "--dry-run",
      "--exclude",
    ],
    ls: ["a folder: its contents", "-> target"],
    rm: ["--recursive"],
    mkdir: ["DIR"],
    rmdir: ["empty folder"],
    mv: ["--force", "one step"],
    shell: ["cd [DIR]", "lcd", "lls", "mkdir", "rmdir", "rename", "rm [-r]", "--keepalive"],
  };
  for (const [cmd, words] of Object.entries(expect)) {
    const r = await efx([cmd, "--help"]);
    assertExit(r, 0, `${cmd} --help`);
    for (const w of words) assert.ok(r.stdout.includes(w), `${cmd} --help mentions ${w}`);
  }
});

Deno.test("real use 2: stop the shared server", async () => {
  const status = await S.stop();
  assert.equal(status.code, 0, S.stderr());
  assert.doesNotMatch(S.stderr(), /internal error/);
});
