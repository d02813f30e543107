/* The arm64 NEON dot kernels: 128-bit integer products with sdot (vdotq_s32) where the target has
 * the dot-product extension (ARMv8.2 dotprod: Graviton2 and later), else widening multiplies
 * (vmull_s8) whose int16 products are summed pairwise into int32 (vpadalq_s16). sdot multiplies
 * signed by signed bytes, so nothing is shifted: the sums are the plain reference's, exactly. */
#ifndef SRM_DOTS_NEON_H
#define SRM_DOTS_NEON_H

#include <arm_neon.h>

#if defined(__ARM_FEATURE_DOTPROD)
#define SRM_DOTS "neon_dotprod"
#else
#define SRM_DOTS "neon"
#endif
#define SRM_QUERY_SHIFT 0 /* signed x signed products: the query's dots with the keys are exact */

#include "dots_plain.h"

/* acc + the four-byte dots of a and b in each 32-bit lane: sdot, or its exact equivalent (every
 * int8 product fits int16; each pair of them is added in int32). Without sdot, the lanes hold
 * pair sums instead of quad sums: only their total over the register is the same, which is all
 * dot_block reads. */
static inline __attribute__((always_inline)) int32x4_t neon_dot_total(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

/* Four bytes at p (one int32 lane's worth of inputs) in every lane. */
static inline __attribute__((always_inline)) int8x16_t neon_broadcast4(const int8_t *p) {
    int32_t four;
    memcpy(&four, p, sizeof four);
    return vreinterpretq_s8_s32(vdupq_n_s32(four));
}

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void dot_block(const int8_t *w, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                                                            int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    int32x4_t sum[SRM_BLOCK_N][SRM_MAX_ROWS];
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) sum[i][r] = vdupq_n_s32(0);
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K) {
        for (int q = 0; q < 4; q++) {
            int8x16_t wv[SRM_BLOCK_N];
            for (int i = 0; i < SRM_BLOCK_N; i++) wv[i] = vld1q_s8(w + kb * SRM_BLOCK_N + i * 64 + q * 16);
            for (int64_t r = 0; r < rows; r++) {
                const int8x16_t x = vld1q_s8(quant + r * stride + kb + q * 16);
                for (int i = 0; i < SRM_BLOCK_N; i++) sum[i][r] = neon_dot_total(sum[i][r], wv[i], x);
            }
        }
    }
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) acc[i][r] = vaddvq_s32(sum[i][r]);
}

/* What dot_block's sum for output channel n holds beyond the dot: nothing here. */
static inline __attribute__((always_inline)) int32_t dot_block_excess(const srm_linear *lin, int64_t n) {
    (void)lin;
    (void)n;
    return 0;
}

/* out[r][j] = sum over groups g of scale[j, g] * (weight[j, g] . quant[r, g]) for one block of 16
 * output channels of 4-bit weights (see srm_linear), j a vector lane. The weights are multiplied
 * as stored (weight + 8, unsigned), and 8 * the group's input sum is taken off. A 16-byte run of
 * the packed weights holds four channels, four inputs each: register q of a row's four holds
 * channels 4q..4q+3. */
