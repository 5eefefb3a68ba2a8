#include "cpu/blocked_gemm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include <algorithm>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/packed_gemm.h"
#include "cpu/transpose.h"

namespace fused_rnn::cpu {
namespace {

using detail::float8;
using detail::transpose_4x8;
using detail::transpose_8x8;

// A tile of out: kMr rows x kNr columns, 12 accumulators of 8 floats, plus 3 for a row of the
// panel and 1 for the broadcast: the 16 AVX2 registers.
constexpr int64_t kMr = 4;
constexpr int64_t kNv = 3;
constexpr int64_t kNr = 8 * kNv;
// Rows of k per block: a panel's block (kKc x kNr floats, 24 KB) stays in a 32 KB L1.
constexpr int64_t kKc = 256;
// Rows of out per block of a: kMc x kKc floats (128 KB) in L2 while the panels pass.
constexpr int64_t kMc = 128;
// A block of b is all of K (or one block of k, see k_outer in gemm_rows_impl) by up to kNc
// columns, at most kMaxPackedB floats (4 MB, in L3): a block of out (kMc rows) then takes every
// block of k while it is in L2, and each panel's block of k is read from L3 once per block of a,
// then from L1.
constexpr int64_t kNc = 2048;
constexpr int64_t kMaxPackedB = int64_t(1) << 20;
// Slivers (kMr rows) per thread at least: below this, fewer threads.
constexpr int64_t kMinSliversPerThread = 8;

// Buffers of the packed blocks, one pair per thread, grown once and kept.
struct PackBuffers {
  std::vector<float> a, b;
};

PackBuffers& thread_buffers() {
  thread_local PackBuffers buffers;
  return buffers;
}

// Floats between the starts of two slivers in a packed block of a: kc * kMr plus a line, so
// that slivers do not start 4 KB apart (kc = 256), where their lines would share L1 sets.
inline int64_t sliver_stride(int64_t kc) { return kc * kMr + 16; }

typedef float float4_unaligned __attribute__((vector_size(16), aligned(4)));

// dst[0:4] = p[0:4], dst[4:8] = q[0:4], as one 8-float store. (Stored here rather than
// returned: a returned 8-float vector changes the ABI of the baseline clone.)
inline __attribute__((always_inline)) void store_pair_of_quads(float* dst, const float* p,
                                                               const float* q) {
  const float4_unaligned lo = *reinterpret_cast<const float4_unaligned*>(p);
  const float4_unaligned hi = *reinterpret_cast<const float4_unaligned*>(q);
  *reinterpret_cast<float8*>(dst) = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}

// ap[s][k][r] (slivers sliver_stride(kc) apart) = a[s * kMr + r, k] for the mc x kc block at
// `a`; rows past mc zero.
inline __attribute__((always_inline)) void pack_a_block(const float* a, int64_t rs, int64_t cs,
                                                        int64_t mc, int64_t kc, float* ap) {
  const int64_t stride = sliver_stride(kc), full = mc / kMr;
  if (cs == 1) {
    // rows of a contiguous (x, grad_gx): 4 x 8 blocks transposed
    const int64_t k8 = kc - kc % 8;
    for (int64_t s = 0; s < full; ++s) {
      const float* src = a + s * kMr * rs;
      float* dst = ap + s * stride;
      for (int64_t k = 0; k < k8; k += 8) transpose_4x8(src + k, rs, dst + k * kMr);
      for (int64_t k = k8; k < kc; ++k) {
        for (int64_t r = 0; r < kMr; ++r) dst[k * kMr + r] = src[r * rs + k];
      }
    }
  } else if (rs == 1) {
    // a transposed (grad_gx^T): row k of the block is contiguous. Four rows at a time, so that
    // each sliver gets 16 contiguous floats ([k..k+3][kMr]) in two 8-float stores rather than
    // four 4-float ones: the packing stalled on its stores (grad_w of 1024 x 256 over 3200 rows
    // of k, 2 threads: 9.2 -> 9.0 ms).
    static_assert(kMr == 4, "a sliver's row of k is one half of store_pair_of_quads");
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
      const float* r0 = a + k * cs;
      const float* r1 = r0 + cs;
      const float* r2 = r1 + cs;
      const float* r3 = r2 + cs;
      for (int64_t s = 0; s < full; ++s) {
        float* dst = ap + s * stride + k * kMr;
        store_pair_of_quads(dst, r0 + s * kMr, r1 + s * kMr);
        store_pair_of_quads(dst + 8, r2 + s * kMr, r3 + s * kMr);
      }
    }
    for (; k < kc; ++k) {
      const float* src = a + k * cs;
      for (int64_t s = 0; s < full; ++s) {
        std::copy_n(src + s * kMr, kMr, ap + s * stride + k * kMr);
      }
    }
  } else {
    for (int64_t s = 0; s < full; ++s) {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t r = 0; r < kMr; ++r) ap[s * stride + k * kMr + r] = a[(s * kMr + r) * rs + k * cs];
      }
    }
  }
  if (full * kMr < mc) {
    // the last, partial sliver
    const int64_t rows = mc - full * kMr;
    float* dst = ap + full * stride;
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t r = 0; r < kMr; ++r) {
        dst[k * kMr + r] = r < rows ? a[(full * kMr + r) * rs + k * cs] : 0.0f;
      }
    }
  }
}

