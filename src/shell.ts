/**
 * The interactive prompt (`efx` with no subcommand, or `efx shell`): one
 * command per line over one connection. Errors are printed and the prompt
 * goes on.
 *
 * On a terminal the prompt is node:readline: line editing, history (up and
 * down arrows), tab completion of commands and local paths. Ctrl-C at the
 * prompt clears the line; Ctrl-C during a transfer cancels that transfer
 * only (its temp file is removed; the connection, which cannot be stopped
 * half-way through a stream, is opened again for the next command); Ctrl-D
 * on an empty line leaves. Fed from a pipe or a file, it reads plain lines,
 * ends at end of input or when the connection breaks, and exits with the
 * first failure's code.
 *
 * @module
 */
import { basename, join } from "node:path";
import process from "node:process";
import { createInterface, type Interface } from "node:readline";
import type { EfxClient } from "./client.ts";
import type { FileInfo } from "./messages.ts";
import { compileGlob } from "./storage/glob.ts";
import {
  CONNECT_FLAGS,
  CONNECT_USAGE,
  connectFromFlags,
  getOne,
  getTree,
  inFolder,
  InterruptedError,
  listingLine,
  listRemote,
  onInterrupt,
  putOne,
  putTree,
  type Ui,
  uiFromFlags,
} from "./commands/client.ts";
import { parseFlags } from "./cli/flags.ts";
import { folderName } from "./folders.ts";
import { describeError, EfxError, type ExitCode, exitCodeOf, UsageError } from "./errors.ts";
import { sanitize } from "./bytes.ts";

export const SHELL_HELP = `commands:
  put LOCAL [REMOTE] [-f] [-r]  upload a file (-f replaces an existing one; -r a folder)
  put LOCAL... [DIR/] [-f] [-r] upload several files or a wildcard (*, ?) into DIR/ or here
  get REMOTE [LOCAL] [-f] [-r]  download a file (-f replaces an existing local file; -r a folder)
  get REMOTE... [DIR/] [-f] [-r] download several names or a wildcard (matched by the server)
  reput LOCAL [REMOTE] [-f]     upload, continuing an interrupted upload
  reget REMOTE [LOCAL] [-f]     download, continuing an interrupted download
  ls [NAME] [-l] [-h] [-r]      list the folder (or NAME; -h: KiB/MiB; -r: subfolders)
  cd [DIR]                      change the remote folder (no DIR: the top); pwd shows it
  lcd [DIR], lpwd, lls [PATH]   the same for the local folder
  mkdir DIR...                  make remote folders
  rmdir DIR...                  remove empty remote folders
  rename FROM TO [-f]           rename on the server in one step (also: mv)
  rm [-r] NAME...               remove files or links (-r: folders with everything in them)
  help                          this text
  quit                          leave (also: exit, Ctrl-D)
Remote names are relative to the remote folder (cd, pwd); names with spaces go in quotes:
put "my file.txt". With two names and no wildcard, put and get
take the second as the new name unless it ends in '/'. On a terminal: arrows for history and
editing, Tab completes commands, local and remote names, Ctrl-C cancels the transfer under way.
The connection is kept alive while the prompt waits (--keepalive SECONDS, default 60; 0: off);
if it was lost anyway, the next command reconnects and says so.`;

/** The words the prompt knows, for completion. */
export const SHELL_COMMANDS = [
  "put",
  "get",
  "reput",
  "reget",
  "ls",
  "cd",
  "pwd",
  "lcd",
  "lpwd",
  "lls",
  "mkdir",
  "rmdir",
  "rename",
  "mv",
  "rm",
  "help",
  "quit",
  "exit",
];

/** Splits a command line into words; double or single quotes group, backslash escapes in double quotes. */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let cur = "";
  let inWord = false;
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < line.length) cur += line[++i];
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (c === " " || c === "\t") {
      if (inWord) words.push(cur);
      cur = "";
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) throw new UsageError("unclosed quote");
  if (inWord) words.push(cur);
  return words;
}

