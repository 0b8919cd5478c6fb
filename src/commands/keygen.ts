/**
 * `efx keygen` and `efx fingerprint`: make a key pair, and show a key file's
 * fingerprint.
 *
 * @module
 */
import { parseFlags } from "../cli/flags.ts";
import { UsageError } from "../errors.ts";
import { ALLOWED_BITS, DEFAULT_BITS, loadPublicKeyFile, writeKeyPair } from "../keys.ts";

const KEYGEN_USAGE = `usage: efx keygen [--bits 2048|3072|4096] [--out DIR] [--force] [--client]

Makes an RSA key pair: DIR/server.key.pem (private, mode 0600) and
DIR/server.pub.pem (public), then prints the fingerprint.
  --bits N    key size (default ${DEFAULT_BITS})
  --out DIR   where to write the keys (default "keys")
  --force     overwrite existing key files
  --client    write client.key.pem / client.pub.pem instead`;

const FINGERPRINT_USAGE = `usage: efx fingerprint FILE

Prints the SHA256 fingerprint of a public or private key PEM file.`;

/**
 * `efx keygen [--bits 2048|3072|4096] [--out DIR] [--force] [--client]`:
 * writes a key pair, prints the two paths, then the fingerprint as the last
 * line. Returns the exit code (0); errors are thrown as EfxError subclasses.
 *
 * @example
 * ```ts
 * const code = await keygenCommand(["--out", "keys", "--bits", "2048"]);
 * ```
 */
export async function keygenCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, {
    bits: { type: "string" },
    out: { type: "string" },
    force: { type: "boolean" },
    client: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, "keygen");
  if (values.help) {
    console.log(KEYGEN_USAGE);
    return 0;
  }
  if (positionals.length > 0) {
    throw new UsageError(
      `keygen: unexpected argument '${positionals[0]}' (see 'efx keygen --help')`,
    );
  }
  const bits = values.bits === undefined ? DEFAULT_BITS : Number(values.bits);
  if (!ALLOWED_BITS.includes(bits) || !/^\d+$/.test(values.bits ?? "0")) {
    throw new UsageError(`--bits must be ${ALLOWED_BITS.join(", ")}, not '${values.bits}'`);
  }
  const result = await writeKeyPair(values.out ?? "keys", {
    bits,
    force: values.force,
    prefix: values.client ? "client" : "server",
  });
  console.log(`private key: ${result.privatePath} (keep it secret)`);
  console.log(`public key:  ${result.publicPath}`);
  console.log(result.fingerprint);
  return 0;
}

/**
 * `efx fingerprint FILE`: prints the fingerprint (`SHA256:...`) of a public
 * or private key PEM file. Returns the exit code (0).
 *
 * @example
 * ```ts
 * await fingerprintCommand(["keys/server.pub.pem"]); // prints SHA256:...
 * ```
 */
export async function fingerprintCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(args, {
    help: { type: "boolean", short: "h" },
  }, "fingerprint");
  if (values.help) {
    console.log(FINGERPRINT_USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UsageError("fingerprint: give exactly one key file (usage: efx fingerprint FILE)");
  }
  const { fingerprint } = await loadPublicKeyFile(positionals[0]);
  console.log(fingerprint);
  return 0;
}
