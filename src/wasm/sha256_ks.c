// The record keystreams of protocol versions 1 and 2 in WebAssembly SIMD
// (src/keystream.ts). Built by `deno task build-wasm` (src/wasm/build.ts)
// with Debian `clang lld` into src/wasm/sha256_ks_wasm.ts; CI rebuilds it and
// fails if the bytes differ.
//
// Version 1 (ks_key, ks_gen), used for records up to SYNC_KEYSTREAM_MAX
// bytes (larger ones come from WebCrypto PBKDF2, off the main thread): block
// i (32 bytes, i = 1, 2, ...) for key K and the 15-byte salt
// S = "efx1 ks" || uint64_be(seq) is HMAC-SHA256(K, S || uint32_be(i)), the
// same bytes as PBKDF2-HMAC-SHA256(K, S, 1 iteration).
//
// Version 2 (ks2_key, ks2_gen), used for every record: block i (i = 0, 1,
// ...) for the salt S = "efx2 ks" || uint64_be(seq) is
// SHA-256(K || 0^32 || S || uint64_be(i)), an 87-byte message: the first
// 64-byte block (K zero-padded) is compressed once per key, so every block
// of keystream costs one compression instead of HMAC's two.
//
// How it is fast:
// - per-key work is cached: the HMAC key blocks (K ^ ipad, K ^ opad) for
//   version 1, the K || 0^32 block for version 2;
// - the message block's first words are the salt (the same for a whole
//   record): the rounds that see only them are computed once per call, and
//   the words that are always zero or constant (padding, length) are literal
//   constants, so the compiler folds them out of the rounds and the message
//   schedule; the same for the HMAC outer block's padding words;
// - SIMD: each v128 holds one SHA-256 word of 4 blocks, and NSETS independent
//   sets of 4 are interleaved.
//
// Memory interface (offsets from ks_io_ptr / ks_out_ptr):
//   io[0..32)  the 32-byte key (read by ks_key and ks2_key)
//   io[64..79) the 15-byte salt (read by ks_gen and ks2_gen)
//   out        ks_gen / ks2_gen write nblocks * 32 bytes (rounded up to whole
//              batches; the buffer has room for the rounding).
#include <stdint.h>
#include <wasm_simd128.h>

#ifndef NSETS
#define NSETS 2
#endif
#define LANES (4 * NSETS)
#define MAX_BLOCKS 32768u  // 1 MiB: the largest record body

typedef v128_t V;

static uint8_t io[128] __attribute__((aligned(16)));
static uint8_t out[(MAX_BLOCKS + LANES) * 32] __attribute__((aligned(16)));
static uint32_t inner_mid[8], outer_mid[8], v2_mid[8];

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static const uint32_t IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

uint32_t ks_io_ptr(void) { return (uint32_t)(uintptr_t)io; }
uint32_t ks_out_ptr(void) { return (uint32_t)(uintptr_t)out; }
uint32_t ks_max_blocks(void) { return MAX_BLOCKS; }

// ---- scalar SHA-256 (per key and per call set-up only) ----

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

// One scalar round on the state array x (a..h = x[0..7]).
static inline void round1(uint32_t x[8], uint32_t kw) {
  uint32_t e = x[4], a = x[0];
  uint32_t t1 = x[7] + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & x[5]) ^ (~e & x[6])) + kw;
  uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & x[1]) ^ (a & x[2]) ^ (x[1] & x[2]));
  for (int j = 7; j > 0; j--) x[j] = x[j - 1];
  x[4] += t1;
  x[0] = t1 + t2;
}

