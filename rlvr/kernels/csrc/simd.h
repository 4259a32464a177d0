/* Shared by the CPU kernels: an 8-lane vector type and transcendental functions written so
 * that loops using them vectorise (glibc's expf/log1pf are scalar calls unless the whole build
 * uses -ffast-math, which we avoid: see rlvr/kernels/cpu.py). */
#ifndef RLVR_SIMD_H
#define RLVR_SIMD_H

#include <stdint.h>

/* 8 fp32 lanes, GCC/Clang vector extensions: AVX on x86-64 -march=native, pairs of NEON
 * registers on ARM, scalar code elsewhere; may_alias + aligned(4) make loads through a float
 * pointer legal at any address. */
typedef float v8f __attribute__((vector_size(32), aligned(4), may_alias));

/* exp without a libm call, so loops that use it vectorise (glibc's expf is scalar unless built
 * with -ffast-math, and it was most of the Mamba kernel's time): exp(v) = 2^i * 2^f with i = round(v
 * log2 e), |f| <= 1/2, 2^f by its degree-6 Taylor polynomial; relative error < 2e-7, below fp32's
 * own rounding of the inputs. v is clamped to [-87, 88], where fp32 exp is finite and normal. */
static inline float fast_expf(float v) {
    v = v < -87.0f ? -87.0f : (v > 88.0f ? 88.0f : v);
    const float t = v * 1.44269504088896341f;
    const float i = __builtin_floorf(t + 0.5f);
    const float f = (t - i) * 0.693147180559945309f;  /* ln 2 * fraction: e^f = 2^(t - i) */
    float p = 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    union { float f; int32_t i; } scale = { .i = ((int32_t)i + 127) << 23 };
    return p * scale.f;
}

static inline float silu(float v) { return v / (1.0f + fast_expf(-v)); }

/* The largest of x[0:n] (n >= 1): the shift that keeps a row's exponentials finite. */
static inline float row_max(const float *x, int64_t n) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* log(1 + u) for u in [0, 1], vectorisable: 2 atanh(s) with s = u / (2 + u) <= 1/3, its odd
 * series to s^15 (truncation < 1e-8). */
