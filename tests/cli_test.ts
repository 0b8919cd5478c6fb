/**
 * End-to-end tests of the command line: exit codes (0 ok, 1 transfer/remote
 * error, 2 usage, 3 trust/auth), trust on first use, keygen/fingerprint, the
 * interactive prompt driven through stdin, and the `ls` listing. The real CLI
 * runs as subprocesses against a real `efx serve` subprocess on loopback.
 *
 * Every run goes through the harness's `efx()`, which fails the test when
 * stderr holds a stack trace: the CLI must never show one.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/cli_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  assertExit,
  assertSameFile,
  clientArgs,
  efx,
  type EfxResult,
  freePort,
  listTree,
  MAIN_TS,
  makeWorkDir,
  randomFile,
  sha256File,
  STACK_LINE,
  startServer,
  tempFilesIn,
  type TestServer,
  waitFor,
} from "./helpers/server.ts";

/** The server shared by the tests of this file; stopped by the last test. */
const S: TestServer = await startServer();

const addr = () => `127.0.0.1:${S.port}`;

async function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  const work = await makeWorkDir("efx-cli-work-");
  try {
    await fn(work);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

/** Asserts exit `code` with exactly one `efx: ...` line on stderr matching `re`. */
function assertOneLineError(r: EfxResult, code: number, re: RegExp, what: string): void {
  assertExit(r, code, what);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `${what}: want one stderr line, got:\n${r.stderr}`);
  assert.match(lines[0], /^efx: /, what);
  assert.match(lines[0], re, what);
}

/** A syntactically valid fingerprint of no real key. */
function otherFingerprint(): string {
  const b = crypto.getRandomValues(new Uint8Array(32));
  return "SHA256:" + btoa(String.fromCharCode(...b)).replace(/=+$/, "");
}

// ---- exit code 0 ----

Deno.test("exit 0: help, --version, a successful upload/download/rm", async () => {
  const help = await efx(["help"]);
  assertExit(help, 0);
  assert.match(help.stdout, /usage:/);
  assert.match(help.stdout, /Exit codes: 0 ok, 1 .*, 2 usage error, 3 trust/);
  const version = await efx(["--version"]);
  assertExit(version, 0);
  assert.match(version.stdout, /^efx \d+\.\d+\.\d+/);
  for (const cmd of ["upload", "download", "ls", "rm", "serve", "keygen", "fingerprint"]) {
    const r = await efx([cmd, "--help"]);
    assertExit(r, 0, `${cmd} --help`);
    assert.match(r.stdout, /usage: efx/, `${cmd} --help`);
  }
  await withWork(async (work) => {
    const f = join(work, "cli-ok.txt");
    await Deno.writeTextFile(f, "ok\n");
    const up = await efx(["upload", f, ...clientArgs(S)]);
    assertExit(up, 0);
    assert.equal(up.stderr, "");
    await assertSameFile(join(S.root, "cli-ok.txt"), f);
    const down = await efx([
      "download",
      "cli-ok.txt",
      "-o",
      join(work, "back.txt"),
      "-q",
      ...clientArgs(S),
    ]);
    assertExit(down, 0);
    assert.equal(down.stdout, "", "--quiet prints nothing");
    await assertSameFile(join(work, "back.txt"), f);
    const rm = await efx(["rm", "cli-ok.txt", ...clientArgs(S)]);
    assertExit(rm, 0);
    assert.match(rm.stdout, /removed cli-ok\.txt/);
    await assert.rejects(Deno.lstat(join(S.root, "cli-ok.txt")), Deno.errors.NotFound);
  });
});

// ---- exit code 1 ----

