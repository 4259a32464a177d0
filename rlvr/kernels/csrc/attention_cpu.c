/* Causal grouped-query attention on the CPU: for inference, prefill and decode over a KV cache
 * whose rows hold different lengths, packed documents; for training, the forward over whole
 * sequences that also keeps each query's log-sum-exp, and its backward (torch reference:
 * rlvr/kernels/attention.py, whose SDPA backward at small head sizes spends its time on tiling).
 *
 * Why not torch's SDPA: for a decode step it reads the whole reserved cache through a mask; at
 * small head sizes its flash kernel spends its time on tiling overheads, and at 4 x 1024 tokens,
 * 12 heads of 64, it does the causal work at about 120 GFLOP/s on two cores, forward and
 * backward (the blocks below: 206 and 220); packed rows reach it as a dense mask. Here a decode
 * query walks exactly its own keys with an online softmax (running max and sum); whole sequences
 * go by blocks of 32 queries, each block's scores one register-tiled product over the keys it
 * sees. fp32 throughout.
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

/* Whole sequences (prefill and training) go by blocks of QBLOCK queries: a block's scores
 * against its keys are one matrix product (mm_bcast), so every key vector loaded serves the
 * block's queries (the block's diagonal square, half masked, is the only work wasted), and the
 * probabilities times V another. Keys are copied once per (row, head): as panels of PANEL keys
 * for the scores (the product's right factor read by rows of 16 keys, contiguous: the keys'
 * own columns lie 4 KB apart, where the cache keeps only a few lines of one set), and as
 * contiguous rows for the products that read them by rows. */
#define QBLOCK 32
#define PANEL 16

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* kp[(j / PANEL) hd PANEL + i PANEL + j % PANEL] = k[j, i] for keys j < round_up(keys, PANEL),
 * zeros past the last key. */
static void to_panels(const float *k, int64_t k_st, int64_t keys, int64_t hd, float *kp) {
    for (int64_t j = 0; j < round_up(keys, PANEL); j++)
        for (int64_t i = 0; i < hd; i++)
            kp[(j / PANEL) * hd * PANEL + i * PANEL + j % PANEL] = j < keys ? k[j * k_st + i] : 0.0f;
}

/* kr (round_up(keys, PANEL), hd): the rows of k, contiguous, zeros past the last key. */
static void to_rows(const float *k, int64_t k_st, int64_t keys, int64_t hd, float *kr) {
    for (int64_t j = 0; j < round_up(keys, PANEL); j++)
        for (int64_t i = 0; i < hd; i++) kr[j * hd + i] = j < keys ? k[j * k_st + i] : 0.0f;
}

/* s (nq, span; row stride span) = qs (nq, hd) times the keys [lo, lo + span) of kp, transposed
 * (lo and span multiples of PANEL). */
static void block_scores(int64_t nq, int64_t hd, const float *qs, const float *kp, int64_t lo, int64_t span, float *s) {
    for (int64_t j = 0; j < span; j += PANEL)
        mm_bcast(nq, PANEL, hd, qs, hd, 1, kp + (lo + j) * hd, PANEL, s + j, span, 0);
}

/* The first token of the document of each of the nq queries from t0 (*start: the running one). */
static inline void doc_starts(const int64_t *seq, int64_t t0, int64_t nq, int64_t *start, int64_t *starts) {
    for (int64_t u = 0; u < nq; u++) {
        if (seq && t0 + u > 0 && seq[t0 + u] != seq[t0 + u - 1]) *start = t0 + u;  /* new document */
        starts[u] = *start;
    }
}

/* A block of queries [t0, t0 + nq): the keys it reads, [*lo, *lo + *span), rounded out to panels. */
static inline void block_keys(const int64_t *starts, int64_t past, int64_t t0, int64_t nq, int64_t *lo, int64_t *span) {
    *lo = starts[0] / PANEL * PANEL;
    *span = round_up(past + t0 + nq - *lo, PANEL);
}

/* Every query of a sequence for one (row, head): per block, the scores, each query's exact
 * softmax over its own keys (the rest of its row zeroed), then out = p V. lse (Lq), if not NULL,
 * receives each query's log-sum-exp of scores (training). */
