/**
 * The real S3 store of the S3 tests: a single-node Ceph RGW started by
 * `scripts/s3-store-start.sh` (`.ci/run` does it), found through its env
 * file or the `S3_ENDPOINT`, `S3_ACCESS_KEY`, `S3_SECRET_KEY`, `S3_REGION`,
 * `S3_BUCKET` variables.
 *
 * Without a store the S3 tests are skipped with a note, except under CI
 * (`CI=true`), where a missing store is a failure: {@linkcode s3TestConfig}
 * throws then.
 *
 * Every test works under its own random key prefix, removed by
 * {@linkcode removePrefix}.
 *
 * @module
 */
import { join } from "node:path";
import type { S3Config } from "../../src/storage/s3_client.ts";
import { S3Client } from "../../src/storage/s3_client.ts";
import { denoTask } from "./deno_task.ts";
import { freePort, MAIN_TS, testServerKey } from "./server.ts";

/** Where `scripts/s3-store-start.sh` writes its env file by default. */
export const DEFAULT_ENV_FILE = `${Deno.env.get("TMPDIR") ?? "/tmp"}/efx-rgw/env`;

function readEnvFile(path: string): Record<string, string> {
  try {
    const out: Record<string, string> = {};
    for (const line of Deno.readTextFileSync(path).split("\n")) {
      const m = /^([A-Z0-9_]+)=(.*)$/.exec(line);
      if (m) out[m[1]] = m[2];
    }
    return out;
  } catch {
    return {};
  }
}

/** The store's settings, or null (tests skip) when none is configured outside CI. */
export function s3Env(): Omit<S3Config, "prefix"> | null {
  const file = readEnvFile(Deno.env.get("EFX_S3_ENV_FILE") ?? DEFAULT_ENV_FILE);
  const get = (k: string) => Deno.env.get(k) ?? file[k];
  const endpoint = get("S3_ENDPOINT");
  if (!endpoint) {
    if (Deno.env.get("CI") === "true") {
      throw new Error(
        "CI=true but no S3 store is configured (S3_ENDPOINT unset and no env file): " +
          "run scripts/s3-store-start.sh first (.ci/run does)",
      );
    }
    return null;
  }
  return {
    endpoint,
    accessKey: get("S3_ACCESS_KEY") ?? "",
    secretKey: get("S3_SECRET_KEY") ?? "",
    region: get("S3_REGION") ?? "us-east-1",
    bucket: get("S3_BUCKET") ?? "efx",
  };
}

let noted = false;

/** The store config under a fresh random prefix, or null (with a note printed once). */
export function s3TestConfig(): S3Config | null {
  const env = s3Env();
  if (env === null) {
    if (!noted) {
      console.error(
        "note: S3 tests skipped: no store configured (run scripts/s3-store-start.sh, " +
          "or set S3_ENDPOINT and friends)",
      );
      noted = true;
    }
    return null;
  }
  return { ...env, prefix: `t-${crypto.randomUUID()}/`, attempts: 3, backoffMs: 50 };
}

/** Whether the S3 tests run here (a store is configured). */
export const S3_AVAILABLE: boolean = (() => {
  try {
    const ok = s3Env() !== null;
    if (!ok) {
      console.error(
        "note: S3 tests skipped: no store configured (run scripts/s3-store-start.sh, " +
          "or set S3_ENDPOINT and friends; under CI=true this is a failure)",
      );
    }
    return ok;
  } catch {
    return true; // CI without a store: the tests run and fail in s3TestConfig
  }
})();

/** Removes every object under the config's prefix. */
export async function removePrefix(config: S3Config): Promise<void> {
  const c = new S3Client({ ...config, prefix: "" });
  const keys: string[] = [];
  for await (const page of c.list(config.prefix)) for (const o of page.objects) keys.push(o.key);
  for (let i = 0; i < keys.length; i += 16) {
    await Promise.all(keys.slice(i, i + 16).map((k) => c.delete(k)));
  }
}

