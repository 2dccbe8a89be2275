// kv_cache.dtype=fp8_e4m3: the keys that choose the dtype resolve as vLLM's kv_cache_dtype does
// (errors name the key), the pool is sized from the fp8 bytes, and the CUDA backend refuses it.
#include <string>

#include "engine/model/weight_source.h"
#include "engine/runtime/model_setup.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

// The dense and latent dtypes a configuration resolves to (latent: fp16 for a format without
// SALS layers).
struct Dtypes {
  KvDType dense, latent;
  bool operator==(const Dtypes&) const = default;
};

TEST(Fp8KvConfigTest, DtypeKeysResolveLikeVllmKvCacheDtype) {
  auto model = SyntheticModelConfig("llama-3.1-8b");
  ASSERT_TRUE(model.ok());
  constexpr KvDType k16 = KvDType::kF16, k8 = KvDType::kFp8E4M3;
  struct Case {
    const char* format;
    const char* dtype;
    const char* dense_dtype;
    const char* latent_dtype;
    Dtypes want;
  };
  for (const Case& t : {
           Case{"sals-12.5", "auto", "auto", "auto", {k16, k16}},
           Case{"sals-12.5", "fp8_e4m3", "auto", "auto", {k8, k8}},  // both, as vLLM's
           Case{"sals-12.5", "fp8", "fp16", "auto", {k16, k8}},      // then one side back
           Case{"sals-12.5-fp8", "auto", "auto", "fp16", {k8, k16}},
           Case{"sals-25-fp8", "fp16", "auto", "auto", {k16, k16}},
           Case{"dense", "fp8", "auto", "auto", {k8, k16}},
       }) {
    EngineConfig c;
    c.kv_format = t.format;
    c.kv_dtype = t.dtype;
    c.dense_dtype = t.dense_dtype;
    c.latent_dtype = t.latent_dtype;
    auto format = ResolveKvFormat(c, *model);
    ASSERT_TRUE(format.ok()) << format.status();
    const Dtypes got{format->dense_dtype, format->sals ? format->sals->latent_dtype : k16};
    EXPECT_TRUE(got == t.want) << t.format << " " << t.dtype << " " << t.dense_dtype << " "
                               << t.latent_dtype;
  }

  EngineConfig bad;
  bad.kv_dtype = "fp8_e5m2";
  auto e5m2 = ResolveKvFormat(bad, *model);
  ASSERT_FALSE(e5m2.ok());
  EXPECT_NE(e5m2.status().message().find("kv_cache.dtype"), std::string::npos) << e5m2.status();
  bad = EngineConfig();
  bad.kv_format = "dense";
  bad.latent_dtype = "fp8";
  auto no_latents = ResolveKvFormat(bad, *model);
  ASSERT_FALSE(no_latents.ok());
  EXPECT_NE(no_latents.status().message().find("kv_cache.latent_dtype"), std::string::npos)
      << no_latents.status();
}

TEST(Fp8KvConfigTest, CudaBackendRefusesFp8ByName) {
  EngineConfig c;
  c.synthetic_model = "tiny";
  c.kv_format = "dense-fp8";
  c.backend = "cuda";
  c.num_blocks = 4;
  auto model = LoadModel(c);
  ASSERT_FALSE(model.ok());
  // A CPU-only build says it has no CUDA; a CUDA build refuses the format. Never a silent run.
  const std::string message(model.status().message());
  EXPECT_TRUE(message.find("kv_cache.dtype fp8_e4m3") != std::string::npos ||
              message.find("CUDA") != std::string::npos)
      << message;
}

TEST(Fp8KvConfigTest, PoolAndMetricsCountFp8Bytes) {
  // tiny: 2 layers, 2 KV heads of 32. fp8 K and V: 2 x 2 x (32 codes + 2-byte scale) = 136 B per
  // layer and token, against 256 in fp16. The pool is sized, and the server's KV gauges
  // (sals:kv_cache_bytes_*) read, from these bytes.
  EngineConfig c;
  c.synthetic_model = "tiny";
  c.kv_format = "dense-fp8";
  c.kv_memory_gib = 1.0 / 1024;  // 1 MiB
  auto model = LoadModel(c);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->kv_bytes.per_token, 2 * 136);
  EXPECT_EQ(model->kv_bytes.dense_fp16_per_token, 2 * 256);
  EXPECT_EQ(model->pool.num_blocks, (1 << 20) / (16 * 272));
  EXPECT_EQ(model->pool.format.dense_dtype, KvDType::kFp8E4M3);
}

}  // namespace
}  // namespace sals
