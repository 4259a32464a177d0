/* Sampling from logits on the CPU, one pass per row: log-softmax of the sampled token and an
 * inverse-CDF draw at temperature T from a given uniform number (torch reference:
 * rlvr/kernels/sampling.py, sample_ref). torch spends five ops (log_softmax, softmax, cumsum,
 * searchsorted, gather) and a full-size temporary on each; at a decode step of 512 rows that was
 * a tenth of the step. */
#include <math.h>
#include <stdint.h>

#include "simd.h"

void sample_f32(int64_t rows, int64_t vocab, const float *logits, float inv_temperature, const float *uniform,
                int64_t *tokens, float *logprobs, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *l = logits + r * vocab;
        const float m = row_max(l, vocab);
        /* No per-row buffer of probabilities (a stack array of vocab floats overflowed above
         * ~2M tokens): the draw recomputes the exponentials it walks over, in the same order. */
        float raw = 0.0f, total = 0.0f;
        for (int64_t i = 0; i < vocab; i++) raw += fast_expf(l[i] - m);
        for (int64_t i = 0; i < vocab; i++) total += fast_expf((l[i] - m) * inv_temperature);
        /* the first token whose cumulative mass exceeds u * total */
        const float target = uniform[r] * total;
        float cumulative = 0.0f;
        int64_t token = vocab - 1;
        for (int64_t i = 0; i < vocab; i++) {
            cumulative += fast_expf((l[i] - m) * inv_temperature);
            if (cumulative > target) {
                token = i;
                break;
            }
        }
        tokens[r] = token;
        logprobs[r] = l[token] - m - logf(raw);
    }
}

/* Wellons' "lowbias32" integer hash (torch reference: _mix32 in rlvr/kernels/sampling.py). */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

/* u = hash(key, position) in [0, 1) with 24 bits, one per row (reference: counter_uniform_ref).
 * keys: (rows, 2) int64 holding two 32-bit halves; positions: (rows,) int64. In torch the
 * 32-bit multiplies need four int64 ops each: ~100 us a decode step at 512 rows, 3% of it. */
void counter_uniform_f32(int64_t rows, const int64_t *keys, const int64_t *positions, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        uint32_t h = mix32(mix32(mix32((uint32_t)positions[r]) ^ (uint32_t)keys[2 * r]) ^ (uint32_t)keys[2 * r + 1]);
        out[r] = (float)(h >> 8) * 0x1p-24f;
    }
}
