/* Training kernels on the CPU: forward and backward of the Mamba-2 mixer's elementwise stages,
 * each one pass over memory where the torch reference (rlvr/kernels/mamba.py) runs a chain of
 * ops that each write a full tensor. fp32 in, fp32 accumulation.
 *
 *   conv_silu:  out = silu(bias + sum_i w[c, i] * x[t - (K-1) + i])    (causal depthwise conv,
 *               inputs from another document of a packed row masked out), reference
 *               silu(causal_conv1d(...)); the backward recomputes the pre-activation from x.
 *   gated_norm: out = w * h / rms_g(h), h = y * silu(z), RMS over groups of channels, reference
 *               gated_rms_norm; the backward recomputes h and 1/rms.
 *   logprob:    log p(target) and the entropy of each row of logits in one pass, reference
 *               token_logprobs_ref (rlvr/kernels/logprob.py); the backward is one more pass.
 *
 * Layouts: x, out (batch, seqlen, channels) channel-contiguous; wT (K, channels), the conv
 * weight transposed so that every loop over channels is contiguous (it vectorises); seq_idx
 * (batch, seqlen) int64 or NULL. Inputs read from the mixer's in_proj output (the conv's x and
 * grad_x, the norm's z and grad_z) take a token stride (xs, zs): the fused mixer passes column
 * slices of that one tensor instead of copying them out. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "simd.h"

static inline float sigmoidf(float a) { return 1.0f / (1.0f + fast_expf(-a)); }

/* The pre-activation of row b at token t, channel range [c0, c1), into pre[c0..c1). */
static inline void conv_pre(int64_t L, int64_t ch, int64_t K, int64_t xs, const float *restrict xb,
                            const float *restrict wT, const float *restrict bias, const int64_t *seqb, int64_t t,
                            float *restrict pre) {
    for (int64_t c = 0; c < ch; c++) pre[c] = bias ? bias[c] : 0.0f;
    for (int64_t i = 0; i < K; i++) {
        int64_t s = t - (K - 1) + i;
        if (s < 0 || (seqb && seqb[s] != seqb[t])) continue;
        const float *restrict xv = xb + s * xs, *restrict wi = wT + i * ch;
        for (int64_t c = 0; c < ch; c++) pre[c] += wi[c] * xv[c];
    }
}

void conv_silu_fwd_f32(int64_t batch, int64_t L, int64_t ch, int64_t K, int64_t xs, const float *x, const float *wT,
                       const float *bias, const int64_t *seq_idx, float *out, int nthreads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t t = 0; t < L; t++) {
            float *o = out + (b * L + t) * ch;
            conv_pre(L, ch, K, xs, x + b * L * xs, wT, bias, seq_idx ? seq_idx + b * L : NULL, t, o);
            for (int64_t c = 0; c < ch; c++) o[c] = o[c] * sigmoidf(o[c]);
        }
    }
}

/* grad_x (batch, L, ch); grad_w (ch, K), as the conv holds it, and grad_bias (ch) are summed over
 * every token (each thread into its own (K + 1, ch) buffer, then added up), grad_bias may be NULL.
 * By tiles of CONV_TILE tokens of a row: the gradient at the pre-activation (gpre) of the tile
 * and of the K - 1 tokens after it, which grad_x of the tile's last tokens reads, goes into a
 * per-thread scratch that stays in cache (the whole tensor of them was as large as the input
 * and cost more in memory traffic than the arithmetic). */
#define CONV_TILE 64

