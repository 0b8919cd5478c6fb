/**
 * Progress display and transfer summaries.
 *
 * {@linkcode Progress} draws one self-overwriting status line on stderr
 * (`\r` + line + clear to end of line) with the file name, a bar, bytes done
 * out of the total, percent, rate and ETA, throttled to one redraw per
 * 100 ms. {@linkcode summaryLine} gives the one line printed after each file.
 *
 * Sizes are in binary units (KiB, MiB, ...); rates are in decimal units
 * (MB/s), as scp users expect.
 *
 * @example
 * ```ts
 * const p = new Progress({ name: "big.iso", total: size, enabled: progressWanted(quiet) });
 * for await (const chunk of source) p.add(chunk.length);
 * p.done();
 * console.error(summaryLine({ name: "big.iso", bytes: size, ms, sha256: hex, verb: "sent" }));
 * ```
 * @module
 */
import { sanitize } from "./bytes.ts";

const BIN_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
const DEC_UNITS = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s", "PB/s"];

/**
 * Formats `n` scaled by `base` with the unit list: a whole number in the first
 * unit, one decimal in the next two, two decimals above.
 */
function scaled(n: number, base: number, units: string[]): string {
  if (!Number.isFinite(n) || n < 0) n = 0;
  let i = 0;
  let v = n;
  while (v >= base && i < units.length - 1) {
    v /= base;
    i++;
  }
  for (;;) {
    const text = i === 0 ? String(Math.round(v)) : v.toFixed(i >= 3 ? 2 : 1);
    // Rounding may reach the next unit (1023.96 KiB -> "1024.0"): promote it.
    if (Number(text) < base || i === units.length - 1) return `${text} ${units[i]}`;
    v /= base;
    i++;
  }
}

/**
 * A byte count in binary units: `"0 B"`, `"1023 B"`, `"1.0 KiB"`,
 * `"12.3 MiB"`, `"1.00 GiB"` (two decimals from GiB up). Negative or
 * non-finite counts show as `"0 B"`.
 *
 * @example
 * ```ts
 * formatBytes(12.3 * 1024 * 1024); // "12.3 MiB"
 * ```
 */
export function formatBytes(n: number): string {
  return scaled(n, 1024, BIN_UNITS);
}

/**
 * A transfer rate in decimal units: `"512 B/s"`, `"12.3 kB/s"`,
 * `"123.4 MB/s"`, `"1.23 GB/s"`. A non-finite or negative rate (unknown)
 * shows as `"-- B/s"`.
 *
 * @example
 * ```ts
 * formatRate(123.4e6); // "123.4 MB/s"
 * ```
 */
export function formatRate(bytesPerSec: number): string {
  if (!Number.isFinite(bytesPerSec) || bytesPerSec < 0) return "-- B/s";
  return scaled(bytesPerSec, 1000, DEC_UNITS);
}

/**
 * A duration: `"0.42s"` and `"9.87s"` below 10 s, `"12.3s"` below a minute,
 * then `"1m05s"`, then `"1h02m"`. Negative or non-finite values show as
 * `"0.00s"`.
 *
 * @example
 * ```ts
 * formatDuration(65_000); // "1m05s"
 * ```
 */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) ms = 0;
  const s = ms / 1000;
  if (Number(s.toFixed(2)) < 10) return `${s.toFixed(2)}s`;
  if (Number(s.toFixed(1)) < 60) return `${s.toFixed(1)}s`;
  const totalSec = Math.round(s);
  if (totalSec < 3600) {
    return `${Math.floor(totalSec / 60)}m${String(totalSec % 60).padStart(2, "0")}s`;
  }
  const totalMin = Math.floor(totalSec / 60);
  return `${Math.floor(totalMin / 60)}h${String(totalMin % 60).padStart(2, "0")}m`;
}

