/* Selective scan (Mamba-1) forward and backward for float32 CPU tensors.
 *
 * Plain C99, no torch headers: sigma_lightning/ops/build.py compiles this file on first use and
 * sigma_lightning/ops/_cscan.py calls it through ctypes. Each call handles a range of work items on
 * one thread; Python runs several ranges at once (ctypes releases the GIL), so no OpenMP runtime is
 * needed. Scratch memory is malloc'ed per call; where that fails, a call returns SS_OUT_OF_MEMORY
 * before writing any output, and Python raises MemoryError.
 *
 * Recurrence per channel (b, d):  h_l = exp(dt_l A_d) * h_{l-1} + dt_l u_l B_l      (N states)
 *                                 y_l = C_l . h_l + D_d u_l ;  out_l = y_l * silu(z_l)
 *
 * Vectorisation runs across W neighbouring channels (d), not across the N states: B_l and C_l are
 * shared by all channels, so every inner loop is a plain element-wise loop over W lanes with no
 * horizontal sums. Hence channels-last layouts; see `scan_args` for every array. One call covers
 * steps [0, L) of a segment of a longer sequence (batch strides sLD, sLN; start state h0), so the
 * caller can bound the backward's scratch, which is O(L * N * W) per thread, by cutting long
 * sequences into segments. Nothing of size L * D * N is ever stored.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"

/* Channels per block: one vector register of the widest width the CPU has, as the W-lane loops
 * below are what vectorises. AVX-512: 16 lanes, and gcc is told to use 512-bit registers (it
 * prefers 256 bits otherwise, which halves the lanes per instruction). Elsewhere 8: one AVX2
 * register, two NEON/SSE registers. */
#if defined(__AVX512F__)
#define W 16
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
#else
#define W 8
#endif

typedef struct {
    /* inputs; Dv, z and h0 may be NULL */
    const float *u, *dt, *z;  /* (Bsz, L, D), batch stride sLD; dt raw: the step is softplus?(dt + dtb) */
    const float *dtb;         /* (D,) step bias, or NULL */
    const float *keep;        /* (Bsz, whole sequence) step mask, row stride sLK, or NULL: steps are multiplied by it */
    const float *At;          /* (N, D), A transposed */
    const float *Bm;          /* (Bsz, L, N), batch stride sLN */
    const float *Cm;          /* (Bsz, L, N), batch stride sC (= sLN); with `read`, (Bsz, N): C at the read step */
    const float *Dv;          /* (D,) */
    const float *h0;          /* (Bsz, D, N) state before step 0 (NULL: zeros) */
    /* forward outputs */
    float *out;               /* (Bsz, L, D), batch stride sO (= sLD); with `read`, (Bsz, D), written at the read step */
    float *last;              /* (Bsz, D, N) state after step L-1 */
    /* backward inputs; dlast may be NULL */
    const float *dout;        /* (Bsz, L, D), batch stride sO; with `read`, (Bsz, D) */
    const float *dlast;       /* (Bsz, D, N) */
    /* backward outputs; dz, dh0 may be NULL */
    float *du, *ddt, *dz;     /* (Bsz, L, D), batch stride sLD */
    float *dh0;               /* (Bsz, D, N) gradient of h0 */
    float *dA;                /* (slots, N, D) partial sums, one per call (its `slot`), ADDED to */
    float *dD;                /* (slots, D) partial sums, ADDED to */
    float *ddtb;              /* (slots, D) partial sums of the bias's gradient, ADDED to; NULL without dtb */
    float *dB;                /* (Bsz * G, L, N) per channel-group partial sums, item stride sLN */
    float *dC;                /* the same, item stride sC; with `read`, (Bsz * G, N), ADDED to */
    /* rows' extents, or NULL: row b's steps from ext[b] on (counted from the sequence start, which
     * is s0 steps before this segment's step 0) are not computed: their outputs and gradients are
     * 0 and the state passes them unchanged, as a step of size 0 with no output would. */
    const int64_t *ext;
    /* rows' read steps, or NULL: row b's output is read at step read[b] only (counted like ext,
     * which the caller keeps <= read[b] + 1): C, out and dout hold that step alone. */
    const int64_t *read;
    int64_t D, L, N, G, sLD, sLN, s0, sC, sO;
    int64_t softplus;         /* 1: the step is softplus(dt + dtb) */
    int64_t sLK;              /* row stride of keep: the whole sequence's length */
} scan_args;