// sums[r] += a[r, k] summed over the block's kc values of k, for its mc rows, read back from
// the packed block ap while it is in cache: the bias gradient of linear_backward (the row
// sums of grad_gx^T) without a separate pass over grad_gx. Two levels, as the tiles' sums: a
// block's sum first, then the running total.
inline __attribute__((always_inline)) void add_row_sums(const float* ap, int64_t mc, int64_t kc,
                                                        float* sums) {
  const int64_t stride = sliver_stride(kc);
  for (int64_t s = 0; s * kMr < mc; ++s) {
    const float* sliver = ap + s * stride;  // [kc][kMr]
    // lanes 0-3: rows at even k, 4-7: the same rows at odd k
    float8 pair = {};
    int64_t k = 0;
    for (; k + 2 <= kc; k += 2) pair += *reinterpret_cast<const float8*>(sliver + k * kMr);
    for (int64_t r = 0; r < kMr && s * kMr + r < mc; ++r) {
      float block = pair[r] + pair[kMr + r];
      if (k < kc) block += sliver[k * kMr + r];
      sums[s * kMr + r] += block;
    }
  }
}

// bp[p][k][j] = b[k, p * kNr + j] for the kc x nc block at `b`, columns past nc zero.
inline __attribute__((always_inline)) void pack_b_block(const float* b, int64_t rs, int64_t cs,
                                                        int64_t kc, int64_t nc, float* bp) {
  for (int64_t p = 0; p * kNr < nc; ++p) {
    const int64_t cols = std::min(kNr, nc - p * kNr);
    float* dst = bp + p * kc * kNr;
    const float* src = b + p * kNr * cs;
    if (cols == kNr && cs == 1) {
      for (int64_t k = 0; k < kc; ++k) std::copy_n(src + k * rs, kNr, dst + k * kNr);
      continue;
    }
    int64_t j0 = 0;
    if (rs == 1) {
      // b transposed (w_ih^T): each column is contiguous in k; 8 x 8 blocks transposed
      const int64_t k8 = kc - kc % 8;
      for (; j0 + 8 <= cols; j0 += 8) {
        const float* columns[8];
        for (int j = 0; j < 8; ++j) columns[j] = src + (j0 + j) * cs;
        for (int64_t k = 0; k < k8; k += 8) transpose_8x8(columns, k, dst + k * kNr + j0, kNr);
        for (int64_t k = k8; k < kc; ++k) {
          for (int64_t j = j0; j < j0 + 8; ++j) dst[k * kNr + j] = src[k + j * cs];
        }
      }
    }
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t j = j0; j < kNr; ++j) dst[k * kNr + j] = j < cols ? src[k * rs + j * cs] : 0.0f;
    }
  }
}

