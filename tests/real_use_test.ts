/**
 * Real use: ordinary commands, typed the way people type them, work the
 * first time. The real CLI runs as subprocesses against a real `efx serve`
 * on loopback, with real files.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/real_use_test.ts
 */
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  assertExit,
  assertSameFile,
  clientArgs,
  efx,
  listTree,
  makeWorkDir,
  randomFile,
  sha256,
  sha256File,
  spawnEfx,
  startServer,
  tempFilesIn,
  type TestServer,
  waitFor,
} from "./helpers/server.ts";
import { widthOf } from "../src/progress.ts";

const S: TestServer = await startServer();
const PROJECT = dirname(dirname(fileURLToPath(import.meta.url)));

async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await makeWorkDir("efx-real-use-");
  try {
    await fn(work);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

/** `n` random bytes (getRandomValues gives at most 64 KiB per call). */
function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let o = 0; o < n; o += 65536) {
    crypto.getRandomValues(out.subarray(o, Math.min(n, o + 65536)));
  }
  return out;
}

/** Removes everything from the shared server's storage. */
async function emptyStorage(): Promise<void> {
  for await (const e of Deno.readDir(S.root)) {
    await Deno.remove(join(S.root, e.name), { recursive: true });
  }
}

// ---- 1: one request owns the channel at a time ----

Deno.test("upload: a file over 1 MiB followed by other files, in one command", async () => {
  await withWork(async (work) => {
    const big = join(work, "big5MB.bin");
    const small = join(work, "small.bin");
    const iso = join(work, "b.iso");
    await randomFile(big, 5 * 1024 * 1024);
    await randomFile(small, 1000);
    await randomFile(iso, 3 * 1024 * 1024 + 7);
    const r = await efx(["upload", big, small, iso, ...clientArgs(S)]);
    assertExit(r, 0, "upload big5MB.bin small.bin b.iso");
    assert.doesNotMatch(r.stderr, /integrity|unknown type/);
    for (const f of [big, small, iso]) await assertSameFile(join(S.root, f.slice(work.length)), f);
    assert.match(r.stdout, /^total: 3 files, /m, "a total line after several files");
    await emptyStorage();
  });
});

Deno.test("upload --resume with several small files, and -r with a folder then files", async () => {
  await withWork(async (work) => {
    const tiny1 = join(work, "tiny1");
    const tiny2 = join(work, "tiny2");
    await Deno.writeTextFile(tiny1, "one\n");
    await Deno.writeTextFile(tiny2, "two\n");
    const r = await efx(["upload", "--resume", tiny1, tiny2, ...clientArgs(S)]);
    assertExit(r, 0, "upload --resume tiny1 tiny2");
    await assertSameFile(join(S.root, "tiny1"), tiny1);
    await assertSameFile(join(S.root, "tiny2"), tiny2);

    const tree = join(work, "tree");
    await Deno.mkdir(join(tree, "sub"), { recursive: true });
    await randomFile(join(tree, "sub", "inner.bin"), 2 * 1024 * 1024);
    await Deno.writeTextFile(join(tree, "a.txt"), "a\n");
    const big = join(work, "big");
    await randomFile(big, 1536 * 1024);
    const r2 = await efx(["upload", "-r", tree, big, tiny1, "-f", ...clientArgs(S)]);
    assertExit(r2, 0, "upload -r tree big tiny1");
    await assertSameFile(join(S.root, "tree", "sub", "inner.bin"), join(tree, "sub", "inner.bin"));
    await assertSameFile(join(S.root, "tree", "a.txt"), join(tree, "a.txt"));
    await assertSameFile(join(S.root, "big"), big);
    await assertSameFile(join(S.root, "tiny1"), tiny1);
    const staging = ".efx-tmp-partial"; // the server's folder of resumable uploads
    assert.deepEqual((await tempFilesIn(S.root)).filter((p) => p !== staging), []);
    await emptyStorage();
  });
});

// ---- 2: `deno task efx` works on the user's folder ----