/* Channels d0 .. d0+w-1 of batch row b. The row's pointers are offset once here. */
typedef struct {
    const float *u, *dt, *z, *Bb, *Cb, *h0, *dout, *dlast, *keep;
    float *out, *last, *du, *ddt, *dz, *dh0, *dA, *dD, *ddtb;
    int64_t rl; /* with `read`: this segment's step that is read (may lie outside it) */
} row_ptrs;

static row_ptrs row(const scan_args *a, int64_t b) {
    const int64_t o = b * a->sLD, on = b * a->sLN, os = b * a->D * a->N, oo = b * a->sO;
    row_ptrs r;
    r.u = a->u + o;
    r.dt = a->dt + o;
    r.z = a->z ? a->z + o : NULL;
    r.Bb = a->Bm + on;
    r.Cb = a->Cm + b * a->sC;
    r.h0 = a->h0 ? a->h0 + os : NULL;
    r.out = a->out ? a->out + oo : NULL;
    r.last = a->last ? a->last + os : NULL;
    r.dout = a->dout ? a->dout + oo : NULL;
    r.dlast = a->dlast ? a->dlast + os : NULL;
    r.du = a->du ? a->du + o : NULL;
    r.ddt = a->ddt ? a->ddt + o : NULL;
    r.dz = a->dz ? a->dz + o : NULL;
    r.dh0 = a->dh0 ? a->dh0 + os : NULL;
    r.dA = r.dD = r.ddtb = NULL; /* the backward points them at its call's slot */
    r.keep = a->keep ? a->keep + b * a->sLK + a->s0 : NULL; /* this segment's step 0 */
    r.rl = a->read ? a->read[b] - a->s0 : -1;
    return r;
}

/* C at step l (N floats), or NULL where step l has no output: with `read`, every step but the
 * read one. */
INLINE const float *c_at(const scan_args *a, const row_ptrs *r, int64_t l) {
    if (a->read) return l == r->rl ? r->Cb : NULL;
    return r->Cb + l * a->N;
}

/* Offset of step l's output (and output gradient) in the row: 0 for the one read step. */
INLINE int64_t out_at(const scan_args *a, int64_t l) { return a->read ? 0 : l * a->D;
}

/* How many of this segment's L steps row b computes: all, or those before its extent. */
static int64_t row_steps(const scan_args *a, int64_t b) {
    if (!a->ext) return a->L;
    const int64_t n = a->ext[b] - a->s0;
    return n < 0 ? 0 : (n > a->L ? a->L : n);
}

/* Zero rows [from, L) of a (L, D)-strided block of w channels, or nothing for NULL. */
INLINE void zero_steps(float *x, int64_t from, int64_t L, int64_t D, int64_t d0, int w) {
    if (!x) return;
    for (int64_t l = from; l < L; l++)
        for (int j = 0; j < w; j++) x[l * D + d0 + j] = 0.0f;
}

/* Steps of channels d0 .. d0+w-1 at step l from their raw values dtl: delta = softplus?(dtl + bias)
 * * keep_l, and with `slope`, d delta / d dtl. */
INLINE void step_sizes(const scan_args *a, const row_ptrs *r, int64_t l, const float *dtl, int64_t d0, int w,
                       float *delta, float *slope) {
    const float kl = r->keep ? r->keep[l] : 1.0f;
    float raw[W];
#pragma omp simd
    for (int j = 0; j < w; j++) raw[j] = dtl[j] + (a->dtb ? a->dtb[d0 + j] : 0.0f);
    if (a->softplus) {
#pragma omp simd
        for (int j = 0; j < w; j++) delta[j] = softplus_f32(raw[j]) * kl;
        if (slope) {
#pragma omp simd
            for (int j = 0; j < w; j++) slope[j] = sigmoid_f32(raw[j]) * kl;
        }
    } else {
        for (int j = 0; j < w; j++) {
            delta[j] = raw[j] * kl;
            if (slope) slope[j] = kl;
        }
    }
}

/* h (N, W) <- the row's state of channels d0.. at the segment start */
INLINE void load_state(float *h, const float *h0, int64_t N, int64_t d0, int w) {
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < W; j++) h[n * W + j] = (h0 && j < w) ? h0[(d0 + j) * N + n] : 0.0f;
}

