// Multi-head attention softmax(q k^T * scale) v, fused, over (batch, tokens, heads * d) float32 rows.
//
// Per head and block of query rows, the scores (rows x m), their softmax and the product with v are
// computed while the block is in L2: the (n x m) score matrix never goes through memory, the heads
// are read and written in place in the projections' (tokens, heads * d) layout (no transposes), and
// both cores share the blocks. mlx composes the same from a matmul, a softmax pass (one thread) and
// a second matmul, each a full pass over the (heads, n, m) scores.
//
// exp is vector_math.h's (ops/elementwise.py's _exp_poly coefficients): a few float32 ulps.
#pragma once

#include <limits>

#include "vector_math.h"
#include "simd.h"

namespace musicviz {

struct Attention {
  const float* q;  // (b, n, heads * d)
  const float* k;  // (b, m, heads * d)
  const float* v;  // (b, m, heads * d)
  float* y;        // (b, n, heads * d)
  int b, n, m, heads, d;
  float scale;
};

// What attention_fused accepts: any number of key tokens, the head size a multiple of 64.
inline bool attention_supports(int m, int d) { return m > 0 && d > 0 && d % 64 == 0; }

namespace fused_attention {

using simd::LANES;
using simd::OB;
using simd::vec;

constexpr int QUERY_ROWS = 48;  // query rows per block: the (48 x m) scores stay in L2

// key tokens rounded up to whole panels of OB: the padding keys are zeros, their scores -inf (exp: 0)
inline int padded_keys(int m) { return (m + OB - 1) / OB * OB; }

// rows x m scores -> exp((s - max) * scale) in place; the row sums' reciprocals into inverse.
inline void softmax_rows(float* s, int rows, int m, float scale, float* inverse) {
  for (int r = 0; r < rows; ++r) {
    float* row = s + static_cast<size_t>(r) * m;
    vec top = simd::load(row);
    for (int j = LANES; j < m; j += LANES) {
      const vec x = simd::load(row + j);
      top = x > top ? x : top;
    }
    float peak = top[0];
    for (int i = 1; i < LANES; ++i) peak = std::max(peak, top[i]);
    vec sum{};
    for (int j = 0; j < m; j += LANES) {
      const vec e = exp_poly((simd::load(row + j) - peak) * scale);
      simd::store(row + j, e);
      sum += e;
    }
    float total = 0;
    for (int i = 0; i < LANES; ++i) total += sum[i];
    inverse[r] = 1.0f / total;
  }
}

struct Scratch {
  std::vector<float> kt;      // one head's k transposed, [panel of 64 keys][d][64], zeros past m
  std::vector<float> scores;  // QUERY_ROWS x padded_keys(m)
  std::vector<float> inverse; // QUERY_ROWS
  long head = -1;             // which (batch, head) kt holds
};

inline void pack_keys(const Attention& a, int image, int head, Scratch& s) {
  const int width = a.heads * a.d;
  for (int p = 0; p < padded_keys(a.m) / OB; ++p)
    for (int j = 0; j < OB; ++j) {
      float* column = s.kt.data() + static_cast<size_t>(p) * a.d * OB + j;
      if (p * OB + j >= a.m) {
        for (int c = 0; c < a.d; ++c) column[static_cast<size_t>(c) * OB] = 0.0f;
        continue;
      }
      const float* key = a.k + (static_cast<size_t>(image) * a.m + p * OB + j) * width + head * a.d;
      for (int c = 0; c < a.d; ++c) column[static_cast<size_t>(c) * OB] = key[c];
    }
}

inline void block(const Attention& a, int image, int head, int r0, int rows, Scratch& s) {
  const int width = a.heads * a.d;
  const long which = static_cast<long>(image) * a.heads + head;
  if (s.head != which) {
    pack_keys(a, image, head, s);
    s.head = which;
  }
  const size_t origin = (static_cast<size_t>(image) * a.n + r0) * width + static_cast<size_t>(head) * a.d;
  float* scores = s.scores.data();
  const int mp = padded_keys(a.m);
  for (int p = 0; p < mp / OB; ++p)
    simd::gemm(a.q + origin, width, rows, a.d, s.kt.data() + static_cast<size_t>(p) * a.d * OB, OB, scores + p * OB,
                   mp, false);
  for (int r = 0; r < rows; ++r)
    std::fill(scores + static_cast<size_t>(r) * mp + a.m, scores + static_cast<size_t>(r + 1) * mp,
              -std::numeric_limits<float>::infinity());
  softmax_rows(scores, rows, mp, a.scale, s.inverse.data());
  const float* values = a.v + static_cast<size_t>(image) * a.m * width + static_cast<size_t>(head) * a.d;
  for (int p = 0; p < a.d / OB; ++p)  // over the real keys only: v has m rows
    simd::gemm(scores, mp, rows, a.m, values + p * OB, width, a.y + origin + p * OB, width, false);
  for (int r = 0; r < rows; ++r) {
    float* out = a.y + origin + static_cast<size_t>(r) * width;
    const float inv = s.inverse[r];
    for (int c = 0; c < a.d; ++c) out[c] *= inv;
  }
}

}  // namespace fused_attention

// a's shape must pass attention_supports.
inline void attention_fused(const Attention& a, int threads) {
  using namespace fused_attention;
  threads = std::max(1, threads);
  const int blocks = (a.n + QUERY_ROWS - 1) / QUERY_ROWS;
  const long items = static_cast<long>(a.b) * a.heads * blocks;
  simd::in_parallel(threads, [&](int id) {
    Scratch s;
    s.kt.resize(static_cast<size_t>(padded_keys(a.m)) * a.d);
    s.scores.resize(static_cast<size_t>(QUERY_ROWS) * padded_keys(a.m));
    s.inverse.resize(QUERY_ROWS);
    for (long item = items * id / threads; item < items * (id + 1) / threads; ++item) {
      const long pair = item / blocks;
      const int r0 = static_cast<int>(item % blocks) * QUERY_ROWS;
      block(a, static_cast<int>(pair / a.heads), static_cast<int>(pair % a.heads), r0, std::min(QUERY_ROWS, a.n - r0), s);
    }
  });
}

}  // namespace musicviz
