/* The AVX512-VNNI dot kernels (x86-64-v4 + VNNI): 512-bit integer products with vpdpbusd, which
 * multiplies unsigned by signed bytes, so one operand is shifted by +128 and the excess taken off. */
#ifndef SRM_DOTS_AVX512VNNI_H
#define SRM_DOTS_AVX512VNNI_H

#include <immintrin.h>

#define SRM_DOTS "avx512vnni"
#define SRM_QUERY_SHIFT 128 /* vpdpbusd takes the query unsigned: shifted by +128, see tile_dots */
#define SRM_ROWS_PER_PASS 4 /* 16 of the 32 zmm registers accumulate int8 dots, 4 int4 ones beside 16 unpacked weights */

/* EnCodec's convolution tile: pairs of int16 products added to 32-bit sums by vpdpwssd */
#define SRM_CONV_PAIRS(sums, inputs, weights) _mm256_dpwssd_epi32(sums, inputs, weights)
#include "x86_256.h"
#include "dots_plain.h"

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void dot_block(const int8_t *w, const int8_t *ahead, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                                                            int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    /* vpdpbusd multiplies unsigned by signed bytes: the input is shifted by +128 (xor of the sign
     * bit) and 128 * row_sum is taken off afterwards. */
    __m512i sum[SRM_BLOCK_N][SRM_MAX_ROWS];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) sum[i][r] = _mm512_setzero_si512();
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K) {
        prefetch_ahead(ahead, kb * SRM_BLOCK_N, SRM_BLOCK_N * SRM_BLOCK_K);
        const __m512i w0 = _mm512_loadu_si512(w + kb * SRM_BLOCK_N);
        const __m512i w1 = _mm512_loadu_si512(w + kb * SRM_BLOCK_N + 64);
        const __m512i w2 = _mm512_loadu_si512(w + kb * SRM_BLOCK_N + 128);
        const __m512i w3 = _mm512_loadu_si512(w + kb * SRM_BLOCK_N + 192);
        for (int64_t r = 0; r < rows; r++) {
            const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(quant + r * stride + kb), flip);
            sum[0][r] = _mm512_dpbusd_epi32(sum[0][r], x, w0);
            sum[1][r] = _mm512_dpbusd_epi32(sum[1][r], x, w1);
            sum[2][r] = _mm512_dpbusd_epi32(sum[2][r], x, w2);
            sum[3][r] = _mm512_dpbusd_epi32(sum[3][r], x, w3);
        }
    }
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) acc[i][r] = _mm512_reduce_add_epi32(sum[i][r]);
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
    __m512 sum[SRM_MAX_ROWS];
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t r = 0; r < rows; r++) sum[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2;
        prefetch_ahead(ahead, g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2, SRM_BLOCK_K * SRM_BLOCK_N4 / 2);
        __m512i wv[16];
        for (int c = 0; c < 8; c++) {
            const __m512i packed = _mm512_loadu_si512(wg + c * 64);
            wv[2 * c] = _mm512_and_si512(packed, low);
            wv[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
        }
        const __m256i scale_bits = _mm256_loadu_si256((const __m256i *)(group_scale + g * SRM_BLOCK_N4));
        const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(scale_bits), 16));
        for (int64_t r = 0; r < rows; r++) {
            const int32_t *x = (const int32_t *)(quant + r * stride + g * SRM_BLOCK_K);
            /* four accumulators: one chain of 16 dependent vpdpbusd would wait on its latency */
            __m512i a0 = _mm512_set1_epi32(-8 * quant_sum[r * sum_stride + g]), a1 = _mm512_setzero_si512();
            __m512i a2 = _mm512_setzero_si512(), a3 = _mm512_setzero_si512();
            for (int c = 0; c < 16; c += 4) {
                a0 = _mm512_dpbusd_epi32(a0, wv[c], _mm512_set1_epi32(x[c]));
                a1 = _mm512_dpbusd_epi32(a1, wv[c + 1], _mm512_set1_epi32(x[c + 1]));
                a2 = _mm512_dpbusd_epi32(a2, wv[c + 2], _mm512_set1_epi32(x[c + 2]));
                a3 = _mm512_dpbusd_epi32(a3, wv[c + 3], _mm512_set1_epi32(x[c + 3]));
            }
            const __m512i dot = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
            sum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, sum[r]);
        }
    }
    for (int64_t r = 0; r < rows; r++) _mm512_storeu_ps(out[r], sum[r]);
}

/* sum += the shifted query's group g of 4 dimensions times the tile's (see tile_dots). */
static inline __attribute__((always_inline)) void tile_group_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                                  int64_t g, __m512i sum[2]) {
    int32_t four;
    memcpy(&four, query + 4 * g, sizeof four);
    const __m512i q = _mm512_set1_epi32(four ^ (int32_t)0x80808080);
    for (int half = 0; half < 2; half++)
        sum[half] = _mm512_dpbusd_epi32(sum[half], q, _mm512_loadu_si512(tile + (g * SRM_KEY_TILE + 16 * half) * 4));
}

/* dots[j] = query . key j for the SRM_KEY_TILE keys of one tile, laid out (head_dim / 4, 32, 4):
 * four dimensions of a key are adjacent, so one vpdpbusd lane takes one key's four products.
 * The VNNI build returns the dot of the shifted query (+128 * the key's sum). */
static inline __attribute__((always_inline)) void tile_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                            int64_t hd, int32_t dots[SRM_KEY_TILE]) {
    /* two chains a half, even and odd groups: a long text's weights in the place of the query
     * (folded_cross_attention) otherwise wait on vpdpbusd's latency */
    __m512i even[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, odd[2] = {even[0], even[1]};
    const int64_t groups = hd / 4;
    for (int64_t g = 0; g + 1 < groups; g += 2) {
        tile_group_dots(query, tile, g, even);
        tile_group_dots(query, tile, g + 1, odd);
    }
    if (groups % 2) tile_group_dots(query, tile, groups - 1, even);
    for (int half = 0; half < 2; half++) _mm512_storeu_si512(dots + 16 * half, _mm512_add_epi32(even[half], odd[half]));
}

#endif
