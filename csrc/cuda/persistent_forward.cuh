// Persistent forward kernel: the whole sequence of one layer and direction in one launch.
//
// Block j owns hidden units [u0, u0 + units) (u0 = j * U) and keeps the G gate rows of those
// units of w_hh in shared memory for all T steps (row g*U + u = w_hh[g*H + u0 + u, :]). Its cell
// states never leave the block. Per step s (time t):
//
//   for each batch tile [b0, b0 + batch_tile):
//     for each K chunk:  stage h_{t-1}[tile rows, chunk] -> A       (L2 loads)
//                        acc += A @ W_slice[:, chunk]^T            (tensor cores / FFMA)
//     pointwise over (row, owned unit): gates = gx_t + acc (+ b_hh), cells.h maths,
//                        writes h_t (exchange buffer), y_t, workspace, cell state
//   grid barrier (h_t complete for every unit before anyone stages it)
//
// h_t goes to exchange buffer s % 2 and h_{t-1} is read from the other one (h0 at s = 0), so
// one barrier per step suffices: a block that runs ahead writes the buffer of step s+1, which
// nobody reads before the next barrier. The last step also writes h_n and c_n.
#pragma once

#include "cuda/cell_steps.cuh"
#include "cuda/persistent_runtime.cuh"

namespace fused_rnn::cuda {

// kCell: kLSTM, kGRU, or kRNNTanh standing for both Elman cells (args.relu picks).
template <CellKind kCell, Engine E>
struct PersistentForwardBlock {
  using S = typename EngineStorage<E>::type;
  static constexpr Engine kEngine = E;
  static constexpr int G = gates_of(kCell);

  PersistentForwardArgs args;
  PersistentPlan plan;
  int64_t u0;  // first owned hidden unit
  int units;   // owned units (the last block may own fewer than U)
  S* sW;       // [rows_pad][ld_w]
  S* sA;       // [batch_tile][ld_a]
  float* sAcc; // [k_splits][batch_tile][ld_acc]

  FUSED_RNN_HOST_DEVICE PersistentForwardBlock(const PersistentForwardArgs& a,
                                               const PersistentPlan& p, int block,
                                               unsigned char* smem)
      : args(a),
        plan(p),
        u0(static_cast<int64_t>(block) * p.units_per_block),
        units(static_cast<int>(min64(p.units_per_block, a.H - u0))),
        sW(reinterpret_cast<S*>(smem)),
        sA(reinterpret_cast<S*>(smem + p.off_a)),
        sAcc(reinterpret_cast<float*>(smem + p.off_acc)) {}

  // sW[g*U + u][k] = w_hh[g*H + u0 + u][k]; zero past the owned units, the gates and K.
  FUSED_RNN_HOST_DEVICE void load_weights(int tid, int nthreads) {
    const S* w = static_cast<const S*>(args.w_hh);
    const int64_t H = args.H, K = plan.k_valid;
    const int U = plan.units_per_block;
    const int64_t count = static_cast<int64_t>(plan.rows_pad) * plan.ld_w;
    for (int64_t i = tid; i < count; i += nthreads) {
      const int n = static_cast<int>(i / plan.ld_w);
      const int64_t k = i - static_cast<int64_t>(n) * plan.ld_w;
      const int g = n / U, u = n - g * U;
      S v = zero_of<S>();
      if (g < G && u < units && k < K) v = w[(g * H + u0 + u) * K + k];
      sW[i] = v;
    }
  }

  // Gates of owned unit u for tile row r: the recurrent products summed over the K splits.
  FUSED_RNN_HOST_DEVICE void recurrent_products(int r, int u, float (&pre)[G]) const {
    const int64_t split_stride = static_cast<int64_t>(plan.batch_tile) * plan.ld_acc;
    for (int g = 0; g < G; ++g) {
      const float* p = sAcc + static_cast<int64_t>(r) * plan.ld_acc + g * plan.units_per_block + u;
      float sum = 0.0f;
      for (int split = 0; split < plan.k_splits; ++split) sum += p[split * split_stride];
      pre[g] = sum;
    }
  }

  // Prefetches gx of this thread's elements of step t (every batch tile) into L1. Issued before
  // the step's staging and product, it overlaps their latency with the gx loads of the
  // pointwise pass; the thread-to-element mapping is the pointwise pass's.
  FUSED_RNN_HOST_DEVICE void prefetch_step(int64_t t, int tid, int nthreads) const {
    const int64_t B = args.B, H = args.H;
    const S* gx = static_cast<const S*>(args.gx);
    for (int64_t b0 = 0; b0 < B; b0 += plan.batch_tile) {
      const int rows = static_cast<int>(min64(plan.batch_tile, B - b0));
      for (int e = tid; e < rows * units; e += nthreads) {
        const int r = e / units;
        const S* gx_row = gx + (t * B + b0 + r) * G * H + u0 + (e - r * units);
        for (int g = 0; g < G; ++g) prefetch_l1(gx_row + g * H);
      }
    }
  }

