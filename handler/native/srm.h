/* The native decoder step's shared layouts: block constants, the structs Python fills (mirrored
 * field by field in handler/native/abi.py, checked at load through srm_abi), and the exported
 * functions. The kernels themselves are in kernels.c and the dots_*.h files it includes. */
#ifndef SRM_H
#define SRM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Bumped when srm_abi_info changes shape: Python reads it before anything else. */
#define SRM_ABI_VERSION 1

/* Block layouts; handler/native/packing.py packs the weights in them (C_CONSTANTS there). */
#define SRM_BLOCK_K 64 /* 8-bit weights: (n / 4, k / 64, 4, 64) int8 */
#define SRM_BLOCK_N 4
#define SRM_BLOCK_N4 16 /* 4-bit weights: blocks of 16 output channels, one per 32-bit lane */
#define SRM_MAX_ROWS 8
#define SRM_KEY_TILE 32 /* key cache: (capacity / 32, head_dim / 4, 32, 4) per (row, head) */
#define SRM_MAX_HEAD_DIM 256
/* Folded cross-attention values: (hidden / SRM_KEY_TILE, heads, text / 4, SRM_KEY_TILE, 4) int8, the
 * text padded to whole groups of SRM_VALUE_GROUP positions with zero vectors: tile_dots's layout,
 * the softmax weights (int8, at most SRM_VALUE_WEIGHT_MAX) in the place of the query. */
#define SRM_VALUE_GROUP 4
#define SRM_VALUE_WEIGHT_MAX 127

/* EnCodec's float32 convolutions in 16-bit integers (srm_conv): weights (n / 16, taps, channels / 2,
 * 16, 2) int16, two consecutive input channels of one output channel side by side (vpmaddwd's
 * pairs), one scale per output channel; inputs one scale per time step. The integer sums stay
 * exact: a chunk of SRM_CONV_CHUNK channels of one tap is at most 128 * 8191 * 2047 < 2^31, then
 * rescaled into a float32 sum. */
#define SRM_CONV_BLOCK_N 16
#define SRM_CONV_ROWS 6 /* output time steps a tile */
#define SRM_CONV_CHUNK 128
#define SRM_CONV_INPUT_MAX 8191
#define SRM_CONV_WEIGHT_MAX 2047
#define SRM_CONV_MAX_CHANNELS 4096

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
    /* (rows, heads, capacity), then SRM_KEY_TILE spare elements: attend reads whole tiles of them */
    float *k_scale, *v_scale;        /* one scale per cached key and value */
    int32_t *k_sum;                  /* sum of each cached key's int8 values */
    const float *cross_k, *cross_v;  /* (cond_rows, heads, cross_len, head_dim) float32 */
    /* The cross-attention of the one prompt every conditional row reads (its takes), with the
     * projections folded in (used when cross_keys.n > 0):
     * vector (h, t) of cross_keys is key t of head h times the head's query weights / sqrt(head_dim),
     * so one product gives every score; value (h, t) is the head's value t times its output weights. */
    srm_linear cross_keys;           /* (heads * cross_len, hidden) 8 bits */
    const int8_t *cross_values;      /* see SRM_VALUE_GROUP, one scale per vector */
    const float *cross_value_scale;  /* (heads * cross_len) */
    const int32_t *cross_value_sum;  /* (heads, hidden padded to SRM_KEY_TILE): each head's values summed over the text */
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
    float *scores;   /* (rows * heads, cross_len): the cross-attention's weights */
    int8_t *cross_weights;     /* (cond_rows * heads, cross_len padded to SRM_VALUE_GROUP): folded, quantised */
    float *cross_weight_scale; /* (cond_rows * heads) */
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
    float *scratch;          /* (prompts * codebooks, 3 * vocab): one per token drawn at once */
    int64_t *picked;         /* (prompts, codebooks) */
} srm_generation;

/* What the library was compiled with, for the load-time check against the Python mirrors. */
typedef struct {
    const char *name; /* "srm_linear" (offset 0, size: the struct's) or "srm_linear.weight" */
    int64_t offset, size;
} srm_abi_field;

