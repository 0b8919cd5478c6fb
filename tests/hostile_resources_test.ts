/**
 * The server's resource budget against hostile clients: memory before
 * authentication, connection slots, and replies a client never reads.
 *
 * Each test runs a real `efx serve` subprocess and raw peers built from the
 * protocol modules (a real handshake, then hand-made records), and measures
 * the server process's resident memory (VmRSS in /proc/<pid>/status).
 *
 * Run: deno test --allow-net=127.0.0.1,localhost,0.0.0.0 --allow-read
 *   --allow-write --allow-run --allow-env --allow-sys tests/hostile_resources_test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadClientIdentity } from "../src/auth.ts";
import { SecureChannel } from "../src/channel.ts";
import { EfxClient } from "../src/client.ts";
import { writeKeyPair } from "../src/keys.ts";
import { ConnectionSlots, MemoryBudget, type Slot } from "../src/limits.ts";
import {
  encodeHeader,
  MAX_RECORD_BODY,
  RecordOpener,
  RecordReader,
  RecordSealer,
  RecordType,
} from "../src/record.ts";
import { sendBytes } from "../src/transfer.ts";
import { makeServerVerifier } from "../src/trust.ts";
import { assertServing, makeWorkDir, startServer, type TestServer } from "./helpers/server.ts";

const MB = 1024 * 1024;

/**
 * Resident memory of process `pid`, in bytes (VmRSS of /proc/<pid>/status,
 * read through `cat`: Deno lets only --allow-all read /proc directly).
 */
async function rss(pid: number): Promise<number> {
  const out = await new Deno.Command("cat", { args: [`/proc/${pid}/status`], stderr: "inherit" })
    .output();
  assert.equal(out.code, 0, `cannot read /proc/${pid}/status`);
  const status = new TextDecoder().decode(out.stdout);
  const m = status.match(/^VmRSS:\s+(\d+) kB$/m);
  assert.ok(m, "VmRSS missing from /proc status");
  return Number(m[1]) * 1024;
}

/** The highest RSS of `pid` seen while sampling for `ms` milliseconds. */
async function peakRss(pid: number, ms: number): Promise<number> {
  let peak = await rss(pid);
  const end = performance.now() + ms;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    peak = Math.max(peak, await rss(pid));
  }
  return peak;
}

function mb(bytes: number): string {
  return `${(bytes / MB).toFixed(0)} MB`;
}

/** A raw peer: a real handshake (the server's key taken on trust), then whatever the test writes. */
interface RawPeer {
  conn: Deno.Conn;
  ch: SecureChannel;
}

async function rawPeer(server: TestServer): Promise<RawPeer> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const ch = await SecureChannel.client(conn, {
    verifyServerKey: async () => {},
    handshakeTimeoutMs: 30_000,
  });
  return { conn, ch };
}

/** Opens `n` raw peers, `parallel` at a time, running `then` on each once its handshake is done. */
async function openPeers(
  server: TestServer,
  n: number,
  then: (p: RawPeer) => Promise<void> = async () => {},
  parallel = 16,
): Promise<RawPeer[]> {
  const peers: RawPeer[] = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      const p = await rawPeer(server);
      peers.push(p);
      await then(p);
    }
  };
  try {
    await Promise.all(Array.from({ length: parallel }, worker));
  } catch (err) {
    closePeers(peers);
    throw err;
  }
  return peers;
}

function closePeers(peers: RawPeer[]): void {
  for (const p of peers) p.ch.abort();
}

/** A client identity listed in a fresh authorized-clients file. */
async function listedClient(dir: string) {
  const r = await writeKeyPair(join(dir, "client"), { bits: 2048, prefix: "client" });
  // Written by startServer into keys/authorized_clients (readable under the serve task's flags).
  const acl = `${r.fingerprint}\n`;
  return { acl, identity: await loadClientIdentity(r.privatePath) };
}

function connectAs(server: TestServer, identity?: Awaited<ReturnType<typeof loadClientIdentity>>) {
  return EfxClient.connect({
    host: "127.0.0.1",
    port: server.port,
    verifier: makeServerVerifier({
      pinnedFingerprint: server.fingerprint,
      knownServersFile: "/nonexistent/efx-hostile/known_servers",
      acceptNew: false,
    }),
    handshakeTimeoutMs: 10_000,
    identity,
  });
}

