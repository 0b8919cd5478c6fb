/**
 * `efx known-servers [list|remove HOST]`: shows the servers the client
 * trusts on first use, and forgets one (like `ssh-keygen -R`), e.g. after a
 * server's key was genuinely replaced.
 *
 * @module
 */
import { parseFlags } from "../cli/flags.ts";
import { EfxError, UsageError } from "../errors.ts";
import { defaultKnownServersPath, listKnownServers, removeKnownServer } from "../trust.ts";

const USAGE = `usage: efx known-servers [list|remove HOST] [--known-servers FILE]

  list          print the trusted servers, one "HOST:PORT SHA256:..." per line (the default)
  remove HOST   forget HOST: a HOST:PORT ([v6]:PORT) label, or a bare host on every port
  --known-servers FILE   the file (default $EFX_HOME/known_servers, else ~/.efx/known_servers)`;

/** `efx known-servers [list|remove HOST] [--known-servers FILE]`; returns the exit code. */
export async function knownServersCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, {
    "known-servers": { type: "string" },
    help: { type: "boolean", short: "h" },
  }, "known-servers");
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const file = values["known-servers"] ?? defaultKnownServersPath();
  const [action = "list", ...rest] = positionals;
  if (action === "list") {
    if (rest.length > 0) throw new UsageError(`known-servers list: unexpected '${rest[0]}'`);
    const { entries, malformed, exists } = await listKnownServers(file);
    if (!exists) console.error(`efx: no known servers yet (${file} does not exist)`);
    for (const line of malformed) {
      console.error(`efx: warning: ${file} line ${line}: malformed entry`);
    }
    for (const e of entries) console.log(`${e.server} ${e.fingerprint}`);
    return 0;
  }
  if (action === "remove") {
    if (rest.length !== 1 || rest[0] === "") {
      throw new UsageError("known-servers remove: give exactly one HOST or HOST:PORT");
    }
    const host = rest[0];
    const n = await removeKnownServer(file, host);
    if (n === 0) throw new EfxError(`no entry for ${host} in ${file}`);
    console.error(`efx: removed ${n} ${n === 1 ? "entry" : "entries"} for ${host} from ${file}`);
    return 0;
  }
  throw new UsageError(`known-servers: unknown action '${action}' (list or remove)`);
}
