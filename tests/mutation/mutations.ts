/**
 * The curated mutations of `deno task mutate` (runner: tests/mutation/mutate.ts).
 *
 * Each entry disables or weakens ONE security or integrity check, the way a
 * careless edit could, and names the test files that must then fail:
 *
 * ```ts
 * {
 *   id: "record-tag",              // unique, short, kebab-case: `deno task mutate --only record-tag`
 *   file: "src/record.ts",         // path from the repository root
 *   find: "if (!constantTimeEqual(tag, ", // text that must occur EXACTLY ONCE in `file`
 *   replace: "if (false && !constantTimeEqual(tag, ", // what it becomes
 *   tests: ["tests/record_test.ts"], // 1-2 fast test files that must catch it
 *   filter: "timing",              // optional: deno test --filter (a test name substring)
 *   also: [{ file, find, replace }], // optional: edits that must go with the first one
 *   why: "what would go wrong",    // one line: the attack the check stops
 * }
 * ```
 *
 * Rules:
 * - `find` occurs exactly once in its file, or the run fails before testing
 *   anything (so an entry made stale by a refactor is caught at once). Keep it
 *   short and specific: the check itself, not its surroundings; after moving
 *   code, update `file` and `find` only.
 * - The mutated code must still type-check (a type error is reported as an
 *   invalid mutation, not as a catch).
 * - A mutation should keep honest traffic working: it removes the check that
 *   refuses a lie, so only a test that tells a lie can catch it.
 * - Every new security check gets its entry here, with the tests that catch it.
 *
 * @module
 */

/** One edit of one file. */
export interface Edit {
  file: string;
  find: string;
  replace: string;
}

/** One mutation: a primary edit (and rarely a few coupled ones) plus the tests that must catch it. */
export interface Mutation extends Edit {
  id: string;
  /** Test files (from the repository root) run against the mutant; at least one must fail. */
  tests: string[];
  /** Optional `deno test --filter` value. */
  filter?: string;
  /** Further edits applied together with the primary one (e.g. both ends of a protocol). */
  also?: Edit[];
  why: string;
}