Deno.test("exit 1: remote errors and an unreachable server", async () => {
  await withWork(async (work) => {
    const missing = await efx(["download", "cli-missing.txt", ...clientArgs(S)], { cwd: work });
    assertOneLineError(missing, 1, /no such file.*cli-missing\.txt/, "download missing");
    assert.deepEqual(await listTree(work), []);

    const rm = await efx(["rm", "cli-missing.txt", ...clientArgs(S)]);
    assertOneLineError(rm, 1, /no such file/, "rm missing");

    const port = freePort();
    const refused = await efx([
      "ls",
      "--server",
      `127.0.0.1:${port}`,
      "--server-key",
      S.pubKeyPath,
    ]);
    assertOneLineError(
      refused,
      1,
      /cannot connect to 127\.0\.0\.1:\d+: connection refused/,
      "refused",
    );

    // Several files, one failing: the others still go, the exit code is 1.
    const good = join(work, "cli-multi-ok.txt");
    await Deno.writeTextFile(good, "fine\n");
    const multi = await efx(["upload", join(work, "nope.txt"), good, ...clientArgs(S)]);
    assertExit(multi, 1);
    assert.match(multi.stderr, /nope\.txt: no such file/);
    await assertSameFile(join(S.root, "cli-multi-ok.txt"), good);
  });
});

// ---- exit code 2 ----

Deno.test("exit 2: usage errors, with one clear line and before any connection", async () => {
  await withWork(async (work) => {
    const f = join(work, "u.txt");
    await Deno.writeTextFile(f, "u\n");
    const notPem = join(work, "not-a-key.pem");
    await Deno.writeTextFile(notPem, "hello\n");
    const pinned = ["--server-key", S.pubKeyPath];
    const cases: [string, string[], RegExp][] = [
      ["unknown flag", ["upload", f, "--bogus", ...clientArgs(S)], /upload: .*bogus/],
      ["unknown short flag", ["download", "x", "-Z", ...clientArgs(S)], /download: .*-Z/],
      ["upload without FILE", ["upload", ...clientArgs(S)], /upload: name at least one FILE/],
      ["download without NAME", ["download", ...clientArgs(S)], /download: name at least one/],
      ["rm without NAME", ["rm", ...clientArgs(S)], /rm: name at least one NAME/],
      ["ls with two patterns", ["ls", "a", "b", ...clientArgs(S)], /at most one PATTERN/],
      [
        "--as with 2 files",
        ["upload", f, f, "--as", "x", ...clientArgs(S)],
        /--as works with a single/,
      ],
      [
        "-o not a folder for several names",
        ["download", "a", "b", "-o", join(work, "nowhere"), ...clientArgs(S)],
        /must be an existing folder/,
      ],
      [
        "bad --server (port)",
        ["upload", f, "--server", "127.0.0.1:http", ...pinned],
        /bad server address/,
      ],
      [
        "bad --server (range)",
        ["upload", f, "--server", "127.0.0.1:70000", ...pinned],
        /bad server address/,
      ],
      [
        "bad --server (no host)",
        ["upload", f, "--server", ":9000", ...pinned],
        /bad server address/,
      ],
      ["bad EFX_SERVER", ["ls", ...pinned], /bad server address/],
      ["unknown subcommand", ["frobnicate"], /unknown command 'frobnicate'/],
      ["unknown flag for the prompt", ["--bogus"], /bogus/],
      [
        "bad --handshake-timeout",
        ["ls", "--handshake-timeout", "0", ...clientArgs(S)],
        /--handshake-timeout/,
      ],
      [
        "malformed --fingerprint",
        ["ls", "--server", addr(), "--fingerprint", "SHA256:nope"],
        /fingerprint/,
      ],
      ["missing --server-key file", [
        "ls",
        "--server",
        addr(),
        "--server-key",
        join(work, "no.pem"),
      ], /no\.pem/],
      [
        "--server-key not a key",
        ["ls", "--server", addr(), "--server-key", notPem],
        /not-a-key\.pem/,
      ],
      ["serve bad --port", ["serve", "--port", "abc"], /--port/],
      ["serve extra argument", ["serve", "extra"], /unexpected argument 'extra'/],
      ["keygen --bits 1024", ["keygen", "--bits", "1024", "--out", join(work, "k1")], /--bits/],
      ["keygen --bits 2048x", ["keygen", "--bits", "2048x", "--out", join(work, "k2")], /--bits/],
      ["fingerprint without FILE", ["fingerprint"], /fingerprint: give exactly one key file/],
      ["fingerprint missing file", ["fingerprint", join(work, "missing.pem")], /missing\.pem/],
      ["fingerprint not PEM", ["fingerprint", notPem], /not-a-key\.pem/],
    ];
    for (const [what, args, re] of cases) {
      const env: Record<string, string> = what === "bad EFX_SERVER" ? { EFX_SERVER: "x:y:z" } : {};
      const r = await efx(args, { cwd: work, env });
      assertOneLineError(r, 2, re, what);
    }
    // No keys were written by the refused keygen runs.
    assert.deepEqual(await listTree(work), ["not-a-key.pem", "u.txt"]);
    // Nothing reached the server: usage errors are found before connecting.
    assert.doesNotMatch(S.stderr(), /put "u\.txt"/);
  });
});