static inline __attribute__((always_inline)) void dot_block4(const uint8_t *w, const uint16_t *group_scale, const int8_t *quant,
                                                             const int32_t *quant_sum, int64_t stride, int64_t sum_stride, int64_t rows, int64_t k,
                                                             float out[SRM_MAX_ROWS][SRM_BLOCK_N4]) {
    const int64_t groups = k / SRM_BLOCK_K;
    const uint8x16_t low = vdupq_n_u8(0x0F);
    float32x4_t sum[SRM_MAX_ROWS][4];
    for (int64_t r = 0; r < rows; r++)
        for (int q = 0; q < 4; q++) sum[r][q] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2;
#if defined(__ARM_FEATURE_DOTPROD)
        int32x4_t dot[SRM_MAX_ROWS][4];
        for (int64_t r = 0; r < rows; r++) {
            dot[r][0] = vdupq_n_s32(-8 * quant_sum[r * sum_stride + g]);
            dot[r][1] = dot[r][2] = dot[r][3] = dot[r][0];
        }
        for (int c = 0; c < 8; c++) {
            int8x16_t lo[4], hi[4];
            for (int q = 0; q < 4; q++) {
                const uint8x16_t packed = vld1q_u8(wg + c * 64 + q * 16);
                lo[q] = vreinterpretq_s8_u8(vandq_u8(packed, low));
                hi[q] = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
            }
            for (int64_t r = 0; r < rows; r++) {
                const int8_t *x = quant + r * stride + g * SRM_BLOCK_K + 8 * c;
                const int8x16_t x_lo = neon_broadcast4(x), x_hi = neon_broadcast4(x + 4);
                for (int q = 0; q < 4; q++) dot[r][q] = vdotq_s32(vdotq_s32(dot[r][q], lo[q], x_lo), hi[q], x_hi);
            }
        }
#else
        /* int16 lanes: weight <= 15 times |input| <= 128, sixteen products a lane (two a chunk
         * c), at most 30720: exact. Register q, half h holds channels 4q + 2h, 4q + 2h + 1. */
        int16x8_t pairs[SRM_MAX_ROWS][4][2];
        for (int64_t r = 0; r < rows; r++)
            for (int q = 0; q < 4; q++) pairs[r][q][0] = pairs[r][q][1] = vdupq_n_s16(0);
        for (int c = 0; c < 8; c++) {
            int8x16_t lo[4], hi[4];
            for (int q = 0; q < 4; q++) {
                const uint8x16_t packed = vld1q_u8(wg + c * 64 + q * 16);
                lo[q] = vreinterpretq_s8_u8(vandq_u8(packed, low));
                hi[q] = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
            }
            for (int64_t r = 0; r < rows; r++) {
                const int8_t *x = quant + r * stride + g * SRM_BLOCK_K + 8 * c;
                const int8x8_t x_lo = vget_low_s8(neon_broadcast4(x)), x_hi = vget_low_s8(neon_broadcast4(x + 4));
                for (int q = 0; q < 4; q++) {
                    pairs[r][q][0] = vmlal_s8(pairs[r][q][0], vget_low_s8(lo[q]), x_lo);
                    pairs[r][q][0] = vmlal_s8(pairs[r][q][0], vget_low_s8(hi[q]), x_hi);
                    pairs[r][q][1] = vmlal_s8(pairs[r][q][1], vget_high_s8(lo[q]), x_lo);
                    pairs[r][q][1] = vmlal_s8(pairs[r][q][1], vget_high_s8(hi[q]), x_hi);
                }
            }
        }
        int32x4_t dot[SRM_MAX_ROWS][4];
        for (int64_t r = 0; r < rows; r++) {
            const int32x4_t excess = vdupq_n_s32(-8 * quant_sum[r * sum_stride + g]);
            for (int q = 0; q < 4; q++)
                dot[r][q] = vaddq_s32(vpaddq_s32(vpaddlq_s16(pairs[r][q][0]), vpaddlq_s16(pairs[r][q][1])), excess);
        }
#endif
        float32x4_t scale[4];
        for (int q = 0; q < 4; q++)
            scale[q] = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(group_scale + g * SRM_BLOCK_N4 + 4 * q), 16));
        for (int64_t r = 0; r < rows; r++)
            for (int q = 0; q < 4; q++) sum[r][q] = vfmaq_f32(sum[r][q], vcvtq_f32_s32(dot[r][q]), scale[q]);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int q = 0; q < 4; q++) vst1q_f32(out[r] + 4 * q, sum[r][q]);
}

/* dots[j] = query . key j for the SRM_KEY_TILE keys of one tile, laid out (head_dim / 4, 32, 4):
 * four dimensions of a key are adjacent, so one 32-bit lane takes one key's four products and
 * eight registers hold the tile's 32 keys. Exact (SRM_QUERY_SHIFT 0). */
static inline __attribute__((always_inline)) void tile_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                            int64_t hd, int32_t dots[SRM_KEY_TILE]) {
#if defined(__ARM_FEATURE_DOTPROD)
    int32x4_t sum[8];
    for (int v = 0; v < 8; v++) sum[v] = vdupq_n_s32(0);
    for (int64_t g = 0; g < hd / 4; g++) {
        const int8x16_t q = neon_broadcast4(query + 4 * g);
        for (int v = 0; v < 8; v++) sum[v] = vdotq_s32(sum[v], vld1q_s8(tile + (g * SRM_KEY_TILE + 4 * v) * 4), q);
    }
    for (int v = 0; v < 8; v++) vst1q_s32(dots + 4 * v, sum[v]);
#else
    /* Pair sums in int32: register (v, h) holds keys 4v + 2h, 4v + 2h + 1, two lanes each. */
    int32x4_t sum[8][2];
    for (int v = 0; v < 8; v++) sum[v][0] = sum[v][1] = vdupq_n_s32(0);
    for (int64_t g = 0; g < hd / 4; g++) {
        const int8x8_t q = vget_low_s8(neon_broadcast4(query + 4 * g));
        for (int v = 0; v < 8; v++) {
            const int8x16_t keys = vld1q_s8(tile + (g * SRM_KEY_TILE + 4 * v) * 4);
            sum[v][0] = vpadalq_s16(sum[v][0], vmull_s8(vget_low_s8(keys), q));
            sum[v][1] = vpadalq_s16(sum[v][1], vmull_s8(vget_high_s8(keys), q));
        }
    }
    for (int v = 0; v < 8; v++) vst1q_s32(dots + 4 * v, vpaddq_s32(sum[v][0], sum[v][1]));
#endif
}

#endif
