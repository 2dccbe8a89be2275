// The CUDA backend, loaded through the run-time loader, against the fp32 CPU reference on the three
// fixture models: logits of a prefill and of 64 decode steps fed the CPU's greedy tokens, 64
// freely decoded greedy tokens, mixed batches (chunked prefill + decode, shuffled) against
// single-sequence runs, and malformed batches refused without touching the cache.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cuda_loader.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

// The fixtures where the build saw them, else under the working directory: the GPU machine runs
// a copy of the repository from its root.
std::string FixturesRoot() {
  if (std::filesystem::exists(SALS_FIXTURES_BUILD_DIR)) return SALS_FIXTURES_BUILD_DIR;
  return "tests/fixtures";
}

}  // namespace
}  // namespace sals

#define SALS_FIXTURES_DIR ::sals::FixturesRoot()
#include "tests/engine/backend/fixture_models.h"

namespace sals {
namespace {

constexpr int kDecodeSteps = 64;

// max |gpu - cpu| / max |cpu| per logits row. bf16 keeps 8 bits of mantissa to fp16's 11, so its
// rounding errors are 8x larger (on the H200, 2026-11-28: fp16 at most 0.0081, bf16 0.0756 over
// these fixtures); its bound is 10x fp16's rather than a looser fp16 bound.
double Tolerance(DType dtype) { return dtype == DType::kF16 ? 1e-2 : 1e-1; }

KvPoolConfig Pool(int num_blocks, int block_size) {
  KvPoolConfig pool;
  pool.num_blocks = num_blocks;
  pool.block_size = block_size;
  return pool;
}

std::unique_ptr<CudaBackend> Cuda(const testing::FixtureModel& m, const KvPoolConfig& pool,
                                  DType dtype) {
  CudaBackendOptions options;
  options.dtype = dtype;
  auto backend = LoadCudaBackend(m.config, *m.weights, pool, options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

std::unique_ptr<Backend> Cpu(const testing::FixtureModel& m, const KvPoolConfig& pool) {
  auto backend = CreateCpuBackend(m.config, *m.weights, pool);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

ForwardBatch OneSlice(std::vector<int32_t> tokens, int context_len, std::vector<int32_t> table,
                      bool all_logits) {
  ForwardBatch b;
  SequenceSlice s;
  s.num_tokens = static_cast<int32_t>(tokens.size());
  s.context_len = context_len;
  s.block_table = std::move(table);
  s.all_logits = all_logits;
  b.seqs.push_back(std::move(s));
  b.tokens = std::move(tokens);
  return b;
}

// Consecutive block ranges of `blocks` each, one per sequence, from a shuffled pool.
std::vector<std::vector<int32_t>> DealTables(int num_blocks, const std::vector<int>& blocks,
                                             uint32_t seed) {
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  std::vector<std::vector<int32_t>> tables;
  size_t next = 0;
  for (int n : blocks) {
    EXPECT_LE(next + n, ids.size());
    tables.emplace_back(ids.begin() + next, ids.begin() + next + n);
    next += n;
  }
  return tables;
}

int Argmax(const float* row, int n) {
  return static_cast<int>(std::max_element(row, row + n) - row);
}

double MaxAbs(const float* row, int n) {
  double m = 0.0;
  for (int i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(row[i])));
  return m;
}

struct Param {
  std::string flavour;
  DType dtype;

  friend void PrintTo(const Param& p, std::ostream* os) {
    *os << p.flavour << " " << DTypeName(p.dtype);
  }
};

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  std::string name = info.param.flavour + "_" + std::string(DTypeName(info.param.dtype));
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

class CudaParityTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    model_ = testing::LoadFixtureModel(GetParam().flavour);
    ASSERT_NE(model_.weights, nullptr);
    for (const testing::RefSequence& r :
         testing::LoadReferenceStreams(GetParam().flavour, model_.config.vocab_size)) {
      prompts_.emplace_back(r.stream.begin(), r.stream.begin() + r.prompt_len);
    }
    ASSERT_FALSE(prompts_.empty());
  }

  // Enough blocks of 16 for every prompt and its decode steps, scattered.
  std::vector<std::vector<int32_t>> Tables(int block_size) const {
    std::vector<int> blocks;
    for (const auto& p : prompts_) {
      blocks.push_back(
          static_cast<int>((p.size() + kDecodeSteps + 1 + block_size - 1) / block_size));
    }
    return DealTables(PoolBlocks(block_size), blocks, 17);
  }
  int PoolBlocks(int block_size) const {
    int n = 0;
    for (const auto& p : prompts_) {
      n += static_cast<int>((p.size() + kDecodeSteps + 1 + block_size - 1) / block_size);
    }
    return n + 8;
  }

  testing::FixtureModel model_;
  std::vector<std::vector<int32_t>> prompts_;
};

// Each prompt alone: prefill (all rows), then 64 one-token steps fed the CPU's greedy tokens.
TEST_P(CudaParityTest, PrefillAndTeacherForcedDecodeMatchCpu) {
  const int vocab = model_.config.vocab_size;
  const KvPoolConfig pool = Pool(PoolBlocks(16), 16);
  auto cpu = Cpu(model_, pool);
  auto gpu = Cuda(model_, pool, GetParam().dtype);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const auto tables = Tables(16);
  double prefill_err = 0.0, decode_err = 0.0;
  for (size_t i = 0; i < prompts_.size(); ++i) {
    const int len = static_cast<int>(prompts_[i].size());
    ForwardOutput want, got;
    ForwardBatch batch = OneSlice(prompts_[i], 0, tables[i], /*all_logits=*/true);
    ASSERT_TRUE(cpu->Forward(batch, &want).ok());
    const absl::Status s = gpu->Forward(batch, &got);
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_EQ(got.logits.size(), want.logits.size());
    for (int r = 0; r < len; ++r) {
      prefill_err = std::max(prefill_err, testing::RelError(got.logits.data() + r * vocab,
                                                            want.logits.data() + r * vocab, vocab));
    }
    int token = Argmax(want.logits.data() + (len - 1) * vocab, vocab);
    for (int step = 0; step < kDecodeSteps; ++step) {
      batch = OneSlice({token}, len + step, tables[i], false);
      ASSERT_TRUE(cpu->Forward(batch, &want).ok());
      const absl::Status st = gpu->Forward(batch, &got);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(got.logits.size(), static_cast<size_t>(vocab));
      const double e = testing::RelError(got.logits.data(), want.logits.data(), vocab);
      EXPECT_LE(e, Tolerance(GetParam().dtype)) << "prompt " << i << " decode step " << step;
      decode_err = std::max(decode_err, e);
      token = Argmax(want.logits.data(), vocab);
    }
  }
  std::printf("[parity] %s %s: prefill max rel err %.3g, decode (64 steps) %.3g (bound %.0e)\n",
              GetParam().flavour.c_str(), std::string(DTypeName(GetParam().dtype)).c_str(),
              prefill_err, decode_err, Tolerance(GetParam().dtype));
  EXPECT_LE(prefill_err, Tolerance(GetParam().dtype));
}

// All prompts batched on the GPU, decoding freely with the device argmax (a batch of 3 replays
// graphs padded to 4); the CPU runs each alone. A token may differ only where the CPU's top two
// logits are closer than the logits tolerance (a near tie), which is printed; the sequences
// diverge after it, so the comparison stops there.
TEST_P(CudaParityTest, FreeGreedyDecodeMatchesCpu) {
  const int vocab = model_.config.vocab_size;
  const double tol = Tolerance(GetParam().dtype);
  const KvPoolConfig pool = Pool(PoolBlocks(16), 16);
  auto cpu = Cpu(model_, pool);
  auto gpu = Cuda(model_, pool, GetParam().dtype);
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const auto tables = Tables(16);
  const size_t n = prompts_.size();

  // CPU: each prompt's greedy tokens and, per step, its logits row.
  std::vector<std::vector<int32_t>> cpu_tokens(n);
  std::vector<std::vector<std::vector<float>>> cpu_rows(n);
  for (size_t i = 0; i < n; ++i) {
    const int len = static_cast<int>(prompts_[i].size());
    ForwardOutput out;
    ASSERT_TRUE(cpu->Forward(OneSlice(prompts_[i], 0, tables[i], false), &out).ok());
    for (int step = 0; step <= kDecodeSteps; ++step) {
      cpu_rows[i].push_back(out.logits);
      cpu_tokens[i].push_back(Argmax(out.logits.data(), vocab));
      if (step == kDecodeSteps) break;
      ASSERT_TRUE(
          cpu->Forward(OneSlice({cpu_tokens[i].back()}, len + step, tables[i], false), &out).ok());
    }
  }

  // GPU: one batch of every prompt, then one-token steps on its own tokens.
  ForwardBatch batch;
  for (size_t i = 0; i < n; ++i) {
    ForwardBatch one = OneSlice(prompts_[i], 0, tables[i], false);
    batch.seqs.push_back(one.seqs[0]);
    batch.tokens.insert(batch.tokens.end(), prompts_[i].begin(), prompts_[i].end());
  }
  std::vector<bool> diverged(n, false);
  double min_margin = INFINITY;
  for (int step = 0; step <= kDecodeSteps; ++step) {
    std::vector<int32_t> tokens;
    const absl::Status s = gpu->ForwardGreedy(batch, &tokens);
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_EQ(tokens.size(), n);
    for (size_t i = 0; i < n; ++i) {
      const std::vector<float>& row = cpu_rows[i][step];
      std::vector<float> sorted = row;
      std::nth_element(sorted.begin(), sorted.begin() + 1, sorted.end(), std::greater<float>());
      const double scale = MaxAbs(row.data(), vocab);
      if (!diverged[i]) min_margin = std::min(min_margin, (sorted[0] - sorted[1]) / scale);
      if (diverged[i] || tokens[i] == cpu_tokens[i][step]) continue;
      diverged[i] = true;
      const double margin = (row[cpu_tokens[i][step]] - row[tokens[i]]) / scale;
      std::printf(
          "[near-tie] %s prompt %zu step %d: GPU chose %d, CPU %d; CPU margin %.3g of max "
          "|logit| (tolerance %.0e)\n",
          GetParam().flavour.c_str(), i, step, tokens[i], cpu_tokens[i][step], margin, tol);
      EXPECT_LE(margin, tol) << "prompt " << i << " step " << step << ": not a near tie";
    }
    batch.tokens = tokens;
    for (size_t i = 0; i < n; ++i) {
      batch.seqs[i].context_len += batch.seqs[i].num_tokens;
      batch.seqs[i].num_tokens = 1;
    }
  }
  std::printf(
      "[greedy] %s %s: %zu of %zu prompts identical for %d steps; smallest CPU top-2 "
      "margin before any divergence %.3g of max |logit|\n",
      GetParam().flavour.c_str(), std::string(DTypeName(GetParam().dtype)).c_str(),
      static_cast<size_t>(std::count(diverged.begin(), diverged.end(), false)), n, kDecodeSteps,
      min_margin);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, CudaParityTest,
    ::testing::Values(Param{"llama2-mha", DType::kF16}, Param{"mistral-gqa", DType::kF16},
                      Param{"llama31-bpe", DType::kF16}, Param{"llama2-mha", DType::kBF16},
                      Param{"mistral-gqa", DType::kBF16}, Param{"llama31-bpe", DType::kBF16}),
    ParamName);

// 96 sequences of random prompts (1..48 tokens, block size 7 so blocks end mid-chunk) and 6
// forced decode tokens: each run alone, then all together with random start steps, chunk sizes
// (1-token chunks take the decode kernel) and a shuffled order per step. Every logits row of the
// batched run must match the lone runs'.
class CudaMixedBatchTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaMixedBatchTest, MatchesSingleSequenceRuns) {
  constexpr int kSeqs = 96;
  constexpr int kForced = 6;
  constexpr int kBlockSize = 7;
  testing::FixtureModel model = testing::LoadFixtureModel(GetParam());
  ASSERT_NE(model.weights, nullptr);
  const int vocab = model.config.vocab_size;
  const uint32_t seed = std::random_device{}();
  std::printf("[ seed     ] %u\n", seed);
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> streams(kSeqs);
  std::vector<int> prompt_len(kSeqs), blocks(kSeqs);
  for (int s = 0; s < kSeqs; ++s) {
    prompt_len[s] = std::uniform_int_distribution<int>(1, 48)(rng);
    streams[s].resize(prompt_len[s] + kForced);
    for (int32_t& t : streams[s]) t = std::uniform_int_distribution<int>(0, vocab - 1)(rng);
    blocks[s] = (static_cast<int>(streams[s].size()) + kBlockSize - 1) / kBlockSize;
  }
  const int pool_blocks = std::accumulate(blocks.begin(), blocks.end(), 0) + 5;
  const auto tables = DealTables(pool_blocks, blocks, seed);
  auto gpu = Cuda(model, Pool(pool_blocks, kBlockSize), DType::kF16);
  ASSERT_NE(gpu, nullptr);