#if defined(__AVX512F__)
/* One step's loop over the N states on the 16 lanes of an AVX-512 register (w == W), with
 * exp2_v16: h_out[n] = exp(dt A_n) * h_in[n] + dx * B_n, the decay stored to e_out unless NULL;
 * unless C is NULL, y += C_n * h_out[n], and unless dC is NULL, dC[n] += gy * h_out[n] (n-th W lanes
 * of each array). The plain loops at the call sites compute the same for other widths and builds. */
INLINE void states_v16(int64_t N, const float *At, int64_t D, const float *Bl, const float *Cl,
                       const float *dt2, const float *dx, const float *h_in, float *h_out, float *e_out,
                       float *y, const float *gy, float *dC) {
    const __m512 t2 = _mm512_loadu_ps(dt2), x = _mm512_loadu_ps(dx);
    __m512 acc = Cl ? _mm512_loadu_ps(y) : _mm512_setzero_ps(), g = dC ? _mm512_loadu_ps(gy) : acc;
    for (int64_t n = 0; n < N; n++) {
        const __m512 e = exp2_v16(_mm512_mul_ps(t2, _mm512_loadu_ps(At + n * D)));
        const __m512 hn = _mm512_fmadd_ps(e, _mm512_loadu_ps(h_in + n * W), _mm512_mul_ps(x, _mm512_set1_ps(Bl[n])));
        _mm512_storeu_ps(h_out + n * W, hn);
        if (e_out) _mm512_storeu_ps(e_out + n * W, e);
        if (Cl) acc = _mm512_fmadd_ps(_mm512_set1_ps(Cl[n]), hn, acc);
        if (dC) _mm512_storeu_ps(dC + n * W, _mm512_fmadd_ps(g, hn, _mm512_loadu_ps(dC + n * W)));
    }
    if (Cl) _mm512_storeu_ps(y, acc);
}
#endif

INLINE void fwd_block(const scan_args *a, const row_ptrs *r, float *h, int64_t d0, int w, int64_t steps) {
    const int64_t D = a->D, N = a->N;
    load_state(h, r->h0, N, d0, w);
    if (!a->read) zero_steps(r->out, steps, a->L, D, d0, w); /* with `read` the caller zeroes out */
    for (int64_t l = 0; l < steps; l++) {
        const float *ul = r->u + l * D + d0, *cl = c_at(a, r, l);
        float dtl[W], dx[W], dt2[W], y[W];
        step_sizes(a, r, l, r->dt + l * D + d0, d0, w, dtl, NULL);
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dx[j] = dtl[j] * ul[j];
            dt2[j] = dtl[j] * LOG2E; /* exp(dt A) = 2^(dt log2(e) A) */
            y[j] = a->Dv ? a->Dv[d0 + j] * ul[j] : 0.0f;
        }
#if defined(__AVX512F__)
        if (w == W)
            states_v16(N, a->At + d0, D, r->Bb + l * N, cl, dt2, dx, h, h, NULL, y, NULL, NULL);
        else
#endif
        for (int64_t n = 0; n < N; n++) {
            const float bn = r->Bb[l * N + n], cn = cl ? cl[n] : 0.0f;
            const float *An = a->At + n * D + d0;
            float *hn = h + n * W;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                hn[j] = exp2_f32(dt2[j] * An[j]) * hn[j] + dx[j] * bn;
                y[j] += cn * hn[j];
            }
        }
        if (!cl) continue; /* a step no one reads */
        float *ol = r->out + out_at(a, l) + d0;
        if (r->z) {
            const float *zl = r->z + l * D + d0;
#pragma omp simd
            for (int j = 0; j < w; j++) ol[j] = y[j] * zl[j] * sigmoid_f32(zl[j]);
        } else {
            for (int j = 0; j < w; j++) ol[j] = y[j];
        }
    }
    for (int j = 0; j < w; j++)
        for (int64_t n = 0; n < N; n++) r->last[(d0 + j) * N + n] = h[n * W + j];
}

/* Scratch of `count` floats (computed in double, so that no product can overflow), or NULL where
 * the size is absurd or malloc fails. */
static float *alloc_floats(double count) {
    if (!(count >= 1.0) || count > (double)(PTRDIFF_MAX / (ptrdiff_t)sizeof(float))) return NULL;
    return (float *)malloc(sizeof(float) * (size_t)count);
}