/** Every key under the config's prefix (relative to it). */
export async function listKeys(config: S3Config): Promise<string[]> {
  const c = new S3Client({ ...config, prefix: "" });
  const keys: string[] = [];
  for await (const page of c.list(config.prefix)) {
    for (const o of page.objects) keys.push(o.key.slice(config.prefix.length));
  }
  return keys.sort();
}

/** A running `efx serve --storage s3://...` node. */
export interface S3Node {
  port: number;
  pubKeyPath: string;
  fingerprint: string;
  proc: Deno.ChildProcess;
  exited: Promise<Deno.CommandStatus>;
  stderr(): string;
  /** Sends `signal` (default SIGTERM) unless ended, awaits the exit, removes its folder. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/**
 * Spawns one node serving `config`'s bucket and prefix under exactly the
 * `serve-s3` task's permissions (its listening address and the store's
 * address are the only words changed), with credentials in the environment,
 * and waits for its "serving" line. Rejects with the node's log when it
 * exits first (e.g. refused credentials).
 */
export async function startS3Node(
  config: S3Config,
  opts: {
    args?: string[];
    port?: number;
    timeoutMs?: number;
    authorizedClients?: string;
    /** Credentials go into keys/s3_credentials (`--s3-credentials`), the environment's are wrong. */
    credentialsFile?: boolean;
  } = {},
): Promise<S3Node> {
  const key = await testServerKey();
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "efx-s3node-" }));
  await Deno.mkdir(join(dir, "keys"));
  const pubKeyPath = join(dir, "keys", "server.pub.pem");
  await Deno.writeTextFile(join(dir, "keys", "server.key.pem"), key.privatePem, { mode: 0o600 });
  await Deno.writeTextFile(pubKeyPath, key.publicPem);
  const extra = [...(opts.args ?? [])];
  if (opts.authorizedClients !== undefined) {
    // The path the serve-s3 task may read, relative to the node's folder.
    await Deno.writeTextFile(join(dir, "keys", "authorized_clients"), opts.authorizedClients);
    extra.push("--authorized-clients", "keys/authorized_clients");
  }
  if (opts.credentialsFile) {
    await Deno.writeTextFile(
      join(dir, "keys", "s3_credentials"),
      `access_key=${config.accessKey}\nsecret_key=${config.secretKey}\n`,
      { mode: 0o600 },
    );
    extra.push("--s3-credentials", "keys/s3_credentials");
  }
  const port = opts.port ?? freePort();
  const store = new URL(config.endpoint).host;
  const task = denoTask("serve-s3");
  const flags = task.flags.map((f) =>
    f.startsWith("--allow-net=") ? `--allow-net=127.0.0.1:${port},${store}` : f
  );
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...flags,
      MAIN_TS,
      "serve",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--storage",
      `s3://${config.bucket}/${config.prefix}`,
      "--s3-endpoint",
      config.endpoint,
      "--s3-region",
      config.region,
      ...extra,
    ],
    cwd: dir,
    env: {
      NO_COLOR: "1",
      ...task.env,
      EFX_S3_ACCESS_KEY: config.accessKey,
      EFX_S3_SECRET_KEY: opts.credentialsFile ? "not-this-one" : config.secretKey,
    },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const reader = (async () => {
    for await (const c of proc.stderr.pipeThrough(new TextDecoderStream())) log += c;
  })();
  const exited = proc.status.then(async (s) => {
    await reader.catch(() => {});
    return s;
  });
  let ended = false;
  exited.then(() => ended = true);
  let stopped: Promise<Deno.CommandStatus> | undefined;
  const node: S3Node = {
    port,
    pubKeyPath,
    fingerprint: key.fingerprint,
    proc,
    exited,
    stderr: () => log,
    stop(signal: Deno.Signal = "SIGTERM") {
      stopped ??= (async () => {
        if (!ended) {
          try {
            proc.kill(signal);
          } catch { /* gone */ }
        }
        const s = await exited;
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        return s;
      })();
      return stopped;
    },
  };
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  while (!/^efx: serving .* on 127\.0\.0\.1:\d+$/m.test(log)) {
    if (ended || Date.now() > deadline) {
      await node.stop("SIGKILL");
      throw new Error(`S3 node did not start; its log:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return node;
}
