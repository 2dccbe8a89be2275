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

TEST(KvBytesTest, PartialBlocksAreWholeBlocks) {
  const KvBytes b = Bytes("llama-2-7b", "dense");
  // 17 tokens take 2 blocks of 16: 32 x 524288 B per sequence.
  EXPECT_EQ(b.ContextsThatFit(17, 32 * 524288 * 3 + 1), 3);
  EXPECT_EQ(b.ContextsThatFit(17, 32 * 524288 * 3 - 1), 2);
  EXPECT_EQ(b.ContextsThatFit(16, 16 * 524288), 1);
}

}  // namespace
}  // namespace sals
