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
 * The known-servers file holds one entry per line, `<host:port> SHA256:<b64> [fs]`;
 * the `fs` note is added once the server has shown protocol v2 (forward
 * secrecy, with a valid signature by the recorded key): from then on a
 * version 1 answer from that server is refused as a downgrade. (efx
 * releases before v2 read a line with the note as malformed and refuse that
 * server: they fail closed.)
 * blank lines and `#` comments (whole lines, or after an entry following a
 * space) are ignored. A malformed line about the server being reached stops
 * the connection (naming the file and line); other malformed lines are
 * ignored with a warning. {@linkcode listKnownServers} and
 * {@linkcode removeKnownServer} back `efx known-servers`.
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
import { AuthError, EfxError, UsageError } from "./errors.ts";
import type { ServerHelloFacts } from "./handshake.ts";
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
  /** Refuse a server that answers protocol v1, without forward secrecy (--require-forward-secrecy). */
  requireForwardSecrecy?: boolean;
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
export type ServerVerifier = (
  server: string,
  spki: Uint8Array,
  hello?: ServerHelloFacts,
) => Promise<TrustResult>;

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
  /** The server has shown forward secrecy (protocol v2): a v1 answer is a downgrade. */
  fs: boolean;
}

/** A line that is neither an entry, a comment nor blank. */
interface MalformedLine {
  /** Its first field: the server it seems to be about. */
  server: string;
  line: number;
}

interface KnownFile {
  entries: KnownEntry[];
  malformed: MalformedLine[];
  /** Raw text, to know whether a newline must be added before appending. */
  text: string;
}

/** A line without its comment: `#` at its start or after a space starts one. */
function stripComment(line: string): string {
  const m = /(^|\s)#/.exec(line);
  return (m ? line.slice(0, m.index) : line).trim();
}

/** Parses known-servers text: `<host:port> SHA256:<b64>` per line, `#` comments, blank lines. */
function parseKnownServers(text: string): { entries: KnownEntry[]; malformed: MalformedLine[] } {
  const entries: KnownEntry[] = [];
  const malformed: MalformedLine[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = stripComment(lines[i]);
    if (line === "") continue;
    const fields = line.split(/\s+/);
    const shape = fields.length === 2 || (fields.length === 3 && fields[2] === "fs");
    const fp = shape ? normalizeFingerprint(fields[1]) : undefined;
    if (fp === undefined || !fields[1].startsWith("SHA256:")) {
      malformed.push({ server: fields[0], line: i + 1 });
      continue;
    }
    entries.push({ server: fields[0], fingerprint: fp, line: i + 1, fs: fields.length === 3 });
  }
  return { entries, malformed };
}

/** Reads and parses the known-servers file; a missing file is empty. */
async function readKnownServers(file: string): Promise<KnownFile> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return { entries: [], malformed: [], text: "" };
    const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new AuthError(`cannot read known-servers file ${file}: ${why}`, { cause: err });
  }
  return { ...parseKnownServers(text), text };
}

