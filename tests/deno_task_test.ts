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

Deno.test("a serve-task test server runs with the serve task's V8 flags", async () => {
  const server = await startServer({ perms: "serve-task" });
  try {
    // Through cat: Deno lets only --allow-all read /proc itself.
    const out = await new Deno.Command("cat", { args: [`/proc/${server.proc.pid}/environ`] })
      .output();
    const environ = new TextDecoder().decode(out.stdout);
    assert.ok(
      environ.split("\0").includes(`DENO_V8_FLAGS=${denoTask("serve").env.DENO_V8_FLAGS}`),
      "DENO_V8_FLAGS of the serve task reaches the server process",
    );
  } finally {
    await server.stop();
  }
});
