/* Training kernels on the CPU: forward and backward of the Mamba-2 mixer's elementwise stages,
 * each one pass over memory where the torch reference (rlvr/kernels/mamba.py) runs a chain of
 * ops that each write a full tensor. fp32 in, fp32 accumulation.
 *
 *   conv_silu:  out = silu(bias + sum_i w[c, i] * x[t - (K-1) + i])    (causal depthwise conv,
 *               inputs from another document of a packed row masked out), reference
 *               silu(causal_conv1d(...)); the backward recomputes the pre-activation from x.
 *   gated_norm: out = w * h / rms_g(h), h = y * silu(z), RMS over groups of channels, reference
 *               gated_rms_norm; the backward recomputes h and 1/rms.
 *
 * Layouts: x, out (batch, seqlen, channels) channel-contiguous; w (channels, K); seq_idx
 * (batch, seqlen) int64 or NULL. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

static inline float sigmoidf(float a) { return 1.0f / (1.0f + expf(-a)); }

/* The pre-activation of row b at token t, channel range [c0, c1), into pre[c0..c1). */
static inline void conv_pre(int64_t L, int64_t ch, int64_t K, const float *xb, const float *w, const float *bias,
                            const int64_t *seqb, int64_t t, float *pre) {
    for (int64_t c = 0; c < ch; c++) pre[c] = bias ? bias[c] : 0.0f;
    for (int64_t i = 0; i < K; i++) {
        int64_t s = t - (K - 1) + i;
        if (s < 0 || (seqb && seqb[s] != seqb[t])) continue;
        const float *xs = xb + s * ch;
        for (int64_t c = 0; c < ch; c++) pre[c] += w[c * K + i] * xs[c];
    }
}

void conv_silu_fwd_f32(int64_t batch, int64_t L, int64_t ch, int64_t K, const float *x, const float *w,
                       const float *bias, const int64_t *seq_idx, float *out, int nthreads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t t = 0; t < L; t++) {
            float *o = out + (b * L + t) * ch;
            conv_pre(L, ch, K, x + b * L * ch, w, bias, seq_idx ? seq_idx + b * L : NULL, t, o);
            for (int64_t c = 0; c < ch; c++) o[c] = o[c] * sigmoidf(o[c]);
        }
    }
}

/* grad_x (batch, L, ch); grad_w (ch, K) and grad_bias (ch) are summed over every token (each
 * thread into its own buffer, then added up), grad_bias may be NULL. */
void conv_silu_bwd_f32(int64_t batch, int64_t L, int64_t ch, int64_t K, const float *x, const float *w,
                       const float *bias, const int64_t *seq_idx, const float *grad_out, float *grad_x,
                       float *grad_w, float *grad_bias, int nthreads) {
    float *gpre = malloc(sizeof(float) * batch * L * ch);
    float *partial = calloc((size_t)nthreads * ch * (K + 1), sizeof(float));
#pragma omp parallel num_threads(nthreads)
    {
        float *mine = partial + (size_t)omp_get_thread_num() * ch * (K + 1);  /* K weights, then bias */
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < batch; b++) {
            for (int64_t t = 0; t < L; t++) {
                const int64_t *seqb = seq_idx ? seq_idx + b * L : NULL;
                const float *xb = x + b * L * ch, *go = grad_out + (b * L + t) * ch;
                float *g = gpre + (b * L + t) * ch;
                conv_pre(L, ch, K, xb, w, bias, seqb, t, g);
                for (int64_t c = 0; c < ch; c++) {
                    float s = sigmoidf(g[c]);
                    g[c] = go[c] * s * (1.0f + g[c] * (1.0f - s));  /* silu'(a) = s (1 + a (1 - s)) */
                }
                for (int64_t i = 0; i < K; i++) {
                    int64_t s = t - (K - 1) + i;
                    if (s < 0 || (seqb && seqb[s] != seqb[t])) continue;
                    const float *xs = xb + s * ch;
                    for (int64_t c = 0; c < ch; c++) mine[c * (K + 1) + i] += g[c] * xs[c];
                }
                for (int64_t c = 0; c < ch; c++) mine[c * (K + 1) + K] += g[c];
            }
        }
        /* grad_x[u] = sum_i gpre[u + (K-1) - i] * w[i], same document only */
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < batch; b++) {
            for (int64_t u = 0; u < L; u++) {
                const int64_t *seqb = seq_idx ? seq_idx + b * L : NULL;
                float *gx = grad_x + (b * L + u) * ch;
                for (int64_t c = 0; c < ch; c++) gx[c] = 0.0f;
                for (int64_t i = 0; i < K; i++) {
                    int64_t t = u + (K - 1) - i;
                    if (t >= L || (seqb && seqb[t] != seqb[u])) continue;
                    const float *g = gpre + (b * L + t) * ch;
                    for (int64_t c = 0; c < ch; c++) gx[c] += g[c] * w[c * K + i];
                }
            }
        }
    }
    for (int64_t c = 0; c < ch; c++) {
        for (int64_t i = 0; i <= K; i++) {
            float sum = 0.0f;
            for (int th = 0; th < nthreads; th++) sum += partial[(size_t)th * ch * (K + 1) + c * (K + 1) + i];
            if (i < K) grad_w[c * K + i] = sum;
            else if (grad_bias) grad_bias[c] = sum;
        }
    }
    free(partial);
    free(gpre);
}

void gated_norm_fwd_f32(int64_t rows, int64_t dim, int64_t group, const float *y, const float *z, const float *w,
                        float eps, float *out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * dim, *zr = z + r * dim;
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
void gated_norm_bwd_f32(int64_t rows, int64_t dim, int64_t group, const float *y, const float *z, const float *w,
                        float eps, const float *grad_out, float *grad_y, float *grad_z, float *grad_w,
                        int nthreads) {
    float *partial = calloc((size_t)nthreads * dim, sizeof(float));
#pragma omp parallel num_threads(nthreads)
    {
        float *mine = partial + (size_t)omp_get_thread_num() * dim;
        float *h = malloc(sizeof(float) * dim);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *yr = y + r * dim, *zr = z + r * dim, *go = grad_out + r * dim;
            float *gy = grad_y + r * dim, *gz = grad_z + r * dim;
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
