/* The routed half of a Nemotron-H MoE layer on the CPU: router, top-k and the relu² experts
 * (torch reference: rlvr/kernels/moe.py, moe_routed_ref).
 *
 * The torch path sorts tokens by expert and runs a grouped GEMM; on CPU shapes its time goes to
 * the sort, gathers, scatters and topk, not the arithmetic. Here:
 *   1. route every token: sigmoid scores, top-k on score + correction bias, weights normalised
 *      over the chosen and scaled                                          (parallel over tokens)
 *   2. counting sort of the (token, choice) slots by expert                 (one pass)
 *   3. each expert's slots four at a time: relu²(x up^T) * weight, then down, each weight row
 *      loaded once for four tokens (loads, not FMAs, bound the one-token version)
 *                                                                   (parallel over slot blocks)
 *   4. out[token] = the sum of its k slot outputs                          (parallel over tokens)
 * Experts are read transposed (up as (E, dim, I), down as (E, I, dim)) so every product is a sum
 * of contiguous rows. fp32 throughout; inference only. n_group > 1 (grouped routing) is not
 * implemented here: the dispatcher keeps the torch path. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

typedef struct {
    int64_t hidden, dim, n_experts, intermediate, top_k, norm_topk_prob;
    float scale;
} MoEDims;

/* Top-k of `choice` (largest first) into index[0:k], by k passes: k is small (2-22). */
static void top_k(const float *choice, int64_t n, int64_t k, int64_t *index) {
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < n; e++) {
            int taken = 0;
            for (int64_t q = 0; q < j; q++) taken |= index[q] == e;
            if (!taken && (best < 0 || choice[e] > choice[best])) best = e;
        }
        index[j] = best;
    }
}

static void route(const MoEDims *d, int64_t T, const float *xr, const float *routerT, const float *bias,
                  int64_t *index, float *weight, int nthreads) {
    const int64_t E = d->n_experts, K = d->top_k;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < T; t++) {
        float scores[E], choice[E];
        int64_t *idx = index + t * K;
        lincomb(xr + t * d->hidden, d->hidden, routerT, E, E, scores, 0);
        for (int64_t e = 0; e < E; e++) {
            scores[e] = 1.0f / (1.0f + fast_expf(-scores[e]));
            choice[e] = scores[e] + bias[e];
        }
        top_k(choice, E, K, idx);
        float total = 0.0f;
        for (int64_t j = 0; j < K; j++) total += weight[t * K + j] = scores[idx[j]];
        const float norm = d->norm_topk_prob ? d->scale / (total + 1e-20f) : d->scale;
        for (int64_t j = 0; j < K; j++) weight[t * K + j] *= norm;
    }
}

/* Up to four slots of one expert: slot_out[slot] = weight * down(relu²(up(x[token]))). */
static void expert_block(const MoEDims *d, const int64_t *slots, int64_t n, const float *x, const float *up,
                         const float *down, const float *weight, float *slot_out) {
    const int64_t D = d->dim, I = d->intermediate;
    float xs[4 * D], h[4 * I], ys[4 * D];
    for (int64_t q = 0; q < 4; q++)
        for (int64_t c = 0; c < D; c++) xs[q * D + c] = q < n ? x[(slots[q] / d->top_k) * D + c] : 0.0f;
    lincomb4(xs, D, up, I, I, h, I);
    for (int64_t q = 0; q < 4; q++) {
        const float w = q < n ? weight[slots[q]] : 0.0f;
        for (int64_t i = 0; i < I; i++) {
            const float r = h[q * I + i] > 0.0f ? h[q * I + i] : 0.0f;
            h[q * I + i] = w * r * r;  /* relu², with the routing weight folded in */
        }
    }
    lincomb4(h, I, down, D, D, ys, D);
    for (int64_t q = 0; q < n; q++)
        for (int64_t c = 0; c < D; c++) slot_out[slots[q] * D + c] = ys[q * D + c];
}

/* xr (T, hidden): router input; x (T, dim): expert input (= xr, or its latent projection);
 * routerT (hidden, E); bias (E); upT (E, dim, I); downT (E, I, dim); out (T, dim);
 * chosen (T, top_k) or NULL: the experts each token was routed to (a rollout engine's record,
 * for routing replay in the learner). */
void moe_routed_f32(const MoEDims *d, int64_t T, const float *xr, const float *x, const float *routerT,
                    const float *bias, const float *upT, const float *downT, float *out, int64_t *chosen,
                    int nthreads) {
    const int64_t E = d->n_experts, I = d->intermediate, D = d->dim, K = d->top_k, S = T * K;
    int64_t *index = malloc(sizeof(int64_t) * (2 * S + E + 1)), *sorted = index + S, *offsets = sorted + S;
    float *weight = malloc(sizeof(float) * (S + S * D)), *slot_out = weight + S;
    route(d, T, xr, routerT, bias, index, weight, nthreads);
    if (chosen) memcpy(chosen, index, sizeof(int64_t) * S);

    for (int64_t e = 0; e <= E; e++) offsets[e] = 0;  /* counting sort of slots by expert */
    for (int64_t s = 0; s < S; s++) offsets[index[s] + 1]++;
    for (int64_t e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    int64_t fill[E], blocks = 0;
    for (int64_t e = 0; e < E; e++) fill[e] = offsets[e], blocks += (offsets[e + 1] - offsets[e] + 3) / 4;
    for (int64_t s = 0; s < S; s++) sorted[fill[index[s]]++] = s;

    /* on the heap: blocks grow with tokens x top_k (a stack array overflowed at ~2M slots) */
    int64_t *block_expert = malloc(sizeof(int64_t) * 2 * (blocks + 1)), *block_start = block_expert + blocks + 1;
    int64_t nb = 0;
    for (int64_t e = 0; e < E; e++)
        for (int64_t s = offsets[e]; s < offsets[e + 1]; s += 4) block_expert[nb] = e, block_start[nb++] = s;
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthreads)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t e = block_expert[b], s = block_start[b];
        const int64_t n = offsets[e + 1] - s < 4 ? offsets[e + 1] - s : 4;
        expert_block(d, sorted + s, n, x, upT + e * D * I, downT + e * I * D, weight, slot_out);
    }
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * D;
        for (int64_t c = 0; c < D; c++) o[c] = slot_out[(t * K) * D + c];
        for (int64_t j = 1; j < K; j++)
            for (int64_t c = 0; c < D; c++) o[c] += slot_out[(t * K + j) * D + c];
    }
    free(block_expert);
    free(index);
    free(weight);
}
