// A small fork-join pool owned by one execution context. The calling thread takes part as
// thread 0; workers spin briefly between parallel regions (a decode step runs ~100 of them)
// and then sleep on a condition variable so an idle context costs no CPU.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace weft {

class ThreadPool {
 public:
  explicit ThreadPool(int numThreads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return numThreads_; }

  // Runs fn(threadIndex, numThreads) on every thread of the pool and returns when all are done.
  template <class F>
  void run(F&& fn) {
    if (numThreads_ == 1) { fn(0, 1); return; }
    auto call = [](void* f, int i, int n) { (*static_cast<F*>(f))(i, n); };
    dispatch(call, &fn);
  }

  // Splits [0, n) into contiguous chunks (one per thread, sizes differing by at most `grain`).
  static void chunk(int64_t n, int64_t grain, int i, int nth, int64_t& begin, int64_t& end);

 private:
  using Trampoline = void (*)(void*, int, int);
  void dispatch(Trampoline call, void* fn);
  void workerLoop(int index);

  int numThreads_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  Trampoline call_ = nullptr;
  void* fn_ = nullptr;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
};

}  // namespace weft
