/* One MusicGen decoder step on the CPU, all layers in one call (see handler/native/runtime.py).
 *
 * Why native code: with one token per step, torch spends as long dispatching ~20 small operators
 * per layer (and waking its threads for each) as it spends reading the weights, and its attention
 * kernels read a one-query KV cache at half the memory bandwidth. Here a step is one parallel
 * region: every phase is split between the threads, separated by barriers, and each weight byte
 * and cache byte is read once.
 *
 * Numerics: Linear weights are int8 with one scale per output channel (the `int8` precision), or
 * int4 with one bfloat16 scale per 64 inputs of an output channel (`int4`: half the bytes to
 * stream, the step's main cost). Each input row is quantised to int8 with its own scale just
 * before a matrix product; products are summed exactly in int32 (per group of 64 for int4) and
 * rescaled to float32. The self-attention KV cache is int8 with one scale per cached vector, and
 * the query is quantised to int8 for its integer dots with the keys; so are the softmax weights
 * of the folded cross-attention for theirs with its values. Everything else (the self-attention's
 * softmax weights, layer norms, GELU, residuals) is float32.
 *
 * Layout: the structs and block constants are in srm.h. The dot kernels (dot_block, dot_block4,
 * dot_block_excess, tile_dots and SRM_QUERY_SHIFT) come from one file per instruction set, chosen
 * below by the build's target: AVX512-VNNI, AVX-VNNI, AVX2, arm64 NEON (with sdot where the target
 * has dotprod), or the plain-C reference (always where SRM_PLAIN is defined: the plain build's flag).
 * They are included here, one translation unit per build, so they inline into the loops that
 * call them.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "srm.h"

#if defined(SRM_PLAIN) /* the reference build, whatever the target's vector units */
#include "dots_plain.h"
#elif defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include "dots_avx512vnni.h"
#elif defined(__AVXVNNI__)
#include "dots_avxvnni.h"
#elif defined(__AVX2__)
#include "dots_avx2.h"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include "dots_neon.h"
#else
#include "dots_plain.h"
#endif

#ifndef SRM_ROWS_PER_PASS
#define SRM_ROWS_PER_PASS 2 /* input rows whose accumulators the dot kernels keep in registers at once */
#endif
#ifndef SRM_INT4_PASSES
#define SRM_INT4_PASSES 1 /* passes dot_block4 makes over a block for one pass of rows */
#endif

/* ---------------------------------------------------------------- scalar helpers */

/* exp(x) = 2^n (1 + fraction) for x within float's range: fraction = exp(r) - 1 of the reduced
 * r = x - n ln 2, |r| <= ln 2 / 2, to ~2 ulp, in a form compilers vectorise (libm's expf is a
 * scalar call). */
typedef struct {
    float fraction, scale;
} exp_parts;

static inline exp_parts split_exp(float x) {
    const float n = __builtin_rintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    /* 2^n from its exponent bits; a union rather than memcpy, which stops gcc vectorising callers */
    const union {
        int32_t bits;
        float value;
    } scale = {.bits = ((int32_t)n + 127) << 23};
    return (exp_parts){p * r * r + r, scale.value};
}

static inline float fast_exp(float x) {
    const exp_parts e = split_exp(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x));
    return (e.fraction + 1.0f) * e.scale;
}

/* GELU with erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7), as torch's default GELU. */
static inline float gelu(float x) {
    const float z = fabsf(x) * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    const float erf_z = copysignf(1.0f - poly * fast_exp(-z * z), x);
    return 0.5f * x * (1.0f + erf_z);
}

/* ---------------------------------------------------------------- row operations */

/* *top = the largest |factor * x[i]| of x[0:n] (0 for none); whether all of them are finite. */
static inline __attribute__((always_inline)) int32_t largest_magnitude(const float *x, int64_t n, float factor,
                                                                     float *top) {
    float largest = 0.0f;
    int32_t finite = 1;
#pragma omp simd reduction(max : largest) reduction(& : finite)
    for (int64_t i = 0; i < n; i++) {
        const float magnitude = fabsf(x[i] * factor);
        largest = magnitude > largest ? magnitude : largest; /* not fmaxf: a libm call the compiler won't vectorise */
        finite &= magnitude <= FLT_MAX;
    }
    *top = largest;
    return finite;
}

/* Quantise `src[0:k]` to int8 with one symmetric scale. A row with a NaN or an infinity is zeros
 * with a NaN scale (float-to-int8 of either is undefined): every output that reads it is NaN, as
 * torch's sums would be. */
static void quantize_row(const float *src, int64_t k, int8_t *dst, float *scale) {
    float top;
    const int32_t finite = largest_magnitude(src, k, 1.0f, &top);
    const float inv = finite && top > 0.0f ? 127.0f / top : 0.0f;
#pragma omp simd
    for (int64_t i = 0; i < k; i++) dst[i] = finite ? (int8_t)__builtin_rintf(src[i] * inv) : 0;
    *scale = finite ? top / 127.0f : NAN;
}

static void layer_norm_row(const float *x, int64_t d, const float *w, const float *b, float eps, float *out) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < d; i++) sum += x[i];
    const float mean = sum / (float)d;
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int64_t i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / sqrtf(var / (float)d + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; i++) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

/* Quantises input row r of a matrix product into m->quant, zero padded to a whole group, with the
 * sums of its groups of 64 (the 4-bit products multiply weight + 8 and take 8 * group sum off, so
 * the padding must be zero: a product with fewer inputs may follow one with more). */
static void quantize_input(const srm_decoder *m, const float *src, int64_t k, int64_t r) {
    int8_t *dst = m->quant + r * m->in_stride;
    quantize_row(src, k, dst, m->row_scale + r);
    const int64_t groups = (k + SRM_BLOCK_K - 1) / SRM_BLOCK_K;
    memset(dst + k, 0, (size_t)(groups * SRM_BLOCK_K - k));
    int32_t *sums = m->quant_sum + r * (m->in_stride / SRM_BLOCK_K);
    for (int64_t g = 0; g < groups; g++) {
        int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < SRM_BLOCK_K; i++) sum += dst[g * SRM_BLOCK_K + i];
        sums[g] = sum;
    }
}

/* The dot kernels with `rows` a constant keep their accumulators in registers. Two rows (one
 * prompt with guidance) and one (folded cross-attention, the LSTM) are the common cases; more
 * rows (several takes) go through in passes of SRM_ROWS_PER_PASS, as many as the instruction
 * set's registers hold, the weight block staying in L1 between passes. */
