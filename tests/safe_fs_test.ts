/** openChecked: no links, the right kind, and the identity that was checked. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { openChecked, UnsafePathError } from "../src/safe_fs.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "efx-safe-fs-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const reason = (r: UnsafePathError["reason"]) => (err: unknown) =>
  err instanceof UnsafePathError && err.reason === r;

Deno.test("openChecked: a regular file opens; links, folders and FIFOs are refused", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "f"), "data");
    const { file, info } = openChecked(join(dir, "f"), { read: true });
    file.close();
    assert.equal(info.size, 4);
    await Deno.symlink("f", join(dir, "link"));
    assert.throws(() => openChecked(join(dir, "link"), { read: true }), reason("link"));
    await Deno.mkdir(join(dir, "d"));
    assert.throws(() => openChecked(join(dir, "d"), { read: true }), reason("kind"));
    const d = openChecked(join(dir, "d"), { read: true }, "dir");
    d.file.close();
    const mk = await new Deno.Command("mkfifo", { args: [join(dir, "fifo")] }).output();
    assert.equal(mk.code, 0);
    // Refused from its lstat, before an open that would block.
    assert.throws(() => openChecked(join(dir, "fifo"), { read: true }), reason("kind"));
  });
});

Deno.test("openChecked: a file swapped after it was checked is refused (identity)", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "f");
    await Deno.writeTextFile(path, "checked");
    const checked = Deno.lstatSync(path);
    // Someone replaces the name with another file between the check and the open.
    await Deno.writeTextFile(join(dir, "other"), "swapped in");
    await Deno.rename(join(dir, "other"), path);
    assert.throws(() => openChecked(path, { read: true }, "file", checked), reason("changed"));
    // The file that is there now opens when it is the one checked.
    const { file } = openChecked(path, { read: true }, "file", Deno.lstatSync(path));
    file.close();
  });
});
