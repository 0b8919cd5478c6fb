/**
 * `efx serve [--port 9000] [--host 0.0.0.0] [--root ./storage | --storage s3://BUCKET[/PREFIX]
 *  --s3-endpoint URL [--s3-region R] [--s3-credentials FILE]] [--key keys/server.key.pem]
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
import type { StorageBackend } from "../storage/backend.ts";
import type { Logger } from "../log.ts";

export const SERVE_USAGE = `usage: efx serve [options]
  --port N               port to listen on (default 9000)
  --host ADDR            address to listen on (default 0.0.0.0)
  --root DIR             storage folder, created if missing (default ./storage)
  --storage WHERE        s3://BUCKET[/PREFIX]: keep the files in an S3-compatible object store
                         (several servers may share it); else a folder, like --root
  --s3-endpoint URL      the store's address, e.g. http://127.0.0.1:7480 (path-style requests)
  --s3-region R          region for request signing (default us-east-1)
  --s3-credentials FILE  file with lines access_key=... and secret_key=... (default: the
                         EFX_S3_ACCESS_KEY and EFX_S3_SECRET_KEY environment variables)
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
    storage: { type: "string" },
    "s3-endpoint": { type: "string" },
    "s3-region": { type: "string" },
    "s3-credentials": { type: "string" },
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
  const partialTtlMs = durationFlag(values["partial-ttl"], "--partial-ttl", 24 * 3_600_000);
  const s3 = values.storage?.startsWith("s3://") ? values.storage : undefined;
  if (s3 && values.root !== undefined) {
    throw new UsageError("serve: --root and --storage s3://... exclude each other");
  }
  if (!s3) {
    for (const f of ["s3-endpoint", "s3-region", "s3-credentials"] as const) {
      if (values[f] !== undefined) throw new UsageError(`serve: --${f} needs --storage s3://...`);
    }
  }
  if (s3 && values["min-free"] !== undefined) {
    throw new UsageError("serve: --min-free applies to a local folder only");
  }
  const server = await EfxServer.start({
    host: values.host ?? "0.0.0.0",
    port: intFlag(values.port, "--port", 9000, 0, 65535),
    root: values.root ?? values.storage ?? "storage",
    openStorage: s3
      ? (l) =>
        openS3(s3, {
          endpoint: values["s3-endpoint"],
          region: values["s3-region"],
          credentials: values["s3-credentials"],
          partialTtlMs,
        }, l)
      : undefined,
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
    partialTtlMs,
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

/**
 * Opens the S3 backend (loaded only in this mode: a local server loads none
 * of its code, and an S3 server none of the local folder's).
 */
async function openS3(
  url: string,
  o: { endpoint?: string; region?: string; credentials?: string; partialTtlMs: number },
  log: Logger,
): Promise<StorageBackend> {
  const { S3Storage } = await import("../storage/s3.ts");
  const { parseS3Url } = await import("../storage/s3_client.ts");
  if (!o.endpoint) throw new UsageError("serve: --storage s3://... needs --s3-endpoint URL");
  let endpoint: URL;
  try {
    endpoint = new URL(o.endpoint);
    if (endpoint.protocol !== "http:" && endpoint.protocol !== "https:") throw new Error();
  } catch {
    throw new UsageError(`serve: --s3-endpoint must be an http:// or https:// URL`);
  }
  let where;
  try {
    where = parseS3Url(url);
  } catch (err) {
    throw new UsageError(`serve: ${(err as Error).message}`);
  }
  const { accessKey, secretKey } = await readS3Credentials(o.credentials);
  const storage = await S3Storage.open({
    endpoint: endpoint.origin,
    region: o.region ?? "us-east-1",
    bucket: where.bucket,
    prefix: where.prefix,
    accessKey,
    secretKey,
  }, { partialTtlMs: o.partialTtlMs });
  for (const note of storage.startupNotes) log.info(note);
  return storage;
}

/** Credentials from `--s3-credentials FILE` (`access_key=`/`secret_key=` lines) or the environment. */
async function readS3Credentials(
  file: string | undefined,
): Promise<{ accessKey: string; secretKey: string }> {
  let accessKey: string | undefined;
  let secretKey: string | undefined;
  if (file !== undefined) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (err) {
      throw new UsageError(`serve: cannot read --s3-credentials ${file}: ${(err as Error).name}`);
    }
    for (const line of text.split(/\r?\n/)) {
      const m = /^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$/.exec(line);
      if (!m) continue;
      const k = m[1].toLowerCase();
      if (k === "access_key" || k === "efx_s3_access_key") accessKey = m[2];
      if (k === "secret_key" || k === "efx_s3_secret_key") secretKey = m[2];
    }
    if (!accessKey || !secretKey) {
      throw new UsageError(
        `serve: --s3-credentials ${file} must have access_key=... and secret_key=... lines`,
      );
    }
  } else {
    try {
      accessKey = Deno.env.get("EFX_S3_ACCESS_KEY");
      secretKey = Deno.env.get("EFX_S3_SECRET_KEY");
    } catch {
      throw new UsageError(
        "serve: cannot read EFX_S3_ACCESS_KEY/EFX_S3_SECRET_KEY (run with " +
          "--allow-env=EFX_S3_ACCESS_KEY,EFX_S3_SECRET_KEY, or use --s3-credentials FILE)",
      );
    }
    if (!accessKey || !secretKey) {
      throw new UsageError(
        "serve: --storage s3://... needs credentials: set EFX_S3_ACCESS_KEY and " +
          "EFX_S3_SECRET_KEY, or use --s3-credentials FILE",
      );
    }
  }
  return { accessKey, secretKey };
}
