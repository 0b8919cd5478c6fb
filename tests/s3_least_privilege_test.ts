/**
 * The S3 mode's footprint: the `serve-s3` task's permissions (two network
 * addresses, its key files, two environment variables, no storage folder),
 * and the module graph (a local server loads no S3 code; an S3 server loads
 * none of the local backend's disk code: both are behind dynamic imports).
 * Needs no store.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { denoTask } from "./helpers/deno_task.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** The permission flags of a deno.json task (the words between `run` and `main.ts`). */
function taskFlags(task: string): string[] {
  return denoTask(task).flags;
}

Deno.test("serve-s3 task: net pinned to the port and the store, no storage folder, env for credentials only", () => {
  const flags = taskFlags("serve-s3");
  for (const f of flags) {
    assert.ok(/^--allow-(net|read|write|env)=/.test(f), `unscoped or unexpected flag: ${f}`);
  }
  const net = flags.find((f) => f.startsWith("--allow-net="))!;
  assert.match(net, /^--allow-net=[^,]+:\d+,[^,]+:\d+$/);
  assert.equal(
    flags.find((f) => f.startsWith("--allow-env="))!,
    "--allow-env=EFX_S3_ACCESS_KEY,EFX_S3_SECRET_KEY",
  );
  for (const f of flags.filter((f) => /^--allow-(read|write)=/.test(f))) {
    for (const p of f.split("=")[1].split(",")) assert.match(p, /^keys\//, `${f} reaches ${p}`);
  }
});

interface InfoModule {
  specifier: string;
  dependencies?: { specifier: string; isDynamic?: boolean; code?: { specifier: string } }[];
}

/** Modules loaded by `root` before any dynamic import runs (type-only imports excluded). */
async function staticClosure(root: string): Promise<Set<string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", root],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const info = JSON.parse(new TextDecoder().decode(out.stdout));
  const byId = new Map<string, InfoModule>();
  for (const m of info.modules as InfoModule[]) byId.set(m.specifier, m);
  const seen = new Set<string>();
  const stack = [...(info.roots as string[])];
  while (stack.length) {
    const s = stack.pop()!;
    if (seen.has(s)) continue;
    seen.add(s);
    for (const d of byId.get(s)?.dependencies ?? []) {
      if (!d.isDynamic && d.code) stack.push(d.code.specifier);
    }
  }
  return seen;
}

const LOCAL_DISK = [
  "src/storage/local.ts",
  "src/storage/local_partials.ts",
  "src/storage/local_links.ts",
];

Deno.test("module graph: the S3 backend and aws4fetch, and the local backend, load only on demand", async () => {
  const main = [...await staticClosure(join(ROOT, "main.ts"))];
  for (const m of [...LOCAL_DISK, "src/storage/s3.ts", "src/storage/s3_client.ts"]) {
    assert.ok(!main.some((s) => s.endsWith(m)), `main.ts loads ${m} up front`);
  }
  assert.ok(!main.some((s) => s.includes("aws4fetch")), "main.ts loads aws4fetch up front");
  const s3 = [...await staticClosure(join(ROOT, "src/storage/s3.ts"))];
  for (const m of [...LOCAL_DISK, "src/safe_fs.ts"]) {
    assert.ok(!s3.some((s) => s.endsWith(m)), `the S3 backend loads ${m}`);
  }
  assert.ok(s3.some((s) => s.includes("aws4fetch")));
});
