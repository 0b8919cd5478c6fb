/**
 * The client subcommands: `upload`, `download`, `ls`, `rm`, and the pieces
 * the interactive prompt shares with them (connecting from flags, one put,
 * one get, printing a listing).
 *
 * @module
 */
import { basename, join } from "node:path";
import { writeAll } from "../io.ts";
import { intFlag, parseFlags, parseHostPort } from "../cli/flags.ts";
import { type ClientIdentity, loadClientIdentity } from "../auth.ts";
import { sanitize } from "../bytes.ts";
import { type ClientTransferResult, EfxClient, sweepOnce } from "../client.ts";
import { describeError, EfxError, type ExitCode, exitCodeOf, UsageError } from "../errors.ts";
import { loadPublicKeyFile } from "../keys.ts";
import {
  formatBytes,
  formatDuration,
  formatRate,
  Progress,
  progressWanted,
  summaryLine,
  totalLine,
} from "../progress.ts";
import { downloadTree, folderName, type TreeSummary, uploadTree } from "../folders.ts";
import type { FileInfo } from "../messages.ts";
import {
  askOnTerminal,
  defaultKnownServersPath,
  makeServerVerifier,
  resolvePinnedFingerprint,
} from "../trust.ts";

/** Flags every client command takes. */
export const CONNECT_FLAGS = {
  server: { type: "string", short: "s" },
  "server-key": { type: "string" },
  fingerprint: { type: "string" },
  "known-servers": { type: "string" },
  "accept-new": { type: "boolean" },
  "require-forward-secrecy": { type: "boolean" },
  "handshake-timeout": { type: "string" },
  identity: { type: "string", short: "i" },
  quiet: { type: "boolean", short: "q" },
  verbose: { type: "boolean", short: "v" },
  help: { type: "boolean", short: "h" },
} as const;

export const CONNECT_USAGE = `connection options:
  -s, --server HOST:PORT   server address (default: $EFX_SERVER, else localhost:9000)
  --server-key FILE        trust only the server key in FILE (public or private PEM)
  --fingerprint SHA256:..  trust only the server key with this fingerprint
  --known-servers FILE     trust-on-first-use list (default ~/.efx/known_servers)
  --accept-new             trust and record an unknown server without asking
  --require-forward-secrecy  refuse a server that answers protocol v1 (no forward secrecy)
  --handshake-timeout S    seconds to wait for the handshake (default 10)
  -i, --identity FILE      client key proving who you are (default keys/client.key.pem if present)
  -q, --quiet              no progress bar, no summary lines
  -v, --verbose            say how the server was trusted and both SHA-256 values`;

/** What the client commands read from their flags. */
export interface ConnectFlags {
  server?: string;
  "server-key"?: string;
  fingerprint?: string;
  "known-servers"?: string;
  "accept-new"?: boolean;
  "require-forward-secrecy"?: boolean;
  "handshake-timeout"?: string;
  identity?: string;
  quiet?: boolean;
  verbose?: boolean;
}

/** How output is shown. */
export interface Ui {
  quiet: boolean;
  verbose: boolean;
  out: (line: string) => void;
  err: (line: string) => void;
  /** True once the user interrupted (Ctrl-C): errors it caused are not reported. */
  interrupted?: () => boolean;
  /** Files moved so far and their bytes, for the total line. */
  tally?: { files: number; bytes: number };
}

/** A Ui on stdout/stderr from the quiet/verbose flags. */
export function uiFromFlags(v: ConnectFlags): Ui {
  return {
    quiet: v.quiet === true,
    verbose: v.verbose === true && v.quiet !== true,
    out: (line) => console.log(line),
    err: (line) => console.error(line),
    tally: { files: 0, bytes: 0 },
  };
}

/** Width summary lines are fitted to. */
const SUMMARY_COLUMNS = 80;

/** Counts one moved file for the total line. */
function count(ui: Ui, bytes: number): void {
  if (ui.tally) {
    ui.tally.files++;
    ui.tally.bytes += bytes;
  }
}

function envServer(): string | undefined {
  try {
    return Deno.env.get("EFX_SERVER") || undefined;
  } catch {
    return undefined;
  }
}