/** Lines of standard input, without line ends. */
async function* stdinLines(): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of Deno.stdin.readable) {
    pending += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      yield pending.slice(0, nl).replace(/\r$/, "");
      pending = pending.slice(nl + 1);
    }
  }
  if (pending) yield pending;
}

/**
 * One prompt session: the connection (opened again when lost) and the
 * remote working folder. Remote names typed at the prompt are resolved
 * against that folder here, on the client; the server only ever sees
 * names from its top folder.
 */
export class ShellSession {
  client: EfxClient | undefined;
  /** The remote working folder ("" is the top). */
  cwd = "";
  /** Why the connection was lost while the prompt waited, when it was. */
  lostWhileIdle: string | undefined;
  readonly ui: Ui;
  readonly #connect: () => Promise<EfxClient>;
  #lastUse = performance.now();
  #cache = new Map<string, { at: number; names: Promise<FileInfo[]> }>();

  constructor(client: EfxClient, connect: () => Promise<EfxClient>, ui: Ui) {
    this.client = client;
    this.#connect = connect;
    this.ui = ui;
  }

  /**
   * A live connection for the next command. After a quiet spell the
   * connection is tried first (one small request), so that a connection the
   * server dropped is replaced before a command is sent into it: the
   * reconnect is announced on stderr and the command runs as usual.
   */
  async live(): Promise<EfxClient> {
    if (this.client && !this.client.channel.broken && performance.now() - this.#lastUse > 1000) {
      try {
        await this.client.ping();
      } catch (err) {
        this.#drop(describeError(err));
      }
    }
    if (this.client?.channel.broken) this.#drop("the connection broke");
    if (!this.client) {
      this.client = await this.#connect();
      if (this.lostWhileIdle !== undefined) {
        this.ui.err(`efx: the connection was lost while idle (${this.lostWhileIdle}); reconnected`);
        this.lostWhileIdle = undefined;
      }
    }
    return this.client;
  }

  /** Notes that the connection was just used (a command ended). */
  touch(): void {
    this.#lastUse = performance.now();
  }

  /** Keeps the connection alive while idle: one ping; a failure drops it (to reconnect later). */
  async keepalive(): Promise<void> {
    const c = this.client;
    if (!c || c.channel.broken) return;
    try {
      await c.ping();
      this.touch();
    } catch (err) {
      if (this.client === c) this.#drop(describeError(err));
    }
  }

  /**
   * Ends the session in order. A connection the server already dropped
   * while the prompt waited (found by a ping after a quiet spell) is just
   * let go: its end is not news.
   */
  async close(): Promise<void> {
    const c = this.client;
    if (!c) return;
    this.client = undefined;
    if (!c.channel.broken && performance.now() - this.#lastUse > 1000) {
      try {
        await c.ping();
      } catch {
        c.channel.abort();
        return;
      }
    }
    if (c.channel.broken) c.channel.abort();
    else await c.close();
  }

  #drop(why: string): void {
    this.client?.channel.abort();
    this.client = undefined;
    this.lostWhileIdle ??= why;
  }

  /** The name from the top of the server for `name` typed at the prompt ("" is the top). */
  resolve(name: string): string {
    return resolveRemote(this.cwd, name);
  }

  /** Remote entries of folder `dir` (resolved), cached for a few seconds (for Tab). */
  async entriesOf(dir: string): Promise<FileInfo[]> {
    const hit = this.#cache.get(dir);
    if (hit && performance.now() - hit.at < COMPLETION_CACHE_MS) return await hit.names;
    const c = this.client;
    if (!c || c.channel.broken) return [];
    const names = (dir === "" ? c.list() : c.list(`${dir.replace(/[*?]/g, "?")}/*`)).then(
      (list) => list.filter((e) => e.name.startsWith(dir === "" ? "" : `${dir}/`)),
    );
    this.#cache.set(dir, { at: performance.now(), names });
    try {
      return await names;
    } catch {
      this.#cache.delete(dir);
      return [];
    }
  }

  /** Forgets cached listings (after a command that may have changed them). */
  forget(): void {
    this.#cache.clear();
  }
}