static inline __attribute__((always_inline)) void dot_rows(const int8_t *w, const int8_t *quant, int64_t stride,
                                                           int64_t rows, int64_t k,
                                                           int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
    for (int64_t r0 = 0; r0 < rows; r0 += SRM_ROWS_PER_PASS) {
        const int64_t left = rows - r0;
        const int8_t *ahead = r0 == 0 && rows > SRM_ROWS_PER_PASS ? w + SRM_PREFETCH_DISTANCE : NULL;
        int32_t part[SRM_BLOCK_N][SRM_MAX_ROWS];
        if (left >= SRM_ROWS_PER_PASS)
            dot_block(w, ahead, quant + r0 * stride, stride, SRM_ROWS_PER_PASS, k, part);
        else if (left == 2)
            dot_block(w, ahead, quant + r0 * stride, stride, 2, k, part);
        else if (left == 1)
            dot_block(w, ahead, quant + r0 * stride, stride, 1, k, part);
        else
            dot_block(w, ahead, quant + r0 * stride, stride, left, k, part);
        const int64_t done = left < SRM_ROWS_PER_PASS ? left : SRM_ROWS_PER_PASS;
        for (int i = 0; i < SRM_BLOCK_N; i++)
            for (int64_t r = 0; r < done; r++) acc[i][r0 + r] = part[i][r];
    }
}

static inline __attribute__((always_inline)) void dot_rows4(const uint8_t *w, const uint16_t *group_scale,
                                                            const int8_t *quant, const int32_t *quant_sum,
                                                            int64_t stride, int64_t sum_stride, int64_t rows,
                                                            int64_t k, float out[SRM_MAX_ROWS][SRM_BLOCK_N4]) {
    for (int64_t r0 = 0; r0 < rows; r0 += SRM_ROWS_PER_PASS) {
        const int64_t left = rows - r0;
        const int8_t *q = quant + r0 * stride;
        const int32_t *qs = quant_sum + r0 * sum_stride;
        const uint8_t *ahead = r0 == 0 && (rows > SRM_ROWS_PER_PASS || SRM_INT4_PASSES > 1) ? w + SRM_PREFETCH_DISTANCE : NULL;
        if (left >= SRM_ROWS_PER_PASS)
            dot_block4(w, ahead, group_scale, q, qs, stride, sum_stride, SRM_ROWS_PER_PASS, k, out + r0);
        else if (left == 2)
            dot_block4(w, ahead, group_scale, q, qs, stride, sum_stride, 2, k, out + r0);
        else if (left == 1)
            dot_block4(w, ahead, group_scale, q, qs, stride, sum_stride, 1, k, out + r0);
        else
            dot_block4(w, ahead, group_scale, q, qs, stride, sum_stride, left, k, out + r0);
    }
}

/* Each thread takes whole rows; the loop's end is a barrier. */
static void norm_and_quantize(const srm_decoder *m, const float *x, const float *w, const float *b) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m->rows; r++) {
        float *normed = m->normed + r * m->in_stride;
        layer_norm_row(x + r * m->hidden, m->hidden, w, b, m->eps, normed);
        quantize_input(m, normed, m->hidden, r);
    }
}

static void quantize_rows(const srm_decoder *m, const float *src, int64_t k) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m->rows; r++) quantize_input(m, src + r * m->in_stride, k, r);
}

/* ---------------------------------------------------------------- matrix products */

/* out[r, n] = row_scale[r] * (quant[r] . weight[n] rescaled) + bias[n]  (+ out[r, n] if accumulate).
 * Output channels are split between the threads; the loop's end is a barrier. */
static void linear(const srm_decoder *m, const srm_linear *lin, int64_t rows, float *out, int64_t out_stride,
                   int accumulate) {
    if (lin->bits == 4) {
        const int64_t sum_stride = m->in_stride / SRM_BLOCK_K;
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < lin->n; nb += SRM_BLOCK_N4) {
            float y[SRM_MAX_ROWS][SRM_BLOCK_N4];
            const uint8_t *w = (const uint8_t *)lin->weight + nb * lin->k / 2;
            const uint16_t *group_scale = lin->group_scale + nb * (lin->k / SRM_BLOCK_K);
            dot_rows4(w, group_scale, m->quant, m->quant_sum, m->in_stride, sum_stride, rows, lin->k, y);
            const int64_t width = lin->out_features - nb < SRM_BLOCK_N4 ? lin->out_features - nb : SRM_BLOCK_N4;
            for (int64_t r = 0; r < rows; r++) {
                float *dst = out + r * out_stride + nb;
                const float row_scale = m->row_scale[r];
                for (int64_t j = 0; j < width; j++) {
                    const float value = row_scale * y[r][j] + (lin->bias ? lin->bias[nb + j] : 0.0f);
                    dst[j] = accumulate ? dst[j] + value : value;
                }
            }
        }
        return;
    }
#pragma omp for schedule(static)
    for (int64_t nb = 0; nb < lin->n; nb += SRM_BLOCK_N) {
        int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS];
        dot_rows(lin->weight + nb * lin->k, m->quant, m->in_stride, rows, lin->k, acc);
        for (int i = 0; i < SRM_BLOCK_N && nb + i < lin->out_features; i++) {
            const int32_t shift = dot_block_excess(lin, nb + i);
            const int64_t n = nb + i;
            const float bias = lin->bias ? lin->bias[n] : 0.0f;
            for (int64_t r = 0; r < rows; r++) {
                const float value = m->row_scale[r] * lin->scale[n] * (float)(acc[i][r] - shift) + bias;
                float *dst = out + r * out_stride + n;
                *dst = accumulate ? *dst + value : value;
            }
        }
    }
}

/* ---------------------------------------------------------------- attention */

/* scores[0:len] replaced by their softmax: exp(score - max) / sum of them, in place. */
static inline void softmax_in_place(float *scores, int64_t len) {
    float top = -FLT_MAX;
#pragma omp simd reduction(max : top)
    for (int64_t t = 0; t < len; t++) top = scores[t] > top ? scores[t] : top;
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < len; t++) {
        scores[t] = fast_exp(scores[t] - top);
        total += scores[t];
    }
    const float inv = 1.0f / total;
#pragma omp simd
    for (int64_t t = 0; t < len; t++) scores[t] *= inv;
}

#define SRM_ATTEND_AHEAD 2 /* tiles ahead of the one being read whose keys and values are fetched into L1 */
#define SRM_ATTEND_FAR 4   /* and into L2 */

/* Tile `tile` of a head's `tiles` (`base`), or past its end the next head's (`next`; NULL: none). */
static inline const int8_t *tile_on(const int8_t *base, const int8_t *next, int64_t tile, int64_t tiles,
                                    int64_t tile_bytes) {
    return tile < tiles ? base + tile * tile_bytes : (next ? next + (tile - tiles) * tile_bytes : NULL);
}

