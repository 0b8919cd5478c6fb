/**
 * How the client decides whether to trust a server's RSA public key, in the
 * spirit of ssh's `known_hosts`.
 *
 * A key is identified by its fingerprint, `SHA256:` followed by the unpadded
 * base64 of the SHA-256 of its SubjectPublicKeyInfo DER. The client either
 *
 * - pins one fingerprint (`--fingerprint` or `--server-key FILE`): only that
 *   key is accepted and the known-servers file is not touched; or
 * - looks the server up in the known-servers file: a known server must present
 *   the recorded key (a changed key is always refused); an unknown server is
 *   recorded after `--accept-new` or a "yes" on the terminal, and refused
 *   otherwise.
 *
 * The known-servers file holds one entry per line, `<host:port> SHA256:<b64>`;
 * `#` comments and blank lines are ignored, and so (with a warning) are
 * malformed lines.
 *
 * @example
 * ```ts
 * const verify = makeServerVerifier({
 *   knownServersFile: defaultKnownServersPath(),
 *   acceptNew: false,
 *   ask: Deno.stdin.isTerminal() ? askOnTerminal : undefined,
 * });
 * // During the handshake, before any secret is sent:
 * const { fingerprint, status } = await verify("files.example.com:7022", serverSpki);
 * ```
 * @module
 */
import { AuthError, UsageError } from "./errors.ts";
import { fingerprint as fingerprintOf } from "./keys.ts";

/** Options of {@linkcode makeServerVerifier}. */
export interface TrustOptions {
  /**
   * Pinned fingerprint "SHA256:..." from --fingerprint, or from --server-key
   * FILE (the caller loads the file and passes its fingerprint here; see
   * {@linkcode resolvePinnedFingerprint}). When set, only this key is
   * accepted; the known-servers file is neither read nor written.
   */
  pinnedFingerprint?: string;
  /** Path of the known-servers file (default computed by {@linkcode defaultKnownServersPath}). */
  knownServersFile: string;
  /** Accept and record an unknown server without asking (for scripts; --accept-new). */
  acceptNew: boolean;
  /** Ask the user y/n; undefined when stdin is not a TTY. */
  ask?: (question: string) => Promise<boolean>;
  /** Where warnings go (default: stderr). */
  warn?: (text: string) => void;
}

/** How a server key came to be trusted. */
export type TrustStatus = "pinned" | "known" | "new-accepted";

/** Result of a successful verification. */
export interface TrustResult {
  /** Fingerprint of the key the server presented, `SHA256:<b64>`. */
  fingerprint: string;
  /** Why it is trusted. */
  status: TrustStatus;
}

/** Checks a server's key; see {@linkcode makeServerVerifier}. */
export type ServerVerifier = (server: string, spki: Uint8Array) => Promise<TrustResult>;

/** Unpadded base64 of a SHA-256 digest is always 43 characters. */
const FINGERPRINT_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;

/**
 * Normalizes a fingerprint written by a user: surrounding space, a missing
 * `SHA256:` prefix (any case) and base64 padding are tolerated. Returns
 * undefined when it is not a SHA-256 fingerprint.
 */
function normalizeFingerprint(text: string): string | undefined {
  let t = text.trim();
  if (/^sha256:/i.test(t)) t = t.slice(7);
  t = "SHA256:" + t.replace(/=+$/, "");
  return FINGERPRINT_RE.test(t) ? t : undefined;
}

/** Writes a warning line to stderr. */
function stderrWarn(text: string): void {
  console.error(text);
}

/** Server labels are compared case-insensitively (host names are). */
function sameServer(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

interface KnownEntry {
  server: string;
  fingerprint: string;
  line: number;
}

interface KnownFile {
  entries: KnownEntry[];
  /** Raw text, to know whether a newline must be added before appending. */
  text: string;
}

/** Reads and parses the known-servers file; a missing file is empty. */
async function readKnownServers(
  file: string,
  warn: (text: string) => void,
): Promise<KnownFile> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return { entries: [], text: "" };
    const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new AuthError(`cannot read known-servers file ${file}: ${why}`, { cause: err });
  }
  const entries: KnownEntry[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/\s+/);
    const fp = fields.length === 2 ? normalizeFingerprint(fields[1]) : undefined;
    if (fp === undefined || !fields[1].startsWith("SHA256:")) {
      warn(`efx: warning: ${file} line ${i + 1}: malformed entry ignored`);
      continue;
    }
    entries.push({ server: fields[0], fingerprint: fp, line: i + 1 });
  }
  return { entries, text };
}

