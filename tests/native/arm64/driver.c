/* Checks one build of the native library against the plain-C reference on the same inputs, with
 * no Python: run under qemu-aarch64 for the arm64 builds (tests/native/test_arm64.py), where torch
 * need not run.
 *
 *   driver REFERENCE.so CANDIDATE.so [EXPECTED_DOTS]
 *
 * Compares the two libraries' srm_abi (every field and constant), then srm_linear_forward on
 * int8 and int4 layers of several sizes (padded and not) and row counts, then srm_decoder_step
 * on small random decoders (self-attention through tile_dots over several key tiles, both
 * cross-attention paths, int8 and int4 weights). Everything is filled from a deterministic LCG.
 * int8 products are exact integers rescaled by the same code in both builds: equal bit for bit.
 * Where the candidate's float arithmetic may round differently (int4's per-group float sums), the
 * outputs must agree within 1e-5 of the output's largest magnitude. Prints a summary and exits
 * non-zero on any mismatch. */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srm.h"

typedef const srm_abi_info *(*abi_fn)(void);
typedef void (*linear_fn)(const srm_decoder *, const srm_linear *, int64_t, float *, int64_t);
typedef void (*step_fn)(const srm_decoder *, float *, int64_t);
typedef void (*elu_fn)(const void *, int64_t, void *, int64_t, int64_t, int64_t, float, int32_t, int32_t, int32_t);

typedef struct {
    const char *path;
    abi_fn abi;
    linear_fn linear_forward;
    step_fn decoder_step;
    elu_fn elu;
} library;

static int failures = 0, checks = 0;

/* ---------------------------------------------------------------- deterministic inputs */

static uint64_t lcg_state;

static void seed(uint64_t s) { lcg_state = s * 6364136223846793005ULL + 1442695040888963407ULL; }

static uint32_t next_u32(void) {
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(lcg_state >> 33);
}

static int32_t uniform_int(int32_t lo, int32_t hi) { return lo + (int32_t)(next_u32() % (uint32_t)(hi - lo + 1)); }

static float uniform_float(float lo, float hi) { return lo + (hi - lo) * (float)(next_u32() >> 7) / (float)(1u << 24); }

