/**
 * The one queue every client request goes through, so that one request owns
 * the channel at a time by construction.
 *
 * The protocol is "one request at a time" (PROTOCOL.md, Session), with a
 * single exception: a pipelined upload sends its request, stream and trailer
 * without waiting, and its reply is read later, in request order. The queue
 * has exactly these two shapes:
 *
 * - {@linkcode RequestQueue.run}: an exclusive request. It starts after
 *   every earlier request was sent AND every earlier reply was read, and the
 *   next request starts only once it has ended (however it ended). Plain,
 *   resumed and large uploads, downloads, listings, folder operations and
 *   the close all take this shape.
 * - {@linkcode RequestQueue.pipeline}: the sending half runs exclusively
 *   after earlier sends (not waiting for their replies); the reading half
 *   runs after every earlier owed reply was read. An exclusive request
 *   queued behind it waits for both halves.
 *
 * Nothing else in the client talks to the channel, so records of two
 * transfers can never mix.
 *
 * @example
 * ```ts
 * const q = new RequestQueue();
 * const a = q.pipeline(() => sendSmallFile(), () => readItsReply());
 * const b = q.run(() => uploadBigFile()); // starts once a's reply is read
 * ```
 * @module
 */

/** Serializes the requests of one connection. */
export class RequestQueue {
  /** Settles when the last queued sending part has ended. */
  #tail: Promise<void> = Promise.resolve();
  /** Settles when every reply owed to pipelined requests has been read. */
  #owed: Promise<void> = Promise.resolve();
  #pending = 0;

  /** Requests queued or running (for tests and diagnostics). */
  get pending(): number {
    return this.#pending;
  }

  /** Runs `fn` alone on the channel (see the module text). */
  run<T>(fn: () => Promise<T>): Promise<T> {
    this.#pending++;
    const owed = this.#owed; // what is owed now, not after this request joins it
    const p = this.#tail.then(async () => {
      await owed;
      return await fn();
    }).finally(() => this.#pending--);
    const settled = p.then(() => {}, () => {});
    this.#tail = settled;
    this.#owed = settled;
    return p;
  }

  /**
   * Queues a pipelined request: `send` runs once earlier sends are done;
   * `read` runs once `send` succeeded and every earlier owed reply was read.
   * `sent` rejects when `send` fails; `reply` then rejects with the same error.
   */
  pipeline<T>(
    send: () => Promise<void>,
    read: () => Promise<T>,
  ): { sent: Promise<void>; reply: Promise<T> } {
    this.#pending++;
    const sent = this.#tail.then(send);
    this.#tail = sent.then(() => {}, () => {});
    const reply = Promise.all([sent, this.#owed]).then(read).finally(() => this.#pending--);
    this.#owed = reply.then(() => {}, () => {});
    sent.catch(() => {});
    reply.catch(() => {});
    return { sent, reply };
  }

  /** Settles once everything queued so far has ended. */
  async idle(): Promise<void> {
    await this.#tail;
    await this.#owed;
  }
}