export const MUTATIONS: Mutation[] = [
  // ---- record layer ------------------------------------------------------
  {
    id: "record-tag",
    file: "src/record.ts",
    find: "if (!constantTimeEqual(tag, bodyAndTag.subarray(n, n + TAG_LEN))) {",
    replace: "if (false) {",
    tests: ["tests/record_test.ts"],
    why: "a forged or altered record would be decrypted and acted on",
  },
  {
    id: "record-seq",
    file: "src/record.ts",
    find: ".update(u64(rec.seq)).update(rec.header)",
    replace: ".update(rec.header)",
    also: [{
      file: "src/record.ts",
      find: 'createHmac("sha256", mac).update(u64(seq)).update(headerAndCiphertext)',
      replace: 'createHmac("sha256", mac).update(headerAndCiphertext)',
    }],
    tests: ["tests/record_test.ts"],
    why: "without the sequence number in the tag, records could be replayed, dropped or reordered",
  },
  {
    id: "record-limit",
    file: "src/record.ts",
    find:
      "if (this.#seq >= this.#max) throw limitError(this.#max);\n    const seq = this.#seq++;\n    const pf",
    replace: "const seq = this.#seq++;\n    const pf",
    tests: ["tests/channel_test.ts"],
    filter: "maxRecords",
    why: "the receiver would accept records past the per-key limit (sequence numbers could wrap)",
  },
  {
    id: "end-flag-type",
    file: "src/record.ts",
    find: "if ((flags & FLAG_END) && type !== RecordType.DATA) {",
    replace: "if (false) {",
    tests: ["tests/record_test.ts"],
    why: "an END flag on a message record would be accepted",
  },
  {
    id: "close-mid-stream",
    file: "src/channel.ts",
    find: 'throw new IntegrityError("peer closed the connection in the middle of a data stream");',
    replace: "return;",
    tests: ["tests/channel_test.ts"],
    why: "a CLOSE inside a file stream would end the stream as if it were complete (short file)",
  },
  {
    id: "close-required",
    file: "src/channel.ts",
    find:
      'throw new IntegrityError("connection closed unexpectedly (truncated: no close record)");',
    replace: "return null;",
    tests: ["tests/channel_test.ts"],
    why: "a cut connection would look like an orderly end",
  },
  {
    id: "ct-compare",
    file: "src/bytes.ts",
    find: "return timingSafeEqual(a, b);",
    replace: "for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;\n  return true;",
    tests: ["tests/security_review_test.ts"],
    filter: "timing",
    why: "an early-exit compare leaks through timing how many tag bytes were right",
  },
  // ---- handshake ---------------------------------------------------------
  {
    id: "server-finished",
    file: "src/handshake.ts",
    find: 'if (!constantTimeEqual(sf.body, finishedMac(keys.serverFinishedKey, "server", th))) {',
    replace: "if (false) {",
    tests: ["tests/channel_test.ts"],
    why: "a client would accept an impostor that presents the pinned key without its private key",
  },
  {
    id: "client-finished",
    file: "src/handshake.ts",
    find: 'if (!constantTimeEqual(cf.body, finishedMac(keys.clientFinishedKey, "client", th))) {',
    replace: "if (false) {",
    tests: ["tests/channel_test.ts"],
    why: "a server would go on with a tampered or replayed handshake",
  },
  {
    id: "server-key-min",
    file: "src/keys.ts",
    find: "if (bits < MIN_BITS) throw new AuthError(`server key is too small",
    replace: "if (false) throw new AuthError(`server key is too small",
    tests: ["tests/security_review_test.ts"],
    filter: "keys under 2048",
    why: "a client would send its secret under a breakable RSA key",
  },
  {
    id: "client-key-min",
    file: "src/auth.ts",
    find: "if (bits < MIN_BITS) throw new AuthError(`client key too small",
    replace: "if (false) throw new AuthError(`client key too small",
    tests: ["tests/security_review_test.ts"],
    filter: "keys under 2048",
    why: "a server would admit a client proving itself with a breakable key",
  },
  {
    id: "pin-mismatch",
    file: "src/trust.ts",
    find: "if (fingerprint !== pinned) {",
    replace: "if (false) {",
    tests: ["tests/trust_test.ts"],
    why: "a pinned client would talk to a server with another key (man in the middle)",
  },
  {
    id: "known-server-changed",
    file: "src/trust.ts",
    find: "if (mine.length > 0) {",
    replace: "if (false) {",
    tests: ["tests/trust_test.ts"],
    why: "a changed key for a known server would be treated as a new server",
  },
  {
    id: "handshake-alert-sanitize",
    file: "src/handshake.ts",
    find: "text = sanitize(utf8Decoder.decode(body.subarray(1)));",
    replace: "text = utf8Decoder.decode(body.subarray(1));",
    tests: ["tests/fuzz_test.ts"],
    filter: "alertToError",
    why: "an unauthenticated handshake alert could put escape sequences on the user's terminal",
  },
  {
    id: "record-alert-sanitize",
    file: "src/channel.ts",
    find: 'const text = sanitize(String(a.message ?? "unspecified error"));',
    replace: 'const text = String(a.message ?? "unspecified error");',
    tests: ["tests/lying_peers_test.ts"],
    filter: "escape",
    why: "a hostile server's ALERT text would reach the terminal with escape sequences",
  },
  {
    id: "reply-sanitize",
    file: "src/messages.ts",
    find: 'sanitize(String(msg.message ?? "request failed")),',
    replace: 'String(msg.message ?? "request failed"),',
    tests: ["tests/lying_peers_test.ts"],
    filter: "escape",
    why: "a hostile server's error reply would reach the terminal with escape sequences",
  },
  // ---- whole-file hash and size, every commit path -----------------------
  {
    id: "commit-hash",
    file: "src/atomic_file.ts",
    find: "if (expected !== undefined && expected !== sha256) {",
    replace: "if (false) {",
    tests: ["tests/atomic_file_test.ts", "tests/lying_peers_test.ts"],
    why: "a file whose bytes differ from the sender's hash would be committed",
  },
  {
    id: "server-put-hash",
    file: "src/requests.ts",
    find: "expectedSha256: peerSha,",
    replace: "expectedSha256: undefined,",
    tests: ["tests/lying_peers_test.ts"],
    filter: "lying client",
    why: "the server would store a single or resumed upload without checking the client's hash",
  },
  {
    id: "server-pipelined-hash",
    file: "src/requests.ts",
    find: "expectedSha256: peerSha256,",
    replace: "expectedSha256: undefined,",
    tests: ["tests/lying_peers_test.ts"],
    filter: "lying client",
    why: "the server would store a pipelined upload without checking the client's hash",
  },
  {
    id: "server-resume-prefix",
    file: "src/requests.ts",
    find: "await claim.checkPrefix(answer.offset, answer.prefixSha256!)",
    replace: "true",
    tests: ["tests/lying_peers_test.ts"],
    filter: "resumed put",
    why: "a client could continue someone else's partial without proving it has the same prefix",
  },
  {
    id: "server-resume-offset",
    file: "src/messages.ts",
    find: 'if (offset !== offered) fail("offset must be 0 or the offered length");',
    replace: "",
    tests: ["tests/lying_peers_test.ts"],
    filter: "resumed put",
    why: "a client could pick the resume offset (and probe the partial's content)",
  },
  {
    id: "resume-bad-partial-kept",
    file: "src/atomic_file.ts",
    find: "this.#keep = false; // a partial that hashes wrong is worthless",
    replace: "",
    tests: ["tests/lying_peers_test.ts"],
    filter: "resumed put",
    why: "a partial that failed the whole-file hash would be offered again",
  },
  {
    id: "stream-size",
    file: "src/transfer.ts",
    find: "if (received !== size || trailer.bytes !== size) {",
    replace: "if (trailer.bytes !== size) {",
    tests: ["tests/lying_peers_test.ts"],
    why: "a stream shorter than announced would be committed as the whole file",
  },
  {
    id: "trailer-size",
    file: "src/transfer.ts",
    find: "if (received !== size || trailer.bytes !== size) {",
    replace: "if (received !== size) {",
    tests: ["tests/lying_peers_test.ts"],
    why: "a trailer reporting another byte count than was sent would be accepted",
  },
  {
    id: "stream-longer",
    file: "src/transfer.ts",
    find: "if (received > size) {",
    replace: "if (false) {",
    tests: ["tests/lying_peers_test.ts"],
    why: "a peer could send more than announced (past a size limit)",
  },
  {
    id: "client-download-hash",
    file: "src/client.ts",
    find: "expectedSha256: peerSha,",
    replace: "expectedSha256: undefined,",
    tests: ["tests/lying_peers_test.ts"],
    filter: "lying server",
    why: "the client would commit a download whose bytes differ from the server's hash",
  },
  {
    id: "client-stored-hash",
    file: "src/client.ts",
    find: "if (r.sha256 !== sent.sha256 || r.bytes !== size) {",
    replace: "if (r.bytes !== size) {",
    tests: ["tests/lying_peers_test.ts"],
    filter: "lying server",
    why: "an upload the server stored differently would be reported as a success",
  },
  {
    id: "client-stored-size",
    file: "src/client.ts",
    find: "if (r.sha256 !== sent.sha256 || r.bytes !== size) {",
    replace: "if (r.sha256 !== sent.sha256) {",
    tests: ["tests/lying_peers_test.ts"],
    filter: "lying server",
    why: "an upload the server stored with another size would be reported as a success",
  },
  {
    id: "client-resume-offset",
    file: "src/client.ts",
    find: "if (offset !== 0 && offset !== have) {",
    replace: "if (false) {",
    tests: ["tests/lying_peers_test.ts"],
    filter: "lying server",
    why: "a server could make a resumed download splice its bytes at an offset of its choice",
  },
  // ---- storage: names, confinement, modes ----------------------------------
  {
    id: "link-on-the-way",
    file: "src/storage/local.ts",
    find: "if (st.isSymlink || !st.isDirectory) {",
    replace: "if (false) {",
    tests: ["tests/storage_test.ts"],
    why: "a request through a link on the way (one the operator left) would read or write outside",
  },
  {
    id: "link-record-served",
    file: "src/storage/local.ts",
    find: 'if (st.isFile) return this.#links.read(path, st) === null ? "file" : "symlink";',
    replace: 'if (st.isFile) return "file";',
    tests: ["tests/folders_test.ts"],
    filter: "link",
    why: "a link stored as data would be served as a file (its record, with the root's secret)",
  },
  {
    id: "open-identity",
    file: "src/safe_fs.ts",
    find: "if (!sameFile(before, info)) {",
    replace: "if (false) {",
    tests: ["tests/safe_fs_test.ts"],
    why: "a file swapped between the check and the open would be served",
  },
  {
    id: "reserved-names",
    file: "src/storage/names.ts",
    find: "if (p.startsWith(RESERVED_PREFIX)) {",
    replace: "if (false) {",
    tests: ["tests/storage_test.ts"],
    why: "clients could read, write or remove temp files, staging and other clients' partials",
  },
  {
    id: "dot-dot-names",
    file: "src/storage/names.ts",
    find: 'if (p === "." || p === "..") throw bad(',
    replace: "if (false) throw bad(",
    tests: ["tests/storage_test.ts"],
    why: "names with .. could climb out of the storage root",
  },
  {
    id: "partials-per-identity",
    file: "src/storage/local_partials.ts",
    find: "return join(identityFolder(who), `${file}.part`);",
    replace: 'return join(identityFolder(""), `${file}.part`);',
    tests: ["tests/hostile_storage_test.ts"],
    filter: "finding 2",
    why: "one client's resumable upload would continue, or overwrite, another client's partial",
  },
  {
    id: "free-space-reserve",
    file: "src/storage/local.ts",
    find: "if (size > room) {",
    replace: "if (false) {",
    tests: ["tests/hostile_storage_test.ts"],
    filter: "finding 14",
    why: "one client could fill the server's disk",
  },
  {
    id: "quota",
    file: "src/storage/quota.ts",
    find: "if (used + size - credit > quota) {",
    replace: "if (false) {",
    tests: ["tests/hostile_storage_test.ts"],
    filter: "quota",
    why: "a client with a quota could store more than it",
  },
  {
    id: "owed-replies-bound",
    file: "src/server.ts",
    find: "while (recent.length >= MAX_OWED_REPLIES) await recent.shift();",
    replace: "",
    tests: ["tests/hostile_resources_test.ts"],
    filter: "never reads",
    why: "a client that never reads its replies would grow the server's memory without bound",
  },
  {
    id: "pre-auth-small-records",
    file: "src/server.ts",
    find: "maxBody: PRE_AUTH_MAX_BODY, // until admitted: small records, nothing computed ahead",
    replace: "maxBody: MAX_RECORD_BODY,",
    tests: ["tests/hostile_resources_test.ts"],
    filter: "small records",
    why: "an unauthenticated peer could make the server allocate 1 MiB records",
  },
  {
    id: "dummy-ciphertext",
    file: "src/handshake.ts",
    find: "const usable = ct.length === n.length && belowModulus(ct, n);",
    replace: "const usable = true;",
    tests: ["tests/hostile_client_test.ts"],
    filter: "12",
    why:
      "a ciphertext of the wrong length would be refused without the RSA operation (a timing signal)",
  },
  {
    id: "local-partial-link",
    file: "src/resume.ts",
    find: 'if (st.isSymlink) throw refuse("is a symbolic link, not a partial download of ours");',
    replace: "",
    tests: ["tests/hostile_client_test.ts"],
    filter: "11",
    why: "download --resume would write through a planted link",
  },
  {
    id: "known-servers-malformed",
    file: "src/trust.ts",
    find: "if (broken !== undefined) {",
    replace: "if (false) {",
    tests: ["tests/hostile_client_test.ts"],
    filter: "10:",
    why:
      "a damaged known_servers line for this server would make it look unknown, open to --accept-new",
  },
  {
    id: "handshake-alert-unverified",
    file: "src/handshake.ts",
    find: 'if (peer === "server") {',
    replace: "if (false) {",
    tests: ["tests/hostile_client_test.ts"],
    filter: "9:",
    why: "a forged, unauthenticated alert would be shown as the server's words with exit 3",
  },
  {
    id: "close-waits",
    file: "src/channel.ts",
    find: "await Promise.race([answered, deadline]);",
    replace: "",
    tests: ["tests/hostile_client_test.ts"],
    filter: "13:",
    why: "a failure the server detects at the very end would never reach the client",
  },
  {
    id: "mode-mask-file",
    file: "src/atomic_file.ts",
    find:
      "Deno.chmodSync(this.tempPath, (opts.mode ?? 0o644) & (opts.keepSticky ? 0o1777 : 0o777));",
    replace: "Deno.chmodSync(this.tempPath, opts.mode ?? 0o644);",
    tests: ["tests/lying_peers_test.ts"],
    filter: "setuid",
    why: "a peer could create setuid/setgid files",
  },
  {
    id: "mode-mask-dir",
    file: "src/storage/local.ts",
    find: "Deno.chmodSync(path, (opts.mode & 0o777) | 0o700)",
    replace: "Deno.chmodSync(path, opts.mode)",
    also: [{
      file: "src/messages.ts",
      find: 'mode: msg.mode === undefined ? undefined : uint(msg.mode, "mode") & 0o777,',
      replace: 'mode: msg.mode === undefined ? undefined : uint(msg.mode, "mode"),',
    }],
    tests: ["tests/lying_peers_test.ts"],
    filter: "setuid",
    why: "a client could create setgid or sticky folders on the server",
  },
  {
    id: "idle-timeout",
    file: "src/server.ts",
    find: "ch.idleTimeoutMs = this.#opts.idleTimeoutMs ?? 5 * 60_000;",
    replace: "ch.idleTimeoutMs = 0;",
    tests: ["tests/faults_test.ts"],
    filter: "idle timeout drops",
    why: "a client that goes silent after the handshake would hold its connection forever",
  },
  // ---- rights ------------------------------------------------------------
  {
    id: "rights",
    file: "src/auth.ts",
    find: 'if (READ_OPS.has(op)) return rights === "read";',
    replace: "if (READ_OPS.has(op)) return true;",
    tests: ["tests/auth_test.ts"],
    filter: "rights=",
    why: "a read-only or write-only client could do everything",
  },
  {
    id: "read-only",
    file: "src/server.ts",
    find: 'this.#opts.readOnly ? (r === "write" ? null : "read") : r;',
    replace: "r;",
    tests: ["tests/auth_test.ts"],
    filter: "read-only",
    why: "--read-only would not stop uploads and removals",
  },
  {
    id: "authorized-list",
    file: "src/server.ts",
    find: "const granted = list ? list.get(fp) : ",
    replace: 'const granted = list ? list.get(fp) ?? "rw" : ',
    tests: ["tests/auth_test.ts"],
    filter: "unlisted",
    why: "a server with an authorized-clients file would admit any client with a valid signature",
  },
  {
    id: "v2-record-keystream",
    file: "src/channel.ts",
    find: "const version = hs.version as ProtocolVersion;",
    replace: "const version = 1 as ProtocolVersion;",
    tests: ["tests/security_review_test.ts"],
    filter: "recorded v2 upload",
    why: "a version 2 session would silently run the version 1 keystream: both ends agree, " +
      "but a peer written from PROTOCOL.md would not interoperate",
  },
  {
    id: "v2-keystream-counter",
    file: "src/keystream2.ts",
    find: "generateBlocks(2, 0, Math.ceil(n / 32));",
    replace: "generateBlocks(2, 1, Math.ceil(n / 32));",
    tests: ["tests/vectors_test.ts", "tests/keystream_wasm_test.ts"],
    why:
      "the version 2 keystream would start at the wrong block: not the bytes PROTOCOL.md specifies",
  },
];