#define SS_OK 0
#define SS_OUT_OF_MEMORY 1 /* the caller raises MemoryError; no output was written */

/* Forward of work items t in [t0, t1): t = b * nblk + k is block k (channels kW .. kW+W-1) of row b.
 * Returns SS_OK, or SS_OUT_OF_MEMORY before touching any output. */
int64_t ss_fwd(const scan_args *a, int64_t t0, int64_t t1, int64_t slot) {
    (void)slot;
    const int64_t nblk = (a->D + W - 1) / W;
    float *h = alloc_floats((double)a->N * W);
    if (!h) return SS_OUT_OF_MEMORY;
    FLUSH_SUBNORMALS_BEGIN
    for (int64_t t = t0; t < t1; t++) {
        const row_ptrs r = row(a, t / nblk);
        const int64_t d0 = (t % nblk) * W, steps = row_steps(a, t / nblk);
        if (d0 + W <= a->D)
            fwd_block(a, &r, h, d0, W, steps); /* constant width: fully vectorised */
        else
            fwd_block(a, &r, h, d0, (int)(a->D - d0), steps);
    }
    FLUSH_SUBNORMALS_END
    free(h);
    return SS_OK;
}

/* Scratch of one backward call: states H (L+1, N, W) with h0 in front, decays E (L, N, W), gated
 * output gradients GY (L, W), steps DT and their slopes SL (L, W), adjoint dh (N, W), dA sums
 * (N, W), dB/dC lane sums (L, N, W). With `read` (bwd_block_read) no H, E or GY: the adjoint at the
 * read step dh, the decayed state R and GA = dh * A (N, W each), and T2, the steps' suffix sums
 * times log2(e) (L, W); dC is (N, W). */
typedef struct {
    float *H, *E, *GY, *DT, *SL, *dh, *dA, *dB, *dC, *R, *GA, *T2;
} scratch;

