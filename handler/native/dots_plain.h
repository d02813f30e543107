/* The plain-C dot kernels: the reference every other build is tested against, the plain build's
 * kernels, and the tuned builds' fallback where their vector code has no case. Plain C that the
 * compiler vectorises as far as the build's target allows. */
#ifndef SRM_DOTS_PLAIN_H
#define SRM_DOTS_PLAIN_H

#include <math.h>

#include "srm.h"

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void plain_dot_block(const int8_t *w, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                                                                  int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) acc[i][r] = 0;
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K)
        for (int i = 0; i < SRM_BLOCK_N; i++) {
            const int8_t *wi = w + kb * SRM_BLOCK_N + i * 64;
            for (int64_t r = 0; r < rows; r++) {
                const int8_t *x = quant + r * stride + kb;
                int32_t s = 0;
                for (int j = 0; j < 64; j++) s += (int32_t)wi[j] * (int32_t)x[j];
                acc[i][r] += s;
            }
        }
}

/* out[r][j] = sum over groups g of scale[j, g] * (weight[j, g] . quant[r, g]) for one block of 16
 * output channels of 4-bit weights (see srm_linear), j a vector lane. The weights are multiplied
 * as stored (weight + 8, unsigned), and 8 * the group's input sum is taken off. */
static inline __attribute__((always_inline)) void plain_dot_block4(const uint8_t *w, const uint16_t *group_scale, const int8_t *quant,
                                                                   const int32_t *quant_sum, int64_t stride, int64_t sum_stride, int64_t rows, int64_t k,
                                                                   float out[SRM_MAX_ROWS][SRM_BLOCK_N4]) {
    const int64_t groups = k / SRM_BLOCK_K;
    for (int64_t r = 0; r < rows; r++)
        for (int j = 0; j < SRM_BLOCK_N4; j++) out[r][j] = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2;
        for (int64_t r = 0; r < rows; r++) {
            const int8_t *x = quant + r * stride + g * SRM_BLOCK_K;
            for (int j = 0; j < SRM_BLOCK_N4; j++) {
                int32_t dot = -8 * quant_sum[r * sum_stride + g];
                for (int c = 0; c < 8; c++)
                    for (int i = 0; i < 4; i++) {
                        const int32_t packed = wg[(c * SRM_BLOCK_N4 + j) * 4 + i];
                        dot += (packed & 0x0F) * x[8 * c + i] + (packed >> 4) * x[8 * c + 4 + i];
                    }
                out[r][j] += bf16_to_float(group_scale[g * SRM_BLOCK_N4 + j]) * (float)dot;
            }
        }
    }
}

/* dots[j] = (query + shift) . key j for the SRM_KEY_TILE keys of one tile, laid out
 * (head_dim / 4, 32, 4): see tile_dots. */
static inline __attribute__((always_inline)) void plain_tile_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                                  int64_t hd, int32_t shift, int32_t dots[SRM_KEY_TILE]) {
    for (int j = 0; j < SRM_KEY_TILE; j++) dots[j] = 0;
    for (int64_t g = 0; g < hd / 4; g++)
        for (int j = 0; j < SRM_KEY_TILE; j++)
            for (int e = 0; e < 4; e++)
                dots[j] += ((int32_t)query[4 * g + e] + shift) * (int32_t)tile[(g * SRM_KEY_TILE + j) * 4 + e];
}

/* sum[r][j] = sum over taps t and chunks of SRM_CONV_CHUNK channels of scales[r][t * scale_step] *
 * (the chunk's exact int32 dot of input row inputs[r] + t * row_step with output channel j of the
 * weight block `panel`), for the SRM_CONV_ROWS output rows of a tile and the 16 channels of a block
 * (see srm_conv). The float sums are fused multiply-adds in this order in every build: the builds
 * agree bit for bit. */
static inline __attribute__((always_inline)) void plain_conv_tile(const int16_t *const inputs[SRM_CONV_ROWS], const float *const scales[SRM_CONV_ROWS],
                                                                  int64_t row_step, int64_t scale_step, int64_t taps, int64_t channels,
                                                                  const int16_t *panel, float sum[SRM_CONV_ROWS][SRM_CONV_BLOCK_N]) {
    for (int r = 0; r < SRM_CONV_ROWS; r++)
        for (int j = 0; j < SRM_CONV_BLOCK_N; j++) sum[r][j] = 0.0f;
    for (int64_t t = 0; t < taps; t++) {
        const int16_t *w = panel + t * channels * SRM_CONV_BLOCK_N;
        for (int64_t c0 = 0; c0 < channels; c0 += SRM_CONV_CHUNK) {
            const int64_t c1 = c0 + SRM_CONV_CHUNK < channels ? c0 + SRM_CONV_CHUNK : channels;
            for (int r = 0; r < SRM_CONV_ROWS; r++) {
                const int16_t *x = inputs[r] + t * row_step;
                for (int j = 0; j < SRM_CONV_BLOCK_N; j++) {
                    int32_t dot = 0;
                    for (int64_t c = c0; c < c1; c++) dot += (int32_t)x[c] * (int32_t)w[(c & ~(int64_t)1) * SRM_CONV_BLOCK_N + 2 * j + (c & 1)];
                    sum[r][j] = fmaf((float)dot, scales[r][t * scale_step], sum[r][j]);
                }
            }
        }
    }
}

#endif

/* Included as the build's own kernels rather than as a tuned file's fallback (a tuned file defines
 * SRM_DOTS first): the plain functions under the names kernels.c calls. */
#ifndef SRM_DOTS
#define SRM_DOTS "plain"
#define SRM_QUERY_SHIFT 0 /* the query's dots with the keys are exact: nothing to take off */

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void dot_block(const int8_t *w, const int8_t *ahead, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                                                            int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    (void)ahead;
    plain_dot_block(w, quant, stride, rows, k, acc);
}

/* What dot_block's sum for output channel n holds beyond the dot: nothing here. */
static inline __attribute__((always_inline)) int32_t dot_block_excess(const srm_linear *lin, int64_t n) {
    (void)lin;
    (void)n;
    return 0;
}

/* out[r][j] = sum over groups g of scale[j, g] * (weight[j, g] . quant[r, g]) for one block of 16
 * output channels of 4-bit weights (see srm_linear), j a vector lane. The weights are multiplied
 * as stored (weight + 8, unsigned), and 8 * the group's input sum is taken off. */
static inline __attribute__((always_inline)) void dot_block4(const uint8_t *w, const uint8_t *ahead, const uint16_t *group_scale, const int8_t *quant,
                                                             const int32_t *quant_sum, int64_t stride, int64_t sum_stride, int64_t rows, int64_t k,
                                                             float out[SRM_MAX_ROWS][SRM_BLOCK_N4]) {
    (void)ahead;
    plain_dot_block4(w, group_scale, quant, quant_sum, stride, sum_stride, rows, k, out);
}

/* dots[j] = query . key j for the SRM_KEY_TILE keys of one tile, laid out (head_dim / 4, 32, 4):
 * four dimensions of a key are adjacent, so one vpdpbusd lane takes one key's four products.
 * Exact here (SRM_QUERY_SHIFT 0). */
static inline __attribute__((always_inline)) void tile_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                            int64_t hd, int32_t dots[SRM_KEY_TILE]) {
    plain_tile_dots(query, tile, hd, SRM_QUERY_SHIFT, dots);
}

#endif

/* The builds without a conv_tile of their own (the plain one, NEON's) use the reference's. */
#ifndef SRM_CONV_TILE
#define conv_tile plain_conv_tile
#endif
