/**
 * `deno task fuzz-cli [--seed N] [--ops M] [--quiet]`: runs the model-based
 * CLI test (tests/model_cli.ts) once with the given seed (default: random,
 * printed first) and number of operations (default 300). A failure prints
 * the seed and the step; the same command line replays it.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runModel } from "./model_cli.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seed: { type: "string" },
    ops: { type: "string" },
    quiet: { type: "boolean", short: "q" },
  },
});
const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
const ops = values.ops === undefined ? 300 : Number(values.ops);
if (!Number.isSafeInteger(seed) || !Number.isSafeInteger(ops) || ops < 1) {
  console.error("usage: deno task fuzz-cli [--seed N] [--ops M] [--quiet]");
  Deno.exit(2);
}
console.log(`fuzz-cli: seed ${seed}, ${ops} operations`);
try {
  const r = await runModel({
    seed,
    ops,
    log: values.quiet ? undefined : (line) => console.log(line),
  });
  console.log(
    `fuzz-cli: seed ${seed}: ${r.ops} operations in ${r.steps} steps, ${r.cliRuns} CLI runs, ` +
      `${(r.bytesUp / 1e6).toFixed(1)} MB uploaded, ${r.resumed} killed uploads resumed, ` +
      `${(r.ms / 1000).toFixed(1)} s; ` +
      Object.entries(r.kinds).map(([k, n]) => `${k} ${n}`).join(", "),
  );
} catch (err) {
  console.error(err instanceof Error ? err.message : String(err));
  console.error(`fuzz-cli: FAILED with seed ${seed}`);
  Deno.exit(1);
}
