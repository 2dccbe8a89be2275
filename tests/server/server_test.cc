// The server end to end over loopback gRPC on the fixture models (CPU backend).
#include "server/server.h"

#include <grpcpp/generic/generic_stub.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/request_mapping.h"
#include "tests/engine/runtime/failing_backend.h"
#include "tests/server/server_test_util.h"

namespace sals {
namespace {

using grpc::health::v1::HealthCheckResponse;
using testing::FetchMetrics;
using testing::GreedyIds;
using testing::ParseMetrics;
using testing::RunStream;
using testing::StreamResult;

ServerConfig TestConfig(const std::string& flavour) {
  ServerConfig c = DefaultServerConfig();
  c.engine.model_path = std::string(SALS_FIXTURES_DIR) + "/" + flavour;
  c.engine.kv_format = "dense";
  c.engine.block_size = 4;
  c.engine.num_blocks = 128;
  c.engine.max_num_seqs = 8;
  c.engine.max_num_batched_tokens = 64;
  c.listen = "127.0.0.1:0";
  c.metrics_listen = "127.0.0.1:0";
  return c;
}

// A SALS-25% pool on the GQA fixture (4 layers: layer 2 is sparse), short sink and recent windows
// so that the fixture's short prompts have a middle to select from.
ServerConfig SalsTestConfig() {
  ServerConfig c = TestConfig("mistral-gqa");
  c.engine.kv_format = "sals-25";
  c.engine.sink_tokens = 4;
  c.engine.recent_tokens = 8;
  c.engine.default_policy.sink_tokens = 4;
  c.engine.default_policy.recent_tokens = 8;
  return c;
}

class Server {
 public:
  explicit Server(ServerConfig config) : server_(std::move(config)) {}
  absl::Status Start() {
    absl::Status s = server_.Start();
    if (s.ok()) Connect();
    return s;
  }
  void Connect() {
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_.grpc_port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel_);
  }
  v1::Generation::Stub& stub() { return *stub_; }
  SalsServer& server() { return server_; }
  const std::shared_ptr<grpc::Channel>& channel() { return channel_; }
  std::map<std::string, double> Metrics() {
    std::map<std::string, double> m;
    EXPECT_TRUE(ParseMetrics(FetchMetrics(server_.metrics_port()), &m));
    return m;
  }
  // Waits until the pool holds no block and nothing runs or waits.
  bool WaitIdle() {
    for (int i = 0; i < 500; ++i) {
      auto m = Metrics();
      if (m["sals:kv_cache_usage_perc"] == 0 && m["sals:num_requests_running"] == 0 &&
          m["sals:num_requests_waiting"] == 0 && server_.engine()->num_live() == 0) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

 private:
  SalsServer server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

std::vector<uint32_t> Prompt(int seed, int length, uint32_t vocab) {
  std::vector<uint32_t> p;
  for (int j = 0; j < length; ++j) p.push_back((31u * seed + 17u * j + 3u) % vocab);
  return p;
}

TEST(ServerTest, HealthServesAfterLoadAndDrainsOnShutdown) {
  Server s(TestConfig("llama2-mha"));
  ASSERT_TRUE(s.server().Listen().ok());
  s.Connect();
  EXPECT_EQ(testing::Health(s.channel()), HealthCheckResponse::NOT_SERVING);
  StreamResult early = RunStream(s.stub(), GreedyIds({1, 2, 3}, 2));
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(s.server().Load().ok());
  EXPECT_EQ(testing::Health(s.channel()), HealthCheckResponse::SERVING);

  // A long stream in flight while the drain starts finishes normally; new ones are refused.
  std::atomic<bool> first_chunk{false};
  StreamResult in_flight;
  std::thread client([&] {
    in_flight =
        RunStream(s.stub(), GreedyIds({1, 5, 9}, 300), std::chrono::seconds(120),
                  [&](grpc::ClientContext&, const v1::GenerateChunk&) { first_chunk = true; });
  });
  EXPECT_TRUE(testing::WaitUntil([&] { return first_chunk.load(); }));
  int cut = -1;
  std::thread drain([&] { cut = s.server().Drain(absl::Seconds(60)); });
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return testing::Health(s.channel()) != HealthCheckResponse::SERVING; }));
  StreamResult refused = RunStream(s.stub(), GreedyIds({1, 2}, 2));
  EXPECT_FALSE(refused.status.ok());
  client.join();
  drain.join();
  EXPECT_TRUE(in_flight.status.ok()) << in_flight.status.error_message();
  EXPECT_EQ(in_flight.complete.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(in_flight.tokens.size(), 300u);
  EXPECT_EQ(cut, 0);
}

TEST(ServerTest, ConcurrentStreamsGiveWhatEachGivesAlone) {
  ServerConfig config = TestConfig("mistral-gqa");
  config.engine.num_blocks = 2100;  // 8400 tokens: two 4K contexts
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  constexpr int kStreams = 12;
  std::vector<StreamResult> alone(kStreams), together(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    alone[i] = RunStream(s.stub(), GreedyIds(Prompt(i, 3 + 5 * i, 1500), 5 + 3 * i));
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
  }
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([&, i] {
      together[i] = RunStream(s.stub(), GreedyIds(Prompt(i, 3 + 5 * i, 1500), 5 + 3 * i));
    });
  }
  for (auto& t : clients) t.join();
  uint64_t prompt_tokens = 0, completion_tokens = 0;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(together[i].status.ok());
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "stream " << i;
    EXPECT_EQ(together[i].complete.usage().completion_tokens(), 5u + 3 * i);
    for (const StreamResult* r : {&alone[i], &together[i]}) {
      prompt_tokens += r->complete.usage().prompt_tokens();
      completion_tokens += r->complete.usage().completion_tokens();
    }
  }
  // The metrics page parses and counts exactly what was served (plus the warm-up: 8 + 4).
  ASSERT_TRUE(s.WaitIdle());
  auto m = s.Metrics();
  EXPECT_EQ(m["sals:generation_tokens_total"], completion_tokens + 4);
  EXPECT_EQ(m["sals:prompt_tokens_total"], prompt_tokens + 8);
  EXPECT_EQ(m["sals:request_success_total{finished_reason=\"length\"}"], 2 * kStreams + 1);
  EXPECT_EQ(m["sals:time_to_first_token_seconds_count"], 2 * kStreams + 1);
  // Idle, the whole pool is free (cached prefixes are evictable): the gauges say what
  // GetModelInfo says the pool holds, which is two 4K contexts and no 32K one.
  v1::GetModelInfoResponse info;
  grpc::ClientContext context;
  ASSERT_TRUE(s.stub().GetModelInfo(&context, {}, &info).ok());
  ASSERT_EQ(info.kv_cache().contexts_4k(), 2u);
  for (const auto& [context_len, want] :
       std::vector<std::pair<std::string, uint64_t>>{{"4096", info.kv_cache().contexts_4k()},
                                                     {"32768", info.kv_cache().contexts_32k()},
                                                     {"131072", info.kv_cache().contexts_128k()}}) {
    const std::string key = "sals:kv_cache_contexts_fit{context=\"" + context_len + "\"}";
    ASSERT_TRUE(m.contains(key)) << key << " is not exported";
    EXPECT_EQ(m.at(key), static_cast<double>(want)) << key;
  }
}

