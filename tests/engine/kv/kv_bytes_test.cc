// KV byte accounting, hand-checked: llama-2-7b (MHA, D = 4096) and llama-3.1-8b (GQA, D = 1024)
// in the dense and SALS presets, exact sink/recent copies amortized, and how many contexts fit.
#include <cstdint>
#include <string>

#include "engine/kv/kv_format.h"
#include "engine/model/weight_source.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

constexpr int64_t k120GiB = int64_t{120} << 30;

KvBytes Bytes(const std::string& shape, const std::string& preset) {
  auto config = SyntheticModelConfig(shape);
  EXPECT_TRUE(config.ok()) << config.status();
  auto format = MakeKvCacheFormat(*config, preset);
  EXPECT_TRUE(format.ok()) << format.status();
  return ComputeKvBytes(*config, *format, 16);
}

TEST(KvBytesTest, Llama2DenseIsHalfAMegabytePerToken) {
  // 32 layers x (K + V) x 4096 x 2 bytes.
  const KvBytes b = Bytes("llama-2-7b", "dense");
  EXPECT_EQ(b.per_token, 524288);
  EXPECT_EQ(b.dense_fp16_per_token, 524288);
  EXPECT_EQ(b.exact_per_sequence, 0);
  EXPECT_EQ(b.per_block, 16 * 524288);
  EXPECT_EQ(b.PerTokenAt(4096), 524288.0);
}

TEST(KvBytesTest, Llama2Sals25) {
  // Sparse layer: 1024 latent x 2 B + 4096 x 4 bit + 128 groups x (scale + zero) x 2 B = 4608 B,
  // 0.28 of a dense layer's 16384 B (the paper's figure). 3 dense + 29 sparse layers.
  const KvBytes b = Bytes("llama-2-7b", "sals-25");
  EXPECT_EQ(b.per_token, 3 * 16384 + 29 * 4608);
  EXPECT_EQ(b.per_token, 182784);
  // 16 sinks + 64 recent tokens, exact fp16 K and V, in each sparse layer.
  EXPECT_EQ(b.exact_per_sequence, 80 * 16384 * 29);
  EXPECT_DOUBLE_EQ(b.PerTokenAt(4096), 182784.0 + 38010880.0 / 4096);
  EXPECT_DOUBLE_EQ(b.PerTokenAt(4096), 192064.0);
}

TEST(KvBytesTest, Llama2Sals125) {
  // Sparse layer: 512 x 2 B + 4096 x 2 bit + 128 x 4 B = 2560 B (0.156 of dense).
  const KvBytes b = Bytes("llama-2-7b", "sals-12.5");
  EXPECT_EQ(b.per_token, 3 * 16384 + 29 * 2560);
  EXPECT_EQ(b.per_token, 123392);
  EXPECT_EQ(b.exact_per_sequence, 38010880);
}

TEST(KvBytesTest, Llama31GqaPresets) {
  // D = 1024: dense layer 4096 B; sals-25 sparse 256 x 2 + 512 + 32 x 4 = 1152 B; sals-12.5
  // 128 x 2 + 256 + 128 = 640 B.
  EXPECT_EQ(Bytes("llama-3.1-8b", "dense").per_token, 131072);
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-25").per_token, 3 * 4096 + 29 * 1152);
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-12.5").per_token, 3 * 4096 + 29 * 640);
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-12.5").exact_per_sequence, 80 * 4096 * 29);
}

TEST(KvBytesTest, ModelWithOnlyDenseLayersCostsTheSameInEveryPreset) {
  // tiny has 2 layers: the first two and the last are dense, nothing is left sparse.
  for (const char* preset : {"sals-25", "sals-12.5"}) {
    const KvBytes b = Bytes("tiny", preset);
    EXPECT_EQ(b.per_token, Bytes("tiny", "dense").per_token) << preset;
    EXPECT_EQ(b.exact_per_sequence, 0) << preset;
  }
}

TEST(KvBytesTest, ContextsThatFitIn120GiB) {
  struct Case {
    const char* shape;
    const char* preset;
    int64_t fit_4k, fit_32k, fit_128k;
  };
  // Dense llama-2-7b: a 4K context is exactly 2 GiB, so 60 fit; SALS sequences also pay their
  // exact sink/recent copies (36.25 MiB for llama-2-7b).
  for (const Case& c :
       {Case{"llama-2-7b", "dense", 60, 7, 1}, Case{"llama-2-7b", "sals-25", 163, 21, 5},
        Case{"llama-2-7b", "sals-12.5", 237, 31, 7}, Case{"llama-3.1-8b", "dense", 240, 30, 7},
        Case{"llama-3.1-8b", "sals-25", 655, 85, 21},
        Case{"llama-3.1-8b", "sals-12.5", 948, 126, 31}}) {
    const KvBytes b = Bytes(c.shape, c.preset);
    EXPECT_EQ(b.ContextsThatFit(4096, k120GiB), c.fit_4k) << c.shape << " " << c.preset;
    EXPECT_EQ(b.ContextsThatFit(32768, k120GiB), c.fit_32k) << c.shape << " " << c.preset;
    EXPECT_EQ(b.ContextsThatFit(131072, k120GiB), c.fit_128k) << c.shape << " " << c.preset;
  }
}

