// 3x3 convolution, stride 1, padding 1, of NHWC float32 maps by Winograd F(2x2, 3x3), fused.
//
// Each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A over the 4x4 input tile d around it: 16
// multiplies where the direct convolution takes 36. Over channels the 16 elementwise products are
// 16 small matrix products, (tiles, C) @ (C, O). What makes it pay on a CPU is that a block of 48
// tiles is transformed, multiplied and transformed back while it is in cache, so the map is read
// once and written once; the unfused form (mlx ops, or BLAS over whole transformed maps) moves 4x
// the map through memory at each step. The epilogue adds the bias, an optional residual of the
// output's shape and an optional ReLU, and the input may be read through a nearest 2x upsampling
// (the decoders' upsample-then-convolve) without the upsampled map ever existing.
//
// Built on simd.h's vectors and threads. No mlx here: extension.cpp wraps it as an mlx primitive.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "simd.h"

namespace musicviz {

struct Conv3x3 {
  const float* x;         // (n, h, w, c), or (n, h / 2, w / 2, c) when upsample
  const float* weight;    // (o, 3, 3, c), as mlx stores convolution kernels
  const float* bias;      // (o), or nullptr
  const float* residual;  // (n, h, w, o) added before the activation, or nullptr
  float* y;               // (n, h, w, o)
  int n, h, w, c, o;      // h, w: the output map
  bool relu, upsample;
};

// What conv3x3_winograd accepts: even output sides, c a multiple of 16, o a multiple of 64.
inline bool winograd_supports(int h, int w, int c, int o) {
  return h > 0 && w > 0 && h % 2 == 0 && w % 2 == 0 && c > 0 && c % 16 == 0 && o > 0 && o % 64 == 0;
}

namespace winograd {

using namespace simd;

constexpr int TILES = 48;      // 2x2 output tiles per block (measured: 24-96 within noise for 64 channels)
constexpr int CHANNELS = 128;  // input channels transformed at a time: V's block stays in L2

// U[chunk][a * 4 + b][c][oi] = (G g G^T)_ab of output chunk * OB + oi and input channel c, for the
// groups of 16 outputs [group_begin, group_end). G g G^T is computed over 16 input channels at a
// time (the kernel's contiguous axis) and transposed into U's layout through a block in L1.
inline void transform_kernel(const Conv3x3& k, float* u, int group_begin, int group_end) {
  const int c_count = k.c;
  float stage[16][LANES][LANES];  // [a * 4 + b][output][channel]
  for (int group = group_begin; group < group_end; ++group) {
    const int o0 = group * LANES, chunk = o0 / OB, oi0 = o0 % OB;
    for (int c0 = 0; c0 < c_count; c0 += LANES) {
      for (int oo = 0; oo < LANES; ++oo) {
        const float* g = k.weight + static_cast<size_t>(o0 + oo) * 9 * c_count + c0;
        vec t[4][3];
        for (int j = 0; j < 3; ++j) {  // G g, G's rows (1, 0, 0), (1, 1, 1) / 2, (1, -1, 1) / 2, (0, 0, 1)
          const vec g0 = load(g + j * c_count), g1 = load(g + (3 + j) * c_count), g2 = load(g + (6 + j) * c_count);
          t[0][j] = g0;
          t[1][j] = 0.5f * (g0 + g1 + g2);
          t[2][j] = 0.5f * (g0 - g1 + g2);
          t[3][j] = g2;
        }
        for (int a = 0; a < 4; ++a) {  // (G g) G^T
          store(stage[a * 4][oo], t[a][0]);
          store(stage[a * 4 + 1][oo], 0.5f * (t[a][0] + t[a][1] + t[a][2]));
          store(stage[a * 4 + 2][oo], 0.5f * (t[a][0] - t[a][1] + t[a][2]));
          store(stage[a * 4 + 3][oo], t[a][2]);
        }
      }
      for (int p = 0; p < 16; ++p)
        for (int cc = 0; cc < LANES; ++cc) {
          float* row = u + ((static_cast<size_t>(chunk) * 16 + p) * c_count + c0 + cc) * OB + oi0;
          for (int oo = 0; oo < LANES; ++oo) row[oo] = stage[p][oo][cc];
        }
    }
  }
}


struct Scratch {
  std::vector<float> v;               // [a * 4 + b][tile][channel]: B^T d B of a block's channel chunk
  std::vector<float> m;               // [a * 4 + b][tile][output]: the 16 products of a block
  std::vector<const float*> patches;  // per tile, its 16 input pixels (nullptr: the zero padding)
};

// Tiles [t0, t0 + count) of the flattened (image, tile row, tile column) grid, output chunk `chunk`.
inline void block(const Conv3x3& k, const float* u, int t0, int count, int chunk, Scratch& s) {
  const int tiles_w = k.w / 2, tiles_per_image = (k.h / 2) * tiles_w;
  const int shift = k.upsample ? 1 : 0, in_h = k.h >> shift, in_w = k.w >> shift;
  for (int t = 0; t < count; ++t) {
    const int tile = t0 + t, image = tile / tiles_per_image, rest = tile % tiles_per_image;
    const int y0 = 2 * (rest / tiles_w) - 1, x0 = 2 * (rest % tiles_w) - 1;
    const float* base = k.x + static_cast<size_t>(image) * in_h * in_w * k.c;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) {
        const int yy = y0 + i, xx = x0 + j;  // in the (upsampled) map
        const bool inside = yy >= 0 && yy < k.h && xx >= 0 && xx < k.w;
        s.patches[t * 16 + i * 4 + j] =
            inside ? base + (static_cast<size_t>(yy >> shift) * in_w + (xx >> shift)) * k.c : nullptr;
      }
  }
  float* m = s.m.data();
  for (int c0 = 0; c0 < k.c; c0 += CHANNELS) {
    const int depth = std::min(CHANNELS, k.c - c0);
    float* v = s.v.data();
    const size_t step = static_cast<size_t>(count) * depth;  // from one of the 16 positions to the next
    for (int t = 0; t < count; ++t) {
      const float* const* patch = &s.patches[t * 16];
      for (int c = 0; c < depth; c += LANES) {
        vec d[4][4], e[4][4];
        for (int i = 0; i < 16; ++i) d[i / 4][i % 4] = patch[i] ? load(patch[i] + c0 + c) : vec{};
        for (int j = 0; j < 4; ++j) {  // B^T d, B^T's rows (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)
          e[0][j] = d[0][j] - d[2][j];
          e[1][j] = d[1][j] + d[2][j];
          e[2][j] = d[2][j] - d[1][j];
          e[3][j] = d[1][j] - d[3][j];
        }
        for (int a = 0; a < 4; ++a) {  // (B^T d) B
          float* row = v + (static_cast<size_t>(a * 4) * count + t) * depth + c;
          store(row, e[a][0] - e[a][2]);
          store(row + step, e[a][1] + e[a][2]);
          store(row + 2 * step, e[a][2] - e[a][1]);
          store(row + 3 * step, e[a][1] - e[a][3]);
        }
      }
    }
    for (int p = 0; p < 16; ++p)
      gemm(v + p * step, depth, count, depth, u + ((static_cast<size_t>(chunk) * 16 + p) * k.c + c0) * OB, OB,
           m + static_cast<size_t>(p) * count * OB, OB, c0 > 0);
  }
  for (int t = 0; t < count; ++t) {  // A^T M A, A^T's rows (1, 1, 1, 0), (0, 1, -1, -1); then the epilogue
    const int tile = t0 + t, image = tile / tiles_per_image, rest = tile % tiles_per_image;
    const int y = 2 * (rest / tiles_w), x = 2 * (rest % tiles_w);
    const size_t origin = ((static_cast<size_t>(image) * k.h + y) * k.w + x) * k.o + chunk * OB;
    for (int j = 0; j < NV; ++j) {
      vec q[4][4], r[2][4];
      for (int p = 0; p < 16; ++p) q[p / 4][p % 4] = load(m + (static_cast<size_t>(p) * count + t) * OB + j * LANES);
      for (int b = 0; b < 4; ++b) {
        r[0][b] = q[0][b] + q[1][b] + q[2][b];
        r[1][b] = q[1][b] - q[2][b] - q[3][b];
      }
      const vec bias = k.bias ? load(k.bias + chunk * OB + j * LANES) : vec{};
      for (int i = 0; i < 2; ++i) {
        const vec out[2] = {r[i][0] + r[i][1] + r[i][2] + bias, r[i][1] - r[i][2] - r[i][3] + bias};
        for (int jj = 0; jj < 2; ++jj) {
          const size_t at = origin + (static_cast<size_t>(i) * k.w + jj) * k.o + j * LANES;
          vec value = out[jj];
          if (k.residual) value += load(k.residual + at);
          if (k.relu) value = value > 0 ? value : vec{};
          store(k.y + at, value);
        }
      }
    }
  }
}


}  // namespace winograd

// k's shape must pass winograd_supports. `u` holds 16 * c * o floats of working space.
inline void conv3x3_winograd(const Conv3x3& k, float* u, int threads) {
  using namespace winograd;
  threads = std::max(1, threads);
  const int groups = k.o / LANES;
  in_parallel(threads, [&](int id) { transform_kernel(k, u, groups * id / threads, groups * (id + 1) / threads); });
  const int tiles = k.n * (k.h / 2) * (k.w / 2), chunks = k.o / OB;
  const long items = static_cast<long>((tiles + TILES - 1) / TILES) * chunks;
  in_parallel(threads, [&](int id) {
    Scratch s;
    s.v.resize(static_cast<size_t>(16) * TILES * std::min(CHANNELS, k.c));
    s.m.resize(static_cast<size_t>(16) * TILES * OB);
    s.patches.resize(static_cast<size_t>(16) * TILES);
    for (long item = items * id / threads; item < items * (id + 1) / threads; ++item) {
      const int t0 = static_cast<int>(item / chunks) * TILES;
      block(k, u, t0, std::min(TILES, tiles - t0), static_cast<int>(item % chunks), s);
    }
  });
}

}  // namespace musicviz
