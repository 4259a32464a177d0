/* RMSNorm on the CPU for inference: one pass per row instead of torch's six ops (float cast,
 * square, mean, rsqrt, two products), each of which writes a full tensor. fp32. Torch
 * reference: rlvr/kernels/norm.py, rms_norm_ref. */
#include <math.h>
#include <stdint.h>

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