/** Appends an entry, creating the parent directory and the file (mode 0600). */
async function appendKnownServer(
  file: string,
  known: KnownFile,
  server: string,
  fingerprint: string,
): Promise<void> {
  const slash = Math.max(file.lastIndexOf("/"), file.lastIndexOf("\\"));
  if (slash > 0) await Deno.mkdir(file.slice(0, slash), { recursive: true, mode: 0o700 });
  const sep = known.text === "" || known.text.endsWith("\n") ? "" : "\n";
  await Deno.writeTextFile(file, `${sep}${server} ${fingerprint}\n`, {
    append: true,
    create: true,
    mode: 0o600,
  });
  if (Deno.build.os !== "windows") {
    // `mode` only applies when the file is created; tighten an existing one too.
    try {
      await Deno.chmod(file, 0o600);
    } catch {
      // Not ours to fix (e.g. owned by someone else); the entry was written.
    }
  }
}

/** The ssh-style alarm shown when a known server presents another key. */
function changedKeyWarning(
  server: string,
  file: string,
  expected: KnownEntry[],
  presented: string,
): string {
  const bar = "@".repeat(61);
  const lines = expected.map((e) => e.line);
  const where = lines.length === 1
    ? `line ${lines[0]} of ${file}`
    : `lines ${lines.join(", ")} of ${file}`;
  return [
    bar,
    "@@@          WARNING: SERVER KEY HAS CHANGED!               @@@",
    bar,
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!",
    "Someone could be eavesdropping on you right now (man-in-the-middle attack)!",
    `It is also possible that the key of server '${server}' has just been changed.`,
    ...expected.map((e) => `Expected key:  ${e.fingerprint} (${file} line ${e.line})`),
    `Presented key: ${presented}`,
    `If you are sure the new key is genuine, to trust the new key remove ${where}.`,
    "Connection refused; nothing was sent to the server.",
  ].join("\n");
}

/**
 * Builds the function that decides, during the handshake and BEFORE any
 * secret is sent, whether the server's key is trusted.
 *
 * The returned verifier is called with the server label (`host:port`) and
 * the SPKI DER the server presented. It resolves with the key's fingerprint
 * and why it is trusted, or throws {@linkcode AuthError} with a one-line
 * message (exit 3). A malformed `pinnedFingerprint` throws
 * {@linkcode UsageError} right away.
 *
 * @example
 * ```ts
 * const verify = makeServerVerifier({
 *   pinnedFingerprint: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
 *   knownServersFile: defaultKnownServersPath(),
 *   acceptNew: false,
 * });
 * await verify("localhost:7022", spki); // throws AuthError on mismatch
 * ```
 */
export function makeServerVerifier(opts: TrustOptions): ServerVerifier {
  const warn = opts.warn ?? stderrWarn;
  const file = opts.knownServersFile;
  let pinned: string | undefined;
  if (opts.pinnedFingerprint !== undefined) {
    pinned = normalizeFingerprint(opts.pinnedFingerprint);
    if (pinned === undefined) {
      throw new UsageError(
        `bad fingerprint '${opts.pinnedFingerprint}': expected SHA256: followed by 43 base64 characters`,
      );
    }
  }

  return async (server: string, spki: Uint8Array): Promise<TrustResult> => {
    if (server === "" || /\s/.test(server)) {
      throw new UsageError(`bad server label '${server}'`);
    }
    const fingerprint = await fingerprintOf(spki);

    if (pinned !== undefined) {
      if (fingerprint !== pinned) {
        throw new AuthError(
          `server key mismatch: expected ${pinned}, server presented ${fingerprint}`,
        );
      }
      return { fingerprint, status: "pinned" };
    }

    const known = await readKnownServers(file, warn);
    const mine = known.entries.filter((e) => sameServer(e.server, server));
    if (mine.some((e) => e.fingerprint === fingerprint)) {
      return { fingerprint, status: "known" };
    }
    if (mine.length > 0) {
      warn(changedKeyWarning(server, file, mine, fingerprint));
      throw new AuthError(
        `server key for ${server} has changed (possible man-in-the-middle); see the warning above`,
      );
    }

    // Unknown server.
    if (!opts.acceptNew) {
      if (opts.ask === undefined) {
        throw new AuthError(
          `unknown server ${server} (${fingerprint}); pass --accept-new to trust it on first use, ` +
            `or --fingerprint/--server-key to pin it`,
        );
      }
      const yes = await opts.ask(
        `The authenticity of server '${server}' can't be established.\n` +
          `Its key fingerprint is ${fingerprint}.\n` +
          `Are you sure you want to trust it (yes/no)?`,
      );
      if (!yes) {
        throw new AuthError(`server not trusted: ${server} (${fingerprint}) was declined`);
      }
    }
    try {
      await appendKnownServer(file, known, server, fingerprint);
      warn(
        `efx: Permanently added '${server}' (${fingerprint}) to the list of known servers (${file}).`,
      );
    } catch (err) {
      // The user did decide to trust it: go on, but say it will be asked again.
      const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
      warn(`efx: warning: could not record '${server}' in ${file}: ${why}`);
    }
    return { fingerprint, status: "new-accepted" };
  };
}