/** How long remote names offered by Tab are reused before asking the server again. */
export const COMPLETION_CACHE_MS = 5000;

/**
 * Resolves `name` against remote folder `cwd`: "/" starts from the top,
 * "." and ".." work as usual (never above the top). Returns "" for the top.
 */
export function resolveRemote(cwd: string, name: string): string {
  const parts = name.startsWith("/") ? [] : cwd.split("/").filter((p) => p !== "");
  for (const p of name.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") {
      if (parts.length === 0) throw new UsageError(`${name}: above the top folder of the server`);
      parts.pop();
    } else parts.push(p);
  }
  return parts.join("/");
}

/** Local names matching `pattern` (`*`, `?` per component); the name itself when it has none. */
export function expandLocal(pattern: string): string[] {
  if (!/[*?]/.test(pattern)) return [pattern];
  const absolute = pattern.startsWith("/");
  const parts = pattern.split("/").filter((p) => p !== "");
  let found = [absolute ? "/" : ""];
  for (const part of parts) {
    const next: string[] = [];
    for (const base of found) {
      if (!/[*?]/.test(part)) {
        next.push(base === "" ? part : join(base, part));
        continue;
      }
      const g = compileGlob(part);
      try {
        for (const e of Deno.readDirSync(base === "" ? "." : base)) {
          if (e.name.startsWith(".") && !part.startsWith(".")) continue;
          if (g.test(e.name)) next.push(base === "" ? e.name : join(base, e.name));
        }
      } catch { /* unreadable: no match there */ }
    }
    found = next;
  }
  const hits = found.filter((p) => {
    try {
      Deno.lstatSync(p);
      return true;
    } catch {
      return false;
    }
  }).sort();
  if (hits.length === 0) throw new UsageError(`no local file matches ${pattern}`);
  return hits;
}

/**
 * Splits put/get arguments into sources and a destination: with exactly two
 * names and no wildcard, the second is the new name (as before); a last
 * name ending in '/' is a destination folder; otherwise every name is a
 * source and the destination is the current folder.
 */
function sourcesAndDest(args: string[]): { sources: string[]; dest?: string; folder: boolean } {
  if (args.length === 2 && !args.some((a) => /[*?]/.test(a)) && !args[1].endsWith("/")) {
    return { sources: [args[0]], dest: args[1], folder: false };
  }
  if (args.length >= 2 && args.at(-1)!.endsWith("/")) {
    return { sources: args.slice(0, -1), dest: args.at(-1), folder: true };
  }
  return { sources: args, folder: false };
}

/** Runs one prompt command. Returns false when the user asked to leave. */
export async function runShellLine(
  target: EfxClient | ShellSession,
  line: string,
  ui: Ui,
): Promise<boolean> {
  const words = splitWords(line.trim());
  if (words.length === 0) return true;
  const session = target instanceof ShellSession
    ? target
    : new ShellSession(target, () => Promise.reject(new Error("connection lost")), ui);
  const [cmd, ...rest] = words;
  const local = (cmd: string) =>
    ["quit", "exit", "bye", "help", "?", "pwd", "lpwd", "lcd", "lls"].includes(cmd);
  const client = local(cmd) ? undefined : await session.live();
  try {
    return await runCommand(session, client, cmd, rest, ui);
  } finally {
    if (client) session.touch(); // the connection was used until now
  }
}

