import { equal as assertEquals } from "node:assert/strict";
import { GarbageMeter, GC_INTERVAL_RECORDS, gcCollections } from "../src/gc.ts";
import { RecordOpener, RecordSealer, RecordType } from "../src/record.ts";

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
  for (let i = 0; i < 9; i++) meter.record(); // ten records since: collects
  assertEquals(runs, 2);
  meter.buffers(999); // the buffers count started afresh too
  assertEquals(runs, 2);
  meter.buffers(1);
  assertEquals(runs, 3);
});

Deno.test("the record layer reports every record sealed and opened to the process's meter", async () => {
  const keys = { enc: new Uint8Array(32).fill(1), mac: new Uint8Array(32).fill(2) };
  const sealer = await RecordSealer.create(keys, undefined, 2);
  const opener = await RecordOpener.create(keys, { version: 2 });
  const before = gcCollections();
  // Version 2 leaves no keystream buffers, so only the record count can
  // collect: 2 x GC_INTERVAL_RECORDS records (each sealed and opened) make
  // exactly two collections, whatever the count stood at before.
  for (let i = 0; i < GC_INTERVAL_RECORDS; i++) {
    const frame = await sealer.seal(RecordType.DATA, 0, new Uint8Array(16));
    await opener.open(frame);
  }
  assertEquals(gcCollections() - before, 2);
});