/** Runs `deno task --config <project>/deno.json efx ...args` in `cwd`. */
async function denoTaskEfx(cwd: string, args: string[]) {
  // A fresh environment: `deno task test` sets INIT_CWD for this process,
  // and an inner `deno task` keeps an INIT_CWD it inherits.
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const k of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"]) {
    const val = Deno.env.get(k);
    if (val !== undefined) env[k] = val;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", "--config", join(PROJECT, "deno.json"), "efx", ...args],
    cwd,
    clearEnv: true,
    env,
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: null,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

Deno.test("deno task efx: relative paths are the user's, not the project's", async () => {
  await withWork(async (work) => {
    const sub = join(work, "sub");
    await Deno.mkdir(sub);
    await Deno.writeTextFile(join(sub, "one"), "the user's file\n");
    const up = await denoTaskEfx(sub, ["upload", "one", ...clientArgs(S)]);
    assertExit(up, 0, "deno task efx upload one (from a subfolder)");
    await assertSameFile(join(S.root, "one"), join(sub, "one"));
    const down = await denoTaskEfx(sub, ["download", "one", "-o", "got", ...clientArgs(S)]);
    assertExit(down, 0, "deno task efx download one -o got");
    await assertSameFile(join(sub, "got"), join(sub, "one"));
    await assert.rejects(Deno.lstat(join(PROJECT, "got")), Deno.errors.NotFound);
    await emptyStorage();
  });
});

Deno.test("deno task install: an `efx` command with the client's permissions, usable anywhere", async () => {
  await withWork(async (work) => {
    const root = join(work, "install-root");
    const env: Record<string, string> = { NO_COLOR: "1", DENO_INSTALL_ROOT: root };
    for (const k of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"]) {
      const val = Deno.env.get(k);
      if (val !== undefined) env[k] = val;
    }
    const inst = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "--config", join(PROJECT, "deno.json"), "install"],
      cwd: work,
      clearEnv: true,
      env,
      stdin: "null",
    }).output();
    assert.equal(inst.code, 0, new TextDecoder().decode(inst.stderr));
    const bin = join(root, "bin", "efx");
    const script = await Deno.readTextFile(bin);
    assert.match(script, /--allow-env=HOME,EFX_SERVER,EFX_HOME,EFX_DEBUG,INIT_CWD /);
    assert.doesNotMatch(script, /--allow-all|-A |--allow-run/, "no more than the client needs");
    await Deno.writeTextFile(join(work, "installed.txt"), "via the installed command\n");
    const up = await new Deno.Command(bin, {
      args: ["upload", "installed.txt", ...clientArgs(S)],
      cwd: work,
      clearEnv: true,
      env,
      stdin: "null",
    }).output();
    assert.equal(up.code, 0, new TextDecoder().decode(up.stderr));
    await assertSameFile(join(S.root, "installed.txt"), join(work, "installed.txt"));
    await emptyStorage();
  });
});

// ---- 3: -o DIR/, -o -, upload - ----

Deno.test("download -o newdir/ makes the folder; -o - writes to stdout; upload - reads stdin", async () => {
  await withWork(async (work) => {
    const data = randomBytes(300_000);
    await Deno.writeFile(join(work, "f.bin"), data);
    assertExit(await efx(["upload", join(work, "f.bin"), "-q", ...clientArgs(S)]), 0);

    const d = await efx(["download", "f.bin", "-o", "newdir/", ...clientArgs(S)], { cwd: work });
    assertExit(d, 0, "download -o newdir/");
    assert.ok((await Deno.stat(join(work, "newdir"))).isDirectory, "newdir is a folder");
    await assertSameFile(join(work, "newdir", "f.bin"), data);

    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        join(PROJECT, "main.ts"),
        "download",
        "f.bin",
        "-o",
        "-",
        ...clientArgs(S),
      ],
      cwd: work,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
    assert.equal(run.stdout.length, data.length, "stdout carries exactly the file");
    assert.equal(sha256(run.stdout), sha256(data));
    assert.deepEqual(await listTree(work), ["f.bin", "newdir", "newdir/f.bin"], "no file '-'");
    // Two NAMEs to stdout: both files, in order; every line (total included) on stderr.
    const two = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        join(PROJECT, "main.ts"),
        "download",
        "f.bin",
        "f.bin",
        "-o",
        "-",
        ...clientArgs(S),
      ],
      cwd: work,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const twoErr = new TextDecoder().decode(two.stderr);
    assert.equal(two.code, 0, twoErr);
    assert.equal(two.stdout.length, 2 * data.length);
    assert.equal(sha256(two.stdout.subarray(data.length)), sha256(data));
    assert.match(twoErr, /^total: 2 files, /m);

    const piped = randomBytes(2 * 1024 * 1024 + 3);
    const up = await efx(["upload", "-", "--as", "from-stdin.bin", ...clientArgs(S)], {
      stdin: piped,
    });
    assertExit(up, 0, "upload - --as NAME");
    await assertSameFile(join(S.root, "from-stdin.bin"), piped);
    const noName = await efx(["upload", "-", ...clientArgs(S)], { stdin: "x" });
    assertExit(noName, 2, "upload - without --as");
    assert.match(noName.stderr, /--as NAME/);
    await emptyStorage();
  });
});

