/* Selective scan (Mamba-1) forward and backward for float32 CPU tensors.
 *
 * Plain C99, no torch headers: sigma_lightning/ops/_cscan.py compiles this file on first use and
 * calls it through ctypes. Each call handles a range of work items on one thread; Python runs
 * several ranges at once (ctypes releases the GIL), so no OpenMP runtime is needed.
 *
 * Recurrence per channel (b, d):  h_l = exp(dt_l A_d) * h_{l-1} + dt_l u_l B_l      (N states)
 *                                 y_l = C_l . h_l + D_d u_l ;  out_l = y_l * silu(z_l)
 *
 * Vectorisation runs across W neighbouring channels (d), not across the N states: B_l and C_l are
 * shared by all channels, so every inner loop is a plain element-wise loop over W lanes with no
 * horizontal sums. Hence channels-last layouts (all contiguous, float32):
 *   u, dt, z, out, dout, du, ddt, dz : (Bsz, L, D)    dt is the final step size (bias/softplus done)
 *   At                               : (N, D)         A transposed
 *   Bm, Cm                           : (Bsz, L, N)
 *   Dv                               : (D,)           may be NULL, as may z (then dz) and dlast
 *   last, dlast                      : (Bsz, D, N)
 *   dA_part                          : (Bsz, N, D)    per-batch partial sums, reduced by the caller
 *   dD_part                          : (Bsz, D)
 *   dB_part, dC_part                 : (Bsz, G, L, N) per channel-group partial sums
 * The backward recomputes the states of W channels into a scratch buffer ((L+1) * N * W floats),
 * then runs the reverse recurrence: nothing of size L * D * N is ever stored.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define W 8 /* channels per block: one AVX2 register, two NEON/SSE registers */

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

#define LOG2E 1.44269504088896341f

/* 2^t in float32, vectorisable and without -ffast-math: t = k + f with integer k and |f| <= 1/2,
 * 2^f = exp(f ln2) by its degree-7 Taylor polynomial (error about 1 ulp); k is rounded with the
 * 1.5 * 2^23 trick and 2^k built in the exponent bits. t <= -127 gives exactly 0 (no subnormals),
 * t >= 127 saturates at 2^127, NaN stays NaN. */
INLINE float exp2_f32(float t0) {
    float t = t0 < -127.0f ? -127.0f : t0;
    t = t > 127.0f ? 127.0f : t;
    const float k = (t + 12582912.0f) - 12582912.0f;
    const float f = t - k;
    float p = 1.5252733804059841e-05f; /* ln2^7 / 7! */
    p = p * f + 1.5403530393381609e-04f;
    p = p * f + 1.3333558146428443e-03f;
    p = p * f + 9.6181291076284772e-03f;
    p = p * f + 5.5504108664821580e-02f;
    p = p * f + 2.4022650695910071e-01f;
    p = p * f + 6.9314718055994531e-01f;
    p = p * f + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)k + 127) << 23; /* 2^k; 0.0f when k = -127 */
    return p * s.f;
}

INLINE float exp_f32(float x) { return exp2_f32(x * LOG2E); }

INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

/* Forward of channels d0 .. d0+w-1 of one batch row (pointers already offset to that row). */
INLINE void fwd_block(const float *u, const float *dt, const float *At, const float *Bb, const float *Cb,
                      const float *Dv, const float *z, float *out, float *last, float *h,
                      int64_t D, int64_t L, int64_t N, int64_t d0, int w) {
    for (int64_t i = 0; i < N * W; i++) h[i] = 0.0f;
    for (int64_t l = 0; l < L; l++) {
        const float *dtl = dt + l * D + d0, *ul = u + l * D + d0;
        float dx[W], dt2[W], y[W];
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dx[j] = dtl[j] * ul[j];
            dt2[j] = dtl[j] * LOG2E; /* exp(dt A) = 2^(dt log2(e) A) */
            y[j] = Dv ? Dv[d0 + j] * ul[j] : 0.0f;
        }
        for (int64_t n = 0; n < N; n++) {
            const float bn = Bb[l * N + n], cn = Cb[l * N + n];
            const float *An = At + n * D + d0;
            float *hn = h + n * W;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                hn[j] = exp2_f32(dt2[j] * An[j]) * hn[j] + dx[j] * bn;
                y[j] += cn * hn[j];
            }
        }
        float *ol = out + l * D + d0;
        if (z) {
            const float *zl = z + l * D + d0;
#pragma omp simd
            for (int j = 0; j < w; j++) ol[j] = y[j] * zl[j] * sigmoid_f32(zl[j]);
        } else {
            for (int j = 0; j < w; j++) ol[j] = y[j];
        }
    }
    for (int j = 0; j < w; j++)
        for (int64_t n = 0; n < N; n++) last[(d0 + j) * N + n] = h[n * W + j];
}

