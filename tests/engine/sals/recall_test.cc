// Top-k recall of the true attention mass on the fixture models: exactly 1 when the plan keeps
// every token, and better than a random pick of the same size with the calibrated bases. The
// measured numbers are printed.
#include "engine/sals/recall.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cpu/cpu_ops.h"
#include "engine/sals/basis.h"
#include "engine/sals/dense_capture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/backend/fixture_models.h"

namespace sals {
namespace {

constexpr int kTokens = 640;

class RecallTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = testing::LoadFixtureModel(GetParam());
    recorder_.emplace(model_.config);
    std::mt19937 rng(7);
    std::vector<int32_t> tokens(kTokens);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % model_.config.vocab_size);
    tokens[0] = model_.config.bos_token_id;
    tokens_ = tokens;
    auto capture = DenseCapture::Create(model_.config, *model_.weights, kTokens, 256,
                                        [&](int layer, std::span<const float> rows, int64_t n) {
                                          recorder_->Observe(layer, rows, n);
                                        });
    ASSERT_TRUE(capture.ok()) << capture.status();
    ASSERT_TRUE((*capture)->Run(tokens).ok());
  }

  SalsBasis CalibratedBasis(double fraction) {
    const int rank =
        std::max(1, static_cast<int>(std::lround(model_.config.kv_width() * fraction)));
    auto basis =
        LoadSalsBasis(testing::FixtureDir(GetParam()) / kCalibrationFileName, model_.config, rank);
    EXPECT_TRUE(basis.ok()) << basis.status();
    return basis.ok() ? *basis : SalsBasis{};
  }

  void CheckFirstLayerAgainstBackend(SalsSelection selection);

  testing::FixtureModel model_;
  std::vector<int32_t> tokens_;
  std::optional<QueryKeyRecorder> recorder_;
};

TEST_P(RecallTest, KeepingEveryMiddleTokenRecallsEverything) {
  const SalsBasis basis = CalibratedBasis(0.25);
  RecallOptions options;
  options.start = 80;
  for (bool select_all : {true, false}) {
    options.policy.select_all = select_all;
    options.policy.topk_fraction = 1.0;
    auto report = MeasureRecall(model_.config, basis, *recorder_, options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->layers.size(), static_cast<size_t>(model_.config.num_layers));
    EXPECT_EQ(report->overall.samples, model_.config.num_layers * (kTokens - 80));
    EXPECT_NEAR(report->overall.min, 1.0, 1e-12);
    EXPECT_NEAR(report->overall.mean, 1.0, 1e-12);
    EXPECT_NEAR(report->overall.selected_fraction, 1.0, 1e-12);
  }
}

TEST_P(RecallTest, CalibratedBasesBeatARandomPick) {
  for (double rank : {0.25, 0.125}) {
    const SalsBasis basis = CalibratedBasis(rank);
    RecallOptions options;
    options.start = 80;
    options.policy.topk_fraction = 0.125;
    auto report = MeasureRecall(model_.config, basis, *recorder_, options);
    ASSERT_TRUE(report.ok()) << report.status();
    const RecallStats& all = report->overall;
    std::printf(
        "[recall] %-12s rank %.3f (r=%d) top-k 0.125, positions 80..%d: mean %.4f min %.4f "
        "(attended %.4f of tokens, random pick %.4f)\n",
        GetParam().c_str(), rank, basis.rank, kTokens - 1, all.mean, all.min, all.selected_fraction,
        all.random_recall);
    for (const LayerRecall& l : report->layers) {
      std::printf("[recall]   layer %d: mean %.4f min %.4f random %.4f\n", l.layer, l.stats.mean,
                  l.stats.min, l.stats.random_recall);
    }
    EXPECT_GE(all.mean, all.selected_fraction);
    EXPECT_GT(all.mean, all.random_recall);
    EXPECT_LE(all.mean, 1.0);
    EXPECT_GT(all.min, 0.0);
  }
}

// The backend's own selections (a SALS run, one decode step at a time) scored independently here
// must give the recall MeasureRecall computes from the same run's projections. Only the first
// layer is compared: its queries and keys do not depend on earlier SALS layers, so they are the
// dense run's, which MeasureRecall assumes. Shared and per-KV-head selection (one list per KV
// head, each query head scored on its own KV head's list).
TEST_P(RecallTest, MatchesTheBackendsSelectionInTheFirstLayer) {
  for (SalsSelection selection : {SalsSelection::kShared, SalsSelection::kPerKvHead}) {
    SCOPED_TRACE(std::string(SalsSelectionName(selection)));
    CheckFirstLayerAgainstBackend(selection);
  }
}