/* Attention of one query over `len` cached positions, in one pass over the tiles of SRM_KEY_TILE
 * positions with a running softmax (its maximum and sum rescaled when a tile raises the maximum):
 * each tile's keys and then its values are read once, while they are in L1, and the keys and
 * values SRM_ATTEND_AHEAD tiles on are fetched meanwhile into L1, those SRM_ATTEND_FAR tiles on
 * into L2, a line of each per value read (the next head's first tiles near the end: `next_keys`,
 * `next_values`, NULL for the last head; a prefetch past what is allocated does not fault). With
 * the L1 fetches alone, a step's attention was latency-bound: on a Zen 4 it took ~1.1 ms at a 10 s
 * clip's average position in either memory mode, 0.5 ms of it arithmetic (a second pass from the
 * caches), against 0.4 ms for its bytes; with the L2 fetches too, 0.81-0.89 ms in the fast mode.
 * Two passes (all scores, then the values) left the memory idle through the softmax and read at
 * ~14% less bandwidth with 8 rows. The scores are integer dots of the query, quantised to int8,
 * with the int8 keys, rescaled by both scales. The output is a float sum of the int8 values
 * weighted by the softmax weights times each value's scale: weights stay float (8-bit weights
 * would round a long flat tail of small weights all the same way). */
static inline __attribute__((always_inline)) void attend(const float *restrict q, const int8_t *restrict keys,
                                                           const float *restrict key_scale,
                                                           const int32_t *restrict key_sum,
                                                           const int8_t *restrict values,
                                                           const float *restrict value_scale, int64_t hd, int64_t len,
                                                           const int8_t *next_keys, const int8_t *next_values,
                                                           float *restrict o) {
    int8_t query[SRM_MAX_HEAD_DIM];
    float query_scale;
    quantize_row(q, hd, query, &query_scale);
    const float scale = query_scale / sqrtf((float)hd);
    const int64_t tiles = (len + SRM_KEY_TILE - 1) / SRM_KEY_TILE, tile_bytes = SRM_KEY_TILE * hd;
    float acc[SRM_MAX_HEAD_DIM] = {0};
    float top = -FLT_MAX, total = 0.0f;
    for (int64_t tile = 0; tile < tiles; tile++) {
        const int64_t t0 = tile * SRM_KEY_TILE, ahead = tile + SRM_ATTEND_AHEAD, far = tile + SRM_ATTEND_FAR;
        const int8_t *ahead_keys = tile_on(keys, next_keys, ahead, tiles, tile_bytes);
        const int8_t *ahead_values = tile_on(values, next_values, ahead, tiles, tile_bytes);
        const int8_t *far_keys = tile_on(keys, next_keys, far, tiles, tile_bytes);
        const int8_t *far_values = tile_on(values, next_values, far, tiles, tile_bytes);
        int32_t dots[SRM_KEY_TILE];
        tile_dots(query, keys + t0 * hd, hd, dots);
        /* the tile's positions beyond `len` hold whatever was there; they are never used */
        const int64_t valid = len - t0 < SRM_KEY_TILE ? len - t0 : SRM_KEY_TILE;
        float weight[SRM_KEY_TILE];
        float tile_top = -FLT_MAX;
#pragma omp simd reduction(max : tile_top)
        for (int64_t j = 0; j < SRM_KEY_TILE; j++) {
            const float score = scale * key_scale[t0 + j] * (float)(dots[j] - SRM_QUERY_SHIFT * key_sum[t0 + j]);
            weight[j] = j < valid ? score : -FLT_MAX;
            tile_top = weight[j] > tile_top ? weight[j] : tile_top;
        }
        if (tile_top > top) {
            const float shrink = fast_exp(top - tile_top); /* ~0 on the first tile, where acc and total are still 0 */
            total *= shrink;
#pragma omp simd
            for (int64_t i = 0; i < hd; i++) acc[i] *= shrink;
            top = tile_top;
        }
        float tile_total = 0.0f;
#pragma omp simd reduction(+ : tile_total)
        for (int64_t j = 0; j < SRM_KEY_TILE; j++) {
            const float e = j < valid ? fast_exp(weight[j] - top) : 0.0f;
            tile_total += e;
            weight[j] = e * value_scale[t0 + j];
        }
        total += tile_total;
        for (int64_t j = 0; j < valid; j++) {
            const int8_t *value = values + (t0 + j) * hd;
            if (ahead_keys) {
                __builtin_prefetch(ahead_keys + j * hd, 0, 3);
                __builtin_prefetch(ahead_values + j * hd, 0, 3);
            }
            if (far_keys) {
                __builtin_prefetch(far_keys + j * hd, 0, 2);
                __builtin_prefetch(far_values + j * hd, 0, 2);
            }
#pragma omp simd
            for (int64_t i = 0; i < hd; i++) acc[i] += weight[j] * (float)value[i];
        }
    }
    const float inv = 1.0f / total;
    for (int64_t i = 0; i < hd; i++) o[i] = acc[i] * inv;
}

/* Writes position `pos` of the int8 caches from the fused qkv output, then attends over 0..pos.
 * int8 rather than bf16: every step reads the whole cache, and at 500 positions that is as many
 * bytes as a fifth of the layers' weights. */
static void self_attention(const srm_decoder *m, const srm_layer *l, int64_t pos) {
    const int64_t hd = m->head_dim, d = m->hidden, cap = m->capacity;
    const int64_t key_stride = (cap + SRM_KEY_TILE - 1) / SRM_KEY_TILE * SRM_KEY_TILE * hd;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < m->rows * m->heads; p++) {
        const int64_t r = p / m->heads, h = p % m->heads;
        const float *q = m->wide + r * m->out_stride + h * hd;
        const float *k_new = q + d, *v_new = q + 2 * d;
        int8_t *keys = l->k_cache + p * key_stride, *values = l->v_cache + p * cap * hd;
        float *key_scale = l->k_scale + p * cap, *value_scale = l->v_scale + p * cap;
        int32_t *key_sum = l->k_sum + p * cap;
        int8_t vector[SRM_MAX_HEAD_DIM];
        quantize_row(k_new, hd, vector, key_scale + pos);
        int8_t *tile = keys + pos / SRM_KEY_TILE * SRM_KEY_TILE * hd;
        int32_t sum = 0;
        for (int64_t i = 0; i < hd; i++) {
            tile[((i / 4) * SRM_KEY_TILE + pos % SRM_KEY_TILE) * 4 + i % 4] = vector[i];
            sum += vector[i];
        }
        key_sum[pos] = sum;
        quantize_row(v_new, hd, vector, value_scale + pos);
        memcpy(values + pos * hd, vector, (size_t)hd);
        float *o = m->attn + r * m->in_stride + h * hd;
        const int last = p + 1 == m->rows * m->heads;
        const int8_t *next_keys = last ? NULL : keys + key_stride, *next_values = last ? NULL : values + cap * hd;
        /* musicgen's head size as a constant: the output's accumulators stay in registers */
        if (hd == 64)
            attend(q, keys, key_scale, key_sum, values, value_scale, 64, pos + 1, next_keys, next_values, o);
        else
            attend(q, keys, key_scale, key_sum, values, value_scale, hd, pos + 1, next_keys, next_values, o);
    }
}