/* Forward for work items t in [t0, t1): t = b * nblk + block, a block being W channels. */
void ss_fwd(const float *u, const float *dt, const float *At, const float *Bm, const float *Cm,
            const float *Dv, const float *z, float *out, float *last,
            int64_t D, int64_t L, int64_t N, int64_t t0, int64_t t1) {
    const int64_t nblk = (D + W - 1) / W;
    float *h = (float *)malloc(sizeof(float) * (size_t)(N * W));
    for (int64_t t = t0; t < t1; t++) {
        const int64_t b = t / nblk, d0 = (t % nblk) * W, off = b * L * D;
        const float *zb = z ? z + off : NULL;
        if (d0 + W <= D)
            fwd_block(u + off, dt + off, At, Bm + b * L * N, Cm + b * L * N, Dv, zb, out + off,
                      last + b * D * N, h, D, L, N, d0, W);
        else
            fwd_block(u + off, dt + off, At, Bm + b * L * N, Cm + b * L * N, Dv, zb, out + off,
                      last + b * D * N, h, D, L, N, d0, (int)(D - d0));
    }
    free(h);
}

/* Scratch of one backward call: states H (L+1, N, W) with zeros in front, decays E (L, N, W),
 * pre-gate outputs Y (L, W), adjoint dh (N, W), dA sums (N, W), and dB/dC lane sums (L, N, W). */
typedef struct {
    float *H, *E, *Y, *dh, *dA, *dB, *dC;
} scratch;

/* Backward of channels d0 .. d0+w-1 of one batch row; adds this block's dB, dC into s->dB, s->dC. */
INLINE void bwd_block(const float *u, const float *dt, const float *At, const float *Bb, const float *Cb,
                      const float *Dv, const float *z, const float *dout, const float *dlast,
                      float *du, float *ddt, float *dz, float *dAp, float *dDp, scratch *s,
                      int64_t D, int64_t L, int64_t N, int64_t d0, int w) {
    float *H = s->H, *E = s->E, *Y = s->Y, *dh = s->dh, *dAs = s->dA;
    /* 1. recompute states, decays and pre-gate outputs */
    for (int64_t i = 0; i < N * W; i++) H[i] = 0.0f;
    for (int64_t l = 0; l < L; l++) {
        const float *dtl = dt + l * D + d0, *ul = u + l * D + d0;
        float dx[W], dt2[W], y[W];
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dx[j] = dtl[j] * ul[j];
            dt2[j] = dtl[j] * LOG2E; /* exp(dt A) = 2^(dt log2(e) A) */
            y[j] = Dv ? Dv[d0 + j] * ul[j] : 0.0f;
        }
        for (int64_t n = 0; n < N; n++) {
            const float bn = Bb[l * N + n], cn = Cb[l * N + n];
            const float *An = At + n * D + d0, *hp = H + (l * N + n) * W;
            float *hl = H + ((l + 1) * N + n) * W, *el = E + (l * N + n) * W;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                el[j] = exp2_f32(dt2[j] * An[j]);
                hl[j] = el[j] * hp[j] + dx[j] * bn;
                y[j] += cn * hl[j];
            }
        }
        for (int j = 0; j < w; j++) Y[l * W + j] = y[j];
    }
    /* 2. reverse recurrence: dh holds dLoss/dh_l without step l's own output term */
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < W; j++) {
            dh[n * W + j] = (dlast && j < w) ? dlast[(d0 + j) * N + n] : 0.0f;
            dAs[n * W + j] = 0.0f;
        }
    float dDs[W] = {0.0f};
    for (int64_t l = L - 1; l >= 0; l--) {
        const float *dtl = dt + l * D + d0, *ul = u + l * D + d0, *gl = dout + l * D + d0;
        float gy[W], dx[W], ddt_s[W], gB[W];
        if (z) {
            const float *zl = z + l * D + d0;
            float *dzl = dz + l * D + d0;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                const float sg = sigmoid_f32(zl[j]);
                dzl[j] = gl[j] * Y[l * W + j] * sg * (1.0f + zl[j] * (1.0f - sg));
                gy[j] = gl[j] * zl[j] * sg;
            }
        } else {
            for (int j = 0; j < w; j++) gy[j] = gl[j];
        }
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dx[j] = dtl[j] * ul[j];
            dDs[j] += gy[j] * ul[j];
            ddt_s[j] = 0.0f;
            gB[j] = 0.0f;
        }
        for (int64_t n = 0; n < N; n++) {
            const float bn = Bb[l * N + n], cn = Cb[l * N + n];
            const float *An = At + n * D + d0, *hp = H + (l * N + n) * W;
            const float *hl = H + ((l + 1) * N + n) * W, *el = E + (l * N + n) * W;
            float *dBl = s->dB + (l * N + n) * W, *dCl = s->dC + (l * N + n) * W;
            float *dhn = dh + n * W, *dAn = dAs + n * W;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                const float g_h = dhn[j] + gy[j] * cn;    /* dLoss/dh_l */
                const float g_e = g_h * hp[j] * el[j];    /* dLoss/d(dt_l A) */
                dCl[j] += gy[j] * hl[j];
                dBl[j] += g_h * dx[j];
                dAn[j] += g_e * dtl[j];
                ddt_s[j] += g_e * An[j];
                gB[j] += g_h * bn;
                dhn[j] = g_h * el[j];
            }
        }
        float *dul = du + l * D + d0, *ddtl = ddt + l * D + d0;
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dul[j] = gy[j] * (Dv ? Dv[d0 + j] : 0.0f) + gB[j] * dtl[j];
            ddtl[j] = ddt_s[j] + gB[j] * ul[j];
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < w; j++) dAp[n * D + d0 + j] = dAs[n * W + j];
    for (int j = 0; j < w; j++) dDp[d0 + j] = dDs[j];
}

