/**
 * Wildcard matching (src/storage/glob.ts): the semantics, a cross-check
 * against a plain recursive matcher, and the linear-time bound.
 */
import assert from "node:assert/strict";
import { compileGlob, MAX_PATTERN_LENGTH } from "../src/storage/glob.ts";

/**
 * The reference: the definition written as recursion over code points
 * (exponential in the number of stars, so only for small inputs).
 */
function refMatch(pattern: string, name: string): boolean {
  const p = [...pattern];
  const n = [...name];
  const go = (i: number, j: number): boolean => {
    if (i === p.length) return j === n.length;
    if (p[i] === "*") return go(i + 1, j) || (j < n.length && n[j] !== "/" && go(i, j + 1));
    if (j === n.length) return false;
    if (p[i] === "?") return n[j] !== "/" && go(i + 1, j + 1);
    return p[i] === n[j] && go(i + 1, j + 1);
  };
  return go(0, 0);
}

/** Small seeded PRNG (mulberry32), so a failure can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TABLE: [pattern: string, name: string, matches: boolean][] = [
  // empty pattern: only the empty name
  ["", "", true],
  ["", "a", false],
  ["", "/", false],
  // literals: exact, case-sensitive, no regex or character classes
  ["a.txt", "a.txt", true],
  ["a.txt", "aXtxt", false],
  ["a.txt", "A.txt", false],
  ["a.txt", "a.txt ", false],
  ["a.txt", "a.tx", false],
  ["[ab].txt", "a.txt", false],
  ["[ab].txt", "[ab].txt", true],
  ["a+b (1)^$|\\.txt", "a+b (1)^$|\\.txt", true],
  ["a+b", "aab", false],
  [".*", ".hidden", true],
  [".*", "hidden", false],
  // "*": any run except "/", including the empty one
  ["*", "", true],
  ["*", "abc", true],
  ["*", "a/b", false],
  ["*", "/", false],
  ["*.png", "x.png", true],
  ["*.png", ".png", true],
  ["*.png", "x.png.bak", false],
  ["*.png", "dir/x.png", false],
  ["a*", "a", true],
  ["a*", "ba", false],
  ["*a", "ba", true],
  ["*a", "ab", false],
  ["a*b*c", "abc", true],
  ["a*b*c", "aXXbYYc", true],
  ["a*b*c", "acb", false],
  ["a*b*c", "abcbc", true],
  ["a*a*a", "aa", false],
  ["a*a*a", "aaa", true],
  // "**" is "*": still never crosses "/"
  ["**", "abc", true],
  ["**", "", true],
  ["**", "a/b", false],
  ["a**b", "ab", true],
  ["a**b", "axyb", true],
  ["a**b", "a/b", false],
  ["**/*", "a/b", true],
  ["**/*", "a/b/c", false],
  // "?": exactly one character except "/"
  ["?", "a", true],
  ["?", "", false],
  ["?", "ab", false],
  ["?", "/", false],
  ["a?c", "abc", true],
  ["a?c", "ac", false],
  ["a?c", "a/c", false],
  ["??", "ab", true],
  ["?*", "", false],
  ["?*", "a", true],
  ["*?", "abc", true],
  // "/" matches itself
  ["/", "/", true],
  ["/", "a", false],
  ["a/*", "a/b", true],
  ["a/*", "a/", true],
  ["a/*", "a/b/c", false],
  ["*/*", "a/b", true],
  ["*/*", "ab", false],
  ["*/*.png", "photos/x.png", true],
  ["a/?", "a/b", true],
  ["a/?", "a/", false],
  // Unicode: characters are code points, not UTF-16 units
  ["?", "é", true],
  ["?", "🎉", true], // one code point, two UTF-16 units
  ["??", "🎉", false],
  ["?", "e\u0301", false], // e + combining accent: two code points
  ["??", "e\u0301", true],
  ["é", "e\u0301", false], // no normalization
  ["*🎉*", "fête 🎉 .txt", true],
  ["🎉?", "🎉🎊", true],
  ["日本語/*.txt", "日本語/ファイル.txt", true],
  ["日本語/?????.txt", "日本語/ファイル.txt", false],
  ["日本語/????.txt", "日本語/ファイル.txt", true],
  // past one 32-bit word of automaton state
  ["a".repeat(40), "a".repeat(40), true],
  ["a".repeat(40), "a".repeat(39), false],
  ["a".repeat(40), "a".repeat(41), false],
  ["x".repeat(31) + "*y", "x".repeat(31) + "zzzy", true],
  ["x".repeat(31) + "*y", "x".repeat(31) + "y", true],
  ["x".repeat(31) + "*y", "x".repeat(31) + "z/y", false],
  ["x".repeat(32) + "*y", "x".repeat(32) + "zzy", true],
  ["x".repeat(30) + "?*?y", "x".repeat(30) + "abcy", true],
  ["x".repeat(30) + "?*?y", "x".repeat(30) + "ay", false],
  ["a*".repeat(40), "a".repeat(40), true],
  ["a*".repeat(40), "a".repeat(39), false],
  ["a*".repeat(40), "ab".repeat(40), true],
  ["a*".repeat(40) + "b", "a".repeat(40), false],
  ["x".repeat(63) + "*y", "x".repeat(63) + "zy", true],
  ["x".repeat(63) + "*y", "x".repeat(63) + "z/y", false],
  // the live part of the state grows, dies back and grows again
  ["*" + "ab".repeat(20), "ab".repeat(19) + "x" + "ab".repeat(20), true],
  ["*" + "ab".repeat(20), "ab".repeat(19) + "x" + "ab".repeat(19), false],
  ["*" + "ab".repeat(20) + "/", "ab".repeat(20) + "/", true],
  ["*" + "ab".repeat(20) + "/", "ab".repeat(19) + "/", false],
  ["?".repeat(64), "q".repeat(64), true],
  ["?".repeat(64), "q".repeat(63), false],
];

