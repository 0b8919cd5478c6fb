/**
 * `deno task mutate`: the curated mutation run.
 *
 * For every entry of tests/mutation/mutations.ts, in a scratch copy of the
 * repository (the files `git ls-files` lists), the runner applies the
 * mutation, runs only the entry's test files (`deno test` with the test
 * task's permissions, `--fail-fast`, the entry's `--filter`), and restores
 * the file. A mutation is CAUGHT when those tests fail and SURVIVES when
 * they pass; the run fails if any survives, if an entry is stale (its
 * `find` does not occur exactly once), if a mutant does not type-check, or
 * if the listed tests fail on the unmutated code (baseline).
 *
 * Usage: deno task mutate [--list] [--only ID[,ID...]] [--jobs N] [--no-baseline] [--type-check]
 *
 * Tests run with `--no-check` (type checking a mutant costs ~5 s, more than
 * most of the tests it runs; `deno task check` type-checks the real code in
 * CI); a mutant that does not even parse is reported as INVALID.
 * `--type-check` type-checks every mutant too (a type error is then INVALID).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Edit, type Mutation, MUTATIONS } from "./mutations.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
/** The permissions of `deno task test`. */
const TEST_PERMISSIONS = [
  "--allow-net=127.0.0.1,localhost,0.0.0.0",
  "--allow-read",
  "--allow-write",
  "--allow-run",
  "--allow-env",
  "--allow-sys",
];
/** A mutant whose tests take longer than this is killed and counted as caught (hang). */
const TIMEOUT_MS = 240_000;

const USAGE =
  "usage: deno task mutate [--list] [--only ID[,ID...]] [--jobs N] [--no-baseline] [--type-check]";

/** Set by --type-check. */
let typeCheck = false;

interface Outcome {
  m: Mutation;
  status: "caught" | "SURVIVED" | "INVALID";
  detail: string;
  ms: number;
}

function fail(msg: string): never {
  console.error(`mutate: ${msg}`);
  Deno.exit(1);
}

function count(text: string, find: string): number {
  let n = 0;
  for (let i = text.indexOf(find); i >= 0; i = text.indexOf(find, i + 1)) n++;
  return n;
}

/** Every edit of `m`, checked against `files` (path -> text): each `find` exactly once. */
function checkEdits(m: Mutation, read: (file: string) => string): string[] {
  const problems: string[] = [];
  const edits: Edit[] = [m, ...(m.also ?? [])];
  for (const e of edits) {
    let text: string;
    try {
      text = read(e.file);
    } catch {
      problems.push(`${m.id}: ${e.file} does not exist`);
      continue;
    }
    const n = count(text, e.find);
    if (n !== 1) {
      problems.push(`${m.id}: ${e.file}: find occurs ${n} times (must be once): ${e.find}`);
    }
    if (e.find === e.replace) problems.push(`${m.id}: find and replace are the same`);
  }
  for (const t of m.tests) {
    try {
      Deno.statSync(join(ROOT, t));
    } catch {
      problems.push(`${m.id}: test file ${t} does not exist`);
    }
  }
  if (m.tests.length === 0) problems.push(`${m.id}: no test files`);
  return problems;
}

/** Copies the files git knows (as they are in the work tree) into a fresh temp folder. */
async function scratchCopy(files: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "efx-mutate-" });
  for (const f of files) {
    const src = join(ROOT, f);
    let st: Deno.FileInfo;
    try {
      st = await Deno.lstat(src);
    } catch {
      continue; // deleted in the work tree
    }
    const dst = join(dir, f);
    await Deno.mkdir(dirname(dst), { recursive: true });
    if (st.isSymlink) await Deno.symlink(await Deno.readLink(src), dst);
    else if (st.isFile) {
      await Deno.copyFile(src, dst);
      if (st.mode !== null) await Deno.chmod(dst, st.mode & 0o777);
    }
  }
  return dir;
}

