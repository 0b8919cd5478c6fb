/**
 * Command-line flag parsing shared by every subcommand, on top of
 * `node:util` parseArgs (JSR's @std/cli is not reachable from our machines).
 *
 * Unknown flags, missing values and bad numbers become a {@linkcode UsageError}
 * (exit 2) with a one-line message.
 *
 * @example
 * ```ts
 * const { values, positionals } = parseFlags(["--port", "9000"], {
 *   port: { type: "string" },
 * }, "serve");
 * const port = intFlag(values.port, "--port", 9000, 0, 65535);
 * ```
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError } from "../errors.ts";

/** Option descriptions in `node:util` parseArgs form. */
export type FlagSpec = NonNullable<ParseArgsConfig["options"]>;

/** Parses `args` strictly; positionals are allowed. */
export function parseFlags<T extends FlagSpec>(args: string[], options: T, command: string) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    const msg = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new UsageError(`${command}: ${msg} (see 'efx help')`);
  }
}

/** Reads an integer flag, with a default and an inclusive range. */
export function intFlag(
  value: string | boolean | undefined,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  const n = typeof value === "string" && /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`${name} must be a whole number from ${min} to ${max}, not '${value}'`);
  }
  return n;
}

/** Reads a size such as `100M`, `2G`, `512k` or `1048576` (bytes). */
export function sizeFlag(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d+)([kKmMgGtT]?)(i?[bB])?$/.exec(value);
  if (!m) throw new UsageError(`${name} must be a size like 100M or 2G, not '${value}'`);
  const unit = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase()]!;
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(n)) throw new UsageError(`${name} is too large: '${value}'`);
  return n;
}

/** Parses `host:port`, `[v6]:port` or a bare host (default port). */
export function parseHostPort(spec: string, defaultPort: number): { host: string; port: number } {
  let host = spec;
  let port = defaultPort;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(spec);
  if (v6) {
    host = v6[1];
    if (v6[2]) port = Number(v6[2]);
  } else if (spec.includes(":")) {
    const i = spec.lastIndexOf(":");
    host = spec.slice(0, i);
    const p = spec.slice(i + 1);
    if (!/^\d+$/.test(p)) throw new UsageError(`bad server address '${spec}' (want HOST:PORT)`);
    port = Number(p);
  }
  if (!host || port < 1 || port > 65535) {
    throw new UsageError(`bad server address '${spec}' (want HOST:PORT)`);
  }
  return { host, port };
}

/** Reads a duration such as `90s`, `30m`, `24h`, `7d` (a bare number is seconds); returns ms. */
export function durationFlag(value: string | undefined, name: string, fallbackMs: number): number {
  if (value === undefined) return fallbackMs;
  const m = /^(\d+(?:\.\d+)?)([smhd]?)$/.exec(value);
  if (!m) {
    throw new UsageError(`${name} must be a duration like 90s, 30m, 24h or 7d, not '${value}'`);
  }
  const unit = { "": 1000, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2]]!;
  return Math.round(Number(m[1]) * unit);
}