static uint32_t load_be(const uint8_t* p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void compress_scalar(uint32_t h[8], const uint8_t block[64]) {
  uint32_t w[64], x[8];
  for (int i = 0; i < 16; i++) w[i] = load_be(block + 4 * i);
  for (int i = 16; i < 64; i++) {
    uint32_t a = w[i - 15], b = w[i - 2];
    w[i] = w[i - 16] + (ror(a, 7) ^ ror(a, 18) ^ (a >> 3)) + w[i - 7] +
           (ror(b, 17) ^ ror(b, 19) ^ (b >> 10));
  }
  for (int j = 0; j < 8; j++) x[j] = h[j];
  for (int i = 0; i < 64; i++) round1(x, K[i] + w[i]);
  for (int j = 0; j < 8; j++) h[j] += x[j];
}

/** Takes the key at io[0..32) and caches the HMAC inner and outer midstates. */
void ks_key(void) {
  uint8_t block[64];
  for (int pass = 0; pass < 2; pass++) {
    uint8_t pad = pass == 0 ? 0x36 : 0x5c;
    for (int i = 0; i < 64; i++) block[i] = (uint8_t)((i < 32 ? io[i] : 0) ^ pad);
    uint32_t* h = pass == 0 ? inner_mid : outer_mid;
    for (int j = 0; j < 8; j++) h[j] = IV[j];
    compress_scalar(h, block);
  }
}

// ---- SIMD: NSETS x 4 blocks ----

static inline V add(V a, V b) { return wasm_i32x4_add(a, b); }
static inline V rotv(V x, int n) { return wasm_u32x4_shr(x, n) | wasm_i32x4_shl(x, 32 - n); }
static inline V bsig0(V x) { return rotv(x, 2) ^ rotv(x, 13) ^ rotv(x, 22); }
static inline V bsig1(V x) { return rotv(x, 6) ^ rotv(x, 11) ^ rotv(x, 25); }
static inline V ssig0(V x) { return rotv(x, 7) ^ rotv(x, 18) ^ wasm_u32x4_shr(x, 3); }
static inline V ssig1(V x) { return rotv(x, 17) ^ rotv(x, 19) ^ wasm_u32x4_shr(x, 10); }

// Rounds `from`..63 on s (state words rotated: in round i, a is s[(0 - i) & 7])
// with the 16-word circular schedule w. Fully unrolled, so constant message
// words fold into their rounds.
static inline __attribute__((always_inline)) void rounds(V s[NSETS][8], V w[NSETS][16],
                                                         const int from) {
#pragma clang loop unroll(full)
  for (int i = 0; i < 64; i++) {
    if (i < from) continue;
#pragma clang loop unroll(full)
    for (int k = 0; k < NSETS; k++) {
      if (i >= 16) {
        w[k][i & 15] = add(add(w[k][i & 15], ssig0(w[k][(i - 15) & 15])),
                           add(w[k][(i - 7) & 15], ssig1(w[k][(i - 2) & 15])));
      }
      V a = s[k][(0 - i) & 7], b = s[k][(1 - i) & 7], c = s[k][(2 - i) & 7];
      V e = s[k][(4 - i) & 7], f = s[k][(5 - i) & 7], g = s[k][(6 - i) & 7];
      V t1 = add(add(s[k][(7 - i) & 7], bsig1(e)),
                 add(wasm_v128_bitselect(f, g, e), add(wasm_i32x4_splat((int32_t)K[i]), w[k][i & 15])));
      V t2 = add(bsig0(a), wasm_v128_bitselect(c, b, a ^ b));
      s[k][(3 - i) & 7] = add(s[k][(3 - i) & 7], t1);
      s[k][(7 - i) & 7] = add(t1, t2);
    }
  }
}

static inline V bswap32(V x) {
  return wasm_i8x16_shuffle(x, x, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
}

// Stores words r0..r3 (each: one word of 4 blocks) as the big-endian bytes of
// blocks base..base+3, at byte offset `off` within each 32-byte block.
static inline void store4(uint8_t* base, int off, V r0, V r1, V r2, V r3) {
  V t0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7);
  V t2 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5), t3 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
  wasm_v128_store(base + 0 * 32 + off, bswap32(wasm_i64x2_shuffle(t0, t2, 0, 2)));
  wasm_v128_store(base + 1 * 32 + off, bswap32(wasm_i64x2_shuffle(t0, t2, 1, 3)));
  wasm_v128_store(base + 2 * 32 + off, bswap32(wasm_i64x2_shuffle(t1, t3, 0, 2)));
  wasm_v128_store(base + 3 * 32 + off, bswap32(wasm_i64x2_shuffle(t1, t3, 1, 3)));
}