void conv_silu_bwd_f32(int64_t batch, int64_t L, int64_t ch, int64_t K, int64_t xs, const float *x, const float *wT,
                       const float *bias, const int64_t *seq_idx, const float *grad_out, float *grad_x,
                       float *grad_w, float *grad_bias, int nthreads) {
    const int64_t tiles = (L + CONV_TILE - 1) / CONV_TILE;
    float *partial = calloc((size_t)nthreads * ch * (K + 1), sizeof(float));
#pragma omp parallel num_threads(nthreads)
    {
        float *mine = partial + (size_t)omp_get_thread_num() * ch * (K + 1);  /* K weight rows, then the bias */
        float *gpre = malloc(sizeof(float) * (CONV_TILE + K - 1) * ch);
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < batch; b++) {
            for (int64_t tile = 0; tile < tiles; tile++) {
                const int64_t *seqb = seq_idx ? seq_idx + b * L : NULL;
                const float *xb = x + b * L * xs;
                const int64_t t0 = tile * CONV_TILE, t1 = t0 + CONV_TILE < L ? t0 + CONV_TILE : L;
                const int64_t t2 = t1 + K - 1 < L ? t1 + K - 1 : L;  /* with the halo */
                for (int64_t t = t0; t < t2; t++) {
                    const float *restrict go = grad_out + (b * L + t) * ch;
                    float *restrict g = gpre + (t - t0) * ch;
                    conv_pre(L, ch, K, xs, xb, wT, bias, seqb, t, g);
                    for (int64_t c = 0; c < ch; c++) {
                        float s = sigmoidf(g[c]);
                        g[c] = go[c] * s * (1.0f + g[c] * (1.0f - s));  /* silu'(a) = s (1 + a (1 - s)) */
                    }
                    if (t >= t1) continue;  /* a halo token: its own tile sums its weight gradients */
                    for (int64_t i = 0; i < K; i++) {
                        int64_t s = t - (K - 1) + i;
                        if (s < 0 || (seqb && seqb[s] != seqb[t])) continue;
                        const float *restrict xv = xb + s * xs;
                        float *restrict mi = mine + i * ch;
                        for (int64_t c = 0; c < ch; c++) mi[c] += g[c] * xv[c];
                    }
                    float *restrict mb = mine + K * ch;
                    for (int64_t c = 0; c < ch; c++) mb[c] += g[c];
                }
                /* grad_x[u] = sum_i gpre[u + (K-1) - i] * w[i], same document only */
                for (int64_t u = t0; u < t1; u++) {
                    float *restrict gx = grad_x + (b * L + u) * xs;
                    for (int64_t c = 0; c < ch; c++) gx[c] = 0.0f;
                    for (int64_t i = 0; i < K; i++) {
                        int64_t t = u + (K - 1) - i;
                        if (t >= L || (seqb && seqb[t] != seqb[u])) continue;
                        const float *restrict g = gpre + (t - t0) * ch, *restrict wi = wT + i * ch;
                        for (int64_t c = 0; c < ch; c++) gx[c] += g[c] * wi[c];
                    }
                }
            }
        }
        free(gpre);
    }
    for (int64_t i = 0; i <= K; i++) {
        for (int64_t c = 0; c < ch; c++) {
            float sum = 0.0f;
            for (int th = 0; th < nthreads; th++) sum += partial[((size_t)th * (K + 1) + i) * ch + c];
            if (i < K) grad_w[c * K + i] = sum;
            else if (grad_bias) grad_bias[c] = sum;
        }
    }
    free(partial);
}

/* dt = clamp(softplus(raw + bias), lo, hi), zero at a row's padding (t >= lengths[b]; lengths may
 * be NULL), as the reference computes it; raw is read in place (token stride zs), dt (batch, L, h).
 * The backward writes d(raw) where raw lies (stride zs) and sums d(bias): softplus' = sigmoid,
 * exactly 1 past torch's threshold of 20; nothing passes the clamp outside [lo, hi]. */
void dt_fwd_f32(int64_t batch, int64_t L, int64_t h, int64_t zs, const float *raw, const float *bias, float lo,
                float hi, const int64_t *lengths, float *dt, int nthreads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < batch; b++)
        for (int64_t t = 0; t < L; t++) {
            const float *restrict r = raw + (b * L + t) * zs;
            float *restrict o = dt + (b * L + t) * h;
            const float live = !lengths || t < lengths[b];
            for (int64_t j = 0; j < h; j++) o[j] = live * clampf(softplus(r[j] + bias[j]), lo, hi);
        }
}