// ---- exit code 3 ----

Deno.test("exit 3: wrong pinned key, unknown server from a non-TTY, changed key", async () => {
  await withWork(async (work) => {
    const f = join(work, "cli-trust.txt");
    await Deno.writeTextFile(f, "trust me\n");
    const known = join(work, "known_servers");
    const stored = join(S.root, "cli-trust.txt");

    // Wrong --fingerprint.
    const fp = otherFingerprint();
    const wrongFp = await efx(["upload", f, "--server", addr(), "--fingerprint", fp]);
    assertOneLineError(
      wrongFp,
      3,
      /server key mismatch: expected .*, server presented/,
      "fingerprint",
    );
    assert.match(wrongFp.stderr, new RegExp(S.fingerprint.replace(/[+/]/g, "\\$&")));

    // --server-key of another (real) key.
    const kg = await efx(["keygen", "--bits", "2048", "--out", join(work, "other")]);
    assertExit(kg, 0);
    const wrongKey = await efx([
      "upload",
      f,
      "--server",
      addr(),
      "--server-key",
      join(work, "other", "server.pub.pem"),
    ]);
    assertOneLineError(wrongKey, 3, /server key mismatch/, "server-key");

    // Unknown server, no --accept-new, stdin not a terminal: refused, nothing recorded.
    const unknown = await efx(["upload", f, "--server", addr(), "--known-servers", known]);
    assertOneLineError(unknown, 3, /unknown server 127\.0\.0\.1:\d+ .*--accept-new/, "unknown");
    await assert.rejects(Deno.lstat(known), Deno.errors.NotFound);
    // Even with "yes" on a piped stdin: only a terminal may answer.
    const piped = await efx(["upload", f, "--server", addr(), "--known-servers", known], {
      stdin: "yes\n",
    });
    assertExit(piped, 3, "unknown, piped yes");
    await assert.rejects(Deno.lstat(stored), Deno.errors.NotFound, "uploaded despite no trust");

    // --accept-new records it; later runs trust it without the flag.
    const accepted = await efx([
      "upload",
      f,
      "--server",
      addr(),
      "--known-servers",
      known,
      "--accept-new",
    ]);
    assertExit(accepted, 0);
    assert.match(accepted.stderr, /Permanently added/);
    // The server showed protocol v2 (forward secrecy): the line carries the fs note.
    assert.equal(await Deno.readTextFile(known), `${addr()} ${S.fingerprint} fs\n`);
    await assertSameFile(stored, f);
    const again = await efx(["ls", "cli-trust.txt", "--server", addr(), "--known-servers", known]);
    assertExit(again, 0);
    assert.match(again.stdout, /cli-trust\.txt$/m);

    // The recorded key changed: refused with the warning, nothing uploaded.
    const changedFile = join(work, "known_changed");
    await Deno.writeTextFile(changedFile, `# test\n${addr()} ${otherFingerprint()}\n`);
    const before = await Deno.readTextFile(changedFile);
    const changed = await efx([
      "upload",
      f,
      "--as",
      "cli-trust-changed.txt",
      "--server",
      addr(),
      "--known-servers",
      changedFile,
      "--accept-new", // never overrides a changed key
    ]);
    assertExit(changed, 3);
    assert.match(changed.stderr, /WARNING: SERVER KEY HAS CHANGED/);
    assert.match(changed.stderr, /^efx: server key for 127\.0\.0\.1:\d+ has changed/m);
    assert.equal(await Deno.readTextFile(changedFile), before, "known-servers file changed");
    await assert.rejects(Deno.lstat(join(S.root, "cli-trust-changed.txt")), Deno.errors.NotFound);
  });
});

