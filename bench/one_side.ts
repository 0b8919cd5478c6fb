/**
 * `deno task bench --one-side`: each end of a transfer alone, in this
 * process, so that its speed and CPU are not mixed with the peer's.
 *
 * - sender: a real client channel (real handshake with an in-process server
 *   channel over loopback) sends the file with `sendFile`; after the
 *   handshake every byte it writes goes to a sink that discards it;
 * - receiver: a second pair, whose client's post-handshake bytes are first
 *   recorded to a file (not timed); then the server channel reads that
 *   recording instead of the socket and runs `receiveFile` into an
 *   AtomicWriter (hashing, writing, syncing and renaming as the server
 *   does), and the received file's SHA-256 must equal the sent one.
 *
 * The receiver runs twice: into a file, and hashing then discarding the
 * bytes (what the file writes cost is the difference).
 *
 * Reported per side: MB/s (wall), CPU ms per MiB and cores used (CPU / wall).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { AtomicWriter } from "../src/atomic_file.ts";
import { SecureChannel, type Transport } from "../src/channel.ts";
import { loadServerPrivateKey } from "../src/keys.ts";
import { receiveFile, sendFile } from "../src/transfer.ts";
import { cpuMs } from "./floor.ts";
import { sha256File } from "./measure.ts";

/** Figures of one side. */
export interface SideFigures {
  ms: number;
  cpuMs: number;
  mbPerS: number;
  cpuMsPerMiB: number;
  cores: number;
}

/** Both sides. */
export interface OneSide {
  sender: SideFigures;
  receiver: SideFigures;
  /** The receiver again, its bytes hashed and then discarded instead of written to a file. */
  receiverNoFile: SideFigures;
}

/** A TCP connection whose post-handshake traffic can be redirected. */
class Redirectable implements Transport {
  /** Where writes go once set: discarded (null) or appended to a file. */
  writeTo: Deno.FsFile | null | undefined = undefined;
  /** Where reads come from once set. */
  readFrom: Deno.FsFile | undefined = undefined;
  constructor(readonly conn: Deno.TcpConn) {}
  read(p: Uint8Array): Promise<number | null> {
    return this.readFrom ? this.readFrom.read(p) : this.conn.read(p);
  }
  async write(p: Uint8Array): Promise<number> {
    if (this.writeTo === undefined) return this.conn.write(p);
    if (this.writeTo === null) return p.length;
    let o = 0;
    while (o < p.length) o += await this.writeTo.write(p.subarray(o));
    return p.length;
  }
  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
  setNoDelay(on?: boolean): void {
    this.conn.setNoDelay(on);
  }
}

async function pair(keyPath: string) {
  const key = await loadServerPrivateKey(keyPath);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const s = listener.accept().then((c) => {
      const t = new Redirectable(c);
      return SecureChannel.server(t, { key }).then((ch) => ({ ch, t }));
    });
    const c = Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }).then((conn) => {
      const t = new Redirectable(conn);
      return SecureChannel.client(t, { verifyServerKey: () => Promise.resolve() }).then((
        ch,
      ) => ({ ch, t }));
    });
    const [server, client] = await Promise.all([s, c]);
    server.ch.setReceiveLimits({ maxBody: 1 << 20, prefetch: true });
    return { server, client };
  } finally {
    listener.close();
  }
}

async function timed(f: () => Promise<unknown>, bytes: number): Promise<SideFigures> {
  const t0 = performance.now();
  const cpu = await cpuMs(f);
  const ms = performance.now() - t0;
  return {
    ms,
    cpuMs: cpu,
    mbPerS: bytes / 1e6 / (ms / 1000),
    cpuMsPerMiB: cpu / (bytes / 1024 ** 2),
    cores: cpu / ms,
  };
}

/** Measures the sender and the receiver alone (see the module doc). */
export async function oneSide(
  path: string,
  size: number,
  keyDir: string,
  tmp: string,
): Promise<OneSide> {
  const keyPath = join(keyDir, "server.key.pem");
  const want = await sha256File(path);

  // Sender into a discarding sink.
  const a = await pair(keyPath);
  a.client.t.writeTo = null;
  const sender = await timed(async () => {
    using f = await Deno.open(path);
    await sendFile(a.client.ch, f, { length: size });
  }, size);
  a.client.t.close();
  a.server.t.close();

  const receiver = await receiveAlone(path, size, keyPath, tmp, want, true);
  const receiverNoFile = await receiveAlone(path, size, keyPath, tmp, want, false);
  return { sender, receiver, receiverNoFile };
}

async function receiveAlone(
  path: string,
  size: number,
  keyPath: string,
  tmp: string,
  want: string,
  toFile: boolean,
): Promise<SideFigures> {
  // Record a stream (not timed), then receive it alone.
  const b = await pair(keyPath);
  const recording = join(tmp, "one-side.stream");
  {
    using out = await Deno.open(recording, { write: true, create: true, truncate: true });
    b.client.t.writeTo = out;
    using f = await Deno.open(path);
    await sendFile(b.client.ch, f, { length: size });
  }
  b.client.t.close();
  using input = await Deno.open(recording);
  b.server.t.readFrom = input;
  const dest = join(tmp, "one-side.out");
  let got = "";
  const receiver = await timed(async () => {
    if (toFile) {
      const w = await AtomicWriter.create(dest, { force: true });
      await receiveFile(b.server.ch, w, size, (sha) => w.commit({ expectedSha256: sha }));
    } else {
      const h = createHash("sha256");
      const sink = {
        write: (c: Uint8Array) => Promise.resolve(void h.update(c)),
        abort: () => Promise.resolve(),
      };
      await receiveFile(b.server.ch, sink, size, () => {
        got = h.digest("hex");
        return Promise.resolve({ sha256: got, bytes: size });
      });
    }
  }, size);
  b.server.t.close();
  if (toFile) {
    got = await sha256File(dest);
    await Deno.remove(dest);
  }
  if (got !== want) throw new Error(`one-side receiver: SHA-256 mismatch (${got} != ${want})`);
  await Deno.remove(recording);
  return receiver;
}

/** One line for the report. */
export function describeOneSide(o: OneSide, floor: number): string {
  const side = (name: string, s: SideFigures) =>
    `${name} ${s.mbPerS.toFixed(0)} MB/s, ${s.cpuMsPerMiB.toFixed(2)} ms CPU/MiB (${
      (s.cpuMsPerMiB / floor).toFixed(2)
    }x floor), ${s.cores.toFixed(2)} cores`;
  return `one side: ${side("sender alone", o.sender)}; ${side("receiver alone", o.receiver)}; ${
    side("receiver alone, no file writes", o.receiverNoFile)
  }`;
}