// ---- 4 and 5: interruptions ----

const BIG = 200 * 1000 * 1000;

/** Starts downloading a 200 MB file into `work/dl`; resolves once data flows. */
async function startBigDownload(work: string) {
  const local = join(work, "big.bin");
  if (!(await Deno.stat(join(S.root, "big.bin")).catch(() => null))) {
    await randomFile(local, BIG);
    assertExit(await efx(["upload", local, "-q", ...clientArgs(S)]), 0);
    await Deno.remove(local);
  }
  const dl = join(work, "dl");
  await Deno.mkdir(dl, { recursive: true });
  const run = spawnEfx(["download", "big.bin", ...clientArgs(S)], { cwd: dl });
  let finished = false;
  run.result.then(() => finished = true, () => finished = true);
  await waitFor(async () => {
    if (finished) throw new Error("the download ended before it could be interrupted");
    const t = await tempFilesIn(dl);
    const st = t.length ? await Deno.stat(join(dl, t[0])).catch(() => null) : null;
    return st !== null && st.size > 4 * 1024 * 1024;
  }, { timeoutMs: 20_000, intervalMs: 2, what: "the download's temp file to grow" });
  return { run, dl };
}

Deno.test("Ctrl-C or SIGTERM mid-download: one line 'efx: interrupted', exit 130/143, no temp", async () => {
  try {
    await withWork(async (work) => {
      for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
        const { run, dl } = await startBigDownload(work);
        run.proc.kill(sig);
        const r = await run.result;
        assertExit(r, code, `after ${sig}`);
        assert.equal(r.stderr, "efx: interrupted\n", `${sig}: exactly one line`);
        assert.deepEqual(await listTree(dl), [], `${sig}: nothing left in the folder`);
        await Deno.remove(dl, { recursive: true });
      }
    });
  } finally {
    await emptyStorage();
  }
});

Deno.test("kill -9 mid-download: the next efx run in that folder removes the temp file", async () => {
  try {
    await withWork(async (work) => {
      const { run, dl } = await startBigDownload(work);
      run.proc.kill("SIGKILL");
      assert.equal((await run.result).signal, "SIGKILL");
      assert.equal((await tempFilesIn(dl)).length, 1, "the killed download left its temp");
      const ls = await efx(["ls", "-q", ...clientArgs(S)], { cwd: dl });
      assertExit(ls, 0, "ls in the folder");
      assert.deepEqual(await listTree(dl), [], "temp of the killed download removed at once");
    });
  } finally {
    await emptyStorage();
  }
});

Deno.test("a live download's temp file survives an efx run in the same folder", async () => {
  try {
    await withWork(async (work) => {
      const { run, dl } = await startBigDownload(work);
      const before = await tempFilesIn(dl);
      assertExit(await efx(["ls", "-q", ...clientArgs(S)], { cwd: dl }), 0);
      const r = await run.result;
      assertExit(r, 0, "the live download");
      assert.equal(before.length, 1);
      assert.deepEqual(await listTree(dl), ["big.bin"]);
      assert.equal(
        await sha256File(join(dl, "big.bin")),
        await sha256File(join(S.root, "big.bin")),
      );
    });
  } finally {
    await emptyStorage();
  }
});

// ---- 6: output ----

/** Single-quotes `s` for sh. */
const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * Runs the CLI with stdout on a real pseudo-terminal (`script` from
 * util-linux) and stderr discarded; returns exit code and the terminal's text.
 */