INLINE void bwd_block(const scan_args *a, const row_ptrs *r, scratch *s, int64_t d0, int w, int64_t L) {
    const int64_t D = a->D, N = a->N;
    zero_steps(r->du, L, a->L, D, d0, w);
    zero_steps(r->ddt, L, a->L, D, d0, w);
    zero_steps(r->dz, L, a->L, D, d0, w);
    float *H = s->H, *E = s->E, *GY = s->GY, *dh = s->dh, *dAs = s->dA;
    float dDs[W] = {0.0f}, ddtbs[W] = {0.0f};
    /* 1. recompute states and decays, and all that needs no adjoint: dz, dC, dD */
    load_state(H, r->h0, N, d0, w);
    for (int64_t l = 0; l < L; l++) {
        const float *ul = r->u + l * D + d0, *cl = c_at(a, r, l);
        const float *gl = cl ? r->dout + out_at(a, l) + d0 : NULL;
        const float *zl = r->z ? r->z + l * D + d0 : NULL;
        float *dtl = s->DT + l * W, dx[W], dt2[W], y[W], sg[W], gy[W];
        step_sizes(a, r, l, r->dt + l * D + d0, d0, w, dtl, s->SL + l * W);
        int quiet = 1; /* no output gradient at this step: y, dC, dz and dD get nothing from it */
        for (int j = 0; gl && j < w; j++) quiet &= gl[j] == 0.0f;
        if (quiet) {
            /* Only the states and decays, the rest being zero: a caller that reads one output per
             * row (the last layer's last item) leaves every other step quiet. */
#pragma omp simd
            for (int j = 0; j < w; j++) {
                dx[j] = dtl[j] * ul[j];
                dt2[j] = dtl[j] * LOG2E;
                GY[l * W + j] = 0.0f;
            }
#if defined(__AVX512F__)
            if (w == W)
                states_v16(N, a->At + d0, D, r->Bb + l * N, NULL, dt2, dx, H + l * N * W, H + (l + 1) * N * W,
                           E + l * N * W, NULL, NULL, NULL);
            else
#endif
            for (int64_t n = 0; n < N; n++) {
                const float bn = r->Bb[l * N + n];
                const float *An = a->At + n * D + d0, *hp = H + (l * N + n) * W;
                float *hl = H + ((l + 1) * N + n) * W, *el = E + (l * N + n) * W;
#pragma omp simd
                for (int j = 0; j < w; j++) {
                    el[j] = exp2_f32(dt2[j] * An[j]);
                    hl[j] = el[j] * hp[j] + dx[j] * bn;
                }
            }
            if (zl) zero_steps(r->dz, l, l + 1, D, d0, w);
            continue;
        }
        if (zl) {
#pragma omp simd
            for (int j = 0; j < w; j++) {
                sg[j] = sigmoid_f32(zl[j]);
                gy[j] = gl[j] * zl[j] * sg[j]; /* dLoss/dy_l */
            }
        } else {
            for (int j = 0; j < w; j++) gy[j] = gl[j];
        }
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dx[j] = dtl[j] * ul[j];
            dt2[j] = dtl[j] * LOG2E;
            y[j] = a->Dv ? a->Dv[d0 + j] * ul[j] : 0.0f;
            GY[l * W + j] = gy[j];
            dDs[j] += gy[j] * ul[j];
        }
        float *dC = s->dC + (a->read ? 0 : l * N * W); /* (N, W) lane sums of this step's dC */
#if defined(__AVX512F__)
        if (w == W)
            states_v16(N, a->At + d0, D, r->Bb + l * N, cl, dt2, dx, H + l * N * W, H + (l + 1) * N * W,
                       E + l * N * W, y, gy, dC);
        else
#endif
        for (int64_t n = 0; n < N; n++) {
            const float bn = r->Bb[l * N + n], cn = cl[n];
            const float *An = a->At + n * D + d0, *hp = H + (l * N + n) * W;
            float *hl = H + ((l + 1) * N + n) * W, *el = E + (l * N + n) * W, *dCl = dC + n * W;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                el[j] = exp2_f32(dt2[j] * An[j]);
                hl[j] = el[j] * hp[j] + dx[j] * bn;
                y[j] += cn * hl[j];
                dCl[j] += gy[j] * hl[j];
            }
        }
        if (zl) {
            float *dzl = r->dz + l * D + d0;
#pragma omp simd
            for (int j = 0; j < w; j++) dzl[j] = gl[j] * y[j] * sg[j] * (1.0f + zl[j] * (1.0f - sg[j]));
        }
    }
    /* 2. reverse recurrence; dh holds dLoss/dh_l without step l's own output term */
    load_state(dh, r->dlast, N, d0, w);
    for (int64_t i = 0; i < N * W; i++) dAs[i] = 0.0f;
    for (int64_t l = L - 1; l >= 0; l--) {
        const float *dtl = s->DT + l * W, *sl = s->SL + l * W, *ul = r->u + l * D + d0, *gy = GY + l * W;
        const float *cl = c_at(a, r, l); /* NULL: no output here, and gy is 0 */
        float dx[W], ddt_s[W], gB[W];
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dx[j] = dtl[j] * ul[j];
            ddt_s[j] = 0.0f;
            gB[j] = 0.0f;
        }
        for (int64_t n = 0; n < N; n++) {
            const float bn = r->Bb[l * N + n], cn = cl ? cl[n] : 0.0f;
            const float *An = a->At + n * D + d0, *hp = H + (l * N + n) * W, *el = E + (l * N + n) * W;
            float *dBl = s->dB + (l * N + n) * W, *dhn = dh + n * W, *dAn = dAs + n * W;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                const float g_h = dhn[j] + gy[j] * cn; /* dLoss/dh_l */
                const float g_e = g_h * hp[j] * el[j]; /* dLoss/d(dt_l A) */
                dBl[j] += g_h * dx[j];
                dAn[j] += g_e * dtl[j];
                ddt_s[j] += g_e * An[j];
                gB[j] += g_h * bn;
                dhn[j] = g_h * el[j];
            }
        }
        float *dul = r->du + l * D + d0, *ddtl = r->ddt + l * D + d0;
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dul[j] = gy[j] * (a->Dv ? a->Dv[d0 + j] : 0.0f) + gB[j] * dtl[j];
            ddtl[j] = (ddt_s[j] + gB[j] * ul[j]) * sl[j]; /* through the step's softplus */
            ddtbs[j] += ddtl[j];
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < w; j++) r->dA[n * D + d0 + j] += dAs[n * W + j];
    for (int j = 0; j < w; j++) r->dD[d0 + j] += dDs[j];
    if (r->ddtb)
        for (int j = 0; j < w; j++) r->ddtb[d0 + j] += ddtbs[j];
    if (r->dh0)
        for (int j = 0; j < w; j++)
            for (int64_t n = 0; n < N; n++) r->dh0[(d0 + j) * N + n] = dh[n * W + j];
}