static inline float log1p_unit(float u) {
    const float s = u / (2.0f + u), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

/* torch.nn.functional.softplus (threshold 20) as max(v, 0) + log1p(exp(-|v|)). */
static inline float softplus(float v) {
    const float a = v < 0.0f ? -v : v;
    return v > 20.0f ? v : (v > 0.0f ? v : 0.0f) + log1p_unit(fast_expf(-a));
}

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* out[0:width] (+)= sum_t coef[t] * M[t * ld + 0:width]: a vector-matrix product in "axpy" form,
 * so every lane is a separate output and nothing needs a horizontal sum. Wide blocks keep four
 * accumulators over lanes; narrow ones four over terms (t mod 4): either way four independent
 * FMA chains, which hides the FMA latency. */
static inline void lincomb(const float *restrict coef, int64_t terms, const float *restrict M, int64_t ld,
                           int64_t width, float *restrict out, int accumulate) {
    int64_t j = 0;
    for (; j + 32 <= width; j += 32) {
        v8f a[4] = {{0}, {0}, {0}, {0}};
        for (int64_t t = 0; t < terms; t++) {
            const float *row = M + t * ld + j;
            for (int q = 0; q < 4; q++) a[q] += coef[t] * *(const v8f *)(row + 8 * q);
        }
        for (int q = 0; q < 4; q++) {
            v8f *o = (v8f *)(out + j + 8 * q);
            if (accumulate) a[q] += *o;
            *o = a[q];
        }
    }
    for (; j + 8 <= width; j += 8) {
        v8f a[4] = {{0}, {0}, {0}, {0}};
        int64_t t = 0;
        for (; t + 4 <= terms; t += 4)
            for (int q = 0; q < 4; q++) a[q] += coef[t + q] * *(const v8f *)(M + (t + q) * ld + j);
        for (; t < terms; t++) a[0] += coef[t] * *(const v8f *)(M + t * ld + j);
        v8f sum = (a[0] + a[1]) + (a[2] + a[3]);
        v8f *o = (v8f *)(out + j);
        if (accumulate) sum += *o;
        *o = sum;
    }
    for (; j < width; j++) {
        float a = 0.0f;
        for (int64_t t = 0; t < terms; t++) a += coef[t] * M[t * ld + j];
        out[j] = accumulate ? out[j] + a : a;
    }
}

/* lincomb for four coefficient vectors against the same rows (coef[q * terms + t]; out[q * out_ld
 * + j]; no accumulate): each row loaded once serves four outputs, which is what bounds the
 * single version when M does not fit in L1 (attention scores over a long prefix). */
static inline void lincomb4(const float *restrict coef, int64_t terms, const float *restrict M, int64_t ld,
                            int64_t width, float *restrict out, int64_t out_ld) {
    int64_t j = 0;
    for (; j + 16 <= width; j += 16) {
        v8f a[4][2] = {{{0}, {0}}, {{0}, {0}}, {{0}, {0}}, {{0}, {0}}};
        for (int64_t t = 0; t < terms; t++) {
            const v8f m0 = *(const v8f *)(M + t * ld + j), m1 = *(const v8f *)(M + t * ld + j + 8);
            for (int q = 0; q < 4; q++) {
                a[q][0] += coef[q * terms + t] * m0;
                a[q][1] += coef[q * terms + t] * m1;
            }
        }
        for (int q = 0; q < 4; q++) {
            *(v8f *)(out + q * out_ld + j) = a[q][0];
            *(v8f *)(out + q * out_ld + j + 8) = a[q][1];
        }
    }
    for (int q = 0; q < 4; q++)
        if (j < width) lincomb(coef + q * terms, terms, M + j, ld, width - j, out + q * out_ld + j, 0);
}

static inline float hsum(v8f v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

typedef int32_t v8i __attribute__((vector_size(32)));
#if defined(__clang__)
#define SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif

/* Lane j of the result = hsum(v[j]): eight horizontal sums at once, by three rounds of pairwise
 * shuffles and adds (14 operations, where eight hsum calls take 56 and leave scalars). For
 * a matrix-vector product whose rows are each one vector's worth of partial sums. */
static inline v8f hsum8x8(const v8f v[8]) {
    v8f t[4], u[2];
    for (int k = 0; k < 4; k++)  /* [v0 01, v1 01, v0 23, v1 23, v0 45, v1 45, v0 67, v1 67] */
        t[k] = SHUFFLE8(v[2 * k], v[2 * k + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               SHUFFLE8(v[2 * k], v[2 * k + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int k = 0; k < 2; k++)  /* [v0 0-3, v1 0-3, v2 0-3, v3 0-3, v0 4-7, v1 4-7, v2 4-7, v3 4-7] */
        u[k] = SHUFFLE8(t[2 * k], t[2 * k + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               SHUFFLE8(t[2 * k], t[2 * k + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return SHUFFLE8(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE8(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* dots[q] = a . rows[q * ld] for q < 4: four independent dot products interleaved (one alone
 * is a single dependent chain). n must be a multiple of 8. */
static inline void dot4(const float *restrict a, const float *restrict rows, int64_t ld, int64_t n, float *dots) {
    v8f acc[4] = {{0}, {0}, {0}, {0}};
    for (int64_t i = 0; i < n; i += 8) {
        const v8f av = *(const v8f *)(a + i);
        for (int q = 0; q < 4; q++) acc[q] += av * *(const v8f *)(rows + q * ld + i);
    }
    for (int q = 0; q < 4; q++) dots[q] = hsum(acc[q]);
}

/* One tile of mm_bcast: MR rows x NV vectors of outputs, held in registers for the whole sum. */
static inline __attribute__((always_inline)) void mm_tile(const int MR, const int NV, int64_t k,
        const float *restrict a, int64_t a_rs, int64_t a_ks, const float *restrict b, int64_t ldb,
        float *restrict c, int64_t ldc, int accumulate) {
    v8f acc[8][2];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < NV; q++) acc[r][q] = (v8f){0};
    for (int64_t t = 0; t < k; t++) {
        const float *bt = b + t * ldb;
        const v8f b0 = *(const v8f *)bt, b1 = NV > 1 ? *(const v8f *)(bt + 8) : (v8f){0};
        for (int r = 0; r < MR; r++) {
            const float av = a[r * a_rs + t * a_ks];
            acc[r][0] += av * b0;
            if (NV > 1) acc[r][1] += av * b1;
        }
    }
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < NV; q++) {
            v8f *o = (v8f *)(c + r * ldc + 8 * q);
            if (accumulate) acc[r][q] += *o;
            *o = acc[r][q];
        }
}

/* mm_tile over the m rows of one column strip of NV vectors: 8-row tiles, then 4, then 1. */
static inline __attribute__((always_inline)) void mm_strip(const int NV, int64_t m, int64_t k,
        const float *restrict a, int64_t a_rs, int64_t a_ks, const float *restrict b, int64_t ldb,
        float *restrict c, int64_t ldc, int accumulate) {
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) mm_tile(8, NV, k, a + i * a_rs, a_rs, a_ks, b, ldb, c + i * ldc, ldc, accumulate);
    for (; i + 4 <= m; i += 4) mm_tile(4, NV, k, a + i * a_rs, a_rs, a_ks, b, ldb, c + i * ldc, ldc, accumulate);
    for (; i < m; i++) mm_tile(1, NV, k, a + i * a_rs, a_rs, a_ks, b, ldb, c + i * ldc, ldc, accumulate);
}

/* c[i ldc + j] (+)= sum_t a[i a_rs + t a_ks] b[t ldb + j] for i < m, j < n, t < k: a matrix
 * product whose left factor is read one entry at a time (broadcast), so it may be laid out
 * either way (a row of it, or a column, is a stride), and whose right factor is read by rows
 * of vectors. Tiles of 8 x 16 outputs stay in 16 registers through the whole sum over t (ten
 * loads per sixteen FMAs, every output loaded and stored once); edges by 4- and 1-row tiles,
 * 8-wide vectors, then scalars. */
static inline void mm_bcast(int64_t m, int64_t n, int64_t k, const float *restrict a, int64_t a_rs, int64_t a_ks,
                            const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int accumulate) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) mm_strip(2, m, k, a, a_rs, a_ks, b + j, ldb, c + j, ldc, accumulate);
    for (; j + 8 <= n; j += 8) mm_strip(1, m, k, a, a_rs, a_ks, b + j, ldb, c + j, ldc, accumulate);
    for (; j < n; j++)
        for (int64_t i = 0; i < m; i++) {
            float sum = 0.0f;
            for (int64_t t = 0; t < k; t++) sum += a[i * a_rs + t * a_ks] * b[t * ldb + j];
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
        }
}

#endif
