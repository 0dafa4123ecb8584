// exp and erf over 16-float vectors, as mlx_musicviz/ops/elementwise.py's _exp_poly and _erf_poly
// (same coefficients, a few float32 ulps). exp: 2^n * 2^f, n = round(x * log2(e)), 2^f by a degree-6 polynomial on [-0.5, 0.5].
// Inputs below ~-87.7 give exactly 0 (n = -127 puts 0 in the exponent field: no denormals, which
// made later matmuls 30x slower here); above ~+87.3 they saturate at 2^126.
#pragma once

#include "simd.h"

namespace musicviz {

inline simd::vec exp_poly(simd::vec x) {
  using simd::vec;
  typedef int ivec __attribute__((vector_size(64), aligned(4)));
  const vec t0 = x * 1.4426950408889634f;
  const vec low = t0 < -127.0f ? vec{} - 127.0f : t0;
  const vec t = low > 126.0f ? vec{} + 126.0f : low;
  const vec n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23)
  const vec f = t - n, f2 = f * f;
  const vec p01 = 0.9999999999595485f + 0.6931472067106207f * f, p23 = 0.2402265121359523f + 0.0555032721420935f * f,
            p45 = 0.0096180256029431f + 0.0013400432165303f * f;
  const vec p = (p01 + f2 * p23) + (f2 * f2) * (p45 + f2 * 0.0001546973197708f);
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  return p * reinterpret_cast<const vec&>(bits);
}

// erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (float32 erf is exactly +-1 beyond), minimax coefficients.
inline simd::vec erf_poly(simd::vec x) {
  using simd::vec;
  const vec low = x < -4.0f ? vec{} - 4.0f : x;
  const vec c = low > 4.0f ? vec{} + 4.0f : low;
  const vec x2 = c * c, x4 = x2 * x2, x8 = x4 * x4;
  const vec p = ((-1.60960333262415e-02f + -2.95459980854025e-03f * x2) +
                 x4 * (-7.34990630326855e-04f + -5.69250639462346e-05f * x2)) +
                x8 * ((-2.10102402082508e-06f + 2.77068142495902e-08f * x2) + x4 * -2.72614225801306e-10f);
  const vec q = ((-1.42647390514189e-02f + -7.37332916720468e-03f * x2) +
                 x4 * (-1.68282697438203e-03f + -2.13374055278905e-04f * x2)) +
                x8 * -1.45660718464996e-05f;
  return c * p / q;
}

}  // namespace musicviz
