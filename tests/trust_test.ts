import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { AuthError, ExitCode, UsageError } from "../src/errors.ts";
import {
  defaultKnownServersPath,
  makeServerVerifier,
  resolvePinnedFingerprint,
  type TrustOptions,
} from "../src/trust.ts";

const KEY_A = new Uint8Array(294).fill(1);
const KEY_B = new Uint8Array(294).fill(2);

/** Reference fingerprint, computed independently of src/trust.ts. */
function fp(spki: Uint8Array): string {
  return "SHA256:" + createHash("sha256").update(spki).digest("base64").replace(/=+$/, "");
}

interface Env {
  dir: string;
  file: string;
  warnings: string[];
  questions: string[];
  opts(extra?: Partial<TrustOptions>): TrustOptions;
}

async function withEnv(fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "efx-trust-" });
  const file = `${dir}/sub/dir/known_servers`;
  const warnings: string[] = [];
  const questions: string[] = [];
  const env: Env = {
    dir,
    file,
    warnings,
    questions,
    opts: (extra = {}) => ({
      knownServersFile: file,
      acceptNew: false,
      warn: (t) => warnings.push(t),
      ...extra,
    }),
  };
  try {
    await fn(env);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

async function writeKnown(file: string, text: string): Promise<void> {
  await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(file, text);
}

Deno.test("fingerprint is SHA256: + unpadded base64 of SHA-256 of the DER (real RSA key)", async () => {
  const pair = await crypto.subtle.generateKey(
    {
      name: "RSA-PSS",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  );
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  await withEnv(async (env) => {
    const verify = makeServerVerifier(env.opts({ pinnedFingerprint: fp(spki) }));
    const r = await verify("h:1", spki);
    assert.equal(r.fingerprint, fp(spki));
    assert.match(r.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
  });
});

Deno.test("pinned: matching key is accepted and the known-servers file is untouched", async () => {
  await withEnv(async (env) => {
    const verify = makeServerVerifier(env.opts({ pinnedFingerprint: fp(KEY_A), acceptNew: true }));
    assert.deepEqual(await verify("example.com:7022", KEY_A), {
      fingerprint: fp(KEY_A),
      status: "pinned",
    });
    assert.equal(await exists(env.file), false);
    assert.deepEqual(env.warnings, []);
  });
});

Deno.test("pinned: padding, missing prefix and lower-case prefix are tolerated", async () => {
  await withEnv(async (env) => {
    const b64 = fp(KEY_A).slice(7);
    for (const pin of [b64, `sha256:${b64}`, `SHA256:${b64}=`, `  SHA256:${b64}\n`]) {
      const verify = makeServerVerifier(env.opts({ pinnedFingerprint: pin }));
      assert.equal((await verify("h:1", KEY_A)).status, "pinned");
    }
  });
});

Deno.test("pinned: mismatch is an AuthError naming both fingerprints; file not read", async () => {
  await withEnv(async (env) => {
    // Even a known-servers entry that matches must not help.
    await writeKnown(env.file, `h:1 ${fp(KEY_B)}\n`);
    const verify = makeServerVerifier(env.opts({ pinnedFingerprint: fp(KEY_A), acceptNew: true }));
    await assert.rejects(verify("h:1", KEY_B), (err: unknown) => {
      assert.ok(err instanceof AuthError);
      assert.equal(err.exitCode, ExitCode.AUTH);
      assert.equal(
        err.message,
        `server key mismatch: expected ${fp(KEY_A)}, server presented ${fp(KEY_B)}`,
      );
      return true;
    });
    assert.equal(await Deno.readTextFile(env.file), `h:1 ${fp(KEY_B)}\n`);
  });
});

Deno.test("pinned: a malformed pinned fingerprint is a UsageError at once", async () => {
  await withEnv((env) => {
    for (const bad of ["", "SHA256:abc", "MD5:" + fp(KEY_A).slice(7), fp(KEY_A) + "x"]) {
      assert.throws(() => makeServerVerifier(env.opts({ pinnedFingerprint: bad })), UsageError);
    }
    return Promise.resolve();
  });
});

Deno.test("unknown + acceptNew: recorded (mkdir -p, mode 0600), then known", async () => {
  await withEnv(async (env) => {
    const verify = makeServerVerifier(env.opts({ acceptNew: true }));
    assert.deepEqual(await verify("example.com:7022", KEY_A), {
      fingerprint: fp(KEY_A),
      status: "new-accepted",
    });
    assert.equal(await Deno.readTextFile(env.file), `example.com:7022 ${fp(KEY_A)}\n`);
    if (Deno.build.os !== "windows") {
      assert.equal((await Deno.stat(env.file)).mode! & 0o777, 0o600);
    }
    assert.equal(env.warnings.length, 1);
    assert.match(env.warnings[0], /Permanently added 'example\.com:7022'/);
    assert.ok(env.warnings[0].includes(fp(KEY_A)));

    // Second time: known, nothing written, no warning; works without acceptNew too.
    const again = makeServerVerifier(env.opts());
    assert.deepEqual(await again("example.com:7022", KEY_A), {
      fingerprint: fp(KEY_A),
      status: "known",
    });
    assert.equal(await Deno.readTextFile(env.file), `example.com:7022 ${fp(KEY_A)}\n`);
    assert.equal(env.warnings.length, 1);
  });
});

Deno.test("unknown + acceptNew: appends to an existing file and keeps its lines", async () => {
  await withEnv(async (env) => {
    // No trailing newline: the new entry must still go on its own line.
    await writeKnown(env.file, `# my servers\nold:1 ${fp(KEY_B)}`);
    if (Deno.build.os !== "windows") await Deno.chmod(env.file, 0o644);
    const verify = makeServerVerifier(env.opts({ acceptNew: true }));
    assert.equal((await verify("new:2", KEY_A)).status, "new-accepted");
    assert.equal(
      await Deno.readTextFile(env.file),
      `# my servers\nold:1 ${fp(KEY_B)}\nnew:2 ${fp(KEY_A)}\n`,
    );
    if (Deno.build.os !== "windows") {
      assert.equal((await Deno.stat(env.file)).mode! & 0o777, 0o600);
    }
    assert.equal((await makeServerVerifier(env.opts())("old:1", KEY_B)).status, "known");
    assert.equal((await makeServerVerifier(env.opts())("new:2", KEY_A)).status, "known");
  });
});

Deno.test("unknown + ask yes: the question is shown and the key recorded", async () => {
  await withEnv(async (env) => {
    const verify = makeServerVerifier(env.opts({
      ask: (q) => {
        env.questions.push(q);
        return Promise.resolve(true);
      },
    }));
    assert.equal((await verify("h:9", KEY_A)).status, "new-accepted");
    assert.deepEqual(env.questions, [
      `The authenticity of server 'h:9' can't be established.\n` +
      `Its key fingerprint is ${fp(KEY_A)}.\n` +
      `Are you sure you want to trust it (yes/no)?`,
    ]);
    assert.equal(await Deno.readTextFile(env.file), `h:9 ${fp(KEY_A)}\n`);
    assert.equal((await makeServerVerifier(env.opts())("h:9", KEY_A)).status, "known");
  });
});

Deno.test("unknown + ask no: AuthError 'server not trusted', nothing recorded", async () => {
  await withEnv(async (env) => {
    const verify = makeServerVerifier(env.opts({ ask: () => Promise.resolve(false) }));
    await assert.rejects(verify("h:9", KEY_A), (err: unknown) => {
      assert.ok(err instanceof AuthError);
      assert.match(err.message, /^server not trusted: h:9/);
      assert.ok(!err.message.includes("\n"));
      return true;
    });
    assert.equal(await exists(env.file), false);
  });
});

Deno.test("unknown, not a TTY, no acceptNew: refused with the advice", async () => {
  await withEnv(async (env) => {
    const verify = makeServerVerifier(env.opts());
    await assert.rejects(verify("h:9", KEY_A), (err: unknown) => {
      assert.ok(err instanceof AuthError);
      assert.equal(
        err.message,
        `unknown server h:9 (${fp(KEY_A)}); pass --accept-new to trust it on first use, ` +
          `or --fingerprint/--server-key to pin it`,
      );
      return true;
    });
    assert.equal(await exists(env.file), false);
  });
});

Deno.test("changed key: refused even with acceptNew; loud warning with both keys and line", async () => {
  await withEnv(async (env) => {
    const original = `# comment\n\nother:1 ${fp(KEY_A)}\nh:9 ${fp(KEY_A)}\n`;
    await writeKnown(env.file, original);
    let asked = false;
    const verify = makeServerVerifier(env.opts({
      acceptNew: true,
      ask: () => {
        asked = true;
        return Promise.resolve(true);
      },
    }));
    await assert.rejects(verify("h:9", KEY_B), (err: unknown) => {
      assert.ok(err instanceof AuthError);
      assert.equal(
        err.message,
        "server key for h:9 has changed (possible man-in-the-middle); see the warning above",
      );
      return true;
    });
    assert.equal(asked, false);
    assert.equal(env.warnings.length, 1);
    const w = env.warnings[0];
    assert.ok(w.split("\n").length > 3, "multi-line warning");
    assert.match(w, /WARNING: SERVER KEY HAS CHANGED/);
    assert.match(w, /man-in-the-middle/);
    assert.ok(w.includes(fp(KEY_A)), "expected fingerprint shown");
    assert.ok(w.includes(fp(KEY_B)), "presented fingerprint shown");
    assert.ok(w.includes(`remove line 4 of ${env.file}`), w);
    assert.equal(await Deno.readTextFile(env.file), original, "file untouched");
  });
});

Deno.test("changed key: server labels compare case-insensitively", async () => {
  await withEnv(async (env) => {
    await writeKnown(env.file, `Example.COM:7022 ${fp(KEY_A)}\n`);
    const verify = makeServerVerifier(env.opts({ acceptNew: true }));
    assert.equal((await verify("example.com:7022", KEY_A)).status, "known");
    await assert.rejects(verify("example.com:7022", KEY_B), AuthError);
  });
});

Deno.test("several entries for one server: any match is known, else all lines named", async () => {
  await withEnv(async (env) => {
    const C = new Uint8Array(10).fill(3);
    await writeKnown(env.file, `h:1 ${fp(KEY_A)}\nh:1 ${fp(KEY_B)}\n`);
    const verify = makeServerVerifier(env.opts());
    assert.equal((await verify("h:1", KEY_B)).status, "known");
    await assert.rejects(verify("h:1", C), AuthError);
    assert.ok(env.warnings[0].includes("remove lines 1, 2 of"), env.warnings[0]);
  });
});

Deno.test("malformed lines are ignored with a warning naming the line number", async () => {
  await withEnv(async (env) => {
    await writeKnown(
      env.file,
      [
        "# header comment",
        "",
        "garbage",
        `h:1 ${fp(KEY_A)} extra-field`,
        "h:2 SHA256:tooshort",
        `h:3 ${fp(KEY_A).slice(7)}`, // missing prefix in the file
        `   h:4   ${fp(KEY_A)}   `, // extra spaces are fine
        `\t# indented comment`,
        `h:5 ${fp(KEY_B)}\r`, // CRLF line ending is fine
      ].join("\n") + "\n",
    );
    const verify = makeServerVerifier(env.opts());
    assert.equal((await verify("h:4", KEY_A)).status, "known");
    assert.equal((await verify("h:5", KEY_B)).status, "known");
    const lines = env.warnings.slice(0, 4);
    assert.equal(lines.length, 4);
    for (const [i, n] of [3, 4, 5, 6].entries()) {
      assert.ok(lines[i].includes(`line ${n}`), lines[i]);
      assert.ok(lines[i].includes(env.file));
      assert.match(lines[i], /malformed/);
    }
    // A malformed line for h:1 makes h:1 neither "known" nor "unknown" (which
    // --accept-new would accept): the connection stops, naming the line.
    await assert.rejects(
      verify("h:1", KEY_A),
      (err: unknown) =>
        err instanceof AuthError &&
        err.message.startsWith(`${env.file} line 4: malformed entry for h:1;`),
    );
  });
});

Deno.test("unreadable known-servers path is an AuthError, not a silent 'unknown'", async () => {
  await withEnv(async (env) => {
    await Deno.mkdir(env.file, { recursive: true }); // a directory where the file should be
    const verify = makeServerVerifier(env.opts({ acceptNew: true }));
    await assert.rejects(verify("h:1", KEY_A), (err: unknown) => {
      assert.ok(err instanceof AuthError);
      assert.match(err.message, /cannot read known-servers file/);
      return true;
    });
  });
});

Deno.test("bad server label is a UsageError", async () => {
  await withEnv(async (env) => {
    const verify = makeServerVerifier(env.opts({ acceptNew: true }));
    await assert.rejects(verify("h 1:2", KEY_A), UsageError);
    await assert.rejects(verify("", KEY_A), UsageError);
    assert.equal(await exists(env.file), false);
  });
});

Deno.test("resolvePinnedFingerprint: flag, key file, both agreeing, both differing", async () => {
  const load = (path: string) => {
    assert.equal(path, "server.pub");
    return Promise.resolve({ fingerprint: fp(KEY_A) });
  };
  assert.equal(await resolvePinnedFingerprint({}, load), undefined);
  assert.equal(
    await resolvePinnedFingerprint({ fingerprint: fp(KEY_B).slice(7) + "=" }, load),
    fp(KEY_B),
  );
  assert.equal(await resolvePinnedFingerprint({ serverKeyFile: "server.pub" }, load), fp(KEY_A));
  assert.equal(
    await resolvePinnedFingerprint({ fingerprint: fp(KEY_A), serverKeyFile: "server.pub" }, load),
    fp(KEY_A),
  );
  await assert.rejects(
    resolvePinnedFingerprint({ fingerprint: fp(KEY_B), serverKeyFile: "server.pub" }, load),
    UsageError,
  );
  await assert.rejects(resolvePinnedFingerprint({ fingerprint: "nope" }, load), UsageError);
});

Deno.test("defaultKnownServersPath: EFX_HOME, then HOME, then ./keys", () => {
  const saved = { EFX_HOME: Deno.env.get("EFX_HOME"), HOME: Deno.env.get("HOME") };
  const restore = (name: "EFX_HOME" | "HOME") => {
    const v = saved[name];
    if (v === undefined) Deno.env.delete(name);
    else Deno.env.set(name, v);
  };
  try {
    Deno.env.set("EFX_HOME", "/opt/efx/");
    Deno.env.set("HOME", "/home/u");
    assert.equal(defaultKnownServersPath(), "/opt/efx/known_servers");
    Deno.env.delete("EFX_HOME");
    assert.equal(defaultKnownServersPath(), "/home/u/.efx/known_servers");
    Deno.env.set("EFX_HOME", "");
    assert.equal(defaultKnownServersPath(), "/home/u/.efx/known_servers");
    Deno.env.delete("EFX_HOME");
    Deno.env.delete("HOME");
    assert.equal(defaultKnownServersPath(), "./keys/known_servers");
  } finally {
    restore("EFX_HOME");
    restore("HOME");
  }
});

Deno.test({
  name: "defaultKnownServersPath: no env permission falls back to ./keys",
  permissions: { env: false },
  fn() {
    assert.equal(defaultKnownServersPath(), "./keys/known_servers");
  },
});