async function runCommand(
  session: ShellSession,
  client: EfxClient | undefined,
  cmd: string,
  rest: string[],
  ui: Ui,
): Promise<boolean> {
  const force = rest.includes("-f") || rest.includes("--force");
  const recursive = rest.includes("-r");
  const flags = ["-f", "--force", "-r", ...(cmd === "ls" ? ["-l", "-h", "-lh", "-hl"] : [])];
  const args = rest.filter((w) => !flags.includes(w));
  const human = rest.some((w) => w === "-h" || w === "-lh" || w === "-hl");
  const r = (name: string) => session.resolve(name);
  let code = 0;
  const note = (c: number) => {
    if (code === 0) code = c;
  };
  switch (cmd) {
    case "quit":
    case "exit":
    case "bye":
      return false;
    case "help":
    case "?":
      ui.out(SHELL_HELP);
      return true;
    case "pwd":
      ui.out(`/${session.cwd}`);
      return true;
    case "lpwd":
      ui.out(Deno.cwd());
      return true;
    case "cd": {
      if (args.length > 1) throw new UsageError("usage: cd [DIR]");
      const to = args.length === 0 ? "" : r(args[0]);
      if (to !== "") {
        const found = await client!.list(to.replace(/[*?]/g, "?"));
        const e = found.find((x) => x.name === to);
        if (!e) throw new EfxError(`${args[0]}: no such folder on the server`);
        if (e.type !== "dir") throw new EfxError(`${args[0]}: not a folder`);
      }
      session.cwd = to;
      return true;
    }
    case "lcd": {
      if (args.length > 1) throw new UsageError("usage: lcd [DIR]");
      const to = args[0] ?? homeFolder();
      try {
        Deno.chdir(to);
      } catch (err) {
        throw new EfxError(`lcd ${to}: ${describeError(err)}`);
      }
      return true;
    }
    case "lls": {
      if (args.length > 1) throw new UsageError("usage: lls [PATH]");
      for (const line of localListing(args[0] ?? ".")) ui.out(line);
      return true;
    }
    case "put":
    case "reput": {
      if (args.length < 1 || (cmd === "reput" && args.length > 2)) {
        throw new UsageError(`usage: ${cmd} LOCAL [REMOTE] [-f]`);
      }
      const mo = { force, resume: cmd === "reput" };
      // As for `efx upload -r`: a local folder written "dir/" is a source.
      const localDir = recursive && args.length >= 2 && isLocalDir(args.at(-1)!);
      const { sources, dest, folder } = localDir
        ? { sources: args, dest: undefined, folder: false }
        : sourcesAndDest(args);
      const into = folder ? r(dest!) : session.cwd;
      const files = sources.flatMap(expandLocal);
      const name = (l: string) =>
        !folder && dest !== undefined
          ? r(dest)
          : inFolder(into, recursive ? folderName(l) : basename(l));
      for (const l of files) {
        if (recursive) note(await putTree(client!, l, name(l), mo, ui));
        else await putOne(client!, l, name(l), mo, ui);
      }
      session.forget();
      if (code !== 0) throw new SilentShellFailure(code);
      return true;
    }
    case "get":
    case "reget": {
      if (args.length < 1 || (cmd === "reget" && args.length > 2)) {
        throw new UsageError(`usage: ${cmd} REMOTE [LOCAL] [-f]`);
      }
      const mo = { force, resume: cmd === "reget" };
      const { sources, dest, folder } = sourcesAndDest(args);
      if (folder) await Deno.mkdir(dest!, { recursive: true });
      const names: { name: string; type?: FileInfo["type"] }[] = [];
      for (const s of sources) {
        const full = r(s);
        if (!/[*?]/.test(full)) names.push({ name: full });
        else {
          const found = await client!.list(full);
          if (found.length === 0) throw new EfxError(`no file on the server matches ${s}`);
          names.push(...found.map((e) => ({ name: e.name, type: e.type })));
        }
      }
      const to = (n: string) =>
        !folder && dest !== undefined ? dest : folder ? join(dest!, folderName(n)) : folderName(n);
      for (const { name, type } of names) {
        if (type === "dir" && !recursive) ui.err(`efx: skipping ${name}: a folder (use -r)`);
        else if (type === "symlink") ui.err(`efx: skipping ${name}: a link`);
        else if (recursive) note(await getTree(client!, name, to(name), mo, ui));
        else await getOne(client!, name, to(name), mo, ui);
      }
      if (code !== 0) throw new SilentShellFailure(code);
      return true;
    }
    case "ls":
      if (args.length > 1) throw new UsageError("usage: ls [NAME] [-l] [-h] [-r]");
      {
        const at = args.length === 0 ? session.cwd : r(args[0]);
        const entries = await listRemote(client!, at === "" ? undefined : at, recursive);
        for (const e of entries) ui.out(listingLine(e, { human }));
      }
      return true;
    case "mkdir":
    case "rmdir":
      if (args.length === 0) throw new UsageError(`usage: ${cmd} DIR...`);
      for (const d of args) {
        if (cmd === "mkdir") await client!.mkdir(r(d));
        else await client!.rmdir(r(d));
        ui.out(`${cmd === "mkdir" ? "made" : "removed"} folder ${r(d)}`);
      }
      session.forget();
      return true;
    case "rename":
    case "mv": {
      if (args.length !== 2) throw new UsageError(`usage: ${cmd} FROM TO [-f]`);
      const from = r(args[0]);
      const to = args[1].endsWith("/") ? inFolder(r(args[1]), basename(from)) : r(args[1]);
      await client!.rename(from, to, force);
      ui.out(`renamed ${from} to ${to}`);
      session.forget();
      return true;
    }
    case "rm":
      if (args.length === 0) throw new UsageError("usage: rm [-r] NAME...");
      for (const n of args) {
        await client!.remove(r(n), recursive);
        ui.out(`removed ${r(n)}`);
      }
      session.forget();
      return true;
    default:
      throw new UsageError(`unknown command '${cmd}' (type 'help')`);
  }
}

