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
import type { S3Config } from "../../src/storage/s3_client.ts";
import { S3Client } from "../../src/storage/s3_client.ts";

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
    return s3Env() !== null;
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