  // Alone: the prompt in one slice, then one token per step; every position's logits.
  std::vector<std::vector<std::vector<float>>> alone(kSeqs);
  for (int s = 0; s < kSeqs; ++s) {
    const std::vector<int32_t> prompt(streams[s].begin(), streams[s].begin() + prompt_len[s]);
    ForwardOutput out;
    ASSERT_TRUE(gpu->Forward(OneSlice(prompt, 0, tables[s], true), &out).ok());
    for (int r = 0; r < prompt_len[s]; ++r) {
      alone[s].emplace_back(out.logits.begin() + r * vocab, out.logits.begin() + (r + 1) * vocab);
    }
    for (int p = prompt_len[s]; p < static_cast<int>(streams[s].size()); ++p) {
      ASSERT_TRUE(gpu->Forward(OneSlice({streams[s][p]}, p, tables[s], true), &out).ok());
      alone[s].push_back(out.logits);
    }
  }

  // Together.
  std::vector<int> start(kSeqs), chunk(kSeqs), done(kSeqs, 0);
  for (int s = 0; s < kSeqs; ++s) {
    start[s] = std::uniform_int_distribution<int>(0, 5)(rng);
    chunk[s] = std::uniform_int_distribution<int>(1, 9)(rng);
  }
  double worst = 0.0;
  int mixed_steps = 0, max_batch = 0;
  for (int step = 0;; ++step) {
    std::vector<int> members;
    for (int s = 0; s < kSeqs; ++s) {
      if (step >= start[s] && done[s] < static_cast<int>(streams[s].size())) members.push_back(s);
    }
    if (members.empty() && step > 5) break;
    if (members.empty()) continue;
    std::shuffle(members.begin(), members.end(), rng);
    ForwardBatch batch;
    bool has_prefill = false, has_decode = false;
    for (int s : members) {
      const int n = done[s] < prompt_len[s] ? std::min(chunk[s], prompt_len[s] - done[s]) : 1;
      (n > 1 ? has_prefill : has_decode) = true;
      ForwardBatch one = OneSlice(
          std::vector<int32_t>(streams[s].begin() + done[s], streams[s].begin() + done[s] + n),
          done[s], tables[s], true);
      batch.seqs.push_back(one.seqs[0]);
      batch.tokens.insert(batch.tokens.end(), one.tokens.begin(), one.tokens.end());
    }
    mixed_steps += has_prefill && has_decode;
    max_batch = std::max(max_batch, static_cast<int>(members.size()));
    ForwardOutput out;
    const absl::Status st = gpu->Forward(batch, &out);
    ASSERT_TRUE(st.ok()) << st;
    for (size_t m = 0; m < members.size(); ++m) {
      const int s = members[m];
      for (int j = 0; j < batch.seqs[m].num_tokens; ++j) {
        const float* row = out.logits.data() + static_cast<int64_t>(out.row_begin[m] + j) * vocab;
        const double e = testing::RelError(row, alone[s][done[s] + j].data(), vocab);
        EXPECT_LE(e, 1e-2) << "sequence " << s << " position " << done[s] + j;
        worst = std::max(worst, e);
      }
      done[s] += batch.seqs[m].num_tokens;
    }
  }
  std::printf(
      "[mixed] %s: %d sequences, up to %d per step, %d steps mixing prefill and decode; "
      "max rel diff to lone runs %.3g\n",
      GetParam().c_str(), kSeqs, max_batch, mixed_steps, worst);
  EXPECT_GT(mixed_steps, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaMixedBatchTest,
                         ::testing::Values("llama2-mha", "mistral-gqa", "llama31-bpe"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(CudaBackendTest, RejectsBadBatchesWithoutTouchingTheCache) {
  testing::FixtureModel model = testing::LoadFixtureModel("mistral-gqa");
  ASSERT_NE(model.weights, nullptr);
  auto gpu = Cuda(model, Pool(4, 4), DType::kF16);
  ASSERT_NE(gpu, nullptr);
  const int vocab = model.config.vocab_size;
  ForwardOutput out;
  ASSERT_TRUE(gpu->Forward(OneSlice({1, 2, 3, 4, 5}, 0, {2, 0}, false), &out).ok());
  const ForwardBatch next = OneSlice({6}, 5, {2, 0}, false);
  ForwardOutput before;
  ASSERT_TRUE(gpu->Forward(next, &before).ok());

  std::vector<ForwardBatch> bad = {
      OneSlice({1, 2, 3, 4, 5}, 0, {2}, false),  // table too short
      OneSlice({1}, 0, {4}, false),              // block outside the pool
      OneSlice({1}, 0, {-1}, false),             // negative block
      OneSlice({9, vocab}, 3, {2, 0}, false),    // token outside the vocabulary
      OneSlice({9, -1}, 3, {2, 0}, false),       // negative token
      OneSlice({}, 3, {2, 0}, false),            // no tokens
  };
  ForwardBatch mismatch = OneSlice({7, 8}, 3, {2, 0}, false);
  mismatch.tokens.push_back(9);  // three tokens, the slice claims two
  bad.push_back(mismatch);
  ForwardBatch negative_context = OneSlice({7}, -1, {2, 0}, false);
  bad.push_back(negative_context);
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(gpu->Forward(bad[i], &out).code(), absl::StatusCode::kInvalidArgument) << i;
    std::vector<int32_t> tokens;
    EXPECT_EQ(gpu->ForwardGreedy(bad[i], &tokens).code(), absl::StatusCode::kInvalidArgument) << i;
  }
  // The same step as before the bad batches, on the same cache: the same logits.
  ForwardOutput after;
  ASSERT_TRUE(gpu->Forward(next, &after).ok());
  ASSERT_EQ(after.logits.size(), before.logits.size());
  EXPECT_LE(testing::RelError(after.logits.data(), before.logits.data(), vocab), 1e-6);

  // An empty batch is a valid no-op.
  ForwardOutput empty;
  ASSERT_TRUE(gpu->Forward(ForwardBatch{}, &empty).ok());
  EXPECT_TRUE(empty.logits.empty());
  EXPECT_TRUE(empty.row_begin.empty());
}

TEST(CudaBackendTest, LoaderAndCreationErrorsAreClear) {
  testing::FixtureModel model = testing::LoadFixtureModel("llama2-mha");
  ASSERT_NE(model.weights, nullptr);
  auto missing = LoadCudaBackend(model.config, *model.weights, Pool(4, 16), {},
                                 "/nonexistent/libsals_backend_cuda.so");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find("/nonexistent/libsals_backend_cuda.so"),
            absl::string_view::npos)
      << missing.status();

  CudaBackendOptions f32;
  f32.dtype = DType::kF32;
  EXPECT_EQ(LoadCudaBackend(model.config, *model.weights, Pool(4, 16), f32).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadCudaBackend(model.config, *model.weights, Pool(0, 16)).status().code(),
            absl::StatusCode::kInvalidArgument);
  KvPoolConfig sals = Pool(4, 16);
  sals.format.sals.emplace();
  EXPECT_EQ(LoadCudaBackend(model.config, *model.weights, sals).status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace sals