/** A command whose failures were already shown line by line; carries the exit code. */
class SilentShellFailure extends EfxError {
  constructor(code: number) {
    super("", code as unknown as ExitCode);
  }
}

function isLocalDir(path: string): boolean {
  try {
    return path.endsWith("/") && Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

function homeFolder(): string {
  try {
    return Deno.env.get("HOME") || ".";
  } catch {
    return ".";
  }
}

/** `lls`: the local folder's entries (or one file) in the listing format. */
function localListing(path: string): string[] {
  const info = (name: string, st: Deno.FileInfo, full: string): FileInfo => ({
    name,
    size: st.size,
    mode: (st.mode ?? 0) & 0o777,
    mtime: st.mtime?.getTime() ?? 0,
    type: st.isSymlink ? "symlink" : st.isDirectory ? "dir" : "file",
    target: st.isSymlink ? Deno.readLinkSync(full) : undefined,
  });
  try {
    const st = Deno.lstatSync(path);
    if (!st.isDirectory) return [listingLine(info(path, st, path))];
    const names = [...Deno.readDirSync(path)].map((e) => e.name).sort();
    return names.map((n) => {
      const full = join(path, n);
      return listingLine(info(n, Deno.lstatSync(full), full));
    });
  } catch (err) {
    throw new EfxError(`lls ${path}: ${describeError(err)}`);
  }
}

/** Seconds between keepalive requests while the prompt waits (below the server's 300 s default). */
export const DEFAULT_KEEPALIVE_S = 60;

/** `efx shell [--keepalive S] [connection options]`, also `efx` alone. */
export async function shellCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, {
    ...CONNECT_FLAGS,
    keepalive: { type: "string" },
  }, "shell");
  if (v.help) {
    console.log(
      `usage: efx [shell] [--keepalive SECONDS] [connection options]\n${SHELL_HELP}\n` +
        `  --keepalive S   seconds between keepalive requests while idle (default ` +
        `${DEFAULT_KEEPALIVE_S}; 0: none; fractions allowed)\n${CONNECT_USAGE}`,
    );
    return 0;
  }
  if (positionals.length) {
    throw new UsageError(`unknown command '${positionals[0]}' (see 'efx help')`);
  }
  const keepaliveMs = keepaliveFlag(v.keepalive);
  const ui = uiFromFlags(v);
  const session = new ShellSession(
    await connectFromFlags(v, ui),
    () => connectFromFlags(v, ui),
    ui,
  );
  if (isTerminal(Deno.stdin) && isTerminal(Deno.stdout)) {
    return await interactive(session, ui, keepaliveMs);
  }
  // From a pipe: Ctrl-C or SIGTERM during a transfer aborts it (its temp
  // file is removed) and ends the run with "efx: interrupted".
  let busy = false;
  const interrupt = onInterrupt(() => {
    session.client?.channel.abort();
    if (!busy) Deno.exit(0);
  });
  const setBusy = (b: boolean) => busy = b;
  try {
    return await runShell(session, ui, interrupt, setBusy, keepaliveMs);
  } finally {
    interrupt.dispose();
  }
}