TEST(ServerTest, CancelAndDeadlineFreeEveryBlock) {
  // One sequence at a time, so a request queued behind long ones waits as long as they run.
  ServerConfig config = TestConfig("llama2-mha");
  config.engine.max_num_seqs = 1;
  config.engine.num_blocks = 512;
  Server s(std::move(config));
  ASSERT_TRUE(s.Start().ok());
  // Cancelled at its first chunk, long before its 1500th token.
  StreamResult cancelled = RunStream(
      s.stub(), GreedyIds({1, 5, 9, 13}, 1500), std::chrono::seconds(60),
      [](grpc::ClientContext& context, const v1::GenerateChunk&) { context.TryCancel(); });
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(cancelled.tokens.size(), 1500u);
  EXPECT_TRUE(s.WaitIdle()) << "cancel left blocks or a live request behind";

  // The deadline must fall while the request is in the engine whatever the machine's speed: it
  // waits behind three 1500-token requests (thousands of decode steps) that are cancelled once
  // it has its status.
  constexpr int kBlockers = 3;
  std::atomic<bool> release{false};
  std::vector<StreamResult> blockers(kBlockers);
  std::vector<std::thread> blocker_clients;
  for (int i = 0; i < kBlockers; ++i) {
    blocker_clients.emplace_back([&, i] {
      blockers[i] =
          RunStream(s.stub(), GreedyIds(Prompt(i, 4, 1000), 1500), std::chrono::seconds(120),
                    [&](grpc::ClientContext& context, const v1::GenerateChunk&) {
                      if (release) context.TryCancel();
                    });
    });
  }
  EXPECT_TRUE(testing::WaitUntil([&] { return s.server().engine()->num_live() >= kBlockers; }));
  StreamResult late =
      RunStream(s.stub(), GreedyIds({1, 5, 9, 13}, 400), std::chrono::milliseconds(30));
  release = true;
  for (auto& t : blocker_clients) t.join();
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(late.tokens.empty()) << "the late request ran before the ones it queued behind";
  int cancelled_blockers = 0;
  for (const StreamResult& b : blockers) {
    if (b.status.error_code() == grpc::StatusCode::CANCELLED) ++cancelled_blockers;
  }
  EXPECT_EQ(cancelled_blockers, kBlockers) << "a blocker ran to its end: the premise failed";
  EXPECT_TRUE(s.WaitIdle()) << "a deadline left blocks or a live request behind";
  auto m = s.Metrics();
  EXPECT_EQ(m["sals:request_success_total{finished_reason=\"abort\"}"], 2 + cancelled_blockers);
  // Abort by id of a request that is not running.
  v1::AbortRequest abort;
  abort.set_request_id("nope");
  v1::AbortResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(s.stub().Abort(&context, abort, &response).ok());
  EXPECT_FALSE(response.found());
  abort.set_request_id("\xff");
  grpc::ClientContext bad_context;
  const grpc::Status bad = s.stub().Abort(&bad_context, abort, &response);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("sals.v1.AbortRequest"), std::string::npos)
      << bad.error_message();
}

TEST(ServerTest, MoreLongRequestsThanThePoolHoldsAllComplete) {
  ServerConfig config = TestConfig("llama31-bpe");
  config.engine.num_blocks = 40;  // 160 tokens; six requests of ~75 tokens each
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  std::vector<StreamResult> alone(6), together(6);
  for (int i = 0; i < 6; ++i) alone[i] = RunStream(s.stub(), GreedyIds(Prompt(i, 15, 2000), 60));
  std::vector<std::thread> clients;
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back(
        [&, i] { together[i] = RunStream(s.stub(), GreedyIds(Prompt(i, 15, 2000), 60)); });
  }
  for (auto& t : clients) t.join();
  uint32_t preemptions = 0;
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    preemptions += together[i].complete.timings().preemptions();
  }
  EXPECT_GT(preemptions, 0u);
  EXPECT_GT(s.Metrics()["sals:num_preemptions_total"], 0);
}

