// The CPU reference against transformers' logits recorded by tools/fixtures/make_fixtures.py:
// prefill and 16 decode steps through the paged cache, alone and batched with chunked prefill.
// Also, when SALS_REAL_SHAPE_MODELS names model directories written by
// tools/parity/make_real_shape_models.py (e.g. its --tiny CPU variant), the same check on them.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/engine/backend/fixture_models.h"

namespace sals {
namespace {

constexpr int kDecodeSteps = 16;
constexpr double kMaxRelError = 1e-4;

using testing::RefSequence;

struct Fixture {
  ModelConfig config;
  std::unique_ptr<Backend> backend;
  std::vector<RefSequence> refs;
};

Fixture Load(const std::string& flavour, int block_size) {
  Fixture f;
  testing::FixtureModel model = testing::LoadFixtureModel(flavour);
  if (model.weights == nullptr) return f;
  f.config = model.config;
  // Enough blocks for every reference sequence at once, plus spares so tables can be scattered.
  KvPoolConfig pool;
  pool.num_blocks = 64;
  pool.block_size = block_size;
  auto backend = CreateCpuBackend(f.config, *model.weights, pool);
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (backend.ok()) f.backend = std::move(*backend);
  f.refs = testing::LoadReferenceStreams(flavour, f.config.vocab_size);
  for (const RefSequence& r : f.refs) {
    EXPECT_EQ(r.stream.size(), static_cast<size_t>(r.prompt_len + kDecodeSteps));
  }
  return f;
}

// Drives every sequence through its stream, `chunk` tokens at a time while in the prompt and one
// at a time after it, all sequences in the same step when `batched`; returns the worst error of
// prefill rows and decode rows, and checks greedy tokens against the reference.
struct Errors {
  double prefill = 0.0;
  double decode = 0.0;
};

Errors RunStreams(Fixture& f, int chunk, bool batched, uint32_t seed) {
  Errors err;
  const int bs = f.backend->kv_pool().block_size;
  // Scattered, disjoint block tables: a shuffled pool dealt out to the sequences.
  std::vector<int32_t> pool(f.backend->kv_pool().num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));
  std::vector<std::vector<int32_t>> tables;
  size_t next = 0;
  for (const RefSequence& r : f.refs) {
    const size_t n = (r.stream.size() + bs - 1) / bs;
    tables.emplace_back(pool.begin() + next, pool.begin() + next + n);
    next += n;
  }
  EXPECT_LE(next, pool.size());
  std::vector<int> done(f.refs.size(), 0);
  auto finished = [&](size_t s) { return done[s] >= static_cast<int>(f.refs[s].stream.size()); };
  for (size_t active = 0; active < f.refs.size();) {
    ForwardBatch batch;
    std::vector<size_t> members;
    for (size_t s = batched ? 0 : active; s < (batched ? f.refs.size() : active + 1); ++s) {
      if (finished(s)) continue;
      const RefSequence& r = f.refs[s];
      const int n = done[s] < r.prompt_len ? std::min(chunk, r.prompt_len - done[s]) : 1;
      SequenceSlice slice;
      slice.num_tokens = n;
      slice.context_len = done[s];
      slice.block_table = tables[s];
      slice.all_logits = true;
      batch.seqs.push_back(slice);
      batch.tokens.insert(batch.tokens.end(), r.stream.begin() + done[s],
                          r.stream.begin() + done[s] + n);
      members.push_back(s);
    }
    ForwardOutput out;
    const absl::Status status = f.backend->Forward(batch, &out);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) return err;
    for (size_t m = 0; m < members.size(); ++m) {
      const size_t s = members[m];
      const RefSequence& r = f.refs[s];
      for (int j = 0; j < batch.seqs[m].num_tokens; ++j) {
        const int pos = done[s] + j;
        const float* row =
            out.logits.data() + static_cast<int64_t>(out.row_begin[m] + j) * f.config.vocab_size;
        const double e = testing::RelError(row, r.expected[pos].data(), r.expected[pos].size());
        (pos < r.prompt_len ? err.prefill : err.decode) =
            std::max(pos < r.prompt_len ? err.prefill : err.decode, e);
        // Greedy check: the argmax at stream position pos is the reference's next token.
        if (pos + 1 >= r.prompt_len && pos + 1 < static_cast<int>(r.stream.size())) {
          const int argmax =
              static_cast<int>(std::max_element(row, row + f.config.vocab_size) - row);
          EXPECT_EQ(argmax, r.stream[pos + 1]) << "sequence " << s << " position " << pos;
        }
      }
      done[s] += batch.seqs[m].num_tokens;
    }
    while (active < f.refs.size() && finished(active)) ++active;
  }
  return err;
}

class CpuParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CpuParityTest, PrefillThenDecodeAlone) {
  Fixture f = Load(GetParam(), /*block_size=*/5);
  ASSERT_NE(f.backend, nullptr);
  ASSERT_EQ(f.refs.size(), 3u);
  const Errors e = RunStreams(f, /*chunk=*/1 << 20, /*batched=*/false, 1);
  std::printf("[parity] %s alone: prefill max rel err %.3g, decode max rel err %.3g\n",
              GetParam().c_str(), e.prefill, e.decode);
  EXPECT_LE(e.prefill, kMaxRelError);
  EXPECT_LE(e.decode, kMaxRelError);
}

TEST_P(CpuParityTest, ChunkedPrefillMixedWithDecodeInOneBatch) {
  for (int block_size : {3, 16}) {
    Fixture f = Load(GetParam(), block_size);
    ASSERT_NE(f.backend, nullptr);
    const Errors e = RunStreams(f, /*chunk=*/8, /*batched=*/true, 7 + block_size);
    std::printf("[parity] %s batched (block %d, chunk 8): prefill %.3g, decode %.3g\n",
                GetParam().c_str(), block_size, e.prefill, e.decode);
    EXPECT_LE(e.prefill, kMaxRelError);
    EXPECT_LE(e.decode, kMaxRelError);
  }
}

// The real-shape parity models (tools/parity/make_real_shape_models.py; the GPU test is
// tests/gpu/real_shape_parity_test.cc): each reference stream (prompt + 64 greedy tokens) in one
// prefill, every row against transformers' fp32 logits, and every greedy choice whose reference
// top-2 margin exceeds the bound. Checks the generator's files and the C++ loader on them without
// a GPU (with --tiny models: a few seconds).
TEST(CpuRealShapeParityTest, ModelsFromEnvironment) {
  const char* env = std::getenv("SALS_REAL_SHAPE_MODELS");
  if (env == nullptr || *env == '\0') {
    GTEST_SKIP() << "SALS_REAL_SHAPE_MODELS is unset (model directories written by "
                    "tools/parity/make_real_shape_models.py)";
  }
  for (absl::string_view d : absl::StrSplit(env, ',', absl::SkipWhitespace())) {
    const std::string dir(d);
    SCOPED_TRACE(dir);
    testing::FixtureModel model = testing::LoadModelDir(dir);
    ASSERT_NE(model.weights, nullptr);
    const int vocab = model.config.vocab_size;
    const std::vector<RefSequence> refs =
        testing::LoadReferenceFile(std::filesystem::path(dir) / "reference.safetensors", vocab);
    ASSERT_FALSE(refs.empty());
    double worst = 0.0;
    int choices = 0;
    for (const RefSequence& r : refs) {
      const int blocks = static_cast<int>((r.stream.size() + 15) / 16);
      KvPoolConfig pool;
      pool.num_blocks = blocks;
      pool.block_size = 16;
      auto backend = CreateCpuBackend(model.config, *model.weights, pool);
      ASSERT_TRUE(backend.ok()) << backend.status();
      ForwardBatch batch;
      SequenceSlice slice;
      slice.num_tokens = static_cast<int32_t>(r.stream.size());
      slice.block_table.resize(blocks);
      std::iota(slice.block_table.begin(), slice.block_table.end(), 0);
      slice.all_logits = true;
      batch.seqs.push_back(slice);
      batch.tokens = r.stream;
      ForwardOutput out;
      ASSERT_TRUE((*backend)->Forward(batch, &out).ok());
      for (size_t pos = 0; pos < r.stream.size(); ++pos) {
        const float* row = out.logits.data() + pos * vocab;
        const std::vector<float>& want = r.expected[pos];
        const double e = testing::RelError(row, want.data(), vocab);
        EXPECT_LE(e, kMaxRelError) << "position " << pos;
        worst = std::max(worst, e);
        if (static_cast<int>(pos) + 1 < r.prompt_len || pos + 1 >= r.stream.size()) continue;
        std::vector<float> top = want;
        std::nth_element(top.begin(), top.begin() + 1, top.end(), std::greater<float>());
        const double scale = *std::max_element(
            want.begin(), want.end(), [](float a, float b) { return std::abs(a) < std::abs(b); });
        if ((top[0] - top[1]) / std::abs(scale) <= 2 * kMaxRelError) continue;  // a near tie
        ++choices;
        EXPECT_EQ(std::max_element(row, row + vocab) - row, r.stream[pos + 1])
            << "position " << pos;
      }
    }
    std::printf("[real-shape] %s: %d layers, vocab %d, max rel err %.3g, %d greedy choices equal\n",
                dir.c_str(), model.config.num_layers, vocab, worst, choices);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CpuParityTest,
                         ::testing::Values("llama2-mha", "mistral-gqa", "llama31-bpe"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace sals
