// LayerNorm over the last axis of float32 rows, both cores.
//
// Each row (in L1) gets its mean, then the mean of its squared deviations (two passes: accurate where
// E[x^2] - E[x]^2 would cancel), then (x - mean) * rstd * weight + bias: one read of the map from
// memory and one write. mlx's CPU path takes a pass for each statistic and one for the affine.
#pragma once

#include <cmath>

#include "simd.h"

namespace musicviz {

struct LayerNorm {
  const float* x;       // (rows, c)
  const float* weight;  // (c), or nullptr
  const float* bias;    // (c), or nullptr
  float* y;             // (rows, c)
  long rows;
  int c;
  float eps;
};

// What layer_norm_fused accepts: c a multiple of 16.
inline bool layer_norm_supports(int c) { return c > 0 && c % 16 == 0; }

inline void layer_norm_fused(const LayerNorm& g, int threads) {
  using simd::LANES;
  using simd::vec;
  simd::over_rows(g.rows, threads, [&](long r) {
    const float* in = g.x + static_cast<size_t>(r) * g.c;
    float* out = g.y + static_cast<size_t>(r) * g.c;
    vec sum{};
    for (int j = 0; j < g.c; j += LANES) sum += simd::load(in + j);
    float total = 0;
    for (int i = 0; i < LANES; ++i) total += sum[i];
    const float mean = total / g.c;
    vec squares{};
    for (int j = 0; j < g.c; j += LANES) {
      const vec d = simd::load(in + j) - mean;
      squares += d * d;
    }
    float variance = 0;
    for (int i = 0; i < LANES; ++i) variance += squares[i];
    const float rstd = 1.0f / std::sqrt(variance / g.c + g.eps);
    for (int j = 0; j < g.c; j += LANES) {
      vec v = (simd::load(in + j) - mean) * rstd;
      if (g.weight) v *= simd::load(g.weight + j);
      if (g.bias) v += simd::load(g.bias + j);
      simd::store(out + j, v);
    }
  });
}

}  // namespace musicviz
