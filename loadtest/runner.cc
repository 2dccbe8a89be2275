#include "loadtest/runner.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "loadtest/arrivals.h"

namespace sals::loadtest {
namespace {

// How often a waiting scheduler looks at the stop flag.
constexpr auto kPollInterval = std::chrono::milliseconds(50);

}  // namespace

Runner::Runner(std::vector<std::shared_ptr<grpc::Channel>> channels,
               RequestTemplate request_template, Workload* workload, LiveCounters* live,
               const std::atomic<bool>* stop)
    : template_(std::move(request_template)), workload_(workload), live_(live), stop_(stop) {
  for (const auto& channel : channels) stubs_.push_back(v1::Generation::NewStub(channel));
}

RunResult Runner::Run(const RunPlan& plan) { return Drive(plan, /*warmup=*/false); }

RunResult Runner::WarmUp(int64_t count, int concurrency) {
  RunPlan plan;
  plan.mode = RunPlan::Mode::kConcurrency;
  plan.concurrency = std::max(1, concurrency);
  plan.num_requests = count;
  return Drive(plan, /*warmup=*/true);
}

RunResult Runner::Drive(const RunPlan& plan, bool warmup) {
  // State shared with the completion callbacks.
  struct Shared {
    std::mutex mu;
    std::condition_variable changed;
    int in_flight = 0;
    std::vector<RequestRecord> records;
    Clock::time_point last_done;
  };
  auto shared = std::make_shared<Shared>();
  live_->Reset();

  RunResult result;
  result.plan = plan;
  ArrivalProcess arrivals(plan.request_rate, plan.burstiness, plan.seed);
  const bool by_rate = plan.mode == RunPlan::Mode::kRate;
  const int cap = by_rate ? plan.max_concurrency : plan.concurrency;
  const Clock::time_point start = Clock::now();
  const Clock::time_point end = plan.duration_s > 0
                                    ? start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(plan.duration_s))
                                    : Clock::time_point::max();
  Clock::time_point next_arrival = start;
  shared->last_done = start;
  const auto stopped = [&] { return stop_ != nullptr && stop_->load(); };

  for (int64_t sent = 0; plan.num_requests == 0 || sent < plan.num_requests; ++sent) {
    std::unique_lock<std::mutex> lock(shared->mu);
    // Wait for the arrival time and for room under the cap, waking to look at the stop flag.
    bool over = false;
    while (true) {
      const Clock::time_point now = Clock::now();
      if (stopped() || now >= end) {
        over = true;
        break;
      }
      const bool due = !by_rate || now >= next_arrival;
      const bool room = cap == 0 || shared->in_flight < cap;
      if (due && room) break;
      Clock::time_point wake = std::min(now + kPollInterval, end);
      if (!due) wake = std::min(wake, next_arrival);
      shared->changed.wait_until(lock, wake);
    }
    if (over) {
      result.interrupted = stopped();
      break;
    }
    ++shared->in_flight;
    result.peak_in_flight = std::max(result.peak_in_flight, shared->in_flight);
    lock.unlock();

    if (by_rate) {
      next_arrival += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(arrivals.NextGapSeconds()));
    }
    WorkItem item = workload_->Next();
    v1::GenerateRequest request;
    *request.mutable_sampling() = template_.sampling;
    request.mutable_sampling()->set_max_tokens(item.max_tokens);
    if (template_.attention.ByteSizeLong() > 0) *request.mutable_attention() = template_.attention;
    if (item.prompt_text.empty()) {
      request.mutable_token_ids()->mutable_ids()->Add(item.prompt_ids.begin(),
                                                      item.prompt_ids.end());
    } else {
      request.set_text(std::move(item.prompt_text));
    }
    ++result.sent;
    live_->sent++;
    live_->in_flight++;
    LiveCounters* live = live_;
    StreamCall::Start(stubs_[next_stub_++ % stubs_.size()].get(), std::move(request),
                      template_.timeout, start, warmup, [shared, live](RequestRecord record) {
                        live->in_flight--;
                        live->done++;
                        if (!record.ok()) live->failed++;
                        live->output_tokens += record.output_tokens;
                        std::lock_guard<std::mutex> lock(shared->mu);
                        shared->records.push_back(std::move(record));
                        shared->last_done = Clock::now();
                        --shared->in_flight;
                        shared->changed.notify_all();
                      });
  }

  std::unique_lock<std::mutex> lock(shared->mu);
  shared->changed.wait(lock, [&] { return shared->in_flight == 0; });
  result.records = std::move(shared->records);
  result.wall_s = std::chrono::duration<double>(shared->last_done - start).count();
  return result;
}

}  // namespace sals::loadtest
