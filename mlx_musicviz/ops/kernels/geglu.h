// GEGLU's activation, h * gelu(gate) over the rows [h | gate] of its projection, both cores.
//
// One pass: each row's two halves are read where the projection wrote them and the product written
// once, with the exact (erf) GELU from vector_math.h. mlx runs the split, the erf polynomial and the
// products as single-threaded elementwise kernels (~4.4 ns an element here).
#pragma once

#include "vector_math.h"
#include "simd.h"

namespace musicviz {

struct Geglu {
  const float* x;  // (rows, 2 * d): [h | gate]
  float* y;        // (rows, d)
  long rows;
  int d;
};

// What geglu_fused accepts: d a multiple of 16.
inline bool geglu_supports(int d) { return d > 0 && d % 16 == 0; }

inline void geglu_fused(const Geglu& g, int threads) {
  using simd::LANES;
  using simd::vec;
  simd::over_rows(g.rows, threads, [&](long r) {
    const float* h = g.x + static_cast<size_t>(r) * 2 * g.d;
    float* out = g.y + static_cast<size_t>(r) * g.d;
    for (int j = 0; j < g.d; j += LANES) {
      const vec gate = simd::load(h + g.d + j);
      const vec gelu = 0.5f * gate * (1.0f + erf_poly(gate * 0.7071067811865476f));
      simd::store(out + j, simd::load(h + j) * gelu);
    }
  });
}

}  // namespace musicviz
