// The engine end to end on the fixture models (CPU backend): greedy output equals transformers',
// batching and preemption don't change it, aborts free their blocks, stops and validation work.
#include "engine/runtime/engine.h"

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/common/temp_dir.h"
#include "tests/engine/backend/fixture_models.h"
#include "tests/engine/runtime/collecting_sink.h"
#include "tests/engine/runtime/failing_backend.h"

namespace sals {
namespace {

using testing::CollectingSink;

EngineConfig DenseConfig(const std::string& flavour, int num_blocks = 64) {
  EngineConfig c;
  c.model_path = testing::FixtureDir(flavour).string();
  c.kv_format = "dense";
  c.block_size = 4;
  c.num_blocks = num_blocks;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 32;
  return c;
}

std::unique_ptr<Engine> MakeEngine(const EngineConfig& config) {
  auto engine = Engine::Create(config, nullptr);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  r.ignore_eos = true;
  return r;
}

TEST(EngineTest, GreedyMatchesTransformers) {
  for (const std::string flavour : {"llama2-mha", "mistral-gqa", "llama31-bpe"}) {
    auto engine = MakeEngine(DenseConfig(flavour));
    ASSERT_NE(engine, nullptr);
    const auto refs = testing::LoadReferenceStreams(flavour, engine->info().config.vocab_size);
    std::vector<std::shared_ptr<CollectingSink>> sinks;
    for (const auto& ref : refs) {
      sinks.push_back(std::make_shared<CollectingSink>());
      std::vector<int32_t> prompt(ref.stream.begin(), ref.stream.begin() + ref.prompt_len);
      ASSERT_TRUE(engine->Submit(Greedy(prompt, 16), sinks.back()).ok());
    }
    for (size_t i = 0; i < refs.size(); ++i) {
      auto done = sinks[i]->Wait();
      ASSERT_TRUE(done.has_value());
      EXPECT_EQ(done->reason, FinishReason::kLength);
      EXPECT_EQ(done->completion_tokens, 16);
      const std::vector<int32_t> want(refs[i].stream.begin() + refs[i].prompt_len,
                                      refs[i].stream.end());
      EXPECT_EQ(sinks[i]->tokens(), want) << flavour << " prompt " << i;
    }
  }
}

TEST(EngineTest, ConcurrentRequestsMatchRunsAloneAndPreemptionRecomputes) {
  // A pool too small for all requests at once forces recompute preemption.
  EngineConfig config = DenseConfig("llama31-bpe", /*num_blocks=*/24);
  auto engine = MakeEngine(config);
  ASSERT_NE(engine, nullptr);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p;
    for (int j = 0; j < 5 + 7 * i; ++j) p.push_back((31 * i + 17 * j + 3) % 2000);
    prompts.push_back(p);
  }
  // Alone, one after another.
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) {
    auto sink = std::make_shared<CollectingSink>();
    ASSERT_TRUE(engine->Submit(Greedy(p, 20), sink).ok());
    ASSERT_TRUE(sink->Wait().has_value());
    alone.push_back(sink->tokens());
  }
  // Together.
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (const auto& p : prompts) {
    sinks.push_back(std::make_shared<CollectingSink>());
    ASSERT_TRUE(engine->Submit(Greedy(p, 20), sinks.back()).ok());
  }
  int preemptions = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto done = sinks[i]->Wait();
    ASSERT_TRUE(done.has_value());
    preemptions += done->preemptions;
    EXPECT_EQ(sinks[i]->tokens(), alone[i]) << "request " << i;
  }
  EXPECT_GT(preemptions, 0) << "the pool was meant to run out";
}

// Small prefill budgets cut the prompts into more, smaller chunks and hold some prompts in the
// queue: the tokens stay the same, and a budget above the step's is refused by name.
TEST(EngineTest, PrefillBudgetsKeepTheTokens) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p;
    for (int j = 0; j < 9 + 11 * i; ++j) p.push_back((29 * i + 13 * j + 5) % 2000);
    prompts.push_back(p);
  }
  std::vector<std::vector<int32_t>> tokens[2];
  for (const bool budgets : {false, true}) {
    EngineConfig config = DenseConfig("mistral-gqa");
    if (budgets) {
      config.max_prefill_tokens = 6;
      config.max_prefill_chunk = 4;
      config.max_num_partial_prefills = 1;
    }
    auto engine = MakeEngine(config);
    ASSERT_NE(engine, nullptr);
    std::vector<std::shared_ptr<CollectingSink>> sinks;
    for (const auto& p : prompts) {
      sinks.push_back(std::make_shared<CollectingSink>());
      ASSERT_TRUE(engine->Submit(Greedy(p, 6), sinks.back()).ok());
    }
    for (const auto& sink : sinks) {
      ASSERT_TRUE(sink->Wait().has_value());
      tokens[budgets].push_back(sink->tokens());
    }
  }
  EXPECT_EQ(tokens[0], tokens[1]);

  EngineConfig config = DenseConfig("mistral-gqa");
  config.max_prefill_tokens = config.max_num_batched_tokens + 1;
  const auto refused = Engine::Create(config, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("max_prefill_tokens"), absl::string_view::npos)
      << refused.status();
}