async function efxOnTerminal(args: string[], cwd: string) {
  const cmd = [Deno.execPath(), "run", "-A", join(PROJECT, "main.ts"), ...args].map(shq).join(" ");
  const out = await new Deno.Command("script", {
    args: ["-qfec", `${cmd} 2>/dev/null`, "/dev/null"],
    cwd,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, text: new TextDecoder().decode(out.stdout).replaceAll("\r\n", "\n") };
}

Deno.test("summary lines fit 80 columns on a terminal (full hash with -v or piped); total line; ls -l -h", async () => {
  await withWork(async (work) => {
    const long = "a-rather-long-file-name-that-people-do-use-for-reports-2024-final-v2.pdf";
    const wide = "日本語のファイル名と絵文字🎉.txt";
    await randomFile(join(work, long), 5000);
    await Deno.writeTextFile(join(work, wide), "wide\n");
    const r = await efxOnTerminal(["upload", long, wide, ...clientArgs(S)], work);
    assert.equal(r.code, 0, r.text);
    const lines = r.text.trimEnd().split("\n");
    assert.equal(lines.length, 3, r.text);
    for (const l of lines) assert.ok(widthOf(l) <= 80, `${widthOf(l)} columns: ${l}`);
    assert.match(
      lines[0],
      /^a-rather-.*….*\.pdf: uploaded 4\.9 KiB in .*, sha256 [0-9a-f]{12}…$/,
    );
    // 32 columns of name (wide characters count twice) do not fit beside the rest.
    assert.match(lines[1], /^日本語.*….*🎉\.txt: uploaded 5 B in /);
    assert.match(lines[2], /^total: 2 files, 4\.9 KiB in /);
    assert.doesNotMatch(r.text, /[0-9a-f]{64}/, "no full hash without -v");
    const verbose = await efxOnTerminal(["upload", long, "-f", "-v", ...clientArgs(S)], work);
    assert.equal(verbose.code, 0, verbose.text);
    assert.match(verbose.text, new RegExp(`^${long}: uploaded .*sha256 [0-9a-f]{64}$`, "m"));

    const sha = await sha256File(join(work, long));
    const v = await efx(["upload", long, "-f", "-v", ...clientArgs(S)], { cwd: work });
    assertExit(v, 0);
    assert.match(v.stdout, new RegExp(`${long}: uploaded .*sha256 ${sha}$`, "m"));

    const tree = join(work, "t");
    await Deno.mkdir(tree);
    await randomFile(join(tree, "data.bin"), 3 * 1024 * 1024);
    await Deno.symlink("data.bin", join(tree, "link"));
    assertExit(await efx(["upload", "-r", tree, "-q", ...clientArgs(S)]), 0);
    const ls = await efx(["ls", "-lh", "-r", ...clientArgs(S)]);
    assertExit(ls, 0, "ls -l -h");
    assert.match(ls.stdout, /^-rw\S+ +3\.0 MiB \d{4}-\d\d-\d\d \d\d:\d\d t\/data\.bin$/m);
    assert.match(ls.stdout, /^l\S+ +.* t\/link -> data\.bin$/m);
    const mtime = (await Deno.stat(join(work, long))).mtime!;
    const p = (n: number) => String(n).padStart(2, "0");
    const local = `${mtime.getFullYear()}-${p(mtime.getMonth() + 1)}-${p(mtime.getDate())} ` +
      `${p(mtime.getHours())}:${p(mtime.getMinutes())}`;
    const plain = await efx(["ls", "a-rather*", ...clientArgs(S)]);
    assert.match(plain.stdout, new RegExp(`^-rw\\S+ +5000 ${local} a-rather`, "m"), "local time");
    await emptyStorage();
  });
});

// ---- 7: help ----

Deno.test("help: every command and option is described", async () => {
  const help = await efx(["help"]);
  assertExit(help, 0);
  for (
    const word of ["--version", "--resume", "-r", "-o PATH", "--as NAME", "-l", "-h", "shell"]
  ) {
    assert.ok(help.stdout.includes(word), `efx help mentions ${word}`);
  }
  const expect: Record<string, string[]> = {
    upload: [
      "--as",
      "--force",
      "--resume",
      "--recursive",
      "--help",
      "standard input",
      "--server",
      "--quiet",
    ],
    download: ["--output", "--force", "--resume", "--recursive", "--help", "'-'", "--identity"],
    ls: ["--long", "--human", "--recursive", "--help", "PATTERN"],
    rm: ["NAME", "--help", "--verbose"],
    shell: ["put", "get", "reput", "reget", "ls", "rm", "quit"],
  };
  for (const [cmd, words] of Object.entries(expect)) {
    const r = await efx([cmd, "--help"]);
    assertExit(r, 0, `${cmd} --help`);
    for (const w of words) assert.ok(r.stdout.includes(w), `${cmd} --help mentions ${w}`);
  }
});

Deno.test("real use: stop the shared server", async () => {
  await S.stop();
});
