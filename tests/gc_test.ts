import assert, { equal as assertEquals } from "node:assert/strict";
import {
  GarbageMeter,
  GC_RECORDS,
  GC_RECORDS_FALLBACK,
  gcStats,
  type RecordBounds,
} from "../src/gc.ts";
import { RecordOpener, RecordSealer, RecordType } from "../src/record.ts";

/** A meter on a clock the test moves, counting its collections. */
function testMeter(maxBytes: number, bounds: RecordBounds) {
  const clock = { ms: 0 };
  const meter = new GarbageMeter(() => {}, maxBytes, bounds, () => clock.ms);
  return { meter, clock };
}

const BOUNDS: RecordBounds = { soft: 10, hard: 40, minMs: 250 };

Deno.test("GarbageMeter collects once the buffers reach their bound, then counts afresh", () => {
  const { meter } = testMeter(1000, BOUNDS);
  meter.buffers(600);
  assertEquals(meter.runs, 0);
  meter.buffers(400);
  assertEquals(meter.runs, 1);
  meter.buffers(999);
  assertEquals(meter.runs, 1);
  meter.buffers(1);
  assertEquals(meter.runs, 2);
});

Deno.test("GarbageMeter: past the soft bound, records collect once minMs have passed", () => {
  const { meter, clock } = testMeter(1 << 30, BOUNDS);
  clock.ms = 1000; // long after the meter was made
  for (let i = 0; i < BOUNDS.soft - 1; i++) meter.record();
  assertEquals(meter.runs, 0, "below the soft bound nothing runs");
  meter.record();
  assertEquals(meter.runs, 1, "soft bound reached, minMs passed");
  for (let i = 0; i < BOUNDS.soft; i++) meter.record();
  assertEquals(meter.runs, 1, "soft bound again, but no time has passed");
  clock.ms += BOUNDS.minMs;
  meter.record();
  assertEquals(meter.runs, 2, "the next record after minMs collects");
});

Deno.test("GarbageMeter: the hard bound collects however fast records come", () => {
  const { meter } = testMeter(1 << 30, BOUNDS); // the clock never moves
  for (let i = 0; i < BOUNDS.hard - 1; i++) meter.record();
  assertEquals(meter.runs, 0);
  meter.record();
  assertEquals(meter.runs, 1);
  for (let i = 0; i < 2 * BOUNDS.hard; i++) meter.record();
  assertEquals(meter.runs, 3);
  assertEquals(meter.noted, 3 * BOUNDS.hard);
});

Deno.test("GarbageMeter: one collection starts both counts afresh", () => {
  const { meter, clock } = testMeter(1000, BOUNDS);
  clock.ms = 1000;
  for (let i = 0; i < 9; i++) meter.record();
  meter.buffers(1000); // collects: the nine records' garbage is freed too
  assertEquals(meter.runs, 1);
  clock.ms += BOUNDS.minMs;
  meter.record(); // one record since the collection: below the soft bound
  assertEquals(meter.runs, 1);
  meter.buffers(999);
  assertEquals(meter.runs, 1);
  for (let i = 0; i < 9; i++) meter.record(); // ten records since: collects
  assertEquals(meter.runs, 2);
  meter.buffers(999); // the buffers count started afresh too
  assertEquals(meter.runs, 2);
  meter.buffers(1);
  assertEquals(meter.runs, 3);
});

Deno.test("GarbageMeter: a collection by the hard bound or by buffers restarts the time floor", () => {
  const { meter, clock } = testMeter(1000, BOUNDS);
  clock.ms = 1000;
  for (let i = 0; i < BOUNDS.hard; i++) meter.record(); // soft at 10 (time passed), then...
  const afterHard = meter.runs;
  clock.ms += BOUNDS.minMs - 1;
  meter.buffers(1000); // a buffer collection just before the floor would open
  assertEquals(meter.runs, afterHard + 1);
  clock.ms += BOUNDS.minMs - 1; // minMs since the hard collection, not since the buffer one
  for (let i = 0; i < BOUNDS.soft; i++) meter.record();
  assertEquals(meter.runs, afterHard + 1, "the buffer collection restarted the wait");
  clock.ms += 1;
  meter.record();
  assertEquals(meter.runs, afterHard + 2);
});

Deno.test("GarbageMeter refuses bounds with soft above hard", () => {
  assert.throws(() => testMeter(1000, { soft: 10, hard: 5, minMs: 1 }), RangeError);
});

Deno.test("the process's record bounds: soft below hard, a time floor, on both routes", () => {
  for (const b of [GC_RECORDS, GC_RECORDS_FALLBACK]) {
    assertEquals(b.soft < b.hard && b.minMs > 0, true);
  }
  assertEquals(GC_RECORDS_FALLBACK.minMs > GC_RECORDS.minMs, true, "the slow route waits longer");
});

Deno.test("the record layer reports every record sealed and opened to the process's meter", async () => {
  const keys = { enc: new Uint8Array(32).fill(1), mac: new Uint8Array(32).fill(2) };
  const sealer = await RecordSealer.create(keys, undefined, 2);
  const opener = await RecordOpener.create(keys, { version: 2 });
  const before = gcStats();
  const { bounds } = before; // GC_RECORDS, or the fallback's where gc is not exposed
  const n = bounds.hard;
  for (let i = 0; i < n; i++) {
    const frame = await sealer.seal(RecordType.DATA, 0, new Uint8Array(16));
    await opener.open(frame);
  }
  const after = gcStats();
  assertEquals(after.records - before.records, 2 * n, "each seal and each open noted once");
  // A sanity check (the exact count depends on the clock): 2n records make
  // at least the four the hard bound forces (version 2 leaves no keystream
  // buffers, so nothing else collects) and at most one per soft bound.
  const runs = after.collections - before.collections;
  assertEquals(
    runs >= (2 * n) / bounds.hard && runs <= (2 * n) / bounds.soft,
    true,
    `${runs} collections`,
  );
});
