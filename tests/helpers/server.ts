/**
 * End-to-end test harness: runs the REAL `efx` CLI (main.ts) as subprocesses
 * on loopback, with real files in temp folders.
 *
 * - {@linkcode startServer} spawns `efx serve --port 0 --host 127.0.0.1` on a
 *   fresh temp folder (storage root + key pair) and waits until it listens.
 * - {@linkcode efx} runs one CLI command and collects exit code and output;
 *   {@linkcode spawnEfx} does the same but hands out the child process (to
 *   kill it mid-transfer).
 * - {@linkcode clientArgs} pins the server's key so no known-servers file is
 *   read or written.
 * - {@linkcode startFakeServer} runs a scripted (possibly hostile) server in
 *   this process, to see how the real CLI copes with a lying peer.
 * - File helpers: {@linkcode sha256File}, {@linkcode randomFile},
 *   {@linkcode listTree}, {@linkcode tempFilesIn}, {@linkcode snapshotTree},
 *   {@linkcode assertSameFile}, {@linkcode waitFor}.
 *
 * Every subprocess gets `NO_COLOR=1`, and the Deno permissions
 * `--allow-net --allow-read --allow-write --allow-env`. The test process
 * itself needs `--allow-run --allow-read --allow-write --allow-net --allow-env`
 * (and `--allow-sys` for `Deno.uid()`).
 *
 * @example
 * ```ts
 * const server = await startServer();
 * try {
 *   const r = await efx(["upload", "a.txt", ...clientArgs(server)]);
 *   assert.equal(r.code, 0, r.stderr);
 * } finally {
 *   await server.stop();
 * }
 * ```
 * @module
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { TEMP_PREFIX } from "../../src/atomic_file.ts";
import { EfxClient } from "../../src/client.ts";
import { SecureChannel } from "../../src/channel.ts";
import { loadServerPrivateKey, writeKeyPair } from "../../src/keys.ts";
import { makeServerVerifier } from "../../src/trust.ts";
import { loadClientIdentity } from "../../src/auth.ts";
import { denoTask } from "./deno_task.ts";

/** Absolute path of the CLI entry point. */
export const MAIN_TS: string = fileURLToPath(new URL("../../main.ts", import.meta.url));

/** Deno permissions given to every CLI subprocess. */
export const CLI_PERMISSIONS: readonly string[] = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys=statfs",
];

/** The prefix of upload/download temp files (`.efx-tmp-`). */
export { TEMP_PREFIX };

const decoder = new TextDecoder();

// ---------------------------------------------------------------------------
// Server key: one 2048-bit pair per test process, written into every server.

interface CachedKey {
  privatePem: string;
  publicPem: string;
  fingerprint: string;
}

let cachedKey: Promise<CachedKey> | undefined;

/**
 * The process-wide 2048-bit server key pair, generated once with
 * `writeKeyPair` (in a temp folder that is removed right away) and kept in
 * memory. Every {@linkcode startServer} writes it into its own folder, so
 * servers start fast and all have the same fingerprint.
 */
export function testServerKey(): Promise<CachedKey> {
  cachedKey ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "efx-e2e-key-" });
    try {
      const r = await writeKeyPair(dir, { bits: 2048 });
      return {
        privatePem: await Deno.readTextFile(r.privatePath),
        publicPem: await Deno.readTextFile(r.publicPath),
        fingerprint: r.fingerprint,
      };
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  })();
  return cachedKey;
}

// ---------------------------------------------------------------------------
// Server