/** Connects as the flags say: address, trust (pinned, or known-servers with TOFU), timeout. */
export async function connectFromFlags(v: ConnectFlags, ui: Ui): Promise<EfxClient> {
  const { host, port } = parseHostPort(v.server ?? envServer() ?? "localhost:9000", 9000);
  const pinned = await resolvePinnedFingerprint(
    { fingerprint: v.fingerprint, serverKeyFile: v["server-key"] },
    loadPublicKeyFile,
  );
  let interactive = false;
  try {
    interactive = Deno.stdin.isTerminal();
  } catch { /* no stdin */ }
  const verifier = makeServerVerifier({
    pinnedFingerprint: pinned,
    knownServersFile: v["known-servers"] ?? defaultKnownServersPath(),
    acceptNew: v["accept-new"] === true,
    requireForwardSecrecy: v["require-forward-secrecy"] === true,
    ask: interactive ? askOnTerminal : undefined,
    warn: (text) => ui.err(text),
  });
  const client = await EfxClient.connect({
    host,
    port,
    verifier,
    identity: await identityFromFlags(v.identity),
    handshakeTimeoutMs: 1000 * intFlag(v["handshake-timeout"], "--handshake-timeout", 10, 1, 3600),
  });
  if (ui.verbose) {
    ui.err(
      `efx: connected to ${host}:${port}, server key ${client.trust.fingerprint} (${client.trust.status})`,
    );
    if (client.rights) ui.err(`efx: identity accepted; server granted ${client.rights} access`);
  }
  return client;
}

/** Default identity file, used when it exists. */
export const DEFAULT_IDENTITY = "keys/client.key.pem";

/** Loads `--identity FILE`, else keys/client.key.pem when it exists, else none. */
async function identityFromFlags(path: string | undefined): Promise<ClientIdentity | undefined> {
  if (path !== undefined) return await loadClientIdentity(path);
  try {
    await Deno.stat(DEFAULT_IDENTITY);
  } catch {
    return undefined; // absent, or not readable under our permissions
  }
  return await loadClientIdentity(DEFAULT_IDENTITY);
}

function makeProgress(name: string, ui: Ui) {
  let p: Progress | undefined;
  return {
    onStart: (size: number) => {
      p = new Progress({ name, total: size, enabled: progressWanted(ui.quiet) });
    },
    onBytes: (n: number) => p?.add(n),
    /** The final line once the file is there. */
    done: () => p?.done(),
    /** Ends the bar of a transfer that failed or was interrupted. */
    abandon: () => p?.abandon(),
  };
}

/** How one file moves: overwrite and resume choices. */
export interface MoveOptions {
  force: boolean;
  resume: boolean;
  /** Permission bits for the remote file instead of the local file's. */
  mode?: number;
}

/** Uploads one file and prints its summary line; returns its size. */
export async function putOne(
  client: EfxClient,
  local: string,
  remote: string,
  mo: MoveOptions,
  ui: Ui,
): Promise<number> {
  const prog = makeProgress(remote, ui);
  try {
    const r = await client.upload(local, remote, { ...mo, ...prog, onNotice: notice(ui) });
    prog.done();
    reportUpload(remote, r, ui);
    return r.bytes + r.resumedFrom;
  } finally {
    prog.abandon();
  }
}

/** Downloads one file and prints its summary line; returns its size. */
export async function getOne(
  client: EfxClient,
  remote: string,
  local: string,
  mo: MoveOptions,
  ui: Ui,
): Promise<number> {
  const prog = makeProgress(remote, ui);
  try {
    const r = local === "-"
      ? await client.downloadToSink(remote, (chunk) => writeAll(Deno.stdout, chunk), prog)
      : await client.download(remote, local, { ...mo, ...prog, onNotice: notice(ui) });
    prog.done();
    report(local === "-" ? remote : local, "downloaded", r, ui, local === "-");
    if (ui.verbose) ui.err(`efx: sha256 server sent ${r.peerSha256}, received ${r.sha256}`);
    return r.bytes + r.resumedFrom;
  } finally {
    prog.abandon();
  }
}