/**
 * Writes keystream blocks first .. first + nblocks - 1 (HMAC counters; block
 * 1 is the first of a record) for the salt at io[64..79) to out[0 ..), after
 * ks_key. Returns the bytes written (nblocks * 32, rounded up to whole
 * batches), or 0 when nblocks exceeds the buffer.
 */
uint32_t ks_gen(uint32_t first, uint32_t nblocks) {
  if (nblocks > MAX_BLOCKS) return 0;
  // The inner block: salt (15 bytes) || uint32_be(i) || 0x80 || 0... || bit length 664.
  uint32_t w0 = load_be(io + 64), w1 = load_be(io + 68), w2 = load_be(io + 72);
  uint32_t w3salt = ((uint32_t)io[76] << 24) | ((uint32_t)io[77] << 16) | ((uint32_t)io[78] << 8);
  // Rounds 0-2 see only salt words: the same for every block.
  uint32_t pre[8];
  for (int j = 0; j < 8; j++) pre[j] = inner_mid[j];
  round1(pre, K[0] + w0);
  round1(pre, K[1] + w1);
  round1(pre, K[2] + w2);
  V im[8], om[8], pre_r[8];
  for (int j = 0; j < 8; j++) {
    im[j] = wasm_i32x4_splat((int32_t)inner_mid[j]);
    om[j] = wasm_i32x4_splat((int32_t)outer_mid[j]);
    pre_r[(j - 3) & 7] = wasm_i32x4_splat((int32_t)pre[j]);  // rotated for round 3
  }
  const V vw0 = wasm_i32x4_splat((int32_t)w0), vw1 = wasm_i32x4_splat((int32_t)w1);
  const V vw2 = wasm_i32x4_splat((int32_t)w2), vw3 = wasm_i32x4_splat((int32_t)w3salt);
  const V zero = wasm_i32x4_splat(0);
  uint8_t* dst = out;
  for (uint32_t done = 0; done < nblocks; done += LANES, dst += LANES * 32) {
    V s[NSETS][8], w[NSETS][16];
#pragma clang loop unroll(full)
    for (int k = 0; k < NSETS; k++) {
      uint32_t c0 = first + done + 4 * k;
      V ctr = wasm_i32x4_make((int32_t)c0, (int32_t)(c0 + 1), (int32_t)(c0 + 2), (int32_t)(c0 + 3));
      w[k][0] = vw0;
      w[k][1] = vw1;
      w[k][2] = vw2;
      w[k][3] = vw3 | wasm_u32x4_shr(ctr, 24);
      w[k][4] = wasm_i32x4_shl(ctr, 8) | wasm_i32x4_splat(0x80);
      for (int j = 5; j < 15; j++) w[k][j] = zero;
      w[k][15] = wasm_i32x4_splat((64 + 19) * 8);
      for (int j = 0; j < 8; j++) s[k][j] = pre_r[j];
    }
    rounds(s, w, 3);
    // The outer block: inner digest (32 bytes) || 0x80 || 0... || bit length 768.
#pragma clang loop unroll(full)
    for (int k = 0; k < NSETS; k++) {
      for (int j = 0; j < 8; j++) w[k][j] = add(s[k][j], im[j]);
      w[k][8] = wasm_i32x4_splat((int32_t)0x80000000u);
      for (int j = 9; j < 15; j++) w[k][j] = zero;
      w[k][15] = wasm_i32x4_splat((64 + 32) * 8);
      for (int j = 0; j < 8; j++) s[k][j] = om[j];
    }
    rounds(s, w, 0);
#pragma clang loop unroll(full)
    for (int k = 0; k < NSETS; k++) {
      V h[8];
      for (int j = 0; j < 8; j++) h[j] = add(s[k][j], om[j]);
      store4(dst + k * 128, 0, h[0], h[1], h[2], h[3]);
      store4(dst + k * 128, 16, h[4], h[5], h[6], h[7]);
    }
  }
  return ((nblocks + LANES - 1) / LANES) * LANES * 32;
}

