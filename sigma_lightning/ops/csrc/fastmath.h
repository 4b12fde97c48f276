/* Float32 helpers shared by the C kernels (selective_scan.c, depthwise_conv.c): a vectorisable
 * 2^t and sigmoid without -ffast-math, the subnormal flush around each call, INLINE. */
#ifndef SIGMA_LIGHTNING_FASTMATH_H
#define SIGMA_LIGHTNING_FASTMATH_H

#include <stdint.h>

/* Subnormal floats (|x| < 1.2e-38, e.g. a gradient carried through many small decays) cost a
 * microcode assist per operation on x86. Each call flushes them to zero (FTZ + DAZ) and restores
 * the caller's mode on return: results move by less than 1.2e-38. */
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define FLUSH_SUBNORMALS_BEGIN const unsigned int saved_csr_ = _mm_getcsr(); _mm_setcsr(saved_csr_ | 0x8040u);
#define FLUSH_SUBNORMALS_END _mm_setcsr(saved_csr_);
#else
#define FLUSH_SUBNORMALS_BEGIN
#define FLUSH_SUBNORMALS_END
#endif

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

#define LOG2E 1.44269504088896341f

/* 2^t in float32, vectorisable and without -ffast-math: t = k + f with integer k and |f| <= 1/2,
 * 2^f = exp(f ln2) by its degree-7 Taylor polynomial (error about 1 ulp); k is rounded with the
 * 1.5 * 2^23 trick and 2^k built in the exponent bits, clamped as an integer (float compares cost a
 * third of the forward). t <= -127 gives exactly 0 (no subnormals), 127 <= t < 2^31 saturates at
 * about 2^127, NaN stays NaN. In the scan t = dt * A * log2(e) <= 0, as A < 0 <= dt. */
INLINE float exp2_f32(float t0) {
    const float t = t0;
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
    int32_t e = (int32_t)k + 127; /* biased exponent, clamped in integers (no float compares) */
    e = e < 0 ? 0 : e;
    e = e > 254 ? 254 : e;
    s.i = e << 23; /* 2^k, or 0.0f for k <= -127 */
    return p * s.f;
}

INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp2_f32(-x * LOG2E)); }

/* log(1 + e^x) = max(x, 0) + log1p(v) with v = e^-|x| in (0, 1], and log1p(v) = 2 atanh(s) with
 * s = v / (2 + v) in (0, 1/3], by its odd series to s^13 (truncation under 2e-8 relative): no
 * cancellation when v is tiny, about 2 ulp in all. |x| is capped at 200 (v = 0 beyond), so
 * +-inf give inf and 0; NaN stays NaN. */
INLINE float softplus_f32(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float v = exp2_f32((ax < 200.0f ? ax : 200.0f) * -LOG2E);
    const float s = v / (2.0f + v), s2 = s * s;
    float p = 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return (x > 0.0f ? x : 0.0f) + 2.0f * s * p;
}

#endif
