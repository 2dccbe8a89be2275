// SALS in the CPU reference backend: with full rank, unquantized values and a budget covering
// the context it equals dense attention; quantization and rank cost accuracy in order; sinks and
// the recent window are always attended; sequences in different slots do not interfere.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/sals/basis.h"
#include "gtest/gtest.h"
#include "tests/engine/backend/fixture_models.h"

namespace sals {
namespace {

using testing::FixtureModel;
using testing::RefSequence;

// A random orthogonal D x D basis (QR of a Gaussian matrix): reconstruction through it is exact
// at full rank but exercises every entry of U.
SalsBasis RandomOrthogonalBasis(const ModelConfig& config, uint32_t seed) {
  const int d = config.kv_width();
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  SalsBasis basis;
  basis.width = basis.rank = d;
  for (int l = 0; l < config.num_layers; ++l) {
    Eigen::MatrixXd g(d, d);
    for (int i = 0; i < d; ++i) {
      for (int j = 0; j < d; ++j) g(i, j) = normal(rng);
    }
    const Eigen::MatrixXd q = Eigen::HouseholderQR<Eigen::MatrixXd>(g).householderQ();
    std::vector<float> u(static_cast<size_t>(d) * d);
    for (int i = 0; i < d; ++i) {
      for (int j = 0; j < d; ++j) u[static_cast<size_t>(i) * d + j] = static_cast<float>(q(i, j));
    }
    basis.layers.push_back(std::move(u));
  }
  return basis;
}

struct SalsSetup {
  int rank = 0;  // 0 = full width
  int value_bits = 16;
  int sinks = 4;
  int recent = 8;
  SalsPolicy policy;
};

KvPoolConfig SalsPool(const ModelConfig& config, const SalsSetup& setup, int block_size) {
  KvPoolConfig pool;
  pool.num_blocks = 64;
  pool.block_size = block_size;
  pool.max_sequences = 4;
  SalsStorage storage;
  storage.rank = setup.rank == 0 ? config.kv_width() : setup.rank;
  storage.values = ValueQuantSpec{setup.value_bits, std::min(8, config.kv_width())};
  storage.sink_tokens = setup.sinks;
  storage.recent_tokens = setup.recent;
  pool.format.sals = storage;
  pool.format.dense_layer.assign(config.num_layers, false);  // every layer sparse
  return pool;
}

// Runs every reference stream (prefill in chunks of 8, then one token at a time) and returns all
// logits rows, per sequence and stream position.
std::vector<std::vector<std::vector<float>>> RunStreams(Backend& backend,
                                                        const std::vector<RefSequence>& refs,
                                                        const SalsPolicy& policy) {
  const int bs = backend.kv_pool().block_size;
  const int vocab = backend.config().vocab_size;
  std::vector<std::vector<std::vector<float>>> rows(refs.size());
  int next_block = 0;
  for (size_t s = 0; s < refs.size(); ++s) {
    const RefSequence& r = refs[s];
    std::vector<int32_t> table((r.stream.size() + bs - 1) / bs);
    std::iota(table.begin(), table.end(), next_block);
    next_block += static_cast<int>(table.size());
    for (int done = 0; done < static_cast<int>(r.stream.size());) {
      const int n = done < r.prompt_len ? std::min(8, r.prompt_len - done) : 1;
      ForwardBatch batch;
      SequenceSlice slice;
      slice.num_tokens = n;
      slice.context_len = done;
      slice.block_table = table;
      slice.all_logits = true;
      slice.exact_slot = static_cast<int32_t>(s);
      slice.policy = policy;
      batch.seqs.push_back(slice);
      batch.tokens.assign(r.stream.begin() + done, r.stream.begin() + done + n);
      ForwardOutput out;
      const absl::Status status = backend.Forward(batch, &out);
      EXPECT_TRUE(status.ok()) << status;
      if (!status.ok()) return rows;
      for (int j = 0; j < n; ++j) {
        rows[s].emplace_back(out.logits.begin() + static_cast<int64_t>(j) * vocab,
                             out.logits.begin() + static_cast<int64_t>(j + 1) * vocab);
      }
      done += n;
    }
  }
  return rows;
}

// Worst relative error of SALS decode rows (positions past the prompt) against dense ones.
double DecodeError(const std::vector<RefSequence>& refs,
                   const std::vector<std::vector<std::vector<float>>>& got,
                   const std::vector<std::vector<std::vector<float>>>& want) {
  double worst = 0.0;
  for (size_t s = 0; s < refs.size(); ++s) {
    for (size_t p = refs[s].prompt_len; p < refs[s].stream.size(); ++p) {
      worst = std::max(worst,
                       testing::RelError(got[s][p].data(), want[s][p].data(), want[s][p].size()));
    }
  }
  return worst;
}

class CpuSalsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = testing::LoadFixtureModel(GetParam());
    ASSERT_NE(model_.weights, nullptr);
    refs_ = testing::LoadReferenceStreams(GetParam(), model_.config.vocab_size);
    ASSERT_FALSE(refs_.empty());
    KvPoolConfig dense;
    dense.num_blocks = 64;
    dense.block_size = 5;
    auto backend = CreateCpuBackend(model_.config, *model_.weights, dense);
    ASSERT_TRUE(backend.ok()) << backend.status();
    dense_rows_ = RunStreams(**backend, refs_, SalsPolicy{});
  }

