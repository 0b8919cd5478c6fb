import { equal as assertEquals } from "node:assert/strict";
import { GarbageMeter, GC_RECORDS, gcStats, type RecordBounds } from "../src/gc.ts";
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

Deno.test("the process's record bounds: soft below hard, a time floor", () => {
  assertEquals(GC_RECORDS.soft < GC_RECORDS.hard, true);
  assertEquals(GC_RECORDS.minMs > 0, true);
});

Deno.test("the record layer reports every record sealed and opened to the process's meter", async () => {
  const keys = { enc: new Uint8Array(32).fill(1), mac: new Uint8Array(32).fill(2) };
  const sealer = await RecordSealer.create(keys, undefined, 2);
  const opener = await RecordOpener.create(keys, { version: 2 });
  const before = gcStats();
  const n = GC_RECORDS.hard;
  for (let i = 0; i < n; i++) {
    const frame = await sealer.seal(RecordType.DATA, 0, new Uint8Array(16));
    await opener.open(frame);
  }
  const after = gcStats();
  assertEquals(after.records - before.records, 2 * n, "each seal and each open noted once");
  // 2n records: at least the two the hard bound forces (version 2 leaves no
  // keystream buffers, so nothing else collects), at most one per soft bound.
  const runs = after.collections - before.collections;
  assertEquals(runs >= 2 && runs <= (2 * n) / GC_RECORDS.soft, true, `${runs} collections`);
});