void RecallTest::CheckFirstLayerAgainstBackend(SalsSelection selection) {
  const ModelConfig& c = model_.config;
  const SalsBasis basis = CalibratedBasis(0.25);
  constexpr int kStart = 200, kEnd = 320;
  KvPoolConfig pool;
  pool.num_blocks = kEnd / 16 + 1;
  pool.max_sequences = 1;
  SalsStorage storage;
  storage.rank = basis.rank;
  storage.values = ValueQuantSpec{16, c.kv_width()};
  pool.format.sals = storage;
  pool.format.dense_layer.assign(c.num_layers, false);
  // decode position -> layer 0's lists (one shared, or one per KV head)
  std::map<int64_t, std::vector<std::vector<int64_t>>> selected;
  int64_t step_pos = 0;
  QueryKeyRecorder recorded(c);  // what this run's layers saw, rounding included
  CpuBackendOptions options;
  options.basis = basis;
  options.projection_observer = [&](int layer, std::span<const float> rows, int64_t n) {
    recorded.Observe(layer, rows, n);
  };
  options.selection_observer = [&](int layer, int, int kv_head,
                                   std::span<const int64_t> positions) {
    if (layer != 0) return;
    auto& lists = selected[step_pos];
    EXPECT_EQ(kv_head, selection == SalsSelection::kShared ? -1 : static_cast<int>(lists.size()));
    lists.emplace_back(positions.begin(), positions.end());
  };
  auto backend = CreateCpuBackend(c, *model_.weights, pool, options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  std::vector<int32_t> table(pool.num_blocks);
  std::iota(table.begin(), table.end(), 0);
  for (int64_t pos = 0; pos < kEnd;) {
    const int64_t n = pos == 0 ? kStart : 1;
    ForwardBatch batch;
    SequenceSlice& seq = batch.seqs.emplace_back();
    seq.num_tokens = static_cast<int32_t>(n);
    seq.context_len = static_cast<int32_t>(pos);
    seq.block_table = table;
    seq.exact_slot = 0;
    seq.policy.selection = selection;
    batch.tokens.assign(tokens_.begin() + pos, tokens_.begin() + pos + n);
    step_pos = pos;
    ForwardOutput out;
    ASSERT_TRUE((*backend)->Forward(batch, &out).ok());
    pos += n;
  }
  ASSERT_EQ(selected.size(), static_cast<size_t>(kEnd - kStart));

  // Recall of the backend's selections from its layer-0 projections.
  const std::vector<double> inv_freq = RopeInverseFrequencies(c);
  std::vector<float> q = recorded.queries(0), k = recorded.keys(0);
  for (int64_t t = 0; t < kEnd; ++t) {
    cpu::ApplyRope(q.data() + t * c.q_width(), c.num_heads, c.head_dim, inv_freq, t);
    cpu::ApplyRope(k.data() + t * c.kv_width(), c.num_kv_heads, c.head_dim, inv_freq, t);
  }
  double sum = 0.0;
  for (auto& [p, lists] : selected) {
    ASSERT_EQ(lists.size(),
              selection == SalsSelection::kShared ? 1u : static_cast<size_t>(c.num_kv_heads));
    for (std::vector<int64_t>& positions : lists) positions.push_back(p);  // the new token
    double recall = 0.0;
    for (int h = 0; h < c.num_heads; ++h) {
      const std::vector<int64_t>& positions = lists[lists.size() == 1 ? 0 : h / c.group_size()];
      std::vector<double> w(p + 1);
      for (int64_t j = 0; j <= p; ++j) {
        double dot = 0.0;
        for (int i = 0; i < c.head_dim; ++i) {
          dot += static_cast<double>(q[p * c.q_width() + h * c.head_dim + i]) *
                 k[j * c.kv_width() + (h / c.group_size()) * c.head_dim + i];
        }
        w[j] = dot / std::sqrt(static_cast<double>(c.head_dim));
      }
      const double max = *std::max_element(w.begin(), w.end());
      double total = 0.0, kept = 0.0;
      for (double& x : w) total += (x = std::exp(x - max));
      for (int64_t j : positions) kept += w[j];
      recall += kept / total / c.num_heads;
    }
    sum += recall;
  }
  RecallOptions recall_options;
  recall_options.start = kStart;
  recall_options.layers = {0};
  recall_options.policy.selection = selection;
  auto report = MeasureRecall(c, basis, recorded, recall_options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_NEAR(report->layers[0].stats.mean, sum / (kEnd - kStart), 1e-9);
}

TEST_P(RecallTest, SelectedLayersOnlyAndErrors) {
  const SalsBasis basis = CalibratedBasis(0.25);
  RecallOptions options;
  options.layers = {1};
  options.start = kTokens - 10;
  auto report = MeasureRecall(model_.config, basis, *recorder_, options);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->layers.size(), 1u);
  EXPECT_EQ(report->layers[0].layer, 1);
  EXPECT_EQ(report->overall.samples, 10);
  // Per-layer scoring dims equal to the policy's (half the rank) change nothing; other counts
  // or out-of-range dims are errors.
  options.layer_score_dims.assign(model_.config.num_layers, basis.rank / 2);
  auto same = MeasureRecall(model_.config, basis, *recorder_, options);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->overall.mean, report->overall.mean);
  options.layer_score_dims[1] = basis.rank + 1;
  EXPECT_FALSE(MeasureRecall(model_.config, basis, *recorder_, options).ok());
  options.layer_score_dims.assign(model_.config.num_layers + 1, 1);
  EXPECT_FALSE(MeasureRecall(model_.config, basis, *recorder_, options).ok());
  options.layer_score_dims.clear();

  options.start = kTokens;
  EXPECT_THAT(
      std::string(MeasureRecall(model_.config, basis, *recorder_, options).status().message()),
      ::testing::HasSubstr("nothing to measure"));
  options.start = 0;
  options.layers = {model_.config.num_layers};
  EXPECT_FALSE(MeasureRecall(model_.config, basis, *recorder_, options).ok());
  options.layers = {};
  options.policy.score_dims = basis.rank + 1;
  EXPECT_FALSE(MeasureRecall(model_.config, basis, *recorder_, options).ok());
  SalsBasis narrow = basis;
  narrow.width += 1;
  EXPECT_FALSE(MeasureRecall(model_.config, narrow, *recorder_, RecallOptions{}).ok());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RecallTest,
                         ::testing::Values("llama2-mha", "mistral-gqa", "llama31-bpe"));

}  // namespace
}  // namespace sals
