// Persistent backward kernel: the whole backward recurrence of one layer and direction in one
// launch, steps in the reverse of the forward order.
//
// Block j owns hidden units [u0, u0 + units) and keeps the matching COLUMNS of w_hh in shared
// memory (row u = w_hh[:, u0 + u], the W_hh^T slice), so that it computes those columns of
//   dh_{t-1} = dG_t @ W_hh        (dG_t [B, G*H]: the gate gradients of step t, all units)
// — exactly the dh its own pointwise pass needs next. Per iteration i (step t):
//
//   for each batch tile:
//     (i > 0) for each K chunk: stage dG_{t_next}[tile rows, chunk] -> A; acc += A @ W^T-slice
//     pointwise over (row, owned unit): dh = carry + acc (+ dy_t); cells.h backward;
//                 writes dG_t (grad_gx, and grad_gh for the GRU), updates carry and dc
//   grid barrier (dG_t complete for every unit before anyone stages it)
// and after the last step one more product: grad_h0 = carry + dG_{first} @ W-slice.
//
// `carry` is the part of the gradient reaching h that does not come through W_hh: grad_h_n at
// the start; on a real step it becomes 0 (LSTM, RNN) or dh * z (GRU); on a padded step the
// whole dh passes through (the product of a padded step is left out: after_product). This is
// the CPU backend's "dh is zeroed on real steps and the GEMM accumulates" in a fused form.
// dW_hh and db_hh are GEMMs over all steps after the kernel (weight_grad.cpp).
#pragma once

#include "cuda/cell_steps.cuh"
#include "cuda/persistent_runtime.cuh"

namespace fused_rnn::cuda {

template <CellKind kCell, Engine E>
struct PersistentBackwardBlock {
  using S = typename EngineStorage<E>::type;
  static constexpr Engine kEngine = E;
  static constexpr int G = gates_of(kCell);

  PersistentBackwardArgs args;
  PersistentPlan plan;
  int64_t u0;
  int units;
  S* sW;        // [rows_pad][ld_w]: row u = w_hh[:, u0 + u]
  S* sA;        // [batch_tile][ld_a]
  float* sAcc;  // [k_splits][batch_tile][ld_acc]

  FUSED_RNN_HOST_DEVICE PersistentBackwardBlock(const PersistentBackwardArgs& a,
                                                const PersistentPlan& p, int block,
                                                unsigned char* smem)
      : args(a),
        plan(p),
        u0(static_cast<int64_t>(block) * p.units_per_block),
        units(static_cast<int>(min64(p.units_per_block, a.H - u0))),
        sW(reinterpret_cast<S*>(smem)),
        sA(reinterpret_cast<S*>(smem + p.off_a)),
        sAcc(reinterpret_cast<float*>(smem + p.off_acc)) {}

  // The product input of every step: dG rows of G*H gate gradients.
  FUSED_RNN_HOST_DEVICE const S* gate_grads() const {
    return static_cast<const S*>(kCell == CellKind::kGRU ? args.grad_gh : args.grad_gx);
  }

  // sW[u][k] = w_hh[k][u0 + u]; zero past the owned units and K = G*H. Consecutive threads take
  // consecutive units, so the global reads are contiguous (this runs once per launch).
  FUSED_RNN_HOST_DEVICE void load_weights(int tid, int nthreads) {
    const S* w = static_cast<const S*>(args.w_hh);
    const int64_t H = args.H, K = plan.k_valid;
    const int64_t count = static_cast<int64_t>(plan.rows_pad) * plan.ld_w;
    for (int64_t i = tid; i < count; i += nthreads) {
      const int64_t k = i / plan.rows_pad;
      const int u = static_cast<int>(i - k * plan.rows_pad);
      S v = zero_of<S>();
      if (u < units && k < K) v = w[k * H + u0 + u];
      sW[static_cast<int64_t>(u) * plan.ld_w + k] = v;
    }
  }

  // The recurrent gradient of owned unit u for tile row r (sum of the K-split partials).
  FUSED_RNN_HOST_DEVICE float recurrent_grad(int r, int u) const {
    const int64_t split_stride = static_cast<int64_t>(plan.batch_tile) * plan.ld_acc;
    const float* p = sAcc + static_cast<int64_t>(r) * plan.ld_acc + u;
    float sum = 0.0f;
    for (int split = 0; split < plan.k_splits; ++split) sum += p[split * split_stride];
    return sum;
  }

