/* Causal grouped-query attention on the CPU for inference: prefill, decode over a KV cache whose
 * rows hold different lengths, packed documents (torch reference: rlvr/kernels/attention.py).
 *
 * Why not torch's SDPA: for a decode step it reads the whole reserved cache through a mask, and
 * at small head sizes its flash kernel spends its time on tiling overheads. Here each query walks
 * exactly its own keys, in blocks, with an online softmax (running max and sum: the scores never
 * exist as a (queries x keys) matrix), fp32 throughout.
 *
 * Query i of row r sees keys [start, past[r] + i] where past[r] counts the keys before this
 * chunk's first query (0 for a fresh sequence, the cached length when continuing or decoding)
 * and start is the first token of i's document when seq_idx is given (packed rows), else 0.
 * Tensors are given with strides (in floats; the head dimension is contiguous) so the q/k/v
 * projections and the cache are read where they lie. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

typedef struct {
    int64_t nheads, kv_heads, head_dim;
    int64_t q_sb, q_sh, q_st;  /* strides of q (batch, head, token) */
    int64_t k_sb, k_sh, k_st;  /* of k, (batch, kv head, key) */
    int64_t v_sb, v_sh, v_st;
    float scale;
} AttnDims;

#define KEY_BLOCK 64

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/* Online softmax over one block of scores: p_j = exp(s_j - m), running max m and sum l; returns
 * the factor by which the output accumulated so far must be rescaled. */
static inline float softmax_block(float *scores, int64_t n, float *m, float *l) {
    float block_max = -3.0e38f;
    for (int64_t j = 0; j < n; j++) block_max = scores[j] > block_max ? scores[j] : block_max;
    const float m_new = block_max > *m ? block_max : *m, rescale = fast_expf(*m - m_new);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) sum += scores[j] = fast_expf(scores[j] - m_new);
    *l = *l * rescale + sum;
    *m = m_new;
    return rescale;
}

/* The queries of one token for the `group` heads sharing a kv head, against keys [start, end)
 * read in place (decode: the cache's (keys, hd) rows). out (group, hd) = softmax(q K^T) V per head.
 * Heads run inside each block of keys, so a block of K and V comes from memory once for the
 * whole group (decode is bound by reading the cache). Scores four keys at a time. */
static void attend_group(const AttnDims *d, int64_t group, const float *q, const float *k, const float *v,
                         int64_t start, int64_t end, float *out, int64_t out_sh) {
    const int64_t hd = d->head_dim;
    float scores[KEY_BLOCK], m[group], l[group];
    for (int64_t g = 0; g < group; g++) {
        m[g] = -3.0e38f, l[g] = 0.0f;
        for (int64_t i = 0; i < hd; i++) out[g * out_sh + i] = 0.0f;
    }
    for (int64_t j0 = start; j0 < end; j0 += KEY_BLOCK) {
        const int64_t n = end - j0 < KEY_BLOCK ? end - j0 : KEY_BLOCK;
        for (int64_t g = 0; g < group; g++) {
            const float *qg = q + g * d->q_sh;
            float *og = out + g * out_sh;
            int64_t j = 0;
            if (hd % 8 == 0)
                for (; j + 4 <= n; j += 4) dot4(qg, k + (j0 + j) * d->k_st, d->k_st, hd, scores + j);
            for (; j < n; j++) scores[j] = dot(qg, k + (j0 + j) * d->k_st, hd);
            for (j = 0; j < n; j++) scores[j] *= d->scale;
            const float rescale = softmax_block(scores, n, &m[g], &l[g]);
            for (int64_t i = 0; i < hd; i++) og[i] *= rescale;
            lincomb(scores, n, v + j0 * d->v_st, d->v_st, hd, og, 1);
        }
    }
    for (int64_t g = 0; g < group; g++) {
        const float inv = 1.0f / l[g];
        for (int64_t i = 0; i < hd; i++) out[g * out_sh + i] *= inv;
    }
}

/* Every query of a chunk for one (row, head). The keys are copied once, transposed to (hd, keys),
 * so scores are products vectorised over keys (no horizontal sums), four queries at a time so
 * each key vector loaded serves four of them; the softmax is exact over each query's keys
 * (scores past a query's own last key are zeroed), then out = p V as sums of V rows. */
