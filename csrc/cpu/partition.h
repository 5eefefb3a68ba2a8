// The split of a recurrence's hidden units across threads, and the loop over its steps.
#pragma once

#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace fused_rnn::cpu {

// The barrier between the steps of Partition::for_each_step: a count of the slices done.
class StepBarrier {
 public:
  explicit StepBarrier(int64_t slices) : slices_(slices) {}

  // `done` slices finished position i; waits for all slices of position i. False if a slice
  // failed (threw), in which case the caller stops.
  bool arrive_and_wait(int64_t done, int64_t i) {
    const int64_t target = slices_ * (i + 1);
    arrived_.fetch_add(done, std::memory_order_acq_rel);
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

  const int64_t slices_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<bool> failed_{false};
};

// Every step splits the hidden units into contiguous slices, one per thread, and a thread
// does all the work of its units: in the forward, the recurrent product of their gate rows
// (all G gates of a unit, so the cell maths needs nothing from other threads) and their cell
// maths; in the backward, their gate gradients and their columns of dh = dgates @ w_hh. One
// barrier per step (for_each_step; an LSTM with a projection has a fork/join per step instead,
// two in its backward), and each thread's slice of w_hh stays in its own core's cache for all
// T steps instead of streaming through a whole-matrix GEMM.
class Partition {
 public:
  // [0, size) in contiguous slices. work_per_step: multiply-adds of one step's recurrent
  // product; below a few tens of thousands the threading costs more than it saves.
  Partition(int64_t size, int64_t work_per_step) {
    constexpr int64_t kMinWork = 1 << 15;
    constexpr int64_t kMinUnits = 8;  // one 8-wide vector of units per thread at least
    const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    const int64_t count =
        work_per_step < kMinWork ? 1 : std::max<int64_t>(1, std::min(threads, size / kMinUnits));
    for (int64_t k = 0; k <= count; ++k) begin_.push_back(size * k / count);
  }

  int64_t size() const { return static_cast<int64_t>(begin_.size()) - 1; }
  int64_t begin(int64_t k) const { return begin_[k]; }
  int64_t units(int64_t k) const { return begin_[k + 1] - begin_[k]; }

  // Runs fn(k) for every slice, slice k on thread k.
  template <typename F>
  void for_each(const F& fn) const {
    at::parallel_for(0, size(), 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) fn(k);
    });
  }

  // Runs fn(k, i) for i = 0 .. steps - 1 and every slice k: all slices of position i finish
  // before any slice of position i + 1 starts, as with one for_each per step. With OpenMP it is
  // one parallel region for all steps and a spin barrier between them, which saves ~1 us per
  // step over a fork/join (2 cores, T = 100: LSTM op at B = 1, H = 128 0.42 -> 0.31 ms; 10-35%
  // at B <= 8, even at B = 32).
  template <typename F>
  void for_each_step(int64_t steps, const F& fn) const {
#if AT_PARALLEL_OPENMP
    if (size() > 1 && steps > 1) {
      StepBarrier barrier(size());
      at::parallel_for(0, size(), 1, [&](int64_t k0, int64_t k1) {
        // OpenMP runs every chunk on its own thread of the team, all at once, so the chunks
        // can wait for each other (with fewer threads a chunk holds several slices).
        for (int64_t i = 0; i < steps; ++i) {
          try {
            for (int64_t k = k0; k < k1; ++k) fn(k, i);
          } catch (...) {
            barrier.fail();  // release the others; at::parallel_for rethrows this
            throw;
          }
          if (!barrier.arrive_and_wait(k1 - k0, i)) return;
        }
      });
      return;
    }
#endif
    for (int64_t i = 0; i < steps; ++i) for_each([&](int64_t k) { fn(k, i); });
  }

 private:
  std::vector<int64_t> begin_;
};

}  // namespace fused_rnn::cpu