#if defined(__AVX512F__)
/* bwd_block_read's loop over the N states at one step on the 16 lanes of an AVX-512 register
 * (w == W), with exp2_v16; the plain loop at the call site computes the same for other widths. */
INLINE void read_states_v16(int64_t N, const float *At, int64_t D, const float *Bl, const float *t2p,
                            const float *dtp, const float *dtup, const float *G, const float *GA, float *R,
                            float *dA, float *dB, float *gB_out, float *ddt_out) {
    const __m512 t2 = _mm512_loadu_ps(t2p), dt = _mm512_loadu_ps(dtp), dtu = _mm512_loadu_ps(dtup);
    __m512 gB = _mm512_setzero_ps(), ddt = _mm512_setzero_ps();
    for (int64_t n = 0; n < N; n++) {
        const __m512 q = exp2_v16(_mm512_mul_ps(t2, _mm512_loadu_ps(At + n * D)));
        const __m512 gq = _mm512_mul_ps(_mm512_loadu_ps(G + n * W), q), b = _mm512_set1_ps(Bl[n]);
        const __m512 rk = _mm512_loadu_ps(R + n * W);
        gB = _mm512_fmadd_ps(gq, b, gB);
        _mm512_storeu_ps(dB + n * W, _mm512_fmadd_ps(gq, dtu, _mm512_loadu_ps(dB + n * W)));
        ddt = _mm512_fmadd_ps(_mm512_loadu_ps(GA + n * W), rk, ddt);
        _mm512_storeu_ps(dA + n * W, _mm512_fmadd_ps(dt, rk, _mm512_loadu_ps(dA + n * W)));
        _mm512_storeu_ps(R + n * W, _mm512_fmadd_ps(_mm512_mul_ps(q, dtu), b, rk));
    }
    _mm512_storeu_ps(gB_out, gB);
    _mm512_storeu_ps(ddt_out, ddt);
}
#endif

/* The backward of one block where at most one step has an output gradient, and it is the last
 * computed one, T = L - 1: every segment of a `read` scan. One pass forward in time, one exp per
 * (step, state), no stored states. With G = dLoss/dh_T (the read step's C gy, plus dlast) and the
 * decay from step l to T written Q_l = exp(A S_l), S_l = dt_{l+1} + ... + dt_T:
 *   h_T = Q_{-1} h0 + sum_l Q_l x_l,  x_l = dt_l u_l B_l;  R_k = Q_{-1} h0 + sum_{l<k} Q_l x_l
 *   dLoss/dh_l = G Q_l;  dB_l = sum_d G Q_l dt_l u_l;  dh0 = G Q_{-1}
 *   dLoss/d dt_k = u_k sum_n G Q_k B_k + sum_n G A R_k  (dt_k enters x_k and every S_l, l < k)
 *   dA = G sum_k dt_k R_k  (= G (S_{-1} Q_{-1} h0 + sum_l S_l Q_l x_l))
 * R_k is h_{k-1} decayed to T, and R_L = h_T. The two-pass bwd_block computes the same sums. */