// ---- keygen / fingerprint ----

Deno.test("keygen into a temp folder, then fingerprint prints the same fingerprint", async () => {
  await withWork(async (work) => {
    const dir = join(work, "keys");
    const kg = await efx(["keygen", "--bits", "2048", "--out", dir]);
    assertExit(kg, 0);
    const lines = kg.stdout.trim().split("\n");
    const printed = lines[lines.length - 1];
    assert.match(printed, /^SHA256:[A-Za-z0-9+/]{43}$/);
    const priv = join(dir, "server.key.pem");
    const pub = join(dir, "server.pub.pem");
    assert.equal((await Deno.stat(priv)).mode! & 0o777, 0o600);
    assert.match(await Deno.readTextFile(pub), /^-----BEGIN PUBLIC KEY-----/);
    for (const file of [pub, priv]) {
      const r = await efx(["fingerprint", file]);
      assertExit(r, 0, `fingerprint ${file}`);
      assert.equal(r.stdout.trim(), printed, file);
    }
    // Existing keys are not overwritten without --force.
    const privBefore = await sha256File(priv);
    const again = await efx(["keygen", "--bits", "2048", "--out", dir]);
    assertOneLineError(again, 2, /already exists.*--force/, "keygen again");
    assert.equal(await sha256File(priv), privBefore);
    // --client writes client.*.pem next to them.
    assertExit(await efx(["keygen", "--bits", "2048", "--out", dir, "--client"]), 0);
    assert.deepEqual((await listTree(dir)).sort(), [
      "client.key.pem",
      "client.pub.pem",
      "server.key.pem",
      "server.pub.pem",
    ]);

    // The shared server's key: fingerprint matches what `serve` logged.
    const logged = S.stderr().match(/server key fingerprint: (SHA256:\S+)/)?.[1];
    assert.equal(logged, S.fingerprint);
    const srv = await efx(["fingerprint", S.pubKeyPath]);
    assertExit(srv, 0);
    assert.equal(srv.stdout.trim(), S.fingerprint);
  });
});

Deno.test("the no-stack-trace check is real: EFX_DEBUG=1 does show one", async () => {
  const plain = await efx([
    "download",
    "cli-missing-2.txt",
    "-o",
    "/nonexistent/x",
    ...clientArgs(S),
  ]);
  assertExit(plain, 1);
  assert.doesNotMatch(plain.stderr, STACK_LINE);
  const debug = await efx(["fingerprint", "/nonexistent/key.pem"], {
    env: { EFX_DEBUG: "1" },
    allowStackTrace: true,
  });
  assertExit(debug, 2);
  assert.match(debug.stderr, STACK_LINE, "EFX_DEBUG=1 should print the stack");
});

// ---- the interactive prompt through stdin ----