/**
 * Turns the `--fingerprint` and `--server-key` flags into one pinned
 * fingerprint (or undefined when neither is given). The key file is read with
 * the injected `loadKey` (normally `loadPublicKeyFile` from keys.ts), which
 * reports its own errors. Giving both flags is allowed only when they agree.
 *
 * @example
 * ```ts
 * const pinned = await resolvePinnedFingerprint(
 *   { fingerprint: values.fingerprint, serverKeyFile: values["server-key"] },
 *   loadPublicKeyFile,
 * );
 * ```
 */
export async function resolvePinnedFingerprint(
  flags: { fingerprint?: string; serverKeyFile?: string },
  loadKey: (path: string) => Promise<{ fingerprint: string }>,
): Promise<string | undefined> {
  let fromFlag: string | undefined;
  if (flags.fingerprint !== undefined) {
    fromFlag = normalizeFingerprint(flags.fingerprint);
    if (fromFlag === undefined) {
      throw new UsageError(
        `--fingerprint must be SHA256: followed by 43 base64 characters, not '${flags.fingerprint}'`,
      );
    }
  }
  if (flags.serverKeyFile === undefined) return fromFlag;
  const fromFile = (await loadKey(flags.serverKeyFile)).fingerprint;
  if (fromFlag !== undefined && fromFlag !== fromFile) {
    throw new UsageError(
      `--fingerprint ${fromFlag} does not match --server-key ${flags.serverKeyFile} (${fromFile})`,
    );
  }
  return fromFile;
}

/**
 * Path of the known-servers file: `$EFX_HOME/known_servers`, else
 * `$HOME/.efx/known_servers`, else `./keys/known_servers`. Environment
 * variables that cannot be read (no `--allow-env`) count as unset.
 */
export function defaultKnownServersPath(): string {
  const env = (name: string): string | undefined => {
    try {
      const v = Deno.env.get(name);
      return v === undefined || v === "" ? undefined : v;
    } catch {
      return undefined;
    }
  };
  const join = (dir: string, name: string) => dir.replace(/[/\\]+$/, "") + "/" + name;
  const efxHome = env("EFX_HOME");
  if (efxHome !== undefined) return join(efxHome, "known_servers");
  const home = env("HOME");
  if (home !== undefined) return join(home, ".efx/known_servers");
  return "./keys/known_servers";
}

/**
 * Asks a yes/no question on the terminal: writes `question` and a space to
 * stderr and reads one line from stdin. Only "yes" or "y" (any case) count as
 * yes; anything else, or end of input, is no.
 *
 * @example
 * ```ts
 * const ask = Deno.stdin.isTerminal() ? askOnTerminal : undefined;
 * ```
 */
export async function askOnTerminal(question: string): Promise<boolean> {
  const enc = new TextEncoder();
  const prompt = enc.encode(question.endsWith(" ") ? question : question + " ");
  for (let off = 0; off < prompt.length;) off += Deno.stderr.writeSync(prompt.subarray(off));
  const buf = new Uint8Array(256);
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const n = await Deno.stdin.read(buf);
    if (n === null) break;
    const nl = buf.subarray(0, n).indexOf(0x0a);
    chunks.push(buf.slice(0, nl < 0 ? n : nl));
    total += nl < 0 ? n : nl;
    if (nl >= 0 || total > 4096) break;
  }
  const line = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    line.set(c, at);
    at += c.length;
  }
  const answer = new TextDecoder().decode(line).trim().toLowerCase();
  return answer === "yes" || answer === "y";
}
