/**
 * Buffered exact reads and complete writes over a Deno connection.
 *
 * `readExact` either fills the whole target or throws; an end of stream at a
 * message boundary is reported separately (`readExactOrEof` returns false) so
 * that callers can tell a clean close from a truncation.
 *
 * @module
 */
import { IntegrityError } from "./errors.ts";

/** What the reader needs: a `read` like Deno.Conn's. */
export interface Readable {
  read(p: Uint8Array): Promise<number | null>;
}

/** What the writer needs: a `write` like Deno.Conn's. */
export interface Writable {
  write(p: Uint8Array): Promise<number>;
}

/** Writes every byte of `data`. */
export async function writeAll(w: Writable, data: Uint8Array): Promise<void> {
  let o = 0;
  while (o < data.length) o += await w.write(data.subarray(o));
}

/** A read buffer in front of a connection. */
export class BufferedReader {
  #src: Readable;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;

  constructor(src: Readable, size = 64 * 1024) {
    this.#src = src;
    this.#buf = new Uint8Array(size);
  }

  /** Bytes already buffered. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /**
   * Fills `target` completely. Returns false when the stream ended before the
   * first byte (a clean end); throws {@linkcode IntegrityError} when it ended
   * part-way (`what` names the thing that was cut).
   */
  async readExactOrEof(target: Uint8Array, what: string): Promise<boolean> {
    let o = 0;
    while (o < target.length) {
      if (this.#end > this.#start) {
        const n = Math.min(target.length - o, this.#end - this.#start);
        target.set(this.#buf.subarray(this.#start, this.#start + n), o);
        this.#start += n;
        o += n;
        continue;
      }
      const want = target.length - o;
      let n: number | null;
      if (want >= this.#buf.length) {
        n = await this.#src.read(target.subarray(o)); // large reads skip the buffer copy
        if (n !== null) {
          o += n;
          continue;
        }
      } else {
        this.#start = 0;
        n = await this.#src.read(this.#buf);
        this.#end = n ?? 0;
      }
      if (n === null) {
        if (o === 0) return false;
        throw new IntegrityError(`connection closed in the middle of ${what} (truncated stream)`);
      }
    }
    return true;
  }

  /** Fills `target` completely or throws (an end of stream is a truncation). */
  async readExact(target: Uint8Array, what: string): Promise<void> {
    if (!(await this.readExactOrEof(target, what))) {
      throw new IntegrityError(`connection closed before ${what} (truncated stream)`);
    }
  }
}