async function gitFiles(): Promise<string[]> {
  const out = await new Deno.Command("git", {
    args: ["ls-files", "-z"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) fail(`git ls-files failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  return new TextDecoder().decode(out.stdout).split("\0").filter((f) => f !== "");
}

/** Runs `deno test` on `tests` in `dir`; returns whether it passed and its output. */
async function runTests(
  dir: string,
  tests: string[],
  filter: string | undefined,
): Promise<{ ok: boolean; timedOut: boolean; out: string; ms: number }> {
  const t0 = performance.now();
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      "test",
      ...(typeCheck ? [] : ["--no-check"]),
      ...TEST_PERMISSIONS,
      "--fail-fast",
      ...(filter ? ["--filter", filter] : []),
      ...tests,
    ],
    cwd: dir,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      proc.kill("SIGKILL");
    } catch { /* ended */ }
  }, TIMEOUT_MS);
  const out = await proc.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return {
    ok: out.success && !timedOut,
    timedOut,
    out: dec.decode(out.stdout) + dec.decode(out.stderr),
    ms: performance.now() - t0,
  };
}

/** The first failing test's name from deno test's output, shortened. */
function firstFailure(out: string): string {
  const failures = out.split(/^\s*FAILURES\s*$/m)[1] ?? "";
  const line = failures.split("\n").map((l) => l.trim()).find((l) => l.includes("=>"));
  const m = line?.match(/^(.*) => \.?\/?(\S+?):\d+:\d+$/);
  if (m) return `${m[2]}: ${shorten(m[1], 70)}`;
  const err = out.match(/^error: .*/m)?.[0];
  return shorten(err ?? "tests failed", 90);
}

function shorten(s: string, n: number): string {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

function apply(text: string, e: Edit): string {
  const i = text.indexOf(e.find);
  return text.slice(0, i) + e.replace + text.slice(i + e.find.length);
}

/** Applies `m` in `dir`, runs its tests, restores every file. */
async function runMutation(dir: string, m: Mutation): Promise<Outcome> {
  const originals = new Map<string, string>();
  for (const e of [m, ...(m.also ?? [])]) {
    const path = join(dir, e.file);
    if (!originals.has(path)) originals.set(path, await Deno.readTextFile(path));
  }
  const mutated = new Map(originals);
  for (const e of [m, ...(m.also ?? [])]) {
    const path = join(dir, e.file);
    mutated.set(path, apply(mutated.get(path)!, e));
  }
  try {
    for (const [path, text] of mutated) await Deno.writeTextFile(path, text);
    const r = await runTests(dir, m.tests, m.filter);
    if (r.ok) {
      return { m, status: "SURVIVED", detail: "all listed tests passed", ms: r.ms };
    }
    if (/Type checking failed|TS\d{4} \[ERROR\]/.test(r.out)) {
      const why = r.out.match(/TS\d{4} \[ERROR\]: .*/)?.[0] ?? "type error";
      return { m, status: "INVALID", detail: `mutant does not type-check: ${why}`, ms: r.ms };
    }
    // Only a module that fails to load is invalid: a SyntaxError thrown while a
    // test runs (JSON.parse of bytes the mutant garbled) is a catch.
    if (/source code could not be parsed/.test(r.out)) {
      const why = r.out.match(/.*could not be parsed.*/)?.[0] ?? "syntax error";
      return { m, status: "INVALID", detail: `mutant does not parse: ${why.trim()}`, ms: r.ms };
    }
    if (r.timedOut) {
      return { m, status: "caught", detail: `timeout after ${TIMEOUT_MS / 1000} s`, ms: r.ms };
    }
    return { m, status: "caught", detail: firstFailure(r.out), ms: r.ms };
  } finally {
    for (const [path, text] of originals) await Deno.writeTextFile(path, text);
  }
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c])).join("  ").trimEnd()).join(
    "\n",
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      list: { type: "boolean" },
      only: { type: "string", multiple: true },
      jobs: { type: "string" },
      "no-baseline": { type: "boolean" },
      "type-check": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  typeCheck = values["type-check"] === true;
  const ids = new Set<string>();
  for (const m of MUTATIONS) {
    if (ids.has(m.id)) fail(`duplicate mutation id ${m.id}`);
    ids.add(m.id);
  }
  const problems = MUTATIONS.flatMap((m) =>
    checkEdits(m, (f) => Deno.readTextFileSync(join(ROOT, f)))
  );
  if (problems.length) {
    fail(`stale or malformed entries in tests/mutation/mutations.ts:\n  ${problems.join("\n  ")}`);
  }
  if (values.list) {
    console.log(table([
      ["id", "file", "tests", "why"],
      ...MUTATIONS.map((m) => [
        m.id,
        m.file,
        m.tests.map((t) => t.replace(/^tests\//, "")).join(",") +
        (m.filter ? ` (--filter ${m.filter})` : ""),
        m.why,
      ]),
    ]));
    return;
  }
  let chosen = MUTATIONS;
  if (values.only?.length) {
    const want = values.only.flatMap((s) => s.split(",")).map((s) => s.trim()).filter(Boolean);
    for (const id of want) if (!ids.has(id)) fail(`no mutation with id ${id} (see --list)`);
    chosen = MUTATIONS.filter((m) => want.includes(m.id));
  }
  const jobs = Math.max(1, Math.min(8, Number(values.jobs ?? 2) || 2));
  const t0 = performance.now();
  const files = await gitFiles();
  const dirs = await Promise.all(
    Array.from({ length: Math.min(jobs, chosen.length) }, () => scratchCopy(files)),
  );
  try {
    // Baseline: the listed tests must pass on the unmutated copy, or a "catch" means nothing.
    if (!values["no-baseline"]) {
      const groups = new Map<string, { tests: string[]; filter?: string }>();
      for (const m of chosen) {
        groups.set(JSON.stringify([m.tests, m.filter ?? null]), {
          tests: m.tests,
          filter: m.filter,
        });
      }
      const queue = [...groups.values()];
      const broken: string[] = [];
      await Promise.all(dirs.map(async (dir) => {
        for (let g = queue.shift(); g; g = queue.shift()) {
          const r = await runTests(dir, g.tests, g.filter);
          if (!r.ok) broken.push(`${g.tests.join(" ")} ${g.filter ?? ""}: ${firstFailure(r.out)}`);
        }
      }));
      console.log(
        `baseline: ${groups.size} test selection(s) on the unmutated code in ${
          ((performance.now() - t0) / 1000).toFixed(0)
        } s`,
      );
      if (broken.length) fail(`baseline failed (fix the tests first):\n  ${broken.join("\n  ")}`);
    }
    const queue = [...chosen];
    const outcomes: Outcome[] = [];
    await Promise.all(dirs.map(async (dir) => {
      for (let m = queue.shift(); m; m = queue.shift()) {
        const o = await runMutation(dir, m);
        outcomes.push(o);
        console.log(
          `${o.status === "caught" ? "caught  " : o.status.padEnd(8)} ${m.id} (${
            (o.ms / 1000).toFixed(1)
          } s)${o.status === "caught" ? "" : ": " + o.detail}`,
        );
      }
    }));
    outcomes.sort((a, b) => chosen.indexOf(a.m) - chosen.indexOf(b.m));
    console.log("");
    console.log(table([
      ["mutation", "file", "result"],
      ...outcomes.map((o) => [
        o.m.id,
        o.m.file,
        o.status === "caught" ? `caught by ${o.detail}` : `${o.status}: ${o.detail}`,
      ]),
    ]));
    const bad = outcomes.filter((o) => o.status !== "caught");
    console.log(
      `\n${outcomes.length - bad.length}/${outcomes.length} mutations caught in ${
        ((performance.now() - t0) / 1000).toFixed(0)
      } s (${dirs.length} at a time)`,
    );
    if (bad.length) {
      fail(`${bad.length} mutation(s) not caught: ${bad.map((o) => o.m.id).join(", ")}`);
    }
  } finally {
    for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
