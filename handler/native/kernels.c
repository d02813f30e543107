/* One MusicGen decoder step on the CPU, all layers in one call (see handler/kernels.py).
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
 * the query is quantised to int8 for its integer dots with the keys. Everything else (softmax
 * weights, layer norms, GELU, residuals) is float32.
 *
 * The matrix products use AVX512-VNNI or AVX2 when the build targets them, plain C otherwise.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define SRM_VNNI 1
#elif defined(__AVX2__)
#include <immintrin.h>
#define SRM_AVX2 1
#endif

#define SRM_BLOCK_K 64 /* 8-bit weights: (n / 4, k / 64, 4, 64) int8 */
#define SRM_BLOCK_N 4
#define SRM_BLOCK_N4 16 /* 4-bit weights: blocks of 16 output channels, one per 32-bit lane */
#define SRM_MAX_ROWS 8
#define SRM_KEY_TILE 32 /* key cache: (capacity / 32, head_dim / 4, 32, 4) per (row, head) */
#define SRM_MAX_HEAD_DIM 256
#define SRM_VALUE_BLOCK 64 /* folded cross-attention values: (hidden / 64, vectors, 64) */

typedef struct {
    /* 8 bits: (n / 4, k / 64, 4, 64) int8. 4 bits: (n / 16, k / 64, 8, 16, 4) bytes, weight + 8 in
     * each nibble: in block b, group g, byte (m, j, i) holds input 64 g + 8 m + i of channel
     * 16 b + j in its low nibble and input 64 g + 8 m + 4 + i in its high one, so the low (high)
     * nibbles of 64 bytes are four consecutive inputs of each of the 16 channels, one channel a
     * 32-bit lane. Zero padded to n and k. */
    const int8_t *weight;
    const float *scale;     /* 8 bits: (n) per output channel */
    const int32_t *row_sum; /* 8 bits: (n) sum of each output channel's weights */
    const uint16_t *group_scale; /* 4 bits: (n / 16, k / 64, 16) bfloat16, one per 64 inputs of a channel */
    const float *bias;      /* (n) or NULL */
    int64_t n, k;           /* padded sizes: n % 4 == 0 (n % 16 == 0 for 4 bits), k % 64 == 0 */
    int64_t in_features;    /* k before padding */
    int64_t out_features;   /* n before padding: outputs past it are not written */
    int64_t bits;           /* 8 or 4 */
} srm_linear;

typedef struct {
    const float *ln1_weight, *ln1_bias, *ln2_weight, *ln2_bias, *ln3_weight, *ln3_bias;
    srm_linear qkv, out, cross_q, cross_out, fc1, fc2;
    int8_t *k_cache;                 /* (rows, heads, capacity / 32, head_dim / 4, 32, 4), see attend */
    int8_t *v_cache;                 /* (rows, heads, capacity, head_dim) */
    float *k_scale, *v_scale;        /* (rows, heads, capacity): one scale per cached key and value */
    int32_t *k_sum;                  /* (rows, heads, capacity): sum of each cached key's int8 values */
    const float *cross_k, *cross_v;  /* (cond_rows, heads, cross_len, head_dim) float32 */
    /* One prompt's cross-attention with its projections folded in (used when cross_keys.n > 0):
     * vector (h, t) of cross_keys is key t of head h times the head's query weights / sqrt(head_dim),
     * so one product gives every score; value (h, t) is the head's value t times its output weights. */
    srm_linear cross_keys;           /* (heads * cross_len, hidden) 8 bits */
    const int8_t *cross_values;      /* (hidden / 64, heads * cross_len, 64), zero padded: one scale per vector */
    const float *cross_value_scale;  /* (heads * cross_len) */
} srm_layer;

