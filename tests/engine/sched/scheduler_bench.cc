// Per-step host cost of the scheduler in steady decode: 256 running sequences with 4K-token
// contexts, each step Schedule + BuildForwardBatch + Postprocess (a fake sampler), with and
// without prefix caching. Run by hand: build-*/tests/engine/sched/scheduler_bench.
#include <memory>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/sched/scheduler.h"

namespace sals {
namespace {

constexpr int kSeqs = 256;
constexpr int kContext = 4096;
constexpr int kSteps = 2000;              // fixed, so the pool can be sized for the growth
constexpr int kMaxTokens = kSteps + 512;  // nobody finishes: prefilling takes 128 steps

void BM_DecodeStep(benchmark::State& state) {
  SchedulerConfig c;
  c.max_num_seqs = kSeqs;
  c.max_num_batched_tokens = 8192;
  c.block_size = 16;
  c.num_blocks = kSeqs * ((kContext + kMaxTokens) / c.block_size + 1);
  c.max_sequences = kSeqs;
  c.enable_prefix_caching = state.range(0) != 0;
  std::unique_ptr<Scheduler> sched = *Scheduler::Create(c);
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (int i = 0; i < kSeqs; ++i) {
    std::vector<int32_t> prompt(kContext);
    for (int t = 0; t < kContext; ++t) prompt[t] = (i * 131 + t * 7) % 32000;
    seqs.push_back(std::make_unique<Sequence>(i, std::move(prompt), kMaxTokens));
    if (!sched->Add(seqs.back().get()).ok()) state.SkipWithError("Add failed");
  }
  ForwardBatch batch;
  std::vector<int32_t> sampled;
  auto step = [&] {
    const StepPlan plan = sched->Schedule();
    BuildForwardBatch(plan, &batch);
    sampled.assign(plan.seqs.size(), 42);
    if (!sched->Postprocess(plan, sampled).ok()) state.SkipWithError("Postprocess failed");
    return plan.num_batched_tokens;
  };
  // Prefill everything: from here on every step is 256 decode tokens.
  while (seqs.back()->num_output_tokens() == 0) step();
  for (auto _ : state) benchmark::DoNotOptimize(step());
  if (sched->stats().num_running != kSeqs) state.SkipWithError("sequences finished early");
}
BENCHMARK(BM_DecodeStep)->Arg(1)->Arg(0)->Iterations(kSteps)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace sals

BENCHMARK_MAIN();