  // One (row, unit) element of step s (time t) for the tile starting at b0.
  FUSED_RNN_HOST_DEVICE void element(int64_t s, int64_t t, int64_t b0, int r, int u,
                                     const S* h_prev, S* h_next) {
    const int64_t T = args.T, B = args.B, H = args.H;
    const int64_t b = b0 + r, j = u0 + u;
    const int64_t state = b * H + j;  // [B, H] index
    const int64_t row = t * B + b;    // (t, b) row of [T, B, ...]
    const bool last = s + 1 == T;
    const bool valid = step_is_valid(t, length_of(args.lengths, b, T));
    float pre[G];
    recurrent_products(r, u, pre);
    const S* gx_row = static_cast<const S*>(args.gx) + row * G * H;
    S* y = static_cast<S*>(args.y) + row * H;
    S* h_n = static_cast<S*>(args.h_n);

    float h = 0.0f;  // the new h on a real step
    if constexpr (kCell == CellKind::kLSTM) {
      S* gates_row = args.gates ? static_cast<S*>(args.gates) + row * 4 * H : nullptr;
      S* cs_row = args.cs ? static_cast<S*>(args.cs) + row * H : nullptr;
      float c = args.c_state[state];
      if (valid) {
        h = lstm_forward_step(gx_row, pre, H, j, c, gates_row, cs_row);
        args.c_state[state] = c;
      } else {
        lstm_forward_padded(H, j, c, gates_row, cs_row);
      }
      if (last) static_cast<S*>(args.c_n)[state] = from_acc<S>(c);
    } else if constexpr (kCell == CellKind::kGRU) {
      S* gates_row = args.gates ? static_cast<S*>(args.gates) + row * 4 * H : nullptr;
      if (valid) {
        const S* bias = static_cast<const S*>(args.b_hh);
        float gh[3];
        for (int g = 0; g < 3; ++g) gh[g] = pre[g] + (bias ? to_acc(bias[g * H + j]) : 0.0f);
        h = gru_forward_step(gx_row, gh, load_shared_state(h_prev + state), H, j, gates_row);
      } else {
        gru_forward_padded(H, j, gates_row);
      }
    } else {
      if (valid) h = rnn_forward_step(to_acc(gx_row[j]) + pre[0], args.relu);
    }

    if (valid) {
      const S h_s = from_acc<S>(h);
      y[j] = h_s;
      h_next[state] = h_s;
      if (last) h_n[state] = h_s;
    } else {
      // A finished sequence keeps its state and emits zeros.
      y[j] = zero_of<S>();
      copy_shared_state(h_next + state, h_prev + state);
      if (last) copy_shared_state(h_n + state, h_prev + state);
    }
  }

  template <class Runtime>
  FUSED_RNN_HOST_DEVICE void run(Runtime& rt) {
    const int tid = rt.tid(), nthreads = rt.nthreads();
    const int64_t T = args.T, B = args.B, H = args.H;
    const int64_t acc_count = static_cast<int64_t>(plan.k_splits) * plan.batch_tile * plan.ld_acc;
    S* exchange = static_cast<S*>(args.h_exchange);

    load_weights(tid, nthreads);
    rt.sync_block();
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_at(s, T, args.reverse);
      const S* h_prev = s == 0 ? static_cast<const S*>(args.h0) : exchange + ((s + 1) & 1) * B * H;
      S* h_next = exchange + (s & 1) * B * H;
      prefetch_step(t, tid, nthreads);
      for (int64_t b0 = 0; b0 < B; b0 += plan.batch_tile) {
        const int rows = static_cast<int>(min64(plan.batch_tile, B - b0));
        for (int k0 = 0; k0 < plan.k_pad; k0 += plan.k_chunk) {
          const int kc = min32(plan.k_chunk, plan.k_pad - k0);
          stage_rows(sA, plan.ld_a, h_prev + b0 * H, H, rows, plan.batch_tile, k0, kc,
                     plan.k_valid, tid, nthreads);
          if (k0 == 0) zero_acc(sAcc, acc_count, tid, nthreads);
          rt.sync_block();
          rt.product(sA, sW, sAcc, k0, kc, plan);
          rt.sync_block();
        }
        for (int e = tid; e < rows * units; e += nthreads) {
          const int r = e / units;
          element(s, t, b0, r, e - r * units, h_prev, h_next);
        }
        rt.sync_block();  // A and acc are overwritten by the next tile
      }
      if (s + 1 < T) rt.sync_grid();
    }
  }
};

#if defined(__CUDACC__)
template <CellKind kCell, Engine E>
__global__ void __launch_bounds__(kBlockThreads, 1)
    persistent_forward_kernel(const PersistentForwardArgs args, const PersistentPlan plan) {
  extern __shared__ __align__(128) unsigned char smem[];
  PersistentForwardBlock<kCell, E> block(args, plan, static_cast<int>(blockIdx.x), smem);
  DeviceRuntime<E> rt{DeviceGridBarrier{args.barrier}};
  block.run(rt);
}
#endif

}  // namespace fused_rnn::cuda
