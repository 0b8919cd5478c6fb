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

/**
 * Downloads one file and prints its summary line; returns its size (null
 * when `unlessSame` found the local file identical: nothing moved).
 */
export async function getOne(
  client: EfxClient,
  remote: string,
  local: string,
  mo: MoveOptions & { unlessSame?: { size: number; sha256: string } },
  ui: Ui,
): Promise<number | null> {
  const prog = makeProgress(remote, ui);
  try {
    const r = local === "-"
      ? await client.downloadToSink(remote, (chunk) => writeAll(Deno.stdout, chunk), prog)
      : await client.download(remote, local, { ...mo, ...prog, onNotice: notice(ui) });
    if (r.unchanged) return null;
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

/** What `-r` transfers may add (see folders.ts): re-runs, dry runs, exclusions, links. */
export interface TreeFlags {
  update?: boolean;
  checksum?: boolean;
  dryRun?: boolean;
  exclude?: string[];
  keepLinks?: boolean;
}

/**
 * Uploads a folder tree and prints one summary line (what was sent, left
 * unchanged, skipped, refused); returns 1 when the server refused an entry.
 */
export async function putTree(
  client: EfxClient,
  local: string,
  remote: string,
  mo: MoveOptions,
  ui: Ui,
  tf: TreeFlags = {},
): Promise<number> {
  const t0 = performance.now();
  const sum = await uploadTree(client, local, remote, {
    ...tf,
    force: mo.force,
    notice: notice(ui),
    out: ui.out,
    moveFile: (from, to, how) => putOne(client, from, to, { ...mo, force: how.force }, ui),
  });
  const verb = tf.dryRun ? "would upload" : "uploaded";
  if (!ui.quiet || tf.dryRun) {
    ui.out(treeLine(`${verb} ${local} as ${remote}`, sum, performance.now() - t0));
  }
  return sum.refused > 0 ? 1 : 0;
}

/** Downloads a folder tree and prints one summary line; returns 1 when an entry was refused. */
export async function getTree(
  client: EfxClient,
  remote: string,
  local: string,
  mo: MoveOptions,
  ui: Ui,
  tf: TreeFlags = {},
): Promise<number> {
  const t0 = performance.now();
  const sum = await downloadTree(client, remote, local, {
    ...tf,
    force: mo.force,
    notice: notice(ui),
    out: ui.out,
    moveFile: (from, to, how) =>
      getOne(client, from, to, { ...mo, force: how.force, unlessSame: how.unlessSame }, ui),
  });
  const verb = tf.dryRun ? "would download" : "downloaded";
  if (!ui.quiet || tf.dryRun) {
    ui.out(treeLine(`${verb} ${remote} to ${local}`, sum, performance.now() - t0));
  }
  return sum.refused > 0 ? 1 : 0;
}

function treeLine(what: string, s: TreeSummary, ms: number): string {
  const more = [
    s.unchanged ? `${s.unchanged} unchanged` : "",
    s.excluded ? `${s.excluded} excluded` : "",
    s.skipped ? `${s.skipped} skipped` : "",
    s.refused ? `${s.refused} refused` : "",
  ].filter((x) => x).map((x) => `, ${x}`).join("");
  return `${what}: ${s.files} files, ${s.folders} folders, ${s.links} links${more}, ` +
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
 * modification time (local), name, and `-> target` for a link.
 */
export function listingLine(e: FileInfo, opts: { human?: boolean; long?: boolean } = {}): string {
  const name = sanitize(e.name) + (e.type === "dir" ? "/" : "");
  // Links always show where they point (`long` is kept for callers; it adds nothing now).
  const target = e.type === "symlink" && typeof e.target === "string"
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
      if (!(err instanceof SilentFailure)) ui.err(`efx: ${describeError(err)}`);
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
  `usage: efx upload FILE... [DIR/ | --to DIR] [--as NAME] [-f] [--resume] [-r] [connection options]
       efx upload - --as NAME      (read the file from standard input)
  FILE             a local file; several go over one connection (files of at most
                   1 MiB back to back, without waiting for the server in between)
  DIR/             (last, after at least one FILE, ending in '/') the remote folder to
                   upload into (made when missing); the same as --to DIR. With -r, an
                   existing local folder written this way is uploaded instead: use --to
  --to DIR         the remote folder to upload into
  -                standard input, stored as NAME once it has ended (buffered in a
                   temp file first, as the server needs the size; needs the disk room)
  --as NAME        name on the server (one FILE only; default: the file's base name)
  -f, --force      replace a file of the same name on the server
  --resume         continue an interrupted upload (the server keeps the part it has;
                   both sides compare its SHA-256 before going on)
  -r, --recursive  upload folders: files, empty folders, modes, mtimes, symlinks (every
                   link goes as a link, whatever its target; the server never follows one)
with -r:
  --update         skip files whose size and mtime already match on the server (and
                   replace those that differ)
  --checksum       like --update, comparing SHA-256 instead of mtime (a same-size file
                   on the server is read once to compare: the protocol has no hash request)
  --dry-run        list what would be sent; send nothing
  --exclude PAT    leave out entries matching PAT (* and ?; with a '/' matched against the
                   path inside the folder, else against each name); repeatable
  -h, --help       this text`;

/** Flags of `-r` transfers (see folders.ts). */
const TREE_FLAGS = {
  update: { type: "boolean" },
  checksum: { type: "boolean" },
  "dry-run": { type: "boolean" },
  exclude: { type: "string", multiple: true },
} as const;

function treeFlags(
  v: { update?: boolean; checksum?: boolean; "dry-run"?: boolean; exclude?: string[] },
  recursive: boolean,
  command: string,
): TreeFlags {
  const tf: TreeFlags = {
    update: v.update === true || v.checksum === true,
    checksum: v.checksum === true,
    dryRun: v["dry-run"] === true,
    exclude: v.exclude ?? [],
  };
  if (!recursive && (tf.update || tf.dryRun || tf.exclude!.length > 0)) {
    throw new UsageError(`${command}: --update, --checksum, --dry-run and --exclude go with -r`);
  }
  return tf;
}

/** A remote folder as given by the user ("", "/" and "." are the top). */
export function remoteFolder(dir: string): string {
  const parts = dir.split("/").filter((p) => p !== "" && p !== ".");
  return parts.join("/");
}

/** `folder/name`, or `name` for the top folder. */
export function inFolder(folder: string, name: string): string {
  return folder === "" ? name : `${folder}/${name}`;
}

/** `efx upload FILE... [DIR/ | --to DIR] [--as NAME] [--force] [--resume] [-r]` */
export async function uploadCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    ...TREE_FLAGS,
    as: { type: "string" },
    to: { type: "string" },
    force: { type: "boolean", short: "f" },
    resume: { type: "boolean" },
    recursive: { type: "boolean", short: "r" },
  }, "upload");
  if (v.help) return usage(UPLOAD_USAGE);
  let toDir = v.to;
  // A last name ending in '/' is the remote folder; with -r, one that is an
  // existing local folder (as Tab completion writes it) is a source instead.
  const last = positionals.at(-1);
  if (
    toDir === undefined && positionals.length >= 2 && last!.endsWith("/") &&
    !(v.recursive && await isDir(last!))
  ) {
    toDir = positionals.pop();
  }
  if (positionals.length === 0) throw new UsageError("upload: name at least one FILE");
  if (v.as !== undefined && positionals.length > 1) {
    throw new UsageError("upload: --as works with a single FILE");
  }
  if (v.as !== undefined && toDir !== undefined) {
    throw new UsageError("upload: give --as NAME or a remote folder, not both");
  }
  if (positionals.includes("-") && (v.as === undefined || positionals.length > 1)) {
    throw new UsageError("upload: standard input ('-') needs --as NAME and no other FILE");
  }
  const tf = treeFlags(v, v.recursive === true, "upload");
  const folder = toDir === undefined ? "" : remoteFolder(toDir);
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
          const c = await putTree(
            client,
            path,
            v.as ?? inFolder(folder, folderName(path)),
            mo,
            ui,
            tf,
          );
          if (code === 0) code = c;
          continue;
        }
        const remote = v.as ?? inFolder(folder, basename(path));
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
  NAME               a file on the server, or a pattern with * and ? (quote it, so
                     that your shell leaves it alone) matched by the server
  -o, --output PATH  where to write: a file, or a folder (an existing one, one
                     ending in '/' which is created, or any folder for several
                     NAMEs or a pattern); '-' writes to standard output
                     (default: ./<base name>)
  -f, --force        replace an existing local file
  --resume           continue an interrupted download (kept as .NAME.efx-partial; its
                     SHA-256 is compared with the server's file before going on)
  -r, --recursive    download a folder with everything in it
with -r:
  --update           skip files whose size and mtime already match here (and replace
                     those that differ)
  --checksum         like --update, comparing SHA-256 (the server sends a file only
                     when its hash differs from the local copy's)
  --dry-run          list what would be fetched; write nothing
  --exclude PAT      leave out entries matching PAT (as for upload); repeatable
  --keep-links       recreate links whose target is absolute or leads outside the
                     folder as they are (default: skip them with a notice; the link
                     itself is always made inside the folder, nothing is written
                     through it)
  -h, --help         this text
A download lands under its name only once its SHA-256 matched. With '-o -'
the bytes go out as they arrive (each record is authenticated); the whole-file
check comes at the end: exit code 1 then means the output is damaged.`;

/** True when `name` has a wildcard (`*` or `?`). */
export function hasWildcard(name: string): boolean {
  return /[*?]/.test(name);
}

/**
 * The remote entries a download NAME stands for: a pattern is expanded by
 * the server (`ls`), a plain name stands for itself.
 */
export async function expandRemote(client: EfxClient, name: string): Promise<FileInfo[] | null> {
  if (!hasWildcard(name)) return null;
  const found = await client.list(name.replace(/\/+$/, ""));
  if (found.length === 0) throw new EfxError(`no file on the server matches ${name}`);
  return found;
}

/** `efx download NAME... [-o PATH] [--force] [--resume] [-r]` */
export async function downloadCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    ...TREE_FLAGS,
    "keep-links": { type: "boolean" },
    output: { type: "string", short: "o" },
    force: { type: "boolean", short: "f" },
    resume: { type: "boolean" },
    recursive: { type: "boolean", short: "r" },
  }, "download");
  if (v.help) return usage(DOWNLOAD_USAGE);
  if (positionals.length === 0) throw new UsageError("download: name at least one NAME");
  const tf = { ...treeFlags(v, v.recursive === true, "download"), keepLinks: v["keep-links"] };
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
  const several = positionals.length > 1 || positionals.some(hasWildcard);
  const outIsDir = !toStdout && v.output !== undefined && (several || await isDir(v.output));
  if (!toStdout && several && v.output !== undefined && !(await isDir(v.output))) {
    throw new UsageError(
      `download: -o ${v.output} must be an existing folder (or end in '/') for several NAMEs`,
    );
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
    async (client, ui) => {
      let code = 0;
      const one = async (name: string, type?: FileInfo["type"]) => {
        if (type === "dir" && !v.recursive) {
          ui.err(`efx: skipping ${name}: a folder (use -r)`);
        } else if (type === "symlink") {
          ui.err(`efx: skipping ${name}: a link (download its folder with -r to keep it)`);
        } else if (v.recursive && (type === "dir" || type === undefined)) {
          const c = await getTree(client, name, target(name), mo, ui, tf);
          if (code === 0) code = c;
        } else {
          await getOne(client, name, target(name), mo, ui);
        }
      };
      const c = await eachItem(positionals, client, ui, async (name) => {
        const matches = await expandRemote(client, name);
        if (matches === null) return await one(name);
        const c2 = await eachItem(matches, client, ui, (e) => one(e.name, e.type));
        if (c2 !== 0) throw new SilentFailure(c2);
      });
      return code || c;
    },
    // With -o -, standard output carries the data: every line goes to stderr.
    { dataOnStdout: toStdout },
  );
}

/** A failure already reported line by line; carries only the exit code. */
class SilentFailure extends EfxError {
  constructor(code: number) {
    super("", code as unknown as ExitCode);
  }
}

export const LS_USAGE = `usage: efx ls [NAME | PATTERN] [-l] [-h] [-r] [connection options]
  NAME             a folder: its contents (with -r everything below it); a file: itself
  PATTERN          glob with * and ? matched against the whole name
  -l, --long       (accepted; links always show '-> target')
  -h, --human      sizes in KiB, MiB, GiB instead of bytes
  -r, --recursive  list subfolders too
  --help           this text
Columns: mode, size in bytes, modification time (local time), name (links: '-> target').`;

/**
 * What `ls NAME` shows: a folder's contents (its tree with `recursive`),
 * else the server's answer for NAME as a pattern.
 */
export async function listRemote(
  client: EfxClient,
  name: string | undefined,
  recursive: boolean,
): Promise<FileInfo[]> {
  const n = name === undefined ? "" : remoteFolder(name);
  if (n === "" || hasWildcard(n)) return await client.list(n || undefined, recursive);
  const self = await client.list(n);
  if (self.length === 1 && self[0].name === n && self[0].type === "dir") {
    return recursive ? await client.tree(n) : await client.list(`${n}/*`);
  }
  return recursive ? await client.list(n, true) : self;
}

/** `efx ls [NAME] [-l] [-h] [-r]` */
export async function lsCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    help: { type: "boolean" }, // -h is --human here, as in ls(1)
    human: { type: "boolean", short: "h" },
    recursive: { type: "boolean", short: "r" },
    long: { type: "boolean", short: "l" },
  }, "ls");
  if (v.help) return usage(LS_USAGE);
  if (positionals.length > 1) throw new UsageError("ls: at most one PATTERN or NAME");
  return await withClient(v, async (client, ui) => {
    for (const e of await listRemote(client, positionals[0], v.recursive === true)) {
      ui.out(listingLine(e, { human: v.human === true, long: true }));
    }
    return 0;
  });
}