TEST(ServerTest, BadInputGetsInvalidArgumentNamingTheField) {
  ServerConfig config = TestConfig("llama31-bpe");
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  auto expect_invalid = [&](const v1::GenerateRequest& r, const std::string& field) {
    StreamResult result = RunStream(s.stub(), r);
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_NE(result.status.error_message().find(field), std::string::npos)
        << result.status.error_message() << " should name " << field;
  };
  expect_invalid(v1::GenerateRequest(), "prompt");
  v1::GenerateRequest r = GreedyIds({}, 4);
  expect_invalid(r, "token_ids");
  r = GreedyIds({1, 2}, 4);
  r.set_text("");
  expect_invalid(r, "text");
  expect_invalid(GreedyIds({1, 5000}, 4), "vocabulary");
  expect_invalid(GreedyIds({1, 2}, 100000), "max_tokens");
  r = GreedyIds({1, 2}, 4);
  r.set_text("caf\xc3");  // protobuf refuses to parse it: gRPC alone would say UNIMPLEMENTED
  expect_invalid(r, "UTF-8");
  r = GreedyIds({1, 2}, 4);
  r.mutable_sampling()->add_stop("\xff");
  expect_invalid(r, "UTF-8");
  r = GreedyIds({1, 2}, 4);
  for (int i = 0; i < 65; ++i) r.mutable_sampling()->add_stop(absl::StrCat("s", i));
  expect_invalid(r, "stop: 65 strings, at most 64");
  r = GreedyIds({1, 2}, 4);
  r.mutable_sampling()->add_stop("fine");
  r.mutable_sampling()->add_stop(std::string(1025, 'x'));
  expect_invalid(r, "stop: string 1 has 1025 bytes");
  r = GreedyIds({1, 2}, 4);
  for (int i = 0; i < 1025; ++i) r.mutable_sampling()->add_stop_token_ids(1);
  expect_invalid(r, "stop_token_ids: 1025 ids");
  r = GreedyIds({1, 2}, 4);
  r.mutable_sampling()->set_top_p(1.5f);
  expect_invalid(r, "top_p");
  r = GreedyIds({1, 2}, 4);
  r.mutable_sampling()->set_temperature(-1.0f);
  expect_invalid(r, "temperature");
  r = GreedyIds({1, 2}, 4);
  r.mutable_sampling()->set_max_tokens(0);
  expect_invalid(r, "max_tokens");
  r = GreedyIds({1, 2}, 4);
  r.mutable_attention()->set_preset(static_cast<v1::AttentionPolicy::Preset>(42));
  expect_invalid(r, "attention.preset");
  r = GreedyIds({1, 2}, 4);
  r.mutable_attention()->set_preset(v1::AttentionPolicy::PRESET_SALS_12_5);
  expect_invalid(r, "attention");  // this server's pool is dense
  // The server is unharmed: a good request still works.
  StreamResult ok = RunStream(s.stub(), GreedyIds({1, 2, 3}, 3));
  EXPECT_TRUE(ok.status.ok());
  EXPECT_EQ(ok.tokens.size(), 3u);
}