static void *zeroed(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static float *random_floats(int64_t count, float lo, float hi) {
    float *p = zeroed((size_t)count * sizeof *p);
    for (int64_t i = 0; i < count; i++) p[i] = uniform_float(lo, hi);
    return p;
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static uint16_t to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return (uint16_t)(bits >> 16);
}

/* A Linear of random weights packed as srm.h describes: int8 in [-128, 127] (the full range:
 * the NEON kernels must be exact for any int8), or int4 in [-8, 7] stored + 8. Padding is zero. */
static srm_linear random_linear(int64_t bits, int64_t out_features, int64_t in_features, int with_bias) {
    srm_linear lin = {0};
    lin.bits = bits;
    lin.in_features = in_features;
    lin.out_features = out_features;
    lin.k = round_up(in_features, SRM_BLOCK_K);
    lin.n = round_up(out_features, bits == 4 ? SRM_BLOCK_N4 : SRM_BLOCK_N);
    const int64_t n = lin.n, k = lin.k;
    int8_t *w = zeroed((size_t)(n * k));
    for (int64_t o = 0; o < out_features; o++)
        for (int64_t i = 0; i < in_features; i++) w[o * k + i] = (int8_t)(bits == 4 ? uniform_int(-8, 7) : uniform_int(-128, 127));
    if (bits == 8) {
        int8_t *packed = zeroed((size_t)(n * k));
        float *scale = zeroed((size_t)n * sizeof *scale);
        int32_t *row_sum = zeroed((size_t)n * sizeof *row_sum);
        for (int64_t o = 0; o < n; o++) {
            scale[o] = o < out_features ? uniform_float(1e-4f, 1e-2f) : 0.0f;
            for (int64_t i = 0; i < k; i++) {
                packed[((o / SRM_BLOCK_N) * (k / SRM_BLOCK_K) + i / SRM_BLOCK_K) * SRM_BLOCK_N * SRM_BLOCK_K +
                       (o % SRM_BLOCK_N) * SRM_BLOCK_K + i % SRM_BLOCK_K] = w[o * k + i];
                row_sum[o] += w[o * k + i];
            }
        }
        lin.weight = packed;
        lin.scale = scale;
        lin.row_sum = row_sum;
    } else {
        uint8_t *packed = zeroed((size_t)(n * k / 2));
        uint16_t *group_scale = zeroed((size_t)(n * (k / SRM_BLOCK_K)) * sizeof *group_scale);
        const int64_t groups = k / SRM_BLOCK_K;
        for (int64_t b = 0; b < n / SRM_BLOCK_N4; b++)
            for (int64_t g = 0; g < groups; g++) {
                uint8_t *block = packed + (b * groups + g) * SRM_BLOCK_K * SRM_BLOCK_N4 / 2;
                for (int m = 0; m < 8; m++)
                    for (int j = 0; j < SRM_BLOCK_N4; j++)
                        for (int i = 0; i < 4; i++) {
                            const int8_t *row = w + (b * SRM_BLOCK_N4 + j) * k + g * SRM_BLOCK_K + 8 * m;
                            block[(m * SRM_BLOCK_N4 + j) * 4 + i] = (uint8_t)((row[i] + 8) | ((row[4 + i] + 8) << 4));
                        }
                for (int j = 0; j < SRM_BLOCK_N4; j++)
                    group_scale[(b * groups + g) * SRM_BLOCK_N4 + j] = to_bf16(uniform_float(1e-3f, 2e-2f));
            }
        lin.weight = (const int8_t *)packed;
        lin.group_scale = group_scale;
    }
    free(w);
    lin.bias = with_bias ? random_floats(n, -0.5f, 0.5f) : NULL;
    return lin;
}

/* ---------------------------------------------------------------- comparisons */

/* Equal bit for bit (NaN sentinels included) when `exact`, else within tol * the reference's
 * largest magnitude. Prints one line. */
static void compare(const char *what, const float *ref, const float *got, int64_t count, int exact) {
    float top = 0.0f, worst = 0.0f;
    int64_t differing = 0, bad = 0;
    for (int64_t i = 0; i < count; i++)
        if (isfinite(ref[i]) && fabsf(ref[i]) > top) top = fabsf(ref[i]);
    const float tol = 1e-5f * top;
    for (int64_t i = 0; i < count; i++) {
        if (memcmp(&ref[i], &got[i], sizeof(float)) == 0) continue;
        differing++;
        const float err = fabsf(ref[i] - got[i]);
        if (!(err <= tol) || exact) bad++;
        if (err > worst || err != err) worst = err;
    }
    checks++;
    if (bad) failures++;
    printf("%-4s %-58s %8lld values, %6lld differ, max |diff| %.3g (max |ref| %.3g)\n", bad ? "FAIL" : "ok", what,
           (long long)count, (long long)differing, (double)worst, (double)top);
}

/* ---------------------------------------------------------------- the ABI */

static void compare_abi(const library *ref, const library *cand, const char *expected_dots) {
    const srm_abi_info *a = ref->abi(), *b = cand->abi();
    int bad = 0;
    if (a->version != b->version || a->fields != b->fields || a->constants != b->constants) bad = 1;
    for (int64_t i = 0; !bad && i < a->fields; i++)
        if (strcmp(a->field[i].name, b->field[i].name) || a->field[i].offset != b->field[i].offset ||
            a->field[i].size != b->field[i].size) {
            printf("     field %s: %lld/%lld vs %s: %lld/%lld\n", a->field[i].name, (long long)a->field[i].offset,
                   (long long)a->field[i].size, b->field[i].name, (long long)b->field[i].offset, (long long)b->field[i].size);
            bad = 1;
        }
    for (int64_t i = 0; !bad && i < a->constants; i++)
        if (strcmp(a->constant[i].name, b->constant[i].name) || a->constant[i].value != b->constant[i].value) {
            printf("     constant %s = %lld vs %s = %lld\n", a->constant[i].name, (long long)a->constant[i].value,
                   b->constant[i].name, (long long)b->constant[i].value);
            bad = 1;
        }
    for (int64_t i = 0; i < b->constants; i++)
        if (!strcmp(b->constant[i].name, "SRM_QUERY_SHIFT") && b->constant[i].value != 0) {
            printf("     the candidate's SRM_QUERY_SHIFT is %lld, not 0\n", (long long)b->constant[i].value);
            bad = 1;
        }
    if (strcmp(a->dots, "plain")) {
        printf("     the reference's dot kernels are %s, not plain\n", a->dots);
        bad = 1;
    }
    if (expected_dots && strcmp(b->dots, expected_dots)) {
        printf("     the candidate's dot kernels are %s, not %s\n", b->dots, expected_dots);
        bad = 1;
    }
    checks++;
    failures += bad;
    printf("%-4s abi: version %lld, %lld fields, %lld constants; dots %s vs %s\n", bad ? "FAIL" : "ok",
           (long long)b->version, (long long)b->fields, (long long)b->constants, a->dots, b->dots);
}

/* ---------------------------------------------------------------- srm_linear_forward */

static void check_linear(const library *ref, const library *cand, int64_t bits, int64_t out_features,
                         int64_t in_features, int64_t rows) {
    seed((uint64_t)(bits * 1000003 + out_features * 1009 + in_features * 13 + rows));
    const srm_linear lin = random_linear(bits, out_features, in_features, (out_features & 1) == 0);
    const int64_t in_stride = lin.k + SRM_BLOCK_K; /* wider than the layer, as in a decoder */
    int8_t *quant = zeroed((size_t)(rows * in_stride));
    int32_t *quant_sum = zeroed((size_t)(rows * (in_stride / SRM_BLOCK_K)) * sizeof *quant_sum);
    float *row_scale = zeroed((size_t)rows * sizeof *row_scale);
    for (int64_t r = 0; r < rows; r++) {
        /* the full int8 range: the kernels must be exact for any int8 input (the quantiser's is +-127) */
        for (int64_t i = 0; i < in_features; i++) quant[r * in_stride + i] = (int8_t)uniform_int(-128, 127);
        for (int64_t g = 0; g < in_stride / SRM_BLOCK_K; g++)
            for (int64_t i = 0; i < SRM_BLOCK_K; i++) quant_sum[r * (in_stride / SRM_BLOCK_K) + g] += quant[r * in_stride + g * SRM_BLOCK_K + i];
        row_scale[r] = uniform_float(1e-3f, 1e-1f);
    }
    srm_decoder m = {0};
    m.rows = rows;
    m.threads = 2;
    m.quant = quant;
    m.quant_sum = quant_sum;
    m.row_scale = row_scale;
    m.in_stride = in_stride;
    const int64_t out_stride = lin.n + 3;
    float *outputs[2];
    const library *libs[2] = {ref, cand};
    for (int l = 0; l < 2; l++) {
        outputs[l] = zeroed((size_t)(rows * out_stride) * sizeof(float));
        for (int64_t i = 0; i < rows * out_stride; i++) outputs[l][i] = NAN; /* what must stay unwritten stays NaN */
        libs[l]->linear_forward(&m, &lin, rows, outputs[l], out_stride);
    }
    char what[128];
    snprintf(what, sizeof what, "linear int%lld %lld -> %lld (padded %lld -> %lld), %lld rows", (long long)bits,
             (long long)in_features, (long long)out_features, (long long)lin.k, (long long)lin.n, (long long)rows);
    compare(what, outputs[0], outputs[1], rows * out_stride, bits == 8);
    free(outputs[0]);
    free(outputs[1]);
    free(quant);
    free(quant_sum);
    free(row_scale);
}

/* ---------------------------------------------------------------- srm_decoder_step */

typedef struct {
    int64_t bits, layers, rows, cond_rows, hidden, heads, ffn, vocab, capacity, cross_len, folded, steps;
} decoder_config;

/* A random decoder of `c`'s shape with its scratch and zeroed caches; the same for the same c. */
static srm_decoder random_decoder(const decoder_config *c) {
    seed((uint64_t)(c->bits * 7 + c->hidden * 131 + c->heads * 17 + c->folded * 3 + c->layers));
    srm_decoder m = {0};
    m.layers = c->layers;
    m.rows = c->rows;
    m.cond_rows = c->cond_rows;
    m.hidden = c->hidden;
    m.heads = c->heads;
    m.head_dim = c->hidden / c->heads;
    m.capacity = c->capacity;
    m.cross_len = c->cross_len;
    m.eps = 1e-5f;
    m.threads = 2;
    const int64_t d = c->hidden, hd = m.head_dim, pairs = c->rows * c->heads, vectors = c->heads * c->cross_len;
    srm_layer *layers = zeroed((size_t)c->layers * sizeof *layers);
    int64_t in_stride = 0, out_stride = 0;
    for (int64_t li = 0; li < c->layers; li++) {
        srm_layer *l = &layers[li];
        l->ln1_weight = random_floats(d, 0.8f, 1.2f);
        l->ln1_bias = random_floats(d, -0.1f, 0.1f);
        l->ln2_weight = random_floats(d, 0.8f, 1.2f);
        l->ln2_bias = random_floats(d, -0.1f, 0.1f);
        l->ln3_weight = random_floats(d, 0.8f, 1.2f);
        l->ln3_bias = random_floats(d, -0.1f, 0.1f);
        l->qkv = random_linear(c->bits, 3 * d, d, 0);
        l->out = random_linear(c->bits, d, d, 1);
        l->fc1 = random_linear(c->bits, c->ffn, d, 1);
        l->fc2 = random_linear(c->bits, d, c->ffn, 1);
        const srm_linear *all[] = {&l->qkv, &l->out, &l->fc1, &l->fc2, &l->cross_q, &l->cross_out, &l->cross_keys};
        if (c->folded) {
            l->cross_keys = random_linear(8, vectors, d, 0);
            /* (tiles, heads, text / 4, SRM_KEY_TILE, 4): see SRM_VALUE_GROUP */
            const int64_t tiles = round_up(d, SRM_KEY_TILE) / SRM_KEY_TILE, text = srm_value_text(c->cross_len);
            int8_t *values = zeroed((size_t)(tiles * c->heads * text * SRM_KEY_TILE));
            int32_t *value_sum = zeroed((size_t)(c->heads * tiles * SRM_KEY_TILE) * sizeof(int32_t));
            for (int64_t h = 0; h < c->heads; h++)
                for (int64_t t = 0; t < c->cross_len; t++)
                    for (int64_t i = 0; i < d; i++) {
                        const int8_t v = (int8_t)uniform_int(-127, 127);
                        const int64_t tile = i / SRM_KEY_TILE, j = i % SRM_KEY_TILE;
                        values[(((tile * c->heads + h) * text + t - t % 4) * SRM_KEY_TILE + 4 * j) + t % 4] = v;
                        value_sum[h * tiles * SRM_KEY_TILE + i] += v;
                    }
            l->cross_values = values;
            l->cross_value_scale = random_floats(vectors, 1e-3f, 1e-2f);
            l->cross_value_sum = value_sum;
        } else {
            l->cross_q = random_linear(c->bits, d, d, 1);
            l->cross_out = random_linear(c->bits, d, d, 1);
            l->cross_k = random_floats(c->cond_rows * vectors * hd, -1.0f, 1.0f);
            l->cross_v = random_floats(c->cond_rows * vectors * hd, -1.0f, 1.0f);
        }
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
            in_stride = all[i]->k > in_stride ? all[i]->k : in_stride;
            out_stride = all[i]->n > out_stride ? all[i]->n : out_stride;
        }
        const int64_t tiles = round_up(c->capacity, SRM_KEY_TILE);
        l->k_cache = zeroed((size_t)(pairs * tiles * hd));
        l->v_cache = zeroed((size_t)(pairs * c->capacity * hd));
        /* a tile to spare past the end, as srm.h asks: attention reads whole tiles of them */
        l->k_scale = zeroed((size_t)(pairs * c->capacity + SRM_KEY_TILE) * sizeof(float));
        l->v_scale = zeroed((size_t)(pairs * c->capacity + SRM_KEY_TILE) * sizeof(float));
        l->k_sum = zeroed((size_t)(pairs * c->capacity + SRM_KEY_TILE) * sizeof(int32_t));
    }
    m.layer = layers;
    m.final_ln_weight = random_floats(d, 0.8f, 1.2f);
    m.final_ln_bias = random_floats(d, -0.1f, 0.1f);
    m.head = random_linear(c->bits, c->vocab, d, 0);
    in_stride = m.head.k > in_stride ? m.head.k : in_stride;
    if (c->cross_len > 2) {
        uint8_t *mask = zeroed((size_t)(c->cond_rows * c->cross_len));
        for (int64_t i = 0; i < c->cond_rows * c->cross_len; i++) mask[i] = i % c->cross_len != 1; /* one masked token */
        m.cross_mask = mask;
    }
    m.in_stride = in_stride;
    m.out_stride = out_stride;
    m.normed = zeroed((size_t)(c->rows * in_stride) * sizeof(float));
    m.quant = zeroed((size_t)(c->rows * in_stride));
    m.row_scale = zeroed((size_t)c->rows * sizeof(float));
    m.quant_sum = zeroed((size_t)(c->rows * (in_stride / SRM_BLOCK_K)) * sizeof(int32_t));
    m.wide = zeroed((size_t)(c->rows * out_stride) * sizeof(float));
    m.attn = zeroed((size_t)(c->rows * in_stride) * sizeof(float));
    m.scores = zeroed((size_t)(pairs * (c->capacity > c->cross_len ? c->capacity : c->cross_len)) * sizeof(float));
    m.cross_weights = zeroed((size_t)(c->cond_rows * c->heads * srm_value_text(c->cross_len)));
    m.cross_weight_scale = zeroed((size_t)(c->cond_rows * c->heads) * sizeof(float));
    m.logits = zeroed((size_t)(c->rows * m.head.n) * sizeof(float));
    return m;
}

