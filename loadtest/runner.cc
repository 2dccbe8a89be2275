#include "loadtest/runner.h"

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>

#include "loadtest/arrivals.h"

namespace sals::loadtest {
namespace {

// How often a waiting scheduler looks at the stop flag.
constexpr auto kPollInterval = std::chrono::milliseconds(50);

}  // namespace

Runner::Runner(std::vector<std::shared_ptr<grpc::Channel>> channels,
               RequestTemplate request_template, Workload* workload, LiveCounters* live,
               const std::atomic<bool>* stop, Workload* background)
    : template_(std::move(request_template)),
      workload_(workload),
      background_(background),
      live_(live),
      stop_(stop) {
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

v1::GenerateRequest Runner::MakeRequest(WorkItem item) const {
  v1::GenerateRequest request;
  *request.mutable_sampling() = template_.sampling;
  request.mutable_sampling()->set_max_tokens(item.max_tokens);
  if (template_.attention.ByteSizeLong() > 0) *request.mutable_attention() = template_.attention;
  if (item.prompt_text.empty()) {
    request.mutable_token_ids()->mutable_ids()->Add(item.prompt_ids.begin(), item.prompt_ids.end());
  } else {
    request.set_text(std::move(item.prompt_text));
  }
  return request;
}

RunResult Runner::Drive(const RunPlan& plan, bool warmup) {
  // State shared with the completion callbacks.
  struct Shared {
    std::mutex mu;
    std::condition_variable changed;
    int in_flight = 0;
    int background_in_flight = 0;
    int background_settled = 0;  // background streams with a first token, or ended without
    bool restart_background = true;
    size_t background_stub = 0;
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
  const Clock::time_point run_start = Clock::now();
  const auto stopped = [&] { return stop_ != nullptr && stop_->load(); };

  // Background streams: each one ending well starts the next while restart_background holds (a
  // failed one is not replaced: a server refusing them is not flooded). The callbacks run while
  // this function waits for background_in_flight to reach zero, so they may use `launch` and
  // `this`.
  const int num_background = warmup || background_ == nullptr ? 0 : plan.background_streams;
  std::function<void(WorkItem, size_t)> launch = [&](WorkItem item, size_t stub) {
    StreamCall::Start(
        stubs_[stub % stubs_.size()].get(), MakeRequest(std::move(item)), template_.timeout,
        run_start, /*warmup=*/false,
        [shared, &launch, this](RequestRecord record) {
          record.background = true;
          std::optional<WorkItem> next;
          size_t stub = 0;
          {
            std::lock_guard<std::mutex> lock(shared->mu);
            if (record.output_tokens == 0) ++shared->background_settled;
            const bool replace = shared->restart_background && record.ok();
            shared->records.push_back(std::move(record));
            if (replace) {
              next = background_->Next();
              stub = shared->background_stub++;
            } else {
              --shared->background_in_flight;
            }
            shared->changed.notify_all();
          }
          if (next) launch(std::move(*next), stub);
        },
        [shared] {
          std::lock_guard<std::mutex> lock(shared->mu);
          ++shared->background_settled;
          shared->changed.notify_all();
        });
  };
  if (num_background > 0) {
    std::vector<WorkItem> items;
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      for (int i = 0; i < num_background; ++i) items.push_back(background_->Next());
      shared->background_in_flight = num_background;
      shared->background_stub = num_background;
    }
    for (int i = 0; i < num_background; ++i) launch(std::move(items[i]), i);
    // The load starts once every background stream decodes.
    std::unique_lock<std::mutex> lock(shared->mu);
    while (shared->background_settled < num_background && !stopped()) {
      shared->changed.wait_for(lock, kPollInterval);
    }
  }

  const Clock::time_point start = Clock::now();
  const Clock::time_point end = plan.duration_s > 0
                                    ? start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(plan.duration_s))
                                    : Clock::time_point::max();
  Clock::time_point next_arrival = start;
  shared->last_done = start;

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
    v1::GenerateRequest request = MakeRequest(workload_->Next());
    ++result.sent;
    live_->sent++;
    live_->in_flight++;
    LiveCounters* live = live_;
    StreamCall::Start(stubs_[next_stub_++ % stubs_.size()].get(), std::move(request),
                      template_.timeout, run_start, warmup, [shared, live](RequestRecord record) {
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
  // Background streams in flight finish, and none follows them.
  shared->restart_background = false;
  shared->changed.wait(lock, [&] { return shared->background_in_flight == 0; });
  result.records = std::move(shared->records);
  result.wall_s = std::chrono::duration<double>(shared->last_done - start).count();
  return result;
}

}  // namespace sals::loadtest