// Random requests, many of them malformed in every field at once (NaN, infinities, negative and
// huge values, bad UTF-8, ids past the vocabulary, duplicate request ids), from several clients at
// once against a SALS pool: each gets a result or a clear refusal, never an internal error, and
// the server ends idle and still serves.
TEST(ServerTest, RandomMalformedRequestsGetResultsOrClearRefusals) {
  Server s(SalsTestConfig());
  ASSERT_TRUE(s.Start().ok());
  v1::GetModelInfoResponse info;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(s.stub().GetModelInfo(&context, {}, &info).ok());
  }
  const uint32_t vocab = info.vocab_size();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  constexpr int kClients = 4;
  constexpr int kPerClient = 60;
  std::atomic<int> ok{0}, refused{0};
  std::vector<std::string> failures(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(1000 + c);
      auto pick = [&rng](auto values) {
        return values[std::uniform_int_distribution<size_t>(0, values.size() - 1)(rng)];
      };
      auto chance = [&rng](double p) { return std::bernoulli_distribution(p)(rng); };
      // A good value, or now and then (so that a fair share of requests is valid) a bad one.
      auto either = [&](auto good, decltype(good) bad) {
        return chance(0.06) ? pick(bad) : pick(good);
      };
      using F = std::vector<float>;
      using U = std::vector<uint32_t>;
      for (int i = 0; i < kPerClient; ++i) {
        v1::GenerateRequest r;
        if (chance(0.5)) r.set_request_id("id-" + std::to_string(rng() % 40));
        if (chance(0.4)) {
          r.set_text(either(std::vector<std::string>{"Hello there, friend.", std::string(300, 'a'),
                                                     "caf\xc3\xa9 \xe2\x82\xac", "\n\t "},
                            std::vector<std::string>{"", "\xff\xfe\xfd", "caf\xc3"}));
        } else if (!chance(0.04)) {  // else no prompt at all
          const int n = chance(0.04) ? 0 : 1 + static_cast<int>(rng() % 12);
          for (int j = 0; j < n; ++j) {
            r.mutable_token_ids()->add_ids(chance(0.01) ? vocab + rng() % 5 : rng() % vocab);
          }
        }
        v1::SamplingParams& p = *r.mutable_sampling();
        p.set_max_tokens(either(U{1, 3, 8}, U{0, 100000}));
        if (chance(0.5)) p.set_temperature(either(F{0, 0.7f, 1, 100}, F{-1, nan, inf}));
        if (chance(0.4)) p.set_top_k(either(std::vector<int32_t>{-1, 0, 1, 3, 1000000}, {-5}));
        if (chance(0.4)) p.set_top_p(either(F{1e-9f, 0.5f, 1}, F{0, 1.5f, nan}));
        if (chance(0.3)) p.set_min_p(either(F{0, 0.3f, 1}, F{-0.1f, 2, nan}));
        if (chance(0.3)) p.set_repetition_penalty(either(F{0.5f, 1, 2}, F{0, -1, nan, inf}));
        if (chance(0.3)) p.set_frequency_penalty(either(F{-2, 0, 2}, F{-3, 3, nan}));
        if (chance(0.3)) p.set_presence_penalty(either(F{-2, 0, 1.5f}, F{-3, inf}));
        if (chance(0.5)) p.set_seed(rng());
        if (chance(0.3)) {
          p.add_stop(either(std::vector<std::string>{"a", " the", "\xc3\xa9"},
                            std::vector<std::string>{"", "\xff"}));
        }
        if (chance(0.2))
          p.add_stop_token_ids(either(U{static_cast<uint32_t>(rng() % vocab)}, U{vocab + 7}));
        p.set_ignore_eos(chance(0.5));
        if (chance(0.3)) p.set_logprobs(either(U{0, 1, 5, 20}, U{21, 1000}));
        if (chance(0.5)) {
          v1::AttentionPolicy& a = *r.mutable_attention();
          a.set_preset(either(
              std::vector<v1::AttentionPolicy::Preset>{
                  v1::AttentionPolicy::PRESET_UNSPECIFIED, v1::AttentionPolicy::PRESET_DENSE,
                  v1::AttentionPolicy::PRESET_SALS_25, v1::AttentionPolicy::PRESET_SALS_12_5},
              {static_cast<v1::AttentionPolicy::Preset>(42)}));
          if (chance(0.3))
            a.set_topk_fraction(either(std::vector<double>{0.1, 0.5, 1}, {-1, 0, 2, nan}));
          if (chance(0.3)) a.set_token_budget(either(U{1, 5, 1000000000}, U{0}));
          if (chance(0.3)) a.set_sink_tokens(either(U{0, 1, 4}, U{1000}));
          if (chance(0.3)) a.set_recent_tokens(either(U{1, 8}, U{0, 1000}));
        }
        const StreamResult result = RunStream(s.stub(), r);
        const grpc::StatusCode code = result.status.error_code();
        const std::string where = "client " + std::to_string(c) + " request " + std::to_string(i);
        if (code == grpc::StatusCode::OK) {
          ++ok;
          if (!result.has_complete || result.tokens.size() > p.max_tokens()) {
            failures[c] += where + ": OK without a completion or past max_tokens\n";
          }
        } else if (code == grpc::StatusCode::INVALID_ARGUMENT ||
                   code == grpc::StatusCode::ALREADY_EXISTS) {
          ++refused;
          if (result.status.error_message().empty()) failures[c] += where + ": no message\n";
        } else {
          failures[c] += where + ": status " + std::to_string(code) + " " +
                         result.status.error_message() + " for " + r.ShortDebugString() + "\n";
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  for (const std::string& f : failures) EXPECT_TRUE(f.empty()) << f;
  std::printf("%d served, %d refused\n", ok.load(), refused.load());
  // Both kinds of outcome occurred, so the mix exercised the paths it claims to.
  EXPECT_GT(ok.load(), kClients * kPerClient / 10);
  EXPECT_GT(refused.load(), kClients * kPerClient / 10);
  EXPECT_TRUE(s.WaitIdle()) << "requests left blocks or live requests behind";
  StreamResult good = RunStream(s.stub(), GreedyIds({1, 2, 3}, 3));
  EXPECT_TRUE(good.status.ok()) << good.status.error_message();
  EXPECT_EQ(good.tokens.size(), 3u);
}

TEST(ServerTest, FullWaitingQueueIsResourceExhausted) {
  ServerConfig config = TestConfig("llama2-mha");
  config.engine.max_num_seqs = 1;
  config.engine.max_waiting_requests = 1;
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  std::vector<StreamResult> results(8);
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] { results[i] = RunStream(s.stub(), GreedyIds({1, 2, 3}, 80)); });
  }
  for (auto& t : clients) t.join();
  int exhausted = 0, ok = 0;
  for (const StreamResult& r : results) {
    exhausted += r.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    ok += r.status.ok();
  }
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(exhausted + ok, 8);
}

TEST(ServerTest, SharedPrefixIsServedFromCachedBlocks) {
  Server s(TestConfig("mistral-gqa"));
  ASSERT_TRUE(s.Start().ok());
  const std::vector<uint32_t> prompt = Prompt(3, 41, 1500);
  StreamResult first = RunStream(s.stub(), GreedyIds(prompt, 6));
  StreamResult second = RunStream(s.stub(), GreedyIds(prompt, 6));
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(first.complete.usage().cached_prompt_tokens(), 0u);
  EXPECT_EQ(second.complete.usage().cached_prompt_tokens(), 40u);  // full blocks of 4, last kept
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_GE(s.Metrics()["sals:prefix_cache_hits_total"], 40);
}

TEST(ServerTest, SalsPoolServesTextAndReusesPrefixes) {
  Server s(SalsTestConfig());
  ASSERT_TRUE(s.Start().ok()) << "SALS server";
  v1::GetModelInfoResponse info;
  grpc::ClientContext context;
  ASSERT_TRUE(s.stub().GetModelInfo(&context, {}, &info).ok());
  EXPECT_EQ(info.kv_cache().format(), "sals");
  EXPECT_EQ(info.kv_cache().latent_rank(), 6u);
  EXPECT_LT(info.kv_cache().bytes_per_token(), info.kv_cache().dense_fp16_bytes_per_token());
  v1::GenerateRequest r;
  r.set_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on.");
  r.mutable_sampling()->set_max_tokens(24);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_ignore_eos(true);
  StreamResult first = RunStream(s.stub(), r);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.tokens.size(), 24u);
  StreamResult second = RunStream(s.stub(), r);
  ASSERT_TRUE(second.status.ok());
  EXPECT_GT(second.complete.usage().cached_prompt_tokens(), 0u);
  r.mutable_attention()->set_preset(v1::AttentionPolicy::PRESET_SALS_12_5);
  r.mutable_attention()->set_token_budget(2);
  StreamResult sparse = RunStream(s.stub(), r);
  EXPECT_TRUE(sparse.status.ok()) << sparse.status.error_message();
  EXPECT_TRUE(s.WaitIdle());
  // Selection statistics: the sparse layer's decode steps attended part of their context.
  auto m = s.Metrics();
  EXPECT_GT(m["sals:sals_cached_tokens_total"], 0);
  EXPECT_GT(m["sals:sals_attended_tokens_total"], 0);
  EXPECT_LT(m["sals:sals_attended_tokens_total"], m["sals:sals_cached_tokens_total"]);
}