/** The summary line of one upload (and both hashes with --verbose). */
function reportUpload(remote: string, r: ClientTransferResult, ui: Ui): void {
  report(remote, "uploaded", r, ui, false);
  if (ui.verbose) ui.err(`efx: sha256 sent ${r.sha256}, server computed ${r.peerSha256}`);
}

/**
 * One summary line per file, and the file counted for the total line. On a
 * terminal the line fits 80 columns (a shortened hash, a long name shortened
 * in the middle); with --verbose, or when the output goes to a file or a
 * pipe (scripts), it has the whole name and the whole SHA-256.
 */
function report(
  name: string,
  verb: string,
  r: ClientTransferResult,
  ui: Ui,
  toStderr: boolean,
): void {
  count(ui, r.bytes + r.resumedFrom);
  if (ui.quiet) return;
  const more = resumed(r.resumedFrom);
  const fit = !ui.verbose && isTerminal(toStderr ? Deno.stderr : Deno.stdout);
  (toStderr ? ui.err : ui.out)(
    summaryLine({
      name,
      bytes: r.bytes,
      ms: r.ms,
      sha256: r.sha256,
      verb,
      shortHash: fit,
      columns: fit ? SUMMARY_COLUMNS - more.length : undefined,
    }) + more,
  );
}

function isTerminal(stream: { isTerminal(): boolean }): boolean {
  try {
    return stream.isTerminal();
  } catch {
    return false;
  }
}

function notice(ui: Ui) {
  return (text: string) => ui.err(`efx: ${text}`);
}

function resumed(offset: number): string {
  return offset > 0 ? ` (resumed after ${offset} bytes already there)` : "";
}

/** Uploads a folder tree and prints one summary line. */
export async function putTree(
  client: EfxClient,
  local: string,
  remote: string,
  mo: MoveOptions,
  ui: Ui,
): Promise<void> {
  const t0 = performance.now();
  const sum = await uploadTree(client, local, remote, {
    force: mo.force,
    notice: notice(ui),
    moveFile: (from, to) => putOne(client, from, to, mo, ui),
  });
  if (!ui.quiet) ui.out(treeLine(`uploaded ${local} as ${remote}`, sum, performance.now() - t0));
}

/** Downloads a folder tree and prints one summary line. */
export async function getTree(
  client: EfxClient,
  remote: string,
  local: string,
  mo: MoveOptions,
  ui: Ui,
): Promise<void> {
  const t0 = performance.now();
  const sum = await downloadTree(client, remote, local, {
    force: mo.force,
    notice: notice(ui),
    moveFile: (from, to) => getOne(client, from, to, mo, ui),
  });
  if (!ui.quiet) ui.out(treeLine(`downloaded ${remote} to ${local}`, sum, performance.now() - t0));
}

function treeLine(what: string, s: TreeSummary, ms: number): string {
  const skipped = s.skipped ? `, ${s.skipped} skipped` : "";
  return `${what}: ${s.files} files, ${s.folders} folders, ${s.links} links${skipped}, ` +
    `${formatBytes(s.bytes)} in ${formatDuration(ms)} (${formatRate(s.bytes / (ms / 1000))})`;
}

/** `-rwxr-xr-x` style rendering of permission bits. */
export function modeString(type: FileInfo["type"], mode: number): string {
  const t = type === "dir" ? "d" : type === "symlink" ? "l" : "-";
  let s = t;
  for (let i = 8; i >= 0; i--) s += mode & (1 << i) ? "rwx"[(8 - i) % 3] : "-";
  return s;
}

