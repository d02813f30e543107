/* The arm64 NEON dot kernels: 128-bit integer products with sdot (vdotq_s32) where the target has
 * the dot-product extension (ARMv8.2 dotprod: Graviton2 and later), else widening multiplies
 * (vmull_s8) whose int16 products are summed pairwise into int32 (vpadalq_s16). Where it also has
 * the int8 matrix multiply (i8mm: Graviton3 and later), the matrix products take their input rows
 * in pairs with smmla (see NEON_PAIRED). All three multiply signed by signed bytes, so nothing is
 * shifted: the sums are the plain reference's, exactly. */
#ifndef SRM_DOTS_NEON_H
#define SRM_DOTS_NEON_H

#include <arm_neon.h>

#if defined(__ARM_FEATURE_MATMUL_INT8)
#define SRM_DOTS "neon_i8mm"
#elif defined(__ARM_FEATURE_DOTPROD)
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

/* smmla (vmmlaq_s32) multiplies a 2x8 by an 8x2 int8 matrix: lane 2i + j of the sum takes row i
 * of its first operand times row j of its second. With two input rows against two channels it
 * does the work of two sdots. The packed layouts (shared by every build) keep each channel's
 * inputs together, so both operands are two 8-byte runs zipped in registers. The rows below
 * NEON_PAIRED(rows) go in pairs through smmla; an odd last row stays on sdot. */
#if defined(__ARM_FEATURE_MATMUL_INT8)
#define NEON_PAIRED(rows) ((rows) & ~(int64_t)1)

/* Bytes 8h..8h+7 of a, then those of b: one 2x8 operand of smmla. */
static inline __attribute__((always_inline)) int8x16_t neon_pair(int8x16_t a, int8x16_t b, int h) {
    const int64x2_t a64 = vreinterpretq_s64_s8(a), b64 = vreinterpretq_s64_s8(b);
    return vreinterpretq_s8_s64(h ? vzip2q_s64(a64, b64) : vzip1q_s64(a64, b64));
}
#else
#define NEON_PAIRED(rows) ((int64_t)0)
#endif

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void dot_block(const int8_t *w, const int8_t *ahead, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                                                            int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    const int64_t paired = NEON_PAIRED(rows);
    int32x4_t sum[SRM_BLOCK_N][SRM_MAX_ROWS];
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = paired; r < rows; r++) sum[i][r] = vdupq_n_s32(0);
#if defined(__ARM_FEATURE_MATMUL_INT8)
    /* rows 2s, 2s + 1 by channels 2p, 2p + 1, over bytes 8h..8h+7 of each 16: two chains a pair */
    int32x4_t mm[SRM_MAX_ROWS / 2][SRM_BLOCK_N / 2][2];
    for (int64_t s = 0; s < paired / 2; s++)
        for (int p = 0; p < SRM_BLOCK_N / 2; p++) mm[s][p][0] = mm[s][p][1] = vdupq_n_s32(0);
#endif
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K) {
        prefetch_ahead(ahead, kb * SRM_BLOCK_N, SRM_BLOCK_N * SRM_BLOCK_K);
        for (int q = 0; q < 4; q++) {
            int8x16_t wv[SRM_BLOCK_N];
            for (int i = 0; i < SRM_BLOCK_N; i++) wv[i] = vld1q_s8(w + kb * SRM_BLOCK_N + i * 64 + q * 16);
#if defined(__ARM_FEATURE_MATMUL_INT8)
            if (paired > 0) {
                int8x16_t wp[SRM_BLOCK_N / 2][2];
                for (int p = 0; p < SRM_BLOCK_N / 2; p++)
                    for (int h = 0; h < 2; h++) wp[p][h] = neon_pair(wv[2 * p], wv[2 * p + 1], h);
                for (int64_t s = 0; s < paired / 2; s++) {
                    const int8_t *x = quant + 2 * s * stride + kb + q * 16;
                    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + stride);
                    for (int h = 0; h < 2; h++) {
                        const int8x16_t xp = neon_pair(x0, x1, h);
                        for (int p = 0; p < SRM_BLOCK_N / 2; p++) mm[s][p][h] = vmmlaq_s32(mm[s][p][h], xp, wp[p][h]);
                    }
                }
            }
#endif
            for (int64_t r = paired; r < rows; r++) {
                const int8x16_t x = vld1q_s8(quant + r * stride + kb + q * 16);
                for (int i = 0; i < SRM_BLOCK_N; i++) sum[i][r] = neon_dot_total(sum[i][r], wv[i], x);
            }
        }
    }
#if defined(__ARM_FEATURE_MATMUL_INT8)
    for (int64_t s = 0; s < paired / 2; s++)
        for (int p = 0; p < SRM_BLOCK_N / 2; p++) {
            int32_t lanes[4];
            vst1q_s32(lanes, vaddq_s32(mm[s][p][0], mm[s][p][1]));
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) acc[2 * p + j][2 * s + i] = lanes[2 * i + j];
        }
