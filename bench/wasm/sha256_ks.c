// A measurement, not part of efx: the protocol v1 keystream module
// (src/wasm/sha256_ks.c) plus a prefix-keyed counter keystream, a candidate
// for a future protocol version, built and measured by bench/keystream_wasm.ts.
#include "../../src/wasm/sha256_ks.c"

static uint32_t prefix_mid[8];

/** Takes the key at io[0..32) and caches SHA-256's state after K zero-padded to 64 bytes. */
void ks_prefix_key(void) {
  uint8_t block[64];
  for (int i = 0; i < 64; i++) block[i] = i < 32 ? io[i] : 0;
  for (int j = 0; j < 8; j++) prefix_mid[j] = IV[j];
  compress_scalar(prefix_mid, block);
}

/**
 * The prefix-keyed counter keystream (NOT protocol v1; measured for a
 * possible future version): block i is SHA-256(K zero-padded to 64 bytes ||
 * salt (15) || uint64_be(i)), one compression per 32 bytes after the cached
 * key block. Counters stay below 2^32 here (the high word of i is zero).
 */
uint32_t ks_prefix_gen(uint32_t first, uint32_t nblocks) {
  if (nblocks > MAX_BLOCKS) return 0;
  // salt || 0,0,0,0 || uint32_be(i) || 0x80 || 0... || bit length (64 + 23) * 8.
  uint32_t w0 = load_be(io + 64), w1 = load_be(io + 68), w2 = load_be(io + 72);
  uint32_t w3 = ((uint32_t)io[76] << 24) | ((uint32_t)io[77] << 16) | ((uint32_t)io[78] << 8);
  uint32_t pre[8];
  for (int j = 0; j < 8; j++) pre[j] = prefix_mid[j];
  round1(pre, K[0] + w0);
  round1(pre, K[1] + w1);
  round1(pre, K[2] + w2);
  round1(pre, K[3] + w3);
  V pm[8], pre_r[8];
  for (int j = 0; j < 8; j++) {
    pm[j] = wasm_i32x4_splat((int32_t)prefix_mid[j]);
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
      for (int j = 0; j < 8; j++) h[j] = add(s[k][j], pm[j]);
      store4(dst + k * 128, 0, h[0], h[1], h[2], h[3]);
      store4(dst + k * 128, 16, h[4], h[5], h[6], h[7]);
    }
  }
  return ((nblocks + LANES - 1) / LANES) * LANES * 32;
}