/* Steps 0..steps-1 of the same random decoder in both builds on the same inputs: the logits and
 * residual stream after every step. */
static void check_decoder(const library *ref, const library *cand, const decoder_config *c) {
    srm_decoder m[2] = {random_decoder(c), random_decoder(c)};
    const library *libs[2] = {ref, cand};
    const int64_t d = c->hidden;
    float *x[2] = {zeroed((size_t)(c->rows * d) * sizeof(float)), zeroed((size_t)(c->rows * d) * sizeof(float))};
    const int exact = c->bits == 8;
    int bad = 0;
    float worst_logits = 0.0f, worst_x = 0.0f, top = 0.0f;
    int64_t differing = 0;
    for (int64_t t = 0; t < c->steps; t++) {
        seed((uint64_t)(1000 + t));
        float *input = random_floats(c->rows * d, -1.0f, 1.0f);
        for (int l = 0; l < 2; l++) {
            memcpy(x[l], input, (size_t)(c->rows * d) * sizeof(float));
            libs[l]->decoder_step(&m[l], x[l], t);
        }
        free(input);
        const int64_t nl = c->rows * m[0].head.n;
        for (int pass = 0; pass < 2; pass++) {
            const float *a = pass ? x[0] : m[0].logits, *b = pass ? x[1] : m[1].logits;
            const int64_t count = pass ? c->rows * d : nl;
            float peak = 0.0f, err = 0.0f;
            for (int64_t i = 0; i < count; i++) peak = fabsf(a[i]) > peak ? fabsf(a[i]) : peak;
            for (int64_t i = 0; i < count; i++) {
                if (memcmp(&a[i], &b[i], sizeof(float)) == 0) continue;
                differing++;
                const float e = fabsf(a[i] - b[i]);
                err = e > err || e != e ? e : err;
                if (exact || !(e <= 1e-5f * peak)) bad = 1;
            }
            if (pass) worst_x = err > worst_x ? err : worst_x;
            else worst_logits = err > worst_logits ? err : worst_logits;
            top = peak > top ? peak : top;
        }
    }
    checks++;
    failures += bad;
    char what[160];
    snprintf(what, sizeof what, "decoder int%lld, %lld layers, %lld rows, hidden %lld, %lld heads of %lld, %s cross, %lld steps",
             (long long)c->bits, (long long)c->layers, (long long)c->rows, (long long)d, (long long)c->heads,
             (long long)(d / c->heads), c->folded ? "folded" : "plain", (long long)c->steps);
    printf("%-4s %s: %lld values differ, max |diff| logits %.3g, x %.3g (max |ref| %.3g)\n", bad ? "FAIL" : "ok", what,
           (long long)differing, (double)worst_logits, (double)worst_x, (double)top);
}