TEST(ServerTest, ReproducibleRequestsBypassThePrefixCacheOnSalsPools) {
  Server s(SalsTestConfig());
  ASSERT_TRUE(s.Start().ok()) << "SALS server";
  v1::GenerateRequest r;
  r.set_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on the porch.");
  r.mutable_sampling()->set_max_tokens(8);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_ignore_eos(true);
  r.set_reproducible(true);
  const StreamResult first = RunStream(s.stub(), r);
  const StreamResult again = RunStream(s.stub(), r);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.complete.usage().cached_prompt_tokens(), 0u);
  EXPECT_EQ(again.tokens, first.tokens);
  // The same prompt without the option is served from the blocks the first two left behind.
  r.set_reproducible(false);
  const StreamResult cached = RunStream(s.stub(), r);
  ASSERT_TRUE(cached.status.ok());
  EXPECT_GT(cached.complete.usage().cached_prompt_tokens(), 0u);

  // The prompt must fit one step (max_num_batched_tokens 64).
  v1::GenerateRequest big = GreedyIds(Prompt(5, 65, 1500), 2);
  big.set_reproducible(true);
  const StreamResult refused = RunStream(s.stub(), big);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("reproducible"), std::string::npos)
      << refused.status.error_message();
  big.set_reproducible(false);
  EXPECT_TRUE(RunStream(s.stub(), big).status.ok());
}

// Channels with connections of their own (gRPC otherwise shares one between channels to the
// same address): two of them are two clients.
std::shared_ptr<grpc::Channel> OwnChannel(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials(), args);
}

bool AbortFound(v1::Generation::Stub& stub, const std::string& id) {
  v1::AbortRequest abort;
  abort.set_request_id(id);
  v1::AbortResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub.Abort(&context, abort, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.found();
}

// Ids the server makes are random; ids clients choose live in each client's namespace, so a
// client can neither take another's id (ALREADY_EXISTS) nor abort another's request.
TEST(ServerTest, RequestIdsAreUnguessableAndPerClient) {
  ServerConfig config = TestConfig("llama2-mha");
  config.engine.num_blocks = 1024;  // two 1500-token requests at once
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  auto channel_a = OwnChannel(s.server().grpc_port());
  auto channel_b = OwnChannel(s.server().grpc_port());
  auto a = v1::Generation::NewStub(channel_a);
  auto b = v1::Generation::NewStub(channel_b);

  // Server-made ids: 128 random bits as hex, no two alike, nothing like a counter.
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    StreamResult r = RunStream(*a, GreedyIds({1, 2, 3}, 2));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ASSERT_EQ(r.request_id.size(), 32u) << r.request_id;
    EXPECT_EQ(r.request_id.find_first_not_of("0123456789abcdef"), std::string::npos);
    for (const std::string& other : ids) EXPECT_NE(r.request_id, other);
    ids.push_back(r.request_id);
  }

  // A runs "job" (held up until it is aborted); B uses the same id freely.
  std::atomic<bool> a_started{false};
  StreamResult a_result;
  v1::GenerateRequest a_request = GreedyIds({1, 5, 9}, 1500);
  a_request.set_request_id("job");
  std::thread a_client([&] {
    a_result = RunStream(*a, a_request, std::chrono::seconds(120),
                         [&](grpc::ClientContext&, const v1::GenerateChunk&) { a_started = true; });
  });
  ASSERT_TRUE(testing::WaitUntil([&] { return a_started.load(); }));
  v1::GenerateRequest b_request = GreedyIds({2, 4}, 3);
  b_request.set_request_id("job");
  StreamResult b_result = RunStream(*b, b_request);
  EXPECT_TRUE(b_result.status.ok()) << b_result.status.error_message();
  EXPECT_EQ(b_result.request_id, "job");
  // B's abort of "job" does not reach A's; A's does.
  EXPECT_FALSE(AbortFound(*b, "job"));
  EXPECT_TRUE(AbortFound(*a, "job"));
  a_client.join();
  EXPECT_TRUE(a_result.status.ok()) << a_result.status.error_message();
  EXPECT_EQ(a_result.complete.finish_reason(), v1::FINISH_REASON_ABORT);
  EXPECT_LT(a_result.tokens.size(), 1500u);

  // Nor can B abort a request whose id the server made for A.
  std::atomic<bool> c_started{false};
  StreamResult c_result;
  std::string c_id;
  std::mutex c_mu;
  std::thread c_client([&] {
    c_result = RunStream(*a, GreedyIds({3, 6, 9}, 1500), std::chrono::seconds(120),
                         [&](grpc::ClientContext& context, const v1::GenerateChunk&) {
                           c_started = true;
                           std::lock_guard<std::mutex> lock(c_mu);
                           if (c_id == "cancel") context.TryCancel();
                         });
  });
  ASSERT_TRUE(testing::WaitUntil([&] { return c_started.load(); }));
  for (const std::string& id : ids) EXPECT_FALSE(AbortFound(*b, id));
  {
    std::lock_guard<std::mutex> lock(c_mu);
    c_id = "cancel";
  }
  c_client.join();
  EXPECT_EQ(c_result.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(s.WaitIdle());
}

// request_id is bounded and sent once, in the stream's first message, not with every chunk.
TEST(ServerTest, RequestIdIsBoundedAndSentOnce) {
  Server s(TestConfig("llama2-mha"));
  ASSERT_TRUE(s.Start().ok());
  v1::GenerateRequest r = GreedyIds({1, 2, 3}, 20);
  r.set_request_id(std::string(129, 'x'));
  StreamResult too_long = RunStream(s.stub(), r);
  EXPECT_EQ(too_long.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_long.status.error_message().find("request_id: 129 bytes, at most 128"),
            std::string::npos)
      << too_long.status.error_message();
  r.set_request_id(std::string(128, 'y'));
  StreamResult ok = RunStream(s.stub(), r);
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.request_id, std::string(128, 'y'));
  EXPECT_EQ(ok.messages_with_id, 1) << "of " << ok.chunks << " chunks and the completion";
}