static void attend_chunk(const AttnDims *d, int64_t Lq, const float *q, const float *k, const float *v,
                         int64_t past, const int64_t *seq, float *out, int64_t out_stride) {
    const int64_t hd = d->head_dim, keys = past + Lq;
    float *kT = malloc(sizeof(float) * (hd * keys + 4 * keys + 4 * hd)), *p = kT + hd * keys, *qs = p + 4 * keys;
    for (int64_t j = 0; j < keys; j++)
        for (int64_t i = 0; i < hd; i++) kT[i * keys + j] = k[j * d->k_st + i];
    int64_t start = 0;
    for (int64_t t0 = 0; t0 < Lq; t0 += 4) {
        const int64_t nq = Lq - t0 < 4 ? Lq - t0 : 4;
        int64_t starts[4];
        for (int64_t u = 0; u < nq; u++) {
            if (seq && t0 + u > 0 && seq[t0 + u] != seq[t0 + u - 1]) start = t0 + u;  /* new document */
            starts[u] = start;
        }
        /* The block covers keys [starts[0], past + t0 + nq); a query's own range is a suffix. */
        const int64_t lo = starts[0], span = past + t0 + nq - lo;
        for (int64_t u = 0; u < 4; u++)
            for (int64_t i = 0; i < hd; i++) qs[u * hd + i] = u < nq ? q[(t0 + u) * d->q_st + i] * d->scale : 0.0f;
        lincomb4(qs, hd, kT + lo, keys, span, p, span);  /* scores (4, span): key lo + j */
        float inv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t u = 0; u < 4; u++) {
            float *row = p + u * span;
            const int64_t first = u < nq ? starts[u] - lo : span, last = u < nq ? past + t0 + u + 1 - lo : span;
            for (int64_t j = 0; j < first; j++) row[j] = 0.0f;  /* before the query's document */
            for (int64_t j = last; j < span; j++) row[j] = 0.0f;  /* after the query itself */
            if (first < last) {
                float m = -3.0e38f, l = 0.0f;
                softmax_block(row + first, last - first, &m, &l);
                inv[u] = 1.0f / l;
            }
        }
        float tmp[4 * hd];
        lincomb4(p, span, v + lo * d->v_st, d->v_st, hd, tmp, hd);
        for (int64_t u = 0; u < nq; u++)
            for (int64_t i = 0; i < hd; i++) out[(t0 + u) * out_stride + i] = tmp[u * hd + i] * inv[u];
    }
    free(kT);
}

/* q: (b, nheads, Lq, hd) by strides; k, v: (b, kv_heads, keys, hd) by strides; past (b);
 * seq_idx (b, Lq) or NULL (with seq_idx, past must be 0: packing is for whole sequences);
 * out (b, Lq, nheads, hd) contiguous. */
void attention_f32(const AttnDims *d, int64_t b, int64_t Lq, const float *q, const float *k, const float *v,
                   const int64_t *past, const int64_t *seq_idx, float *out, int nthreads) {
    const int64_t H = d->nheads, hd = d->head_dim, group = d->nheads / d->kv_heads;
    if (Lq >= 8) {  /* prefill: per (row, head), all queries at once */
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(nthreads)
        for (int64_t r = 0; r < b; r++)
            for (int64_t h = 0; h < H; h++)
                attend_chunk(d, Lq, q + r * d->q_sb + h * d->q_sh, k + r * d->k_sb + (h / group) * d->k_sh,
                             v + r * d->v_sb + (h / group) * d->v_sh, past[r], seq_idx ? seq_idx + r * Lq : NULL,
                             out + r * Lq * H * hd + h * hd, H * hd);
        return;
    }
#pragma omp parallel for collapse(3) schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++)
        for (int64_t kvh = 0; kvh < d->kv_heads; kvh++)
            for (int64_t t = 0; t < Lq; t++) {
                int64_t start = 0;
                if (seq_idx) {  /* back to the first token of this document */
                    const int64_t *s = seq_idx + r * Lq;
                    start = t;
                    while (start > 0 && s[start - 1] == s[t]) start--;
                }
                attend_group(d, group, q + r * d->q_sb + kvh * group * d->q_sh + t * d->q_st,
                             k + r * d->k_sb + kvh * d->k_sh, v + r * d->v_sb + kvh * d->v_sh, start,
                             past[r] + t + 1, out + ((r * Lq + t) * H + kvh * group) * hd, hd);
            }
}
