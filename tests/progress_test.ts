import assert from "node:assert/strict";
import {
  formatBytes,
  formatDuration,
  formatRate,
  Progress,
  type ProgressOptions,
  progressWanted,
  summaryLine,
  totalLine,
  truncateMiddle,
  widthOf,
} from "../src/progress.ts";

const KiB = 1024;
/** True when `s` contains a C0 control character or DEL. */
const hasControl = (s: string) => Array.from(s).some((c) => c.charCodeAt(0) < 0x20 || c === "\x7f");
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

Deno.test("formatBytes: binary units with 0/1/2 decimals", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(1), "1 B");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(1024), "1.0 KiB");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(12.3 * MiB), "12.3 MiB");
  assert.equal(formatBytes(GiB), "1.00 GiB");
  assert.equal(formatBytes(1.5 * 1024 * GiB), "1.50 TiB");
  // Rounding that reaches the next unit is promoted.
  assert.equal(formatBytes(1023.6), "1.0 KiB");
  assert.equal(formatBytes(MiB - 1), "1.0 MiB");
  assert.equal(formatBytes(GiB - 1), "1.00 GiB");
  // Nonsense input does not produce nonsense output.
  assert.equal(formatBytes(-5), "0 B");
  assert.equal(formatBytes(NaN), "0 B");
  assert.equal(formatBytes(Infinity), "0 B");
});

Deno.test("formatRate: decimal units per second", () => {
  assert.equal(formatRate(0), "0 B/s");
  assert.equal(formatRate(999), "999 B/s");
  assert.equal(formatRate(999.6), "1.0 kB/s");
  assert.equal(formatRate(12_345), "12.3 kB/s");
  assert.equal(formatRate(123.4e6), "123.4 MB/s");
  assert.equal(formatRate(1.234e9), "1.23 GB/s");
  assert.equal(formatRate(NaN), "-- B/s");
  assert.equal(formatRate(Infinity), "-- B/s");
  assert.equal(formatRate(-1), "-- B/s");
});

Deno.test("formatDuration: seconds, m:ss, h:mm", () => {
  assert.equal(formatDuration(0), "0.00s");
  assert.equal(formatDuration(420), "0.42s");
  assert.equal(formatDuration(9_876), "9.88s");
  assert.equal(formatDuration(9_999), "10.0s");
  assert.equal(formatDuration(12_340), "12.3s");
  assert.equal(formatDuration(59_960), "1m00s");
  assert.equal(formatDuration(65_000), "1m05s");
  assert.equal(formatDuration(3_599_000), "59m59s");
  assert.equal(formatDuration(3_600_000), "1h00m");
  assert.equal(formatDuration(3_720_000), "1h02m");
  assert.equal(formatDuration(-3), "0.00s");
  assert.equal(formatDuration(NaN), "0.00s");
});

Deno.test("summaryLine: format, verb, zero time, control characters", () => {
  const sha = "ab".repeat(32);
  assert.equal(
    summaryLine({ name: "a.txt", bytes: 2048, ms: 420, sha256: sha }),
    `a.txt: 2.0 KiB in 0.42s (4.9 kB/s), sha256 ${sha}`,
  );
  assert.equal(
    summaryLine({ name: "big.iso", bytes: 100 * MiB, ms: 65_000, sha256: sha, verb: "sent" }),
    `big.iso: sent 100.0 MiB in 1m05s (1.6 MB/s), sha256 ${sha}`,
  );
  assert.equal(
    summaryLine({ name: "empty", bytes: 0, ms: 0, sha256: sha, verb: "received" }),
    `empty: received 0 B in 0.00s (0 B/s), sha256 ${sha}`,
  );
  assert.equal(
    summaryLine({ name: "x", bytes: 10, ms: 0, sha256: sha }),
    `x: 10 B in 0.00s (-- B/s), sha256 ${sha}`,
  );
  const evil = summaryLine({ name: "a\x1b]0;pwned\x07\nb", bytes: 1, ms: 1, sha256: sha });
  assert.ok(!hasControl(evil), JSON.stringify(evil));
  assert.ok(evil.startsWith("a?]0;pwned??b: "));
});

Deno.test("progressWanted: quiet always wins", () => {
  assert.equal(progressWanted(true), false);
  assert.equal(progressWanted(false), Deno.stderr.isTerminal());
});

/** A Progress with a fake terminal and a fake clock. */
function harness(opts: Partial<ProgressOptions> = {}) {
  const chunks: string[] = [];
  const dec = new TextDecoder();
  const clock = { t: 1000 };
  const p = new Progress({
    name: "file.bin",
    total: 100 * MiB,
    enabled: true,
    columns: 100,
    out: {
      writeSync(b: Uint8Array) {
        chunks.push(dec.decode(b));
        return b.length;
      },
    },
    now: () => clock.t,
    ...opts,
  });
  /** The visible text of each redraw. */
  const frames = () =>
    chunks.filter((c) => c !== "\n").map((c) => {
      assert.ok(c.startsWith("\r"), JSON.stringify(c));
      assert.ok(c.endsWith("\x1b[K"), JSON.stringify(c));
      return c.slice(1, -3);
    });
  return { p, chunks, clock, frames };
}

