/* What the x86 builds share in 256-bit registers: the sum of a vector's lanes, and EnCodec's
 * convolution tile (see conv_tile below). */
#ifndef SRM_X86_256_H
#define SRM_X86_256_H

#include <immintrin.h>
#include <string.h>

#include "srm.h"

/* The sum of v's eight 32-bit lanes. */
static inline __attribute__((always_inline)) int32_t lane_sum_256(__m256i v) {
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
}

#define SRM_CONV_TILE /* the build has its own conv_tile */

/* conv_tile (see plain_conv_tile) in 256-bit registers, for the x86 builds: the 6 rows x 16 channels
 * of int32 sums in 12 registers, each row's pair of inputs broadcast against the block's pairs of
 * weights, added to its sums by the including file's SRM_CONV_PAIRS(sums, inputs, weights). */
#define SRM_CONV_ZERO(r) __m256i acc##r##a = _mm256_setzero_si256(), acc##r##b = _mm256_setzero_si256();
#define SRM_CONV_ROW(r)                                                                                 \
    {                                                                                                   \
        int32_t pair;                                                                                   \
        memcpy(&pair, x##r + p, sizeof pair);                                                           \
        const __m256i xv = _mm256_set1_epi32(pair);                                                     \
        acc##r##a = SRM_CONV_PAIRS(acc##r##a, xv, w0);                                                  \
        acc##r##b = SRM_CONV_PAIRS(acc##r##b, xv, w1);                                                  \
        /* pins the sums to registers here: gcc otherwise kept them on the stack (spilled) */           \
        __asm__("" : "+x"(acc##r##a), "+x"(acc##r##b));                                                 \
    }
#define SRM_CONV_FLUSH(r)                                                                               \
    {                                                                                                   \
        const __m256 scale = _mm256_set1_ps(scales[r][t * scale_step]);                                 \
        _mm256_storeu_ps(sum[r], _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc##r##a), scale, _mm256_loadu_ps(sum[r]))); \
        _mm256_storeu_ps(sum[r] + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc##r##b), scale, _mm256_loadu_ps(sum[r] + 8))); \
    }
static inline __attribute__((always_inline)) void conv_tile(const int16_t *const inputs[SRM_CONV_ROWS], const float *const scales[SRM_CONV_ROWS],
                                                            int64_t row_step, int64_t scale_step, int64_t taps, int64_t channels,
                                                            const int16_t *panel, float sum[SRM_CONV_ROWS][SRM_CONV_BLOCK_N]) {
    for (int r = 0; r < SRM_CONV_ROWS; r++)
        for (int j = 0; j < SRM_CONV_BLOCK_N; j++) sum[r][j] = 0.0f;
    for (int64_t t = 0; t < taps; t++) {
        const int16_t *w = panel + t * channels * SRM_CONV_BLOCK_N;
        const int16_t *x0 = inputs[0] + t * row_step, *x1 = inputs[1] + t * row_step, *x2 = inputs[2] + t * row_step;
        const int16_t *x3 = inputs[3] + t * row_step, *x4 = inputs[4] + t * row_step, *x5 = inputs[5] + t * row_step;
        for (int64_t c0 = 0; c0 < channels; c0 += SRM_CONV_CHUNK) {
            const int64_t c1 = c0 + SRM_CONV_CHUNK < channels ? c0 + SRM_CONV_CHUNK : channels;
            SRM_CONV_ZERO(0) SRM_CONV_ZERO(1) SRM_CONV_ZERO(2) SRM_CONV_ZERO(3) SRM_CONV_ZERO(4) SRM_CONV_ZERO(5)
            for (int64_t p = c0; p < c1; p += 2) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + p * SRM_CONV_BLOCK_N));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + p * SRM_CONV_BLOCK_N + 16));
                SRM_CONV_ROW(0) SRM_CONV_ROW(1) SRM_CONV_ROW(2) SRM_CONV_ROW(3) SRM_CONV_ROW(4) SRM_CONV_ROW(5)
            }
            SRM_CONV_FLUSH(0) SRM_CONV_FLUSH(1) SRM_CONV_FLUSH(2) SRM_CONV_FLUSH(3) SRM_CONV_FLUSH(4) SRM_CONV_FLUSH(5)
        }
    }
}
#undef SRM_CONV_ZERO
#undef SRM_CONV_ROW
#undef SRM_CONV_FLUSH

#endif
