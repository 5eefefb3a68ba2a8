#include "cpu/output_pool.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace fused_rnn::cpu {
namespace {

class BlockPool {
 public:
  // A block of at least `bytes`: the smallest freed one of at most 1.25x the size if there is
  // one (a larger block would hold memory the output does not use), else a new one from the
  // CPU allocator.
  void* acquire(size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->bytes >= bytes && it->bytes <= bytes + bytes / 4 &&
          (best == free_.end() || it->bytes < best->bytes)) {
        best = it;
      }
    }
    Block block;
    const bool reused = best != free_.end();
    if (reused) {
      block = std::move(*best);
      free_.erase(best);
      free_bytes_ -= block.bytes;
    } else {
      block = Block{c10::GetCPUAllocator()->allocate(bytes), bytes};  // reported by the allocator
    }
    void* data = block.memory.get();
    live_bytes_ += block.bytes;
    if (reused) report(data, static_cast<int64_t>(block.bytes));
    live_.emplace(data, std::move(block));
    return data;
  }

  // Keeps the block for reuse, or frees it when the pool is full.
  void release(void* data) {
    Block block;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(data);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "fused_rnn: freeing a block the pool does not hold");
      block = std::move(it->second);
      live_.erase(it);
      live_bytes_ -= block.bytes;
      if (free_bytes_ + block.bytes <= kMaxPooledBytes) {
        free_bytes_ += block.bytes;
        report(data, -static_cast<int64_t>(block.bytes));
        free_.push_back(std::move(block));
        return;
      }
    }
    // block goes out of scope here, outside the lock: its memory returns to the system
  }

  size_t free_bytes() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return free_bytes_;
  }

  size_t release_free_blocks() {
    std::vector<Block> blocks;
    size_t bytes = 0;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      bytes = free_bytes_;
      free_bytes_ = 0;
    }
    return bytes;  // `blocks` frees their memory here, outside the lock
  }

 private:
  struct Block {
    c10::DataPtr memory;  // owns the allocation
    size_t bytes = 0;
  };

  // Handing out or taking back a pooled block shows in torch's memory profiler as an allocation
  // or a free, as the CPU allocator's own do: the pool saves page faults, it does not hide
  // memory from measurements (bench/: peak memory of a call).
  void report(void* data, int64_t bytes) const {
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(data, bytes, live_bytes_, live_bytes_ + free_bytes_,
                                       c10::Device(c10::kCPU));
    }
  }

  std::mutex mutex_;
  std::vector<Block> free_;
  std::unordered_map<void*, Block> live_;
  size_t free_bytes_ = 0, live_bytes_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
BlockPool& pool() {
  static BlockPool* instance = new BlockPool();
  return *instance;
}

void release_block(void* data) { pool().release(data); }

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "pooled_empty: CPU tensors only");
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       options.dtype().itemsize();
  if (bytes < kMinPooledBytes) return at::empty(sizes, options);
  void* data = pool().acquire(bytes);
  // The storage may be resized like any other (with the CPU allocator); its first block comes
  // back here when it is freed.
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes,
                       c10::DataPtr(data, data, &release_block, c10::Device(c10::kCPU)),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(std::move(storage), 0, sizes);
}

size_t pooled_free_bytes() { return pool().free_bytes(); }

size_t release_pooled_blocks() { return pool().release_free_blocks(); }

}  // namespace fused_rnn::cpu