/** Clock-style ETA: `"0:07"`, `"12:34"`, `"1:02:03"`; unknown is `"--:--"`. */
function formatEta(sec: number): string {
  if (!Number.isFinite(sec) || sec < 0) return "--:--";
  if (sec >= 100 * 3600) return ">99h";
  const t = Math.ceil(sec);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const ss = String(t % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/**
 * Columns one code point takes on a terminal: 0 for combining marks,
 * zero-width joiners and variation selectors, 2 for East Asian wide and
 * fullwidth characters (CJK, Hangul, kana, fullwidth forms) and emoji shown
 * as pictures, 1 otherwise.
 */
export function charWidth(ch: string): number {
  const cp = ch.codePointAt(0) ?? 0;
  if (ZERO_WIDTH.test(ch)) return 0;
  if (EMOJI.test(ch)) return 2;
  for (const [lo, hi] of WIDE) if (cp >= lo && cp <= hi) return 2;
  return 1;
}

const ZERO_WIDTH = /^[\p{Mn}\p{Me}\u200b-\u200f\u2060\ufe00-\ufe0f\ufeff]$/u;
const EMOJI = /^\p{Emoji_Presentation}$/u;
/** East Asian Wide (W) and Fullwidth (F) ranges, simplified. */
const WIDE: ReadonlyArray<readonly [number, number]> = [
  [0x1100, 0x115f],
  [0x2e80, 0x303e],
  [0x3041, 0x33ff],
  [0x3400, 0x4dbf],
  [0x4e00, 0x9fff],
  [0xa000, 0xa4cf],
  [0xa960, 0xa97f],
  [0xac00, 0xd7a3],
  [0xf900, 0xfaff],
  [0xfe10, 0xfe19],
  [0xfe30, 0xfe6f],
  [0xff00, 0xff60],
  [0xffe0, 0xffe6],
  [0x1f300, 0x1f64f],
  [0x1f900, 0x1f9ff],
  [0x20000, 0x3fffd],
];

/** Display width of `text` in terminal columns (see {@linkcode charWidth}). */
export function widthOf(text: string): number {
  let w = 0;
  for (const ch of text) w += charWidth(ch);
  return w;
}

/** The longest start of `chars` that fits in `width` columns. */
function headFitting(chars: string[], width: number): string {
  let w = 0;
  let i = 0;
  while (i < chars.length && w + charWidth(chars[i]) <= width) w += charWidth(chars[i++]);
  return chars.slice(0, i).join("");
}

/**
 * Shortens `text` to at most `width` columns with a "…" in the middle
 * (keeps the extension); wide characters count as two columns.
 */
export function truncateMiddle(text: string, width: number): string {
  if (widthOf(text) <= width) return text;
  if (width <= 0) return "";
  if (width === 1) return "…";
  const chars = Array.from(text);
  const tailRoom = Math.floor((width - 1) / 2);
  const tail = Array.from(headFitting([...chars].reverse(), tailRoom)).reverse().join("");
  const head = headFitting(chars, width - 1 - widthOf(tail));
  return head + "…" + tail;
}

/** Options of {@linkcode Progress}. */
export interface ProgressOptions {
  /** What is being transferred, usually the file name (control characters are shown as `?`). */
  name: string;
  /** Expected total size in bytes (0 for an empty file). */
  total: number;
  /** Draw anything at all (see {@linkcode progressWanted}). */
  enabled: boolean;
  /** Where to draw (default: stderr). */
  out?: { writeSync(p: Uint8Array): number };
  /**
   * Terminal width: a number, or a function asked at every redraw (default:
   * the console's width at every redraw, so a resized window is followed;
   * 80 when unknown).
   */
  columns?: number | (() => number);
  /** Monotonic clock in milliseconds (default: `performance.now`). */
  now?: () => number;
}

/** Minimum interval between two redraws, in milliseconds. */
const REDRAW_MS = 100;
/** The rate shown is measured over about this many recent milliseconds. */
const RATE_WINDOW_MS = 5000;
/** Smallest bar worth drawing (brackets included). */
const MIN_BAR = 12;
/** Largest bar drawn (brackets included). */
const MAX_BAR = 42;
/** A name is not squeezed below this many characters to make room for a bar. */
const MIN_NAME = 16;

/**
 * A single-line progress display for one transfer.
 *
 * @example
 * ```ts
 * const p = new Progress({ name: "data.bin", total: 10_000_000, enabled: true });
 * p.add(65536); // draws: data.bin  [#-------]  64.0 KiB / 9.5 MiB   0%  ...  ETA 0:12
 * p.done();     // final line and newline
 * ```
 */
export class Progress {
  readonly #name: string;
  readonly #total: number;
  readonly #enabled: boolean;
  readonly #out: { writeSync(p: Uint8Array): number };
  readonly #columns: () => number;
  readonly #now: () => number;
  readonly #start: number;
  readonly #encoder = new TextEncoder();
  /** (time, bytes) taken at each redraw, for the recent rate. */
  #samples: Array<[number, number]>;
  #bytes = 0;
  #lastDraw = -Infinity;
  #drewComplete = false;
  #finished = false;

  /** Starts the clock; nothing is drawn until the first {@linkcode Progress.add}. */
  constructor(opts: ProgressOptions) {
    this.#name = sanitize(opts.name);
    this.#total = Number.isFinite(opts.total) && opts.total > 0 ? opts.total : 0;
    this.#enabled = opts.enabled;
    this.#out = opts.out ?? Deno.stderr;
    this.#now = opts.now ?? (() => performance.now());
    const cols = opts.columns ?? consoleColumns;
    this.#columns = typeof cols === "number" ? () => cols : cols;
    this.#start = this.#now();
    this.#samples = [[this.#start, 0]];
  }

  /**
   * Adds transferred bytes; redraws at most every 100 ms (and at 100%), a
   * single line with "\r" and clearing to end of line: name (truncated to
   * fit), bytes/total, percent, rate, ETA. Does nothing when !enabled.
   */
  add(n: number): void {
    if (Number.isFinite(n) && n > 0) this.#bytes += n;
    if (!this.#enabled || this.#finished) return;
    const t = this.#now();
    const complete = this.#bytes >= this.#total;
    if (t - this.#lastDraw >= REDRAW_MS || (complete && !this.#drewComplete)) {
      this.#draw(t, false);
    }
  }

  /**
   * Ends the display of a transfer that did not finish (interrupted or
   * failed): the last drawn line stays as it was and gets its newline, with
   * no final "in N s" redraw. Later calls (and `done`) do nothing.
   */
  abandon(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#enabled && this.#lastDraw > -Infinity) this.#write("\n");
  }

  /** Final redraw and newline (when enabled). Later calls do nothing. */
  done(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (!this.#enabled) return;
    this.#draw(this.#now(), true);
    this.#write("\n");
  }

  #write(text: string): void {
    const bytes = this.#encoder.encode(text);
    try {
      for (let off = 0; off < bytes.length;) off += this.#out.writeSync(bytes.subarray(off));
    } catch {
      // A broken terminal must never break the transfer.
    }
  }

  #draw(t: number, final: boolean): void {
    this.#lastDraw = t;
    if (this.#bytes >= this.#total) this.#drewComplete = true;
    this.#samples.push([t, this.#bytes]);
    // Keep one sample at or before the start of the window.
    while (this.#samples.length > 2 && this.#samples[1][0] <= t - RATE_WINDOW_MS) {
      this.#samples.shift();
    }
    this.#write("\r" + this.#line(t, final) + "\x1b[K");
  }

  /** Builds the status line for the current state, fitted to the terminal width. */
  #line(t: number, final: boolean): string {
    const bytes = this.#bytes;
    const total = this.#total;
    const fraction = total === 0 ? 1 : Math.min(1, bytes / total);
    const percent = `${Math.floor(fraction * 100)}%`.padStart(4);

    let rate: number;
    let tail: string;
    if (final) {
      const elapsed = t - this.#start;
      rate = elapsed > 0 ? bytes * 1000 / elapsed : NaN;
      tail = `in ${formatDuration(elapsed)}`;
    } else {
      const [t0, b0] = this.#samples[0];
      rate = t > t0 ? (bytes - b0) * 1000 / (t - t0) : NaN;
      const remaining = Math.max(0, total - bytes);
      tail = "ETA " + formatEta(remaining === 0 ? 0 : rate > 0 ? remaining / rate : NaN);
    }
    const rateText = (Number.isFinite(rate) ? formatRate(rate) : "-- B/s").padStart(10);
    const totalText = formatBytes(total);
    // Pad to the total's width so the line does not jitter as the count grows.
    const amount = `${formatBytes(bytes).padStart(totalText.length)} / ${totalText}`;

    // Most complete first; fall back to shorter forms on narrow terminals.
    const variants = [
      `${amount}  ${percent}  ${rateText}  ${tail.padEnd(9)}`,
      `${percent}  ${rateText}  ${tail}`,
      `${percent}  ${tail}`,
      percent.trim(),
    ];
    const columns = this.#columns();
    // Never touch the last column (a write there wraps on some terminals).
    const width = Math.max(1, Math.floor(Number.isFinite(columns) ? columns : 80) - 1);
    const name = this.#name;
    const nameWidth = widthOf(name);

    for (const [i, stats] of variants.entries()) {
      const room = width - widthOf(stats) - 2; // two spaces between name/bar and stats
      // Rather drop statistics than squeeze the name to a stub (except as a last resort).
      if (room < Math.min(nameWidth, i < variants.length - 1 ? MIN_NAME : 4)) continue;
      // Full name with a bar, or a shortened name with a bar, or the name alone.
      let shown = name;
      let barWidth = 0;
      if (nameWidth + 2 + MIN_BAR <= room) {
        barWidth = Math.min(MAX_BAR, room - nameWidth - 2);
      } else if (room - 2 - MIN_BAR >= MIN_NAME) {
        shown = truncateMiddle(name, room - 2 - MIN_BAR);
        barWidth = MIN_BAR;
      } else {
        shown = truncateMiddle(name, room);
      }
      const bar = barWidth > 0 ? "  " + makeBar(fraction, barWidth) : "";
      return `${shown}${bar}  ${stats}`.trimEnd();
    }
    return truncateMiddle(percent.trim(), width);
  }
}

/** `[#####-----]`, `width` characters including the brackets. */
function makeBar(fraction: number, width: number): string {
  const inner = width - 2;
  const filled = Math.min(inner, Math.floor(fraction * inner));
  return "[" + "#".repeat(filled) + "-".repeat(inner - filled) + "]";
}

/** Width of the terminal on stderr, or 80 when unknown. */
function consoleColumns(): number {
  try {
    const { columns } = Deno.consoleSize();
    return columns > 0 ? columns : 80;
  } catch {
    return 80;
  }
}

/**
 * One summary line: `"<name>: <bytes> in <time> (<rate>), sha256 <hex>"`,
 * with `verb` (e.g. `"sent"`) before the size when given. Control characters
 * in the name are shown as `?`. With `shortHash`, only the first 12 hex
 * digits of the hash are shown (followed by "…"); with `columns`, a long
 * name is shortened in the middle so that the line fits in that many
 * columns (wide characters count as two).
 *
 * @example
 * ```ts
 * summaryLine({ name: "a.txt", bytes: 2048, ms: 420, sha256: "ab12…", verb: "sent" });
 * // "a.txt: sent 2.0 KiB in 0.42s (4.9 kB/s), sha256 ab12…"
 * ```
 */
export function summaryLine(
  s: {
    name: string;
    bytes: number;
    ms: number;
    sha256: string;
    verb?: string;
    shortHash?: boolean;
    columns?: number;
  },
): string {
  const rate = s.ms > 0 ? s.bytes * 1000 / s.ms : s.bytes > 0 ? Infinity : 0;
  const verb = s.verb ? `${s.verb} ` : "";
  const hash = s.shortHash ? `${s.sha256.slice(0, 12)}…` : s.sha256;
  const rest = `: ${verb}${formatBytes(s.bytes)} in ${formatDuration(s.ms)} ` +
    `(${formatRate(rate)}), sha256 ${hash}`;
  let name = sanitize(s.name);
  if (s.columns !== undefined) name = truncateMiddle(name, Math.max(8, s.columns - widthOf(rest)));
  return name + rest;
}

/**
 * The line after several files: `"total: 3 files, 12.0 MiB in 1.20s (10.5 MB/s)"`.
 */
export function totalLine(files: number, bytes: number, ms: number): string {
  const rate = ms > 0 ? bytes * 1000 / ms : bytes > 0 ? Infinity : 0;
  return `total: ${files} files, ${formatBytes(bytes)} in ${formatDuration(ms)} ` +
    `(${formatRate(rate)})`;
}

/** true when stderr is a TTY (`Deno.stderr.isTerminal()`) and `quiet` is not set. */
export function progressWanted(quiet: boolean): boolean {
  if (quiet) return false;
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}
