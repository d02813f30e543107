/* The AVX2 dot kernels (x86-64-v3): 256-bit integer products with vpmaddubsw. */
#ifndef SRM_DOTS_AVX2_H
#define SRM_DOTS_AVX2_H

#include <immintrin.h>

#define SRM_DOTS "avx2"
#define SRM_INT4_PASSES 2 /* dot_block4 goes over a block in two halves of 8 channels */
#define SRM_INT4_CHUNK 16 /* groups of 64 inputs dot_block4 takes both halves of before going on */
#define SRM_QUERY_SHIFT 0 /* the query's dots with the keys are plain C's, exact: nothing to take off */

/* EnCodec's convolution tile: pairs of int16 products summed in 32 bits by vpmaddwd */
#define SRM_CONV_PAIRS(sums, inputs, weights) _mm256_add_epi32(sums, _mm256_madd_epi16(inputs, weights))
#include "x86_256.h"
#include "dots_plain.h"

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void dot_block(const int8_t *w, const int8_t *ahead, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                                                            int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    /* vpmaddubsw multiplies unsigned by signed bytes with int16 saturation: |x| times w with x's
     * sign keeps every pair sum within int16 (weights and inputs are in [-127, 127]); vpsignb puts
     * the sign on, as llama.cpp's AVX2 dots do. Four instructions a vector of weights and row
     * where an xor and a subtraction for the sign made five: on a Zen 5 EPYC (held to this build)
     * the products from the caches 61-67 -> 78-83 GB/s. On a Zen 4, whose vpsignb shares the
     * multiply ports, the xor and subtraction had been faster (3.3-3.4 against 3.7 cycles a
     * 32-byte vector of weights, two rows from L1); both have AVX-512 and serve another build. */
    __m256i sum[SRM_BLOCK_N][SRM_MAX_ROWS];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) sum[i][r] = _mm256_setzero_si256();
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K) {
        prefetch_ahead(ahead, kb * SRM_BLOCK_N, SRM_BLOCK_N * SRM_BLOCK_K);
        for (int half = 0; half < 2; half++) {
            __m256i x[SRM_MAX_ROWS], magnitude[SRM_MAX_ROWS];
            for (int64_t r = 0; r < rows; r++) {
                x[r] = _mm256_loadu_si256((const __m256i *)(quant + r * stride + kb + half * 32));
                magnitude[r] = _mm256_abs_epi8(x[r]);
            }
            for (int i = 0; i < SRM_BLOCK_N; i++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + kb * SRM_BLOCK_N + i * 64 + half * 32));
                for (int64_t r = 0; r < rows; r++) {
                    const __m256i pairs = _mm256_maddubs_epi16(magnitude[r], _mm256_sign_epi8(wv, x[r]));
                    sum[i][r] = _mm256_add_epi32(sum[i][r], _mm256_madd_epi16(pairs, ones));
                    __asm__("" : "+x"(sum[i][r])); /* see below: no reassociation */
                }
            }
        }
    }
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) acc[i][r] = lane_sum_256(sum[i][r]);
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
    const int64_t groups = k / SRM_BLOCK_K;
    /* Eight channels a register: half h of each 64-byte run. vpmaddubsw's int16 pair sums of
     * weights <= 15 and inputs within +-127 stay below 2^15 when eight of them are added. */
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 sum[2][SRM_MAX_ROWS];
    for (int half = 0; half < 2; half++)
        for (int64_t r = 0; r < rows; r++) sum[half][r] = _mm256_setzero_ps();
    /* Both halves a chunk of SRM_INT4_CHUNK groups at a time (8 KB of weights): the second half
     * rereads the chunk from L1, where a whole block of a long product (32 KB for 4096 inputs)
     * would have been evicted to L2 by the time its second half came. */
    for (int64_t g0 = 0; g0 < groups; g0 += SRM_INT4_CHUNK) {
        const int64_t g1 = g0 + SRM_INT4_CHUNK < groups ? g0 + SRM_INT4_CHUNK : groups;
        for (int half = 0; half < 2; half++) {
            for (int64_t g = g0; g < g1; g++) {
                const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2 + half * 32;
                /* the second half rereads L1: the memory fetches the weights ahead meanwhile */
                if (half == 1) prefetch_ahead(ahead, g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2, SRM_BLOCK_K * SRM_BLOCK_N4 / 2);
                __m256i pairs[SRM_MAX_ROWS][2];
                for (int64_t r = 0; r < rows; r++) pairs[r][0] = pairs[r][1] = _mm256_setzero_si256();
                for (int c = 0; c < 8; c++) {
                    const __m256i packed = _mm256_loadu_si256((const __m256i *)(wg + c * 64));
                    const __m256i lo = _mm256_and_si256(packed, low);
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                    for (int64_t r = 0; r < rows; r++) {
                        const int32_t *x = (const int32_t *)(quant + r * stride + g * SRM_BLOCK_K);
                        pairs[r][c / 4] = _mm256_add_epi16(pairs[r][c / 4], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(x[2 * c])));
                        pairs[r][c / 4] = _mm256_add_epi16(pairs[r][c / 4], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(x[2 * c + 1])));
                        /* keeps gcc from reassociating the running sums into a tree of live registers,
                         * which spills them to the stack (a third slower, measured) */
                        __asm__("" : "+x"(pairs[r][c / 4]));
                    }
                }
                const __m128i scale_bits = _mm_loadu_si128((const __m128i *)(group_scale + g * SRM_BLOCK_N4 + half * 8));
                const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(scale_bits), 16));
                for (int64_t r = 0; r < rows; r++) {
                    __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(pairs[r][0], ones), _mm256_madd_epi16(pairs[r][1], ones));
                    dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * quant_sum[r * sum_stride + g]));
                    sum[half][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, sum[half][r]);
                }
            }
        }
    }
    for (int half = 0; half < 2; half++)
        for (int64_t r = 0; r < rows; r++) _mm256_storeu_ps(out[r] + half * 8, sum[half][r]);
}

/* dots[j] = query . key j for the SRM_KEY_TILE keys of one tile, laid out (head_dim / 4, 32, 4):
 * four dimensions of a key are adjacent, so one 32-bit lane takes one key's four products. Both
 * are signed: vpmaddubsw takes |query| and the keys with the query's signs (pair sums within
 * 2 * 127 * 127, no saturation), vpmaddwd adds the pairs. Exact, as the plain C it replaces, which
 * gcc vectorised poorly: a 1-take step at position 1400 spent twice as long in attention as the
 * AVX512-VNNI build's. */
static inline __attribute__((always_inline)) void tile_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                            int64_t hd, int32_t dots[SRM_KEY_TILE]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i sum[SRM_KEY_TILE / 8];
    for (int j = 0; j < SRM_KEY_TILE / 8; j++) sum[j] = _mm256_setzero_si256();
    for (int64_t g = 0; g < hd / 4; g++) {
        int32_t four;
        memcpy(&four, query + 4 * g, sizeof four);
        const __m256i q = _mm256_set1_epi32(four);
        const __m256i q_abs = _mm256_sign_epi8(q, q);
        for (int j = 0; j < SRM_KEY_TILE / 8; j++) {
            const __m256i keys = _mm256_loadu_si256((const __m256i *)(tile + (g * SRM_KEY_TILE + 8 * j) * 4));
            const __m256i pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(keys, q));
            sum[j] = _mm256_add_epi32(sum[j], _mm256_madd_epi16(pairs, ones));
        }
    }
    for (int j = 0; j < SRM_KEY_TILE / 8; j++) _mm256_storeu_si256((__m256i *)(dots + 8 * j), sum[j]);
}

#endif