INLINE void bwd_block_read(const scan_args *a, const row_ptrs *r, scratch *s, int64_t d0, int w, int64_t L) {
    const int64_t D = a->D, N = a->N;
    zero_steps(r->du, L, a->L, D, d0, w);
    zero_steps(r->ddt, L, a->L, D, d0, w);
    zero_steps(r->dz, 0, a->L, D, d0, w); /* the read step's is set below */
    float *G = s->dh, *R = s->R, *GA = s->GA, *dAs = s->dA, *T2 = s->T2, *DT = s->DT, *SL = s->SL;
    float dDs[W] = {0.0f}, ddtbs[W] = {0.0f}, gy[W] = {0.0f}, sg[W] = {0.0f}, S[W] = {0.0f};
    for (int64_t l = 0; l < L; l++) step_sizes(a, r, l, r->dt + l * D + d0, d0, w, DT + l * W, SL + l * W);
    for (int64_t l = L - 1; l >= 0; l--) {
        for (int j = 0; j < w; j++) {
            T2[l * W + j] = S[j] * LOG2E;
            S[j] += DT[l * W + j];
        }
    }
    /* the output gradient at the read step, if it is this segment's last computed step */
    const int has_out = L > 0 && r->rl == L - 1;
    const float *gl = has_out ? r->dout + d0 : NULL, *zl = has_out && r->z ? r->z + (L - 1) * D + d0 : NULL;
    for (int j = 0; gl && j < w; j++) {
        sg[j] = zl ? sigmoid_f32(zl[j]) : 1.0f;
        gy[j] = zl ? gl[j] * zl[j] * sg[j] : gl[j];
    }
    for (int64_t n = 0; n < N; n++) {
        const float cn = gl ? r->Cb[n] : 0.0f, *An = a->At + n * D + d0;
        float *Gn = G + n * W, *GAn = GA + n * W, *Rn = R + n * W;
        for (int j = 0; j < W; j++) Gn[j] = GAn[j] = Rn[j] = dAs[n * W + j] = 0.0f; /* lanes past w stay 0 */
        for (int j = 0; j < w; j++) {
            Gn[j] = (r->dlast ? r->dlast[(d0 + j) * N + n] : 0.0f) + cn * gy[j];
            GAn[j] = Gn[j] * An[j];
        }
        if (!r->h0 && !r->dh0) continue; /* the sequence's first segment */
        for (int j = 0; j < w; j++) {
            const float q0 = exp2_f32(S[j] * LOG2E * An[j]); /* Q_{-1} */
            if (r->h0) Rn[j] = q0 * r->h0[(d0 + j) * N + n];
            if (r->dh0) r->dh0[(d0 + j) * N + n] = Gn[j] * q0;
        }
    }
    for (int64_t l = 0; l < L; l++) {
        const float *ul = r->u + l * D + d0, *dtl = DT + l * W, *t2 = T2 + l * W, *Bl = r->Bb + l * N;
        float dtu[W], gB[W] = {0.0f}, ddt_s[W] = {0.0f};
#pragma omp simd
        for (int j = 0; j < w; j++) dtu[j] = dtl[j] * ul[j];
#if defined(__AVX512F__)
        if (w == W)
            read_states_v16(N, a->At + d0, D, Bl, t2, dtl, dtu, G, GA, R, dAs, s->dB + l * N * W, gB, ddt_s);
        else
#endif
        for (int64_t n = 0; n < N; n++) {
            const float bn = Bl[n], *An = a->At + n * D + d0;
            float *Rn = R + n * W, *dAn = dAs + n * W, *dBl = s->dB + (l * N + n) * W;
            const float *Gn = G + n * W, *GAn = GA + n * W;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                const float q = exp2_f32(t2[j] * An[j]), gq = Gn[j] * q, rk = Rn[j];
                gB[j] += gq * bn;
                dBl[j] += gq * dtu[j];
                ddt_s[j] += GAn[j] * rk;
                dAn[j] += dtl[j] * rk;
                Rn[j] = rk + q * dtu[j] * bn;
            }
        }
        float *dul = r->du + l * D + d0, *ddtl = r->ddt + l * D + d0;
        const float *sl = SL + l * W;
#pragma omp simd
        for (int j = 0; j < w; j++) {
            dul[j] = gB[j] * dtl[j];
            ddtl[j] = (ddt_s[j] + gB[j] * ul[j]) * sl[j]; /* through the step's softplus */
            ddtbs[j] += ddtl[j];
        }
        if (l == L - 1 && gl) { /* the read step's own terms: D u, and h_T = R_L for dz and dC */
            for (int j = 0; j < w; j++) {
                float y = a->Dv ? a->Dv[d0 + j] * ul[j] : 0.0f;
                dul[j] += gy[j] * (a->Dv ? a->Dv[d0 + j] : 0.0f);
                dDs[j] += gy[j] * ul[j];
                for (int64_t n = 0; n < N; n++) {
                    y += r->Cb[n] * R[n * W + j];
                    s->dC[n * W + j] += gy[j] * R[n * W + j];
                }
                if (zl) r->dz[(L - 1) * D + d0 + j] = gl[j] * y * sg[j] * (1.0f + zl[j] * (1.0f - sg[j]));
            }
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < w; j++) r->dA[n * D + d0 + j] += G[n * W + j] * dAs[n * W + j];
    for (int j = 0; j < w; j++) r->dD[d0 + j] += dDs[j];
    if (r->ddtb)
        for (int j = 0; j < w; j++) r->ddtb[d0 + j] += ddtbs[j];
}

