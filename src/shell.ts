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
import {
  CONNECT_FLAGS,
  CONNECT_USAGE,
  connectFromFlags,
  getOne,
  getTree,
  InterruptedError,
  listingLine,
  onInterrupt,
  putOne,
  putTree,
  type Ui,
  uiFromFlags,
} from "./commands/client.ts";
import { parseFlags } from "./cli/flags.ts";
import { folderName } from "./folders.ts";
import { describeError, exitCodeOf, UsageError } from "./errors.ts";
import { sanitize } from "./bytes.ts";

export const SHELL_HELP = `commands:
  put LOCAL [REMOTE] [-f] [-r]  upload a file (-f replaces an existing one; -r a folder)
  get REMOTE [LOCAL] [-f] [-r]  download a file (-f replaces an existing local file; -r a folder)
  reput LOCAL [REMOTE] [-f]     upload, continuing an interrupted upload
  reget REMOTE [LOCAL] [-f]     download, continuing an interrupted download
  ls [PATTERN] [-l] [-h] [-r]   list files (-l: link targets; -h: KiB/MiB; -r: subfolders)
  rm NAME                       remove a file on the server
  help                          this text
  quit                          leave (also: exit, Ctrl-D)
Names with spaces go in quotes: put "my file.txt". On a terminal: arrows for history and
editing, Tab completes commands and local paths, Ctrl-C cancels the transfer under way.`;