/* Attention of the conditional rows over the text encoder's keys and values; the unconditional
 * rows (classifier-free guidance) see no text, so their output is zero. Only the conditional
 * (row, head) pairs are shared out, so both threads get a part of the work. */
static void cross_attention(const srm_decoder *m, const srm_layer *l) {
    const int64_t hd = m->head_dim, s = m->cross_len;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp for schedule(static) nowait
    for (int64_t r = m->cond_rows; r < m->rows; r++)
        for (int64_t i = 0; i < m->hidden; i++) m->attn[r * m->in_stride + i] = 0.0f;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < m->cond_rows * m->heads; p++) {
        const int64_t r = p / m->heads, h = p % m->heads;
        float *o = m->attn + r * m->in_stride + h * hd;
        const float *q = m->wide + r * m->out_stride + h * hd;
        const float *keys = l->cross_k + p * s * hd, *values = l->cross_v + p * s * hd;
        const uint8_t *mask = m->cross_mask ? m->cross_mask + r * s : NULL;
        float *scores = m->scores + p * s;
        for (int64_t t = 0; t < s; t++) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < hd; i++) dot += q[i] * keys[t * hd + i];
            scores[t] = (mask && !mask[t]) ? -FLT_MAX : dot * scale;
        }
        softmax_in_place(scores, s);
        for (int64_t i = 0; i < hd; i++) o[i] = 0.0f;
        for (int64_t t = 0; t < s; t++) {
            const float w = scores[t];
#pragma omp simd
            for (int64_t i = 0; i < hd; i++) o[i] += w * values[t * hd + i];
        }
    }
}

/* Cross-attention of the conditional rows (rows 0 .. cond_rows - 1, the takes of one prompt: they
 * read the same text) with the projections folded into the text's keys and values (see srm_layer):
 * each row's scores are one int8 product of its normed row, and the softmax-weighted sum of the
 * folded values is added to its residual. The unconditional rows see no text: their output is
 * zero. The weights (softmax times each value's scale) are quantised to int8 per row and head, so
 * each head's sum over the text is tile_dots's exact integer product, as for the self-attention's
 * keys (a float conversion and multiply-add for every value byte, as this did before, cost a
 * 48-token prompt 0.2-0.5 ms a step beyond its bytes on a Zen 4 with fast memory). Each thread
 * streams its tiles of SRM_KEY_TILE dimensions front to back, once for every conditional row. */
static void folded_cross_attention(const srm_decoder *m, const srm_layer *l, float *x) {
    const int64_t s = m->cross_len, text = srm_value_text(s), d = m->hidden, heads = m->heads, rows = m->cond_rows;
    float *scores = m->scores; /* (cond_rows, heads, cross_len) */
    linear(m, &l->cross_keys, rows, scores, heads * s, 0);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < rows * heads; p++) {
        const int64_t h = p % heads;
        float *row = scores + p * s;
        if (m->cross_mask)
            for (int64_t t = 0; t < s; t++) row[t] = m->cross_mask[t] ? row[t] : -FLT_MAX;
        softmax_in_place(row, s);
        float top = 0.0f;
        int finite = 1;
        for (int64_t t = 0; t < s; t++) {
            row[t] *= l->cross_value_scale[h * s + t];
            top = row[t] > top ? row[t] : top; /* not fmaxf: a libm call, as in quantize_row */
            finite &= isfinite(row[t]) != 0;
        }
        /* a score that is not finite: a NaN scale, so the row's output is NaN, as torch's is */
        const float inverse = finite && top > 0.0f ? SRM_VALUE_WEIGHT_MAX / top : 0.0f;
        int8_t *weights = m->cross_weights + p * text;
        for (int64_t t = 0; t < s; t++) weights[t] = (int8_t)__builtin_rintf(finite ? row[t] * inverse : 0.0f);
        for (int64_t t = s; t < text; t++) weights[t] = 0;
        m->cross_weight_scale[p] = finite ? top / SRM_VALUE_WEIGHT_MAX : NAN;
    }
    const int64_t tiles = (d + SRM_KEY_TILE - 1) / SRM_KEY_TILE;
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; tile++) {
        float sum[SRM_MAX_ROWS][SRM_KEY_TILE] = {{0.0f}};
        for (int64_t h = 0; h < heads; h++) {
            const int8_t *values = l->cross_values + (tile * heads + h) * text * SRM_KEY_TILE;
            const int32_t *value_sum = l->cross_value_sum + h * tiles * SRM_KEY_TILE + tile * SRM_KEY_TILE;
            for (int64_t r = 0; r < rows; r++) {
                int32_t dots[SRM_KEY_TILE];
                tile_dots(m->cross_weights + (r * heads + h) * text, values, text, dots);
                const float scale = m->cross_weight_scale[r * heads + h];
#pragma omp simd
                for (int j = 0; j < SRM_KEY_TILE; j++)
                    sum[r][j] += scale * (float)(dots[j] - SRM_QUERY_SHIFT * value_sum[j]);
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            float *out = x + r * d + tile * SRM_KEY_TILE;
            for (int64_t j = 0; j < SRM_KEY_TILE && tile * SRM_KEY_TILE + j < d; j++) out[j] += sum[r][j];
        }
    }
}

/* ---------------------------------------------------------------- the step */

static void feed_forward(const srm_decoder *m, const srm_layer *l, float *x) {
    norm_and_quantize(m, x, l->ln3_weight, l->ln3_bias);
    linear(m, &l->fc1, m->rows, m->wide, m->out_stride, 0);
    const int64_t ffn = l->fc2.in_features;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m->rows; r++) {
        float *row = m->wide + r * m->out_stride;
#pragma omp simd
        for (int64_t i = 0; i < ffn; i++) row[i] = gelu(row[i]);
        quantize_input(m, row, ffn, r);
    }
    linear(m, &l->fc2, m->rows, x, m->hidden, 1);
}

/* One decoder step: x (rows, hidden) holds the input embeddings and is overwritten by the
 * residual stream; the logits land in m->logits (rows, head.n). Position `pos` of every
 * layer's KV cache is written. */
void srm_decoder_step(const srm_decoder *m, float *x, int64_t pos) {
#pragma omp parallel num_threads(m->threads)
    for (int64_t li = 0; li < m->layers; li++) {
        const srm_layer *l = &m->layer[li];
        norm_and_quantize(m, x, l->ln1_weight, l->ln1_bias);
        linear(m, &l->qkv, m->rows, m->wide, m->out_stride, 0);
        self_attention(m, l, pos);
        quantize_rows(m, m->attn, m->hidden);
        linear(m, &l->out, m->rows, x, m->hidden, 1);

        norm_and_quantize(m, x, l->ln2_weight, l->ln2_bias);
        if (l->cross_keys.n > 0) {
            folded_cross_attention(m, l, x);
        } else {
            linear(m, &l->cross_q, m->cond_rows, m->wide, m->out_stride, 0);
            cross_attention(m, l);
            quantize_rows(m, m->attn, m->hidden);
            linear(m, &l->cross_out, m->rows, x, m->hidden, 1);
        }

        feed_forward(m, l, x);
    }
#pragma omp parallel num_threads(m->threads)
    {
        norm_and_quantize(m, x, m->final_ln_weight, m->final_ln_bias);
        linear(m, &m->head, m->rows, m->logits, m->head.n, 0);
    }
}