  // acc = dG_src[tile rows] @ W-slice^T, over all K chunks.
  template <class Runtime>
  FUSED_RNN_HOST_DEVICE void product_tile(Runtime& rt, const S* dG_src, int64_t b0, int rows) {
    const int tid = rt.tid(), nthreads = rt.nthreads();
    const int64_t GH = plan.k_valid;
    const int64_t acc_count = static_cast<int64_t>(plan.k_splits) * plan.batch_tile * plan.ld_acc;
    for (int k0 = 0; k0 < plan.k_pad; k0 += plan.k_chunk) {
      const int kc = min32(plan.k_chunk, plan.k_pad - k0);
      stage_rows(sA, plan.ld_a, dG_src + b0 * GH, GH, rows, plan.batch_tile, k0, kc, GH, tid,
                 nthreads);
      if (k0 == 0) zero_acc(sAcc, acc_count, tid, nthreads);
      rt.sync_block();
      rt.product(sA, sW, sAcc, k0, kc, plan);
      rt.sync_block();
    }
  }

  // Prefetches the read-only inputs of this thread's elements of step t (every batch tile) into
  // L1, before the step's staging and product (see PersistentForwardBlock::prefetch_step).
  FUSED_RNN_HOST_DEVICE void prefetch_step(int64_t t, int tid, int nthreads) const {
    const int64_t T = args.T, B = args.B, H = args.H;
    const int64_t tp = prev_time(t, args.reverse);
    const bool has_prev = tp >= 0 && tp < T;
    const S* gates = static_cast<const S*>(args.gates);
    const S* cs = static_cast<const S*>(args.cs);
    const S* y = static_cast<const S*>(args.y);
    const S* dy = static_cast<const S*>(args.grad_y);
    for (int64_t b0 = 0; b0 < B; b0 += plan.batch_tile) {
      const int rows = static_cast<int>(min64(plan.batch_tile, B - b0));
      for (int e = tid; e < rows * units; e += nthreads) {
        const int r = e / units;
        const int64_t b = b0 + r, j = u0 + (e - r * units);
        const int64_t row = t * B + b, prev_row = tp * B + b;
        if (dy) prefetch_l1(dy + row * H + j);
        if constexpr (kCell == CellKind::kLSTM || kCell == CellKind::kGRU) {
          for (int g = 0; g < 4; ++g) prefetch_l1(gates + row * 4 * H + g * H + j);
        }
        if constexpr (kCell == CellKind::kLSTM) {
          prefetch_l1(cs + row * H + j);
          if (has_prev) prefetch_l1(cs + prev_row * H + j);
        } else if constexpr (kCell == CellKind::kGRU) {
          if (has_prev) prefetch_l1(y + prev_row * H + j);
        } else {
          prefetch_l1(y + row * H + j);
        }
      }
    }
  }

  // One (row, unit) element of iteration i (time t). t_after: the step of the iteration before
  // (t + 1 in the forward's order), whose dG_{t_after} @ W acc holds, or -1 at i = 0.
  FUSED_RNN_HOST_DEVICE void element(int64_t t, int64_t t_after, int64_t b0, int r, int u) {
    const int64_t T = args.T, B = args.B, H = args.H;
    const int64_t b = b0 + r, j = u0 + u;
    const int64_t state = b * H + j;
    const int64_t row = t * B + b;
    const int64_t length = length_of(args.lengths, b, T);
    const float dh_before = args.dh_carry[state] + after_product(t_after, length, r, u);
    S* dgx_row = static_cast<S*>(args.grad_gx) + row * G * H;
    S* dgh_row = kCell == CellKind::kGRU ? static_cast<S*>(args.grad_gh) + row * 3 * H : nullptr;

    if (!step_is_valid(t, length)) {
      // Padded step: no gate gradients; the gradients of h (and c) pass through unchanged.
      zero_gates(dgx_row, G, H, j);
      if constexpr (kCell == CellKind::kGRU) zero_gates(dgh_row, 3, H, j);
      args.dh_carry[state] = dh_before;
      return;
    }
    const S* dy = static_cast<const S*>(args.grad_y);
    const float dh = dh_before + (dy ? to_acc(dy[row * H + j]) : 0.0f);
    const bool first = step_is_first(t, length, args.reverse);
    const int64_t prev_row = prev_time(t, args.reverse) * B + b;  // valid unless `first`

    if constexpr (kCell == CellKind::kLSTM) {
      const S* cs = static_cast<const S*>(args.cs);
      const S* gates_row = static_cast<const S*>(args.gates) + row * 4 * H;
      const float c = to_acc(cs[row * H + j]);
      const float c_prev =
          first ? to_acc(static_cast<const S*>(args.c0)[state]) : to_acc(cs[prev_row * H + j]);
      float dc = args.dc_state[state];
      lstm_backward_step(gates_row, c, c_prev, dh, dc, H, j, dgx_row);
      args.dc_state[state] = dc;
      args.dh_carry[state] = 0.0f;
    } else if constexpr (kCell == CellKind::kGRU) {
      const S* gates_row = static_cast<const S*>(args.gates) + row * 4 * H;
      const float h_prev = first ? to_acc(static_cast<const S*>(args.h0)[state])
                                 : to_acc(static_cast<const S*>(args.y)[prev_row * H + j]);
      args.dh_carry[state] = gru_backward_step(gates_row, h_prev, dh, H, j, dgx_row, dgh_row);
    } else {
      const float h = to_acc(static_cast<const S*>(args.y)[row * H + j]);
      dgx_row[j] = from_acc<S>(rnn_backward_step(h, dh, args.relu));
      args.dh_carry[state] = 0.0f;
    }
  }

