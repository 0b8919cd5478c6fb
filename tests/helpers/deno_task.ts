/**
 * Reads a deno.json task, so that tests and the benchmark run a server
 * exactly as the task would (its permissions and its V8 flags) instead of
 * copies that drift from it.
 *
 * A task must have the form `[NAME=value ...] deno run FLAGS main.ts ARGS`.
 *
 * @example
 * ```ts
 * const serve = denoTask("serve");
 * serve.env.DENO_V8_FLAGS; // "--expose-gc,--max-semi-space-size=1"
 * serve.flags; // ["--allow-net=0.0.0.0:9000", "--allow-sys=statfs", ...]
 * ```
 * @module
 */
import { fileURLToPath } from "node:url";

/** One task, split into its parts. */
export interface DenoTask {
  /** Environment assignments before `deno` (e.g. `DENO_V8_FLAGS`). */
  env: Record<string, string>;
  /** The words between `run` and `main.ts`: permissions and other Deno flags. */
  flags: string[];
  /** The words after `main.ts`. */
  args: string[];
}

const CONFIG = fileURLToPath(new URL("../../deno.json", import.meta.url));

/** Splits the command line of deno.json task `name`; throws if it has another form. */
export function denoTask(name: string): DenoTask {
  const cfg = JSON.parse(Deno.readTextFileSync(CONFIG));
  const line = cfg.tasks?.[name];
  if (typeof line !== "string") throw new Error(`deno.json has no task ${name}`);
  return parseTask(name, line);
}

/** Splits one task command line (see {@linkcode denoTask}). */
export function parseTask(name: string, line: string): DenoTask {
  if (/["'`$;&|<>\\]/.test(line)) {
    throw new Error(
      `task ${name} uses shell quoting or operators, which this reader does not parse`,
    );
  }
  const words = line.trim().split(/\s+/);
  const env: Record<string, string> = {};
  let i = 0;
  for (; i < words.length; i++) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(words[i]);
    if (!m) break;
    env[m[1]] = m[2];
  }
  const main = words.indexOf("main.ts", i);
  if (words[i] !== "deno" || words[i + 1] !== "run" || main < 0) {
    throw new Error(`task ${name} is not of the form '[VAR=value ...] deno run FLAGS main.ts ...'`);
  }
  return { env, flags: words.slice(i + 2, main), args: words.slice(main + 1) };
}
