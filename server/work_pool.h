// A fixed set of threads running posted tasks in order; the server tokenizes text prompts here,
// off gRPC's threads, so that long prompts never delay health checks or other calls.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sals {

class WorkPool {
 public:
  explicit WorkPool(int threads);
  ~WorkPool();  // Shutdown()
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Queues `task`; false (task dropped) once shut down.
  bool Post(std::function<void()> task);
  // Drops queued tasks, waits for running ones and joins the threads. Idempotent.
  void Shutdown();

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace sals