void dt_bwd_f32(int64_t batch, int64_t L, int64_t h, int64_t zs, const float *raw, const float *bias, float lo,
                float hi, const int64_t *lengths, const float *grad_dt, float *grad_raw, float *grad_bias,
                int nthreads) {
    float *partial = calloc((size_t)nthreads * h, sizeof(float));
#pragma omp parallel num_threads(nthreads)
    {
        float *mine = partial + (size_t)omp_get_thread_num() * h;
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < batch; b++)
            for (int64_t t = 0; t < L; t++) {
                const float *restrict r = raw + (b * L + t) * zs, *restrict gd = grad_dt + (b * L + t) * h;
                float *restrict gr = grad_raw + (b * L + t) * zs;
                const int live = !lengths || t < lengths[b];
                for (int64_t j = 0; j < h; j++) {
                    const float a = r[j] + bias[j], sp = softplus(a);
                    const float g = live && sp >= lo && sp <= hi ? gd[j] * (a > 20.0f ? 1.0f : sigmoidf(a)) : 0.0f;
                    gr[j] = g;
                    mine[j] += g;
                }
            }
    }
    for (int64_t j = 0; j < h; j++) {
        float sum = 0.0f;
        for (int th = 0; th < nthreads; th++) sum += partial[(size_t)th * h + j];
        grad_bias[j] = sum;
    }
    free(partial);
}

void gated_norm_fwd_f32(int64_t rows, int64_t dim, int64_t group, int64_t zs, const float *y, const float *z, const float *w,
                        float eps, float *out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * dim, *zr = z + r * zs;
        float *o = out + r * dim;
        for (int64_t c = 0; c < dim; c++) o[c] = yr[c] * zr[c] * sigmoidf(zr[c]);
        for (int64_t g0 = 0; g0 < dim; g0 += group) {
            float ss = 0.0f;
            for (int64_t c = g0; c < g0 + group; c++) ss += o[c] * o[c];
            const float scale = 1.0f / sqrtf(ss / (float)group + eps);
            for (int64_t c = g0; c < g0 + group; c++) o[c] = w[c] * (o[c] * scale);
        }
    }
}

/* grad_w (dim) is summed over rows (per-thread buffers, then added up). */
void gated_norm_bwd_f32(int64_t rows, int64_t dim, int64_t group, int64_t zs, const float *y, const float *z, const float *w,
                        float eps, const float *grad_out, float *grad_y, float *grad_z, float *grad_w,
                        int nthreads) {
    float *partial = calloc((size_t)nthreads * dim, sizeof(float));
#pragma omp parallel num_threads(nthreads)
    {
        float *mine = partial + (size_t)omp_get_thread_num() * dim;
        float *h = malloc(sizeof(float) * dim);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *yr = y + r * dim, *zr = z + r * zs, *go = grad_out + r * dim;
            float *gy = grad_y + r * dim, *gz = grad_z + r * zs;
            for (int64_t c = 0; c < dim; c++) h[c] = yr[c] * zr[c] * sigmoidf(zr[c]);
            for (int64_t g0 = 0; g0 < dim; g0 += group) {
                float ss = 0.0f, dot = 0.0f;
                for (int64_t c = g0; c < g0 + group; c++) ss += h[c] * h[c];
                const float scale = 1.0f / sqrtf(ss / (float)group + eps);
                for (int64_t c = g0; c < g0 + group; c++) {
                    float hat = h[c] * scale;
                    mine[c] += go[c] * hat;
                    dot += go[c] * w[c] * hat;
                }
                dot /= (float)group;
                for (int64_t c = g0; c < g0 + group; c++) {
                    /* d/dh of w * h * scale: scale * (g - hat * mean(g * hat)), g = go * w */
                    float gh = scale * (go[c] * w[c] - h[c] * scale * dot);
                    float s = sigmoidf(zr[c]);
                    gy[c] = gh * zr[c] * s;
                    gz[c] = gh * yr[c] * s * (1.0f + zr[c] * (1.0f - s));
                }
            }
        }
        free(h);
    }
    for (int64_t c = 0; c < dim; c++) {
        float sum = 0.0f;
        for (int th = 0; th < nthreads; th++) sum += partial[(size_t)th * dim + c];
        grad_w[c] = sum;
    }
    free(partial);
}