#endif
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = paired; r < rows; r++) acc[i][r] = vaddvq_s32(sum[i][r]);
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
static inline __attribute__((always_inline)) void dot_block4(const uint8_t *w, const uint8_t *ahead, const uint16_t *group_scale, const int8_t *quant,
                                                             const int32_t *quant_sum, int64_t stride, int64_t sum_stride, int64_t rows, int64_t k,
                                                             float out[SRM_MAX_ROWS][SRM_BLOCK_N4]) {
    const int64_t groups = k / SRM_BLOCK_K;
    const uint8x16_t low = vdupq_n_u8(0x0F);
    float32x4_t sum[SRM_MAX_ROWS][4];
    for (int64_t r = 0; r < rows; r++)
        for (int q = 0; q < 4; q++) sum[r][q] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2;
        prefetch_ahead(ahead, g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2, SRM_BLOCK_K * SRM_BLOCK_N4 / 2);
#if defined(__ARM_FEATURE_DOTPROD)
        const int64_t paired = NEON_PAIRED(rows);
        int32x4_t dot[SRM_MAX_ROWS][4];
        for (int64_t r = paired; r < rows; r++) {
            dot[r][0] = vdupq_n_s32(-8 * quant_sum[r * sum_stride + g]);
            dot[r][1] = dot[r][2] = dot[r][3] = dot[r][0];
        }
#if defined(__ARM_FEATURE_MATMUL_INT8)
        /* rows 2s, 2s + 1 by channels 2v, 2v + 1, starting from the rows' excess */
        int32x4_t mm[SRM_MAX_ROWS / 2][SRM_BLOCK_N4 / 2];
        for (int64_t s = 0; s < paired / 2; s++) {
            const int32_t *excess = quant_sum + 2 * s * sum_stride + g;
            const int32x4_t start = vcombine_s32(vdup_n_s32(-8 * excess[0]), vdup_n_s32(-8 * excess[sum_stride]));
            for (int v = 0; v < SRM_BLOCK_N4 / 2; v++) mm[s][v] = start;
        }
#endif
        for (int c = 0; c < 8; c++) {
            int8x16_t lo[4], hi[4];
            for (int q = 0; q < 4; q++) {
                const uint8x16_t packed = vld1q_u8(wg + c * 64 + q * 16);
                lo[q] = vreinterpretq_s8_u8(vandq_u8(packed, low));
                hi[q] = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
            }
#if defined(__ARM_FEATURE_MATMUL_INT8)
            if (paired > 0) {
                /* a channel's inputs 8c..8c+7 are its four low nibbles, then its four high ones */
                int8x16_t wp[SRM_BLOCK_N4 / 2];
                for (int q = 0; q < 4; q++) {
                    const int32x4_t lo32 = vreinterpretq_s32_s8(lo[q]), hi32 = vreinterpretq_s32_s8(hi[q]);
                    wp[2 * q] = vreinterpretq_s8_s32(vzip1q_s32(lo32, hi32));
                    wp[2 * q + 1] = vreinterpretq_s8_s32(vzip2q_s32(lo32, hi32));
                }
                for (int64_t s = 0; s < paired / 2; s++) {
                    const int8_t *x = quant + 2 * s * stride + g * SRM_BLOCK_K + 8 * c;
                    const int8x16_t xp = vcombine_s8(vld1_s8(x), vld1_s8(x + stride));
                    for (int v = 0; v < SRM_BLOCK_N4 / 2; v++) mm[s][v] = vmmlaq_s32(mm[s][v], xp, wp[v]);
                }
            }
#endif
            for (int64_t r = paired; r < rows; r++) {
                const int8_t *x = quant + r * stride + g * SRM_BLOCK_K + 8 * c;
                const int8x16_t x_lo = neon_broadcast4(x), x_hi = neon_broadcast4(x + 4);
                for (int q = 0; q < 4; q++) dot[r][q] = vdotq_s32(vdotq_s32(dot[r][q], lo[q], x_lo), hi[q], x_hi);
            }
        }
#if defined(__ARM_FEATURE_MATMUL_INT8)
        for (int64_t s = 0; s < paired / 2; s++)
            for (int q = 0; q < 4; q++) {
                const int64x2_t first = vreinterpretq_s64_s32(mm[s][2 * q]), second = vreinterpretq_s64_s32(mm[s][2 * q + 1]);
                dot[2 * s][q] = vreinterpretq_s32_s64(vzip1q_s64(first, second));
                dot[2 * s + 1][q] = vreinterpretq_s32_s64(vzip2q_s64(first, second));
            }
#endif
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
