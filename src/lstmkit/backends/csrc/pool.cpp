// The cache of large buffers behind empty_big (gemm.h).
//
// Every forward and backward call of the kernels allocates tens of MB of buffers (gate rows,
// saved activations, gradient rows) and frees them when autograd is done with them. Buffers of
// that size come from mmap and go back to the kernel on free, so each call faulted all of them
// in again, 4 KB (or 2 MB) at a time: a page fault and a page clear per page, serialised on the
// process's memory map when two threads fault at once. Here a freed buffer waits in a cache
// keyed by its size, and the next request of (nearly) that size takes it back with its pages
// still mapped (`python -m benchmarks.buffer_cache`: training at T = 1000 in 0.48-0.68 of the
// time, layer norm at T = 128 in 0.63, no change at the smaller shapes). Idle buffers are
// capped at LSTMKIT_BUFFER_CACHE_MB (default 1024; 0 turns the cache off) and released by
// release_buffer_cache(); set_buffer_cache(false) sends new requests to at::empty (torch's
// allocator, which memory profilers see) until it is turned on again.
#include "ops.h"
#include "gemm.h"

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

namespace lstmkit {
namespace {

constexpr size_t kHuge = size_t(2) << 20;

struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> idle;  // block size -> block
  size_t idle_bytes = 0;
  size_t cap = size_t(1024) << 20;
  std::atomic<bool> enabled{true};

  Pool() {
    if (const char* env = std::getenv("LSTMKIT_BUFFER_CACHE_MB")) {
      char* end = nullptr;
      const unsigned long long mb = std::strtoull(env, &end, 10);
      if (end != env) cap = static_cast<size_t>(mb) << 20;
    }
  }

  // An idle block of `size` bytes or slightly more (training repeats the same sizes call after
  // call) and its true size, or {nullptr, 0}.
  std::pair<void*, size_t> take(size_t size) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = idle.lower_bound(size);
    if (it == idle.end() || it->first > size + size / 4) return {nullptr, 0};
    const std::pair<void*, size_t> block{it->second, it->first};
    idle_bytes -= it->first;
    idle.erase(it);
    return block;
  }

  void give(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (idle_bytes + size <= cap) {
        idle.emplace(size, p);
        idle_bytes += size;
        return;
      }
    }
    std::free(p);
  }

  size_t release() {
    std::multimap<size_t, void*> out;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      out.swap(idle);
      bytes = idle_bytes;
      idle_bytes = 0;
    }
    for (auto& [size, p] : out) std::free(p);
    return bytes;
  }
};

// Never destroyed: tensors that hold pooled blocks may be freed during interpreter shutdown,
// after static destructors would have run.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& o) {
  const int64_t numel = c10::multiply_integers(sizes);
  const size_t bytes =
      static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(o.dtype()));
  Pool& pl = pool();
  if (bytes < kPooledBytes || pl.cap == 0 || !pl.enabled.load(std::memory_order_relaxed)) {
    return at::empty(sizes, o);
  }
  // from 8 MB: whole 2 MB pages, faulted in 2 MB at a time on first touch (transparent huge
  // pages); below: 64 KB granules
  const bool huge = bytes >= (size_t(8) << 20);
  const size_t grain = huge ? kHuge : size_t(64) << 10;
  const size_t want = (bytes + grain - 1) & ~(grain - 1);
  auto [p, size] = pl.take(want);
  if (p == nullptr) {
    size = want;
    p = std::aligned_alloc(huge ? kHuge : 64, size);
    TORCH_CHECK(p != nullptr, "lstmkit fused: out of memory allocating ", size, " bytes");
#if defined(MADV_HUGEPAGE)
    if (huge) madvise(p, size, MADV_HUGEPAGE);
#endif
  }
  // the block goes back under its true size, which may exceed this request's
  return at::from_blob(p, sizes, [size = size](void* q) { pool().give(q, size); },
                       o.device(at::kCPU));
}

std::vector<int64_t> buffer_cache_info() {
  Pool& pl = pool();
  std::lock_guard<std::mutex> lock(pl.mu);
  return {static_cast<int64_t>(pl.idle_bytes), static_cast<int64_t>(pl.idle.size()),
          static_cast<int64_t>(pl.cap)};
}

int64_t release_buffer_cache() { return static_cast<int64_t>(pool().release()); }

bool set_buffer_cache(bool enabled) { return pool().enabled.exchange(enabled); }

}  // namespace lstmkit
