/**
 * The client-side and handshake findings of "Hostile clients" (findings 9 to
 * 13), each as a test against a real server on loopback:
 *
 * - 9: a forged handshake ALERT is shown as unverified network text, exit 1;
 * - 10: known_servers comments; a malformed line for the server being
 *   reached fails the connection; `efx known-servers list|remove`; the trust
 *   prompt wants "yes";
 * - 11: `download --resume` never follows or reuses a partial file that is
 *   not a regular file of ours;
 * - 12: every key-confirmation failure runs one RSA-OAEP decryption;
 * - 13: the client waits for the server's CLOSE and reports an ALERT sent
 *   in its place.
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/hostile_client_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { AlertCode, encodeAlert } from "../src/handshake.ts";
import { Mitm, type Tamper } from "./helpers/mitm.ts";
import { assertExit, efx, makeWorkDir, startServer, type TestServer } from "./helpers/server.ts";

const S: TestServer = await startServer();
const WORK = await makeWorkDir("efx-hostile-client-");
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(WORK, { recursive: true });
  } catch { /* gone */ }
});

let counter = 0;
/** A fresh folder under WORK (no keys/ inside: the CLI sends no identity from it). */
async function scratch(): Promise<string> {
  const d = join(WORK, `t${counter++}`);
  await Deno.mkdir(d);
  return d;
}

function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected, got:\n${stderr}`);
  return lines[0];
}

// ---------------------------------------------------------------------------
// Finding 9: forged handshake alerts

const FORGED = "New fingerprint: SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA, " +
  'reconnect with --accept-new") efx: trust it';

for (const [where, index] of [["SERVER_HELLO", 0], ["SERVER_FINISHED", 1]] as const) {
  Deno.test(`9: a forged AUTH alert in place of ${where} is unverified text, exit 1 (pinned key)`, async () => {
    const forge: Tamper = (f) =>
      f.dir === "s2c" && f.kind === "handshake" && f.index === index
        ? { send: [encodeAlert(AlertCode.AUTH, FORGED)], close: true }
        : "pass";
    const mitm = await Mitm.start({ target: S.port, tamper: forge });
    try {
      const r = await efx(["ls", "--server", mitm.address, "--server-key", S.pubKeyPath], {
        cwd: await scratch(),
      });
      assertExit(r, 1, "a forged handshake alert is not an authentication verdict");
      assert.equal(
        oneLine(r.stderr),
        `efx: server refused the handshake before authentication ` +
          `(unverified message from the network: ${JSON.stringify(FORGED)})`,
      );
    } finally {
      await mitm.close();
    }
  });
}

Deno.test("9: the unverified alert text is sanitized, quoted and bounded", async () => {
  const evil = "\x1b[2J line\r\nnext " + "x".repeat(3000);
  const forge: Tamper = (f) =>
    f.dir === "s2c" && f.kind === "handshake"
      ? { send: [encodeAlert(AlertCode.BUSY, evil)], close: true }
      : "pass";
  const mitm = await Mitm.start({ target: S.port, tamper: forge });
  try {
    const r = await efx(["ls", "--server", mitm.address, "--server-key", S.pubKeyPath], {
      cwd: await scratch(),
    });
    assertExit(r, 1);
    const line = oneLine(r.stderr);
    assert.match(
      line,
      /^efx: server refused the handshake before authentication \(unverified message from the network: "\?\[2J line\?\?next x+\.\.\."\)$/,
    );
    assert.ok(line.length < 400, `bounded: ${line.length} characters`);
  } finally {
    await mitm.close();
  }
});