  std::unique_ptr<Backend> Sals(const SalsSetup& setup, SalsBasis basis,
                                CpuBackendOptions options = {}) {
    options.basis = std::move(basis);
    auto backend = CreateCpuBackend(model_.config, *model_.weights,
                                    SalsPool(model_.config, setup, 5), std::move(options));
    EXPECT_TRUE(backend.ok()) << backend.status();
    return backend.ok() ? std::move(*backend) : nullptr;
  }

  static SalsPolicy Policy(double topk_fraction, int token_budget = 0) {
    SalsPolicy p;
    p.topk_fraction = topk_fraction;
    p.token_budget = token_budget;
    p.sink_tokens = 4;
    p.recent_tokens = 8;
    return p;
  }

  FixtureModel model_;
  std::vector<RefSequence> refs_;
  std::vector<std::vector<std::vector<float>>> dense_rows_;
};

TEST_P(CpuSalsTest, FullRankUnquantizedFullBudgetEqualsDense) {
  SalsSetup setup;
  setup.policy = Policy(1.0);
  for (SalsBasis basis : {IdentityBasis(model_.config), RandomOrthogonalBasis(model_.config, 3)}) {
    auto backend = Sals(setup, std::move(basis));
    ASSERT_NE(backend, nullptr);
    const auto rows = RunStreams(*backend, refs_, setup.policy);
    double worst = 0.0;
    for (size_t s = 0; s < refs_.size(); ++s) {
      for (size_t p = 0; p < refs_[s].stream.size(); ++p) {
        worst = std::max(worst, testing::RelError(rows[s][p].data(), dense_rows_[s][p].data(),
                                                  dense_rows_[s][p].size()));
      }
    }
    std::printf("[sals] %s full rank, fp values, full budget vs dense: max rel err %.3g\n",
                GetParam().c_str(), worst);
    EXPECT_LE(worst, 1e-5);
  }
}

TEST_P(CpuSalsTest, QuantizationAndSparsityCostAccuracyInOrder) {
  // Full budget: only value quantization differs from dense; 2-bit must cost more than 4-bit.
  std::map<int, double> by_bits;
  for (int bits : {4, 2}) {
    SalsSetup setup;
    setup.value_bits = bits;
    auto backend = Sals(setup, IdentityBasis(model_.config));
    ASSERT_NE(backend, nullptr);
    by_bits[bits] = DecodeError(refs_, RunStreams(*backend, refs_, Policy(1.0)), dense_rows_);
  }
  // Sparse selection (1/8 of the context) at full rank and fp values.
  SalsSetup sparse;
  auto backend = Sals(sparse, IdentityBasis(model_.config));
  ASSERT_NE(backend, nullptr);
  const double sparse_err =
      DecodeError(refs_, RunStreams(*backend, refs_, Policy(0.125)), dense_rows_);
  std::printf("[sals] %s decode max rel err vs dense: 4-bit %.3g, 2-bit %.3g, top-1/8 %.3g\n",
              GetParam().c_str(), by_bits[4], by_bits[2], sparse_err);
  EXPECT_GT(by_bits[4], 0.0);
  EXPECT_LT(by_bits[4], by_bits[2]);
  EXPECT_TRUE(std::isfinite(by_bits[2]));
  EXPECT_GT(sparse_err, 0.0);
}

