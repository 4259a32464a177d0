/* RMSNorm on the CPU (forward for inference and training, backward for training): one pass per row instead of torch's six ops (float cast,
 * square, mean, rsqrt, two products), each of which writes a full tensor. fp32. Torch
 * reference: rlvr/kernels/norm.py, rms_norm_ref. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

void rms_norm_f32(int64_t rows, int64_t dim, const float *x, const float *weight, float eps, float *out,
                  int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float ss = 0.0f;
        for (int64_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
        const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
        float *o = out + r * dim;
        for (int64_t i = 0; i < dim; i++) o[i] = weight[i] * (xr[i] * scale);
    }
}

/* The backward, for training: 1/rms recomputed from x; grad_x = s (g - x̂ mean(g x̂)) with
 * g = grad_out * weight, x̂ = x s; grad_weight (dim) = sum over rows of grad_out x̂ (per-thread
 * buffers, then added up in a fixed order). */
void rms_norm_bwd_f32(int64_t rows, int64_t dim, const float *x, const float *weight, float eps,
                      const float *grad_out, float *grad_x, float *grad_w, int nthreads) {
    float *partial = calloc((size_t)nthreads * dim, sizeof(float));
#pragma omp parallel num_threads(nthreads)
    {
        float *mine = partial + (size_t)omp_get_thread_num() * dim;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * dim, *go = grad_out + r * dim;
            float ss = 0.0f, dot = 0.0f;
            for (int64_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
            const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
            for (int64_t i = 0; i < dim; i++) {
                const float hat = xr[i] * scale;
                mine[i] += go[i] * hat;
                dot += go[i] * weight[i] * hat;
            }
            dot /= (float)dim;
            float *gx = grad_x + r * dim;
            for (int64_t i = 0; i < dim; i++) gx[i] = scale * (go[i] * weight[i] - xr[i] * scale * dot);
        }
    }
    for (int64_t i = 0; i < dim; i++) {
        float sum = 0.0f;
        for (int th = 0; th < nthreads; th++) sum += partial[(size_t)th * dim + i];
        grad_w[i] = sum;
    }
    free(partial);
}