/* The SSD recurrence, token by token, forward and backward (reference: ssd.py, ssd_scan_ref and
 * the chunked ssd_chunk_scan it specifies):
 *     h_t = exp(dt_t A) h_{t-1} + dt_t x_t (x) B_t,   y_t = h_t C_t + D x_t
 * per (batch row, head), the state (headdim, dstate) in fp32; a change of seq_idx resets the state
 * before the token. Layouts: x, y (b, L, h, p); dt (b, L, h); B, C (b, L, g, n); init, final
 * (b, h, p, n). The forward keeps the state at the start of every SEG tokens (chk: (b, h, nseg,
 * p, n)); the backward recomputes each segment's states from there and runs the adjoint back
 * through it. x, B and C may be column slices of one wider tensor (the conv's output): their
 * token strides are arguments. */
#define SEG 64

static inline int boundary(const int64_t *seqb, int64_t t) { return seqb && t > 0 && seqb[t] != seqb[t - 1]; }

/* The vector forms of a token's work for one head, for P % 8 == 0 and a constant N of 16 or 32
 * (B, C and the running sums stay in registers): a sum over n per headdim row is one vector of
 * partial sums, and eight rows' are finished at once (hsum8x8) instead of one horizontal sum
 * per row, which was most of a token's work when the state is that small. */
enum { MAXV = 4 };  /* N / 8 at most */

static inline __attribute__((always_inline)) void ssd_fwd_token_v(
        int64_t P, const int64_t N, float *restrict state, const float *restrict xt, const float *restrict Bt,
        const float *restrict Ct, float d, float da, float Dh, float *restrict yt) {
    const int64_t nv = N / 8;
    v8f Bv[MAXV], Cv[MAXV];
    for (int64_t k = 0; k < nv; k++) Bv[k] = *(const v8f *)(Bt + 8 * k), Cv[k] = *(const v8f *)(Ct + 8 * k);
    for (int64_t p0 = 0; p0 < P; p0 += 8) {
        v8f part[8];
        for (int j = 0; j < 8; j++) {
            float *s = state + (p0 + j) * N;
            const float dx = d * xt[p0 + j];
            v8f acc = {0};
            for (int64_t k = 0; k < nv; k++) {
                const v8f sv = da * *(v8f *)(s + 8 * k) + dx * Bv[k];
                *(v8f *)(s + 8 * k) = sv;
                acc += sv * Cv[k];
            }
            part[j] = acc;
        }
        *(v8f *)(yt + p0) = hsum8x8(part) + Dh * *(const v8f *)(xt + p0);
    }
}

void ssd_scan_fwd_f32(int64_t batch, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N, int64_t xs, int64_t bs,
                      const float *x, const float *dt, const float *A, const float *B, const float *C,
                      const float *D, const float *init, const int64_t *seq_idx, float *y, float *final, float *chk, int nthreads) {
    const int64_t nseg = (L + SEG - 1) / SEG, q = H / G;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const int64_t *seqb = seq_idx ? seq_idx + b * L : NULL;
            float *state = final + (b * H + h) * P * N;
            if (init) memcpy(state, init + (b * H + h) * P * N, sizeof(float) * P * N);
            else memset(state, 0, sizeof(float) * P * N);
            for (int64_t t = 0; t < L; t++) {
                if (boundary(seqb, t)) memset(state, 0, sizeof(float) * P * N);
                if (t % SEG == 0) memcpy(chk + ((b * H + h) * nseg + t / SEG) * P * N, state, sizeof(float) * P * N);
                const float d = dt[(b * L + t) * H + h], da = expf(d * A[h]);
                const float *xt = x + (b * L + t) * xs + h * P;
                const float *Bt = B + (b * L + t) * bs + (h / q) * N, *Ct = C + (b * L + t) * bs + (h / q) * N;
                float *yt = y + ((b * L + t) * H + h) * P;
                if (t + 2 < L) {  /* the rows two tokens ahead */
                    const int64_t u = b * L + t + 2;
                    for (int64_t k = 0; k < P; k += 16) __builtin_prefetch(x + u * xs + h * P + k);
                    for (int64_t k = 0; k < N; k += 16) {
                        __builtin_prefetch(B + u * bs + (h / q) * N + k);
                        __builtin_prefetch(C + u * bs + (h / q) * N + k);
                    }
                }
                if (P % 8 == 0 && N == 16) { ssd_fwd_token_v(P, 16, state, xt, Bt, Ct, d, da, D[h], yt); continue; }
                if (P % 8 == 0 && N == 32) { ssd_fwd_token_v(P, 32, state, xt, Bt, Ct, d, da, D[h], yt); continue; }
                for (int64_t p = 0; p < P; p++) {
                    float *s = state + p * N, acc = 0.0f, dx = d * xt[p];
                    for (int64_t n = 0; n < N; n++) {
                        s[n] = da * s[n] + dx * Bt[n];
                        acc += s[n] * Ct[n];
                    }
                    yt[p] = acc + D[h] * xt[p];
                }
            }
        }
    }
}