// A text prompt longer than the context could ever hold is refused before tokenizing, naming
// the limit in bytes.
TEST(ServerTest, OversizedTextIsRefusedUnread) {
  Server s(TestConfig("llama31-bpe"));
  ASSERT_TRUE(s.Start().ok());
  const int64_t limit = MaxTextBytes(s.server().engine()->info());
  ASSERT_GT(limit, 0);
  EXPECT_GE(s.server().engine()->info().max_token_bytes, 1);
  v1::GenerateRequest r = GreedyIds({}, 4);
  r.set_text(std::string(limit + 1, 'a'));
  StreamResult refused = RunStream(s.stub(), r);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find(
                absl::StrCat("text: ", limit + 1, " bytes, at most ", limit)),
            std::string::npos)
      << refused.status.error_message();
  // Within the byte bound but past the context in tokens: refused once tokenizing passes it.
  const int max_len = s.server().engine()->info().max_model_len;
  std::string words;
  for (int i = 0; i < max_len + 50; ++i) words += " hello";
  ASSERT_LE(static_cast<int64_t>(words.size()), limit);
  r.set_text(words);
  StreamResult too_many = RunStream(s.stub(), r);
  EXPECT_EQ(too_many.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_many.status.error_message().find(absl::StrCat("text: more than ", max_len)),
            std::string::npos)
      << too_many.status.error_message();
  v1::GenerateRequest fits = GreedyIds({}, 2);
  fits.set_text("Hello there.");
  StreamResult served = RunStream(s.stub(), fits);
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
}

// Calls the client gave up on before the handler read them are not client errors.
TEST(ServerTest, DeadlineBeforeTheRequestIsReadIsNoInvalidArgument) {
  Server s(TestConfig("llama2-mha"));
  ASSERT_TRUE(s.Start().ok());
  // The call's headers go out, its message never does: the deadline passes before the server
  // has a request to read.
  grpc::GenericStub generic(s.channel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&context, "/sals.v1.Generation/Generate", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(2));
  void* tag = nullptr;
  bool ok = false;
  bool finished = false;
  while (!finished && cq.Next(&tag, &ok)) finished = tag == reinterpret_cast<void*>(2);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  const std::string invalid = "sals:request_rejected_total{code=\"INVALID_ARGUMENT\"}";
  const std::string deadline = "sals:request_rejected_total{code=\"DEADLINE_EXCEEDED\"}";
  const std::string cancelled = "sals:request_rejected_total{code=\"CANCELLED\"}";
  // The server sees the deadline pass, or the client's cancel that follows it: either is right.
  EXPECT_TRUE(testing::WaitUntil(
      [&] {
        auto m = s.Metrics();
        return m[deadline] + m[cancelled] + m[invalid] >= 1;
      },
      std::chrono::seconds(20)))
      << "the handler never ran: the test's premise failed";
  EXPECT_EQ(s.Metrics()[invalid], 0);
}

// GetModelInfo parses its own request like Generate and Abort; messages show the value sent;
// a request protobuf rejects writes nothing to stderr.
TEST(ServerTest, ErrorsShowWhatWasSentAndLogNothingPerRequest) {
  Server s(TestConfig("llama31-bpe"));
  ASSERT_TRUE(s.Start().ok());
  {
    grpc::GenericStub generic(s.channel());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    const std::string garbage = "\x0a\x05\xff";  // a field cut short
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::Status status;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    generic.UnaryCall(&context, "/sals.v1.Generation/GetModelInfo", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status st) {
                        std::lock_guard<std::mutex> lock(mu);
                        status = st;
                        done = true;
                        cv.notify_all();
                      });
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return done; }));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("sals.v1.GetModelInfoRequest"), std::string::npos)
        << status.error_message();
  }
  auto expect_message = [&](const v1::GenerateRequest& r, const std::string& text) {
    StreamResult result = RunStream(s.stub(), r);
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << text;
    EXPECT_NE(result.status.error_message().find(text), std::string::npos)
        << result.status.error_message() << " should say " << text;
  };
  expect_message(GreedyIds({1, 4294967295u}, 4), "4294967295");
  v1::GenerateRequest r = GreedyIds({1, 2}, 4);
  r.mutable_sampling()->add_stop_token_ids(4294967295u);
  expect_message(r, "4294967295");
  expect_message(GreedyIds({1, 2}, 4294967295u), "4294967295");
  r = GreedyIds({1, 2}, 4);
  r.mutable_sampling()->set_logprobs(4294967295u);
  expect_message(r, "4294967295");

  ::testing::internal::CaptureStderr();
  r = GreedyIds({1, 2}, 4);
  r.set_text("caf\xc3");
  StreamResult bad = RunStream(s.stub(), r);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(err.find("libprotobuf"), std::string::npos) << err;
  EXPECT_EQ(err.find("UTF-8"), std::string::npos) << err;
}