TEST(EngineTest, AbortEndsTheStreamAndFreesItsBlocks) {
  auto engine = MakeEngine(DenseConfig("llama2-mha"));
  ASSERT_NE(engine, nullptr);
  auto sink = std::make_shared<CollectingSink>();
  GenerationRequest r = Greedy({1, 5, 9, 13}, 200);
  r.id = "long";
  sink->HoldAfter(3);  // the engine waits after the third token until the abort is in
  ASSERT_TRUE(engine->Submit(r, sink).ok());
  ASSERT_TRUE(sink->WaitHeld());
  EXPECT_TRUE(engine->Abort("long"));
  sink->Release();
  auto done = sink->Wait();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->reason, FinishReason::kAbort);
  EXPECT_LT(sink->tokens().size(), 200u);
  EXPECT_FALSE(engine->Abort("long"));
  EXPECT_EQ(engine->num_live(), 0);
  // The whole pool is available again: a request needing every block is accepted and runs.
  auto big = std::make_shared<CollectingSink>();
  const absl::Status big_status = engine->Submit(Greedy({1, 2, 3}, 64 * 4 - 3), big);
  ASSERT_TRUE(big_status.ok()) << big_status;
  ASSERT_TRUE(big->Wait().has_value());
  EXPECT_EQ(big->completions(), 1);
}

TEST(EngineTest, StopStringsCutTheTextAndStopTokensEnd) {
  auto engine = MakeEngine(DenseConfig("llama31-bpe"));
  ASSERT_NE(engine, nullptr);
  const Tokenizer* tok = engine->tokenizer();
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> prompt = tok->Encode("The quick brown fox", true);
  auto free_run = std::make_shared<CollectingSink>();
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 24), free_run).ok());
  ASSERT_TRUE(free_run->Wait().has_value());
  const std::string full = free_run->text();
  const std::vector<int32_t> ids = free_run->tokens();
  ASSERT_GE(full.size(), 6u);
  // A stop string taken from the middle of the free-running text.
  const std::string stop = full.substr(full.size() / 2, 3);
  GenerationRequest with_stop = Greedy(prompt, 24);
  with_stop.stop = {stop};
  auto stopped = std::make_shared<CollectingSink>();
  ASSERT_TRUE(engine->Submit(with_stop, stopped).ok());
  auto done = stopped->Wait();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->reason, FinishReason::kStop);
  EXPECT_EQ(done->stop_reason, stop);
  EXPECT_EQ(stopped->text(), full.substr(0, full.find(stop)));
  // A stop token: the fifth generated token ends the stream and is included.
  GenerationRequest with_token = Greedy(prompt, 24);
  with_token.stop_token_ids = {ids[4]};
  auto token_stop = std::make_shared<CollectingSink>();
  ASSERT_TRUE(engine->Submit(with_token, token_stop).ok());
  done = token_stop->Wait();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->reason, FinishReason::kStop);
  const std::vector<int32_t> got = token_stop->tokens();
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back(), ids[4]);
  EXPECT_LE(got.size(), 5u);
}

TEST(EngineTest, PrefixCacheServesSharedPrompts) {
  auto engine = MakeEngine(DenseConfig("mistral-gqa"));
  ASSERT_NE(engine, nullptr);
  std::vector<int32_t> prompt;
  for (int j = 0; j < 30; ++j) prompt.push_back((7 * j + 11) % 1500);
  auto first = std::make_shared<CollectingSink>();
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 8), first).ok());
  ASSERT_TRUE(first->Wait().has_value());
  auto second = std::make_shared<CollectingSink>();
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 8), second).ok());
  auto done = second->Wait();
  ASSERT_TRUE(done.has_value());
  EXPECT_GE(done->cached_prompt_tokens, 24);  // full blocks of 4, the last token recomputed
  EXPECT_EQ(second->tokens(), first->tokens());
}