/** A running `efx serve` subprocess and its temp folder. */
export interface TestServer {
  /** Port it listens on (on 127.0.0.1). */
  port: number;
  /** Storage root: `<dir>/storage` (a real path, no symlinks). */
  root: string;
  /** Folder of the key pair: `<dir>/keys`. */
  keyDir: string;
  /** Public key PEM (`<dir>/keys/server.pub.pem`), for `--server-key`. */
  pubKeyPath: string;
  /** Private key PEM (`<dir>/keys/server.key.pem`). */
  keyPath: string;
  /** The server key's fingerprint, `SHA256:...`. */
  fingerprint: string;
  /** The temp folder holding everything; removed by `stop()`. Tests may use it for scratch. */
  dir: string;
  /** The server process. */
  proc: Deno.ChildProcess;
  /** The permissions it runs under. */
  perms: ServerPerms;
  /** Resolves with the exit status once the server process has ended. */
  exited: Promise<Deno.CommandStatus>;
  /** Everything the server wrote to stderr so far (its log). */
  stderr(): string;
  /** Waits until the log matches `pattern` (default timeout 10 s); returns the match. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /**
   * Sends `signal` (default SIGTERM) unless the process has already ended,
   * awaits its exit, then removes the temp folder. Idempotent.
   */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/**
 * Deno permissions a test server runs under: `broad` (the CLI's
 * `--allow-net --allow-read --allow-write --allow-env`), or `serve-task`:
 * exactly the `serve` task's flags from deno.json (only the pinned port
 * differs), the deployment users get. The default is `$EFX_TEST_SERVER_PERMS`,
 * else `broad`; `deno task test` runs the end-to-end and attack suites once
 * more with `serve-task`.
 */
export type ServerPerms = "broad" | "serve-task";

/** The permission mode of test servers in this run (see {@linkcode ServerPerms}). */
export function defaultServerPerms(): ServerPerms {
  const v = Deno.env.get("EFX_TEST_SERVER_PERMS");
  if (v === undefined || v === "" || v === "broad") return "broad";
  if (v === "serve-task") return v;
  throw new Error(`EFX_TEST_SERVER_PERMS must be broad or serve-task, not ${v}`);
}

/** Options of {@linkcode startServer}. */
export interface StartServerOptions {
  /** Extra `efx serve` arguments, e.g. `["--max-size", "1M"]`. */
  args?: string[];
  /**
   * Permissions (default {@linkcode defaultServerPerms}). A test whose server
   * needs files outside `keys/` and `storage/` (e.g. its own
   * authorized-clients path) says `broad`.
   */
  perms?: ServerPerms;
  /**
   * Content of `keys/authorized_clients` (the path the serve task may read);
   * when given, the server runs with `--authorized-clients` on it.
   */
  authorizedClients?: string;
  /** Longest wait for the "serving" line (default 30 s). */
  timeoutMs?: number;
}

const liveServers = new Set<TestServer>();
let unloadHooked = false;

/**
 * Makes a temp folder with `keys/` (the cached 2048-bit pair) and spawns
 * `deno run <perms> main.ts serve --port 0 --host 127.0.0.1 --root <dir>/storage
 * --key <dir>/keys/server.key.pem [...args]`, then waits for the stderr line
 * `efx: serving ... on 127.0.0.1:PORT` and returns the port. stderr keeps
 * being collected (see {@linkcode TestServer.stderr}).
 *
 * Always call `stop()` (in a `finally`): it ends the process and removes the
 * folder. As a safety net, servers still running when the test process
 * unloads are killed and their folders removed.
 */
export async function startServer(opts: StartServerOptions = {}): Promise<TestServer> {
  const key = await testServerKey();
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "efx-e2e-" }));
  const keyDir = join(dir, "keys");
  const keyPath = join(keyDir, "server.key.pem");
  const pubKeyPath = join(keyDir, "server.pub.pem");
  const root = join(dir, "storage");
  await Deno.mkdir(keyDir);
  await Deno.writeTextFile(keyPath, key.privatePem, { mode: 0o600 });
  await Deno.writeTextFile(pubKeyPath, key.publicPem, { mode: 0o644 });

  const perms = opts.perms ?? defaultServerPerms();
  const extra = [...(opts.args ?? [])];
  if (opts.authorizedClients !== undefined) {
    const acPath = join(keyDir, "authorized_clients");
    await Deno.writeTextFile(acPath, opts.authorizedClients);
    extra.push("--authorized-clients", acPath);
  }
  let permFlags: string[] = [...CLI_PERMISSIONS];
  let taskEnv: Record<string, string> = {};
  let port = "0";
  if (perms === "serve-task") {
    // The task's own flags, relative paths and all (cwd is `dir`, laid out
    // like a checkout: keys/server.key.pem, storage/), and its V8 flags;
    // only the port moves.
    const task = denoTask("serve");
    port = String(freePort());
    permFlags = task.flags.map((f) =>
      f.startsWith("--allow-net=") ? `--allow-net=127.0.0.1:${port}` : f
    );
    taskEnv = task.env;
  }
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...permFlags,
      MAIN_TS,
      "serve",
      "--port",
      port,
      "--host",
      "127.0.0.1",
      "--root",
      root,
      "--key",
      keyPath,
      ...extra,
    ],
    cwd: dir,
    env: { ...taskEnv, NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();

  let log = "";
  const listeners = new Set<() => void>();
  const reader = (async () => {
    for await (const chunk of proc.stderr.pipeThrough(new TextDecoderStream())) {
      log += chunk;
      for (const l of listeners) l();
    }
  })();
  let ended = false;
  const exited = proc.status.then(async (status) => {
    await reader.catch(() => {});
    ended = true;
    for (const l of listeners) l();
    return status;
  });

  const waitForLog = (pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> => {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = log.match(pattern);
        if (m) {
          done();
          resolve(m);
        } else if (ended) {
          done();
          reject(new Error(`server exited before logging ${pattern}; stderr:\n${log}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`server did not log ${pattern} within ${timeoutMs} ms; stderr:\n${log}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        listeners.delete(check);
      };
      listeners.add(check);
      check();
    });
  };

  let stopped: Promise<Deno.CommandStatus> | undefined;
  const server: TestServer = {
    port: 0,
    root,
    keyDir,
    pubKeyPath,
    keyPath,
    fingerprint: key.fingerprint,
    dir,
    proc,
    perms,
    exited,
    stderr: () => log,
    waitForLog,
    stop(signal: Deno.Signal = "SIGTERM") {
      stopped ??= (async () => {
        if (!ended) {
          try {
            proc.kill(signal);
          } catch { /* already gone */ }
        }
        const status = await exited;
        liveServers.delete(server);
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        return status;
      })();
      return stopped;
    },
  };
  liveServers.add(server);
  hookUnload();

  try {
    const m = await waitForLog(
      /^efx: serving .* on 127\.0\.0\.1:(\d+)$/m,
      opts.timeoutMs ?? 30_000,
    );
    server.port = Number(m[1]);
  } catch (err) {
    await server.stop("SIGKILL");
    throw err;
  }
  return server;
}

function hookUnload(): void {
  if (unloadHooked) return;
  unloadHooked = true;
  globalThis.addEventListener("unload", () => {
    for (const s of liveServers) {
      try {
        s.proc.kill("SIGKILL");
      } catch { /* gone */ }
      try {
        Deno.removeSync(s.dir, { recursive: true });
      } catch { /* gone */ }
    }
  });
}

/** `["--server", "127.0.0.1:PORT", "--server-key", pubKeyPath]`: connect to `server`, pinned. */
export function clientArgs(server: { port: number; pubKeyPath: string }): string[] {
  return ["--server", `127.0.0.1:${server.port}`, "--server-key", server.pubKeyPath];
}

/**
 * An in-process client connected over real TCP to `server`, trusting only its
 * key (for requests the CLI cannot express, e.g. a NUL in a name). Close it.
 */
export async function connectClient(
  server: { port: number; fingerprint: string },
  opts: { identityPath?: string; handshakeTimeoutMs?: number } = {},
): Promise<EfxClient> {
  return await EfxClient.connect({
    host: "127.0.0.1",
    port: server.port,
    verifier: makeServerVerifier({
      pinnedFingerprint: server.fingerprint,
      knownServersFile: "/nonexistent/efx-e2e/known_servers",
      acceptNew: false,
    }),
    identity: opts.identityPath ? await loadClientIdentity(opts.identityPath) : undefined,
    handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 10_000,
  });
}

/** A fresh 2048-bit client key pair in `dir/name`: its private key path and fingerprint. */
export async function makeClientKey(
  dir: string,
  name: string,
): Promise<{ path: string; fingerprint: string }> {
  const r = await writeKeyPair(join(dir, name), { bits: 2048, prefix: "client" });
  return { path: r.privatePath, fingerprint: r.fingerprint };
}

/** A scripted server in the test process (see {@linkcode startFakeServer}). */
export interface FakeServer {
  port: number;
  fingerprint: string;
  /** Public key PEM of the fake server, for `--server-key` ({@linkcode clientArgs} works). */
  pubKeyPath: string;
  /** Temp folder of its key; removed by `close()`. */
  dir: string;
  /** Errors thrown by the handler (a test may expect some: the client hung up). */
  errors: unknown[];
  /** Stops listening, waits for running handlers, removes the temp folder. */
  close(): Promise<void>;
}

/**
 * Listens on 127.0.0.1 (random port) with the cached test key and, for each
 * connection, runs the real server handshake and then `handle(channel)`,
 * which plays the server's part of the protocol as scripted by the test
 * (e.g. a wrong hash, a hostile error message). The channel is closed after
 * `handle` returns or throws.
 */
export async function startFakeServer(
  handle: (ch: SecureChannel) => Promise<void>,
): Promise<FakeServer> {
  const key = await testServerKey();
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "efx-e2e-fake-" }));
  const keyPath = join(dir, "server.key.pem");
  const pubKeyPath = join(dir, "server.pub.pem");
  await Deno.writeTextFile(keyPath, key.privatePem, { mode: 0o600 });
  await Deno.writeTextFile(pubKeyPath, key.publicPem);
  const serverKey = await loadServerPrivateKey(keyPath);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const errors: unknown[] = [];
  const handlers = new Set<Promise<void>>();
  const serveOne = async (conn: Deno.Conn) => {
    let ch: SecureChannel | undefined;
    try {
      ch = await SecureChannel.server(conn, { key: serverKey, handshakeTimeoutMs: 10_000 });
      await handle(ch);
      await ch.close();
    } catch (err) {
      errors.push(err);
      ch?.abort();
    } finally {
      try {
        conn.close();
      } catch { /* closed by the channel */ }
    }
  };
  const loop = (async () => {
    while (true) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return; // listener closed
      }
      const h = serveOne(conn);
      handlers.add(h);
      h.finally(() => handlers.delete(h));
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    fingerprint: key.fingerprint,
    pubKeyPath,
    dir,
    errors,
    async close() {
      try {
        listener.close();
      } catch { /* closed */ }
      await loop;
      await Promise.allSettled([...handlers]);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

// ---------------------------------------------------------------------------
// CLI runs

/** Outcome of one CLI run. */
export interface EfxResult {
  /** Exit code (128 + signal number when killed by a signal). */
  code: number;
  /** Signal that ended the process, if any. */
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Options of {@linkcode efx} and {@linkcode spawnEfx}. */
export interface EfxOptions {
  /** Data written to stdin, which is then closed (default: stdin is /dev/null). */
  stdin?: string | Uint8Array;
  /** Working folder of the process. */
  cwd?: string;
  /** Extra environment variables (added to the inherited ones, with `NO_COLOR=1`). */
  env?: Record<string, string>;
  /** The run is killed (SIGKILL) and the promise rejects after this long (default 120 s). */
  timeoutMs?: number;
  /**
   * Skip the check that stderr holds no stack trace (lines starting with
   * whitespace + "at "). Only for runs with EFX_DEBUG=1 or killed processes.
   */
  allowStackTrace?: boolean;
}

/** A running CLI process and the promise of its outcome. */
export interface EfxRun {
  proc: Deno.ChildProcess;
  /** Resolves when the process has ended and its output is read. */
  result: Promise<EfxResult>;
}

/** Matches a JavaScript stack-trace line such as `    at foo (file:///x.ts:1:2)`. */
export const STACK_LINE: RegExp = /^\s+at \S/m;

/**
 * Starts `deno run <perms> main.ts ...args` and collects its output. Unless
 * `allowStackTrace`, the result rejects when stderr contains a stack trace:
 * efx must never show one.
 */
export function spawnEfx(args: string[], opts: EfxOptions = {}): EfxRun {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", ...CLI_PERMISSIONS, MAIN_TS, ...args],
    cwd: opts.cwd,
    env: { NO_COLOR: "1", ...opts.env },
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const result = (async (): Promise<EfxResult> => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        proc.kill("SIGKILL");
      } catch { /* gone */ }
    }, opts.timeoutMs ?? 120_000);
    try {
      const feed = opts.stdin === undefined ? Promise.resolve() : (async () => {
        const w = proc.stdin.getWriter();
        try {
          const data = typeof opts.stdin === "string"
            ? new TextEncoder().encode(opts.stdin)
            : opts.stdin!;
          await w.write(data);
          await w.close();
        } catch { /* the process ended without reading everything */ }
      })();
      const [out] = await Promise.all([proc.output(), feed]);
      const r: EfxResult = {
        code: out.code,
        signal: out.signal,
        stdout: decoder.decode(out.stdout),
        stderr: decoder.decode(out.stderr),
      };
      if (timedOut) {
        throw new Error(
          `efx ${args.join(" ")}: still running after ${opts.timeoutMs ?? 120_000} ms, killed\n` +
            `stdout: ${r.stdout}\nstderr: ${r.stderr}`,
        );
      }
      if (!opts.allowStackTrace && STACK_LINE.test(r.stderr)) {
        throw new Error(`efx ${args.join(" ")}: stack trace on stderr:\n${r.stderr}`);
      }
      return r;
    } finally {
      clearTimeout(timer);
    }
  })();
  return { proc, result };
}

