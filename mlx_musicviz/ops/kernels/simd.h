// What every kernel here shares: a vector of 16 floats with unaligned loads and stores, a small
// register-blocked matrix product, and splitting work over threads.
//
// Plain C++17 with GCC/Clang vector extensions: compiled with -march=native they become AVX-512,
// AVX2 or NEON code.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <thread>
#include <vector>

namespace musicviz {
namespace simd {

typedef float vec __attribute__((vector_size(64), aligned(4)));  // 16 floats, unaligned loads
constexpr int LANES = 16;
constexpr int OB = 64;    // columns of gemm's output: 4 vectors
constexpr int NV = OB / LANES;
constexpr int ROWS = 6;  // rows per micro-kernel call: 6 x 4 accumulators

inline vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

// m (R x OB) = [m +] v (R x depth, rows ldv apart) @ u (depth x OB, rows ldu apart), m's rows ldm
// apart: R x 4 vector accumulators in registers, one broadcast of v per row and k.
template <int R>
inline void micro(const float* v, int ldv, int depth, const float* u, int ldu, float* m, int ldm, bool accumulate) {
  vec acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = accumulate ? load(m + static_cast<size_t>(r) * ldm + j * LANES) : vec{};
  for (int kk = 0; kk < depth; ++kk) {
    vec b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = load(u + static_cast<size_t>(kk) * ldu + j * LANES);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float a = v[static_cast<size_t>(r) * ldv + kk];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[r][j] += a * b[j];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) store(m + static_cast<size_t>(r) * ldm + j * LANES, acc[r][j]);
}

// m (rows x OB) = [m +] v (rows x depth) @ u (depth x OB), leading dimensions as in micro.
inline void gemm(const float* v, int ldv, int rows, int depth, const float* u, int ldu, float* m, int ldm,
                 bool accumulate) {
  int r = 0;
  for (; r + ROWS <= rows; r += ROWS)
    micro<ROWS>(v + static_cast<size_t>(r) * ldv, ldv, depth, u, ldu, m + static_cast<size_t>(r) * ldm, ldm, accumulate);
  const float* vr = v + static_cast<size_t>(r) * ldv;
  float* mr = m + static_cast<size_t>(r) * ldm;
  switch (rows - r) {
    case 1: micro<1>(vr, ldv, depth, u, ldu, mr, ldm, accumulate); break;
    case 2: micro<2>(vr, ldv, depth, u, ldu, mr, ldm, accumulate); break;
    case 3: micro<3>(vr, ldv, depth, u, ldu, mr, ldm, accumulate); break;
    case 4: micro<4>(vr, ldv, depth, u, ldu, mr, ldm, accumulate); break;
    case 5: micro<5>(vr, ldv, depth, u, ldu, mr, ldm, accumulate); break;
    default: break;
  }
}

// work(id) for id in [0, threads), id 0 on the calling thread.
template <class F>
void in_parallel(int threads, F&& work) {
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(work, i);
  work(0);
  for (auto& t : pool) t.join();
}

// f(r) for each row r in [0, rows), in contiguous ranges over up to `threads` threads (16 rows at least each).
template <class F>
void over_rows(long rows, int threads, F&& f) {
  const int used = static_cast<int>(std::max(1L, std::min<long>(threads, rows / 16)));
  in_parallel(used, [&](int id) {
    for (long r = rows * id / used; r < rows * (id + 1) / used; ++r) f(r);
  });
}

}  // namespace simd
}  // namespace musicviz