static void attend_chunk(const AttnDims *d, int64_t Lq, const float *q, const float *k, const float *v,
                         int64_t past, const int64_t *seq, float *out, int64_t out_stride, float *lse) {
    const int64_t hd = d->head_dim, keys = past + Lq, padded = round_up(keys, PANEL);
    float *kp = malloc(sizeof(float) * (2 * padded * hd + QBLOCK * padded + 2 * QBLOCK * hd));
    float *vr = kp + padded * hd, *p = vr + padded * hd, *qs = p + QBLOCK * padded, *o = qs + QBLOCK * hd;
    to_panels(k, d->k_st, keys, hd, kp);
    to_rows(v, d->v_st, keys, hd, vr);
    int64_t start = 0, starts[QBLOCK];
    for (int64_t t0 = 0; t0 < Lq; t0 += QBLOCK) {
        const int64_t nq = Lq - t0 < QBLOCK ? Lq - t0 : QBLOCK;
        int64_t lo, span;
        doc_starts(seq, t0, nq, &start, starts);
        block_keys(starts, past, t0, nq, &lo, &span);
        for (int64_t u = 0; u < nq; u++)
            for (int64_t i = 0; i < hd; i++) qs[u * hd + i] = q[(t0 + u) * d->q_st + i] * d->scale;
        block_scores(nq, hd, qs, kp, lo, span, p);
        float inv[QBLOCK];
        for (int64_t u = 0; u < nq; u++) {
            float *row = p + u * span, m = -3.0e38f, l = 0.0f;
            const int64_t first = starts[u] - lo, last = past + t0 + u + 1 - lo;
            for (int64_t j = 0; j < first; j++) row[j] = 0.0f;  /* before the query's document */
            for (int64_t j = last; j < span; j++) row[j] = 0.0f;  /* after the query itself */
            softmax_block(row + first, last - first, &m, &l);
            inv[u] = 1.0f / l;
            if (lse) lse[t0 + u] = m + logf(l);
        }
        mm_bcast(nq, hd, span, p, span, 1, vr + lo * hd, hd, o, hd, 0);
        for (int64_t u = 0; u < nq; u++)
            for (int64_t i = 0; i < hd; i++) out[(t0 + u) * out_stride + i] = o[u * hd + i] * inv[u];
    }
    free(kp);
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
                             out + r * Lq * H * hd + h * hd, H * hd, NULL);
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

/* ---------------------------------------------------------------- training (past = 0)
 * The forward of attention_f32's prefill for every length, with lse (b, nheads, L): the
 * backward rebuilds each probability from it, p = exp(s - lse), instead of storing them. */
void attention_train_fwd_f32(const AttnDims *d, int64_t b, int64_t L, const float *q, const float *k,
                             const float *v, const int64_t *seq_idx, float *out, float *lse, int nthreads) {
    const int64_t H = d->nheads, hd = d->head_dim, group = d->nheads / d->kv_heads;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++)
        for (int64_t h = 0; h < H; h++)
            attend_chunk(d, L, q + r * d->q_sb + h * d->q_sh, k + r * d->k_sb + (h / group) * d->k_sh,
                         v + r * d->v_sb + (h / group) * d->v_sh, 0, seq_idx ? seq_idx + r * L : NULL,
                         out + r * L * H * hd + h * hd, H * hd, lse + (r * H + h) * L);
}

/* The gradients of one (row, kv head): its query heads in turn, so grad_k and grad_v (keys, hd)
 * sum over them in a local buffer without atomics. Per block of queries, with s the scores and
 * p = exp(s - lse): dP = dO V^T, dS = p (dP - rowsum(dO * O)), dQ = scale dS K, dK += dS^T
 * (scale Q), dV += p^T dO, each masked as the forward was and each one product (the key
 * gradients' a sum over the block's queries, so their rows are read and written once per
 * block). o, go, gq: (L, H, hd) of this row; gk, gv: (L, kv_heads, hd) of this row. */
