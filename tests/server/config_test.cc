// Server configuration: the documented file equals the defaults, unknown keys and bad values are
// errors naming the key, overrides win over the file.
#include "server/config.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace sals {
namespace {

TEST(ServerConfigTest, DocumentedFileHoldsTheDefaults) {
  auto parsed = LoadServerConfig(std::string(SALS_SOURCE_DIR) + "/configs/server.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(ConfigToYaml(*parsed), ConfigToYaml(DefaultServerConfig()));
}

TEST(ServerConfigTest, ReadsEveryKindOfValue) {
  auto c = ParseServerConfig(R"(
model: {path: /models/x, calibration: /c.safetensors}
backend: {type: cuda, cpu_threads: 3, cuda_dtype: bf16}
kv_cache: {format: sals-12.5, block_size: 32, num_blocks: 100, value_bits: 16,
           dense_layers: [0, 5], dtype: fp8_e4m3, latent_dtype: fp16}
attention: {topk_fraction: 0.25, token_budget: 512, select_all: true, selection: per_kv_head}
scheduler: {max_num_seqs: 3, enable_prefix_caching: false, max_prefill_tokens: 512,
            max_prefill_chunk: 256, max_num_partial_prefills: 2}
server: {listen: "127.0.0.1:1", shutdown_grace_seconds: 2.5}
)",
                             "test.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->engine.model_path, "/models/x");
  EXPECT_EQ(c->engine.backend, "cuda");
  EXPECT_EQ(c->engine.cpu_threads, 3);
  EXPECT_EQ(c->engine.cuda_dtype, "bf16");
  EXPECT_EQ(c->engine.kv_format, "sals-12.5");
  EXPECT_EQ(c->engine.kv_dtype, "fp8_e4m3");
  EXPECT_EQ(c->engine.latent_dtype, "fp16");
  EXPECT_EQ(c->engine.dense_dtype, "auto");
  EXPECT_EQ(c->engine.block_size, 32);
  EXPECT_EQ(c->engine.value_bits, 16);
  EXPECT_EQ(c->engine.dense_layers, (std::vector<int>{0, 5}));
  EXPECT_EQ(c->engine.default_policy.token_budget, 512);
  EXPECT_TRUE(c->engine.default_policy.select_all);
  EXPECT_EQ(c->engine.default_policy.selection, SalsSelection::kPerKvHead);
  EXPECT_FALSE(c->engine.enable_prefix_caching);
  EXPECT_EQ(c->engine.max_prefill_tokens, 512);
  EXPECT_EQ(c->engine.max_prefill_chunk, 256);
  EXPECT_EQ(c->engine.max_num_partial_prefills, 2);
  EXPECT_EQ(c->listen, "127.0.0.1:1");
  EXPECT_DOUBLE_EQ(c->shutdown_grace_seconds, 2.5);
}

void ExpectError(std::string_view yaml, std::string_view needle,
                 const std::vector<std::string>& overrides = {}) {
  auto c = ParseServerConfig(yaml, "bad.yaml", overrides);
  ASSERT_FALSE(c.ok()) << yaml;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find(std::string(needle)), absl::string_view::npos)
      << c.status() << " should mention " << needle;
}

TEST(ServerConfigTest, RejectsUnknownKeysAndBadValuesByName) {
  ExpectError("kv_cache: {blok_size: 4}", "kv_cache.blok_size");
  ExpectError("attention: {selection: per_head}", "attention.selection");
  ExpectError("attention: {selection: [shared]}", "attention.selection");
  ExpectError("scheduling: {max_num_seqs: 4}", "scheduling");
  ExpectError("scheduler: {max_num_seqs: many}", "scheduler.max_num_seqs");
  ExpectError("scheduler: {max_num_seqs: 0}", "scheduler.max_num_seqs");
  ExpectError("kv_cache: {memory_gib: -1}", "kv_cache.memory_gib");
  ExpectError("scheduler: {max_prefill_tokens: -1}", "scheduler.max_prefill_tokens");
  ExpectError("scheduler: {max_num_batched_tokens: 1024, max_prefill_tokens: 2048}",
              "'scheduler.max_prefill_tokens' (2048) must be <= scheduler.max_num_batched_tokens "
              "(1024)");
  ExpectError("scheduler: {max_prefill_chunk: -3}", "scheduler.max_prefill_chunk");
  ExpectError("scheduler: {max_num_partial_prefills: -1}", "scheduler.max_num_partial_prefills");
  ExpectError("backend: {type: tpu}", "backend.type");
  ExpectError("backend: {cpu_threads: -2}", "backend.cpu_threads");
  ExpectError("backend: {cuda_dtype: fp8}", "backend.cuda_dtype");
  ExpectError("server: [1, 2]", "server");
  ExpectError("just a string", "map");
  ExpectError("model: {path: [unclosed", "bad.yaml");
  ExpectError("logging: {level: loud}", "logging.level");
  ExpectError("logging: {format: xml}", "logging.format");
  ExpectError("server: {metrics_threads: 0}", "server.metrics_threads");
  ExpectError("server: {metrics_request_timeout_ms: 0}", "server.metrics_request_timeout_ms");
  ExpectError("server: {tokenizer_threads: 0}", "server.tokenizer_threads");
  ExpectError("server: {max_streams_per_client: -1}", "server.max_streams_per_client");
  ExpectError("server: {max_receive_message_bytes: 10}", "server.max_receive_message_bytes");
  ExpectError("tls: {cert_file: a.pem}", "tls.cert_file");
  ExpectError("tls: {require_client_cert: true}", "tls.require_client_cert");
}

TEST(ServerConfigTest, OverridesWinAndAreChecked) {
  auto c = ParseServerConfig("scheduler: {max_num_seqs: 4}", "f.yaml",
                             {"scheduler.max_num_seqs=9", "kv_cache.dense_layers=[1, 2]"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->engine.max_num_seqs, 9);
  EXPECT_EQ(c->engine.dense_layers, (std::vector<int>{1, 2}));
  ExpectError("", "expected section.key=value", {"max_num_seqs=9"});
  ExpectError("", "scheduler.nope", {"scheduler.nope=1"});
}

}  // namespace
}  // namespace sals