Deno.test("glob: semantics table", () => {
  for (const [pattern, name, expected] of TABLE) {
    const g = compileGlob(pattern);
    assert.equal(g.test(name), expected, `${JSON.stringify(pattern)} vs ${JSON.stringify(name)}`);
    // the table itself agrees with the reference definition (exponential in
    // the stars: only where it finishes at once)
    if ([...pattern].filter((c) => c === "*").length <= 4) {
      assert.equal(refMatch(pattern, name), expected, `reference: ${pattern} vs ${name}`);
    }
    // a compiled pattern is reusable and keeps no state between names
    assert.equal(g.test(name), expected);
  }
});

Deno.test("glob: agrees with a reference matcher on random patterns and names", () => {
  const random = rng(0x5eed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)];
  const nameChars = ["a", "b", "/", "é", "🎉", "."] as const;
  const patChars = ["a", "b", "/", "é", "🎉", ".", "*", "?", "*", "?"] as const;
  const randomName = (max: number) =>
    Array.from({ length: Math.floor(random() * (max + 1)) }, () => pick(nameChars)).join("");
  let pairs = 0;
  let matched = 0;
  const check = (pattern: string, name: string) => {
    const got = compileGlob(pattern).test(name);
    assert.equal(
      got,
      refMatch(pattern, name),
      `${JSON.stringify(pattern)} vs ${JSON.stringify(name)}`,
    );
    pairs++;
    if (got) matched++;
  };
  // short patterns over a small alphabet: every construct against every other
  for (let i = 0; i < 3000; i++) {
    const pattern = Array.from({ length: Math.floor(random() * 8) }, () => pick(patChars)).join("");
    check(pattern, randomName(10));
  }
  // long patterns (the automaton spans several 32-bit words) with few stars,
  // against names made from the pattern (so many match) and then mutated
  for (let i = 0; i < 1500; i++) {
    const len = 20 + Math.floor(random() * 60);
    const p: string[] = [];
    let stars = 0;
    for (let k = 0; k < len; k++) {
      const r = random();
      if (r < 0.05 && stars < 3) {
        p.push("*");
        stars++;
      } else if (r < 0.15) p.push("?");
      else p.push(pick(nameChars));
    }
    const pattern = p.join("");
    const name: string[] = [];
    for (const t of p) {
      if (t === "*") name.push(randomName(3).replaceAll("/", "a"));
      else if (t === "?") name.push(pick(["a", "b", "é", "🎉"]));
      else name.push(t);
    }
    const mutated = [...name.join("")];
    if (random() < 0.5 && mutated.length > 0) {
      mutated[Math.floor(random() * mutated.length)] = pick(nameChars);
    }
    if (random() < 0.2) mutated.splice(Math.floor(random() * mutated.length), 1);
    check(pattern, mutated.join(""));
  }
  assert.equal(pairs, 4500);
  // both outcomes are well represented, so the comparison means something
  assert.ok(matched > 400 && matched < pairs - 400, `${matched} of ${pairs} matched`);
});

Deno.test("glob: no backtracking: hostile patterns stay fast on 10,000 long names", () => {
  const names: string[] = [];
  for (let i = 0; i < 10_000; i++) {
    // worst cases: all "a" (every star stays alive), and near misses
    names.push(i % 2 === 0 ? "a".repeat(255) : "a".repeat(254) + (i % 4 === 1 ? "b" : "c"));
  }
  for (
    const [pattern, expectMatches] of [
      ["*".repeat(20) + "b", 2500], // the names ending in "b"
      ["*a".repeat(500) + "b", 0], // needs 500 "a"s: never
      ["*a".repeat(100) + "b", 2500],
      ["?*".repeat(200) + "c", 2500],
    ] as const
  ) {
    const t0 = performance.now();
    const g = compileGlob(pattern);
    let n = 0;
    for (const name of names) if (g.test(name)) n++;
    const ms = performance.now() - t0;
    assert.equal(n, expectMatches, pattern.slice(0, 20));
    // generous for a loaded CI machine; a backtracking matcher takes far longer
    assert.ok(ms < 3000, `${pattern.slice(0, 12)}… took ${ms.toFixed(0)} ms for 10,000 names`);
  }
});

Deno.test("glob: patterns longer than MAX_PATTERN_LENGTH code points are refused", () => {
  assert.equal(MAX_PATTERN_LENGTH, 1024);
  assert.ok(compileGlob("a".repeat(MAX_PATTERN_LENGTH)).test("a".repeat(MAX_PATTERN_LENGTH)));
  // code points, not UTF-16 units
  assert.ok(compileGlob("🎉".repeat(MAX_PATTERN_LENGTH)).test("🎉".repeat(MAX_PATTERN_LENGTH)));
  for (
    const pattern of [
      "a".repeat(MAX_PATTERN_LENGTH + 1),
      "?".repeat(MAX_PATTERN_LENGTH + 1),
      "🎉".repeat(MAX_PATTERN_LENGTH + 1),
      "*a".repeat(MAX_PATTERN_LENGTH),
      "*".repeat(MAX_PATTERN_LENGTH + 1),
      "*".repeat(100_000),
    ]
  ) {
    assert.throws(() => compileGlob(pattern), (err) => {
      assert.ok(err instanceof RangeError, String(err));
      assert.equal(err.message, `pattern longer than ${MAX_PATTERN_LENGTH} characters`);
      return true;
    });
  }
});
