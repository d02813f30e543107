/* The AVX-VNNI dot kernels (x86-64-v3 + AVX-VNNI: Intel's Alder Lake and later without AVX-512,
 * Sierra Forest): AVX2's 256-bit registers with vpdpbusd, which multiplies unsigned by signed bytes
 * and adds each lane's four products to 32 bits in one instruction, so one operand is shifted by
 * +128 and the excess taken off, as in the AVX512-VNNI build. */
#ifndef SRM_DOTS_AVXVNNI_H
#define SRM_DOTS_AVXVNNI_H

#include <immintrin.h>

#define SRM_DOTS "avxvnni"
#define SRM_QUERY_SHIFT 128 /* vpdpbusd takes the query unsigned: shifted by +128, see tile_dots */

/* EnCodec's convolution tile: pairs of int16 products added to 32-bit sums by vpdpwssd */
#define SRM_CONV_PAIRS(sums, inputs, weights) _mm256_dpwssd_avx_epi32(sums, inputs, weights)
#include "x86_256.h"
#include "dots_plain.h"

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void dot_block(const int8_t *w, const int8_t *ahead, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                                                            int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    /* The input is shifted by +128 (xor of the sign bit) and 128 * row_sum taken off afterwards:
     * one instruction a 32-byte vector of weights and row, where AVX2 takes four. */
    __m256i sum[SRM_BLOCK_N][SRM_MAX_ROWS];
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) sum[i][r] = _mm256_setzero_si256();
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K) {
        prefetch_ahead(ahead, kb * SRM_BLOCK_N, SRM_BLOCK_N * SRM_BLOCK_K);
        for (int half = 0; half < 2; half++) {
            __m256i x[SRM_MAX_ROWS];
            for (int64_t r = 0; r < rows; r++)
                x[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(quant + r * stride + kb + half * 32)), flip);
            for (int i = 0; i < SRM_BLOCK_N; i++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + kb * SRM_BLOCK_N + i * 64 + half * 32));
                for (int64_t r = 0; r < rows; r++) sum[i][r] = _mm256_dpbusd_avx_epi32(sum[i][r], x[r], wv);
            }
        }
    }
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) acc[i][r] = lane_sum_256(sum[i][r]);
}

/* What dot_block's sum for output channel n holds beyond the dot: the input's +128 shift times
 * the channel's weight sum. */
static inline __attribute__((always_inline)) int32_t dot_block_excess(const srm_linear *lin, int64_t n) {
    return 128 * lin->row_sum[n];
}

/* out[r][j] = sum over groups g of scale[j, g] * (weight[j, g] . quant[r, g]) for one block of 16
 * output channels of 4-bit weights (see srm_linear), j a vector lane. The weights are multiplied
 * as stored (weight + 8, unsigned), and 8 * the group's input sum is taken off. */
