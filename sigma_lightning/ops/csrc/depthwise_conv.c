/* Depthwise convolution over time for float32 CPU tensors, channels-last, forward and backward,
 * with the padding mask and SiLU folded in (the Mamba block's causal conv, SIGMA's masked convs).
 *
 * Plain C99, no torch headers, built into the same library as selective_scan.c (build.py) and
 * called through ctypes (_cconv.py); each call handles a range of batch rows on one thread.
 *
 * Per batch row and channel c, with keep_s = 1 at real positions and 0 at padding (1 everywhere
 * without a mask) and taps k = 0 .. K-1:
 *     xm_s  = x_s * keep_s
 *     pre_t = bias + sum_k w_k * xm_{t-P+k}      (terms outside 0 <= t-P+k < L are zero)
 *     y_t   = act(pre_t) * (mask_out ? keep_t : 1),   act = identity or SiLU
 * P = K-1 is the causal convolution (Mamba's), P = (K-1)/2 PyTorch's padding="same".
 *
 * The inner loops run over the D contiguous channels of one step, so they vectorise with no
 * horizontal sums. The backward recomputes pre_t instead of storing it.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"

typedef struct {
    const float *x;     /* input: row b, step t, channel c at x[b * sxb + t * sxt + c] */
    const float *w;     /* (K, D) taps, tap-major */
    const float *bias;  /* (D,) or NULL */
    const float *keep;  /* (Bsz, L) or NULL */
    float *y;           /* forward output (Bsz, L, D) */
    const float *gy;    /* backward input (Bsz, L, D): dLoss/dy */
    float *gx;          /* (Bsz, L, D): dLoss/dx */
    float *gw;          /* (Bsz, K, D): each row's part of dLoss/dw (written, not added to) */
    float *gbias;       /* (Bsz, D): each row's part of dLoss/dbias, or NULL */
    int64_t D, L, K, P, sxb, sxt, silu, mask_out;
} conv_args;

#define CONV_OK 0
#define CONV_OUT_OF_MEMORY 1 /* the caller raises MemoryError; no output was written */

INLINE float keep_at(const conv_args *a, int64_t b, int64_t s) { return a->keep ? a->keep[b * a->L + s] : 1.0f; }

/* pre (D) <- bias + sum_k w_k * xm_{t-P+k} for row b at step t */
INLINE void pre_activation(const conv_args *a, int64_t b, int64_t t, float *pre) {
    const int64_t D = a->D;
    if (a->bias)
        memcpy(pre, a->bias, sizeof(float) * (size_t)D);
    else
        memset(pre, 0, sizeof(float) * (size_t)D);
    for (int64_t k = 0; k < a->K; k++) {
        const int64_t s = t - a->P + k;
        if (s < 0 || s >= a->L) continue;
        const float ks = keep_at(a, b, s);
        if (ks == 0.0f) continue;
        const float *xs = a->x + b * a->sxb + s * a->sxt, *wk = a->w + k * D;
#pragma omp simd
        for (int64_t c = 0; c < D; c++) pre[c] += wk[c] * (xs[c] * ks);
    }
}

/* Forward of batch rows [b0, b1). */
int64_t conv_fwd(const conv_args *a, int64_t b0, int64_t b1, int64_t slot) {
    (void)slot; /* no sums over rows */
    const int64_t D = a->D, L = a->L;
    FLUSH_SUBNORMALS_BEGIN
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t t = 0; t < L; t++) {
            float *yt = a->y + (b * L + t) * D;
            pre_activation(a, b, t, yt);
            const float kt = a->mask_out ? keep_at(a, b, t) : 1.0f;
            if (a->silu) {
#pragma omp simd
                for (int64_t c = 0; c < D; c++) yt[c] = yt[c] * sigmoid_f32(yt[c]) * kt;
            } else if (a->mask_out) {
#pragma omp simd
                for (int64_t c = 0; c < D; c++) yt[c] *= kt;
            }
        }
    }
    FLUSH_SUBNORMALS_END
    return CONV_OK;
}

/* Backward of batch rows [b0, b1): gx, and each row's gw and gbias. Scratch: dLoss/dpre (L, D). */
int64_t conv_bwd(const conv_args *a, int64_t b0, int64_t b1, int64_t slot) {
    (void)slot; /* no sums over rows */
    const int64_t D = a->D, L = a->L, K = a->K, P = a->P;
    float *gpre = (float *)malloc(sizeof(float) * (size_t)(L * D));
    if (!gpre) return CONV_OUT_OF_MEMORY;
    FLUSH_SUBNORMALS_BEGIN
    for (int64_t b = b0; b < b1; b++) {
        float *gw = a->gw + b * K * D, *gb = a->gbias ? a->gbias + b * D : NULL;
        memset(gw, 0, sizeof(float) * (size_t)(K * D));
        if (gb) memset(gb, 0, sizeof(float) * (size_t)D);
        /* 1. dLoss/dpre_t, and the sums it feeds: bias and taps */
        for (int64_t t = 0; t < L; t++) {
            float *g = gpre + t * D;
            const float *gyt = a->gy + (b * L + t) * D;
            const float kt = a->mask_out ? keep_at(a, b, t) : 1.0f;
            if (a->silu) {
                pre_activation(a, b, t, g);
#pragma omp simd
                for (int64_t c = 0; c < D; c++) {
                    const float sg = sigmoid_f32(g[c]);
                    g[c] = gyt[c] * kt * sg * (1.0f + g[c] * (1.0f - sg));
                }
            } else {
#pragma omp simd
                for (int64_t c = 0; c < D; c++) g[c] = gyt[c] * kt;
            }
            if (gb) {
#pragma omp simd
                for (int64_t c = 0; c < D; c++) gb[c] += g[c];
            }
            for (int64_t k = 0; k < K; k++) {
                const int64_t s = t - P + k;
                if (s < 0 || s >= L) continue;
                const float ks = keep_at(a, b, s);
                if (ks == 0.0f) continue;
                const float *xs = a->x + b * a->sxb + s * a->sxt;
                float *gwk = gw + k * D;
#pragma omp simd
                for (int64_t c = 0; c < D; c++) gwk[c] += g[c] * (xs[c] * ks);
            }
        }
        /* 2. x_s reaches pre_t through tap k = s - t + P */
        for (int64_t s = 0; s < L; s++) {
            float *gxs = a->gx + (b * L + s) * D;
            memset(gxs, 0, sizeof(float) * (size_t)D);
            const float ks = keep_at(a, b, s);
            if (ks == 0.0f) continue;
            for (int64_t k = 0; k < K; k++) {
                const int64_t t = s + P - k;
                if (t < 0 || t >= L) continue;
                const float *g = gpre + t * D, *wk = a->w + k * D;
#pragma omp simd
                for (int64_t c = 0; c < D; c++) gxs[c] += wk[c] * g[c];
            }
            if (ks != 1.0f) {
#pragma omp simd
                for (int64_t c = 0; c < D; c++) gxs[c] *= ks;
            }
        }
    }
    FLUSH_SUBNORMALS_END
    free(gpre);
    return CONV_OK;
}

/* Struct size, to check the caller's mirror. */
int64_t conv_args_size(void) { return (int64_t)sizeof(conv_args); }