/* ---------------------------------------------------------------- EnCodec's ELU */

/* srm_elu on rows 3 elements longer than they are read (a trimmed view), float32 in and out, then
 * bfloat16 in and out, and bfloat16 in with float32 out. The vector exp may round differently
 * from the scalar one: float32 outputs within the tolerance, bf16 ones within one bf16 rounding. */
static void check_elu(const library *ref, const library *cand) {
    enum { rows = 5, length = 20000, stride = length + 3, count = rows * length };
    float *x = random_floats(rows * stride, -12.0f, 4.0f);
    x[7] = 0.0f, x[8] = -1e-7f, x[9] = -100.0f;
    uint16_t *x16 = zeroed(rows * stride * sizeof *x16);
    for (int64_t i = 0; i < rows * stride; i++) x16[i] = to_bf16(x[i]);
    float *want = zeroed(count * sizeof *want), *got = zeroed(count * sizeof *got);
    uint16_t *want16 = zeroed(count * sizeof *want16), *got16 = zeroed(count * sizeof *got16);
    ref->elu(x, stride, want, length, rows, length, 0.5f, 0, 0, 2);
    cand->elu(x, stride, got, length, rows, length, 0.5f, 0, 0, 2);
    compare("elu float32", want, got, count, 0);
    ref->elu(x16, stride, want, length, rows, length, 1.0f, 1, 0, 2);
    cand->elu(x16, stride, got, length, rows, length, 1.0f, 1, 0, 2);
    compare("elu bfloat16 to float32", want, got, count, 0);
    ref->elu(x16, stride, want16, length, rows, length, 1.0f, 1, 1, 2);
    cand->elu(x16, stride, got16, length, rows, length, 1.0f, 1, 1, 2);
    int64_t apart = 0; /* more than one bfloat16 rounding (2^-8 relative) apart */
    for (int64_t i = 0; i < count; i++) {
        const uint32_t wide[2] = {(uint32_t)want16[i] << 16, (uint32_t)got16[i] << 16};
        float a, b;
        memcpy(&a, &wide[0], sizeof a);
        memcpy(&b, &wide[1], sizeof b);
        if (!(fabsf(a - b) <= 0x1p-8f * fabsf(a))) apart++;
    }
    checks++;
    if (apart) failures++;
    printf("%-4s %-58s %8lld values, %6lld more than a rounding apart\n", apart ? "FAIL" : "ok", "elu bfloat16",
           (long long)count, (long long)apart);
    free(x), free(x16), free(want), free(got), free(want16), free(got16);
}

