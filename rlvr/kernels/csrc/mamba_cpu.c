/* Fused Mamba-2 mixer on the CPU: everything between in_proj and out_proj in one pass.
 *
 * The torch path (rlvr/kernels/ssd.py, rlvr/model/layers.py) runs the conv, silu, softplus,
 * the chunked SSD scan and the gated RMSNorm as ~60 separate ops, each writing a full tensor to
 * memory; on CPU shapes that is nearly all of a Mamba layer's time. Here the same maths runs as
 * three loops over memory the caches hold anyway:
 *
 *   1. causal depthwise conv + silu over the xBC channels   (parallel over rows x time blocks)
 *   2. the SSD recurrence, token by token, per (row, head)   (parallel over rows x heads)
 *        h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T ;  y_t = h_t C_t + D x_t
 *   3. gated RMSNorm  y * silu(z), per group of channels     (parallel over tokens)
 *
 * The recurrence is the Mamba-2 paper's definition (ssd_scan_ref), not the chunked algorithm: on
 * a CPU the sequential scan does (headdim x dstate) multiply-adds per token and head and reads
 * each input once, which beats the chunked form's quadratic intra-chunk matmuls.
 * All arithmetic is fp32 (as vLLM's kernels and our torch path). Inference only: the training
 * forward keeps the torch path, whose autograd gives the backward.
 *
 * Layout of one token's in_proj output (as Nemotron-H): [z (d_inner) | xBC (conv_dim) | dt (H)],
 * xBC = [x (H*P) | B (G*N) | C (G*N)]; head h reads B/C group h / (H/G).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

typedef struct {
    int64_t d_inner, conv_dim, nheads, headdim, ngroups, dstate, kernel, group_size;
    float dt_min, dt_max, eps;
} MambaDims;

/* 1. conv + silu. in: (b, L, row_stride) with xBC at column `offset`; prev: (b, K-1, conv_dim)
 * window before t = 0 or NULL (zeros); wT: (K, conv_dim). With seq_idx, inputs of another
 * document are left out of each window (the window before t = 0 counts as the same document). */
static void conv_silu(const MambaDims *d, int64_t b, int64_t L, const float *in, int64_t row_stride,
                      int64_t offset, const float *prev, const float *wT, const float *bias,
                      const int64_t *seq_idx, float *out, int nthreads) {
    const int64_t C = d->conv_dim, K = d->kernel, block = 64;
    const int64_t nblocks = (L + block - 1) / block;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++) {
        for (int64_t tb = 0; tb < nblocks; tb++) {
            float acc[C];
            const int64_t t_end = (tb + 1) * block < L ? (tb + 1) * block : L;
            for (int64_t t = tb * block; t < t_end; t++) {
                for (int64_t c = 0; c < C; c++) acc[c] = bias ? bias[c] : 0.0f;
                for (int64_t k = 0; k < K; k++) {
                    const int64_t src = t - (K - 1) + k;
                    const float *w = wT + k * C;
                    if (src >= 0) {
                        if (seq_idx && seq_idx[r * L + src] != seq_idx[r * L + t]) continue;
                        const float *x = in + (r * L + src) * row_stride + offset;
                        for (int64_t c = 0; c < C; c++) acc[c] += w[c] * x[c];
                    } else if (prev) {
                        const float *p = prev + (r * (K - 1) + K - 1 + src) * C;
                        for (int64_t c = 0; c < C; c++) acc[c] += w[c] * p[c];
                    }
                }
                float *o = out + (r * L + t) * C;
                for (int64_t c = 0; c < C; c++) o[c] = silu(acc[c]);
            }
        }
    }
}

/* One token of the recurrence for one head. sT is the state transposed, (N, P), so each step
 * is a vector over headdim lanes; y accumulates in registers, in two chains (even and odd n) so
 * the additions do not wait on each other. (Plain loops let the compiler vectorise across n,
 * which turned every state store into a scatter.) */