static void attend_chunk_bwd(const AttnDims *d, int64_t L, int64_t kvh, const float *q, const float *k,
                             const float *v, const float *o, const float *go, const float *lse, const int64_t *seq,
                             float *gq, float *gk, float *gv) {
    const int64_t hd = d->head_dim, H = d->nheads, group = H / d->kv_heads, os = H * hd, gs = d->kv_heads * hd;
    const int64_t padded = round_up(L, PANEL);
    float *kp = malloc(sizeof(float) * (5 * padded * hd + 2 * QBLOCK * padded + 3 * QBLOCK * hd));
    float *vp = kp + padded * hd, *kr = vp + padded * hd, *acck = kr + padded * hd, *accv = acck + padded * hd;
    float *p = accv + padded * hd, *ds = p + QBLOCK * padded, *qs = ds + QBLOCK * padded, *gos = qs + QBLOCK * hd;
    float *tmp = gos + QBLOCK * hd;
    to_panels(k, d->k_st, L, hd, kp);
    to_panels(v, d->v_st, L, hd, vp);
    to_rows(k, d->k_st, L, hd, kr);
    for (int64_t i = 0; i < 2 * padded * hd; i++) acck[i] = 0.0f;
    for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
        const float *qh = q + h * d->q_sh, *lh = lse + h * L;
        int64_t start = 0, starts[QBLOCK];
        for (int64_t t0 = 0; t0 < L; t0 += QBLOCK) {
            const int64_t nq = L - t0 < QBLOCK ? L - t0 : QBLOCK;
            int64_t lo, span;
            doc_starts(seq, t0, nq, &start, starts);
            block_keys(starts, 0, t0, nq, &lo, &span);
            float delta[QBLOCK];
            for (int64_t u = 0; u < nq; u++) {
                delta[u] = 0.0f;
                for (int64_t i = 0; i < hd; i++) {
                    qs[u * hd + i] = qh[(t0 + u) * d->q_st + i] * d->scale;
                    gos[u * hd + i] = go[(t0 + u) * os + h * hd + i];
                    delta[u] += gos[u * hd + i] * o[(t0 + u) * os + h * hd + i];
                }
            }
            block_scores(nq, hd, qs, kp, lo, span, p);
            block_scores(nq, hd, gos, vp, lo, span, ds);  /* dP */
            for (int64_t u = 0; u < nq; u++) {
                const int64_t first = starts[u] - lo, last = t0 + u + 1 - lo;
                const float m = lh[t0 + u];
                for (int64_t j = 0; j < span; j++) {
                    const int in = j >= first && j < last;
                    const float pj = in ? fast_expf(p[u * span + j] - m) : 0.0f;
                    p[u * span + j] = pj;
                    ds[u * span + j] = pj * (ds[u * span + j] - delta[u]);
                }
            }
            mm_bcast(nq, hd, span, ds, span, 1, kr + lo * hd, hd, tmp, hd, 0);
            for (int64_t u = 0; u < nq; u++)
                for (int64_t i = 0; i < hd; i++) gq[(t0 + u) * os + h * hd + i] = tmp[u * hd + i] * d->scale;
            mm_bcast(span, hd, nq, ds, 1, span, qs, hd, acck + lo * hd, hd, 1);
            mm_bcast(span, hd, nq, p, 1, span, gos, hd, accv + lo * hd, hd, 1);
        }
    }
    for (int64_t j = 0; j < L; j++)
        for (int64_t i = 0; i < hd; i++) {
            gk[j * gs + kvh * hd + i] = acck[j * hd + i];
            gv[j * gs + kvh * hd + i] = accv[j * hd + i];
        }
    free(kp);
}

/* q, k, v by strides as in attention_f32; out, grad_out, grad_q (b, L, nheads, hd) and grad_k,
 * grad_v (b, L, kv_heads, hd) contiguous; lse (b, nheads, L) from attention_train_fwd_f32. */
void attention_train_bwd_f32(const AttnDims *d, int64_t b, int64_t L, const float *q, const float *k,
                             const float *v, const int64_t *seq_idx, const float *out, const float *lse,
                             const float *grad_out, float *grad_q, float *grad_k, float *grad_v, int nthreads) {
    const int64_t H = d->nheads, hd = d->head_dim, KV = d->kv_heads;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t r = 0; r < b; r++)
        for (int64_t kvh = 0; kvh < KV; kvh++)
            attend_chunk_bwd(d, L, kvh, q + r * d->q_sb, k + r * d->k_sb + kvh * d->k_sh, v + r * d->v_sb + kvh * d->v_sh,
                             out + r * L * H * hd, grad_out + r * L * H * hd, lse + r * H * L,
                             seq_idx ? seq_idx + r * L : NULL, grad_q + r * L * H * hd, grad_k + r * L * KV * hd,
                             grad_v + r * L * KV * hd);
}