/** The words the prompt knows, for completion. */
export const SHELL_COMMANDS = [
  "put",
  "get",
  "reput",
  "reget",
  "ls",
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

/** Runs one prompt command. Returns false when the user asked to leave. */
export async function runShellLine(client: EfxClient, line: string, ui: Ui): Promise<boolean> {
  const words = splitWords(line.trim());
  if (words.length === 0) return true;
  const [cmd, ...rest] = words;
  const force = rest.includes("-f") || rest.includes("--force");
  const recursive = rest.includes("-r");
  const flags = ["-f", "--force", "-r", ...(cmd === "ls" ? ["-l", "-h", "-lh", "-hl"] : [])];
  const args = rest.filter((w) => !flags.includes(w));
  const long = rest.some((w) => w === "-l" || w === "-lh" || w === "-hl");
  const human = rest.some((w) => w === "-h" || w === "-lh" || w === "-hl");
  switch (cmd) {
    case "quit":
    case "exit":
    case "bye":
      return false;
    case "help":
    case "?":
      ui.out(SHELL_HELP);
      return true;
    case "put":
    case "reput": {
      if (args.length < 1 || args.length > 2) {
        throw new UsageError(`usage: ${cmd} LOCAL [REMOTE] [-f]`);
      }
      const mo = { force, resume: cmd === "reput" };
      if (recursive) await putTree(client, args[0], args[1] ?? folderName(args[0]), mo, ui);
      else await putOne(client, args[0], args[1] ?? basename(args[0]), mo, ui);
      return true;
    }
    case "get":
    case "reget": {
      if (args.length < 1 || args.length > 2) {
        throw new UsageError(`usage: ${cmd} REMOTE [LOCAL] [-f]`);
      }
      const mo = { force, resume: cmd === "reget" };
      if (recursive) await getTree(client, args[0], args[1] ?? folderName(args[0]), mo, ui);
      else await getOne(client, args[0], args[1] ?? basename(args[0]), mo, ui);
      return true;
    }
    case "ls":
      if (args.length > 1) throw new UsageError("usage: ls [PATTERN] [-l] [-h] [-r]");
      for (const e of await client.list(args[0], recursive)) {
        ui.out(listingLine(e, { long, human }));
      }
      return true;
    case "rm":
      if (args.length !== 1) throw new UsageError("usage: rm NAME");
      await client.remove(args[0]);
      ui.out(`removed ${args[0]}`);
      return true;
    default:
      throw new UsageError(`unknown command '${cmd}' (type 'help')`);
  }
}

/** `efx shell [connection options]`, also `efx` alone. */
export async function shellCommand(args: string[]): Promise<number> {
  const { values: v, positionals } = parseFlags(args, CONNECT_FLAGS, "shell");
  if (v.help) {
    console.log(`usage: efx [shell] [connection options]\n${SHELL_HELP}\n${CONNECT_USAGE}`);
    return 0;
  }
  if (positionals.length) {
    throw new UsageError(`unknown command '${positionals[0]}' (see 'efx help')`);
  }
  const ui = uiFromFlags(v);
  const client = await connectFromFlags(v, ui);
  if (isTerminal(Deno.stdin) && isTerminal(Deno.stdout)) {
    return await interactive(client, () => connectFromFlags(v, ui), ui);
  }
  // From a pipe: Ctrl-C or SIGTERM during a transfer aborts it (its temp
  // file is removed) and ends the run with "efx: interrupted".
  let busy = false;
  const interrupt = onInterrupt(() => {
    client.channel.abort();
    if (!busy) Deno.exit(0);
  });
  const setBusy = (b: boolean) => busy = b;
  try {
    return await runShell(client, ui, interrupt, setBusy);
  } finally {
    interrupt.dispose();
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
  client: EfxClient,
  ui: Ui,
  interrupt: ReturnType<typeof onInterrupt>,
  setBusy: (busy: boolean) => void,
): Promise<number> {
  let code = 0;
  for await (const line of stdinLines()) {
    try {
      setBusy(true);
      if (!(await runShellLine(client, line, ui))) break;
    } catch (err) {
      interrupt.check();
      ui.err(`efx: ${describeError(err)}`);
      if (code === 0) code = exitCodeOf(err);
      if (client.channel.broken) {
        client.channel.abort();
        return code;
      }
    }
    setBusy(false);
  }
  await client.close();
  return code;
}

/**
 * Completions for the line typed so far: command names for the first word,
 * local paths (folders with a trailing "/") where a local path goes: the
 * first argument of put/reput, the second of get/reget.
 */
export function completeLine(line: string): [string[], string] {
  const m = /^(\s*)(\S*)$/.exec(line);
  if (m) {
    const hits = SHELL_COMMANDS.filter((c) => c.startsWith(m[2]));
    return [hits.map((c) => c + " "), m[2]];
  }
  const words = line.trimStart().split(/\s+/);
  const cmd = words[0];
  const argIndex = words.filter((w, i) => i > 0 && !w.startsWith("-")).length;
  const last = words.at(-1) ?? "";
  const wantsLocal = ((cmd === "put" || cmd === "reput") && argIndex === 1) ||
    ((cmd === "get" || cmd === "reget") && argIndex === 2);
  if (!wantsLocal || last.startsWith("-") || last.includes('"') || last.includes("'")) {
    return [[], last];
  }
  return [completePath(last), last];
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
async function interactive(
  first: EfxClient,
  reconnect: () => Promise<EfxClient>,
  ui: Ui,
): Promise<number> {
  let client: EfxClient | undefined = first;
  const rl: Interface = createInterface({
    input: process.stdin,
    output: process.stdout,
    terminal: true,
    historySize: 1000,
    removeHistoryDuplicates: true,
    prompt: "efx> ",
    completer: (line: string) => completeLine(line),
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
      const line = await next();
      if (line === null) {
        process.stdout.write("\n"); // Ctrl-D: end the prompt's line
        break;
      }
      if (line.trim() === "") continue;
      // While a command runs the terminal is back in its normal mode, so
      // Ctrl-C is a real SIGINT: it aborts this transfer's connection.
      rl.pause();
      setRaw(false);
      const interrupt = onInterrupt(() => client?.channel.abort());
      let leave = false;
      try {
        client ??= await reconnect();
        leave = !(await runShellLine(client, line, ui));
      } catch (err) {
        if (interrupt.signal === "SIGTERM") throw new InterruptedError("SIGTERM");
        if (interrupt.signal) ui.err("efx: interrupted; the transfer was cancelled");
        else ui.err(`efx: ${sanitize(describeError(err))}`);
      } finally {
        interrupt.dispose();
        if (client?.channel.broken) {
          client.channel.abort();
          client = undefined; // connect again for the next command
        }
        setRaw(true);
        rl.resume();
      }
      if (leave) break;
    }
  } finally {
    rl.close();
    if (client && !client.channel.broken) await client.close().catch(() => {});
    else client?.channel.abort();
  }
  return 0;
}

function setRaw(on: boolean): void {
  try {
    process.stdin.setRawMode?.(on);
  } catch { /* not a terminal any more */ }
}
