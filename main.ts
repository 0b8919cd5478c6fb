/**
 * efx: secure file transfer. This file only picks the subcommand and hands
 * over to its module; every expected failure is printed as one line
 * `efx: <cause>` with the exit code the error carries (see src/errors.ts).
 *
 * @module
 */
import { describeError, EfxError, exitCodeOf } from "./src/errors.ts";
import { fingerprintCommand, keygenCommand } from "./src/commands/keygen.ts";
import { serveCommand } from "./src/commands/serve.ts";
import {
  downloadCommand,
  lsCommand,
  mkdirCommand,
  mvCommand,
  rmCommand,
  rmdirCommand,
  uploadCommand,
} from "./src/commands/client.ts";
import { shellCommand } from "./src/shell.ts";
import { HELP } from "./src/commands/help.ts";
import { knownServersCommand } from "./src/commands/known_servers.ts";

const commands: Record<string, (args: string[]) => Promise<number>> = {
  keygen: keygenCommand,
  fingerprint: fingerprintCommand,
  serve: serveCommand,
  upload: uploadCommand,
  put: uploadCommand,
  download: downloadCommand,
  get: downloadCommand,
  ls: lsCommand,
  rm: rmCommand,
  mkdir: mkdirCommand,
  rmdir: rmdirCommand,
  mv: mvCommand,
  rename: mvCommand,
  shell: shellCommand,
  "known-servers": knownServersCommand,
  help: () => {
    console.log(HELP);
    return Promise.resolve(0);
  },
};

/** Commands that work on the user's files (relative paths are the user's). */
const CLIENT_COMMANDS = new Set([
  "upload",
  "put",
  "download",
  "get",
  "ls",
  "rm",
  "mkdir",
  "rmdir",
  "mv",
  "rename",
  "shell",
  "known-servers",
]);

/**
 * `deno task efx ...` runs in the project folder; deno sets INIT_CWD to the
 * folder the user typed the command in. Client commands go back there so
 * that `upload one` and `-o got` mean the user's files. Reading INIT_CWD
 * needs env permission, which only the client tasks grant.
 */
function enterUserFolder(command: string | undefined): void {
  if (command !== undefined && !command.startsWith("-") && !CLIENT_COMMANDS.has(command)) return;
  let dir: string | undefined;
  try {
    dir = Deno.env.get("INIT_CWD") || undefined;
  } catch {
    return; // no env permission: not started by a client task
  }
  // Only when started in the project folder, as `deno task efx` does: an
  // installed efx run from someone else's task keeps its own folder.
  if (dir === undefined || !inProjectFolder()) return;
  try {
    Deno.chdir(dir);
  } catch (err) {
    throw new EfxError(`cannot enter ${dir} (INIT_CWD): ${describeError(err)}`);
  }
}

function inProjectFolder(): boolean {
  try {
    return Deno.cwd() === Deno.realPathSync(new URL(".", import.meta.url));
  } catch {
    return false;
  }
}

async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  enterUserFolder(first);
  if (first === "--help" || first === "-h") return await commands.help([]);
  if (first === "--version" || first === "-V") {
    console.log("efx 0.1.0 (protocol 1)");
    return 0;
  }
  if (first === undefined || first.startsWith("-")) return await shellCommand(argv);
  const run = commands[first];
  if (!run) {
    console.error(`efx: unknown command '${first}' (see 'efx help')`);
    return 2;
  }
  return await run(rest);
}

/** EFX_DEBUG=1 shows stack traces; reading it needs env permission, which the server lacks. */
function debugWanted(): boolean {
  try {
    return !!Deno.env.get("EFX_DEBUG");
  } catch {
    return false;
  }
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (err) {
    console.error(`efx: ${describeError(err)}`);
    if (debugWanted()) console.error(err);
    code = exitCodeOf(err);
  }
  Deno.exit(code);
}