TEST(KvBytesTest, Fp8PresetsCountCodesAndScales) {
  // Dense layer in fp8: K and V, 8 KV heads x (128 codes + a 2-byte scale) = 2080 B (fp16: 4096).
  // Sparse layer: latent rank codes + one 2-byte scale per token, values as before.
  EXPECT_EQ(Bytes("llama-3.1-8b", "dense-fp8").per_token, 32 * 2080);
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-25-fp8").per_token, 3 * 2080 + 29 * (258 + 512 + 128));
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-12.5-fp8").per_token, 3 * 2080 + 29 * (130 + 256 + 128));
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-12.5-fp8").per_token, 21146);
  // The exact sink/recent copies stay fp16.
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-12.5-fp8").exact_per_sequence, 80 * 4096 * 29);
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-12.5-fp8").dense_fp16_per_token, 131072);
  // llama-2-7b (32 KV heads, rank 512): 3 x 2 x 32 x 130 + 29 x (514 + 1024 + 512).
  EXPECT_EQ(Bytes("llama-2-7b", "sals-12.5-fp8").per_token, 3 * 8320 + 29 * 2050);
}

TEST(KvBytesTest, Fp8OnOneSideOnly) {
  auto config = SyntheticModelConfig("llama-3.1-8b");
  ASSERT_TRUE(config.ok());
  auto format = MakeKvCacheFormat(*config, "sals-12.5");
  ASSERT_TRUE(format.ok());
  format->sals->latent_dtype = KvDType::kFp8E4M3;
  EXPECT_EQ(ComputeKvBytes(*config, *format, 16).per_token, 3 * 4096 + 29 * 514);
  format->sals->latent_dtype = KvDType::kF16;
  format->dense_dtype = KvDType::kFp8E4M3;
  EXPECT_EQ(ComputeKvBytes(*config, *format, 16).per_token, 3 * 2080 + 29 * 640);
}

TEST(KvBytesTest, Fp8ContextsAt128KIn120GiB) {
  // The target, >= 45 concurrent 128K contexts of the 8B shape, needs fp8 on both sides:
  // 21146 B per token + 9502720 B of exact copies per sequence -> 46; latents alone 36, dense
  // layers alone 39, neither 31.
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-12.5-fp8").ContextsThatFit(131072, k120GiB), 46);
  EXPECT_EQ(Bytes("llama-3.1-8b", "sals-25-fp8").ContextsThatFit(131072, k120GiB), 30);
  EXPECT_EQ(Bytes("llama-3.1-8b", "dense-fp8").ContextsThatFit(131072, k120GiB), 14);
  EXPECT_NEAR(131072.0 / Bytes("llama-3.1-8b", "sals-12.5-fp8").PerTokenAt(131072), 6.177, 1e-3);
}

TEST(KvBytesTest, PresetNamesAndDtypes) {
  auto config = SyntheticModelConfig("llama-3.1-8b");
  ASSERT_TRUE(config.ok());
  auto fp8 = MakeKvCacheFormat(*config, "sals-25-fp8");
  ASSERT_TRUE(fp8.ok());
  EXPECT_EQ(fp8->dense_dtype, KvDType::kFp8E4M3);
  EXPECT_EQ(fp8->sals->latent_dtype, KvDType::kFp8E4M3);
  EXPECT_TRUE(fp8->UsesFp8());
  auto plain = MakeKvCacheFormat(*config, "sals-25");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->UsesFp8());
  EXPECT_TRUE(CheckCudaKvFormat(*plain).ok());
  const absl::Status cuda = CheckCudaKvFormat(*fp8);
  EXPECT_EQ(cuda.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(cuda.message().find("kv_cache.dtype"), std::string::npos) << cuda;
  auto unknown = MakeKvCacheFormat(*config, "dense-fp4");
  EXPECT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("'dense-fp4'"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("sals-12.5-fp8"), std::string::npos);

  EXPECT_EQ(*ParseKvDType("fp8_e4m3"), KvDType::kFp8E4M3);
  EXPECT_EQ(*ParseKvDType("fp8"), KvDType::kFp8E4M3);
  EXPECT_EQ(*ParseKvDType("fp16"), KvDType::kF16);
  EXPECT_FALSE(ParseKvDType("auto")->has_value());
  const auto e5m2 = ParseKvDType("fp8_e5m2");
  EXPECT_FALSE(e5m2.ok());
  EXPECT_NE(e5m2.status().message().find("fp8_e4m3"), std::string::npos);
}

TEST(KvBytesTest, PartialBlocksAreWholeBlocks) {
  const KvBytes b = Bytes("llama-2-7b", "dense");
  // 17 tokens take 2 blocks of 16: 32 x 524288 B per sequence.
  EXPECT_EQ(b.ContextsThatFit(17, 32 * 524288 * 3 + 1), 3);
  EXPECT_EQ(b.ContextsThatFit(17, 32 * 524288 * 3 - 1), 2);
  EXPECT_EQ(b.ContextsThatFit(16, 16 * 524288), 1);
}

}  // namespace
}  // namespace sals