Deno.test("interactive prompt: put, ls, get, a bogus command, help, rm, quit", async () => {
  await withWork(async (work) => {
    const put = join(work, "sh-put.txt");
    const sha = await randomFile(put, 10_000);
    await Deno.writeTextFile(join(work, "sh space.txt"), "spaces\n");
    const script = [
      "put sh-put.txt",
      "ls sh*",
      "get sh-put.txt sh-got.txt",
      "bogus-command arg",
      "help",
      "get sh-put.txt sh-got.txt", // exists locally now: refused, prompt goes on
      'put "sh space.txt" "sh remote name.txt"',
      "rm sh-put.txt",
      "ls sh*",
      "quit",
      "put sh-put.txt sh-after-quit.txt",
      "",
    ].join("\n");
    const r = await efx(["shell", ...clientArgs(S)], { cwd: work, stdin: script });
    // Non-interactive runs report the first error's exit code (2: the bogus command).
    assertExit(r, 2, "shell");
    assert.match(r.stdout, new RegExp(`^sh-put\\.txt: uploaded .*sha256 ${sha}$`, "m"));
    assert.match(r.stdout, /^-rw\S+ +10000 \d{4}-\d\d-\d\d \d\d:\d\d sh-put\.txt$/m);
    assert.match(r.stdout, new RegExp(`^sh-got\\.txt: downloaded .*sha256 ${sha}$`, "m"));
    assert.match(r.stdout, /^commands:$/m);
    assert.match(r.stdout, /^ {2}put LOCAL \[REMOTE\]/m);
    assert.match(r.stdout, /^removed sh-put\.txt$/m);
    assert.match(r.stdout, /^sh remote name\.txt: uploaded/m);
    // The second ls shows the renamed upload but not the removed file.
    const listings = r.stdout.split("\n").filter((l) => /^[-dl][rwx-]{9} /.test(l));
    assert.equal(listings.length, 2, r.stdout);
    assert.match(listings[1], / sh remote name\.txt$/);
    const errors = r.stderr.trimEnd().split("\n");
    assert.equal(errors.length, 2, r.stderr);
    assert.match(errors[0], /^efx: unknown command 'bogus-command' \(type 'help'\)$/);
    assert.match(errors[1], /^efx: sh-got\.txt already exists .*--force/);

    await assertSameFile(join(work, "sh-got.txt"), put);
    await assert.rejects(Deno.lstat(join(S.root, "sh-put.txt")), Deno.errors.NotFound);
    await assertSameFile(join(S.root, "sh remote name.txt"), join(work, "sh space.txt"));
    await assert.rejects(Deno.lstat(join(S.root, "sh-after-quit.txt")), Deno.errors.NotFound);
    assert.deepEqual(await tempFilesIn(work), []);

    // `efx` alone is the prompt too; end of input ends it; a clean session exits 0.
    const clean = await efx([...clientArgs(S)], { cwd: work, stdin: "ls sh*\nhelp\n" });
    assertExit(clean, 0);
    assert.match(clean.stdout, / sh remote name\.txt$/m);
    // A remote error makes a non-interactive session exit 1.
    const remote = await efx(["shell", ...clientArgs(S)], {
      cwd: work,
      stdin: "get sh-nope.txt\nls sh*\n",
    });
    assertExit(remote, 1);
    assert.match(remote.stderr, /^efx: no such file.*sh-nope\.txt$/m);
    assert.match(remote.stdout, / sh remote name\.txt$/m, "ls after the error still ran");
  });
});

// ---- ls output ----