TEST(EngineTest, RejectsBadRequests) {
  EngineConfig config = DenseConfig("llama2-mha");
  config.max_waiting_requests = 2;
  auto engine = MakeEngine(config);
  ASSERT_NE(engine, nullptr);
  auto sink = std::make_shared<CollectingSink>();
  auto code = [&](GenerationRequest r) { return engine->Submit(std::move(r), sink).code(); };
  EXPECT_EQ(code(Greedy({}, 4)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy({1, 1000}, 4)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy({1, 2}, 0)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy({1, 2}, 4000)), absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_sampling = Greedy({1, 2}, 4);
  bad_sampling.sampling.top_p = 1.5f;
  const absl::Status s = engine->Submit(bad_sampling, sink);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("top_p"), absl::string_view::npos) << s;
  GenerationRequest dup = Greedy({1, 2}, 200);
  dup.id = "same";
  ASSERT_TRUE(engine->Submit(dup, std::make_shared<CollectingSink>()).ok());
  EXPECT_EQ(code(dup), absl::StatusCode::kAlreadyExists);
  engine->StopAdmitting();
  EXPECT_EQ(code(Greedy({1, 2}, 4)), absl::StatusCode::kUnavailable);
}

TEST(EngineTest, FullWaitingQueueIsResourceExhausted) {
  EngineConfig config = DenseConfig("llama2-mha");
  config.max_waiting_requests = 1;
  config.max_num_seqs = 1;
  auto engine = MakeEngine(config);
  ASSERT_NE(engine, nullptr);
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  int exhausted = 0;
  for (int i = 0; i < 6; ++i) {
    sinks.push_back(std::make_shared<CollectingSink>());
    const absl::Status s = engine->Submit(Greedy({1, 2, 3}, 100), sinks.back());
    if (s.code() == absl::StatusCode::kResourceExhausted) ++exhausted;
  }
  EXPECT_GT(exhausted, 0);
}

// The admission count is exact: requests that moved from the inbox into the scheduler still
// count as waiting during the step that follows (the count used to be refreshed only after each
// step, so a request submitted during that step saw an empty queue and overshot the limit).
TEST(EngineTest, WaitingQueueLimitIsExactDuringASteps) {
  EngineConfig config = DenseConfig("llama2-mha");
  config.max_waiting_requests = 2;
  config.max_num_seqs = 1;
  auto engine = MakeEngine(config);
  ASSERT_NE(engine, nullptr);
  auto running = std::make_shared<CollectingSink>();
  running->HoldAfter(2);
  ASSERT_TRUE(engine->Submit(Greedy({1, 2, 3}, 100), running).ok());
  ASSERT_TRUE(running->WaitHeld());
  // Held inside the step that made token 2: these two wait in the inbox.
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (int i = 0; i < 2; ++i) {
    sinks.push_back(std::make_shared<CollectingSink>());
    ASSERT_TRUE(engine->Submit(Greedy({1, 2, 3}, 4), sinks.back()).ok()) << i;
  }
  // The next step moves them into the scheduler (one sequence runs at a time, so they wait
  // there); hold inside it.
  running->HoldAfter(3);
  ASSERT_TRUE(running->WaitHeld());
  for (int i = 0; i < 3; ++i) {
    auto extra = std::make_shared<CollectingSink>();
    EXPECT_EQ(engine->Submit(Greedy({1, 2, 3}, 4), extra).code(),
              absl::StatusCode::kResourceExhausted)
        << "request " << i << " admitted past max_waiting_requests = 2";
  }
  running->Release();
  auto done = running->Wait();
  ASSERT_TRUE(done.has_value());
  for (auto& sink : sinks) ASSERT_TRUE(sink->Wait().has_value());
}

class FailureObserver : public EngineObserver {
 public:
  void OnStep(const StepStats&) override {}
  void OnTokens(int32_t, double) override {}
  void OnRequestFinished(const Completion&, double, double) override {}
  void OnEngineFailed(const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    failures_.push_back(status);
  }
  std::vector<absl::Status> failures() {
    std::lock_guard<std::mutex> lock(mu_);
    return failures_;
  }

 private:
  std::mutex mu_;
  std::vector<absl::Status> failures_;
};

// A SALS pool whose model has no calibration file does not start, and the error gives both ways
// forward: the sals-calibrate command for this model, or the dense format.
TEST(EngineTest, MissingCalibrationSaysHowToCalibrateOrServeDense) {
  testing::TempDir dir;
  for (const auto& entry : std::filesystem::directory_iterator(testing::FixtureDir("llama2-mha"))) {
    if (entry.path().filename() == "sals_calibration.safetensors") continue;
    std::filesystem::copy_file(entry.path(), dir / entry.path().filename().string());
  }
  EngineConfig config = DenseConfig("llama2-mha");
  config.model_path = dir.path().string();
  config.kv_format = "sals-25";
  for (const std::string& explicit_file :
       {std::string(), (dir / "elsewhere.safetensors").string()}) {
    config.calibration_file = explicit_file;
    auto model = LoadModel(config);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition) << model.status();
    const std::string message(model.status().message());
    EXPECT_NE(message.find("sals-calibrate --model " + dir.path().string() + " --data"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("kv_cache.format=dense"), std::string::npos) << message;
    EXPECT_EQ(message.find("--out") != std::string::npos, !explicit_file.empty()) << message;
  }
  // With the file back, the same configuration loads.
  std::filesystem::copy_file(testing::FixtureDir("llama2-mha") / "sals_calibration.safetensors",
                             dir / "sals_calibration.safetensors");
  config.calibration_file.clear();
  auto model = LoadModel(config);
  EXPECT_TRUE(model.ok()) << model.status();
}

