// The split of a recurrence's work (batch rows, hidden units) across threads, and the loop over
// its steps.
#pragma once

#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <algorithm>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace fused_rnn::cpu {

// The barrier between the steps of Partition::for_each_step: a count of the workers done.
class StepBarrier {
 public:
  explicit StepBarrier(int64_t workers) : workers_(workers) {}

  // `done` workers finished position i.
  void arrive(int64_t done) { arrived_.fetch_add(done, std::memory_order_acq_rel); }

  // Waits for all workers of position i. False if a worker failed (threw), in which case the
  // caller stops.
  bool wait(int64_t i) {
    const int64_t target = workers_ * (i + 1);
    for (int64_t spins = 0; arrived_.load(std::memory_order_acquire) < target; ++spins) {
      if (failed_.load(std::memory_order_relaxed)) return false;
      // spin briefly, then let an oversubscribed core run the thread being waited for
      if (spins < 256) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
    return !failed_.load(std::memory_order_relaxed);
  }

  void fail() { failed_.store(true, std::memory_order_relaxed); }

 private:
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  const int64_t workers_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<bool> failed_{false};
};

// The split of a recurrence's work across threads: workers, each a group of batch rows times a
// slice of hidden units, one worker per thread.
//
// Units: every step splits the hidden units into contiguous slices, and a worker does all the
// work of its units: in the forward, the recurrent product of their gate rows (all G gates of a
// unit, so the cell maths needs nothing from other threads) and their cell maths; in the
// backward, their gate gradients and their columns of dh = dgates @ w_hh. The slices of a group
// need each other's h (dgates) of the step before: one barrier per step among them
// (for_each_step), and each thread's slice of w_hh stays in its own core's cache for all T steps
// instead of streaming through a whole-matrix GEMM.
//
// Rows: batch rows are independent sequences, so groups of them need no barrier at all, nor
// each other's h, at the price of every group reading all of w_hh each step (from L2 or L3, in
// the panels' order). From 8 rows per group that is the faster split. LSTM op on 2 Zen 4
// cores, T = 100, two groups of rows against two slices of units (medians of 31 interleaved
// calls): B = 32, H = 256 forward 3% faster (7% saving the workspace), backward 2.5%; H = 128
// 3.5% (12%) and 5%; B = 64, H = 256 2.5% (12%) and 4%; the RNN's forward at B = 32, H = 256
// 11%. Below 8 rows per group (B = 1 inference above all) the threads split the units, and
// also when w_hh is large for the rows that share each read of it: at B = 16, H = 1024 (8 rows
// per group, 16 MB of w_hh) rows were 2-8% slower than units, at H = 512 level, at B = 32,
// H = 64 1.2-1.5x faster.
class Partition {
 public:
  // Hidden units [0, units) and batch rows [0, rows). work_per_step: multiply-adds of one
  // step's recurrent product; below a few tens of thousands the threading costs more than it
  // saves, and for a single step (steps = 1: no packed weight to share out, one fork and join
  // of ~4 us) below 2^17 (one step of B = 1: LSTM op at H = 128 15.9 us on one thread, 20.7 on
  // two; at H = 256 33.7 and 30.7). split_rows: whether rows may be split (false where a step
  // also has a product over all rows of its units' output, as the LSTM's projection).
  Partition(int64_t units, int64_t rows, int64_t work_per_step, int64_t steps, bool split_rows) {
    constexpr int64_t kMinWork = 1 << 15;
    constexpr int64_t kMinSingleStepWork = 1 << 17;
    constexpr int64_t kMinUnits = 8;  // one 8-wide vector of units per thread at least
    constexpr int64_t kMinRowsPerGroup = 8;
    constexpr int64_t kMaxWeightPerGroupRow = int64_t(1) << 18;  // 1 MB of fp32
    const bool serial = work_per_step < kMinWork ||
                        (steps == 1 && work_per_step < kMinSingleStepWork) ||
                        at::in_parallel_region();
    const int64_t threads = serial ? 1 : at::get_num_threads();
    // The most groups that divide the threads with at least kMinRowsPerGroup rows each, and
    // with enough rows to pay for reading all of w_hh every step (each element read is used
    // once per row of the group): at most kMaxWeightPerGroupRow elements per row.
    const int64_t weight = rows > 0 ? work_per_step / rows : 0;  // elements of w_hh
    int64_t groups = 1;
    for (int64_t g = 2; split_rows && g <= threads; ++g) {
      const int64_t group_rows = rows / g;
      if (group_rows < kMinRowsPerGroup || weight > group_rows * kMaxWeightPerGroupRow) break;
      if (threads % g == 0) groups = g;
    }
    const int64_t slices = std::max<int64_t>(1, std::min(threads / groups, units / kMinUnits));
    for (int64_t k = 0; k <= slices; ++k) unit_begin_.push_back(units * k / slices);
    for (int64_t g = 0; g <= groups; ++g) row_begin_.push_back(rows * g / groups);
  }