/* Backward of work items t in [t0, t1): t = b * G + g covers the channel blocks of group g (the
 * blocks split into G near-equal groups) of row b, and owns the partial sums dB[t], dC[t]. Sums
 * over rows go to the call's slot of dA, dD and ddtb (calls running at once have their own).
 * Returns SS_OK, or SS_OUT_OF_MEMORY before touching any output. */
int64_t ss_bwd(const scan_args *a, int64_t t0, int64_t t1, int64_t slot) {
    const int64_t D = a->D, L = a->L, N = a->N, G = a->G, nblk = (D + W - 1) / W;
    const int read = a->read != NULL;
    /* H, E, dB, dC, GY, DT, SL, dh, dA: (L + 1 + 3 L + 2) N W + 3 L W floats; with `read`, dB, dC,
     * dh, R, GA, dA, T2, DT, SL: (L + 5) N W + 3 L W */
    float *buf = alloc_floats(read ? ((L + 5.0) * N + 3.0 * L) * W : ((4.0 * L + 3.0) * N + 3.0 * L) * W);
    if (!buf) return SS_OUT_OF_MEMORY;
    const int64_t LNW = L * N * W, NW = N * W, LW = L * W;
    FLUSH_SUBNORMALS_BEGIN
    scratch s;
    if (read) {
        s.H = s.E = s.GY = NULL;
        s.dB = buf;
        s.dC = s.dB + LNW;
        s.dh = s.dC + NW;
        s.R = s.dh + NW;
        s.GA = s.R + NW;
        s.dA = s.GA + NW;
        s.T2 = s.dA + NW;
        s.DT = s.T2 + LW;
        s.SL = s.DT + LW;
    } else {
        s.R = s.GA = s.T2 = NULL;
        s.H = buf;
        s.E = s.H + (L + 1) * NW;
        s.dB = s.E + LNW;
        s.dC = s.dB + LNW;
        s.GY = s.dC + LNW;
        s.DT = s.GY + LW;
        s.SL = s.DT + LW;
        s.dh = s.SL + LW;
        s.dA = s.dh + NW;
    }
    for (int64_t t = t0; t < t1; t++) {
        row_ptrs r = row(a, t / G);
        r.dA = a->dA + slot * N * D;
        r.dD = a->dD + slot * D;
        r.ddtb = a->ddtb ? a->ddtb + slot * D : NULL;
        const int64_t g = t % G, steps = row_steps(a, t / G);
        memset(s.dB, 0, sizeof(float) * (size_t)(LNW + (read ? NW : LNW)));
        for (int64_t k = g * nblk / G; k < (g + 1) * nblk / G; k++) {
            const int64_t d0 = k * W;
            const int w = d0 + W <= D ? W : (int)(D - d0); /* constant W: fully vectorised */
            if (read && w == W)
                bwd_block_read(a, &r, &s, d0, W, steps);
            else if (read)
                bwd_block_read(a, &r, &s, d0, w, steps);
            else if (w == W)
                bwd_block(a, &r, &s, d0, W, steps);
            else
                bwd_block(a, &r, &s, d0, w, steps);
        }
        /* reduce the W lanes into this work item's partial sums */
        float *dBt = a->dB + t * a->sLN, *dCt = a->dC + t * a->sC;
        for (int64_t i = 0; i < L * N; i++) {
            float sb = 0.0f;
            for (int j = 0; j < W; j++) sb += s.dB[i * W + j];
            dBt[i] = sb;
        }
        for (int64_t i = 0; i < (a->read ? N : L * N); i++) {
            float sc = 0.0f;
            for (int j = 0; j < W; j++) sc += s.dC[i * W + j];
            if (a->read)
                dCt[i] += sc; /* one segment holds the read step; the others add 0 */
            else
                dCt[i] = sc;
        }
    }
    FLUSH_SUBNORMALS_END
    free(buf);
    return SS_OK;
}

/* Channels per block, for the caller's work split; struct size, to check the caller's mirror. */
int64_t ss_width(void) { return W; }
int64_t ss_args_size(void) { return (int64_t)sizeof(scan_args); }