/* One Linear over `rows` input rows already in m->quant, m->row_scale and m->quant_sum: what
 * Python's KernelLinear runs (the text encoder's products), and what the tests compare. */
void srm_linear_forward(const srm_decoder *m, const srm_linear *lin, int64_t rows, float *out, int64_t out_stride) {
#pragma omp parallel num_threads(m->threads)
    linear(m, lin, rows, out, out_stride, 0);
}

/* ---------------------------------------------------------------- the folded cross-attention's quantisation */

/* One prompt's folded keys and values for one layer (heads * length rows of `hidden` floats; the
 * keys still to be multiplied by `key_factor`) quantised into FoldedCrossAttention's buffers, which
 * come zeroed: the keys as an Int8Linear (one scale per row, the largest magnitude at 127, in
 * srm_linear's blocks, with each row's sum), the values per row into the key-tile layout of
 * srm_layer.cross_values, with each head's sums over the text. Bit for bit what packing.py's torch
 * code gives, in two passes over each row instead of torch's ~10 (a 48-token prompt's fold on a
 * Zen 4: 67-72 -> 39-40 ms with AVX-512, 81-99 -> 58-62 ms held to AVX2). A row holding a NaN or an
 * infinity is zeros with a NaN scale. The heads are shared out between the threads. */
void srm_fold_quantize(const float *keys, const float *values, int64_t heads, int64_t length, int64_t hidden,
                       float key_factor, int8_t *key_weight, float *key_scale, int32_t *key_row_sum,
                       int8_t *value_tiles, float *value_scale, int32_t *value_sum, int32_t threads) {
    const int64_t groups = (hidden + SRM_BLOCK_K - 1) / SRM_BLOCK_K;
    const int64_t width = (hidden + SRM_KEY_TILE - 1) / SRM_KEY_TILE * SRM_KEY_TILE, text = srm_value_text(length);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t h = 0; h < heads; h++) {
        int32_t *sums = value_sum + h * width;
        for (int64_t t = 0; t < length; t++) {
            const int64_t r = h * length + t;
            const float *x = keys + r * hidden;
            float top;
            int32_t finite = largest_magnitude(x, hidden, key_factor, &top);
            const float scale = (top > 1e-12f ? top : 1e-12f) / 127.0f; /* Int8Linear's clamp(min=1e-12) */
            key_scale[r] = finite ? scale : NAN;
            int32_t sum = 0;
            int8_t *block_row = key_weight + (r / SRM_BLOCK_N * groups * SRM_BLOCK_N + r % SRM_BLOCK_N) * SRM_BLOCK_K;
            for (int64_t g = 0; finite && g < groups; g++) {
                const float *chunk = x + g * SRM_BLOCK_K;
                int8_t *dst = block_row + g * SRM_BLOCK_N * SRM_BLOCK_K;
                const int64_t width_g = hidden - g * SRM_BLOCK_K < SRM_BLOCK_K ? hidden - g * SRM_BLOCK_K : SRM_BLOCK_K;
#pragma omp simd reduction(+ : sum)
                for (int64_t i = 0; i < width_g; i++) {
                    const float q = __builtin_rintf(chunk[i] * key_factor / scale);
                    dst[i] = (int8_t)(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
                    sum += dst[i];
                }
            }
            key_row_sum[r] = sum;

            const float *v = values + r * hidden;
            finite = largest_magnitude(v, hidden, 1.0f, &top);
            /* quantize_rows's: torch's 127.0 / top is top's reciprocal times 127, a rounding apart */
            const float inverse = top > 0.0f ? 1.0f / top * 127.0f : 0.0f;
            value_scale[r] = finite ? top / 127.0f : NAN;
            int8_t *group = value_tiles + (h * (text / SRM_VALUE_GROUP) + t / SRM_VALUE_GROUP) * SRM_KEY_TILE * SRM_VALUE_GROUP +
                            t % SRM_VALUE_GROUP;
            for (int64_t tile = 0; finite && tile < width / SRM_KEY_TILE; tile++) {
                const int64_t c0 = tile * SRM_KEY_TILE, dims = hidden - c0 < SRM_KEY_TILE ? hidden - c0 : SRM_KEY_TILE;
                int8_t q[SRM_KEY_TILE];
#pragma omp simd
                for (int64_t j = 0; j < dims; j++) {
                    q[j] = (int8_t)__builtin_rintf(v[c0 + j] * inverse);
                    sums[c0 + j] += q[j];
                }
                int8_t *dst = group + tile * heads * text * SRM_KEY_TILE;
                for (int64_t j = 0; j < dims; j++) dst[j * SRM_VALUE_GROUP] = q[j];
            }
        }
    }
}

/* ---------------------------------------------------------------- EnCodec's LSTM */

static inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

static inline float tanh_fast(float x) { return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f); }

/* One LSTM layer (torch's gate order: input, forget, cell, output) over `steps` time steps of
 * m->rows sequences (the takes of a clip) from zero state. gates_in (steps, rows, 4 hidden) holds
 * each step's input product plus both biases: one matrix product for all steps, done by the
 * caller. The recurrent product is the int8 `w_hh` (4 hidden, hidden) with the previous h
 * quantised to int8, as in the decoder step: a quarter of float32's bytes, which every step
 * streams (16 MB a step for EnCodec 32 kHz's float32 layer) once for all the sequences. Writes h
 * (steps, rows, hidden). Scratch from m: quant, row_scale, quant_sum (rows, in_stride), wide
 * (rows, out_stride) and normed (rows, hidden: the cell states). */