TEST_P(CpuSalsTest, SinksAndRecentAlwaysAttendedPlusExactlyTopK) {
  std::vector<std::vector<int64_t>> seen;
  CpuBackendOptions options;
  options.selection_observer = [&](int, int, int, std::span<const int64_t> positions) {
    seen.emplace_back(positions.begin(), positions.end());
  };
  SalsSetup setup;
  auto backend = Sals(setup, RandomOrthogonalBasis(model_.config, 5), std::move(options));
  ASSERT_NE(backend, nullptr);
  RunStreams(*backend, refs_, Policy(0.0, /*token_budget=*/2));
  ASSERT_FALSE(seen.empty());
  for (const std::vector<int64_t>& positions : seen) {
    ASSERT_TRUE(std::is_sorted(positions.begin(), positions.end()));
    // The step's own position is the next after the last cached one; context = that + 1.
    const int64_t pos = positions.back() + 1;
    const int64_t context = pos + 1;
    std::vector<int64_t> expected_fixed;
    for (int64_t j = 0; j < std::min<int64_t>(4, context); ++j) expected_fixed.push_back(j);
    for (int64_t j = std::max<int64_t>(4, context - 8); j < pos; ++j) expected_fixed.push_back(j);
    for (int64_t j : expected_fixed) {
      EXPECT_TRUE(std::binary_search(positions.begin(), positions.end(), j))
          << "position " << j << " missing at step " << pos;
    }
    const int64_t middle = std::max<int64_t>(0, context - 8 - 4);
    EXPECT_EQ(positions.size(), expected_fixed.size() + std::min<int64_t>(2, middle));
  }
}

TEST_P(CpuSalsTest, PerKvHeadFullBudgetEqualsShared) {
  // Every middle token selected: each KV head's list is the shared one, so attending per head
  // (rows gathered per head) must give the shared path's logits bit for bit.
  SalsSetup setup;
  setup.value_bits = 4;
  auto backend = Sals(setup, RandomOrthogonalBasis(model_.config, 4));
  ASSERT_NE(backend, nullptr);
  SalsPolicy per_head = Policy(1.0);
  per_head.selection = SalsSelection::kPerKvHead;
  const auto shared_rows = RunStreams(*backend, refs_, Policy(1.0));
  const auto per_head_rows = RunStreams(*backend, refs_, per_head);
  EXPECT_EQ(shared_rows, per_head_rows);
}

TEST_P(CpuSalsTest, PerKvHeadListsOnePerHeadWellFormedAndDeterministic) {
  struct Step {
    int layer, kv_head;
    std::vector<int64_t> positions;
  };
  std::vector<Step> seen;
  CpuBackendOptions options;
  options.selection_observer = [&](int layer, int, int kv_head,
                                   std::span<const int64_t> positions) {
    seen.push_back(Step{layer, kv_head, {positions.begin(), positions.end()}});
  };
  SalsSetup setup;
  setup.rank = model_.config.kv_width() / 2;
  auto backend = Sals(setup, RandomOrthogonalBasis(model_.config, 6), std::move(options));
  ASSERT_NE(backend, nullptr);
  SalsPolicy policy = Policy(0.0, /*token_budget=*/2);
  policy.selection = SalsSelection::kPerKvHead;
  RunStreams(*backend, refs_, policy);
  const std::vector<Step> first = std::move(seen);
  seen.clear();
  RunStreams(*backend, refs_, policy);
  const int heads = model_.config.num_kv_heads;
  ASSERT_EQ(first.size(), seen.size());
  ASSERT_FALSE(first.empty());
  ASSERT_EQ(first.size() % heads, 0u);
  int differing = 0;
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].positions, seen[i].positions) << "step " << i << " not deterministic";
    EXPECT_EQ(first[i].kv_head, static_cast<int>(i % heads));  // heads in order, each once
    const std::vector<int64_t>& p = first[i].positions;
    ASSERT_TRUE(std::is_sorted(p.begin(), p.end()));
    ASSERT_TRUE(std::adjacent_find(p.begin(), p.end()) == p.end());
    // Every head attends as many tokens: sinks + recent + min(2, middle).
    const std::vector<int64_t>& head0 = first[i - i % heads].positions;
    EXPECT_EQ(p.size(), head0.size());
    if (p != head0) ++differing;
    // The fixed windows are in every list.
    const int64_t pos = p.back() + 1, context = pos + 1;
    for (int64_t j = 0; j < std::min<int64_t>(4, context); ++j) {
      EXPECT_TRUE(std::binary_search(p.begin(), p.end(), j));
    }
    for (int64_t j = std::max<int64_t>(4, context - 8); j < pos; ++j) {
      EXPECT_TRUE(std::binary_search(p.begin(), p.end(), j));
    }
  }
  std::printf("[sals] %s per-KV-head: %d of %zu lists differ from KV head 0's\n",
              GetParam().c_str(), differing, first.size());
  if (heads > 1) {
    EXPECT_GT(differing, 0);  // the heads do select for themselves
  }
}