// out[0:rows, 0:cols] = (add ? out : 0) + ap @ bp over kc (+ bias), for S slivers (S * kMr
// rows, sliver i at ap + i * a_stride) and the first 8 * NV >= cols columns of one panel (fewer
// for the last panel: no work on its padding). S = 2 is for a last panel of at most 8 columns:
// one sliver would give it 4 accumulators, too few to hide the FMA latency.
template <int NV, int S = 1>
inline __attribute__((always_inline)) void tile_kernel(int64_t kc, const float* __restrict__ ap,
                                                       int64_t a_stride,
                                                       const float* __restrict__ bp,
                                                       float* __restrict__ out, int64_t ldo,
                                                       int64_t rows, int64_t cols, bool add,
                                                       const float* __restrict__ bias) {
  constexpr int kRows = S * kMr;
  float8 acc[kRows][NV] = {};
  for (int64_t k = 0; k < kc; ++k) {
    float8 w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = *reinterpret_cast<const float8*>(bp + k * kNr + 8 * v);
#pragma GCC unroll 8
    for (int m = 0; m < kRows; ++m) {
      // one vbroadcastss from memory (see packed_gemm_block)
      const float x = ap[(m / kMr) * a_stride + k * kMr + m % kMr];
      const float8 am = {x, x, x, x, x, x, x, x};
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] += am * w[v];
    }
  }
  if (rows == kRows && cols == 8 * NV) {
#pragma GCC unroll 8
    for (int m = 0; m < kRows; ++m) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float8* o = reinterpret_cast<float8*>(out + m * ldo + 8 * v);
        float8 value = acc[m][v];
        if (add) value += *o;
        if (bias) value += *reinterpret_cast<const float8*>(bias + 8 * v);
        *o = value;
      }
    }
    return;
  }
  // An edge tile: through memory, only its valid part.
  float tile[kRows][8 * NV];
  for (int m = 0; m < kRows; ++m) {
    for (int v = 0; v < NV; ++v) *reinterpret_cast<float8*>(&tile[m][8 * v]) = acc[m][v];
  }
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t n = 0; n < cols; ++n) {
      const float base = (add ? out[m * ldo + n] : 0.0f) + (bias ? bias[n] : 0.0f);
      out[m * ldo + n] = base + tile[m][n];
    }
  }
}

