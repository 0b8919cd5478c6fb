/**
 * The `serve` task's Deno permissions confine the server to its port, its
 * key files and its storage root: even a bug in the path checks could not
 * reach other files. These tests read the flags from deno.json itself, so
 * they pin the task as shipped.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { denoTask } from "./helpers/deno_task.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** The permission flags of a deno.json task (the words between `run` and `main.ts`). */
function taskFlags(task: string): string[] {
  return denoTask(task).flags;
}

Deno.test("serve task: no -A, no run/env/ffi, sys only for statfs, net pinned to one port", () => {
  const flags = taskFlags("serve");
  for (const f of flags) {
    assert.ok(
      /^--allow-(net|read|write)=/.test(f) || f === "--allow-sys=statfs",
      `unexpected or unscoped permission flag in the serve task: ${f}`,
    );
  }
  const net = flags.find((f) => f.startsWith("--allow-net="))!;
  assert.match(net, /^--allow-net=[^,]+:\d+$/);
});

Deno.test("serve task: Deno refuses reads and writes outside the root", async () => {
  const flags = taskFlags("serve");
  const dir = await Deno.makeTempDir({ prefix: "efx-lp-" });
  try {
    const checkout = join(dir, "checkout");
    const outside = join(dir, "outside");
    await Deno.mkdir(join(checkout, "keys"), { recursive: true });
    await Deno.mkdir(join(checkout, "storage"));
    await Deno.mkdir(outside);
    await Deno.writeTextFile(join(checkout, "storage", "inside.txt"), "in");
    await Deno.writeTextFile(join(checkout, "keys", "server.key.pem"), "k");
    await Deno.writeTextFile(join(checkout, "keys", "client.key.pem"), "c");
    await Deno.writeTextFile(join(outside, "secret.txt"), "secret");
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", ...flags, join(ROOT, "tests/fixtures/escape_probe.ts"), outside],
      cwd: checkout,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    // Inside: allowed.
    assert.equal(r["read storage file"], "ok");
    assert.equal(r["write storage file"], "ok");
    assert.equal(r["read server key"], "ok");
    // Outside: refused by Deno itself.
    for (
      const k of [
        "read outside file",
        "write outside file",
        "read /etc/passwd",
        "read other file in keys/",
        "write next to storage",
        "connect out",
        "read env",
        "run a program",
        "listen on another port",
      ]
    ) {
      assert.equal(r[k], "NotCapable", `${k}: expected Deno to refuse, got ${r[k]}`);
    }
    await assert.rejects(Deno.stat(join(outside, "planted.txt")), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve task flags: the real server runs and transfers under them", async () => {
  const { EfxClient } = await import("../src/client.ts");
  const flags = taskFlags("serve");
  const dir = await Deno.makeTempDir({ prefix: "efx-lp-" });
  await Deno.mkdir(join(dir, "keys")); // a checkout has keys/ (with its README)
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  // Same flags; only the pinned port differs, so the test never needs port 9000.
  const scoped = flags.map((f) =>
    f.startsWith("--allow-net=") ? f.replace(/:\d+$/, `:${port}`) : f
  );
  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...scoped, join(ROOT, "main.ts"), "serve", "--port", String(port)],
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { ...denoTask("serve").env, NO_COLOR: "1" }, // the task's V8 flags too
  }).spawn();
  const stderr: string[] = [];
  const reading = (async () => {
    for await (const chunk of server.stderr.pipeThrough(new TextDecoderStream())) {
      stderr.push(chunk);
    }
  })();
  try {
    let fp = "";
    let exited = false;
    server.status.then(() => exited = true);
    for (let i = 0; i < 200 && !fp && !exited; i++) {
      await new Promise((r) => setTimeout(r, 50));
      fp = /fingerprint: (SHA256:\S+)/.exec(stderr.join(""))?.[1] ?? "";
    }
    assert.ok(fp, `server did not start: ${stderr.join("")}`);
    const verifier = (_: string, _spki: Uint8Array) =>
      Promise.resolve({ fingerprint: fp, status: "pinned" as const });
    const src = join(dir, "src.bin");
    const data = crypto.getRandomValues(new Uint8Array(50_000));
    await Deno.writeFile(src, data);
    const c = await EfxClient.connect({ host: "127.0.0.1", port, verifier });
    await c.upload(src, "up.bin");
    await c.download("up.bin", join(dir, "back.bin"));
    await c.close();
    assert.deepEqual(await Deno.readFile(join(dir, "back.bin")), data);
    assert.deepEqual(await Deno.readFile(join(dir, "storage", "up.bin")), data);
  } finally {
    try {
      server.kill("SIGTERM");
    } catch { /* it already exited; the assertions above say why */ }
    await server.status;
    await reading;
    await Deno.remove(dir, { recursive: true });
  }
});