TEST_P(CpuSalsTest, SlotsIsolateSequencesInOneBatch) {
  SalsSetup setup;
  setup.value_bits = 4;
  setup.rank = model_.config.kv_width() / 4;
  auto alone = Sals(setup, RandomOrthogonalBasis(model_.config, 9));
  auto together = Sals(setup, RandomOrthogonalBasis(model_.config, 9));
  ASSERT_NE(alone, nullptr);
  ASSERT_NE(together, nullptr);
  const SalsPolicy policy = Policy(0.25);
  const auto want = RunStreams(*alone, refs_, policy);
  // Both longer sequences advance in the same steps, sharing every batch.
  const int bs = 5, vocab = model_.config.vocab_size;
  std::vector<std::vector<int32_t>> tables(2);
  std::vector<int> done(2, 0);
  for (int s = 0; s < 2; ++s) {
    const size_t blocks = (refs_[s + 1].stream.size() + bs - 1) / bs;
    for (size_t b = 0; b < blocks; ++b) tables[s].push_back(static_cast<int32_t>(2 * b + s));
  }
  while (done[0] < static_cast<int>(refs_[1].stream.size()) ||
         done[1] < static_cast<int>(refs_[2].stream.size())) {
    ForwardBatch batch;
    std::vector<int> members;
    for (int s = 0; s < 2; ++s) {
      const RefSequence& r = refs_[s + 1];
      if (done[s] >= static_cast<int>(r.stream.size())) continue;
      SequenceSlice slice;
      slice.num_tokens = done[s] < r.prompt_len ? std::min(8, r.prompt_len - done[s]) : 1;
      slice.context_len = done[s];
      slice.block_table = tables[s];
      slice.all_logits = true;
      slice.exact_slot = 3 - s;
      slice.policy = policy;
      batch.tokens.insert(batch.tokens.end(), r.stream.begin() + done[s],
                          r.stream.begin() + done[s] + slice.num_tokens);
      batch.seqs.push_back(slice);
      members.push_back(s);
    }
    ForwardOutput out;
    ASSERT_TRUE(together->Forward(batch, &out).ok());
    for (size_t m = 0; m < members.size(); ++m) {
      const int s = members[m];
      for (int j = 0; j < batch.seqs[m].num_tokens; ++j) {
        const float* row = out.logits.data() + static_cast<int64_t>(out.row_begin[m] + j) * vocab;
        const std::vector<float>& w = want[s + 1][done[s] + j];
        EXPECT_LE(testing::RelError(row, w.data(), w.size()), 1e-5)
            << "sequence " << s + 1 << " position " << done[s] + j;
      }
      done[s] += batch.seqs[m].num_tokens;
    }
  }
}

TEST_P(CpuSalsTest, RejectsBadSlotsPoliciesAndBases) {
  SalsSetup setup;
  auto backend = Sals(setup, IdentityBasis(model_.config));
  ASSERT_NE(backend, nullptr);
  ForwardBatch batch;
  SequenceSlice slice;
  slice.num_tokens = 1;
  slice.block_table = {0};
  slice.policy = Policy(0.125);
  batch.tokens = {1};
  slice.exact_slot = 4;  // max_sequences is 4
  batch.seqs = {slice};
  ForwardOutput out;
  EXPECT_EQ(backend->Forward(batch, &out).code(), absl::StatusCode::kInvalidArgument);
  slice.exact_slot = 0;
  slice.policy.recent_tokens = 9;  // more than the 8 stored exact
  batch.seqs = {slice};
  EXPECT_EQ(backend->Forward(batch, &out).code(), absl::StatusCode::kInvalidArgument);
  // A basis narrower than the stored rank.
  SalsBasis small = IdentityBasis(model_.config);
  small.rank = 1;
  auto bad = CreateCpuBackend(model_.config, *model_.weights, SalsPool(model_.config, setup, 5),
                              CpuBackendOptions{std::move(small), nullptr, nullptr});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CpuSalsTest,
                         ::testing::Values("llama2-mha", "mistral-gqa", "llama31-bpe"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace sals
