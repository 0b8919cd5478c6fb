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
 * - handshakes per second and p50/p99 latency with 1, 2, 4, 8 and 16
 *   clients at once (protocol v2, from this process), the server process's
 *   CPU time per handshake (from /proc, so Linux only), which gives the rate
 *   one server core can sustain when the clients run elsewhere, split by
 *   thread name (main thread, Deno's worker threads where WebCrypto runs,
 *   V8's helpers), and the clients' CPU per handshake (this process's);
 * - the RSA public-key operations a client does per handshake (OAEP
 *   encryption, RSA-PSS verification of the ephemeral key's signature)
 *   through WebCrypto, and OpenSSL's verification for comparison.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { SecureChannel } from "../src/channel.ts";
import { writeKeyPair } from "../src/keys.ts";
import {
  cpuMsOf,
  cpuMsOfStat,
  freePort,
  percentile,
  startEfxServer,
  taskV8Flag,
} from "./measure.ts";

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

/** ms per RSA-3072 private-key (sign) and public-key (verify) operation in OpenSSL, or undefined without openssl. */
async function opensslRsaMs(): Promise<{ sign: number; verify: number } | undefined> {
  try {
    const out = await new Deno.Command("openssl", {
      args: ["speed", "-seconds", "2", "rsa3072"],
      stdout: "piped",
      stderr: "null",
    }).output();
    const m = new TextDecoder().decode(out.stdout).match(/rsa 3072 bits\s+([\d.]+)s\s+([\d.]+)s/);
    return m ? { sign: Number(m[1]) * 1000, verify: Number(m[2]) * 1000 } : undefined;
  } catch {
    return undefined;
  }
}

/** CPU ms of each thread of `pid`, summed by thread name (/proc/PID/task). */
function threadCpuMs(pid: number): Map<string, number> {
  const byName = new Map<string, number>();
  try {
    for (const e of Deno.readDirSync(`/proc/${pid}/task`)) {
      try {
        const name = Deno.readTextFileSync(`/proc/${pid}/task/${e.name}/comm`).trim();
        const cpu = cpuMsOfStat(`/proc/${pid}/task/${e.name}/stat`);
        if (cpu >= 0) byName.set(name, (byName.get(name) ?? 0) + cpu);
      } catch { /* the thread ended */ }
    }
  } catch { /* not Linux, or the process ended */ }
  return byName;
}

/** Mean ms of a client's two RSA-3072 public-key operations through WebCrypto. */
async function webCryptoPublicMs(n: number): Promise<{ encrypt: number; verify: number }> {
  const params = {
    modulusLength: 3072,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256",
  };
  const oaep = await crypto.subtle.generateKey({ name: "RSA-OAEP", ...params }, false, [
    "encrypt",
    "decrypt",
  ]);
  const pss = await crypto.subtle.generateKey({ name: "RSA-PSS", ...params }, false, [
    "sign",
    "verify",
  ]);
  const msg = new Uint8Array(600);
  const sig = await crypto.subtle.sign({ name: "RSA-PSS", saltLength: 32 }, pss.privateKey, msg);
  const time = async (f: () => Promise<unknown>) => {
    for (let i = 0; i < 5; i++) await f();
    const t = performance.now();
    for (let i = 0; i < n; i++) await f();
    return (performance.now() - t) / n;
  };
  return {
    encrypt: await time(() =>
      crypto.subtle.encrypt({ name: "RSA-OAEP" }, oaep.publicKey, new Uint8Array(32))
    ),
    verify: await time(() =>
      crypto.subtle.verify({ name: "RSA-PSS", saltLength: 32 }, pss.publicKey, sig, msg)
    ),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ args: Deno.args, options: { count: { type: "string" } } });
  const count = Number(values.count ?? 200);
  const tmp = await Deno.makeTempDir({ prefix: "efx-bench-hs-" });
  const port = await freePort();
  const { privatePath } = await writeKeyPair(tmp, { bits: 3072 });
  const server = await startEfxServer({
    main: MAIN,
    flags: ["-A", taskV8Flag("serve")],
    port,
    root: join(tmp, "storage"),
    key: privatePath,
  }).catch(async (err) => {
    await Deno.remove(tmp, { recursive: true });
    throw err;
  });
  try {
    const rsa = await webCryptoDecryptMs(50);
    const openssl = await opensslRsaMs();
    const ossl = openssl?.sign;
    console.log(
      `RSA-3072 private-key operation: WebCrypto ${rsa.toFixed(2)} ms` +
        (ossl === undefined ? "" : `, OpenSSL ${ossl.toFixed(2)} ms (${(rsa / ossl).toFixed(1)}x)`),
    );
    const pub = await webCryptoPublicMs(200);
    const osslVerify = openssl?.verify;
    console.log(
      `RSA-3072 public-key operations (a client's, per handshake): WebCrypto OAEP encryption ` +
        `${pub.encrypt.toFixed(2)} ms, PSS verification ${pub.verify.toFixed(2)} ms` +
        (osslVerify === undefined ? "" : `; OpenSSL verification ${osslVerify.toFixed(3)} ms`),
    );
    for (const clients of [1, 2, 4, 8, 16]) {
      const lat: number[] = [];
      let started = 0;
      const cpu0 = cpuMsOf(server.pid);
      const threads0 = threadCpuMs(server.pid);
      const self0 = cpuMsOf(Deno.pid);
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
      const clientPer = (cpuMsOf(Deno.pid) - self0) / count;
      const threads1 = threadCpuMs(server.pid);
      const split = [...threads1].map(([name, ms]) =>
        `${name} ${((ms - (threads0.get(name) ?? 0)) / count).toFixed(2)}`
      ).join(", ");
      lat.sort((a, b) => a - b);
      console.log(
        `${clients} client(s) at once: ${(count / s).toFixed(0)} handshakes/s, ` +
          `p50 ${percentile(lat, 50).toFixed(1)} ms, p99 ${percentile(lat, 99).toFixed(1)} ms; ` +
          `server CPU ${cpuPer.toFixed(2)} ms per handshake (one core: ${
            (1000 / cpuPer).toFixed(0)
          }/s; by thread: ${split}); clients ${clientPer.toFixed(2)} ms; cores busy ${
            ((cpuPer + clientPer) * count / 1000 / s).toFixed(2)
          }`,
      );
    }
  } finally {
    server.kill("SIGTERM");
    await server.status;
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) await main();
