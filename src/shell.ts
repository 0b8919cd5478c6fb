/**
 * The interactive prompt (`efx` with no subcommand, or `efx shell`): one
 * connection, one command per line. Errors are printed and the prompt goes
 * on; it ends on `quit`, end of input, or when the connection breaks.
 *
 * @module
 */
import { basename } from "node:path";
import type { EfxClient } from "./client.ts";
import {
  CONNECT_FLAGS,
  CONNECT_USAGE,
  connectFromFlags,
  getOne,
  getTree,
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

export const SHELL_HELP = `commands:
  put LOCAL [REMOTE] [-f] [-r]  upload a file (-f replaces an existing one; -r a folder)
  get REMOTE [LOCAL] [-f] [-r]  download a file (-f replaces an existing local file; -r a folder)
  reput LOCAL [REMOTE] [-f]     upload, continuing an interrupted upload
  reget REMOTE [LOCAL] [-f]     download, continuing an interrupted download
  ls [PATTERN] [-r]             list files (-r: with subfolders)
  rm NAME                       remove a file on the server
  help                          this text
  quit                          leave (also: exit, Ctrl-D)
Names with spaces go in quotes: put "my file.txt"`;

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
  const args = rest.filter((w) => !["-f", "--force", "-r"].includes(w));
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
      if (args.length > 1) throw new UsageError("usage: ls [PATTERN] [-r]");
      for (const e of await client.list(args[0], recursive)) ui.out(listingLine(e));
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
  // Ctrl-C during a transfer aborts it (its temp file is removed) and ends
  // the session; at the prompt it just leaves.
  let busy = false;
  const interrupt = onInterrupt(() => {
    client.channel.abort();
    if (!busy) {
      ui.err("");
      Deno.exit(0);
    }
  });
  const setBusy = (b: boolean) => busy = b;
  try {
    return await runShell(client, ui, interrupt, setBusy);
  } finally {
    interrupt.dispose();
  }
}

async function runShell(
  client: EfxClient,
  ui: Ui,
  interrupt: ReturnType<typeof onInterrupt>,
  setBusy: (busy: boolean) => void,
): Promise<number> {
  let tty = false;
  try {
    tty = Deno.stdin.isTerminal();
  } catch { /* no stdin */ }
  const prompt = () => {
    if (tty) Deno.stdout.writeSync(new TextEncoder().encode("efx> "));
  };
  if (tty) ui.out(`connected; type 'help' for commands`);
  let code = 0;
  prompt();
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
    prompt();
  }
  await client.close();
  return tty ? 0 : code;
}