Deno.test("Progress: disabled writes nothing at all", () => {
  const h = harness({ enabled: false });
  h.p.add(10 * MiB);
  h.clock.t += 500;
  h.p.add(90 * MiB);
  h.p.done();
  assert.deepEqual(h.chunks, []);
});

Deno.test("Progress: redraws at most every 100 ms", () => {
  const h = harness();
  h.p.add(MiB); // first add draws
  assert.equal(h.frames().length, 1);
  h.clock.t += 50;
  h.p.add(MiB);
  h.clock.t += 49;
  h.p.add(MiB);
  assert.equal(h.frames().length, 1, "throttled");
  h.clock.t += 1; // 100 ms after the last draw
  h.p.add(MiB);
  assert.equal(h.frames().length, 2);
  assert.match(h.frames()[1], /4\.0 MiB \/ 100\.0 MiB/);
  for (let i = 0; i < 1000; i++) h.p.add(1); // many small adds, no time passes
  assert.equal(h.frames().length, 2);
});

Deno.test("Progress: percent, bytes, rate and ETA", () => {
  const h = harness();
  h.clock.t += 2000;
  h.p.add(25 * MiB); // 25 MiB in 2 s
  const f = h.frames()[0];
  assert.match(f, /^file\.bin {2}\[#+-+\] {2}/);
  assert.match(f, /25\.0 MiB \/ 100\.0 MiB/);
  assert.match(f, / 25% /);
  assert.match(f, /13\.1 MB\/s/); // 26214400 B / 2 s
  assert.match(f, /ETA 0:06$/); // 75 MiB left at 12.5 MiB/s
  assert.ok(f.length <= 99, "fits in columns - 1");
  // The bar is a quarter full.
  const bar = /\[(#*)(-*)\]/.exec(f)!;
  const inner = bar[1].length + bar[2].length;
  assert.equal(bar[1].length, Math.floor(inner / 4));
});

Deno.test("Progress: 100% is drawn at once, then done() prints the total time", () => {
  const h = harness();
  h.p.add(50 * MiB);
  h.clock.t += 10; // well within 100 ms
  h.p.add(50 * MiB);
  assert.equal(h.frames().length, 2, "completion is not throttled");
  assert.match(h.frames()[1], /100%/);
  assert.match(h.frames()[1], /ETA 0:00/);
  h.p.add(0); // no redraw storms at 100%
  assert.equal(h.frames().length, 2);
  h.clock.t += 990;
  h.p.done();
  assert.equal(h.chunks.at(-1), "\n");
  const last = h.frames().at(-1)!;
  assert.ok(last.includes("100.0 MiB / 100.0 MiB  100%"), last);
  assert.match(last, /104\.9 MB\/s/); // 100 MiB in 1 s
  assert.match(last, /in 1\.00s$/);
  assert.match(last, /\[#+\]/, "bar full");
  h.p.done(); // idempotent
  h.p.add(5);
  assert.equal(h.chunks.filter((c) => c === "\n").length, 1);
  assert.equal(h.frames().length, 3);
});

Deno.test("Progress: unknown rate shows placeholders, not NaN", () => {
  const h = harness();
  h.p.add(MiB); // no time has passed
  const f = h.frames()[0];
  assert.match(f, /-- B\/s/);
  assert.match(f, /ETA --:--/);
  assert.ok(!/NaN|Infinity/.test(f), f);
});

Deno.test("Progress: total 0 (empty file) is 100% and never divides by zero", () => {
  const h = harness({ total: 0, name: "empty.txt" });
  h.p.add(0);
  h.p.done();
  const frames = h.frames();
  assert.ok(frames.length >= 1);
  for (const f of frames) {
    assert.ok(!/NaN|Infinity/.test(f), f);
    assert.ok(f.includes("0 B / 0 B  100%"), f);
  }
  assert.equal(h.chunks.at(-1), "\n");
});

Deno.test("Progress: done() without add still draws one line", () => {
  const h = harness({ total: 5 });
  h.clock.t += 250;
  h.p.done();
  assert.equal(h.frames().length, 1);
  assert.match(h.frames()[0], /0 B \/ 5 B {4}0%/);
});

Deno.test("Progress: more bytes than expected clamp at 100%", () => {
  const h = harness({ total: 10 });
  h.clock.t += 100;
  h.p.add(25);
  assert.ok(h.frames()[0].includes("25 B / 10 B  100%"), h.frames()[0]);
  assert.match(h.frames()[0], /ETA 0:00/);
});

Deno.test("Progress: the rate follows the recent window, not the whole history", () => {
  const h = harness({ total: 1000 * MiB });
  // 10 s at 1 MiB/s, then 10 s at 10 MiB/s (one add per second).
  for (let i = 0; i < 10; i++) {
    h.clock.t += 1000;
    h.p.add(MiB);
  }
  for (let i = 0; i < 10; i++) {
    h.clock.t += 1000;
    h.p.add(10 * MiB);
  }
  assert.match(h.frames().at(-1)!, / 10\.5 MB\/s/); // 10 MiB/s, not the 5.5 MiB/s average
});

Deno.test("Progress: every line fits narrow terminals; long names are shortened", () => {
  const name = "a-very-long-file-name-that-goes-on-and-on-forever.tar.gz";
  for (const columns of [200, 120, 100, 80, 60, 40, 30, 20, 10, 5, 2, 1, 0]) {
    const h = harness({ name, columns, total: 3 * GiB });
    h.clock.t += 1000;
    h.p.add(GiB);
    h.clock.t += 1000;
    h.p.done();
    for (const f of h.frames()) {
      assert.ok(
        Array.from(f).length <= Math.max(1, columns - 1),
        `${columns} cols: ${JSON.stringify(f)}`,
      );
    }
    const f = h.frames()[0];
    if (columns >= 20) assert.match(f, / 33%/, `${columns}: ${f}`);
    if (columns >= 200) assert.ok(f.startsWith(name + "  ["), `${columns}: ${f}`);
    if (columns >= 40 && columns < 100) assert.match(f, /…/, `${columns}: ${f}`);
    if (columns >= 20) assert.match(f, /\.gz/, `extension kept at ${columns}: ${f}`);
  }
});

Deno.test("Progress: control characters in the name are neutralized", () => {
  const h = harness({ name: "evil\x1b[2J\rname\n" });
  h.p.add(1);
  const f = h.frames()[0];
  assert.ok(f.startsWith("evil?[2J?name?  "), JSON.stringify(f));
  assert.ok(!hasControl(f));
});

Deno.test("Progress: a failing output never throws into the transfer", () => {
  const p = new Progress({
    name: "x",
    total: 10,
    enabled: true,
    out: {
      writeSync() {
        throw new Deno.errors.BrokenPipe("gone");
      },
    },
    now: () => 0,
  });
  p.add(5);
  p.done();
});

Deno.test("widthOf and truncateMiddle: wide (CJK, emoji) characters take two columns", () => {
  assert.equal(widthOf("abc"), 3);
  assert.equal(widthOf("日本語"), 6);
  assert.equal(widthOf("🎉"), 2);
  assert.equal(widthOf("한국어"), 6);
  assert.equal(widthOf("ｆｕｌｌ"), 8, "fullwidth forms");
  assert.equal(widthOf("e\u0301"), 1, "a combining accent takes no column");
  const name = "日本語のファイル名と絵文字🎉.txt"; // 14 wide + 4 narrow
  assert.equal(widthOf(name), 32);
  for (let w = 1; w <= 32; w++) {
    const t = truncateMiddle(name, w);
    assert.ok(widthOf(t) <= w, `${w}: ${t} is ${widthOf(t)} columns`);
    if (w >= 10) assert.ok(t.endsWith(".txt"), `${w}: ${t} keeps the extension`);
  }
  assert.equal(truncateMiddle(name, 32), name);
  assert.notEqual(truncateMiddle(name, 31), name);
});

Deno.test("Progress: the width is asked again at every redraw (a resized terminal is followed)", () => {
  let columns = 120;
  const h = harness({ name: "日本語のファイル名.iso", columns: () => columns, total: 100 * MiB });
  for (const c of [120, 60, 30, 200, 12, 80]) {
    columns = c;
    h.clock.t += 200;
    h.p.add(MiB);
    const f = h.frames().at(-1)!;
    assert.ok(widthOf(f) <= c - 1, `${c} columns: ${JSON.stringify(f)} is ${widthOf(f)} wide`);
    if (c >= 120) assert.match(f, /\[#*-+\]/, `${c}: a bar`);
  }
  assert.equal(h.frames().length, 6);
});

Deno.test("Progress: abandon() keeps the last line, adds only its newline", () => {
  const h = harness();
  h.p.add(MiB);
  const drawn = h.chunks.length;
  h.p.abandon();
  assert.deepEqual(h.chunks.slice(drawn), ["\n"]);
  h.p.done();
  assert.equal(h.chunks.length, drawn + 1, "done() after abandon() draws nothing");
  const quiet = harness();
  quiet.p.abandon();
  assert.deepEqual(quiet.chunks, [], "nothing drawn, nothing to end");
});

Deno.test("summaryLine: short hash and a width to fit; totalLine", () => {
  const sha = "0123456789abcdef".repeat(4);
  const line = summaryLine({
    name: "x".repeat(100) + ".bin",
    bytes: 5 * MiB,
    ms: 1000,
    sha256: sha,
    verb: "uploaded",
    shortHash: true,
    columns: 80,
  });
  assert.ok(widthOf(line) <= 80, line);
  assert.match(
    line,
    /^x+…x*\.bin: uploaded 5\.0 MiB in 1\.00s \(5\.2 MB\/s\), sha256 0123456789ab…$/,
  );
  assert.equal(
    summaryLine({ name: "a", bytes: 1, ms: 1, sha256: sha, shortHash: true, columns: 80 }),
    "a: 1 B in 0.00s (1.0 kB/s), sha256 0123456789ab…",
  );
  assert.equal(totalLine(3, 12 * MiB, 1200), "total: 3 files, 12.0 MiB in 1.20s (10.5 MB/s)");
});
