/* The element-wise part of a GRU's time step (torch.nn.GRU's equations), forward and backward, for
 * float32 CPU tensors. The matrix products run in torch around the steps (ops/_cgru.py): the
 * input's gates gi = x W_ih^T for all steps at once, per step gh = h_{t-1} W_hh^T (forward) and
 * carry += dgh W_hh (backward). Each call handles a range of batch rows at one step.
 *
 * Gates in torch's order (r, z, n), each H wide, per batch row, with the biases added here:
 *     r = sigmoid(gi_r + b_ir + gh_r + b_hr)      z = sigmoid(gi_z + b_iz + gh_z + b_hz)
 *     n = tanh(gi_n + b_in + r * hn)  with hn = gh_n + b_hn      h = (1 - z) * n + z * h_{t-1}
 * The forward keeps (r, z, n, hn) per step in a workspace, so the backward needs no exp:
 *     dh = carry + dout_t      (carry: what step t+1 sent back through h_t)
 *     dn_pre = dh (1 - z) (1 - n^2)    dz_pre = dh (h_{t-1} - n) z (1 - z)    dr_pre = dn_pre hn r (1 - r)
 *     dgi = (dr_pre, dz_pre, dn_pre)   dgh = (dr_pre, dz_pre, dn_pre r)   dh_{t-1} = dh z + dgh W_hh
 * and the biases' gradients are the sums of dgi (b_ih) and dgh (b_hh) over rows and steps.
 *
 * Plain C99, no torch headers, built into the kernels' library (build.py). gi, dgi and dout rows
 * are addressed by their stride (steps of batch-first tensors, read in place); the rest is one
 * step's contiguous (B, .) block.
 */
#include <stddef.h>
#include <stdint.h>

#include "fastmath.h"

typedef struct {
    const float *gi;    /* input gates x W_ih^T at this step: row b at gi + b * sgi, 3H floats (r, z, n) */
    const float *gh;    /* (B, 3H): h_{t-1} W_hh^T (zeros at the first step) */
    const float *bi, *bh; /* (3H,) b_ih and b_hh (zeros for a GRU without biases) */
    const float *hp;    /* (B, H): h_{t-1} (zeros at the first step) */
    float *h;           /* (B, H): h_t */
    float *ws;          /* (B, 4H): r, z, n, hn; written forward, read backward */
    float *carry;       /* backward, (B, H): in dLoss/dh_t from step t+1, out dh_t z_t */
    const float *dout;  /* backward: dLoss/dh_t from the output at this step, row b at dout + b * sdout */
    float *dgi;         /* backward: row b at dgi + b * sgi, 3H floats */
    float *dgh;         /* backward, (B, 3H) */
    float *dbias;       /* backward, (B, 4H): each row's sums of dgi and of dn_pre r, ADDED to; NULL without biases */
    int64_t H, sgi, sdout;
} gru_args;

/* Forward of rows [b0, b1) at one step. No pointer is NULL, so that the loop vectorises. */
int64_t gru_fwd(const gru_args *a, int64_t b0, int64_t b1, int64_t slot) {
    (void)slot; /* no sums over rows */
    const int64_t H = a->H;
    const float *bi = a->bi, *bh = a->bh;
    FLUSH_SUBNORMALS_BEGIN
    for (int64_t b = b0; b < b1; b++) {
        const float *gi = a->gi + b * a->sgi, *gh = a->gh + b * 3 * H, *hp = a->hp + b * H;
        float *h = a->h + b * H, *ws = a->ws + b * 4 * H;
#pragma omp simd
        for (int64_t j = 0; j < H; j++) {
            const float hn = gh[2 * H + j] + bh[2 * H + j];
            const float r = sigmoid_f32(gi[j] + bi[j] + (gh[j] + bh[j]));
            const float z = sigmoid_f32(gi[H + j] + bi[H + j] + (gh[H + j] + bh[H + j]));
            const float n = tanh_f32(gi[2 * H + j] + bi[2 * H + j] + r * hn);
            h[j] = (1.0f - z) * n + z * hp[j];
            ws[j] = r;
            ws[H + j] = z;
            ws[2 * H + j] = n;
            ws[3 * H + j] = hn;
        }
    }
    FLUSH_SUBNORMALS_END
    return 0;
}

/* Backward of rows [b0, b1) at one step. Only dbias may be NULL. */
int64_t gru_bwd(const gru_args *a, int64_t b0, int64_t b1, int64_t slot) {
    (void)slot; /* no sums over rows */
    const int64_t H = a->H;
    FLUSH_SUBNORMALS_BEGIN
    for (int64_t b = b0; b < b1; b++) {
        const float *ws = a->ws + b * 4 * H, *hp = a->hp + b * H, *dout = a->dout + b * a->sdout;
        float *carry = a->carry + b * H, *dgi = a->dgi + b * a->sgi, *dgh = a->dgh + b * 3 * H;
        float *dbias = a->dbias ? a->dbias + b * 4 * H : NULL;
#pragma omp simd
        for (int64_t j = 0; j < H; j++) {
            const float r = ws[j], z = ws[H + j], n = ws[2 * H + j], hn = ws[3 * H + j];
            const float dh = carry[j] + dout[j];
            const float dn_pre = dh * (1.0f - z) * (1.0f - n * n);
            const float dz_pre = dh * (hp[j] - n) * z * (1.0f - z);
            const float dr_pre = dn_pre * hn * r * (1.0f - r);
            dgi[j] = dgh[j] = dr_pre;
            dgi[H + j] = dgh[H + j] = dz_pre;
            dgi[2 * H + j] = dn_pre;
            dgh[2 * H + j] = dn_pre * r;
            carry[j] = dh * z;
        }
        if (dbias) {
#pragma omp simd
            for (int64_t j = 0; j < H; j++) {
                dbias[j] += dgi[j];
                dbias[H + j] += dgi[H + j];
                dbias[2 * H + j] += dgi[2 * H + j];
                dbias[3 * H + j] += dgh[2 * H + j];
            }
        }
    }
    FLUSH_SUBNORMALS_END
    return 0;
}

/* Struct size, to check the caller's mirror. */
int64_t gru_args_size(void) { return (int64_t)sizeof(gru_args); }