static inline void ssd_token(int64_t P, int64_t N, float *restrict sT, const float *restrict x,
                             const float *restrict B, const float *restrict C, float dt, float dA,
                             float Dh, float *restrict y) {
    int64_t p0 = 0;
    for (; p0 + 8 <= P; p0 += 8) {
        const v8f xv = *(const v8f *)(x + p0), xb = xv * dt;
        v8f even = xv * Dh, odd = {0};
        int64_t n = 0;
        for (; n + 2 <= N; n += 2) {
            v8f *s0 = (v8f *)(sT + n * P + p0), *s1 = (v8f *)(sT + (n + 1) * P + p0);
            const v8f v0 = *s0 * dA + xb * B[n], v1 = *s1 * dA + xb * B[n + 1];
            *s0 = v0;
            *s1 = v1;
            even += v0 * C[n];
            odd += v1 * C[n + 1];
        }
        if (n < N) {
            v8f *s0 = (v8f *)(sT + n * P + p0);
            const v8f v0 = *s0 * dA + xb * B[n];
            *s0 = v0;
            even += v0 * C[n];
        }
        *(v8f *)(y + p0) = even + odd;
    }
    for (int64_t p = p0; p < P; p++) {  /* headdim not a multiple of 8 */
        float acc = Dh * x[p];
        for (int64_t n = 0; n < N; n++) {
            const float v = sT[n * P + p] * dA + B[n] * dt * x[p];
            sT[n * P + p] = v;
            acc += v * C[n];
        }
        y[p] = acc;
    }
}

/* state (P, N) <-> sT (N, P) */
static void transpose(const float *restrict src, float *restrict dst, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

/* 3. y <- norm_w * rmsnorm_group(y * silu(z)), in place, for `tokens` tokens. */
static void gated_norm(const MambaDims *d, int64_t tokens, float *y, const float *zsrc, int64_t z_stride,
                       const float *norm_w, int nthreads) {
    const int64_t Di = d->d_inner, gs = d->group_size;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < tokens; t++) {
        float *yt = y + t * Di;
        const float *z = zsrc + t * z_stride;
        for (int64_t g0 = 0; g0 < Di; g0 += gs) {
            float ss = 0.0f;
            for (int64_t i = g0; i < g0 + gs; i++) {
                const float h = yt[i] * silu(z[i]);
                yt[i] = h;
                ss += h * h;
            }
            const float scale = 1.0f / sqrtf(ss / (float)gs + d->eps);
            for (int64_t i = g0; i < g0 + gs; i++) yt[i] = norm_w[i] * (yt[i] * scale);
        }
    }
}

/* 2a. dt = clamp(softplus(dt_raw + dt_bias)) and its decay exp(dt A) for every (token, head),
 * in a loop that vectorises over heads, so the sequential scan does no transcendental maths.
 * Padding after a row's length gets dt = 0 (decay 1, no input). dt_all, dA_all: (b, L, H). */
static void dt_pass(const MambaDims *d, int64_t b, int64_t L, const float *zxbcdt, const int64_t *lengths,
                    const float *dt_bias, const float *A, float *dt_all, float *dA_all, int nthreads) {
    const int64_t H = d->nheads, stride = d->d_inner + d->conv_dim + H, offset = d->d_inner + d->conv_dim;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++) {
        for (int64_t t = 0; t < L; t++) {
            const float *raw = zxbcdt + (r * L + t) * stride + offset;
            float *dt = dt_all + (r * L + t) * H, *dA = dA_all + (r * L + t) * H;
            const float keep = lengths && t >= lengths[r] ? 0.0f : 1.0f;
            for (int64_t h = 0; h < H; h++) {
                dt[h] = keep * clampf(softplus(raw[h] + dt_bias[h]), d->dt_min, d->dt_max);
                dA[h] = fast_expf(dt[h] * A[h]);
            }
        }
    }
}

/* 2b. The recurrence over a sequence, per (row, head), in the transposed (N, P) state layout. */
static void scan(const MambaDims *d, int64_t b, int64_t L, const float *xbc, const float *dt_all,
                 const float *dA_all, const float *D, const int64_t *seq_idx, float *ssm_state,
                 int has_initial, float *y, int nthreads) {
    const int64_t Di = d->d_inner, Cd = d->conv_dim, H = d->nheads, P = d->headdim, N = d->dstate;
    const int64_t G = d->ngroups, heads_per_group = H / G;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++) {
        for (int64_t h = 0; h < H; h++) {
            float *state = ssm_state + (r * H + h) * P * N, sT[N * P];
            if (has_initial) transpose(state, sT, P, N);
            else memset(sT, 0, sizeof(sT));
            const int64_t g = h / heads_per_group;
            for (int64_t t = 0; t < L; t++) {
                if (seq_idx && t > 0 && seq_idx[r * L + t] != seq_idx[r * L + t - 1])
                    memset(sT, 0, sizeof(sT));
                const float *tok = xbc + (r * L + t) * Cd;
                const int64_t i = (r * L + t) * H + h;
                ssd_token(P, N, sT, tok + h * P, tok + Di + g * N, tok + Di + G * N + g * N, dt_all[i],
                          dA_all[i], D[h], y + (r * L + t) * Di + h * P);
            }
            transpose(sT, state, N, P);
        }
    }
}