typedef struct {
    int64_t layers, rows, cond_rows, hidden, heads, head_dim, capacity, cross_len;
    float eps;
    int32_t threads;
    const srm_layer *layer;
    const float *final_ln_weight, *final_ln_bias;
    srm_linear head;
    const uint8_t *cross_mask; /* (cond_rows, cross_len), 1 = attend; NULL = attend to all */
    /* scratch */
    float *normed;   /* (rows, in_stride) */
    int8_t *quant;   /* (rows, in_stride) */
    float *row_scale; /* (rows) */
    int32_t *quant_sum; /* (rows, in_stride / 64): the sum of each group of 64 quantised inputs */
    float *wide;     /* (rows, out_stride) */
    float *attn;     /* (rows, in_stride) */
    float *scores;   /* (rows * heads, max(capacity, cross_len)) */
    float *logits;   /* (rows, head.n) */
    int64_t in_stride, out_stride;
} srm_decoder;

/* What srm_generate needs beyond the decoder: the token tables, the sampling settings and the
 * delay pattern, and the token sequence it extends. */
typedef struct {
    const float *embed;      /* (codebooks * (vocab + 1), hidden): one table per codebook, pad token last */
    const float *positions;  /* (>= length, hidden) position embeddings */
    int64_t prompts, codebooks, vocab, length;
    float guidance;          /* used when the decoder has twice as many rows as prompts */
    float inv_temperature;   /* 0: greedy */
    int64_t top_k;           /* <= 0 or >= vocab: all tokens */
    const float *uniforms;   /* (length - 1, prompts, codebooks) in [0, 1): one draw per token */
    const uint8_t *forced;   /* (codebooks, length): 1 where the delay pattern puts the pad token */
    int64_t pad_token;
    int64_t *sequence;       /* (prompts, codebooks, length): column 0 holds the start tokens */
    float *scratch;          /* 3 * vocab */
    int64_t *picked;         /* (prompts, codebooks) */
} srm_generation;

/* ---------------------------------------------------------------- scalar helpers */

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* exp(x) to ~2 ulp, in a form compilers vectorise (libm's expf is a scalar call). */
static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = __builtin_rintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* GELU with erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7), as torch's default GELU. */
static inline float gelu(float x) {
    const float z = fabsf(x) * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    float erf_z = 1.0f - poly * fast_exp(-z * z);
    erf_z = x < 0.0f ? -erf_z : erf_z;
    return 0.5f * x * (1.0f + erf_z);
}

/* ---------------------------------------------------------------- row operations */

/* Quantise `src[0:k]` to int8 with one symmetric scale. */
static void quantize_row(const float *src, int64_t k, int8_t *dst, float *scale) {
    float top = 0.0f;
#pragma omp simd reduction(max : top)
    for (int64_t i = 0; i < k; i++) {
        const float magnitude = fabsf(src[i]);
        top = magnitude > top ? magnitude : top; /* not fmaxf: a libm call the compiler won't vectorise */
    }
    const float s = top / 127.0f;
    const float inv = top > 0.0f ? 127.0f / top : 0.0f;
#pragma omp simd
    for (int64_t i = 0; i < k; i++) dst[i] = (int8_t)__builtin_rintf(src[i] * inv);
    *scale = s;
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

/* ---------------------------------------------------------------- int8 matrix product */

/* acc[i][r] = sum_k weight[block row i, k] * quant[r, k] for one block of 4 output channels. */
static inline __attribute__((always_inline)) void dot_block(const int8_t *w, const int8_t *quant, int64_t stride, int64_t rows, int64_t k,
                             int32_t acc[SRM_BLOCK_N][SRM_MAX_ROWS]) {
#if defined(SRM_VNNI)
    /* vpdpbusd multiplies unsigned by signed bytes: the input is shifted by +128 (xor of the sign
     * bit) and 128 * row_sum is taken off afterwards. */
    __m512i sum[SRM_BLOCK_N][SRM_MAX_ROWS];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) sum[i][r] = _mm512_setzero_si512();
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K) {
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
#elif defined(SRM_AVX2)
    /* vpmaddubsw multiplies unsigned by signed bytes with int16 saturation: |w| times x with w's
     * sign keeps every pair sum within int16 (weights and inputs are in [-127, 127]). */
    __m256i sum[SRM_BLOCK_N][SRM_MAX_ROWS];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) sum[i][r] = _mm256_setzero_si256();
    for (int64_t kb = 0; kb < k; kb += SRM_BLOCK_K) {
        for (int half = 0; half < 2; half++) {
            for (int i = 0; i < SRM_BLOCK_N; i++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + kb * SRM_BLOCK_N + i * 64 + half * 32));
                const __m256i w_abs = _mm256_sign_epi8(wv, wv);
                for (int64_t r = 0; r < rows; r++) {
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(quant + r * stride + kb + half * 32));
                    const __m256i pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, wv));
                    sum[i][r] = _mm256_add_epi32(sum[i][r], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
    }
    for (int i = 0; i < SRM_BLOCK_N; i++)
        for (int64_t r = 0; r < rows; r++) {
            const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum[i][r]), _mm256_extracti128_si256(sum[i][r], 1));
            const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
            acc[i][r] = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
        }