function keepaliveFlag(value: string | undefined): number {
  if (value === undefined) return DEFAULT_KEEPALIVE_S * 1000;
  const n = /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (!(n >= 0 && n <= 86400)) {
    throw new UsageError(`--keepalive must be a number of seconds from 0 to 86400, not '${value}'`);
  }
  return Math.round(n * 1000);
}

/**
 * While `waiting` is pending, pings the server every `everyMs` (0: never).
 * Returns once the pings have stopped, so that nothing is in flight when the
 * next command starts.
 */
async function keptAlive<T>(
  session: ShellSession,
  everyMs: number,
  waiting: Promise<T>,
): Promise<T> {
  if (everyMs <= 0) return await waiting;
  let ping: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    ping = ping.then(() => session.keepalive());
  }, everyMs);
  try {
    return await waiting;
  } finally {
    clearInterval(timer);
    await ping;
  }
}

function isTerminal(stream: { isTerminal(): boolean }): boolean {
  try {
    return stream.isTerminal();
  } catch {
    return false;
  }
}

async function runShell(
  session: ShellSession,
  ui: Ui,
  interrupt: ReturnType<typeof onInterrupt>,
  setBusy: (busy: boolean) => void,
  keepaliveMs: number,
): Promise<number> {
  let code = 0;
  const lines = stdinLines();
  while (true) {
    const next = await keptAlive(session, keepaliveMs, lines.next());
    if (next.done) break;
    try {
      setBusy(true);
      if (!(await runShellLine(session, next.value, ui))) break;
    } catch (err) {
      interrupt.check();
      if (!(err instanceof SilentShellFailure)) ui.err(`efx: ${describeError(err)}`);
      if (code === 0) code = exitCodeOf(err);
      if (session.client?.channel.broken) {
        session.client.channel.abort();
        return code;
      }
    }
    setBusy(false);
  }
  await session.close();
  return code;
}

/** Where a word of a command line is a local or a remote name. */
function argKind(cmd: string, argIndex: number): "local" | "remote" | null {
  switch (cmd) {
    case "put":
    case "reput":
      return argIndex === 1 || cmd === "put" ? "local" : "remote";
    case "get":
    case "reget":
      return argIndex === 2 && cmd === "reget" ? "local" : "remote";
    case "lcd":
    case "lls":
      return "local";
    case "ls":
    case "cd":
    case "rm":
    case "rmdir":
    case "mkdir":
    case "rename":
    case "mv":
      return "remote";
    default:
      return null;
  }
}

/**
 * Completions for the line typed so far: command names for the first word,
 * local paths (folders with a trailing "/") where a local path goes (put's
 * names, lcd, lls), remote names where a remote one goes (get's names, ls,
 * cd, rm, rmdir, mkdir, rename), from a listing of that remote folder
 * (cached a few seconds; `session` absent: no remote names).
 */
export async function completeLine(
  line: string,
  session?: ShellSession,
): Promise<[string[], string]> {
  const m = /^(\s*)(\S*)$/.exec(line);
  if (m) {
    const hits = SHELL_COMMANDS.filter((c) => c.startsWith(m[2]));
    return [hits.map((c) => c + " "), m[2]];
  }
  const words = line.trimStart().split(/\s+/);
  const cmd = words[0];
  const argIndex = words.filter((w, i) => i > 0 && !w.startsWith("-")).length;
  const last = words.at(-1) ?? "";
  const kind = argKind(cmd, argIndex);
  if (kind === null || last.startsWith("-") || last.includes('"') || last.includes("'")) {
    return [[], last];
  }
  if (kind === "local") return [completePath(last), last];
  if (!session) return [[], last];
  return [await completeRemote(session, last), last];
}