// The Generation service's own health name answers like the server as a whole.
TEST(ServerTest, HealthOfTheGenerationServiceIsTheServers) {
  Server s(TestConfig("llama2-mha"));
  ASSERT_TRUE(s.server().Listen().ok());
  s.Connect();
  EXPECT_EQ(testing::Health(s.channel(), "sals.v1.Generation"), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(s.server().Load().ok());
  EXPECT_EQ(testing::Health(s.channel(), "sals.v1.Generation"), HealthCheckResponse::SERVING);
  EXPECT_EQ(testing::Health(s.channel(), ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(testing::Health(s.channel(), "no.such.Service"), HealthCheckResponse::SERVICE_UNKNOWN);
  s.server().Drain(absl::ZeroDuration());
}

// A backend failure is logged, ends the streams in flight with INTERNAL, refuses later ones
// with UNAVAILABLE and turns health NOT_SERVING (for good: the pod should be restarted).
TEST(ServerTest, BackendFailureEndsStreamsWithAnErrorAndHealthNotServing) {
  testing::FailingBackend* backend = nullptr;
  SalsServer server(
      TestConfig("llama2-mha"),
      [&](const EngineConfig& config,
          std::shared_ptr<EngineObserver> observer) -> absl::StatusOr<std::unique_ptr<Engine>> {
        auto model = LoadModel(config);
        if (!model.ok()) return model.status();
        auto failing =
            std::make_unique<testing::FailingBackend>(std::move(model->backend), /*fail_at=*/0);
        backend = failing.get();
        model->backend = std::move(failing);
        return Engine::Create(config, std::move(observer), std::move(*model));
      });
  ASSERT_TRUE(server.Start().ok());
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server.grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  ASSERT_EQ(testing::Health(channel), HealthCheckResponse::SERVING);
  ASSERT_NE(backend, nullptr);
  // The backend fails from the next step on: the next request is in flight when it does.
  StreamResult in_flight;
  ::testing::internal::CaptureStderr();
  backend->FailNow();
  std::thread client([&] { in_flight = RunStream(*stub, GreedyIds({1, 5, 9}, 400)); });
  client.join();
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return testing::Health(channel) == HealthCheckResponse::NOT_SERVING; }));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(in_flight.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(in_flight.status.error_message().find("injected device fault"), std::string::npos)
      << in_flight.status.error_message();
  EXPECT_FALSE(in_flight.has_complete);
  EXPECT_NE(log.find("ERROR"), std::string::npos) << log;
  EXPECT_NE(log.find("injected device fault"), std::string::npos) << log;
  EXPECT_EQ(testing::Health(channel, "sals.v1.Generation"), HealthCheckResponse::NOT_SERVING);
  StreamResult later = RunStream(*stub, GreedyIds({1, 2}, 2));
  EXPECT_EQ(later.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

// A connection to the metrics port that says nothing (half-open, or a slow scraper).
int OpenSilentConnection(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

// Silent connections hold an HTTP worker each until the request timeout: with workers to spare,
// or with every worker held, /metrics still answers (it used to wait 30 s with two).
TEST(ServerTest, SilentMetricsConnectionsDoNotBlockMetrics) {
  ServerConfig config = TestConfig("llama2-mha");
  config.metrics_threads = 2;
  config.metrics_request_timeout_ms = 300;
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  std::vector<int> silent;
  for (int i = 0; i < 4; ++i) silent.push_back(OpenSilentConnection(s.server().metrics_port()));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let the workers take them
  const std::string page = FetchMetrics(s.server().metrics_port(), std::chrono::seconds(15));
  EXPECT_NE(page.find("sals:num_requests_running"), std::string::npos)
      << "no /metrics within 15 s while silent connections were open";
  for (int fd : silent) close(fd);

  ServerConfig many = TestConfig("llama2-mha");
  many.metrics_threads = 6;
  many.metrics_request_timeout_ms = 120000;  // they are never dropped: spare workers answer
  Server t(many);
  ASSERT_TRUE(t.Start().ok());
  silent.clear();
  for (int i = 0; i < 4; ++i) silent.push_back(OpenSilentConnection(t.server().metrics_port()));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string page2 = FetchMetrics(t.server().metrics_port(), std::chrono::seconds(15));
  EXPECT_NE(page2.find("sals:num_requests_running"), std::string::npos)
      << "no /metrics within 15 s with 4 silent connections and 6 workers";
  for (int fd : silent) close(fd);
}

std::string WriteTempFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "w");
  EXPECT_NE(f, nullptr) << path;
  if (f != nullptr) {
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
  return path;
}

std::string ReadFixture(const std::string& name) {
  std::FILE* f = std::fopen((std::string(SALS_FIXTURES_DIR) + "/tls/" + name).c_str(), "r");
  EXPECT_NE(f, nullptr) << name;
  std::string text;
  char buf[4096];
  for (size_t n; f != nullptr && (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) text.append(buf, n);
  if (f != nullptr) std::fclose(f);
  return text;
}

// With auth.tokens_file, Generation's calls need a client's bearer token (UNAUTHENTICATED
// otherwise, counted as such); health stays open for probes.
TEST(ServerTest, BearerTokensGuardGenerationAndLeaveHealthOpen) {
  ServerConfig config = TestConfig("llama2-mha");
  config.auth_tokens_file = WriteTempFile("tokens.txt", "alice token-a\nbob token-b\n");
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  EXPECT_EQ(testing::Health(s.channel()), HealthCheckResponse::SERVING);
  EXPECT_EQ(testing::Health(s.channel(), "sals.v1.Generation"), HealthCheckResponse::SERVING);
  const v1::GenerateRequest r = GreedyIds({1, 2, 3}, 2);
  for (const std::string token : {"", "token-c", "token-a2"}) {
    StreamResult refused = RunStream(s.stub(), r, std::chrono::seconds(60), {}, token);
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << token;
    EXPECT_TRUE(refused.tokens.empty());
  }
  grpc::ClientContext info_context;
  v1::GetModelInfoResponse info;
  EXPECT_EQ(s.stub().GetModelInfo(&info_context, {}, &info).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  StreamResult served = RunStream(s.stub(), r, std::chrono::seconds(60), {}, "token-b");
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_EQ(served.tokens.size(), 2u);
  EXPECT_EQ(s.Metrics()["sals:request_rejected_total{code=\"UNAUTHENTICATED\"}"], 3);
}

// server.max_streams_per_client: one client cannot hold more streams than that at once.
TEST(ServerTest, StreamsInFlightAreLimitedPerClient) {
  ServerConfig config = TestConfig("llama2-mha");
  config.max_streams_per_client = 1;
  config.engine.num_blocks = 1024;
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  std::atomic<bool> started{false}, stop{false};
  StreamResult first;
  std::thread client([&] {
    first = RunStream(s.stub(), GreedyIds({1, 5, 9}, 1500), std::chrono::seconds(120),
                      [&](grpc::ClientContext& context, const v1::GenerateChunk&) {
                        started = true;
                        if (stop) context.TryCancel();
                      });
  });
  ASSERT_TRUE(testing::WaitUntil([&] { return started.load(); }));
  StreamResult second = RunStream(s.stub(), GreedyIds({1, 2}, 2));
  stop = true;
  client.join();
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(second.status.error_message().find("max_streams_per_client"), std::string::npos)
      << second.status.error_message();
  // Once the first is over, the client may stream again.
  StreamResult third;
  EXPECT_TRUE(testing::WaitUntil([&] {
    third = RunStream(s.stub(), GreedyIds({1, 2}, 2));
    return third.status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED;
  }));
  EXPECT_TRUE(third.status.ok()) << third.status.error_message();
}

// server.max_receive_message_bytes bounds what gRPC reads of one request.
TEST(ServerTest, RequestsOverTheMessageLimitAreRefusedByGrpc) {
  ServerConfig config = TestConfig("llama2-mha");
  config.max_receive_message_bytes = 4096;
  Server s(config);
  ASSERT_TRUE(s.Start().ok());
  std::vector<uint32_t> ids(3000, 1000);  // two bytes each
  StreamResult refused = RunStream(s.stub(), GreedyIds(ids, 2));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.status.error_message();
  StreamResult ok = RunStream(s.stub(), GreedyIds({1, 2, 3}, 2));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

// TLS with gRPC's credentials; with tls.require_client_cert only clients holding a certificate
// the CA signed get in.
TEST(ServerTest, TlsServesAndCanRequireClientCertificates) {
  const std::string fixtures = std::string(SALS_FIXTURES_DIR) + "/tls/";
  ServerConfig config = TestConfig("llama2-mha");
  config.tls_cert_file = fixtures + "server.pem";
  config.tls_key_file = fixtures + "server.key";
  Server s(config);
  ASSERT_TRUE(s.server().Start().ok());
  const std::string target = "127.0.0.1:" + std::to_string(s.server().grpc_port());
  auto get_info = [&](const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
    auto stub = v1::Generation::NewStub(grpc::CreateChannel(target, credentials));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetModelInfoResponse info;
    return stub->GetModelInfo(&context, {}, &info);
  };
  grpc::SslCredentialsOptions trust;
  trust.pem_root_certs = ReadFixture("ca.pem");
  EXPECT_TRUE(get_info(grpc::SslCredentials(trust)).ok());
  EXPECT_FALSE(get_info(grpc::InsecureChannelCredentials()).ok());

  ServerConfig mutual = config;
  mutual.tls_client_ca_file = fixtures + "ca.pem";
  mutual.tls_require_client_cert = true;
  Server m(mutual);
  ASSERT_TRUE(m.server().Start().ok());
  const std::string mutual_target = "127.0.0.1:" + std::to_string(m.server().grpc_port());
  auto get_info_m = [&](const grpc::SslCredentialsOptions& options) {
    auto stub =
        v1::Generation::NewStub(grpc::CreateChannel(mutual_target, grpc::SslCredentials(options)));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetModelInfoResponse info;
    return stub->GetModelInfo(&context, {}, &info);
  };
  EXPECT_FALSE(get_info_m(trust).ok()) << "a client without a certificate got in";
  grpc::SslCredentialsOptions with_cert = trust;
  with_cert.pem_private_key = ReadFixture("client.key");
  with_cert.pem_cert_chain = ReadFixture("client.pem");
  const grpc::Status status = get_info_m(with_cert);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Reflection answers unless server.reflection turns it off (it needs no token, so that is how a
// deployer keeps the schema private).
TEST(ServerTest, ReflectionFollowsTheConfig) {
  auto list_services = [](const std::shared_ptr<grpc::Channel>& channel) {
    grpc::GenericStub generic(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    const std::string list("\x3a\x00", 2);  // ServerReflectionRequest{list_services: ""}
    grpc::Slice slice(list);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::mutex mu;
    std::condition_variable cv;
    std::optional<grpc::Status> status;
    generic.UnaryCall(&context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                      grpc::StubOptions(), &request, &response, [&](grpc::Status st) {
                        std::lock_guard<std::mutex> lock(mu);
                        status = st;
                        cv.notify_all();
                      });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(60), [&] { return status.has_value(); });
    std::vector<grpc::Slice> slices;
    std::string body;
    if (status && status->ok() && response.Dump(&slices).ok()) {
      for (const grpc::Slice& part : slices) {
        body.append(reinterpret_cast<const char*>(part.begin()), part.size());
      }
    }
    return std::make_pair(status.value_or(grpc::Status(grpc::StatusCode::UNKNOWN, "no answer")),
                          body);
  };
  Server on(TestConfig("llama2-mha"));
  ASSERT_TRUE(on.Start().ok());
  const auto [on_status, services] = list_services(on.channel());
  EXPECT_TRUE(on_status.ok()) << on_status.error_message();
  EXPECT_NE(services.find("sals.v1.Generation"), std::string::npos);

  ServerConfig config = TestConfig("llama2-mha");
  config.reflection = false;
  Server off(config);
  ASSERT_TRUE(off.Start().ok());
  EXPECT_EQ(list_services(off.channel()).first.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

}  // namespace
}  // namespace sals