export const RM_USAGE = `usage: efx rm [-r] NAME... [connection options]
  NAME             a file or a link on the server (a link is removed, not its target)
  -r, --recursive  also a folder, with everything in it
  -h, --help       this text`;

/** `efx rm [-r] NAME...` */
export async function rmCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    recursive: { type: "boolean", short: "r" },
  }, "rm");
  if (v.help) return usage(RM_USAGE);
  if (positionals.length === 0) throw new UsageError("rm: name at least one NAME");
  return await withClient(v, (client, ui) =>
    eachItem(positionals, client, ui, async (name) => {
      await client.remove(name, v.recursive === true);
      if (!ui.quiet) ui.out(`removed ${name}`);
    }));
}

export const MKDIR_USAGE = `usage: efx mkdir DIR... [connection options]
  DIR              a folder to make on the server (missing parents too; an existing
                   folder is fine)
  -h, --help       this text`;

/** `efx mkdir DIR...` */
export async function mkdirCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, CONNECT_FLAGS, "mkdir");
  if (v.help) return usage(MKDIR_USAGE);
  if (positionals.length === 0) throw new UsageError("mkdir: name at least one DIR");
  return await withClient(v, (client, ui) =>
    eachItem(positionals, client, ui, async (name) => {
      await client.mkdir(name);
      if (!ui.quiet) ui.out(`made folder ${name}`);
    }));
}