// Rows [m_begin, m_end) of out, all columns.
inline __attribute__((always_inline)) void gemm_rows_impl(
    int64_t m_begin, int64_t m_end, int64_t N, int64_t K, const float* a, int64_t a_rs,
    int64_t a_cs, const float* b, int64_t b_rs, int64_t b_cs, float* out, int64_t ldo,
    bool accumulate, const float* bias, float* a_row_sums) {
  PackBuffers& buffers = thread_buffers();
  if (a_row_sums) std::fill(a_row_sums + m_begin, a_row_sums + m_end, 0.0f);
  // The order of the blocks (see the loops below): by blocks of k for a transposed a, and for a
  // K so large that kNr columns of all of it would not fit in kMaxPackedB floats.
  const bool k_outer = (a_rs == 1 && a_cs != 1) || K > kMaxPackedB / kNr;
  // Rows of b packed at a time: one block of k, or all of K (so that a block of out stays in
  // L2 for all of K); columns per block of b within kMaxPackedB floats.
  const int64_t k_rows = k_outer ? std::min(kKc, K) : K;
  const int64_t nc_max = std::clamp(kMaxPackedB / k_rows / kNr * kNr, kNr, kNc);
  const int64_t n_padded = (std::min(nc_max, N) + kNr - 1) / kNr * kNr;
  const int64_t m_padded = (std::min(kMc, m_end - m_begin) + kMr - 1) / kMr * kMr;
  if (static_cast<int64_t>(buffers.b.size()) < k_rows * n_padded) buffers.b.resize(k_rows * n_padded);
  const int64_t a_size = m_padded / kMr * sliver_stride(std::min(kKc, K));
  if (static_cast<int64_t>(buffers.a.size()) < a_size) buffers.a.resize(a_size);
  float* bp = buffers.b.data();  // block pc of k at bp (+ pc * n_padded), [panels][kc][kNr]
  float* ap = buffers.a.data();

  for (int64_t jc = 0; jc < N; jc += nc_max) {
    const int64_t nc = std::min(nc_max, N - jc);
    // Block pc of k of b into `dst`.
    auto pack_b = [&](int64_t pc, float* dst) __attribute__((always_inline)) {
      pack_b_block(b + pc * b_rs + jc * b_cs, b_rs, b_cs, std::min(kKc, K - pc), nc, dst);
    };
    // Block (ic, pc) of out's rows and of k: pack its part of a, run its tiles. always_inline:
    // a lambda is otherwise compiled for the baseline ISA, not the variant's.
    // b_block: block pc of k of b, packed.
    auto block = [&](int64_t ic, int64_t pc, const float* b_block) __attribute__((always_inline)) {
      const int64_t mc = std::min(kMc, m_end - ic), kc = std::min(kKc, K - pc);
      // the first block of k writes out (or adds to it when accumulating), the others add
      const bool add = accumulate || pc > 0;
      pack_a_block(a + ic * a_rs + pc * a_cs, a_rs, a_cs, mc, kc, ap);
      // a is packed once per block of columns of b: its rows are summed with the first
      if (a_row_sums && jc == 0) add_row_sums(ap, mc, kc, a_row_sums + ic);
      const int64_t a_stride = sliver_stride(kc);
      for (int64_t p = 0; p * kNr < nc; ++p) {
        const int64_t n0 = jc + p * kNr, cols = std::min(kNr, nc - p * kNr);
        const float* panel = b_block + p * kc * kNr;
        // the bias joins with the first block of k
        const float* tile_bias = bias && pc == 0 ? bias + n0 : nullptr;
        for (int64_t s = 0; s * kMr < mc;) {
          const float* sliver = ap + s * a_stride;
          float* tile = out + (ic + s * kMr) * ldo + n0;
          if (cols <= 8 && (s + 1) * kMr < mc) {
            // a narrow last panel (N mod 24 = 8: N = 128, 512) takes two slivers at a time
            const int64_t rows = std::min(2 * kMr, mc - s * kMr);
            tile_kernel<1, 2>(kc, sliver, a_stride, panel, tile, ldo, rows, cols, add, tile_bias);
            s += 2;
            continue;
          }
          const int64_t rows = std::min(kMr, mc - s * kMr);
          if (cols > 16) {
            tile_kernel<3>(kc, sliver, a_stride, panel, tile, ldo, rows, cols, add, tile_bias);
          } else if (cols > 8) {
            tile_kernel<2>(kc, sliver, a_stride, panel, tile, ldo, rows, cols, add, tile_bias);
          } else {
            tile_kernel<1>(kc, sliver, a_stride, panel, tile, ldo, rows, cols, add, tile_bias);
          }
          ++s;
        }
      }
    };
    // Blocks in a's memory order: a row block's blocks of k in turn (its block of out stays in
    // L2 over all of K), but a transposed a (grad_gx^T, rows of k contiguous) by blocks of k,
    // so that the row blocks read neighbouring parts of the same rows of memory (the other
    // order was 15% slower for grad_w at K = 3200); b's block of k is then packed just before
    // its use, into the same memory each time (packing all of K first made grad_w 20% slower).
    if (k_outer) {
      for (int64_t pc = 0; pc < K; pc += kKc) {
        pack_b(pc, bp);
        for (int64_t ic = m_begin; ic < m_end; ic += kMc) block(ic, pc, bp);
      }
    } else {
      for (int64_t pc = 0; pc < K; pc += kKc) pack_b(pc, bp + pc * n_padded);
      for (int64_t ic = m_begin; ic < m_end; ic += kMc) {
        for (int64_t pc = 0; pc < K; pc += kKc) block(ic, pc, bp + pc * n_padded);
      }
    }
  }
}

FUSED_RNN_CPU_ISA_VARIANTS(gemm_rows,
                           (int64_t m_begin, int64_t m_end, int64_t N, int64_t K, const float* a,
                            int64_t a_rs, int64_t a_cs, const float* b, int64_t b_rs,
                            int64_t b_cs, float* out, int64_t ldo, bool accumulate,
                            const float* bias, float* a_row_sums),
                           (m_begin, m_end, N, K, a, a_rs, a_cs, b, b_rs, b_cs, out, ldo,
                            accumulate, bias, a_row_sums),
                           gemm_rows_impl(m_begin, m_end, N, K, a, a_rs, a_cs, b, b_rs, b_cs, out,
                                          ldo, accumulate, bias, a_row_sums))

}  // namespace

