/**
 * The client subcommands: `upload`, `download`, `ls`, `rm`, and the pieces
 * the interactive prompt shares with them (connecting from flags, one put,
 * one get, printing a listing).
 *
 * @module
 */
import { basename, join } from "node:path";
import { intFlag, parseFlags, parseHostPort } from "../cli/flags.ts";
import { type ClientIdentity, loadClientIdentity } from "../auth.ts";
import { sanitize } from "../bytes.ts";
import { type ClientTransferResult, EfxClient } from "../client.ts";
import { describeError, EfxError, exitCodeOf, UsageError } from "../errors.ts";
import { loadPublicKeyFile } from "../keys.ts";
import {
  formatBytes,
  formatDuration,
  formatRate,
  Progress,
  progressWanted,
  summaryLine,
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
}

/** A Ui on stdout/stderr from the quiet/verbose flags. */
export function uiFromFlags(v: ConnectFlags): Ui {
  return {
    quiet: v.quiet === true,
    verbose: v.verbose === true && v.quiet !== true,
    out: (line) => console.log(line),
    err: (line) => console.error(line),
  };
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
    done: () => p?.done(),
  };
}

/** How one file moves: overwrite and resume choices. */
export interface MoveOptions {
  force: boolean;
  resume: boolean;
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
    prog.done();
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
    const r = await client.download(remote, local, { ...mo, ...prog, onNotice: notice(ui) });
    prog.done();
    if (!ui.quiet) {
      ui.out(
        summaryLine({
          name: local,
          bytes: r.bytes,
          ms: r.ms,
          sha256: r.sha256,
          verb: "downloaded",
        }) +
          resumed(r.resumedFrom),
      );
    }
    if (ui.verbose) ui.err(`efx: sha256 server sent ${r.peerSha256}, received ${r.sha256}`);
    return r.bytes + r.resumedFrom;
  } finally {
    prog.done();
  }
}

/** The summary line of one upload (and both hashes with --verbose). */
function reportUpload(remote: string, r: ClientTransferResult, ui: Ui): void {
  if (!ui.quiet) {
    ui.out(
      summaryLine({ name: remote, bytes: r.bytes, ms: r.ms, sha256: r.sha256, verb: "uploaded" }) +
        resumed(r.resumedFrom),
    );
  }
  if (ui.verbose) ui.err(`efx: sha256 sent ${r.sha256}, server computed ${r.peerSha256}`);
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

/** One listing line: mode, size, mtime, name. */
export function listingLine(e: FileInfo): string {
  const when = new Date(e.mtime).toISOString().slice(0, 16).replace("T", " ");
  const name = sanitize(e.name) + (e.type === "dir" ? "/" : "");
  return `${modeString(e.type, e.mode)} ${String(e.size).padStart(12)} ${when} ${name}`;
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
): Promise<number> {
  const ui = uiFromFlags(v);
  const client = await connectFromFlags(v, ui);
  const interrupt = onInterrupt(() => client.channel.abort());
  try {
    const code = await run(client, ui);
    interrupt.check();
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

/**
 * On SIGINT or SIGTERM, runs `stop` (which aborts the connection, so that the
 * transfer under way fails and cleans up its temp file) instead of dying on
 * the spot. `check()` then throws "interrupted".
 */
export function onInterrupt(stop: () => void) {
  let hit = false;
  const handler = () => {
    hit = true;
    stop();
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const sig of signals) Deno.addSignalListener(sig, handler);
  return {
    check() {
      if (hit) throw new EfxError("interrupted; unfinished transfers were discarded");
    },
    dispose() {
      for (const sig of signals) Deno.removeSignalListener(sig, handler);
    },
  };
}

export const UPLOAD_USAGE =
  `usage: efx upload FILE... [--as NAME] [--force] [--resume] [-r] [connection options]
  --as NAME        name on the server (one FILE only; default: the file's base name)
  -f, --force      replace a file of the same name on the server
  --resume         continue an interrupted upload (the server keeps the part it has;
                   both sides compare its SHA-256 before going on)
  -r, --recursive  upload folders: files, empty folders, modes, mtimes, symlinks inside`;

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
  const mo = { force: v.force === true, resume: v.resume === true };
  return await withClient(v, async (client, ui) => {
    // Small files go out back to back (see EfxClient.uploadQueued); their
    // results are printed as the server's replies come in.
    let code = 0;
    const fail = (err: unknown) => {
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
          prog.done();
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

export const DOWNLOAD_USAGE =
  `usage: efx download NAME... [-o PATH] [--force] [--resume] [-r] [connection options]
  -o, --output PATH  where to write (a folder when several NAMEs; default: ./<base name>)
  -f, --force        replace an existing local file
  --resume           continue an interrupted download (kept as .NAME.efx-partial; its
                     SHA-256 is compared with the server's file before going on)
  -r, --recursive    download a folder with everything in it`;

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
  const outIsDir = v.output !== undefined && (positionals.length > 1 || await isDir(v.output));
  if (positionals.length > 1 && v.output !== undefined && !(await isDir(v.output))) {
    throw new UsageError(`download: -o ${v.output} must be an existing folder for several NAMEs`);
  }
  const target = (name: string) =>
    v.output === undefined
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
  );
}

export const LS_USAGE = `usage: efx ls [PATTERN] [-r] [connection options]
  PATTERN          glob with * and ? matched against the whole name
  -r, --recursive  list subfolders too
Columns: mode, size in bytes, modification time (UTC), name.`;

/** `efx ls [PATTERN] [-r]` */
export async function lsCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    recursive: { type: "boolean", short: "r" },
    long: { type: "boolean", short: "l" },
  }, "ls");
  if (v.help) return usage(LS_USAGE);
  if (positionals.length > 1) throw new UsageError("ls: at most one PATTERN");
  return await withClient(v, async (client, ui) => {
    for (const e of await client.list(positionals[0], v.recursive === true)) ui.out(listingLine(e));
    return 0;
  });
}

export const RM_USAGE = `usage: efx rm NAME... [connection options]`;

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
