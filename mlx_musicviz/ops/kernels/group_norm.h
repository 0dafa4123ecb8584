// GroupNorm (optionally followed by SiLU) over (n, pixels, c) float32 rows, both cores.
//
// Three passes over the map: per-channel sums, per-channel sums of squared deviations from the group
// mean (two passes: accurate where E[x^2] - E[x]^2 cancels), then y = x * scale + shift per channel,
// with SiLU in the same pass. Sums are float32 over blocks of 64 pixel rows, then float64 across
// blocks and threads, so million-element groups (a 512x512 VAE decoder) stay accurate. mlx composes
// the same from single-threaded reductions and several elementwise passes; its GroupNorm also copies
// the map into group order and back.
#pragma once

#include <cmath>

#include "vector_math.h"
#include "simd.h"

namespace musicviz {

struct GroupNorm {
  const float* x;       // (n, p, c)
  const float* weight;  // (c), or nullptr
  const float* bias;    // (c), or nullptr
  float* y;             // (n, p, c)
  int n;
  long p;
  int c, groups;
  float eps;
  bool silu;
};

// What group_norm_fused accepts: c a multiple of 16 and of the group count.
inline bool group_norm_supports(int c, int groups) { return c > 0 && groups > 0 && c % groups == 0 && c % 16 == 0; }

namespace group_norm {

using simd::LANES;
using simd::vec;

constexpr int ROW_BLOCK = 64;  // pixel rows summed in float32 before the float64 total

// total[j] += sum over rows [r0, r1) of (x - center[j])^k, k = 1 without center, 2 with it.
inline void column_sums(const float* x, long r0, long r1, int c, const float* center, float* block, double* total) {
  for (long b0 = r0; b0 < r1; b0 += ROW_BLOCK) {
    std::fill(block, block + c, 0.0f);
    for (long r = b0; r < std::min(r1, b0 + ROW_BLOCK); ++r) {
      const float* row = x + static_cast<size_t>(r) * c;
      for (int j = 0; j < c; j += LANES) {
        vec v = simd::load(row + j);
        if (center) {
          v -= simd::load(center + j);
          v *= v;
        }
        simd::store(block + j, simd::load(block + j) + v);
      }
    }
    for (int j = 0; j < c; ++j) total[j] += block[j];
  }
}

}  // namespace group_norm

// g's c and groups must pass group_norm_supports.
inline void group_norm_fused(const GroupNorm& g, int threads) {
  using namespace group_norm;
  threads = static_cast<int>(std::max(1L, std::min<long>(threads, g.p / ROW_BLOCK)));
  const int c = g.c, per_group = c / g.groups;
  const double count = static_cast<double>(g.p) * per_group;
  std::vector<double> partial(static_cast<size_t>(threads) * g.n * c);
  std::vector<float> center(static_cast<size_t>(g.n) * c), scale(center.size()), shift(center.size());
  std::vector<double> mean(static_cast<size_t>(g.n) * g.groups);

  // per (image, group): the sum over threads and the group's channels of partial, divided by count
  auto group_totals = [&](std::vector<double>& out) {
    for (int i = 0; i < g.n; ++i)
      for (int k = 0; k < g.groups; ++k) {
        double sum = 0;
        for (int t = 0; t < threads; ++t)
          for (int j = k * per_group; j < (k + 1) * per_group; ++j) sum += partial[(static_cast<size_t>(t) * g.n + i) * c + j];
        out[static_cast<size_t>(i) * g.groups + k] = sum / count;
      }
  };
  auto sums_pass = [&](const float* centers) {
    std::fill(partial.begin(), partial.end(), 0.0);
    simd::in_parallel(threads, [&](int id) {
      std::vector<float> block(c);
      for (int i = 0; i < g.n; ++i)
        column_sums(g.x + static_cast<size_t>(i) * g.p * c, g.p * id / threads, g.p * (id + 1) / threads, c,
                    centers ? centers + static_cast<size_t>(i) * c : nullptr, block.data(),
                    partial.data() + (static_cast<size_t>(id) * g.n + i) * c);
    });
  };

  sums_pass(nullptr);
  group_totals(mean);
  for (int i = 0; i < g.n; ++i)
    for (int j = 0; j < c; ++j) center[static_cast<size_t>(i) * c + j] = static_cast<float>(mean[i * g.groups + j / per_group]);
  sums_pass(center.data());
  std::vector<double> variance(mean.size());
  group_totals(variance);
  for (int i = 0; i < g.n; ++i)
    for (int j = 0; j < c; ++j) {
      const size_t at = static_cast<size_t>(i) * c + j;
      const double s = (g.weight ? g.weight[j] : 1.0) / std::sqrt(variance[i * g.groups + j / per_group] + g.eps);
      scale[at] = static_cast<float>(s);
      shift[at] = static_cast<float>((g.bias ? g.bias[j] : 0.0) - mean[i * g.groups + j / per_group] * s);
    }

  simd::over_rows(static_cast<long>(g.n) * g.p, threads, [&](long r) {
    const size_t image = static_cast<size_t>(r / g.p) * c;
    const float* in = g.x + static_cast<size_t>(r) * c;
    float* out = g.y + static_cast<size_t>(r) * c;
    for (int j = 0; j < c; j += LANES) {
      vec v = simd::load(in + j) * simd::load(scale.data() + image + j) + simd::load(shift.data() + image + j);
      if (g.silu) v = v / (1.0f + exp_poly(-v));
      simd::store(out + j, v);
    }
  });
}

}  // namespace musicviz
