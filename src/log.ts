/**
 * The server's log: one line per event on stderr, with an ISO timestamp.
 * `quiet` keeps only errors; `verbose` adds detail lines (hashes, handshakes).
 *
 * @module
 */

/** How much the server says. */
export type LogLevel = "quiet" | "normal" | "verbose";

/** A line-oriented logger. */
export interface Logger {
  /** Always shown: failures worth an operator's attention. */
  error(line: string): void;
  /** Normal events: connections, transfers. */
  info(line: string): void;
  /** Detail shown with --verbose. */
  debug(line: string): void;
}

/** A logger writing to stderr (or `sink`, for tests) at `level`. */
export function makeLogger(level: LogLevel, sink: (line: string) => void = writeErr): Logger {
  const emit = (line: string) => sink(`${new Date().toISOString()} ${line}`);
  return {
    error: emit,
    info: level === "quiet" ? () => {} : emit,
    debug: level === "verbose" ? emit : () => {},
  };
}

const encoder = new TextEncoder();
function writeErr(line: string): void {
  try {
    Deno.stderr.writeSync(encoder.encode(line + "\n"));
  } catch { /* stderr gone */ }
}

/** Quotes a client-supplied name for a log line (no control characters). */
export function q(name: string): string {
  return JSON.stringify(name);
}