void srm_lstm(const srm_decoder *m, const srm_linear *w_hh, const float *gates_in, int64_t steps, float *h_out) {
    const int64_t hidden = w_hh->in_features, rows = m->rows, width = m->out_stride, pieces = (hidden + 63) / 64;
    float *cell = m->normed, *recurrent = m->wide;
#pragma omp parallel num_threads(m->threads)
    {
#pragma omp for schedule(static)
        for (int64_t j = 0; j < rows * width; j++) recurrent[j] = 0.0f; /* h = 0 before the first step */
        for (int64_t t = 0; t < steps; t++) {
            if (t > 0) {
#pragma omp for schedule(static)
                for (int64_t r = 0; r < rows; r++) quantize_input(m, h_out + ((t - 1) * rows + r) * hidden, hidden, r);
                linear(m, w_hh, rows, recurrent, width, 0);
            }
            /* pieces of 64 units of one sequence: a contiguous, vectorised inner loop */
#pragma omp for schedule(static)
            for (int64_t piece = 0; piece < rows * pieces; piece++) {
                const int64_t r = piece / pieces, first = piece % pieces * 64;
                const int64_t last = first + 64 < hidden ? first + 64 : hidden;
                const float *in = gates_in + (t * rows + r) * 4 * hidden, *rec = recurrent + r * width;
                float *c_row = cell + r * hidden, *h_row = h_out + (t * rows + r) * hidden;
                for (int64_t j = first; j < last; j++) {
                    const float input = sigmoid(in[j] + rec[j]);
                    const float forget = sigmoid(in[hidden + j] + rec[hidden + j]);
                    const float candidate = tanh_fast(in[2 * hidden + j] + rec[2 * hidden + j]);
                    const float output = sigmoid(in[3 * hidden + j] + rec[3 * hidden + j]);
                    const float c = (t > 0 ? forget * c_row[j] : 0.0f) + input * candidate;
                    c_row[j] = c;
                    h_row[j] = output * tanh_fast(c);
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- EnCodec's ELU */

/* exp(x) - 1 for x <= 0, accurate near 0 too: 2^n (fraction + 1) - 1, which is the fraction
 * itself where n is 0 (|x| < ~0.35), with no cancellation. */
static inline float fast_expm1_negative(float x) {
    const exp_parts e = split_exp(x < -87.0f ? -87.0f : x);
    return e.fraction * e.scale + (e.scale - 1.0f);
}

static inline float elu_value(float x, float alpha) {
    const float negative = alpha * fast_expm1_negative(x < 0.0f ? x : 0.0f);
    return x > 0.0f || x != x ? x : negative; /* NaN stays NaN */
}

/* float32 to bfloat16, rounding to nearest even as torch does (no NaN here: elu_value keeps the
 * input's, and bf16 inputs' NaNs survive the round trip). */
static inline uint16_t float_to_bf16(float f) {
    const union {
        float value;
        uint32_t bits;
    } u = {.value = f};
    return (uint16_t)((u.bits + 0x7FFFu + ((u.bits >> 16) & 1u)) >> 16);
}

#define SRM_ELU_PIECE 16384 /* elements of a row a thread takes at a time */

/* ELU (alpha (exp(x) - 1) below 0, x above) of `rows` rows of `length` elements, each row
 * contiguous, rows `in_stride` and `out_stride` elements apart (a trimmed view needs no copy); in
 * place where out == in. Input and output are float32 or bfloat16 (`in_bf16`, `out_bf16`: the
 * upsampler computes in bf16 on CPUs with bf16 dot products, and its last ELU feeds the float32
 * output layers). torch's ELU took 3-7x as long as here: it computes a precise expm1 for every
 * element. */
void srm_elu(const void *in, int64_t in_stride, void *out, int64_t out_stride, int64_t rows, int64_t length,
             float alpha, int32_t in_bf16, int32_t out_bf16, int32_t threads) {
    const int64_t pieces = (length + SRM_ELU_PIECE - 1) / SRM_ELU_PIECE;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < rows * pieces; task++) {
        const int64_t row = task / pieces, first = task % pieces * SRM_ELU_PIECE;
        const int64_t last = first + SRM_ELU_PIECE < length ? first + SRM_ELU_PIECE : length;
        const int64_t from = row * in_stride, to = row * out_stride;
        if (in_bf16 && out_bf16) {
            const uint16_t *src = (const uint16_t *)in + from;
            uint16_t *dst = (uint16_t *)out + to;
#pragma omp simd
            for (int64_t i = first; i < last; i++) dst[i] = float_to_bf16(elu_value(bf16_to_float(src[i]), alpha));
        } else if (in_bf16) {
            const uint16_t *src = (const uint16_t *)in + from;
            float *dst = (float *)out + to;
#pragma omp simd
            for (int64_t i = first; i < last; i++) dst[i] = elu_value(bf16_to_float(src[i]), alpha);
        } else {
            const float *src = (const float *)in + from;
            float *dst = (float *)out + to;
#pragma omp simd
            for (int64_t i = first; i < last; i++) dst[i] = elu_value(src[i], alpha);
        }
    }
}

/* ---------------------------------------------------------------- EnCodec's convolutions */

#define SRM_CONV_GROUP_BYTES (256 << 10) /* weight blocks a pass over the tiles takes: they stay in L2 */

/* Rows pad_left + rows + pad_right of a convolution's input (channels <= SRM_CONV_MAX_CHANNELS), each quantised to int16 with its own
 * scale (row_scale: the largest magnitude / SRM_CONV_INPUT_MAX), after an ELU where `elu`. Padding
 * rows are zero, or where `reflect` the rows mirrored about the first and last (rows > pad). A row
 * with a NaN or infinity is zeros with a NaN scale. */
void srm_conv_quantize(const float *in, int64_t in_stride, int64_t rows, int64_t channels, int64_t pad_left,
                       int64_t pad_right, int32_t reflect, int32_t elu, float alpha, int16_t *q, int64_t q_stride,
                       float *row_scale, int32_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < pad_left + rows + pad_right; j++) {
        int16_t *dst = q + j * q_stride;
        int64_t src = j - pad_left;
        if ((src < 0 || src >= rows) && !reflect) {
            memset(dst, 0, (size_t)channels * sizeof *dst);
            row_scale[j] = 0.0f;
            continue;
        }
        src = src < 0 ? -src : (src >= rows ? 2 * (rows - 1) - src : src);
        const float *x = in + src * in_stride;
        float activated[SRM_CONV_MAX_CHANNELS];
        if (elu) {
            /* a loop of its own: with the ELU in the loop below, gcc left it scalar (10x slower) */
#pragma omp simd
            for (int64_t c = 0; c < channels; c++) activated[c] = elu_value(x[c], alpha);
            x = activated;
        }
        float top;
        const int32_t finite = largest_magnitude(x, channels, 1.0f, &top);
        if (!finite) { /* as torch's sums would be: every output that reads this step NaN */
            memset(dst, 0, (size_t)channels * sizeof *dst);
            row_scale[j] = NAN;
            continue;
        }
        const float inv = top > 0.0f ? (float)SRM_CONV_INPUT_MAX / top : 0.0f;
        row_scale[j] = top / (float)SRM_CONV_INPUT_MAX;
#pragma omp simd
        for (int64_t c = 0; c < channels; c++) dst[c] = (int16_t)__builtin_rintf(x[c] * inv);
    }
}

/* out[t, o] = bias[o] + weight_scale[o] * sum over taps i and channels c of q[t + i dilation, c] *
 * weight[o, i, c] (with q's row scales), for t < out_rows and o < out_features: a stride-1
 * convolution over quantised rows (srm_conv_quantize). Tiles of SRM_CONV_ROWS rows times one weight
 * block; the blocks go in groups whose weights stay in L2 while every tile passes them, the tiles
 * of a group split between the threads. */
void srm_conv(const int16_t *q, const float *row_scale, int64_t q_stride, int64_t out_rows, int64_t taps,
              int64_t dilation, int64_t channels, const int16_t *weight, const float *weight_scale, const float *bias,
              int64_t n, float *out, int64_t out_stride, int64_t out_features, int32_t threads) {
    const int64_t tiles = (out_rows + SRM_CONV_ROWS - 1) / SRM_CONV_ROWS, blocks = n / SRM_CONV_BLOCK_N;
    const int64_t panel = taps * channels * SRM_CONV_BLOCK_N;
    const int64_t fit = SRM_CONV_GROUP_BYTES / (panel * (int64_t)sizeof *weight);
    const int64_t group = fit > 0 ? fit : 1;
#pragma omp parallel num_threads(threads)
    for (int64_t b0 = 0; b0 < blocks; b0 += group) {
        const int64_t b1 = b0 + group < blocks ? b0 + group : blocks;
#pragma omp for collapse(2) schedule(static)
        for (int64_t tile = 0; tile < tiles; tile++)
            for (int64_t b = b0; b < b1; b++) {
                const int64_t t0 = tile * SRM_CONV_ROWS;
                const int64_t rows = out_rows - t0 < SRM_CONV_ROWS ? out_rows - t0 : SRM_CONV_ROWS;
                const int16_t *inputs[SRM_CONV_ROWS];
                const float *scales[SRM_CONV_ROWS];
                for (int r = 0; r < SRM_CONV_ROWS; r++) {
                    const int64_t t = t0 + (r < rows ? r : rows - 1); /* a short tile repeats its last row */
                    inputs[r] = q + t * q_stride;
                    scales[r] = row_scale + t;
                }
                float sum[SRM_CONV_ROWS][SRM_CONV_BLOCK_N];
                conv_tile(inputs, scales, q_stride * dilation, dilation, taps, channels, weight + b * panel, sum);
                const int64_t first = b * SRM_CONV_BLOCK_N;
                const int64_t width = out_features - first < SRM_CONV_BLOCK_N ? out_features - first : SRM_CONV_BLOCK_N;
                for (int64_t r = 0; r < rows; r++) {
                    float *dst = out + (t0 + r) * out_stride + first;
                    for (int64_t j = 0; j < width; j++)
                        dst[j] = fmaf(sum[r][j], weight_scale[first + j], bias ? bias[first + j] : 0.0f);
                }
            }
    }
}

/* ---------------------------------------------------------------- sampling */

/* The k-th largest of values[0:n], 1 <= k <= n (Hoare's selection; reorders `values`). */
static float kth_largest(float *values, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    const int64_t target = k - 1;
    while (lo < hi) {
        const float pivot = values[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (values[i] > pivot) i++;
            while (values[j] < pivot) j--;
            if (i <= j) {
                const float swap = values[i];
                values[i++] = values[j];
                values[j--] = swap;
            }
        }
        if (target <= j)
            hi = j;
        else if (target >= i)
            lo = i;
        else
            return values[target];
    }
    return values[target];
}

/* One token from `scores[0:vocab]`: the first best one when greedy, else a draw among the top_k
 * with weights exp((score - best) / temperature), by inverse CDF in vocabulary order: the first
 * token at which the running sum of weights passes uniform * total. Ties at the k-th score go
 * to the lowest ids. scratch: 2 * vocab floats. */
static int64_t sample_token(const float *scores, int64_t vocab, float inv_temperature, int64_t top_k, float uniform,
                            float *scratch) {
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; v++) best = scores[v] > scores[best] ? v : best;
    if (inv_temperature == 0.0f) return best;
    float *selection = scratch, *weights = scratch + vocab;
    if (top_k <= 0 || top_k > vocab) top_k = vocab;
    memcpy(selection, scores, (size_t)vocab * sizeof *scores);
    const float threshold = kth_largest(selection, vocab, top_k);
    int64_t ties = top_k;
    for (int64_t v = 0; v < vocab; v++) ties -= scores[v] > threshold;
    float total = 0.0f;
    for (int64_t v = 0; v < vocab; v++) {
        const int chosen = scores[v] > threshold || (scores[v] == threshold && ties-- > 0);
        weights[v] = chosen ? fast_exp((scores[v] - scores[best]) * inv_temperature) : 0.0f;
        total += weights[v];
    }
    const float target = uniform * total;
    float running = 0.0f;
    int64_t pick = best;
    for (int64_t v = 0; v < vocab; v++) {
        if (weights[v] <= 0.0f) continue;
        running += weights[v];
        pick = v;
        if (running > target) break;
    }
    return pick;
}

/* Next tokens from the step's logits: guidance (unconditional rows after the prompts' rows)
 * combined as uncond + (cond - uncond) * guidance, then one token per prompt and codebook, the
 * (prompt, codebook) pairs shared between the threads (several takes draw 16 a step), each with
 * its own scratch. */
static void sample_step(const srm_decoder *m, const srm_generation *g, const float *uniforms) {
    const int guided = m->rows == 2 * g->prompts;
    const int64_t pairs = g->prompts * g->codebooks;
#pragma omp parallel for num_threads(m->threads > 0 ? m->threads : 1) schedule(static) if (pairs > 1)
    for (int64_t p = 0; p < pairs; p++) {
        const int64_t b = p / g->codebooks, c = p % g->codebooks;
        float *scores = g->scratch + p * 3 * g->vocab, *work = scores + g->vocab;
        const float *cond = m->logits + b * m->head.n + c * g->vocab;
        const float *uncond = cond + g->prompts * m->head.n;
        for (int64_t v = 0; v < g->vocab; v++)
            scores[v] = guided ? uncond[v] + (cond[v] - uncond[v]) * g->guidance : cond[v];
        g->picked[p] = sample_token(scores, g->vocab, g->inv_temperature, g->top_k, uniforms[p], work);
    }
}

void srm_generate(const srm_decoder *m, const srm_generation *g, float *x, int64_t first, int64_t last) {
    const int64_t d = m->hidden, len = g->length;
    for (int64_t t = first; t < last; t++) {
        for (int64_t r = 0; r < m->rows; r++) {
            const int64_t b = r % g->prompts;
            float *row = x + r * d;
            for (int64_t i = 0; i < d; i++) row[i] = 0.0f;
            for (int64_t c = 0; c < g->codebooks; c++) {
                const float *e = g->embed + (c * (g->vocab + 1) + g->sequence[(b * g->codebooks + c) * len + t]) * d;
                for (int64_t i = 0; i < d; i++) row[i] += e[i];
            }
            for (int64_t i = 0; i < d; i++) row[i] += g->positions[t * d + i];
        }
        srm_decoder_step(m, x, t);
        sample_step(m, g, g->uniforms + t * g->prompts * g->codebooks);
        for (int64_t b = 0; b < g->prompts; b++)
            for (int64_t c = 0; c < g->codebooks; c++)
                g->sequence[(b * g->codebooks + c) * len + t + 1] =
                    g->forced[c * len + t + 1] ? g->pad_token : g->picked[b * g->codebooks + c];
    }
}

/* The sampler's test entry (tests/support/native_sampling.py): one step's sampling from the logits
 * already in m->logits. Production samples inside srm_generate. */
void srm_sample(const srm_decoder *m, const srm_generation *g, const float *uniforms) { sample_step(m, g, uniforms); }

/* ---------------------------------------------------------------- ABI */

/* Every struct's size and every field's offset and size, and the constants Python packs by: what
 * handler/native/abi.py checks its ctypes mirrors and packing constants against at load, so a
 * struct edited on one side only is refused instead of read at the wrong offsets. */
#define SRM_STRUCT(type) {#type, 0, (int64_t)sizeof(type)}
#define SRM_FIELD(type, field) {#type "." #field, (int64_t)offsetof(type, field), (int64_t)sizeof(((type *)0)->field)}
#define SRM_CONSTANT(name) {#name, name}

static const srm_abi_field abi_fields[] = {
    SRM_STRUCT(srm_linear),
    SRM_FIELD(srm_linear, weight), SRM_FIELD(srm_linear, scale), SRM_FIELD(srm_linear, row_sum),
    SRM_FIELD(srm_linear, group_scale), SRM_FIELD(srm_linear, bias), SRM_FIELD(srm_linear, n),
    SRM_FIELD(srm_linear, k), SRM_FIELD(srm_linear, in_features), SRM_FIELD(srm_linear, out_features),
    SRM_FIELD(srm_linear, bits),

    SRM_STRUCT(srm_layer),
    SRM_FIELD(srm_layer, ln1_weight), SRM_FIELD(srm_layer, ln1_bias), SRM_FIELD(srm_layer, ln2_weight),
    SRM_FIELD(srm_layer, ln2_bias), SRM_FIELD(srm_layer, ln3_weight), SRM_FIELD(srm_layer, ln3_bias),
    SRM_FIELD(srm_layer, qkv), SRM_FIELD(srm_layer, out), SRM_FIELD(srm_layer, cross_q),
    SRM_FIELD(srm_layer, cross_out), SRM_FIELD(srm_layer, fc1), SRM_FIELD(srm_layer, fc2),
    SRM_FIELD(srm_layer, k_cache), SRM_FIELD(srm_layer, v_cache), SRM_FIELD(srm_layer, k_scale),
    SRM_FIELD(srm_layer, v_scale), SRM_FIELD(srm_layer, k_sum), SRM_FIELD(srm_layer, cross_k),
    SRM_FIELD(srm_layer, cross_v), SRM_FIELD(srm_layer, cross_keys), SRM_FIELD(srm_layer, cross_values),
    SRM_FIELD(srm_layer, cross_value_scale), SRM_FIELD(srm_layer, cross_value_sum),

    SRM_STRUCT(srm_decoder),
    SRM_FIELD(srm_decoder, layers), SRM_FIELD(srm_decoder, rows), SRM_FIELD(srm_decoder, cond_rows),
    SRM_FIELD(srm_decoder, hidden), SRM_FIELD(srm_decoder, heads), SRM_FIELD(srm_decoder, head_dim),
    SRM_FIELD(srm_decoder, capacity), SRM_FIELD(srm_decoder, cross_len), SRM_FIELD(srm_decoder, eps),
    SRM_FIELD(srm_decoder, threads), SRM_FIELD(srm_decoder, layer), SRM_FIELD(srm_decoder, final_ln_weight),
    SRM_FIELD(srm_decoder, final_ln_bias), SRM_FIELD(srm_decoder, head), SRM_FIELD(srm_decoder, cross_mask),
    SRM_FIELD(srm_decoder, normed), SRM_FIELD(srm_decoder, quant), SRM_FIELD(srm_decoder, row_scale),
    SRM_FIELD(srm_decoder, quant_sum), SRM_FIELD(srm_decoder, wide), SRM_FIELD(srm_decoder, attn),
    SRM_FIELD(srm_decoder, scores), SRM_FIELD(srm_decoder, cross_weights),
    SRM_FIELD(srm_decoder, cross_weight_scale), SRM_FIELD(srm_decoder, logits), SRM_FIELD(srm_decoder, in_stride),
    SRM_FIELD(srm_decoder, out_stride),

    SRM_STRUCT(srm_generation),
    SRM_FIELD(srm_generation, embed), SRM_FIELD(srm_generation, positions), SRM_FIELD(srm_generation, prompts),
    SRM_FIELD(srm_generation, codebooks), SRM_FIELD(srm_generation, vocab), SRM_FIELD(srm_generation, length),
    SRM_FIELD(srm_generation, guidance), SRM_FIELD(srm_generation, inv_temperature),
    SRM_FIELD(srm_generation, top_k), SRM_FIELD(srm_generation, uniforms), SRM_FIELD(srm_generation, forced),
    SRM_FIELD(srm_generation, pad_token), SRM_FIELD(srm_generation, sequence), SRM_FIELD(srm_generation, scratch),
    SRM_FIELD(srm_generation, picked),
};

static const srm_abi_constant abi_constants[] = {
    SRM_CONSTANT(SRM_BLOCK_K),      SRM_CONSTANT(SRM_BLOCK_N),      SRM_CONSTANT(SRM_BLOCK_N4),
    SRM_CONSTANT(SRM_MAX_ROWS),     SRM_CONSTANT(SRM_KEY_TILE),     SRM_CONSTANT(SRM_MAX_HEAD_DIM),
    SRM_CONSTANT(SRM_VALUE_GROUP),  SRM_CONSTANT(SRM_VALUE_WEIGHT_MAX), SRM_CONSTANT(SRM_QUERY_SHIFT),  SRM_CONSTANT(SRM_CONV_BLOCK_N),
    SRM_CONSTANT(SRM_CONV_CHUNK),   SRM_CONSTANT(SRM_CONV_INPUT_MAX), SRM_CONSTANT(SRM_CONV_WEIGHT_MAX),
    SRM_CONSTANT(SRM_CONV_MAX_CHANNELS),
};

static const srm_abi_info abi_info = {
    SRM_ABI_VERSION,
    SRM_DOTS,
    sizeof abi_fields / sizeof abi_fields[0],
    abi_fields,
    sizeof abi_constants / sizeof abi_constants[0],
    abi_constants,
};

const srm_abi_info *srm_abi(void) { return &abi_info; }