struct bwd_out { float aP, xaB, dyx; };

/* One token of the adjoint pass for one head: adj (P x N) holds the adjoint of h_t coming in
 * (from later tokens) and leaves with that of h_{t-1}; writes dx (P), adds d·dB and dC (N) to the
 * group's oB, oC (or sets them: the group's first head). Returns the sums over the state that
 * the scalar gradients need. Called with a constant N (see the switch): the n loops unroll and
 * the P-long sums for dB, dC stay in registers. */
static inline __attribute__((always_inline)) struct bwd_out ssd_bwd_token(
        int64_t P, const int64_t N, const float *restrict prev, float *restrict adj, const float *restrict xt,
        const float *restrict dy, const float *restrict Bt, const float *restrict Ct, float d, float da, float keep,
        float Dh, int first, float *restrict dx, float *restrict oB, float *restrict oC) {
    float dB[N], dC[N], aPv[N];
    struct bwd_out o = {0.0f, 0.0f, 0.0f};
    const float *cur = prev + P * N;
    for (int64_t n = 0; n < N; n++) dB[n] = dC[n] = aPv[n] = 0.0f;
    for (int64_t p = 0; p < P; p++) {
        float *restrict a = adj + p * N;
        const float *pv = prev + p * N, *cv = cur + p * N, dyp = dy[p], xp = xt[p];
        float aB = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const float an = a[n] + dyp * Ct[n];  /* adjoint of h_t */
            dC[n] += cv[n] * dyp;
            dB[n] += an * xp;
            aB += an * Bt[n];
            aPv[n] += an * pv[n];
            a[n] = keep * da * an;               /* adjoint of h_{t-1} */
        }
        o.dyx += dyp * xp;
        dx[p] = d * aB + Dh * dyp;
        o.xaB += xp * aB;
    }
    for (int64_t n = 0; n < N; n++) {
        o.aP += aPv[n];
        oB[n] = first ? d * dB[n] : oB[n] + d * dB[n];
        oC[n] = first ? dC[n] : oC[n] + dC[n];
    }
    return o;
}

/* ssd_bwd_token's vector form (see ssd_fwd_token_v): the same sums, eight headdim rows' B-sums
 * (for dx) finished at once. */