typedef struct {
    const char *name; /* "SRM_BLOCK_K" */
    int64_t value;
} srm_abi_constant;

typedef struct {
    int64_t version; /* SRM_ABI_VERSION: first, so a reader can tell the rest's shape */
    const char *dots; /* the dot kernels compiled in: "plain", "avx2", "avxvnni", "avx512vnni",
                       * "neon", "neon_dotprod" or "neon_i8mm" */
    int64_t fields;
    const srm_abi_field *field;
    int64_t constants;
    const srm_abi_constant *constant;
} srm_abi_info;

/* bfloat16 (the 4-bit weights' group scales, EnCodec's activations) to float32; a union rather
 * than memcpy, which stops gcc vectorising callers. */
static inline float bf16_to_float(uint16_t h) {
    const union {
        uint32_t bits;
        float value;
    } u = {.bits = (uint32_t)h << 16};
    return u.value;
}

/* A text of `length` positions as the folded values hold it: in whole groups of SRM_VALUE_GROUP. */
static inline int64_t srm_value_text(int64_t length) {
    return (length + SRM_VALUE_GROUP - 1) / SRM_VALUE_GROUP * SRM_VALUE_GROUP;
}

#define SRM_PREFETCH_DISTANCE 16384 /* how far ahead in a thread's weights prefetch_ahead fetches */

/* The cache lines of `bytes` at `ahead` + `offset`, fetched into L2 (L1 holds the block being
 * multiplied): `ahead` is SRM_PREFETCH_DISTANCE bytes on in the thread's run of weight blocks
 * (past a product's end, the next product's: the step's weights lie in the order it reads them).
 * Issued where a block takes several passes (more rows than the registers hold, or an
 * instruction set's halves of a 4-bit block), whose later ones re-read L1 while the memory would
 * otherwise idle: on a Zen 4, 4 takes' `int8` products 14-25% faster, AVX2's 2-row `int4` ones
 * 17%. With one pass the hardware's own prefetching does better (2-row `int8` 5% slower with it).
 * NULL: nothing to fetch. */
static inline __attribute__((always_inline)) void prefetch_ahead(const void *ahead, int64_t offset, int64_t bytes) {
    if (ahead)
        for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch((const char *)ahead + offset + line, 0, 2);
}

const srm_abi_info *srm_abi(void);
void srm_decoder_step(const srm_decoder *m, float *x, int64_t pos);
void srm_linear_forward(const srm_decoder *m, const srm_linear *lin, int64_t rows, float *out, int64_t out_stride);
void srm_fold_quantize(const float *keys, const float *values, int64_t heads, int64_t length, int64_t hidden,
                       float key_factor, int8_t *key_weight, float *key_scale, int32_t *key_row_sum,
                       int8_t *value_tiles, float *value_scale, int32_t *value_sum, int32_t threads);
void srm_generate(const srm_decoder *m, const srm_generation *g, float *x, int64_t first, int64_t last);
void srm_sample(const srm_decoder *m, const srm_generation *g, const float *uniforms);
void srm_lstm(const srm_decoder *m, const srm_linear *w_hh, const float *gates_in, int64_t steps, float *h_out);
void srm_elu(const void *in, int64_t in_stride, void *out, int64_t out_stride, int64_t rows, int64_t length,
             float alpha, int32_t in_bf16, int32_t out_bf16, int32_t threads);
void srm_conv_quantize(const float *in, int64_t in_stride, int64_t rows, int64_t channels, int64_t pad_left,
                       int64_t pad_right, int32_t reflect, int32_t elu, float alpha, int16_t *q, int64_t q_stride,
                       float *row_scale, int32_t threads);
void srm_conv(const int16_t *q, const float *row_scale, int64_t q_stride, int64_t out_rows, int64_t taps,
              int64_t dilation, int64_t channels, const int16_t *weight, const float *weight_scale, const float *bias,
              int64_t n, float *out, int64_t out_stride, int64_t out_features, int32_t threads);

#endif