void blocked_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
                  const float* b, int64_t b_rs, int64_t b_cs, float* out, int64_t ldo,
                  bool accumulate, const float* bias, float* a_row_sums) {
  if (M == 0) return;
  if (a_row_sums && (N == 0 || K == 0)) {
    // no block of a is packed: sum its rows here
    for (int64_t m = 0; m < M; ++m) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += a[m * a_rs + k * a_cs];
      a_row_sums[m] = sum;
    }
  }
  if (N == 0) return;
  if (K == 0) {
    // a product over nothing: out keeps its values (+ bias) or becomes bias (or zero)
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        out[m * ldo + n] = (accumulate ? out[m * ldo + n] : 0.0f) + (bias ? bias[n] : 0.0f);
      }
    }
    return;
  }
  const int64_t slivers = (M + kMr - 1) / kMr, panels = (N + kNr - 1) / kNr;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads > 1 && slivers < threads * (kMc / kMr) && panels >= 2 * threads) {
    // Fewer than a block of rows per thread (the projection at T * B = 100): split the
    // columns, so that each thread packs only its part of b instead of all of it.
    at::parallel_for(0, panels, 2, [&](int64_t p_begin, int64_t p_end) {
      const int64_t n0 = p_begin * kNr, n1 = std::min(N, p_end * kNr);
      gemm_rows(0, M, n1 - n0, K, a, a_rs, a_cs, b + n0 * b_cs, b_rs, b_cs, out + n0, ldo,
                accumulate, bias ? bias + n0 : nullptr, p_begin == 0 ? a_row_sums : nullptr);
    });
    return;
  }
  // Threads take whole slivers, so that tiles never straddle two threads.
  at::parallel_for(0, slivers, kMinSliversPerThread, [&](int64_t s_begin, int64_t s_end) {
    gemm_rows(s_begin * kMr, std::min(M, s_end * kMr), N, K, a, a_rs, a_cs, b, b_rs, b_cs, out,
              ldo, accumulate, bias, a_row_sums);
  });
}

bool use_blocked_gemm(at::ScalarType dtype, int64_t M, int64_t N, int64_t K, bool a_transposed) {
  // The tile kernel's 8-wide vectors need AVX2 (see StepOperand in cpu_common.h). Measured
  // against MKL on 2 Zen 4 cores (medians of 101-201 interleaved calls): with the columns split
  // across threads below 256 rows, 1.1-1.25x faster from 8 rows (the projection of T * B = 100
  // at I = 256, 4H = 1024: 0.39 -> 0.32 ms; 50 x 256 -> 1024 0.20 -> 0.16), slower for one
  // row (a matrix-vector product: 0.055 vs 0.074 ms); with a transposed a (the weight
  // gradients) this is 3-18% slower up to M = 768 and level at 1024.
  return dtype == at::kFloat && cpu_isa() != CpuIsa::kBaseline && M >= (a_transposed ? 1024 : 8) &&
         N >= 64 && K >= 64;
}

void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate,
                 const c10::optional<at::Tensor>& bias, at::Tensor* a_row_sums) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  TORCH_CHECK(b.size(0) == K && out.size(0) == M && out.size(1) == N && out.stride(1) == 1,
              "matmul_into: mismatched sizes");
  TORCH_CHECK(!a_row_sums || (a_row_sums->dim() == 1 && a_row_sums->size(0) == M &&
                              a_row_sums->is_contiguous()),
              "matmul_into: a_row_sums must be a contiguous [M] tensor");
  const bool has_bias = bias.has_value() && bias->defined();
  const bool a_transposed = a.stride(0) == 1 && a.stride(1) != 1;
  if (use_blocked_gemm(a.scalar_type(), M, N, K, a_transposed)) {
    const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
    blocked_gemm(M, N, K, a.data_ptr<float>(), a.stride(0), a.stride(1), b.data_ptr<float>(),
                 b.stride(0), b.stride(1), out.data_ptr<float>(), out.stride(0), accumulate,
                 has_bias ? bias_c.data_ptr<float>() : nullptr,
                 a_row_sums ? a_row_sums->data_ptr<float>() : nullptr);
    return;
  }
  if (a_row_sums) at::sum_out(*a_row_sums, a, {1});
  if (accumulate) {
    at::cpu::addmm_out(out, out, a, b);
    if (has_bias) out.add_(*bias);
  } else if (has_bias) {
    at::cpu::addmm_out(out, *bias, a, b);
  } else {
    at::cpu::mm_out(out, a, b);
  }
}

}  // namespace fused_rnn::cpu