/** `YYYY-MM-DD HH:MM` in local time. */
function localTime(ms: number): string {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return "????-??-?? ??:??";
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}`;
}

/**
 * One listing line: mode, size (bytes, or binary units with `human`),
 * modification time (local), name, and with `long` `-> target` for a link.
 */
export function listingLine(e: FileInfo, opts: { human?: boolean; long?: boolean } = {}): string {
  const name = sanitize(e.name) + (e.type === "dir" ? "/" : "");
  const target = opts.long && e.type === "symlink" && typeof e.target === "string"
    ? ` -> ${sanitize(e.target)}`
    : "";
  const size = opts.human ? formatBytes(e.size).padStart(10) : String(e.size).padStart(12);
  return `${modeString(e.type, e.mode)} ${size} ${localTime(e.mtime)} ${name}${target}`;
}

/**
 * Runs `op` on each item over one connection; errors on one item are
 * printed and the rest go on while the connection is usable. Returns the
 * exit code of the first failure (0 when all succeeded).
 */
async function eachItem<T>(
  items: T[],
  client: EfxClient,
  ui: Ui,
  op: (item: T) => Promise<void>,
): Promise<number> {
  let code = 0;
  for (const item of items) {
    try {
      await op(item);
    } catch (err) {
      if (ui.interrupted?.()) throw err;
      ui.err(`efx: ${describeError(err)}`);
      if (code === 0) code = exitCodeOf(err);
      if (client.channel.broken) break;
    }
  }
  return code;
}

async function withClient(
  v: ConnectFlags,
  run: (c: EfxClient, ui: Ui) => Promise<number>,
  opts: { dataOnStdout?: boolean } = {},
): Promise<number> {
  const base = uiFromFlags(v);
  // Temps of a download killed earlier in this folder go now (see local_temps.ts).
  await sweepOnce(".");
  const client = await connectFromFlags(v, base);
  let hit = false;
  const interrupt = onInterrupt(() => {
    hit = true;
    client.channel.abort();
  });
  // After Ctrl-C, the failures it causes ("connection lost") are not news.
  const ui: Ui = {
    ...base,
    err: (line) => {
      if (!hit) base.err(line);
    },
    interrupted: () => hit,
  };
  const t0 = performance.now();
  try {
    const code = await run(client, ui);
    interrupt.check();
    const tally = ui.tally!;
    if (!ui.quiet && tally.files > 1) {
      const line = totalLine(tally.files, tally.bytes, performance.now() - t0);
      (opts.dataOnStdout ? ui.err : ui.out)(line);
    }
    return code;
  } catch (err) {
    interrupt.check(); // report the interruption, not the broken connection it caused
    throw err;
  } finally {
    interrupt.dispose();
    if (client.channel.broken) client.channel.abort();
    else await client.close();
  }
}

/** The user stopped efx (Ctrl-C: exit 130; SIGTERM: exit 143, as shells report them). */
export class InterruptedError extends EfxError {
  constructor(signal: Deno.Signal) {
    super("interrupted", (signal === "SIGINT" ? 130 : 143) as unknown as ExitCode);
  }
}

/**
 * On SIGINT or SIGTERM, runs `stop` (which aborts the connection, so that the
 * transfer under way fails and cleans up its temp file) instead of dying on
 * the spot. `check()` then throws {@linkcode InterruptedError}.
 */
export function onInterrupt(stop: (signal: Deno.Signal) => void) {
  let hit: Deno.Signal | undefined;
  const listeners = new Map<Deno.Signal, () => void>();
  for (const sig of ["SIGINT", "SIGTERM"] as Deno.Signal[]) {
    const handler = () => {
      hit ??= sig;
      stop(sig);
    };
    listeners.set(sig, handler);
    Deno.addSignalListener(sig, handler);
  }
  return {
    /** The signal received, if any. */
    get signal(): Deno.Signal | undefined {
      return hit;
    },
    /** Forgets an interruption that has been dealt with (the prompt goes on). */
    reset() {
      hit = undefined;
    },
    check() {
      if (hit) throw new InterruptedError(hit);
    },
    dispose() {
      for (const [sig, handler] of listeners) Deno.removeSignalListener(sig, handler);
    },
  };
}

export const UPLOAD_USAGE =
  `usage: efx upload FILE... [--as NAME] [-f] [--resume] [-r] [connection options]
       efx upload - --as NAME      (read the file from standard input)
  FILE             a local file; several go over one connection (files of at most
                   1 MiB back to back, without waiting for the server in between)
  -                standard input, stored as NAME once it has ended (buffered in a
                   temp file first, as the server needs the size; needs the disk room)
  --as NAME        name on the server (one FILE only; default: the file's base name)
  -f, --force      replace a file of the same name on the server
  --resume         continue an interrupted upload (the server keeps the part it has;
                   both sides compare its SHA-256 before going on)
  -r, --recursive  upload folders: files, empty folders, modes, mtimes, symlinks inside
  -h, --help       this text`;

/** `efx upload FILE... [--as NAME] [--force] [--resume] [-r]` */
export async function uploadCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    as: { type: "string" },
    force: { type: "boolean", short: "f" },
    resume: { type: "boolean" },
    recursive: { type: "boolean", short: "r" },
  }, "upload");
  if (v.help) return usage(UPLOAD_USAGE);
  if (positionals.length === 0) throw new UsageError("upload: name at least one FILE");
  if (v.as !== undefined && positionals.length > 1) {
    throw new UsageError("upload: --as works with a single FILE");
  }
  if (positionals.includes("-") && (v.as === undefined || positionals.length > 1)) {
    throw new UsageError("upload: standard input ('-') needs --as NAME and no other FILE");
  }
  const mo = { force: v.force === true, resume: v.resume === true };
  if (positionals[0] === "-") {
    return await withStdinFile((path) =>
      withClient(v, async (client, ui) => {
        await putOne(client, path, v.as!, { ...mo, mode: 0o644 }, ui);
        return 0;
      })
    );
  }
  return await withClient(v, async (client, ui) => {
    // Every request goes through the client's one queue (client_queue.ts):
    // small files go out back to back, larger ones in turn; results are
    // printed as the server's replies come in.
    let code = 0;
    const fail = (err: unknown) => {
      if (ui.interrupted?.()) return;
      ui.err(`efx: ${describeError(err)}`);
      if (code === 0) code = exitCodeOf(err);
    };
    const inflight: Promise<void>[] = [];
    for (const path of positionals) {
      if (client.channel.broken) break;
      try {
        if (v.recursive && await isDir(path)) {
          await Promise.all(inflight.splice(0));
          await putTree(client, path, v.as ?? folderName(path), mo, ui);
          continue;
        }
        const remote = v.as ?? basename(path);
        const prog = makeProgress(remote, ui);
        const { done } = await client.uploadQueued(path, remote, {
          ...mo,
          ...prog,
          onNotice: notice(ui),
        });
        inflight.push(done.then((r) => {
          prog.done();
          reportUpload(remote, r, ui);
        }, (err) => {
          prog.abandon();
          fail(err);
        }));
        if (inflight.length >= 64) await inflight.shift();
      } catch (err) {
        fail(err);
      }
    }
    await Promise.all(inflight);
    return code;
  });
}

/**
 * Copies standard input into a private temp file (the server needs the
 * size before the data), runs `fn` on it, removes it. Bounded by the disk,
 * not by memory.
 */
async function withStdinFile(fn: (path: string) => Promise<number>): Promise<number> {
  const path = await Deno.makeTempFile({ prefix: "efx-stdin-" });
  // Ctrl-C while stdin is still being read: nothing was sent; remove the
  // copy and stop (a read from stdin cannot be cancelled).
  const reading = onInterrupt((sig) => {
    try {
      Deno.removeSync(path);
    } catch { /* gone */ }
    console.error("efx: interrupted");
    Deno.exit(sig === "SIGINT" ? 130 : 143);
  });
  try {
    try {
      using file = await Deno.open(path, { write: true, truncate: true });
      for await (const chunk of Deno.stdin.readable) await writeAll(file, chunk);
    } catch (err) {
      throw new EfxError(`cannot read standard input: ${describeError(err)}`);
    } finally {
      reading.dispose();
    }
    return await fn(path);
  } finally {
    await Deno.remove(path).catch(() => {});
  }
}

export const DOWNLOAD_USAGE =
  `usage: efx download NAME... [-o PATH] [-f] [--resume] [-r] [connection options]
  -o, --output PATH  where to write: a file, or a folder (an existing one, one
                     ending in '/' which is created, or any folder for several
                     NAMEs); '-' writes to standard output (default: ./<base name>)
  -f, --force        replace an existing local file
  --resume           continue an interrupted download (kept as .NAME.efx-partial; its
                     SHA-256 is compared with the server's file before going on)
  -r, --recursive    download a folder with everything in it
  -h, --help         this text
A download lands under its name only once its SHA-256 matched. With '-o -'
the bytes go out as they arrive (each record is authenticated); the whole-file
check comes at the end: exit code 1 then means the output is damaged.`;

/** `efx download NAME... [-o PATH] [--force] [--resume] [-r]` */
export async function downloadCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    output: { type: "string", short: "o" },
    force: { type: "boolean", short: "f" },
    resume: { type: "boolean" },
    recursive: { type: "boolean", short: "r" },
  }, "download");
  if (v.help) return usage(DOWNLOAD_USAGE);
  if (positionals.length === 0) throw new UsageError("download: name at least one NAME");
  const toStdout = v.output === "-";
  if (toStdout && (v.recursive || v.resume)) {
    throw new UsageError("download: -o - (standard output) works without -r and --resume");
  }
  if (!toStdout && v.output !== undefined && /[/\\]$/.test(v.output) && !(await isDir(v.output))) {
    try {
      await Deno.mkdir(v.output, { recursive: true });
    } catch (err) {
      throw new EfxError(`cannot make folder ${v.output}: ${describeError(err)}`);
    }
  }
  const outIsDir = !toStdout && v.output !== undefined &&
    (positionals.length > 1 || await isDir(v.output));
  if (
    !toStdout && positionals.length > 1 && v.output !== undefined && !(await isDir(v.output))
  ) {
    throw new UsageError(`download: -o ${v.output} must be an existing folder for several NAMEs`);
  }
  const target = (name: string) =>
    toStdout
      ? "-"
      : v.output === undefined
      ? folderName(name)
      : outIsDir
      ? join(v.output, folderName(name))
      : v.output;
  const mo = { force: v.force === true, resume: v.resume === true };
  return await withClient(
    v,
    (client, ui) =>
      eachItem(
        positionals,
        client,
        ui,
        (name) =>
          v.recursive
            ? getTree(client, name, target(name), mo, ui)
            : getOne(client, name, target(name), mo, ui).then(() => {}),
      ),
    // With -o -, standard output carries the data: every line goes to stderr.
    { dataOnStdout: toStdout },
  );
}

export const LS_USAGE = `usage: efx ls [PATTERN] [-l] [-h] [-r] [connection options]
  PATTERN          glob with * and ? matched against the whole name
  -l, --long       also show where each link points ('-> target')
  -h, --human      sizes in KiB, MiB, GiB instead of bytes
  -r, --recursive  list subfolders too
  --help           this text
Columns: mode, size in bytes, modification time (local time), name.`;

/** `efx ls [PATTERN] [-l] [-h] [-r]` */
export async function lsCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    help: { type: "boolean" }, // -h is --human here, as in ls(1)
    human: { type: "boolean", short: "h" },
    recursive: { type: "boolean", short: "r" },
    long: { type: "boolean", short: "l" },
  }, "ls");
  if (v.help) return usage(LS_USAGE);
  if (positionals.length > 1) throw new UsageError("ls: at most one PATTERN");
  return await withClient(v, async (client, ui) => {
    for (const e of await client.list(positionals[0], v.recursive === true)) {
      ui.out(listingLine(e, { human: v.human === true, long: v.long === true }));
    }
    return 0;
  });
}

export const RM_USAGE = `usage: efx rm NAME... [connection options]
  NAME             a file or a link on the server (a link is removed, not its target)
  -h, --help       this text`;

/** `efx rm NAME...` */
export async function rmCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, CONNECT_FLAGS, "rm");
  if (v.help) return usage(RM_USAGE);
  if (positionals.length === 0) throw new UsageError("rm: name at least one NAME");
  return await withClient(v, (client, ui) =>
    eachItem(positionals, client, ui, async (name) => {
      await client.remove(name);
      if (!ui.quiet) ui.out(`removed ${name}`);
    }));
}

function usage(text: string): number {
  console.log(`${text}\n${CONNECT_USAGE}`);
  return 0;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}