/* A full sequence (prefill or inference forward).
 * zxbcdt (b, L, d_in_proj); conv_prev (b, K-1, conv_dim) or NULL; seq_idx (b, L) or NULL;
 * lengths (b) or NULL; ssm_state (b, H, P, N): initial state in (if has_initial), final state
 * out; xbc (b, L, conv_dim) scratch; y (b, L, d_inner) out. */
void mamba_prefill_f32(const MambaDims *d, int64_t b, int64_t L, const float *zxbcdt, const float *conv_prev,
                       const float *conv_wT, const float *conv_b, const int64_t *seq_idx, const int64_t *lengths,
                       const float *dt_bias, const float *A, const float *D, const float *norm_w,
                       float *ssm_state, int has_initial, float *xbc, float *y, int nthreads) {
    const int64_t stride = d->d_inner + d->conv_dim + d->nheads;
    conv_silu(d, b, L, zxbcdt, stride, d->d_inner, conv_prev, conv_wT, conv_b, seq_idx, xbc, nthreads);
    float *dt_all = malloc(sizeof(float) * 2 * b * L * d->nheads), *dA_all = dt_all + b * L * d->nheads;
    dt_pass(d, b, L, zxbcdt, lengths, dt_bias, A, dt_all, dA_all, nthreads);
    scan(d, b, L, xbc, dt_all, dA_all, D, seq_idx, ssm_state, has_initial, y, nthreads);
    free(dt_all);
    gated_norm(d, b * L, y, zxbcdt, stride, norm_w, nthreads);
}

/* One decode token of one head, state in the cache's (P, N) layout: per step a transpose would
 * cost as much as the update, so here the lanes run over dstate with a sum per headdim row. */
static inline void ssd_token_pn(int64_t P, int64_t N, float *restrict s, const float *restrict x,
                                const float *restrict B, const float *restrict C, float dt, float dA,
                                float Dh, float *restrict y) {
    for (int64_t p = 0; p < P; p++) {
        float *restrict row = s + p * N;
        const float xs = dt * x[p];
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const float v = row[n] * dA + xs * B[n];
            row[n] = v;
            acc += v * C[n];
        }
        y[p] = acc + Dh * x[p];
    }
}

/* One decode token per row. zxbcdt (b, d_in_proj); conv_state (b, K-1, conv_dim), oldest input
 * first, and ssm_state (b, H, P, N) are updated in place; xbc (b, conv_dim) scratch; y (b,
 * d_inner) out. The conv state is time-major so the window update is row copies and the conv a
 * product over contiguous channels. */
void mamba_step_f32(const MambaDims *d, int64_t b, const float *zxbcdt, float *conv_state,
                    const float *conv_wT, const float *conv_b, const float *dt_bias, const float *A,
                    const float *D, const float *norm_w, float *ssm_state, float *xbc, float *y,
                    int nthreads) {
    const int64_t Di = d->d_inner, Cd = d->conv_dim, H = d->nheads, P = d->headdim, N = d->dstate;
    const int64_t G = d->ngroups, K = d->kernel, stride = Di + Cd + H, heads_per_group = H / G;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++) {
        const float *in = zxbcdt + r * stride + Di;
        float *window = conv_state + r * (K - 1) * Cd, *out = xbc + r * Cd;
        const float *w_last = conv_wT + (K - 1) * Cd;
        for (int64_t c = 0; c < Cd; c++) out[c] = (conv_b ? conv_b[c] : 0.0f) + w_last[c] * in[c];
        for (int64_t k = 0; k < K - 1; k++)
            for (int64_t c = 0; c < Cd; c++) out[c] += conv_wT[k * Cd + c] * window[k * Cd + c];
        if (K > 1) {  /* slide the window: drop the oldest input, append this one */
            memmove(window, window + Cd, sizeof(float) * (K - 2) * Cd);
            memcpy(window + (K - 2) * Cd, in, sizeof(float) * Cd);
        }
        for (int64_t c = 0; c < Cd; c++) out[c] = silu(out[c]);
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++) {
        for (int64_t h = 0; h < H; h++) {
            const float *tok = xbc + r * Cd;
            const int64_t g = h / heads_per_group;
            const float dt = clampf(softplus(zxbcdt[r * stride + Di + Cd + h] + dt_bias[h]), d->dt_min, d->dt_max);
            ssd_token_pn(P, N, ssm_state + (r * H + h) * P * N, tok + h * P, tok + Di + g * N,
                         tok + Di + G * N + g * N, dt, fast_expf(dt * A[h]), D[h], y + r * Di + h * P);
        }
    }
    gated_norm(d, b, y, zxbcdt, stride, norm_w, nthreads);
}