/**
 * Runs the CLI once (`deno run --allow-net --allow-read --allow-write
 * --allow-env <abs>/main.ts ...args`, `NO_COLOR=1`) and returns its exit code
 * and output. Rejects when stderr contains a stack trace (see
 * {@linkcode EfxOptions.allowStackTrace}) or on timeout.
 */
export function efx(args: string[], opts: EfxOptions = {}): Promise<EfxResult> {
  return spawnEfx(args, opts).result;
}

/** Asserts an exit code, showing the output when it differs. */
export function assertExit(r: EfxResult, code: number, what = ""): void {
  assert.equal(
    r.code,
    code,
    `${
      what ? what + ": " : ""
    }exit ${r.code}, expected ${code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
  );
}

// ---------------------------------------------------------------------------
// Files

/** Hex SHA-256 of bytes. */
export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Hex SHA-256 of a file, read in chunks (any size). */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path, { read: true });
  const buf = new Uint8Array(1 << 20);
  while (true) {
    const n = await file.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
  }
  return hash.digest("hex");
}

/** Writes `size` random bytes to `path` (in 1 MiB chunks); returns their hex SHA-256. */
export async function randomFile(path: string, size: number): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  const buf = new Uint8Array(1 << 20);
  let left = size;
  while (left > 0) {
    const n = Math.min(left, buf.length);
    const chunk = buf.subarray(0, n);
    for (let off = 0; off < n; off += 65536) {
      crypto.getRandomValues(chunk.subarray(off, Math.min(n, off + 65536)));
    }
    hash.update(chunk);
    for (let off = 0; off < n;) off += await file.write(chunk.subarray(off));
    left -= n;
  }
  return hash.digest("hex");
}

/**
 * Every entry under `dir` (files, folders, symlinks; symlinks not followed) as
 * sorted "/"-separated paths relative to `dir`. A missing `dir` lists as empty.
 */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (abs: string, rel: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(abs));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory && !e.isSymlink) await walk(join(abs, e.name), r);
    }
  };
  await walk(dir, "");
  return out.sort();
}

/** The upload/download temp files (`.efx-tmp-*`) anywhere under `dir`. */
export async function tempFilesIn(dir: string): Promise<string[]> {
  return (await listTree(dir)).filter((p) => basename(p).startsWith(TEMP_PREFIX));
}

/**
 * A comparable picture of everything under `dir`: for each relative path,
 * `dir`, `symlink -> target`, or `file <mode> <size> <sha256>` (with mtime
 * when `withMtime`). Compare two snapshots to prove nothing changed.
 */
export async function snapshotTree(
  dir: string,
  opts: { withMtime?: boolean } = {},
): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const rel of await listTree(dir)) {
    const abs = join(dir, rel);
    const st = await Deno.lstat(abs);
    if (st.isSymlink) out[rel] = `symlink -> ${await Deno.readLink(abs)}`;
    else if (st.isDirectory) out[rel] = "dir";
    else {
      const mode = ((st.mode ?? 0) & 0o7777).toString(8);
      const mtime = opts.withMtime ? ` ${st.mtime?.getTime()}` : "";
      out[rel] = `file ${mode} ${st.size} ${await sha256File(abs)}${mtime}`;
    }
  }
  return out;
}

/**
 * Asserts that `actual` has exactly the bytes of `expected` (a path or the
 * bytes themselves): same size, same SHA-256, and a byte-by-byte comparison
 * in chunks (so 100 MB files are fine).
 */
export async function assertSameFile(actual: string, expected: string | Uint8Array): Promise<void> {
  if (expected instanceof Uint8Array) {
    const got = await Deno.readFile(actual);
    assert.equal(got.length, expected.length, `${actual}: size`);
    assert.equal(sha256(got), sha256(expected), `${actual}: sha256`);
    assert.ok(got.every((b, i) => b === expected[i]), `${actual}: bytes differ`);
    return;
  }
  const [sa, sb] = [await Deno.stat(actual), await Deno.stat(expected)];
  assert.equal(sa.size, sb.size, `${actual} vs ${expected}: size`);
  assert.equal(await sha256File(actual), await sha256File(expected), `${actual}: sha256`);
  using fa = await Deno.open(actual, { read: true });
  using fb = await Deno.open(expected, { read: true });
  const ba = new Uint8Array(1 << 20);
  const bb = new Uint8Array(1 << 20);
  for (let pos = 0;;) {
    const na = await readFull(fa, ba);
    const nb = await readFull(fb, bb);
    assert.equal(na, nb, `${actual}: short read at ${pos}`);
    if (na === 0) return;
    for (let i = 0; i < na; i++) {
      if (ba[i] !== bb[i]) assert.fail(`${actual} differs from ${expected} at byte ${pos + i}`);
    }
    pos += na;
  }
}

async function readFull(f: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let fill = 0;
  while (fill < buf.length) {
    const n = await f.read(buf.subarray(fill));
    if (n === null) break;
    fill += n;
  }
  return fill;
}

/**
 * Polls `cond` every `intervalMs` (default 10) until it returns a truthy
 * value, which is returned; throws after `timeoutMs` (default 5 s).
 */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  opts: {
    timeoutMs?: number;
    intervalMs?: number;
    /** Named in the timeout error; a function is called at that time (to show the last state). */
    what?: string | (() => string | Promise<string>);
  } = {},
): Promise<NonNullable<T>> {
  const deadline = performance.now() + (opts.timeoutMs ?? 5000);
  while (true) {
    const v = await cond();
    if (v) return v as NonNullable<T>;
    if (performance.now() > deadline) {
      const what = typeof opts.what === "function" ? await opts.what() : opts.what;
      throw new Error(`timed out waiting for ${what ?? "a condition"}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 10));
  }
}

/** A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A fresh temp folder (real path) for client-side files; remove it when done. */
export async function makeWorkDir(prefix = "efx-e2e-work-"): Promise<string> {
  return await Deno.realPath(await Deno.makeTempDir({ prefix }));
}

let alive = 0;

/**
 * Asserts that `server` still serves: a fresh client uploads 100 kB from
 * `work`, downloads it back, compares the bytes and removes it.
 */
export async function assertServing(
  server: { port: number; fingerprint: string },
  work: string,
): Promise<void> {
  const name = `alive-${Date.now()}-${++alive}.bin`;
  const local = join(work, name);
  const back = join(work, `${name}.back`);
  await randomFile(local, 100_000);
  const client = await connectClient(server);
  try {
    await client.upload(local, name);
    await client.download(name, back);
    await client.remove(name);
  } finally {
    await client.close();
  }
  await assertSameFile(back, local);
  await Deno.remove(local);
  await Deno.remove(back);
}