static inline __attribute__((always_inline)) struct bwd_out ssd_bwd_token_v(
        int64_t P, const int64_t N, const float *restrict prev, float *restrict adj, const float *restrict xt,
        const float *restrict dy, const float *restrict Bt, const float *restrict Ct, float d, float da, float keep,
        float Dh, int first, float *restrict dx, float *restrict oB, float *restrict oC) {
    const int64_t nv = N / 8;
    const float *cur = prev + P * N, kd = keep * da;
    v8f Bv[MAXV], Cv[MAXV], dB[MAXV], dC[MAXV], aPv[MAXV], dyx = {0}, xaB = {0}, aP = {0};
    for (int64_t k = 0; k < nv; k++) {
        Bv[k] = *(const v8f *)(Bt + 8 * k), Cv[k] = *(const v8f *)(Ct + 8 * k);
        dB[k] = dC[k] = aPv[k] = (v8f){0};
    }
    for (int64_t p0 = 0; p0 < P; p0 += 8) {
        v8f part[8];
        for (int j = 0; j < 8; j++) {
            float *a = adj + (p0 + j) * N;
            const float *pv = prev + (p0 + j) * N, *cv = cur + (p0 + j) * N, dyp = dy[p0 + j], xp = xt[p0 + j];
            v8f acc = {0};
            for (int64_t k = 0; k < nv; k++) {
                const v8f an = *(v8f *)(a + 8 * k) + dyp * Cv[k];  /* adjoint of h_t */
                dC[k] += *(const v8f *)(cv + 8 * k) * dyp;
                dB[k] += an * xp;
                acc += an * Bv[k];
                aPv[k] += an * *(const v8f *)(pv + 8 * k);
                *(v8f *)(a + 8 * k) = kd * an;                   /* adjoint of h_{t-1} */
            }
            part[j] = acc;
        }
        const v8f aB = hsum8x8(part), dyv = *(const v8f *)(dy + p0), xv = *(const v8f *)(xt + p0);
        *(v8f *)(dx + p0) = d * aB + Dh * dyv;
        dyx += dyv * xv;
        xaB += xv * aB;
    }
    for (int64_t k = 0; k < nv; k++) {
        aP += aPv[k];
        const v8f gb = d * dB[k] + (first ? (v8f){0} : *(const v8f *)(oB + 8 * k));
        const v8f gc = dC[k] + (first ? (v8f){0} : *(const v8f *)(oC + 8 * k));
        *(v8f *)(oB + 8 * k) = gb, *(v8f *)(oC + 8 * k) = gc;
    }
    return (struct bwd_out){hsum(aP), hsum(xaB), hsum(dyx)};
}

/* grad_final may be NULL (zeros). gA, gD (b, h) per row; gB, gC (b, L, g, n) summed over the
 * heads of each group: one thread runs a group's heads one after another, so the sums need no
 * locks (and their order is fixed). Token strides: xs (x), bs (B, C), gxs (gx), gbs (gB, gC). */