#else
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
#endif
}

/* out[r][j] = sum over groups g of scale[j, g] * (weight[j, g] . quant[r, g]) for one block of 16
 * output channels of 4-bit weights (see srm_linear), j a vector lane. The weights are multiplied
 * as stored (weight + 8, unsigned), and 8 * the group's input sum is taken off. */
static inline __attribute__((always_inline)) void dot_block4(const uint8_t *w, const uint16_t *group_scale, const int8_t *quant,
                              const int32_t *quant_sum, int64_t stride, int64_t sum_stride, int64_t rows, int64_t k,
                              float out[SRM_MAX_ROWS][SRM_BLOCK_N4]) {
    const int64_t groups = k / SRM_BLOCK_K;
#if defined(SRM_VNNI)
    __m512 sum[SRM_MAX_ROWS];
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t r = 0; r < rows; r++) sum[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2;
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
#elif defined(SRM_AVX2)
    /* Eight channels a register: half h of each 64-byte run. vpmaddubsw's int16 pair sums of
     * weights <= 15 and inputs within +-127 stay below 2^15 when eight of them are added. */
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int half = 0; half < 2; half++) {
        __m256 sum[SRM_MAX_ROWS];
        for (int64_t r = 0; r < rows; r++) sum[r] = _mm256_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            const uint8_t *wg = w + g * SRM_BLOCK_K * SRM_BLOCK_N4 / 2 + half * 32;
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
                }
            }
            const __m128i scale_bits = _mm_loadu_si128((const __m128i *)(group_scale + g * SRM_BLOCK_N4 + half * 8));
            const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(scale_bits), 16));
            for (int64_t r = 0; r < rows; r++) {
                __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(pairs[r][0], ones), _mm256_madd_epi16(pairs[r][1], ones));
                dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * quant_sum[r * sum_stride + g]));
                sum[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, sum[r]);
            }
        }
        for (int64_t r = 0; r < rows; r++) _mm256_storeu_ps(out[r] + half * 8, sum[r]);
    }