  // The part of dG_{t_after} @ W acc holds for element (r, u), if step t_after is real: a padded
  // step's gradient row is zero, but zero times a NaN or inf of W would be NaN, where
  // torch.nn's packed sequences have no such row.
  FUSED_RNN_HOST_DEVICE float after_product(int64_t t_after, int64_t length, int r, int u) const {
    return t_after >= 0 && step_is_valid(t_after, length) ? recurrent_grad(r, u) : 0.0f;
  }

  template <class Runtime>
  FUSED_RNN_HOST_DEVICE void run(Runtime& rt) {
    const int tid = rt.tid(), nthreads = rt.nthreads();
    const int64_t T = args.T, B = args.B, H = args.H, GH = G * H;
    const S* dG = gate_grads();

    load_weights(tid, nthreads);
    rt.sync_block();
    for (int64_t i = 0; i < T; ++i) {
      const int64_t s = T - 1 - i;
      const int64_t t = time_at(s, T, args.reverse);
      // The step processed in the previous iteration: t + 1 in the forward order.
      const int64_t t_after = i > 0 ? time_at(s + 1, T, args.reverse) : -1;
      const S* dG_next = i > 0 ? dG + t_after * B * GH : nullptr;
      prefetch_step(t, tid, nthreads);
      for (int64_t b0 = 0; b0 < B; b0 += plan.batch_tile) {
        const int rows = static_cast<int>(min64(plan.batch_tile, B - b0));
        if (i > 0) product_tile(rt, dG_next, b0, rows);
        for (int e = tid; e < rows * units; e += nthreads) {
          const int r = e / units;
          element(t, t_after, b0, r, e - r * units);
        }
        rt.sync_block();
      }
      rt.sync_grid();  // dG_t of every unit is staged by every block next
    }

    // grad_h0 = carry + dG_{first step} @ W-slice; grad_c0 = dc.
    const int64_t t_first = time_at(0, T, args.reverse);
    const S* dG_first = dG + t_first * B * GH;
    S* grad_h0 = static_cast<S*>(args.grad_h0);
    for (int64_t b0 = 0; b0 < B; b0 += plan.batch_tile) {
      const int rows = static_cast<int>(min64(plan.batch_tile, B - b0));
      product_tile(rt, dG_first, b0, rows);
      for (int e = tid; e < rows * units; e += nthreads) {
        const int r = e / units, u = e - r * units;
        const int64_t state = (b0 + r) * H + u0 + u;
        const int64_t length = length_of(args.lengths, b0 + r, T);
        grad_h0[state] = from_acc<S>(args.dh_carry[state] + after_product(t_first, length, r, u));
        if constexpr (kCell == CellKind::kLSTM) {
          static_cast<S*>(args.grad_c0)[state] = from_acc<S>(args.dc_state[state]);
        }
      }
      rt.sync_block();
    }
  }
};

#if defined(__CUDACC__)
template <CellKind kCell, Engine E>
__global__ void __launch_bounds__(kBlockThreads, 1)
    persistent_backward_kernel(const PersistentBackwardArgs args, const PersistentPlan plan) {
  extern __shared__ __align__(128) unsigned char smem[];
  PersistentBackwardBlock<kCell, E> block(args, plan, static_cast<int>(blockIdx.x), smem);
  DeviceRuntime<E> rt{DeviceGridBarrier{args.barrier}};
  block.run(rt);
}
#endif

}  // namespace fused_rnn::cuda
