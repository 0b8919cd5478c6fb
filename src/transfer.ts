/**
 * Moving one file's bytes over a channel, the same way in both directions:
 * the sender streams the file as DATA records and then a trailer with its
 * SHA-256 and byte count; the receiver writes through an AtomicWriter and
 * commits only when the trailer's hash equals its own hash of what it wrote.
 *
 * Memory does not grow with file size: chunks of {@linkcode DATA_CHUNK}
 * bytes stream through, a few in flight at a time.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { DATA_CHUNK, type SecureChannel } from "./channel.ts";
import { IntegrityError, ProtocolError, RemoteError } from "./errors.ts";
import { parseTrailer, type Trailer } from "./messages.ts";
import { give, take } from "./pool.ts";

/** Result of a finished transfer. */
export interface TransferResult {
  bytes: number;
  /** Hex SHA-256 of the file (computed locally). */
  sha256: string;
  /** Hex SHA-256 the peer reported. */
  peerSha256: string;
}

/** Where a sent file's bytes come from (a Deno.FsFile, a storage read handle). */
export interface ByteSource {
  read(p: Uint8Array): Promise<number | null>;
}

/** Where a received file's bytes go (an AtomicWriter, a storage upload). */
export interface ByteSink {
  write(chunk: Uint8Array): Promise<void>;
  /** Gives up (removes what was written, keeps a resumable partial). Never throws. */
  abort(): Promise<void>;
}

/** Options of {@linkcode sendFile}. */
export interface SendOptions {
  /** Bytes to send from the file's current position (its size, or what is left after a resume offset). */
  length: number;
  /** SHA-256 state over the part of the file the peer already has (resume); default: empty. */
  hash?: Hash;
  onBytes?: (n: number) => void;
}

/**
 * Streams `file` from its current position, then the trailer with the
 * SHA-256 of the WHOLE file (including a resumed prefix hashed into
 * `opts.hash`). When the file does not have `opts.length` more bytes any
 * more (it changed while being sent), the trailer reports an error instead,
 * and the receiver discards what it got.
 */
export async function sendFile(
  ch: SecureChannel,
  file: ByteSource,
  opts: SendOptions,
): Promise<{ bytes: number; sha256: string }> {
  const size = opts.length;
  const onBytes = opts.onBytes ?? (() => {});
  const hash = opts.hash ?? createHash("sha256");
  let bytes = 0;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    while (true) {
      const buf = take(DATA_CHUNK); // given back by sendStream once sealed and sent
      let fill = 0;
      while (fill < buf.length) {
        const n = await file.read(buf.subarray(fill));
        if (n === null) break;
        fill += n;
      }
      if (fill === 0) return;
      const chunk = buf.subarray(0, fill);
      hash.update(chunk);
      bytes += fill;
      onBytes(fill);
      yield chunk;
      if (fill < buf.length) return;
    }
  }
  await ch.sendStream(chunks(), give);
  const sha256 = hash.digest("hex");
  const trailer: Trailer = bytes === size ? { ok: true, sha256, bytes } : {
    ok: false,
    code: "changed",
    message: `source file changed while being sent (${bytes} bytes read, ${size} expected)`,
  };
  await ch.sendMessage(trailer);
  if (!trailer.ok) throw new RemoteError(trailer.code, trailer.message);
  return { bytes, sha256 };
}

/** Sends bytes held in memory as one file stream, then its trailer. */
export async function sendBytes(
  ch: SecureChannel,
  data: Uint8Array,
): Promise<{ bytes: number; sha256: string }> {
  const sha256 = createHash("sha256").update(data).digest("hex");
  await ch.sendStream((async function* () {
    yield data;
  })());
  await ch.sendMessage({ ok: true, sha256, bytes: data.length } satisfies Trailer);
  return { bytes: data.length, sha256 };
}

/**
 * Receives one file stream into `writer` and checks it against the trailer;
 * commits with `commit` (which gets the sender's hash) only when all is well.
 * On any failure the writer is aborted (no partial file is left) and, when
 * the channel is still in step, the rest of the stream is drained so that
 * the connection stays usable for the next request.
 */
export async function receiveFile(
  ch: SecureChannel,
  writer: ByteSink,
  size: number,
  commit: (peerSha256: string) => Promise<{ sha256: string; bytes: number }>,
  onBytes: (n: number) => void = () => {},
): Promise<TransferResult> {
  const { peerSha256 } = await receiveStream(ch, writer, size, onBytes);
  try {
    const done = await commit(peerSha256);
    return { bytes: done.bytes, sha256: done.sha256, peerSha256 };
  } catch (err) {
    await writer.abort();
    throw err;
  }
}

/**
 * The first half of {@linkcode receiveFile}: writes the stream into `writer`
 * and reads and checks the trailer, but does not commit. Returns the
 * sender's whole-file SHA-256, for the caller's commit. On any failure the
 * writer is aborted; the channel stays in step when it can.
 */
export async function receiveStream(
  ch: SecureChannel,
  writer: ByteSink,
  size: number,
  onBytes: (n: number) => void = () => {},
): Promise<{ peerSha256: string }> {
  let localError: unknown = undefined;
  let received = 0;
  let pending: Promise<void> = Promise.resolve();
  try {
    for await (const chunk of ch.recvStream()) {
      received += chunk.length;
      if (received > size) {
        ch.markBroken();
        throw new ProtocolError(`peer sent more than the announced ${size} bytes`);
      }
      if (localError !== undefined) continue; // drain after a local write error
      // One write in flight while the next record is read and decrypted.
      try {
        await pending;
      } catch (err) {
        localError = err;
        await writer.abort();
        continue;
      }
      pending = writer.write(chunk).then(() => {
        onBytes(chunk.length);
        give(chunk); // written: the record buffer can serve a later record
      });
      pending.catch(() => {});
    }
    try {
      await pending;
    } catch (err) {
      localError ??= err;
      await writer.abort();
    }
    const trailerMsg = await ch.recvMessage();
    if (localError !== undefined) throw localError;
    const trailer = parseTrailer(trailerMsg);
    if (received !== size || trailer.bytes !== size) {
      throw new IntegrityError(
        `size mismatch: ${size} bytes announced, ${received} received, ${trailer.bytes} reported`,
      );
    }
    return { peerSha256: trailer.sha256 };
  } catch (err) {
    await writer.abort();
    throw err;
  }
}
