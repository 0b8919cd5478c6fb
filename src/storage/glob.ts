/**
 * Wildcard patterns (`*` and `?`) matched in linear time.
 *
 * A pattern is compiled once into a bit-parallel automaton: one bit per
 * pattern position, advanced once per character of the name. Matching a
 * name of n characters against a pattern of m tokens costs O(n · ⌈m/32⌉)
 * word operations, whatever the pattern: there is no backtracking, so no
 * pattern can make the server spend more than that (a backtracking regular
 * expression took seconds for `**********b`). Patterns are bounded by
 * {@linkcode MAX_PATTERN_LENGTH}.
 *
 * Semantics: `*` matches any run of characters except "/", `?` one
 * character except "/", everything else (including "/") matches itself.
 * Characters are Unicode code points.
 *
 * @example
 * ```ts
 * const g = compileGlob("*.png");
 * g.test("a.png"); // true
 * g.test("dir/a.png"); // false: "*" does not match "/"
 * ```
 * @module
 */

/** Longest pattern accepted, in code points. */
export const MAX_PATTERN_LENGTH = 1024;

/** A compiled pattern. */
export interface Glob {
  /** Whether the whole of `name` matches the pattern. */
  test(name: string): boolean;
}

const STAR = -1;
const ANY = -2;

/**
 * Compiles `pattern`; throws a RangeError when it is longer than
 * {@linkcode MAX_PATTERN_LENGTH} code points.
 */
export function compileGlob(pattern: string): Glob {
  const tokens: number[] = [];
  let length = 0; // code points of the pattern as sent, "**" counting 2
  for (const ch of pattern) {
    if (++length > MAX_PATTERN_LENGTH) {
      throw new RangeError(`pattern longer than ${MAX_PATTERN_LENGTH} characters`);
    }
    const t = ch === "*" ? STAR : ch === "?" ? ANY : ch.codePointAt(0)!;
    if (t === STAR && tokens[tokens.length - 1] === STAR) continue; // "**" is "*"
    tokens.push(t);
  }
  const m = tokens.length;
  // Bit i of the state: the first i tokens match what was read so far.
  const words = (m >> 5) + 1;
  const star = new Uint32Array(words);
  const any = new Uint32Array(words);
  const literal = new Map<number, Uint32Array>();
  for (let i = 0; i < m; i++) {
    const t = tokens[i];
    const set = t === STAR ? star : t === ANY ? any : literal.get(t) ??
      literal.set(t, new Uint32Array(words)).get(t)!;
    set[i >> 5] |= 1 << (i & 31);
  }
  const acceptWord = m >> 5;
  const acceptBit = 1 << (m & 31);
  const none = new Uint32Array(words);
  const slash = "/".codePointAt(0)!;

  // state |= (state & star) << 1: a "*" may match nothing (stars never repeat).
  const closeOverStars = (s: Uint32Array) => {
    let carry = 0;
    for (let w = 0; w < words; w++) {
      const v = s[w] & star[w];
      const next = v >>> 31;
      s[w] |= (v << 1) | carry;
      carry = next;
    }
  };

  return {
    test(name: string): boolean {
      let cur = new Uint32Array(words);
      let nxt = new Uint32Array(words);
      cur[0] = 1;
      closeOverStars(cur);
      // Words at or above `curTop` of `cur` (`nxtTop` of `nxt`) are zero:
      // only the live part of the state is advanced (one word more, for the carry).
      let curTop = 1;
      let nxtTop = 0;
      for (const ch of name) {
        const c = ch.codePointAt(0)!;
        const lit = literal.get(c) ?? none;
        const isSlash = c === slash;
        const end = curTop < words ? curTop + 1 : words;
        let carry = 0;
        let starCarry = 0;
        let top = 0;
        for (let w = 0; w < end; w++) {
          const adv = cur[w] & (lit[w] | (isSlash ? 0 : any[w]));
          const stay = isSlash ? 0 : cur[w] & star[w];
          let v = (adv << 1) | carry | stay;
          carry = adv >>> 31;
          // closeOverStars, fused: a "*" may match nothing (stars never repeat).
          const s = v & star[w];
          v = (v | (s << 1) | starCarry) >>> 0;
          starCarry = s >>> 31;
          nxt[w] = v;
          if (v !== 0) top = w + 1;
        }
        for (let w = end; w < nxtTop; w++) nxt[w] = 0;
        if (top === 0) return false;
        nxtTop = curTop;
        curTop = top;
        [cur, nxt] = [nxt, cur];
      }
      return (cur[acceptWord] & acceptBit) !== 0;
    },
  };
}