void ssd_scan_bwd_f32(int64_t batch, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N, int64_t xs, int64_t bs,
                      int64_t gxs, int64_t gbs, const float *x, const float *dt, const float *A, const float *B,
                      const float *C, const float *D, const int64_t *seq_idx, const float *chk, const float *gy,
                      const float *gfinal, float *gx, float *gdt, float *gA, float *gB, float *gC, float *gD,
                      float *ginit, int nthreads) {
    const int64_t nseg = (L + SEG - 1) / SEG, q = H / G, PN = P * N;
#pragma omp parallel num_threads(nthreads)
    {
        float *hs = malloc(sizeof(float) * (SEG + 1) * PN);  /* hs[0]: the state before the segment */
        float *adj = malloc(sizeof(float) * PN);
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < batch; b++) {
            for (int64_t grp = 0; grp < G; grp++) {
                for (int64_t h = grp * q; h < (grp + 1) * q; h++) {
                    const int first = h == grp * q;
                    const int64_t *seqb = seq_idx ? seq_idx + b * L : NULL;
                    float sumA = 0.0f, sumD = 0.0f;
                    if (gfinal) memcpy(adj, gfinal + (b * H + h) * PN, sizeof(float) * PN);
                    else memset(adj, 0, sizeof(float) * PN);
                    for (int64_t sgi = nseg - 1; sgi >= 0; sgi--) {
                        const int64_t t0 = sgi * SEG, t1 = t0 + SEG < L ? t0 + SEG : L;
                        /* recompute: hs[k + 1] = the state after token t0 + k */
                        memcpy(hs, chk + ((b * H + h) * nseg + sgi) * PN, sizeof(float) * PN);
                        for (int64_t t = t0; t < t1; t++) {
                            const float *prev = hs + (t - t0) * PN;
                            float *restrict cur = hs + (t - t0 + 1) * PN;
                            const int reset = boundary(seqb, t) && t != t0;  /* (the checkpoint is taken after a reset) */
                            const float d = dt[(b * L + t) * H + h], keep = reset ? 0.0f : expf(d * A[h]);
                            const float *xt = x + (b * L + t) * xs + h * P, *Bt = B + (b * L + t) * bs + grp * N;
                            if (t + 2 < t1) {  /* x and B two tokens ahead (the first touch of this head's rows) */
                                const int64_t u = b * L + t + 2;
                                for (int64_t k = 0; k < P; k += 16) __builtin_prefetch(x + u * xs + h * P + k);
                                for (int64_t k = 0; k < N; k += 16) __builtin_prefetch(B + u * bs + grp * N + k);
                            }
                            if (N % 8 == 0) {
                                for (int64_t p = 0; p < P; p++)
                                    for (int64_t n = 0; n < N; n += 8)
                                        *(v8f *)(cur + p * N + n) = keep * *(const v8f *)(prev + p * N + n) +
                                                                    d * xt[p] * *(const v8f *)(Bt + n);
                                continue;
                            }
                            for (int64_t p = 0; p < P; p++) {
                                const float dx = d * xt[p];
                                for (int64_t n = 0; n < N; n++) cur[p * N + n] = keep * prev[p * N + n] + dx * Bt[n];
                            }
                        }
                        for (int64_t t = t1 - 1; t >= t0; t--) {
                            const float *prev = hs + (t - t0) * PN;
                            const float d = dt[(b * L + t) * H + h], da = expf(d * A[h]);
                            /* a reset: h_{t-1} is zero, nothing flows back */
                            const float keep = boundary(seqb, t) ? 0.0f : 1.0f;
                            struct bwd_out o;
                            const float *xt = x + (b * L + t) * xs + h * P, *dy = gy + ((b * L + t) * H + h) * P;
                            const float *Bt = B + (b * L + t) * bs + grp * N, *Ct = C + (b * L + t) * bs + grp * N;
                            float *dx = gx + (b * L + t) * gxs + h * P;
                            if (t - 2 >= t0) {  /* the rows two tokens back: gy and C are not in cache yet */
                                const int64_t u = b * L + t - 2;
                                for (int64_t k = 0; k < P; k += 16) __builtin_prefetch(gy + (u * H + h) * P + k);
                                for (int64_t k = 0; k < N; k += 16) __builtin_prefetch(C + u * bs + grp * N + k);
                            }
                            float *oB = gB + (b * L + t) * gbs + grp * N, *oC = gC + (b * L + t) * gbs + grp * N;
#define TOKEN_ARGS prev, adj, xt, dy, Bt, Ct, d, da, keep, D[h], first, dx, oB, oC
                            /* a constant N: the n loops unrolled, their sums kept in registers */
                            if (P % 8 == 0 && N == 16) o = ssd_bwd_token_v(P, 16, TOKEN_ARGS);
                            else if (P % 8 == 0 && N == 32) o = ssd_bwd_token_v(P, 32, TOKEN_ARGS);
                            else if (N == 16) o = ssd_bwd_token(P, 16, TOKEN_ARGS);
                            else if (N == 32) o = ssd_bwd_token(P, 32, TOKEN_ARGS);
                            else if (N == 64) o = ssd_bwd_token(P, 64, TOKEN_ARGS);
                            else if (N == 128) o = ssd_bwd_token(P, 128, TOKEN_ARGS);
                            else o = ssd_bwd_token(P, N, TOKEN_ARGS);
#undef TOKEN_ARGS
                            /* d h_t / d dt = A da h_{t-1} + x (x) B;  d h_t / d A = dt da h_{t-1} */
                            gdt[(b * L + t) * H + h] = A[h] * da * keep * o.aP + o.xaB;
                            sumA += d * da * keep * o.aP;
                            sumD += o.dyx;
                        }
                    }
                    gA[b * H + h] = sumA;
                    gD[b * H + h] = sumD;
                    if (ginit) memcpy(ginit + (b * H + h) * PN, adj, sizeof(float) * PN);
                }
            }
        }
        free(adj);
        free(hs);
    }
}

