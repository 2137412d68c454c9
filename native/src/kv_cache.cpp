#include "kv_cache.h"

#include <sys/mman.h>

#include <string>

namespace weft {

KvPool::KvPool(int numLayers, int numKvHeads, int headDim, int pageTokens, DType dtype, uint64_t budgetBytes, bool hostMemory)
    : numLayers_(numLayers), numKvHeads_(numKvHeads), headDim_(headDim), pageTokens_(pageTokens), dtype_(dtype) {
  if (pageTokens <= 0) throw WeftError(Err::BadArgument, "kvPageTokens must be positive");
  blockBytes_ = uint64_t(pageTokens) * headDim * dtypeSize(dtype);
  pageBytes_ = blockBytes_ * 2 * numKvHeads * numLayers;
  uint64_t pages = budgetBytes / pageBytes_;
  if (pages < 1)
    throw WeftError(Err::BadArgument, "kvMemoryBytes " + std::to_string(budgetBytes) + " holds no page of " +
                                          std::to_string(pageBytes_) + " bytes");
  if (pages > (1u << 30)) pages = 1u << 30;
  numPages_ = int(pages);
  free_.reserve(numPages_);
  for (int i = numPages_ - 1; i >= 0; i--) free_.push_back(i);
  if (!hostMemory) return;
  // Anonymous mapping: pages are committed on first touch, and returned to the OS on destruction.
  void* p = ::mmap(nullptr, uint64_t(numPages_) * pageBytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw WeftError(Err::BadArgument, "cannot reserve " + std::to_string(budgetBytes) + " bytes of KV memory");
  memory_ = static_cast<uint8_t*>(p);
}

KvPool::~KvPool() {
  if (memory_) ::munmap(memory_, uint64_t(numPages_) * pageBytes_);
}

int KvPool::numFree() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return int(free_.size());
}

void KvPool::allocate(int count, std::vector<int>& into) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (count > int(free_.size()))
    throw WeftError(Err::KvExhausted, "KV cache exhausted: " + std::to_string(count) + " pages needed, " +
                                          std::to_string(free_.size()) + " of " + std::to_string(numPages_) + " free");
  for (int i = 0; i < count; i++) {
    into.push_back(free_.back());
    free_.pop_back();
  }
}

void KvPool::release(const int* pages, int count) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (int i = 0; i < count; i++) free_.push_back(pages[i]);
}

}  // namespace weft