Deno.test("ls shows mode, size, mtime and name; ls PATTERN filters", async () => {
  await withWork(async (work) => {
    const a = join(work, "lsx-a.txt");
    await Deno.writeTextFile(a, "hello");
    await Deno.chmod(a, 0o640);
    await Deno.utime(a, new Date(), new Date("2021-03-04T05:06:07Z"));
    const b = join(work, "lsx-b.bin");
    await randomFile(b, 1234);
    await Deno.chmod(b, 0o755);
    await Deno.utime(b, new Date(), new Date("2022-11-12T13:14:15Z"));
    const c = join(work, "c.txt");
    await Deno.writeTextFile(c, "ccc");
    await Deno.utime(c, new Date(), new Date("2023-01-02T03:04:05Z"));
    assertExit(await efx(["upload", a, b, ...clientArgs(S)]), 0);
    assertExit(await efx(["upload", c, "--as", "lsx-dir/c.txt", ...clientArgs(S)]), 0);

    const ls = async (...args: string[]) => {
      const r = await efx(["ls", ...args, ...clientArgs(S)]);
      assertExit(r, 0, `ls ${args.join(" ")}`);
      return r.stdout.split("\n").filter((l) => l !== "");
    };
    const lineA = "-rw-r-----            5 2021-03-04 05:06 lsx-a.txt";
    const lineB = "-rwxr-xr-x         1234 2022-11-12 13:14 lsx-b.bin";
    const lines = await ls("lsx-*");
    assert.equal(lines.length, 3, lines.join("\n"));
    assert.equal(lines[0], lineA);
    assert.equal(lines[1], lineB);
    assert.match(lines[2], /^drwx[rwx-]{6} +0 \d{4}-\d\d-\d\d \d\d:\d\d lsx-dir\/$/);

    assert.deepEqual(await ls("lsx-*.txt"), [lineA]);
    assert.deepEqual(await ls("lsx-?.bin"), [lineB]);
    assert.deepEqual(await ls("lsx-dir/*"), [
      "-rw-r--r--            3 2023-01-02 03:04 lsx-dir/c.txt",
    ]);
    assert.deepEqual(await ls("-r", "c.txt"), [
      "-rw-r--r--            3 2023-01-02 03:04 lsx-dir/c.txt",
    ]);
    assert.deepEqual(await ls("nomatch-*"), []);
    assert.deepEqual(await ls("lsx-a.txx"), []);
    const all = await ls();
    assert.ok(all.includes(lineA) && all.includes(lineB), all.join("\n"));
    assert.ok(!all.some((l) => l.endsWith("lsx-dir/c.txt")), "no pattern: top level only");

    // A hostile name (made on the server's disk) cannot send escape sequences.
    await Deno.writeTextFile(join(S.root, "lsx-evil\x1b[2J\x07name"), "x");
    const evil = await ls("lsx-evil*");
    assert.equal(evil.length, 1);
    assert.match(evil[0], / lsx-evil\?\[2J\?name$/);
    assert.ok(!evil.join("").includes("\x1b"), "ESC reached the terminal");

    // Listings longer than one reply batch (1000) arrive whole and sorted.
    const many = join(S.root, "lsmany");
    await Deno.mkdir(many);
    for (let i = 0; i < 2500; i++) {
      await Deno.writeFile(join(many, `f${String(i).padStart(4, "0")}`), new Uint8Array(0));
    }
    const big = await ls("lsmany/*");
    assert.equal(big.length, 2500);
    assert.match(big[0], / lsmany\/f0000$/);
    assert.match(big[2499], / lsmany\/f2499$/);
  });
});

// ---- the prompt on a real terminal ----

/**
 * The CLI on a real pseudo-terminal (`script` from util-linux): keys are
 * written to its input, everything the terminal shows is collected.
 */
function onPty(args: string[], cwd: string) {
  const q = (w: string) => `'${w.replaceAll("'", `'\\''`)}'`;
  const cmd = ["exec", Deno.execPath(), "run", "-A", MAIN_TS, ...args].map((w, i) =>
    i === 0 ? w : q(w)
  ).join(" ");
  const proc = new Deno.Command("script", {
    args: ["-qfec", cmd, "/dev/null"],
    cwd,
    env: { NO_COLOR: "1", TERM: "xterm" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let screen = "";
  const reading = (async () => {
    for await (const chunk of proc.stdout.pipeThrough(new TextDecoderStream())) screen += chunk;
  })();
  const keys = proc.stdin.getWriter();
  return {
    screen: () => screen,
    /** Types `text` (control characters included). */
    type: (text: string) => keys.write(new TextEncoder().encode(text)),
    /** Waits until the terminal shows `re` after position `from`; returns the new position. */
    async expect(re: RegExp, from = 0, timeoutMs = 20_000): Promise<number> {
      await waitFor(() => {
        const m = re.exec(screen.slice(from));
        return m ? true : false;
      }, { timeoutMs, what: () => `${re} on the terminal; it shows:\n${screen.slice(from)}` });
      const m = re.exec(screen.slice(from))!;
      return from + m.index + m[0].length;
    },
    async end(): Promise<Deno.CommandStatus> {
      await keys.close().catch(() => {});
      const status = await proc.status;
      await reading;
      await proc.stderr.cancel();
      return status;
    },
    kill: () => {
      try {
        proc.kill("SIGKILL");
      } catch { /* already ended */ }
    },
  };
}

Deno.test("prompt on a terminal: Tab completes, arrows recall history, Ctrl-C cancels only the transfer, Ctrl-D quits", async () => {
  await withWork(async (work) => {
    await Deno.writeTextFile(join(work, "pty-local.txt"), "typed on a terminal\n");
    const big = join(S.root, "pty-big.bin");
    await randomFile(big, 200 * 1000 * 1000);
    const t = onPty(["shell", ...clientArgs(S)], work);
    try {
      let at = await t.expect(/efx> /);
      // Tab completes the command and the local path.
      await t.type("pu\t");
      at = await t.expect(/put /, at);
      await t.type("pty-lo\t");
      at = await t.expect(/pty-local\.txt/, at);
      await t.type("pty-one.txt\r"); // the completion ended with a space
      at = await t.expect(/pty-one\.txt: uploaded .*\r?\n.*efx> /, at);
      await assertSameFile(join(S.root, "pty-one.txt"), join(work, "pty-local.txt"));
      // Up arrow brings the line back; edit it (backspace over "one.txt", left arrow, insert).
      await t.type("\x1b[A");
      at = await t.expect(/put pty-local\.txt pty-one\.txt/, at);
      await t.type("\x7f".repeat(7) + "two.txt" + "\x1b[D".repeat(4) + "-2\r");
      at = await t.expect(/pty-two-2\.txt: uploaded/, at);
      await assertSameFile(join(S.root, "pty-two-2.txt"), join(work, "pty-local.txt"));
      // Ctrl-C during a download cancels it, leaves no temp, and the prompt goes on.
      await t.type("get pty-big.bin got.bin\r");
      at = await t.expect(/pty-big\.bin .*\d+%/, at);
      await t.type("\x03");
      at = await t.expect(/efx: interrupted; the transfer was cancelled\r?\n.*efx> /, at);
      assert.deepEqual(await listTree(work), ["pty-local.txt"], "nothing left of the download");
      await t.type("ls pty-t*\r");
      at = await t.expect(/ pty-two-2\.txt\r?\n.*efx> /, at);
      // Ctrl-C at the prompt drops the line only.
      await t.type("rm pty-two-2.txt\x03");
      at = await t.expect(/\^C\r?\n.*efx> /, at);
      assert.ok(await Deno.stat(join(S.root, "pty-two-2.txt")), "the dropped line did not run");
      // Ctrl-D quits with a newline, exit 0.
      await t.type("\x04");
      const status = await t.end();
      assert.equal(status.code, 0, t.screen());
      assert.doesNotMatch(t.screen(), /unknown command/);
      // deno-lint-ignore no-control-regex -- the terminal's escape sequence is the point
      assert.match(t.screen(), /efx> (\x1b\[\d+G)?\r?\n$/, "Ctrl-D ends the prompt's line");
    } finally {
      t.kill();
      await t.end().catch(() => {});
      for (const f of ["pty-big.bin", "pty-one.txt", "pty-two-2.txt"]) {
        await Deno.remove(join(S.root, f)).catch(() => {});
      }
    }
  });
});

Deno.test("prompt on a terminal: Tab completes remote names of the remote folder; cd and pwd", async () => {
  await withWork(async (work) => {
    await Deno.mkdir(join(S.root, "pty-remote-dir"));
    await Deno.writeTextFile(join(S.root, "pty-remote-dir/only-on-server.txt"), "remote\n");
    const t = onPty(["shell", ...clientArgs(S)], work);
    try {
      let at = await t.expect(/efx> /);
      await t.type("cd pty-rem\t");
      at = await t.expect(/cd pty-remote-dir\//, at);
      await t.type("\r");
      at = await t.expect(/efx> /, at);
      await t.type("pwd\r");
      at = await t.expect(/\/pty-remote-dir\r?\n/, at);
      await t.type("get only-on\t");
      at = await t.expect(/only-on-server\.txt/, at);
      await t.type("\r");
      at = await t.expect(/only-on-server\.txt: downloaded .*\r?\n.*efx> /, at);
      assert.equal(await Deno.readTextFile(join(work, "only-on-server.txt")), "remote\n");
      await t.type("\x04");
      const status = await t.end();
      assert.equal(status.code, 0, t.screen());
    } finally {
      t.kill();
      await t.end().catch(() => {});
      await Deno.remove(join(S.root, "pty-remote-dir"), { recursive: true }).catch(() => {});
    }
  });
});

// ---- shared server teardown ----

Deno.test("the shared server stops cleanly on SIGTERM and logged no internal error", async () => {
  const status = await S.stop();
  assert.equal(status.code, 0, S.stderr());
  assert.doesNotMatch(S.stderr(), /internal error/);
});
