// The tokenizer pool: tasks run on its threads (not the caller's), in order on one thread;
// shutdown drops what is queued and refuses more.
#include "server/work_pool.h"

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace sals {
namespace {

TEST(WorkPoolTest, RunsTasksOffTheCallersThreadInOrder) {
  WorkPool pool(1);
  std::vector<int> order;
  std::mutex mu;
  std::promise<std::thread::id> ran_on;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(pool.Post([&, i] {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(i);
    }));
  }
  ASSERT_TRUE(pool.Post([&] { ran_on.set_value(std::this_thread::get_id()); }));
  auto id = ran_on.get_future();
  ASSERT_EQ(id.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  EXPECT_NE(id.get(), std::this_thread::get_id());
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(WorkPoolTest, ShutdownDropsQueuedTasksAndRefusesMore) {
  WorkPool pool(1);
  std::mutex mu;
  std::condition_variable cv;
  bool started = false, release = false;
  int later_ran = 0;
  ASSERT_TRUE(pool.Post([&] {
    std::unique_lock<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  }));
  ASSERT_TRUE(pool.Post([&] { ++later_ran; }));  // queued behind the blocked one
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return started; }));
  }
  std::thread stopper([&] { pool.Shutdown(); });
  // Shutdown waits for the running task; let it end once the queue is surely dropped.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool refused = false;
  while (!refused && std::chrono::steady_clock::now() < deadline) {
    refused = !pool.Post([&] { ++later_ran; });
    if (!refused) std::this_thread::yield();
  }
  EXPECT_TRUE(refused) << "Post still accepted tasks a minute into Shutdown";
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  stopper.join();
  EXPECT_EQ(later_ran, 0);
}

}  // namespace
}  // namespace sals