/** Appends an entry, creating the parent directory and the file (mode 0600). */
async function appendKnownServer(
  file: string,
  known: KnownFile,
  server: string,
  fingerprint: string,
  fs = false,
): Promise<void> {
  const slash = Math.max(file.lastIndexOf("/"), file.lastIndexOf("\\"));
  if (slash > 0) await Deno.mkdir(file.slice(0, slash), { recursive: true, mode: 0o700 });
  const sep = known.text === "" || known.text.endsWith("\n") ? "" : "\n";
  await Deno.writeTextFile(file, `${sep}${server} ${fingerprint}${fs ? " fs" : ""}\n`, {
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

/**
 * Adds the `fs` note to the entry on `line` (1-based) of the file, if that
 * line still holds `server fingerprint`; rewrites through a temp file.
 */
async function markForwardSecrecy(
  file: string,
  line: number,
  server: string,
  fingerprint: string,
): Promise<void> {
  const text = await Deno.readTextFile(file);
  const lines = text.split("\n");
  const raw = lines[line - 1];
  if (raw === undefined) return;
  const entry = stripComment(raw);
  const fields = entry.split(/\s+/);
  if (
    fields.length !== 2 || !sameServer(fields[0], server) ||
    normalizeFingerprint(fields[1]) !== fingerprint
  ) return; // changed meanwhile: leave it
  const at = raw.indexOf(entry);
  lines[line - 1] = raw.slice(0, at + entry.length) + " fs" + raw.slice(at + entry.length);
  const tmp = `${file}.efx-tmp-${crypto.randomUUID()}`;
  try {
    await Deno.writeTextFile(tmp, lines.join("\n"), { createNew: true, mode: 0o600 });
    await Deno.rename(tmp, file);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
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

  /**
   * The version policy, once the key is trusted: a v1 answer is refused
   * when forward secrecy is required or the server has shown it before
   * (`known` has the fs note); a v2 answer has its signature checked (it
   * throws when bad) and resolves true.
   */
  const versionPolicy = async (
    server: string,
    hello: ServerHelloFacts | undefined,
    known?: KnownEntry,
  ): Promise<boolean> => {
    if (hello === undefined) return false;
    if (hello.version >= 2) return await hello.forwardSecrecy();
    if (opts.requireForwardSecrecy) {
      throw new AuthError(
        `${server} answered protocol version ${hello.version}, without forward secrecy, and ` +
          `--require-forward-secrecy refuses it (an old server, or a downgrade on the path); nothing was sent`,
      );
    }
    if (known?.fs) {
      throw new AuthError(
        `downgrade refused: ${server} has shown forward secrecy before (${file} line ${known.line} ` +
          `says 'fs') but now answers protocol version ${hello.version} (possible man-in-the-middle; ` +
          `if that server really went back to an old efx, remove 'fs' from that line); nothing was sent`,
      );
    }
    return false;
  };

  return async (
    server: string,
    spki: Uint8Array,
    hello?: ServerHelloFacts,
  ): Promise<TrustResult> => {
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
      await versionPolicy(server, hello);
      return { fingerprint, status: "pinned" };
    }

    const known = await readKnownServers(file);
    // A line about this server that cannot be read must not make it look
    // unknown (and so open to --accept-new): it stops the connection.
    const broken = known.malformed.find((m) => sameServer(m.server, server));
    for (const m of known.malformed) {
      if (m !== broken) warn(`efx: warning: ${file} line ${m.line}: malformed entry ignored`);
    }
    if (broken !== undefined) {
      throw new AuthError(
        `${file} line ${broken.line}: malformed entry for ${broken.server}; fix or remove that line ` +
          `(efx known-servers remove ${broken.server})`,
      );
    }
    const mine = known.entries.filter((e) => sameServer(e.server, server));
    const match = mine.find((e) => e.fingerprint === fingerprint && e.fs) ??
      mine.find((e) => e.fingerprint === fingerprint);
    if (match !== undefined) {
      if (await versionPolicy(server, hello, match) && !match.fs) {
        try {
          await markForwardSecrecy(file, match.line, server, fingerprint);
        } catch (err) {
          const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
          warn(`efx: warning: could not note forward secrecy for '${server}' in ${file}: ${why}`);
        }
      }
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
    // Checked before recording: a key is never recorded with a bad signature.
    const fs = await versionPolicy(server, hello);
    try {
      await appendKnownServer(file, known, server, fingerprint, fs);
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

/** How {@linkcode askYesNo} talks to the user. */
export interface PromptIo {
  /** Shows text (no newline added). */
  write: (text: string) => void;
  /** Reads one line without its newline; null at end of input. */
  readLine: () => Promise<string | null>;
}

/** Answers other than "yes" or "no" tolerated before the question counts as declined. */
const PROMPT_TRIES = 3;

/**
 * Asks a yes/no question: only the word `yes` (any case, surrounding space
 * ignored) trusts; `no`, an empty answer and end of input decline. Anything
 * else (`y`, a fingerprint, a typo) is asked again with "Please type 'yes'
 * or 'no'", at most {@linkcode PROMPT_TRIES} times in all, then declined.
 */
export async function askYesNo(question: string, io: PromptIo): Promise<boolean> {
  io.write(question.endsWith(" ") ? question : question + " ");
  for (let tries = 1;; tries++) {
    const line = await io.readLine();
    if (line === null) return false;
    const answer = line.trim().toLowerCase();
    if (answer === "yes") return true;
    if (answer === "no" || answer === "" || tries >= PROMPT_TRIES) return false;
    io.write("Please type 'yes' or 'no': ");
  }
}

/** Reads one line from stdin (at most 4 KiB kept); null at end of input before any byte. */
async function readStdinLine(): Promise<string | null> {
  const buf = new Uint8Array(1);
  const bytes: number[] = [];
  for (;;) {
    // One byte at a time: what follows the newline stays in stdin for later prompts.
    const n = await Deno.stdin.read(buf);
    if (n === null) {
      return bytes.length === 0 ? null : new TextDecoder().decode(new Uint8Array(bytes));
    }
    if (n === 0) continue;
    if (buf[0] === 0x0a) break;
    if (bytes.length < 4096) bytes.push(buf[0]);
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

/**
 * Asks a yes/no question on the terminal (stderr for the question, stdin for
 * the answer); see {@linkcode askYesNo}: only "yes" trusts.
 *
 * @example
 * ```ts
 * const ask = Deno.stdin.isTerminal() ? askOnTerminal : undefined;
 * ```
 */
export function askOnTerminal(question: string): Promise<boolean> {
  const enc = new TextEncoder();
  return askYesNo(question, {
    write: (text) => {
      const b = enc.encode(text);
      for (let off = 0; off < b.length;) off += Deno.stderr.writeSync(b.subarray(off));
    },
    readLine: readStdinLine,
  });
}

/** One entry of the known-servers file, as `efx known-servers list` shows it. */
export interface KnownServer {
  server: string;
  fingerprint: string;
  line: number;
  /** The line has the `fs` note (the server has shown forward secrecy). */
  fs: boolean;
}

/**
 * The entries of a known-servers file, in file order, and the line numbers
 * of malformed lines. A missing file has none.
 */
export async function listKnownServers(
  file: string,
): Promise<{ entries: KnownServer[]; malformed: number[]; exists: boolean }> {
  const known = await readKnownServers(file);
  let exists = true;
  if (known.text === "") {
    try {
      await Deno.lstat(file);
    } catch {
      exists = false;
    }
  }
  return { entries: known.entries, malformed: known.malformed.map((m) => m.line), exists };
}

/** The host part of a server label: `h` of `h:p`, `v6` of `[v6]:p`. */
function hostOf(label: string): string {
  const v6 = /^\[([^\]]*)\](:\d+)?$/.exec(label);
  if (v6) return v6[1];
  const colon = label.lastIndexOf(":");
  return colon > 0 && /^\d+$/.test(label.slice(colon + 1)) ? label.slice(0, colon) : label;
}

/**
 * Removes every line about `host` from the known-servers file (as
 * `ssh-keygen -R`): a full label `host:port` / `[v6]:port` matches that label
 * (any case), a bare host name or address matches it on every port.
 * Malformed lines about it go too; comments and other lines stay as they
 * are. The file is rewritten through a temp file (mode 0600) and renamed.
 * Returns how many lines were removed (0: the file is not touched).
 */
export async function removeKnownServer(file: string, host: string): Promise<number> {
  const fullLabel = /^(\[[^\]]+\]|[^:\[\]\s]+):\d+$/.test(host);
  const bare = host.replace(/^\[(.*)\]$/, "$1");
  const matches = (label: string) =>
    fullLabel ? sameServer(label, host) : sameServer(hostOf(label), bare);
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return 0;
    const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new EfxError(`cannot read known-servers file ${file}: ${why}`, undefined, { cause: err });
  }
  const lines = text.split("\n");
  const kept = lines.filter((raw) => {
    const line = stripComment(raw);
    return line === "" || !matches(line.split(/\s+/)[0]);
  });
  const removed = lines.length - kept.length;
  if (removed === 0) return 0;
  const tmp = `${file}.efx-tmp-${crypto.randomUUID()}`;
  try {
    await Deno.writeTextFile(tmp, kept.join("\n"), { createNew: true, mode: 0o600 });
    await Deno.rename(tmp, file);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new EfxError(`cannot rewrite known-servers file ${file}: ${why}`, undefined, {
      cause: err,
    });
  }
  return removed;
}