// ---------------------------------------------------------------------------
// The budget and slot classes

Deno.test("MemoryBudget: waits in order when spent, wakes on release, a cancelled wait holds nothing", async () => {
  const b = new MemoryBudget(100);
  await b.acquire(60);
  assert.equal(b.tryAcquire(50), false);
  const order: string[] = [];
  const first = b.acquire(50).then(() => order.push("first"));
  const ac = new AbortController();
  const cancelled = b.acquire(10, ac.signal);
  const third = b.acquire(30).then(() => order.push("third"));
  assert.equal(b.tryAcquire(1), false, "no overtaking while others wait");
  ac.abort(new Error("gone"));
  await assert.rejects(cancelled, /gone/);
  assert.equal(b.used, 60);
  b.release(60);
  await Promise.all([first, third]);
  assert.deepEqual(order, ["first", "third"]);
  assert.equal(b.used, 80);
  b.release(80);
  // More than the whole budget is granted when nothing else is held.
  await b.acquire(500);
  assert.equal(b.used, 500);
  b.release(500);
  assert.equal(b.used, 0);
});

Deno.test("ConnectionSlots: a full cap evicts the oldest connection not admitted; refuses when all are admitted", () => {
  const slots = new ConnectionSlots(3, 2);
  const evicted: string[] = [];
  const take = (addr: string, name: string): Slot => {
    const s = slots.take(addr, () => evicted.push(name));
    assert.ok("admit" in s, `${name} refused: ${"message" in s ? s.message : ""}`);
    return s;
  };
  const a1 = take("a", "a1");
  const a2 = take("a", "a2");
  take("a", "a3"); // per-address cap: a1 goes
  assert.deepEqual(evicted, ["a1"]);
  assert.equal(a1.evicted, true);
  a2.admit();
  take("b", "b1");
  take("c", "c1"); // global cap: the oldest not admitted is a3 (a2 is admitted)
  assert.deepEqual(evicted, ["a1", "a3"]);
  const full = slots.take("a", () => {});
  assert.ok("admit" in full); // b1 evicted to make room
  assert.deepEqual(evicted, ["a1", "a3", "b1"]);
  full.admit();
  const d = slots.take("d", () => {}); // c1 evicted
  assert.deepEqual(evicted, ["a1", "a3", "b1", "c1"]);
  assert.ok("admit" in d);
  d.admit();
  assert.equal(slots.size, 3);
  const refused = slots.take("e", () => {}); // all three admitted: nobody to evict
  assert.ok(!("admit" in refused));
  assert.equal(refused.reason, "busy");
  a2.release();
  a2.release(); // idempotent
  assert.equal(slots.size, 2);
});

Deno.test("RecordReader: a long run of records that are already there lets timers (and other connections) run", async () => {
  const keys = { enc: new Uint8Array(32).fill(1), mac: new Uint8Array(32).fill(2) };
  const sealer = await RecordSealer.create(keys);
  const N = 8000;
  const frames: Uint8Array[] = [];
  for (let i = 0; i < N; i++) frames.push(await sealer.seal(RecordType.MSG, 0, new Uint8Array(16)));
  const wire = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let o = 0;
  for (const f of frames) {
    wire.set(f, o);
    o += f.length;
  }
  // Every read completes at once (a peer that filled the socket buffer).
  let pos = 0;
  const source = {
    read(p: Uint8Array): Promise<number | null> {
      if (pos >= wire.length) return Promise.resolve(null);
      const n = Math.min(p.length, wire.length - pos);
      p.set(wire.subarray(pos, pos + n));
      pos += n;
      return Promise.resolve(n);
    },
  };
  const reader = new RecordReader(await RecordOpener.create(keys), source);
  let read = 0;
  let readWhenTimerRan = -1;
  const timer = setTimeout(() => readWhenTimerRan = read, 0);
  const t0 = performance.now();
  while (await reader.next()) read++;
  clearTimeout(timer);
  const ms = performance.now() - t0;
  assert.equal(read, N);
  assert.ok(
    readWhenTimerRan >= 0 && readWhenTimerRan < N,
    `a 0 ms timer waited until all ${N} records (${ms.toFixed(0)} ms) were read`,
  );
});

// ---------------------------------------------------------------------------
// 5. Memory before any body byte arrives