export const RMDIR_USAGE = `usage: efx rmdir DIR... [connection options]
  DIR              an empty folder on the server (use 'rm -r' for a full one)
  -h, --help       this text`;

/** `efx rmdir DIR...` */
export async function rmdirCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, CONNECT_FLAGS, "rmdir");
  if (v.help) return usage(RMDIR_USAGE);
  if (positionals.length === 0) throw new UsageError("rmdir: name at least one DIR");
  return await withClient(v, (client, ui) =>
    eachItem(positionals, client, ui, async (name) => {
      await client.rmdir(name);
      if (!ui.quiet) ui.out(`removed folder ${name}`);
    }));
}

export const MV_USAGE = `usage: efx mv [-f] FROM TO [connection options]
  FROM             a file, link or folder on the server
  TO               its new name (ending in '/': the folder to move it into); missing
                   parents are made. The rename is one step on the server.
  -f, --force      replace a file TO (never a folder)
  -h, --help       this text`;

/** The name `mv FROM TO` renames to: `TO/base(FROM)` when TO ends in '/'. */
export function moveTarget(from: string, to: string): string {
  return to.endsWith("/") ? inFolder(remoteFolder(to), basename(remoteFolder(from))) : to;
}

/** `efx mv [-f] FROM TO` */
export async function mvCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    force: { type: "boolean", short: "f" },
  }, "mv");
  if (v.help) return usage(MV_USAGE);
  if (positionals.length !== 2) throw new UsageError("mv: name FROM and TO");
  const [from, to] = positionals;
  return await withClient(v, async (client, ui) => {
    const dest = moveTarget(from, to);
    await client.rename(from, dest, v.force === true);
    if (!ui.quiet) ui.out(`renamed ${from} to ${dest}`);
    return 0;
  });
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