/* Per row of logits (V entries): lse = log sum exp, logp = l[target] - lse, entropy = lse -
 * sum softmax * l: the row maximum, then one pass for both sums. */
void logprob_fwd_f32(int64_t rows, int64_t V, const float *logits, const int64_t *target, float *logp,
                     float *entropy, float *lse, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *l = logits + r * V;
        const float m = row_max(l, V);
        float s = 0.0f, sl = 0.0f;
        for (int64_t i = 0; i < V; i++) {
            const float e = fast_expf(l[i] - m);
            s += e;
            sl += e * l[i];
        }
        const float z = m + logf(s);
        lse[r] = z;
        logp[r] = l[target[r]] - z;
        entropy[r] = z - sl / s;
    }
}

/* d logp / d l_i = [i = target] - softmax_i, times the row's incoming gradient. */
void logprob_bwd_f32(int64_t rows, int64_t V, const float *logits, const int64_t *target, const float *lse,
                     const float *grad_logp, float *grad_logits, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *l = logits + r * V;
        float *g = grad_logits + r * V;
        const float gr = grad_logp[r], z = lse[r];
        for (int64_t i = 0; i < V; i++) g[i] = -gr * fast_expf(l[i] - z);
        g[target[r]] += gr;
    }
}

/* The routed experts' outputs back to their tokens (reference: moe_routed_ref's weighting and
 * index_add_): out[t] = sum_k w[t K + k] y[slot[t K + k]], slot[c] the row of y (expert-sorted)
 * holding choice c; w NULL for weights of one (the backward of gathering each token's row into
 * its slots). A gather by token: no zero fill, no scattered accumulation. */
void moe_combine_f32(int64_t T, int64_t K, int64_t D, const float *y, const int64_t *slot, const float *w,
                     float *out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < T; t++) {
        float *restrict o = out + t * D;
        for (int64_t k = 0; k < K; k++) {
            const float *restrict yr = y + slot[t * K + k] * D, c = w ? w[t * K + k] : 1.0f;
            if (k == 0)
                for (int64_t i = 0; i < D; i++) o[i] = c * yr[i];
            else
                for (int64_t i = 0; i < D; i++) o[i] += c * yr[i];
        }
    }
}

/* grad_y[slot[t K + k]] = w[t K + k] g[t], grad_w[t K + k] = g[t] . y[slot[t K + k]]. */
void moe_combine_bwd_f32(int64_t T, int64_t K, int64_t D, const float *y, const int64_t *slot, const float *w,
                         const float *g, float *grad_y, float *grad_w, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < T; t++) {
        const float *restrict gt = g + t * D;
        for (int64_t k = 0; k < K; k++) {
            const int64_t s = slot[t * K + k];
            const float *restrict yr = y + s * D, c = w[t * K + k];
            float *restrict gy = grad_y + s * D, dot = 0.0f;
            for (int64_t i = 0; i < D; i++) {
                gy[i] = c * gt[i];
                dot += gt[i] * yr[i];
            }
            grad_w[t * K + k] = dot;
        }
    }
}

/* relu(x)^2 (the MLP's and the experts' activation), reference relu2 in rlvr/kernels/moe.py:
 * one pass each way where torch runs relu, square and, backward, their two gradients. */
void relu2_fwd_f32(int64_t numel, const float *x, float *out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < numel; i++) {
        const float r = x[i] > 0.0f ? x[i] : 0.0f;
        out[i] = r * r;
    }
}

void relu2_bwd_f32(int64_t numel, const float *x, const float *grad_out, float *grad_x, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < numel; i++) grad_x[i] = x[i] > 0.0f ? 2.0f * x[i] * grad_out[i] : 0.0f;
}