static inline __attribute__((always_inline)) void dot_block4(const uint8_t *w, const uint8_t *ahead, const uint16_t *group_scale, const int8_t *quant,
                                                             const int32_t *quant_sum, int64_t stride, int64_t sum_stride, int64_t rows, int64_t k,
                                                             float out[SRM_MAX_ROWS][SRM_BLOCK_N4]) {
    const int64_t groups = k / SRM_BLOCK_K;
    /* Eight channels a register, both halves of each 64-byte run at once: each broadcast input
     * serves the two (vpdpbusd's sums can't overflow, so nothing forces passes as in AVX2's). */
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 sum[SRM_MAX_ROWS][2];
    for (int64_t r = 0; r < rows; r++) sum[r][0] = sum[r][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2;
        prefetch_ahead(ahead, g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2, SRM_BLOCK_K * SRM_BLOCK_N4 / 2);
        __m256i dots[SRM_MAX_ROWS][2][2]; /* [row][half][low or high nibbles] */
        for (int64_t r = 0; r < rows; r++) {
            dots[r][0][0] = dots[r][1][0] = _mm256_set1_epi32(-8 * quant_sum[r * sum_stride + g]);
            dots[r][0][1] = dots[r][1][1] = _mm256_setzero_si256();
        }
        for (int c = 0; c < 8; c++) {
            __m256i lo[2], hi[2];
            for (int half = 0; half < 2; half++) {
                const __m256i packed = _mm256_loadu_si256((const __m256i *)(wg + c * 64 + half * 32));
                lo[half] = _mm256_and_si256(packed, low);
                hi[half] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
            }
            for (int64_t r = 0; r < rows; r++) {
                const int32_t *x = (const int32_t *)(quant + r * stride + g * SRM_BLOCK_K);
                const __m256i x_lo = _mm256_set1_epi32(x[2 * c]), x_hi = _mm256_set1_epi32(x[2 * c + 1]);
                for (int half = 0; half < 2; half++) {
                    dots[r][half][0] = _mm256_dpbusd_avx_epi32(dots[r][half][0], lo[half], x_lo);
                    dots[r][half][1] = _mm256_dpbusd_avx_epi32(dots[r][half][1], hi[half], x_hi);
                }
            }
        }
        const __m256i scale_bits = _mm256_loadu_si256((const __m256i *)(group_scale + g * SRM_BLOCK_N4));
        for (int half = 0; half < 2; half++) {
            const __m128i bits = half ? _mm256_extracti128_si256(scale_bits, 1) : _mm256_castsi256_si128(scale_bits);
            const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
            for (int64_t r = 0; r < rows; r++) {
                const __m256i dot = _mm256_add_epi32(dots[r][half][0], dots[r][half][1]);
                sum[r][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, sum[r][half]);
            }
        }
    }
    for (int64_t r = 0; r < rows; r++)
        for (int half = 0; half < 2; half++) _mm256_storeu_ps(out[r] + half * 8, sum[r][half]);
}

/* sum += the shifted query's group g of 4 dimensions times the tile's (see tile_dots). */
static inline __attribute__((always_inline)) void tile_group_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                                  int64_t g, __m256i sum[SRM_KEY_TILE / 8]) {
    int32_t four;
    memcpy(&four, query + 4 * g, sizeof four);
    const __m256i q = _mm256_set1_epi32(four ^ (int32_t)0x80808080);
    for (int j = 0; j < SRM_KEY_TILE / 8; j++)
        sum[j] = _mm256_dpbusd_avx_epi32(sum[j], q, _mm256_loadu_si256((const __m256i *)(tile + (g * SRM_KEY_TILE + 8 * j) * 4)));
}

/* dots[j] = query . key j for the SRM_KEY_TILE keys of one tile, laid out (head_dim / 4, 32, 4):
 * four dimensions of a key are adjacent, so one vpdpbusd lane takes one key's four products.
 * Returns the dot of the shifted query (+128 * the key's sum), as the AVX512-VNNI build does. */
static inline __attribute__((always_inline)) void tile_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                            int64_t hd, int32_t dots[SRM_KEY_TILE]) {
    /* even and odd groups in two sets of chains (see the AVX512-VNNI build's) */
    __m256i even[SRM_KEY_TILE / 8], odd[SRM_KEY_TILE / 8];
    for (int j = 0; j < SRM_KEY_TILE / 8; j++) even[j] = odd[j] = _mm256_setzero_si256();
    const int64_t groups = hd / 4;
    for (int64_t g = 0; g + 1 < groups; g += 2) {
        tile_group_dots(query, tile, g, even);
        tile_group_dots(query, tile, g + 1, odd);
    }
    if (groups % 2) tile_group_dots(query, tile, groups - 1, even);
    for (int j = 0; j < SRM_KEY_TILE / 8; j++) _mm256_storeu_si256((__m256i *)(dots + 8 * j), _mm256_add_epi32(even[j], odd[j]));
}

#endif
