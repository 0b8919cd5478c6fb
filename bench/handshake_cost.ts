/**
 * `deno task bench-handshake`: what one handshake costs the server, and how
 * many it can answer, against a real `efx serve` on a loopback port.
 *
 *     deno task bench-handshake [--count 200]
 *
 * Reports, in one run:
 * - the RSA-OAEP-3072 private-key operation through WebCrypto (what the
 *   server does once per handshake), and the same operation in OpenSSL
 *   (`openssl speed rsa3072`) for comparison when `openssl` is installed;
 * - handshakes per second and p50/p99 latency with 1, 2, 4 and 8 clients
 *   at once (protocol v2, from this process), and the server process's CPU
 *   time per handshake (from /proc, so Linux only), which gives the rate
 *   one server core can sustain when the clients run elsewhere.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { SecureChannel } from "../src/channel.ts";
import { writeKeyPair } from "../src/keys.ts";
import { cpuMsOf, freePort, percentile, startEfxServer } from "./measure.ts";
import { denoTask } from "../tests/helpers/deno_task.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Mean ms per RSA-OAEP-3072 decryption through WebCrypto (`n` sequential calls). */
async function webCryptoDecryptMs(n: number): Promise<number> {
  const kp = await crypto.subtle.generateKey(
    {
      name: "RSA-OAEP",
      modulusLength: 3072,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    false,
    ["encrypt", "decrypt"],
  );
  const ct = await crypto.subtle.encrypt({ name: "RSA-OAEP" }, kp.publicKey, new Uint8Array(32));
  for (let i = 0; i < 3; i++) await crypto.subtle.decrypt({ name: "RSA-OAEP" }, kp.privateKey, ct);
  const t = performance.now();
  for (let i = 0; i < n; i++) await crypto.subtle.decrypt({ name: "RSA-OAEP" }, kp.privateKey, ct);
  return (performance.now() - t) / n;
}

/** ms per RSA-3072 private-key operation in OpenSSL, or undefined without openssl. */
async function opensslPrivateMs(): Promise<number | undefined> {
  try {
    const out = await new Deno.Command("openssl", {
      args: ["speed", "-seconds", "2", "rsa3072"],
      stdout: "piped",
      stderr: "null",
    }).output();
    const m = new TextDecoder().decode(out.stdout).match(/rsa 3072 bits\s+([\d.]+)s/);
    return m ? Number(m[1]) * 1000 : undefined;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ args: Deno.args, options: { count: { type: "string" } } });
  const count = Number(values.count ?? 200);
  const tmp = await Deno.makeTempDir({ prefix: "efx-bench-hs-" });
  const port = await freePort();
  const { privatePath } = await writeKeyPair(tmp, { bits: 3072 });
  const server = await startEfxServer({
    main: MAIN,
    flags: ["-A", `--v8-flags=${denoTask("serve").env.DENO_V8_FLAGS}`], // the serve task's V8
    port,
    root: join(tmp, "storage"),
    key: privatePath,
  }).catch(async (err) => {
    await Deno.remove(tmp, { recursive: true });
    throw err;
  });
  try {
    const rsa = await webCryptoDecryptMs(50);
    const ossl = await opensslPrivateMs();
    console.log(
      `RSA-3072 private-key operation: WebCrypto ${rsa.toFixed(2)} ms` +
        (ossl === undefined ? "" : `, OpenSSL ${ossl.toFixed(2)} ms (${(rsa / ossl).toFixed(1)}x)`),
    );
    for (const clients of [1, 2, 4, 8]) {
      const lat: number[] = [];
      let started = 0;
      const cpu0 = cpuMsOf(server.pid);
      const t0 = performance.now();
      await Promise.all(Array.from({ length: clients }, async () => {
        while (started++ < count) {
          const t = performance.now();
          const conn = await Deno.connect({ hostname: "127.0.0.1", port });
          const ch = await SecureChannel.client(conn, {
            verifyServerKey: () => Promise.resolve(),
          });
          lat.push(performance.now() - t);
          await ch.closeAndWait();
        }
      }));
      const s = (performance.now() - t0) / 1000;
      const cpuPer = (cpuMsOf(server.pid) - cpu0) / count;
      lat.sort((a, b) => a - b);
      console.log(
        `${clients} client(s) at once: ${(count / s).toFixed(0)} handshakes/s, ` +
          `p50 ${percentile(lat, 50).toFixed(1)} ms, p99 ${percentile(lat, 99).toFixed(1)} ms; ` +
          `server CPU ${cpuPer.toFixed(2)} ms per handshake (one core: ${
            (1000 / cpuPer).toFixed(0)
          }/s)`,
      );
    }
  } finally {
    server.kill("SIGTERM");
    await server.status;
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) await main();
