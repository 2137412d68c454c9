// The paged KV cache: one pool of fixed-size pages per engine (sized from a memory budget) and a
// page table per sequence. Page layout: (layer, k|v, kv head, slot, head dim).
#pragma once
#include <cstdint>
#include <mutex>
#include <vector>

#include "common.h"

namespace weft {

class KvPool {
 public:
  // hostMemory: the pages live in host memory owned by the pool (else the backend holds them).
  KvPool(int numLayers, int numKvHeads, int headDim, int pageTokens, DType dtype, uint64_t budgetBytes, bool hostMemory = true);
  ~KvPool();
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  int pageTokens() const { return pageTokens_; }
  int numPages() const { return numPages_; }
  int numFree() const;
  DType dtype() const { return dtype_; }
  uint64_t pageBytes() const { return pageBytes_; }
  uint64_t bytesPerToken() const { return pageBytes_ / pageTokens_; }
  uint64_t blockBytes() const { return blockBytes_; }

  // Takes `count` pages or none: throws KvExhausted when fewer are free.
  void allocate(int count, std::vector<int>& into);
  void release(const int* pages, int count);

  uint8_t* page(int index) { return memory_ + uint64_t(index) * pageBytes_; }
  // Start of the (layer, k|v, head) block of a page: pageTokens x headDim elements.
  uint8_t* block(int index, int layer, int kv, int head) {
    return page(index) + ((uint64_t(layer) * 2 + kv) * numKvHeads_ + head) * blockBytes_;
  }

 private:
  int numLayers_, numKvHeads_, headDim_, pageTokens_, numPages_;
  DType dtype_;
  uint64_t blockBytes_, pageBytes_;
  uint8_t* memory_ = nullptr;
  mutable std::mutex mutex_;
  std::vector<int> free_;
};

}  // namespace weft