/** Takes the key at io[0..32) and caches SHA-256's state after K || 0^32 (version 2). */
void ks2_key(void) {
  uint8_t block[64];
  for (int i = 0; i < 64; i++) block[i] = i < 32 ? io[i] : 0;
  for (int j = 0; j < 8; j++) v2_mid[j] = IV[j];
  compress_scalar(v2_mid, block);
}

/**
 * Writes version 2 keystream blocks first .. first + nblocks - 1 (block 0 is
 * the first of a record) for the salt at io[64..79) to out[0 ..), after
 * ks2_key. Returns the bytes written (nblocks * 32, rounded up to whole
 * batches), or 0 when nblocks exceeds the buffer or the counters would pass
 * 2^32 (the high word of the 64-bit counter is always zero here).
 */
uint32_t ks2_gen(uint32_t first, uint32_t nblocks) {
  if (nblocks > MAX_BLOCKS || first > 0xffffffffu - MAX_BLOCKS - LANES) return 0;
  // The second block: S (15 bytes) || uint64_be(i) || 0x80 || 0... || bit length 696.
  uint32_t w0 = load_be(io + 64), w1 = load_be(io + 68), w2 = load_be(io + 72);
  uint32_t w3 = ((uint32_t)io[76] << 24) | ((uint32_t)io[77] << 16) | ((uint32_t)io[78] << 8);
  // Rounds 0-3 see only salt words (and the counter's zero high byte).
  uint32_t pre[8];
  for (int j = 0; j < 8; j++) pre[j] = v2_mid[j];
  round1(pre, K[0] + w0);
  round1(pre, K[1] + w1);
  round1(pre, K[2] + w2);
  round1(pre, K[3] + w3);
  V mid[8], pre_r[8];
  for (int j = 0; j < 8; j++) {
    mid[j] = wasm_i32x4_splat((int32_t)v2_mid[j]);
    pre_r[(j - 4) & 7] = wasm_i32x4_splat((int32_t)pre[j]);  // rotated for round 4
  }
  const V vw0 = wasm_i32x4_splat((int32_t)w0), vw1 = wasm_i32x4_splat((int32_t)w1);
  const V vw2 = wasm_i32x4_splat((int32_t)w2), vw3 = wasm_i32x4_splat((int32_t)w3);
  const V zero = wasm_i32x4_splat(0);
  uint8_t* dst = out;
  for (uint32_t done = 0; done < nblocks; done += LANES, dst += LANES * 32) {
    V s[NSETS][8], w[NSETS][16];
#pragma clang loop unroll(full)
    for (int k = 0; k < NSETS; k++) {
      uint32_t c0 = first + done + 4 * k;
      V ctr = wasm_i32x4_make((int32_t)c0, (int32_t)(c0 + 1), (int32_t)(c0 + 2), (int32_t)(c0 + 3));
      w[k][0] = vw0;
      w[k][1] = vw1;
      w[k][2] = vw2;
      w[k][3] = vw3;
      w[k][4] = wasm_u32x4_shr(ctr, 24);
      w[k][5] = wasm_i32x4_shl(ctr, 8) | wasm_i32x4_splat(0x80);
      for (int j = 6; j < 15; j++) w[k][j] = zero;
      w[k][15] = wasm_i32x4_splat((64 + 23) * 8);
      for (int j = 0; j < 8; j++) s[k][j] = pre_r[j];
    }
    rounds(s, w, 4);
#pragma clang loop unroll(full)
    for (int k = 0; k < NSETS; k++) {
      V h[8];
      for (int j = 0; j < 8; j++) h[j] = add(s[k][j], mid[j]);
      store4(dst + k * 128, 0, h[0], h[1], h[2], h[3]);
      store4(dst + k * 128, 16, h[4], h[5], h[6], h[7]);
    }
  }
  return ((nblocks + LANES - 1) / LANES) * LANES * 32;
}