/* Backward for work items t in [t0, t1): t = b * G + g covers the channel blocks of group g
 * (the blocks split into G near-equal groups) of batch row b. Writes du, ddt, dz of those channels,
 * dA_part[b], dD_part[b] at those channels, and dB_part[b, g], dC_part[b, g]. */
void ss_bwd(const float *u, const float *dt, const float *At, const float *Bm, const float *Cm,
            const float *Dv, const float *z, const float *dout, const float *dlast,
            float *du, float *ddt, float *dz, float *dA_part, float *dD_part, float *dB_part, float *dC_part,
            int64_t D, int64_t L, int64_t N, int64_t G, int64_t t0, int64_t t1) {
    const int64_t nblk = (D + W - 1) / W, LNW = L * N * W;
    float *buf = (float *)malloc(sizeof(float) * (size_t)((L + 1) * N * W + 3 * LNW + L * W + 2 * N * W));
    scratch s = {buf, buf + (L + 1) * N * W, NULL, NULL, NULL, NULL, NULL};
    s.dB = s.E + LNW;
    s.dC = s.dB + LNW;
    s.Y = s.dC + LNW;
    s.dh = s.Y + L * W;
    s.dA = s.dh + N * W;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t b = t / G, g = t % G, off = b * L * D;
        const float *zb = z ? z + off : NULL, *dlb = dlast ? dlast + b * D * N : NULL;
        float *dzb = z ? dz + off : NULL;
        memset(s.dB, 0, sizeof(float) * (size_t)(2 * LNW));
        for (int64_t k = g * nblk / G; k < (g + 1) * nblk / G; k++) {
            const int64_t d0 = k * W;
            const int w = d0 + W <= D ? W : (int)(D - d0);
            if (w == W)
                bwd_block(u + off, dt + off, At, Bm + b * L * N, Cm + b * L * N, Dv, zb, dout + off, dlb,
                          du + off, ddt + off, dzb, dA_part + b * N * D, dD_part + b * D, &s, D, L, N, d0, W);
            else
                bwd_block(u + off, dt + off, At, Bm + b * L * N, Cm + b * L * N, Dv, zb, dout + off, dlb,
                          du + off, ddt + off, dzb, dA_part + b * N * D, dD_part + b * D, &s, D, L, N, d0, w);
        }
        /* reduce the W lanes of dB, dC into this work item's partial sums */
        float *dBt = dB_part + t * L * N, *dCt = dC_part + t * L * N;
        for (int64_t i = 0; i < L * N; i++) {
            float sb = 0.0f, sc = 0.0f;
            for (int j = 0; j < W; j++) {
                sb += s.dB[i * W + j];
                sc += s.dC[i * W + j];
            }
            dBt[i] = sb;
            dCt[i] = sc;
        }
    }
    free(buf);
}

/* Channels per block, for the caller's work split. */
int64_t ss_width(void) { return W; }
