import assert from "node:assert/strict";
import { denoTask, parseTask } from "./helpers/deno_task.ts";
import { startServer } from "./helpers/server.ts";

Deno.test("parseTask splits environment, flags and arguments", () => {
  const t = parseTask(
    "serve",
    "DENO_V8_FLAGS=--expose-gc,--max-semi-space-size=1 X=1 deno run --allow-net=0.0.0.0:9000 --allow-read=keys main.ts serve --quiet",
  );
  assert.deepEqual(t.env, { DENO_V8_FLAGS: "--expose-gc,--max-semi-space-size=1", X: "1" });
  assert.deepEqual(t.flags, ["--allow-net=0.0.0.0:9000", "--allow-read=keys"]);
  assert.deepEqual(t.args, ["serve", "--quiet"]);
});

Deno.test("parseTask refuses shell quoting and operators rather than misread them", () => {
  for (
    const line of [
      'X="1" deno run main.ts',
      "deno run main.ts serve && echo done",
      "deno run main.ts serve; echo done",
      "deno run main.ts serve | tee log",
      "deno run --allow-env=$HOME main.ts",
    ]
  ) {
    assert.throws(() => parseTask("t", line), /shell quoting or operators/, line);
  }
});

Deno.test("the compiled binaries carry the same V8 flags as the tasks that run from a checkout", () => {
  const cfg = JSON.parse(Deno.readTextFileSync(new URL("../deno.json", import.meta.url)));
  const v8Of = (task: string) => /--v8-flags=(\S+)/.exec(cfg.tasks[task])?.[1];
  assert.equal(v8Of("compile-server"), denoTask("serve").env.DENO_V8_FLAGS);
  assert.equal(v8Of("compile"), denoTask("efx").env.DENO_V8_FLAGS);
  assert.equal(v8Of("install"), denoTask("efx").env.DENO_V8_FLAGS);
});

Deno.test("parseTask refuses a task of another form", () => {
  assert.throws(() => parseTask("t", "deno test -A tests/"), /not of the form/);
  assert.throws(
    () => parseTask("t", "DENO_V8_FLAGS=--x deno run -A bench/bench.ts"),
    /not of the form/,
  );
  assert.throws(() => parseTask("t", "echo deno run main.ts"), /not of the form/);
});

Deno.test("the server tasks set V8 flags through DENO_V8_FLAGS and run main.ts serve", () => {
  for (const name of ["serve", "serve-s3"]) {
    const t = denoTask(name);
    assert.match(t.env.DENO_V8_FLAGS ?? "", /--expose-gc/, `${name} exposes gc (src/gc.ts)`);
    assert.equal(t.args[0], "serve");
  }
  assert.match(denoTask("efx").env.DENO_V8_FLAGS ?? "", /--expose-gc/);
  assert.throws(() => denoTask("no-such-task"), /no task no-such-task/);
});

Deno.test({
  name: "a serve-task test server runs with the serve task's V8 flags",
  ignore: Deno.build.os !== "linux", // reads /proc
}, async () => {
  // The runner's own environment is inherited: it must not already hold the value.
  assert.equal(Deno.env.get("DENO_V8_FLAGS"), undefined, "the test runner sets no DENO_V8_FLAGS");
  const server = await startServer({ perms: "serve-task" });
  try {
    // Through cat: Deno lets only --allow-all read /proc itself.
    const out = await new Deno.Command("cat", { args: [`/proc/${server.proc.pid}/environ`] })
      .output();
    assert.equal(out.code, 0, "cat could read the server's /proc/PID/environ");
    const environ = new TextDecoder().decode(out.stdout);
    assert.ok(
      environ.split("\0").includes(`DENO_V8_FLAGS=${denoTask("serve").env.DENO_V8_FLAGS}`),
      "DENO_V8_FLAGS of the serve task reaches the server process",
    );
  } finally {
    await server.stop();
  }
});
