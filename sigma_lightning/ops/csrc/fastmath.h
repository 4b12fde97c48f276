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

/* 2^f for |f| <= 1/2: the minimax polynomial of degree 6 (relative error 1.9e-9; under 1 ulp
 * with float32 Horner steps), into p. FMA(a, b, c) is a * b + c and K(x) the constant x, in the
 * caller's type (a float, or a vector register). */
#define EXP2_POLY(p, f, FMA, K)                                   \
    p = FMA(K(1.5345800784416497e-04f), f, K(1.3399932067841291e-03f)); \
    p = FMA(p, f, K(9.6184890717267990e-03f));                   \
    p = FMA(p, f, K(5.5503286421298980e-02f));                   \
    p = FMA(p, f, K(2.4022646248340607e-01f));                   \
    p = FMA(p, f, K(6.9314718246459961e-01f));                   \
    p = FMA(p, f, K(1.0f))
#define SCALAR_FMA(a, b, c) ((a) * (b) + (c))
#define SCALAR_K(x) (x)

/* 2^t in float32, vectorisable and without -ffast-math: t = k + f with integer k and |f| <= 1/2,
 * 2^f by EXP2_POLY; k is rounded with the 1.5 * 2^23 trick and 2^k built in the exponent bits,
 * clamped as an integer (float compares cost a third of the forward). t <= -127 gives exactly 0
 * (no subnormals), 127 <= t < 2^31 saturates at about 2^127, NaN stays NaN. In the scan
 * t = dt * A * log2(e) <= 0, as A < 0 <= dt. */
INLINE float exp2_f32(float t0) {
    const float t = t0;
    const float k = (t + 12582912.0f) - 12582912.0f;
    const float f = t - k;
    float p;
    EXP2_POLY(p, f, SCALAR_FMA, SCALAR_K);
    union { int32_t i; float f; } s;
    int32_t e = (int32_t)k + 127; /* biased exponent, clamped in integers (no float compares) */
    e = e < 0 ? 0 : e;
    e = e > 254 ? 254 : e;
    s.i = e << 23; /* 2^k, or 0.0f for k <= -127 */
    return p * s.f;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp2_f32 on the 16 lanes of an AVX-512 register, for the kernels' hot loops: the same
 * polynomial, with k rounded by vrndscaleps and 2^k applied by vscalefps (10 instructions instead
 * of 16). Differs from exp2_f32 only at the ends: t <= -127 gives 0 where subnormals are flushed
 * (FLUSH_SUBNORMALS_BEGIN; a subnormal otherwise), t >= 128 gives inf. */
INLINE __m512 exp2_v16(__m512 t) {
    const __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, k);
    __m512 p;
    EXP2_POLY(p, f, _mm512_fmadd_ps, _mm512_set1_ps);
    return _mm512_scalef_ps(p, k);
}
#endif

/* 1 / (1 + e^-x): within 6 ulp on [-10, 10]; the float32 product x * log2(e) carries a relative
 * error of |x| times float32's, so about 4 + |x| / 4 ulp beyond (tests/ops/test_fastmath.py). */
INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp2_f32(-x * LOG2E)); }

/* tanh(x): x + x^3 q(x^2) for |x| < 0.625 (q the minimax polynomial of degree 4, under 1 ulp),
 * else 1 - 2 / (1 + e^(2|x|)) with x's sign (no cancellation there: tanh >= 0.55), |x| capped at 20
 * (tanh is 1 in float32 beyond 9.1), so +-inf give +-1; NaN stays NaN. */
INLINE float tanh_f32(float x) {
    const float ax = x < 0.0f ? -x : x, s = x * x;
    float q = -5.7049891911447048e-03f;
    q = q * s + 2.0639089867472649e-02f;
    q = q * s - 5.3739715367555618e-02f;
    q = q * s + 1.3331441581249237e-01f;
    q = q * s - 3.3333280682563782e-01f;
    const float small = x + (s * x) * q;
    const float large = 1.0f - 2.0f / (1.0f + exp2_f32(2.0f * LOG2E * (ax > 20.0f ? 20.0f : ax)));
    return ax < 0.625f ? small : (x < 0.0f ? -large : large);
}

/* log(1 + e^x) = max(x, 0) + log1p(v) with v = e^-|x| in (0, 1], and log1p(v) = 2 atanh(s) with
 * s = v / (2 + v) in (0, 1/3], by its odd series to s^13 (truncation under 2e-8 relative): no
 * cancellation when v is tiny; within 6 ulp on [-10, 10], and like sigmoid_f32 beyond. |x| is capped at 200 (v = 0 beyond), so
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