/* ---------------------------------------------------------------- main */

static library open_library(const char *path) {
    library lib = {path, NULL, NULL, NULL, NULL};
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        exit(2);
    }
    lib.abi = (abi_fn)dlsym(handle, "srm_abi");
    lib.linear_forward = (linear_fn)dlsym(handle, "srm_linear_forward");
    lib.decoder_step = (step_fn)dlsym(handle, "srm_decoder_step");
    lib.elu = (elu_fn)dlsym(handle, "srm_elu");
    if (!lib.abi || !lib.linear_forward || !lib.decoder_step || !lib.elu) {
        fprintf(stderr, "%s lacks srm_abi, srm_linear_forward, srm_decoder_step or srm_elu\n", path);
        exit(2);
    }
    return lib;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s REFERENCE.so CANDIDATE.so [EXPECTED_DOTS]\n", argv[0]);
        return 2;
    }
    const library ref = open_library(argv[1]), cand = open_library(argv[2]);
    printf("reference %s (%s), candidate %s (%s)\n", argv[1], ref.abi()->dots, argv[2], cand.abi()->dots);
    compare_abi(&ref, &cand, argc == 4 ? argv[3] : NULL);

    static const int64_t sizes[][2] = {{4, 64}, {7, 100}, {16, 64}, {20, 130}, {130, 300}, {256, 1024}};
    /* every row count: the i8mm build takes rows in pairs, an odd last one on its own */
    static const int64_t row_counts[] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int64_t bits = 8; bits >= 4; bits -= 4)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (size_t r = 0; r < sizeof row_counts / sizeof row_counts[0]; r++)
                check_linear(&ref, &cand, bits, sizes[s][0], sizes[s][1], row_counts[r]);

    /* head sizes: 64 (the specialised path), 24 (not a multiple of 16), 16; 40 steps: two key tiles */
    const decoder_config configs[] = {
        {8, 2, 2, 1, 128, 2, 256, 100, 48, 5, 0, 40},
        {4, 2, 2, 1, 128, 2, 256, 100, 48, 5, 0, 40},
        {8, 1, 2, 1, 96, 4, 160, 50, 40, 7, 1, 36},
        {4, 1, 2, 1, 96, 4, 160, 50, 40, 7, 1, 36},
        {8, 1, 3, 3, 64, 4, 128, 30, 70, 3, 0, 66},
        {4, 1, 5, 5, 64, 4, 128, 30, 40, 3, 0, 6},
        {8, 1, 8, 4, 64, 4, 128, 30, 40, 3, 0, 6},
        {8, 1, 6, 3, 80, 4, 128, 30, 40, 9, 1, 6}, /* folded, three takes, a text of 9: two groups and one padded */
    };
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) check_decoder(&ref, &cand, &configs[i]);
    check_elu(&ref, &cand);

    printf("%s: %d of %d checks failed\n", failures ? "FAILED" : "PASSED", failures, checks);
    return failures ? 1 : 0;
}
