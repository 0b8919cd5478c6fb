/**
 * `efx serve [--port 9000] [--host 0.0.0.0] [--root ./storage] [--key keys/server.key.pem]
 *  [--max-size SIZE] [--max-connections N] [--max-per-address N] [--max-memory SIZE]
 *  [--handshake-timeout SEC] [--auth-timeout SEC] [--idle-timeout SEC]
 *  [--ephemeral-lifetime T] [--quiet | --verbose]`
 *
 * @module
 */
import { UsageError } from "../errors.ts";
import { durationFlag, intFlag, parseFlags, sizeFlag } from "../cli/flags.ts";
import { checkLifetime, DEFAULT_EPHEMERAL_LIFETIME_MS } from "../ephemeral.ts";
import { makeLogger } from "../log.ts";
import { DEFAULT_MAX_MEMORY } from "../limits.ts";
import { EfxServer } from "../server.ts";

export const SERVE_USAGE = `usage: efx serve [options]
  --port N               port to listen on (default 9000)
  --host ADDR            address to listen on (default 0.0.0.0)
  --root DIR             storage folder, created if missing (default ./storage)
  --key FILE             server private key, made if missing (default keys/server.key.pem)
  --max-size SIZE        largest upload accepted, e.g. 10G (default: no limit)
  --max-connections N    connections at once (default 256); when full, the oldest one not
                         yet authenticated (open server: still in its handshake) is closed,
                         else newcomers get "server busy"
  --max-per-address N    connections at once from one address, same rule (default 64)
  --max-memory SIZE      memory for incoming records in flight over all connections, e.g.
                         512M (default 256M); beyond it, connections wait
  --handshake-timeout S  seconds a client has to finish the handshake (default 10)
  --auth-timeout S       with --authorized-clients: seconds after the handshake to
                         authenticate (default 10)
  --idle-timeout S       seconds of silence before a connection is dropped (default 300)
  --authorized-clients F admit only the client keys listed in F (lines: SHA256:... [rights=read|write|rw])
  --read-only            downloads and listings only
  --ephemeral-lifetime T lifetime of each forward-secrecy key (kept in memory only), e.g. 1h,
                         30m (default 1h; 1s to 24h)
  --partial-ttl T        keep interrupted resumable uploads this long, e.g. 24h, 30m (default 24h)
  --min-free SIZE        refuse uploads that would leave less free disk than this, e.g. 5G
                         (default: 1G, or 5% of the disk when that is less; 0: no check)
  -q, --quiet            log errors only
  -v, --verbose          log more detail (hashes, listings)`;

/** `--max-memory`: at least 4 MiB (a few records), default 256 MiB. */
function memoryFlag(value: string | undefined): number {
  const n = sizeFlag(value, "--max-memory") ?? DEFAULT_MAX_MEMORY;
  if (n < 4 * 1024 * 1024) throw new UsageError("--max-memory must be at least 4M");
  return n;
}

/** Runs the server until SIGINT/SIGTERM. */
export async function serveCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, {
    port: { type: "string" },
    host: { type: "string" },
    root: { type: "string" },
    key: { type: "string" },
    "max-size": { type: "string" },
    "max-connections": { type: "string" },
    "max-per-address": { type: "string" },
    "max-memory": { type: "string" },
    "auth-timeout": { type: "string" },
    "handshake-timeout": { type: "string" },
    "idle-timeout": { type: "string" },
    "authorized-clients": { type: "string" },
    "read-only": { type: "boolean" },
    "partial-ttl": { type: "string" },
    "ephemeral-lifetime": { type: "string" },
    "min-free": { type: "string" },
    quiet: { type: "boolean", short: "q" },
    verbose: { type: "boolean", short: "v" },
    help: { type: "boolean", short: "h" },
  }, "serve");
  if (values.help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  if (positionals.length) throw new UsageError(`serve: unexpected argument '${positionals[0]}'`);
  const ephemeralLifetimeMs = durationFlag(
    values["ephemeral-lifetime"],
    "--ephemeral-lifetime",
    DEFAULT_EPHEMERAL_LIFETIME_MS,
  );
  const badLifetime = checkLifetime(ephemeralLifetimeMs);
  if (badLifetime) throw new UsageError(`--ephemeral-lifetime: ${badLifetime}`);
  const log = makeLogger(values.quiet ? "quiet" : values.verbose ? "verbose" : "normal");
  const server = await EfxServer.start({
    host: values.host ?? "0.0.0.0",
    port: intFlag(values.port, "--port", 9000, 0, 65535),
    root: values.root ?? "storage",
    keyPath: values.key ?? "keys/server.key.pem",
    maxSize: sizeFlag(values["max-size"], "--max-size"),
    maxConnections: intFlag(values["max-connections"], "--max-connections", 256, 1, 100_000),
    maxPerAddress: intFlag(values["max-per-address"], "--max-per-address", 64, 1, 100_000),
    maxMemory: memoryFlag(values["max-memory"]),
    authTimeoutMs: 1000 * intFlag(values["auth-timeout"], "--auth-timeout", 10, 1, 3600),
    handshakeTimeoutMs: 1000 *
      intFlag(values["handshake-timeout"], "--handshake-timeout", 10, 1, 3600),
    idleTimeoutMs: 1000 * intFlag(values["idle-timeout"], "--idle-timeout", 300, 1, 86400),
    authorizedClientsPath: values["authorized-clients"],
    readOnly: values["read-only"] === true,
    partialTtlMs: durationFlag(values["partial-ttl"], "--partial-ttl", 24 * 3_600_000),
    minFreeBytes: sizeFlag(values["min-free"], "--min-free"),
    ephemeralLifetimeMs,
    log,
    onKeyCreated: (_fp, path) =>
      console.error(`efx: no server key found; made a new one at ${path}`),
  });
  console.error(
    `efx: serving ${server.root} on ${values.host ?? "0.0.0.0"}:${server.port}\n` +
      `efx: server key fingerprint: ${server.fingerprint}\n` +
      `efx: limits: ${server.limits}`,
  );
  if (!values["authorized-clients"]) {
    console.error(
      `efx: WARNING: no --authorized-clients file: ANY client that can reach this port may ${
        values["read-only"] ? "download and list" : "upload, download, list and remove"
      } files`,
    );
  } else {
    console.error(`efx: admitting only the clients listed in ${values["authorized-clients"]}`);
  }
  const stop = () => {
    log.info("shutting down: no new connections; aborting unfinished transfers");
    server.shutdown();
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  await server.done;
  await server.shutdown();
  for (const s of signals) Deno.removeSignalListener(s, stop);
  log.info("stopped");
  return 0;
}