Deno.test("resources: 250 connections announcing a 1 MiB record and sending only its header keep the server's memory flat", async () => {
  // The per-address cap is raised so that all 250 connections (one address
  // here) reach the record layer: this is about memory, not slots.
  const server = await startServer({
    args: ["--max-per-address", "1000", "--max-connections", "1000"],
  });
  const work = await makeWorkDir();
  let peers: RawPeer[] = [];
  try {
    await assertServing(server, work); // warm: code loaded, pools primed
    const before = await rss(server.proc.pid);
    peers = await openPeers(server, 250, async ({ conn }) => {
      await conn.write(encodeHeader(RecordType.DATA, 0, MAX_RECORD_BODY));
    });
    const peak = await peakRss(server.proc.pid, 2000);
    console.log(`header-only: RSS before ${mb(before)}, peak with 250 peers ${mb(peak)}`);
    assert.ok(
      peak - before < 100 * MB,
      `RSS grew ${mb(peak - before)} (from ${mb(before)} to ${
        mb(peak)
      }) for 250 header-only records`,
    );
    closePeers(peers);
    peers = [];
    await assertServing(server, work);
  } finally {
    closePeers(peers);
    await server.stop();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("resources: --max-memory holds back connections that start large records instead of allocating; the budget comes back when they go", async () => {
  const server = await startServer({
    args: ["--max-memory", "8M", "--max-per-address", "1000", "--max-connections", "1000"],
  });
  const work = await makeWorkDir();
  let peers: RawPeer[] = [];
  try {
    await assertServing(server, work);
    const before = await rss(server.proc.pid);
    // Each peer is admitted (a first request), then starts a 1 MiB record
    // and sends 128 KiB of it: past the first 64 KiB, so each asks for a
    // body buffer and a keystream (2 MiB). 100 of them would be 200 MiB.
    const part = new Uint8Array(128 * 1024);
    peers = await openPeers(server, 100, async ({ conn, ch }) => {
      await ch.sendMessage({ op: "ls" });
      await ch.recvMessage();
      await conn.write(encodeHeader(RecordType.DATA, 0, MAX_RECORD_BODY));
      await conn.write(part);
    });
    const peak = await peakRss(server.proc.pid, 2000);
    console.log(`budget 8M: RSS before ${mb(before)}, peak with 100 started records ${mb(peak)}`);
    assert.ok(
      peak - before < 60 * MB,
      `RSS grew ${mb(peak - before)} (from ${mb(before)} to ${mb(peak)}) with an 8 MiB budget`,
    );
    closePeers(peers);
    peers = [];
    // Whatever they held or waited for is returned: a large upload goes through.
    await server.waitForLog(/(connection dropped.*\n.*){100}/, 15_000);
    await assertServing(server, work);
    const big = join(work, "big.bin");
    await Deno.writeFile(big, new Uint8Array(3 * MB).fill(7));
    const client = await connectAs(server);
    try {
      await client.upload(big, "big.bin");
    } finally {
      await client.close();
    }
  } finally {
    closePeers(peers);
    await server.stop();
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("resources: before authenticating, a client may send only small records", async () => {
  const dir = await makeWorkDir();
  const { acl } = await listedClient(dir);
  const server = await startServer({ authorizedClients: acl });
  try {
    const { conn } = await rawPeer(server);
    await conn.write(encodeHeader(RecordType.MSG, 0, 256 * 1024));
    await server.waitForLog(/connection dropped: .*exceeds the limit of 65536 bytes/);
    conn.close();
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
// 6. Slots

Deno.test("resources: 256 idle anonymous connections do not lock an authorized client out (global cap)", async () => {
  const dir = await makeWorkDir();
  const { acl, identity } = await listedClient(dir);
  // Every peer comes from 127.0.0.1: the per-address cap is raised so that
  // the global cap (256) is the one reached.
  const server = await startServer({
    authorizedClients: acl,
    args: ["--max-per-address", "1000"],
  });
  let peers: RawPeer[] = [];
  try {
    peers = await openPeers(server, 256);
    const t0 = performance.now();
    const client = await connectAs(server, identity);
    try {
      assert.equal(client.rights, "rw");
      assert.deepEqual(await client.list(), []);
    } finally {
      await client.close();
    }
    assert.ok(performance.now() - t0 < 5000, "the authorized client had to wait");
    await server.waitForLog(/evicted/);
  } finally {
    closePeers(peers);
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resources: one address's idle connections stop at the per-address cap and do not lock out an authorized client", async () => {
  const dir = await makeWorkDir();
  const { acl, identity } = await listedClient(dir);
  const server = await startServer({
    authorizedClients: acl,
    args: ["--max-per-address", "8"],
  });
  let peers: RawPeer[] = [];
  try {
    peers = await openPeers(server, 40, async () => {}, 4);
    const client = await connectAs(server, identity);
    try {
      assert.deepEqual(await client.list(), []);
    } finally {
      await client.close();
    }
    // Of the 40, at most 8 are still held by the server.
    const held = server.stderr().match(/evicted/g)?.length ?? 0;
    assert.ok(held >= 32, `only ${held} of the idle connections were evicted`);
  } finally {
    closePeers(peers);
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resources: with --authorized-clients, a connection that does not authenticate in time is dropped", async () => {
  const dir = await makeWorkDir();
  const { acl } = await listedClient(dir);
  const server = await startServer({
    authorizedClients: acl,
    args: ["--auth-timeout", "1"],
  });
  try {
    const { ch } = await rawPeer(server);
    const t0 = performance.now();
    await assert.rejects(ch.recvMessage(), /timed out|authenticate/);
    const ms = performance.now() - t0;
    assert.ok(ms < 5000, `dropped only after ${ms} ms`);
    await server.waitForLog(/connection dropped: authenticating timed out after 1 s/);
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

/** Connects anonymously, lists the root (expected empty) and closes. */
async function listing(server: TestServer): Promise<void> {
  const client = await connectAs(server);
  try {
    assert.deepEqual(await client.list(), []);
  } finally {
    await client.close();
  }
}

// ---------------------------------------------------------------------------
// 7. Replies the client never reads

Deno.test("resources: a client that never reads the replies to its refused pipelined uploads is held back, memory bounded", async () => {
  // Each upload is refused (over --max-size) with a reply that names the
  // file: long names make the replies fill the socket buffers quickly.
  const server = await startServer({ args: ["--max-size", "1"] });
  const work = await makeWorkDir();
  let peer: RawPeer | undefined;
  try {
    await listing(server); // code loaded before the baseline
    const before = await rss(server.proc.pid);
    peer = await rawPeer(server);
    const ch = peer.ch;
    const dir = Array.from({ length: 15 }, (_, i) => `${i}`.padEnd(200, "x")).join("/");
    const two = new Uint8Array([4, 2]);
    let sent = 0;
    let stop = false;
    const flood = (async () => {
      while (!stop) {
        await ch.sendMessage({
          op: "put",
          name: `${dir}/f${sent}`,
          size: 2,
          mode: 0o644,
          mtime: 0,
          pipelined: true,
        });
        await sendBytes(ch, two);
        sent++;
      }
    })();
    flood.catch(() => {}); // ends when the peer is aborted below
    // The server must stop reading: the count of requests sent stops growing.
    let peak = before;
    let last = -1;
    let stillSince = performance.now();
    const end = performance.now() + 15_000;
    let stalled = false;
    while (performance.now() < end) {
      await new Promise((r) => setTimeout(r, 250));
      peak = Math.max(peak, await rss(server.proc.pid));
      if (sent !== last) {
        last = sent;
        stillSince = performance.now();
      } else if (sent > 0 && performance.now() - stillSince > 2000) {
        stalled = true;
        break;
      }
    }
    stop = true;
    console.log(
      `unread replies: ${sent} refused puts sent before the server stopped reading (${stalled}); ` +
        `RSS before ${mb(before)}, peak ${mb(peak)}`,
    );
    assert.ok(stalled, `the server kept reading: ${sent} requests with none of the replies read`);
    assert.ok(
      peak - before < 100 * MB,
      `RSS grew ${mb(peak - before)} (from ${mb(before)} to ${
        mb(peak)
      }) over ${sent} unread replies`,
    );
    ch.abort();
    await listing(server); // others are still served
    await server.waitForLog(/connection (dropped|ended)/);
  } finally {
    peer?.ch.abort();
    await server.stop();
    await Deno.remove(work, { recursive: true });
  }
});
