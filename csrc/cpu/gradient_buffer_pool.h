// Reused memory for the large outputs of the CPU kernels (gradient buffers of (B, D) rows).
//
// Why: a training step frees its gradients (zero_grad(set_to_none=True), or the predictor's backward
// consuming them) and the next step asks for the same sizes again. glibc serves allocations above its
// mmap threshold (at most 32 MiB) with fresh pages: a 128 MiB gradient (B = 16384, D = 2048, float32)
// then costs 32768 page faults and the kernel zeroing every page, about 5x the time of the kernel
// that writes it (measured here: 47 ms for a step whose traffic takes 9 ms). Like the CUDA caching
// allocator, this keeps a few freed blocks and hands them out again.
//
// Blocks of at least kMinPooledBytes come from here; a freed block goes back to the pool, and the
// oldest blocks go to the system while the pool holds more than kMaxPooledBlocks blocks or
// kMaxPooledBytes in all.
// A request takes the smallest cached block that fits and is at most twice its size. Thread-safe.
// VISSIAM_CPU_BUFFER_POOL=0 turns it off (every buffer from at::empty).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdlib>
#include <string>
#include <mutex>
#include <vector>

namespace vissiam {

class GradientBufferPool {
 public:
  static constexpr size_t kMinPooledBytes = size_t{1} << 20;
  static constexpr size_t kMaxPooledBlocks = 8;
  static constexpr size_t kMaxPooledBytes = size_t{2} << 30;

  // An uninitialized contiguous tensor of `sizes` and `options` (a CPU dtype).
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
    if (bytes < kMinPooledBytes || !enabled()) return at::empty(sizes, options);
    Block block = instance().take(bytes);
    if (block.data == nullptr) block = Block{c10::alloc_cpu(bytes), bytes};
    return at::from_blob(
        block.data, sizes, [capacity = block.capacity](void* data) { instance().give_back(Block{data, capacity}); },
        options);
  }

 private:
  struct Block {
    void* data = nullptr;
    size_t capacity = 0;
  };

  static GradientBufferPool& instance() {
    static GradientBufferPool* pool = new GradientBufferPool();  // never destroyed: blocks may outlive exit
    return *pool;
  }

  static bool enabled() {
    static const bool on = [] {
      const char* flag = std::getenv("VISSIAM_CPU_BUFFER_POOL");
      return flag == nullptr || std::string(flag) != "0";
    }();
    return on;
  }

  Block take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t best = blocks_.size();
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const size_t capacity = blocks_[i].capacity;
      if (capacity >= bytes && capacity <= 2 * bytes && (best == blocks_.size() || capacity < blocks_[best].capacity)) {
        best = i;
      }
    }
    if (best == blocks_.size()) return {};
    const Block block = blocks_[best];
    blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(best));
    pooled_bytes_ -= block.capacity;
    return block;
  }

  // The freed block joins the pool as its newest; the oldest blocks leave it (to the system) while
  // the pool is over its limits. Oldest first, so that a pool filled by earlier shapes makes room
  // for the sizes in use now rather than sending every new buffer to fresh pages.
  void give_back(Block block) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks_.push_back(block);
      pooled_bytes_ += block.capacity;
      while (blocks_.size() > kMaxPooledBlocks || pooled_bytes_ > kMaxPooledBytes) {
        evicted.push_back(blocks_.front());
        pooled_bytes_ -= blocks_.front().capacity;
        blocks_.erase(blocks_.begin());
      }
    }
    for (const Block& old : evicted) c10::free_cpu(old.data);
  }

  std::mutex mutex_;
  std::vector<Block> blocks_;
  size_t pooled_bytes_ = 0;
};

}  // namespace vissiam
