/**
 * The model-based CLI test (tests/model_cli.ts) with a fixed seed, as CI
 * runs it: a few hundred random operations through the real CLI against a
 * real server under the serve task's permissions, each step checked against
 * the model. Another seed: `deno task fuzz-cli --seed N --ops M`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { runModel } from "./model_cli.ts";

/** The seed CI runs (any failing seed is printed with its replay command). */
const CI_SEED = 20261201;
const CI_OPS = 300;

Deno.test(`model-based CLI run: seed ${CI_SEED}, ${CI_OPS} operations, checked after every step`, async () => {
  const r = await runModel({ seed: CI_SEED, ops: CI_OPS });
  console.log(
    `model: ${r.ops} operations in ${r.steps} steps, ${r.cliRuns} CLI runs, ` +
      `${(r.bytesUp / 1e6).toFixed(1)} MB up, ${r.resumed} resumed, ${(r.ms / 1000).toFixed(1)} s`,
  );
  assert.ok(r.ops >= CI_OPS);
  // The run covered every kind of operation.
  for (
    const kind of [
      "upload",
      "download",
      "upload -r",
      "download -r",
      "mv",
      "rm",
      "mkdir/rmdir",
      "prompt",
      "kill + --resume",
    ]
  ) {
    assert.ok((r.kinds[kind] ?? 0) > 0, `no ${kind} in the run: ${JSON.stringify(r.kinds)}`);
  }
});
