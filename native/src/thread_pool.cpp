#include "thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <sched.h>

namespace weft {

static inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Spin briefly, then yield the core: when there are more runnable threads than cores (other
// contexts, the JS thread), a thread we wait for may need ours to make progress.
static inline void backoff(int spins) {
  if (spins < 256) cpuRelax();
  else sched_yield();
}

ThreadPool::ThreadPool(int numThreads) : numThreads_(numThreads < 1 ? 1 : numThreads) {
  try {
    for (int i = 1; i < numThreads_; i++) workers_.emplace_back([this, i] { workerLoop(i); });
  } catch (...) {  // thread creation failed: stop and join the ones started, then report
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    throw;
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::chunk(int64_t n, int64_t grain, int i, int nth, int64_t& begin, int64_t& end) {
  int64_t units = (n + grain - 1) / grain;
  int64_t per = units / nth, extra = units % nth;
  int64_t u0 = i * per + (i < extra ? i : extra);
  int64_t u1 = u0 + per + (i < extra ? 1 : 0);
  begin = u0 * grain < n ? u0 * grain : n;
  end = u1 * grain < n ? u1 * grain : n;
}

void ThreadPool::dispatch(Trampoline call, void* fn) {
  call_ = call;
  fn_ = fn;
  pending_.store(numThreads_ - 1, std::memory_order_relaxed);
  // seq_cst on both sides (here and the sleeper's increment) so a worker going to sleep
  // either sees the new generation or is seen as a sleeper.
  generation_.fetch_add(1);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  call(fn, 0, numThreads_);
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; spins++) backoff(spins);
}

void ThreadPool::workerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    uint64_t g;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < 4000) { backoff(spins); continue; }
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
      spins = 0;
    }
    seen = g;
    if (stop_.load()) return;
    call_(fn_, index, numThreads_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace weft
