/* The float32 helpers of fastmath.h applied to arrays, so that tests can measure their accuracy in
 * the same build (flags, instruction set) as the kernels that use them (tests/ops/test_fastmath.py).
 * Built into the kernels' library (build.py); Python calls it through ctypes. */
#include <stdint.h>

#include "fastmath.h"

enum { EVAL_EXP2, EVAL_EXP2_V16, EVAL_SIGMOID, EVAL_SOFTPLUS, EVAL_TANH };

/* y[i] = fn(x[i]) for i < n, under the kernels' subnormal flush. Returns 0, or 1 where `fn` is
 * unknown or not built here (EVAL_EXP2_V16 without AVX-512; then y is untouched). */
int64_t fastmath_eval(int64_t fn, const float *x, float *y, int64_t n) {
#if defined(__AVX512F__)
    const int has_v16 = 1;
#else
    const int has_v16 = 0;
#endif
    if (fn < EVAL_EXP2 || fn > EVAL_TANH || (fn == EVAL_EXP2_V16 && !has_v16)) return 1;
    FLUSH_SUBNORMALS_BEGIN
    for (int64_t i = 0; i < n; i++) {
        switch (fn) {
        case EVAL_EXP2: y[i] = exp2_f32(x[i]); break;
        case EVAL_SIGMOID: y[i] = sigmoid_f32(x[i]); break;
        case EVAL_SOFTPLUS: y[i] = softplus_f32(x[i]); break;
        case EVAL_TANH: y[i] = tanh_f32(x[i]); break;
        default: {
#if defined(__AVX512F__)
            float lanes[16] = {0.0f};
            const int64_t m = n - i < 16 ? n - i : 16;
            for (int64_t j = 0; j < m; j++) lanes[j] = x[i + j];
            _mm512_storeu_ps(lanes, exp2_v16(_mm512_loadu_ps(lanes)));
            for (int64_t j = 0; j < m; j++) y[i + j] = lanes[j];
            i += m - 1;
#endif
        }
        }
    }
    FLUSH_SUBNORMALS_END
    return 0;
}