  // Workers: worker k is row group k / slices() and unit slice k % slices().
  int64_t size() const { return groups() * slices(); }
  int64_t groups() const { return static_cast<int64_t>(row_begin_.size()) - 1; }
  int64_t slices() const { return static_cast<int64_t>(unit_begin_.size()) - 1; }
  int64_t slice(int64_t k) const { return k % slices(); }
  int64_t group(int64_t k) const { return k / slices(); }

  // The units of worker k.
  int64_t begin(int64_t k) const { return unit_begin_[slice(k)]; }
  int64_t units(int64_t k) const { return unit_begin_[slice(k) + 1] - unit_begin_[slice(k)]; }
  // The batch rows of worker k.
  int64_t row_begin(int64_t k) const { return row_begin_[group(k)]; }
  int64_t row_end(int64_t k) const { return row_begin_[group(k) + 1]; }
  int64_t rows(int64_t k) const { return row_end(k) - row_begin(k); }
  // All hidden units and all batch rows.
  int64_t unit_count() const { return unit_begin_.back(); }
  int64_t row_count() const { return row_begin_.back(); }
  // The fewest rows of a group (the rows the step products' operands are prepared for).
  int64_t min_rows() const { return row_begin_[1] - row_begin_[0]; }

  // Runs fn(k) for every worker, worker k on thread k.
  template <typename F>
  void for_each(const F& fn) const {
    at::parallel_for(0, size(), 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) fn(k);
    });
  }

  // Runs fn(k, i) for i = 0 .. steps - 1 and every worker k: all workers of a row group finish
  // position i before any of them starts position i + 1, as with one for_each per step. With
  // OpenMP it is one parallel region for all steps and a spin barrier per group between them,
  // which saves ~1 us per step over a fork/join (2 cores, T = 100: LSTM op at B = 1, H = 128
  // 0.42 -> 0.31 ms; 10-35% at B <= 8, even at B = 32); groups of a single slice run all their
  // steps without waiting.
  template <typename F>
  void for_each_step(int64_t steps, const F& fn) const {
#if AT_PARALLEL_OPENMP
    if (size() > 1 && steps > 1) {
      std::vector<std::unique_ptr<StepBarrier>> barriers;
      for (int64_t g = 0; g < groups(); ++g) {
        barriers.push_back(std::make_unique<StepBarrier>(slices()));
      }
      at::parallel_for(0, size(), 1, [&](int64_t k0, int64_t k1) {
        // OpenMP runs every chunk on its own thread of the team, all at once, so the chunks
        // can wait for each other (with fewer threads a chunk holds several workers).
        for (int64_t i = 0; i < steps; ++i) {
          try {
            for (int64_t k = k0; k < k1; ++k) fn(k, i);
          } catch (...) {
            for (auto& barrier : barriers) barrier->fail();  // release the others; rethrown
            throw;                                          // by at::parallel_for
          }
          if (slices() == 1) continue;
          // arrive at the barrier of every group the chunk has workers of, then wait for them
          for (int64_t g = group(k0); g <= group(k1 - 1); ++g) {
            const int64_t first = std::max(k0, g * slices());
            const int64_t last = std::min(k1, (g + 1) * slices());
            barriers[g]->arrive(last - first);
          }
          for (int64_t g = group(k0); g <= group(k1 - 1); ++g) {
            if (!barriers[g]->wait(i)) return;
          }
        }
      });
      return;
    }
#endif
    for (int64_t i = 0; i < steps; ++i) for_each([&](int64_t k) { fn(k, i); });
  }

 private:
  std::vector<int64_t> unit_begin_, row_begin_;
};

}  // namespace fused_rnn::cpu