// Per-KV-head selection is CPU-reference only: an engine on the CUDA backend refuses it by name,
// as its default policy at start-up and in a request; the CPU engine takes both.
TEST(EngineTest, PerKvHeadSelectionIsRefusedOnCudaByName) {
  EngineConfig config = DenseConfig("llama2-mha");
  config.kv_format = "sals-25";
  config.default_policy.sink_tokens = 4;
  config.default_policy.recent_tokens = 8;
  SalsPolicy per_head = config.default_policy;
  per_head.selection = SalsSelection::kPerKvHead;
  for (const std::string backend : {"cpu", "cuda"}) {
    SCOPED_TRACE(backend);
    config.backend = backend;
    // The model is loaded on the CPU: only the engine's own check is under test.
    EngineConfig cpu_load = config;
    cpu_load.backend = "cpu";
    config.default_policy.selection = SalsSelection::kPerKvHead;
    auto model = LoadModel(cpu_load);
    ASSERT_TRUE(model.ok()) << model.status();
    auto engine = Engine::Create(config, nullptr, std::move(*model));
    if (backend == "cuda") {
      ASSERT_FALSE(engine.ok());
      EXPECT_EQ(engine.status().code(), absl::StatusCode::kUnimplemented);
      EXPECT_NE(engine.status().message().find("per_kv_head"), absl::string_view::npos)
          << engine.status();
    } else {
      EXPECT_TRUE(engine.ok()) << engine.status();
    }
    config.default_policy.selection = SalsSelection::kShared;
    model = LoadModel(cpu_load);
    ASSERT_TRUE(model.ok()) << model.status();
    engine = Engine::Create(config, nullptr, std::move(*model));
    ASSERT_TRUE(engine.ok()) << engine.status();
    GenerationRequest request = Greedy({1, 2, 3}, 2);
    request.policy = per_head;
    const absl::Status submitted = (*engine)->Submit(request, std::make_shared<CollectingSink>());
    if (backend == "cuda") {
      EXPECT_EQ(submitted.code(), absl::StatusCode::kUnimplemented) << submitted;
      EXPECT_NE(submitted.message().find("per_kv_head"), absl::string_view::npos) << submitted;
    } else {
      EXPECT_TRUE(submitted.ok()) << submitted;
    }
  }
}

// A backend failure is not silent: requests in flight end with an Internal error naming it, the
// observer hears of it once, and the engine refuses new work as Unavailable.
TEST(EngineTest, BackendFailureEndsRequestsWithTheErrorAndStopsTheEngine) {
  const EngineConfig config = DenseConfig("llama2-mha");
  auto model = LoadModel(config);
  ASSERT_TRUE(model.ok()) << model.status();
  model->backend =
      std::make_unique<testing::FailingBackend>(std::move(model->backend), /*fail_at=*/4);
  auto observer = std::make_shared<FailureObserver>();
  auto engine = Engine::Create(config, observer, std::move(*model));
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<CollectingSink>());
    ASSERT_TRUE((*engine)->Submit(Greedy({1, 2, 3 + i}, 50), sinks.back()).ok());
  }
  for (auto& sink : sinks) {
    auto done = sink->Wait();
    ASSERT_TRUE(done.has_value());
    EXPECT_EQ(done->reason, FinishReason::kAbort);
    EXPECT_EQ(done->error.code(), absl::StatusCode::kInternal) << done->error;
    EXPECT_NE(done->error.message().find("injected device fault"), std::string::npos)
        << done->error;
    EXPECT_LT(sink->tokens().size(), 50u);
  }
  ASSERT_EQ(observer->failures().size(), 1u);
  EXPECT_NE(observer->failures()[0].message().find("injected device fault"), std::string::npos);
  EXPECT_FALSE((*engine)->failure().ok());
  auto late = std::make_shared<CollectingSink>();
  const absl::Status refused = (*engine)->Submit(Greedy({1, 2}, 4), late);
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_NE(refused.message().find("injected device fault"), std::string::npos) << refused;
  EXPECT_EQ((*engine)->num_live(), 0);
}

}  // namespace
}  // namespace sals