/** Remote names starting with `partial`, as typed (relative to the remote folder). */
async function completeRemote(session: ShellSession, partial: string): Promise<string[]> {
  const slash = partial.lastIndexOf("/");
  const typedDir = slash >= 0 ? partial.slice(0, slash + 1) : "";
  const prefix = partial.slice(slash + 1);
  let dir: string;
  try {
    dir = session.resolve(typedDir);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of await session.entriesOf(dir)) {
    const base = e.name.slice(e.name.lastIndexOf("/") + 1);
    if (!base.startsWith(prefix) || /\s/.test(base)) continue;
    out.push(typedDir + base + (e.type === "dir" ? "/" : " "));
  }
  return out.sort();
}

/** Local names starting with `partial` (relative to the current folder). */
function completePath(partial: string): string[] {
  const slash = partial.lastIndexOf("/");
  const dir = slash >= 0 ? partial.slice(0, slash + 1) : "";
  const prefix = partial.slice(slash + 1);
  const out: string[] = [];
  try {
    for (const e of Deno.readDirSync(dir === "" ? "." : dir)) {
      if (!e.name.startsWith(prefix)) continue;
      if (e.name.startsWith(".") && !prefix.startsWith(".")) continue;
      let isDir = e.isDirectory;
      if (e.isSymlink) {
        try {
          isDir = Deno.statSync(join(dir === "" ? "." : dir, e.name)).isDirectory;
        } catch { /* broken link */ }
      }
      out.push(dir + e.name + (isDir ? "/" : " "));
    }
  } catch { /* unreadable folder: nothing to offer */ }
  return out.sort();
}

/** The prompt on a terminal (see the module text). */
async function interactive(session: ShellSession, ui: Ui, keepaliveMs: number): Promise<number> {
  const rl: Interface = createInterface({
    input: process.stdin,
    output: process.stdout,
    terminal: true,
    historySize: 1000,
    removeHistoryDuplicates: true,
    prompt: "efx> ",
    completer: (line: string, done: (err: null, result: [string[], string]) => void) => {
      completeLine(line, session).then((r) => done(null, r), () => done(null, [[], line]));
    },
  });
  // Ctrl-C at the prompt: drop the line, like a shell.
  rl.on("SIGINT", () => {
    process.stdout.write("^C\n");
    rl.write(null, { ctrl: true, name: "u" });
    rl.prompt();
  });
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  let closed = false;
  rl.on("line", (line: string) => {
    lines.push(line);
    wake?.();
  });
  rl.on("close", () => {
    closed = true;
    wake?.();
  });
  const next = async (): Promise<string | null> => {
    while (lines.length === 0 && !closed) await new Promise<void>((r) => wake = r);
    return lines.shift() ?? null;
  };
  ui.out(`connected; type 'help' for commands, Tab to complete, Ctrl-D to leave`);
  try {
    while (true) {
      rl.prompt();
      const line = await keptAlive(session, keepaliveMs, next());
      if (line === null) {
        process.stdout.write("\n"); // Ctrl-D: end the prompt's line
        break;
      }
      if (line.trim() === "") continue;
      // While a command runs the terminal is back in its normal mode, so
      // Ctrl-C is a real SIGINT: it aborts this transfer's connection.
      rl.pause();
      setRaw(false);
      const interrupt = onInterrupt(() => session.client?.channel.abort());
      let leave = false;
      try {
        leave = !(await runShellLine(session, line, ui));
      } catch (err) {
        if (interrupt.signal === "SIGTERM") throw new InterruptedError("SIGTERM");
        if (interrupt.signal) ui.err("efx: interrupted; the transfer was cancelled");
        else if (!(err instanceof SilentShellFailure)) {
          ui.err(`efx: ${sanitize(describeError(err))}`);
        }
      } finally {
        interrupt.dispose();
        if (session.client?.channel.broken) {
          session.client.channel.abort();
          session.client = undefined; // connect again for the next command
        }
        setRaw(true);
        rl.resume();
      }
      if (leave) break;
    }
  } finally {
    rl.close();
    await session.close().catch(() => {});
  }
  return 0;
}

function setRaw(on: boolean): void {
  try {
    process.stdin.setRawMode?.(on);
  } catch { /* not a terminal any more */ }
}
