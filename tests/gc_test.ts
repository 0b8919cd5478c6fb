import { equal as assertEquals } from "node:assert/strict";
import { GarbageMeter, GC_INTERVAL_RECORDS } from "../src/gc.ts";

Deno.test("GarbageMeter collects once the buffers reach their bound, then counts afresh", () => {
  let runs = 0;
  const meter = new GarbageMeter(() => runs++, 1000, 10);
  meter.buffers(600);
  assertEquals(runs, 0);
  meter.buffers(400);
  assertEquals(runs, 1);
  meter.buffers(999);
  assertEquals(runs, 1);
  meter.buffers(1);
  assertEquals(runs, 2);
});

Deno.test("GarbageMeter collects every maxRecords records", () => {
  let runs = 0;
  const meter = new GarbageMeter(() => runs++, 1 << 30, GC_INTERVAL_RECORDS);
  for (let i = 0; i < GC_INTERVAL_RECORDS - 1; i++) meter.record();
  assertEquals(runs, 0);
  meter.record();
  assertEquals(runs, 1);
  for (let i = 0; i < 2 * GC_INTERVAL_RECORDS; i++) meter.record();
  assertEquals(runs, 3);
});

Deno.test("GarbageMeter: one collection starts both counts afresh", () => {
  let runs = 0;
  const meter = new GarbageMeter(() => runs++, 1000, 10);
  for (let i = 0; i < 9; i++) meter.record();
  meter.buffers(1000); // collects: the nine records' garbage is freed too
  assertEquals(runs, 1);
  meter.record();
  assertEquals(runs, 1);
  meter.buffers(999);
  assertEquals(runs, 1);
});