#else
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
#endif
}

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
            /* Two rows (one prompt with guidance) is the common case: with `rows` a constant the
             * accumulators stay in registers. */
            if (rows == 2)
                dot_block4(w, group_scale, m->quant, m->quant_sum, m->in_stride, sum_stride, 2, lin->k, y);
            else
                dot_block4(w, group_scale, m->quant, m->quant_sum, m->in_stride, sum_stride, rows, lin->k, y);
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
        if (rows == 2)
            dot_block(lin->weight + nb * lin->k, m->quant, m->in_stride, 2, lin->k, acc);
        else
            dot_block(lin->weight + nb * lin->k, m->quant, m->in_stride, rows, lin->k, acc);
        for (int i = 0; i < SRM_BLOCK_N && nb + i < lin->out_features; i++) {
#if defined(SRM_VNNI)
            const int32_t shift = 128 * lin->row_sum[nb + i];
#else
            const int32_t shift = 0;
#endif
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

/* Softmax-weighted sum for one query: scores[0:len] in, out[0:head_dim] = sum_t p_t * value_t. */
static inline void softmax_in_place(float *scores, int64_t len) {
    float top = -FLT_MAX;
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

#if defined(SRM_VNNI)
#define SRM_QUERY_SHIFT 128 /* vpdpbusd takes the query unsigned: shifted by +128, see tile_dots */
#else
#define SRM_QUERY_SHIFT 0
#endif

/* dots[j] = query . key j for the SRM_KEY_TILE keys of one tile, laid out (head_dim / 4, 32, 4):
 * four dimensions of a key are adjacent, so one vpdpbusd lane takes one key's four products.
 * The VNNI build returns the dot of the shifted query (+128 * the key's sum). */
static inline __attribute__((always_inline)) void tile_dots(const int8_t *restrict query, const int8_t *restrict tile,
                                                              int64_t hd, int32_t dots[SRM_KEY_TILE]) {
#if defined(SRM_VNNI)
    if (hd % 16 == 0) {
        __m512i low = _mm512_setzero_si512(), high = _mm512_setzero_si512();
        for (int64_t g = 0; g < hd / 4; g++) {
            int32_t four;
            memcpy(&four, query + 4 * g, sizeof four);
            const __m512i q = _mm512_set1_epi32(four ^ (int32_t)0x80808080);
            low = _mm512_dpbusd_epi32(low, q, _mm512_loadu_si512(tile + g * SRM_KEY_TILE * 4));
            high = _mm512_dpbusd_epi32(high, q, _mm512_loadu_si512(tile + g * SRM_KEY_TILE * 4 + 64));
        }
        _mm512_storeu_si512(dots, low);
        _mm512_storeu_si512(dots + 16, high);
        return;
    }
#endif
    for (int j = 0; j < SRM_KEY_TILE; j++) dots[j] = 0;
    for (int64_t g = 0; g < hd / 4; g++)
        for (int j = 0; j < SRM_KEY_TILE; j++)
            for (int e = 0; e < 4; e++)
                dots[j] += ((int32_t)query[4 * g + e] + SRM_QUERY_SHIFT) * (int32_t)tile[(g * SRM_KEY_TILE + j) * 4 + e];
}

/* Attention of one query over `len` cached positions. The scores are integer dots of the query,
 * quantised to int8, with the int8 keys, rescaled by both scales. The output is a float sum of
 * the int8 values weighted by the softmax weights times each value's scale: weights stay float
 * (8-bit weights would round a long flat tail of small weights all the same way). */
static inline __attribute__((always_inline)) void attend(const float *restrict q, const int8_t *restrict keys,
                                                           const float *restrict key_scale,
                                                           const int32_t *restrict key_sum,
                                                           const int8_t *restrict values,
                                                           const float *restrict value_scale, int64_t hd, int64_t len,
                                                           float *restrict scores, float *restrict o) {
    int8_t query[SRM_MAX_HEAD_DIM];
    float query_scale;
    quantize_row(q, hd, query, &query_scale);
    const float scale = query_scale / sqrtf((float)hd);
    for (int64_t t0 = 0; t0 < len; t0 += SRM_KEY_TILE) {
        int32_t dots[SRM_KEY_TILE];
        tile_dots(query, keys + t0 * hd, hd, dots);
        /* the tile's positions beyond `len` hold whatever was there; they are never used */
        const int64_t valid = len - t0 < SRM_KEY_TILE ? len - t0 : SRM_KEY_TILE;
        for (int64_t j = 0; j < valid; j++)
            scores[t0 + j] = scale * key_scale[t0 + j] * (float)(dots[j] - SRM_QUERY_SHIFT * key_sum[t0 + j]);
    }
    softmax_in_place(scores, len);
    float acc[SRM_MAX_HEAD_DIM] = {0};
    for (int64_t t = 0; t < len; t++) {
        const int8_t *value = values + t * hd;
        const float w = scores[t] * value_scale[t];
#pragma omp simd
        for (int64_t i = 0; i < hd; i++) acc[i] += w * (float)value[i];
    }
    for (int64_t i = 0; i < hd; i++) o[i] = acc[i];
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
        float *scores = m->scores + p * m->capacity;
        float *o = m->attn + r * m->in_stride + h * hd;
        /* musicgen's head size as a constant: the output's accumulators stay in registers */
        if (hd == 64)
            attend(q, keys, key_scale, key_sum, values, value_scale, 64, pos + 1, scores, o);
        else
            attend(q, keys, key_scale, key_sum, values, value_scale, hd, pos + 1, scores, o);
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
        float *scores = m->scores + p * (m->capacity > s ? m->capacity : s);
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

/* Cross-attention of the one conditional row (row 0) with the projections folded into the text's
 * keys and values (see srm_layer): the scores are one int8 product of the normed row, and the
 * softmax-weighted sum of the folded values is added to the residual. The unconditional rows see
 * no text: their output is zero. The values are stored in blocks of 64 dimensions, so each
 * thread streams its blocks front to back. */
static void folded_cross_attention(const srm_decoder *m, const srm_layer *l, float *x) {
    const int64_t s = m->cross_len, d = m->hidden, vectors = m->heads * s;
    float *weights = m->scores; /* (heads, cross_len) */
    linear(m, &l->cross_keys, 1, weights, vectors, 0);
#pragma omp for schedule(static)
    for (int64_t h = 0; h < m->heads; h++) {
        float *row = weights + h * s;
        if (m->cross_mask)
            for (int64_t t = 0; t < s; t++) row[t] = m->cross_mask[t] ? row[t] : -FLT_MAX;
        softmax_in_place(row, s);
        for (int64_t t = 0; t < s; t++) row[t] *= l->cross_value_scale[h * s + t];
    }
#pragma omp for schedule(static)
    for (int64_t block = 0; block < (d + SRM_VALUE_BLOCK - 1) / SRM_VALUE_BLOCK; block++) {
        float sum[SRM_VALUE_BLOCK] = {0.0f}; /* several vector registers: independent chains */
        const int8_t *values = l->cross_values + block * vectors * SRM_VALUE_BLOCK;
        for (int64_t j = 0; j < vectors; j++) {
            const float w = weights[j];
#pragma omp simd
            for (int i = 0; i < SRM_VALUE_BLOCK; i++) sum[i] += w * (float)values[j * SRM_VALUE_BLOCK + i];
        }
        float *out = x + block * SRM_VALUE_BLOCK;
        for (int64_t i = 0; i < SRM_VALUE_BLOCK && block * SRM_VALUE_BLOCK + i < d; i++) out[i] += sum[i];
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

/* Exposed for tests: one Linear over `rows` input rows already in m->quant, m->row_scale and
 * m->quant_sum. */
void srm_linear_forward(const srm_decoder *m, const srm_linear *lin, int64_t rows, float *out, int64_t out_stride) {
#pragma omp parallel num_threads(m->threads)
    linear(m, lin, rows, out, out_stride, 0);
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
 * combined as uncond + (cond - uncond) * guidance, then one token per prompt and codebook. */
static void sample_step(const srm_decoder *m, const srm_generation *g, const float *uniforms) {
    float *scores = g->scratch, *work = g->scratch + g->vocab;
    const int guided = m->rows == 2 * g->prompts;
    for (int64_t b = 0; b < g->prompts; b++)
        for (int64_t c = 0; c < g->codebooks; c++) {
            const float *cond = m->logits + b * m->head.n + c * g->vocab;
            const float *uncond = cond + g->prompts * m->head.n;
            for (int64_t v = 0; v < g->vocab; v++)
                scores[v] = guided ? uncond[v] + (cond[v] - uncond[v]) * g->guidance : cond[v];
            const float uniform = uniforms[b * g->codebooks + c];
            g->picked[b * g->codebooks + c] = sample_token(scores, g->vocab, g->inv_temperature, g->top_k, uniform, work);
        }
}

/* Decode steps first..last-1 of a generation without returning to Python: each step embeds the
 * tokens at position t, runs the decoder, samples, and writes position t + 1 of the sequence
 * (the pad token where the delay pattern forces it). x: (rows, hidden) scratch. */
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

/* Exposed for tests: one step's sampling from the logits already in m->logits. */
void srm_sample(const srm_decoder *m, const srm_generation *g, const float *uniforms) { sample_step(m, g, uniforms); }
