// Small in-register transposes for packing GEMM operands (packed_gemm, blocked_gemm): GCC
// vector shuffles, compiled for the ISA of the variant that inlines them.
#pragma once

#include <cstdint>

#include "cpu/packed_gemm.h"

namespace fused_rnn::cpu::detail {

typedef int int8v __attribute__((vector_size(32)));

// dst[k * ldd + i] = rows[i][k0 + k] for an 8 x 8 block: eight rows of 8 floats in, their
// columns out. Three rounds of shuffles (unpack pairs, pairs of pairs, 128-bit halves).
inline __attribute__((always_inline)) void transpose_8x8(const float* const* rows, int64_t k0,
                                                         float* dst, int64_t ldd) {
  float8 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = *reinterpret_cast<const float8*>(rows[i] + k0);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], int8v{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], int8v{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], int8v{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], int8v{2, 3, 10, 11, 6, 7, 14, 15});
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], int8v{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], int8v{2, 3, 10, 11, 6, 7, 14, 15});
  }
  // u[k] (k < 4) holds column k of rows 0-3 then column k + 4 of rows 0-3; u[k + 4] rows 4-7.
  for (int k = 0; k < 4; ++k) {
    *reinterpret_cast<float8*>(dst + k * ldd) =
        __builtin_shuffle(u[k], u[k + 4], int8v{0, 1, 2, 3, 8, 9, 10, 11});
    *reinterpret_cast<float8*>(dst + (k + 4) * ldd) =
        __builtin_shuffle(u[k], u[k + 4], int8v{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// dst[k * 4 + r] = rows[r][k] for k < 8: four rows of 8 floats in, eight groups of 4 out.
inline __attribute__((always_inline)) void transpose_4x8(const float* src, int64_t rs,
                                                         float* dst) {
  const float8 r0 = *reinterpret_cast<const float8*>(src);
  const float8 r1 = *reinterpret_cast<const float8*>(src + rs);
  const float8 r2 = *reinterpret_cast<const float8*>(src + 2 * rs);
  const float8 r3 = *reinterpret_cast<const float8*>(src + 3 * rs);
  // pairs of rows interleaved, then pairs of pairs: u0 holds k = 0 and 4, u1 1 and 5, ...
  const float8 t0 = __builtin_shuffle(r0, r1, int8v{0, 8, 1, 9, 4, 12, 5, 13});
  const float8 t1 = __builtin_shuffle(r0, r1, int8v{2, 10, 3, 11, 6, 14, 7, 15});
  const float8 t2 = __builtin_shuffle(r2, r3, int8v{0, 8, 1, 9, 4, 12, 5, 13});
  const float8 t3 = __builtin_shuffle(r2, r3, int8v{2, 10, 3, 11, 6, 14, 7, 15});
  const float8 u0 = __builtin_shuffle(t0, t2, int8v{0, 1, 8, 9, 4, 5, 12, 13});
  const float8 u1 = __builtin_shuffle(t0, t2, int8v{2, 3, 10, 11, 6, 7, 14, 15});
  const float8 u2 = __builtin_shuffle(t1, t3, int8v{0, 1, 8, 9, 4, 5, 12, 13});
  const float8 u3 = __builtin_shuffle(t1, t3, int8v{2, 3, 10, 11, 6, 7, 14, 15});
  *reinterpret_cast<float8*>(dst) = __builtin_shuffle(u0, u1, int8v{0, 1, 2, 3, 8, 9, 10, 11});
  *reinterpret_cast<float8*>(dst + 8) = __builtin_shuffle(u2, u3, int8v{0, 1, 2, 3, 8, 9, 10, 11});
  *reinterpret_cast<float8*>(dst + 16) = __builtin_shuffle(u0, u1, int8v{4, 5, 6, 7, 12, 13, 14, 15});
  *reinterpret_cast<float8*>(dst + 24) = __builtin_shuffle(u2, u3, int8v{4, 5, 6, 7, 12, 13, 14, 15});
}

}  // namespace fused_rnn::cpu::detail
