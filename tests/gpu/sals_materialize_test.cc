// Device tests of the SALS materializers (sals_materialize.h) against the CPU reference's
// CpuKvStore::ReadSals: the same tokens stored by the GPU writers and by CpuKvStore::WriteSals,
// then every cached token of a few sequences (the context of a prefill chunk) and the tokens a
// decode step selected (sinks, chosen middle tokens, recent) read back as dense fp16 rows. Exact
// rows and dequantized values match to fp16 rounding; rebuilt keys to the fp16 rounding of the
// stored latents. Rows outside the written ranges keep their poison.
#include "sals/kernels/sals_materialize.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_kv_store.h"
#include "engine/kv/kv_format.h"
#include "engine/model/config.h"
#include "engine/sals/basis.h"
#include "sals/kernels/sals_kv.h"
#include "tests/gpu/test_util.h"

namespace sals::kernels::gpu_test {
namespace {

struct MaterializeCase {
  DType dtype;  // of the writers' input
  int num_kv_heads;
  int head_dim;
  int rank;  // stored
  int bits;
  int group_size;
  int sinks;
  int recent;
  int block_size;
};

std::string CaseName(const MaterializeCase& c) {
  return std::string(DTypeName(c.dtype)) + "_kv" + std::to_string(c.num_kv_heads) + "_d" +
         std::to_string(c.head_dim) + "_r" + std::to_string(c.rank) + "_b" +
         std::to_string(c.bits) + "_g" + std::to_string(c.group_size) + "_s" +
         std::to_string(c.sinks) + "_w" + std::to_string(c.recent) + "_bs" +
         std::to_string(c.block_size);
}

// Random D x rank basis with orthonormal columns (Gram-Schmidt in double), rounded to fp16: the
// CPU reference gets the rounded values, so both sides rebuild from the same U.
std::vector<float> RandomBasis(std::mt19937_64& rng, int width, int rank) {
  std::normal_distribution<double> normal;
  std::vector<double> u(static_cast<size_t>(width) * rank);
  for (int j = 0; j < rank; ++j) {
    for (int i = 0; i < width; ++i) u[i * rank + j] = normal(rng);
    for (int k = 0; k < j; ++k) {
      double dot = 0.0;
      for (int i = 0; i < width; ++i) dot += u[i * rank + j] * u[i * rank + k];
      for (int i = 0; i < width; ++i) u[i * rank + j] -= dot * u[i * rank + k];
    }
    double norm = 0.0;
    for (int i = 0; i < width; ++i) norm += u[i * rank + j] * u[i * rank + j];
    for (int i = 0; i < width; ++i) u[i * rank + j] /= std::sqrt(norm);
  }
  std::vector<float> out(u.size());
  for (size_t i = 0; i < u.size(); ++i) out[i] = Decode(DType::kF16, Encode(DType::kF16, u[i]));
  return out;
}

class SalsMaterializeTest : public ::testing::TestWithParam<MaterializeCase> {
 protected:
  static constexpr int kSeqs = 3;
  static constexpr int kSlots = 4;  // exact sequence slots

  void SetUp() override {
    RequireDevice();
    const MaterializeCase& p = GetParam();
    rng_ = FreshRng();
    width_ = p.num_kv_heads * p.head_dim;
    config_.num_layers = 1;
    config_.num_heads = p.num_kv_heads;
    config_.num_kv_heads = p.num_kv_heads;
    config_.head_dim = p.head_dim;
    config_.hidden_size = width_;
    config_.rope_theta = 10000.0;
    config_.max_position_embeddings = 4096;
    // A short context (shorter than the sinks for small windows), a middle one, and a long one
    // whose first tokens came from the prefix cache (ring rows exact only from valid_from on).
    lens_ = {std::max(2, p.sinks / 2 + 1), 37, 150};
    valid_from_ = {0, 0, 150 - p.recent / 2};
    exact_slot_ = {2, 0, 3};
    int blocks = 0;
    for (int len : lens_) blocks += (len + p.block_size - 1) / p.block_size;
    pool_.num_blocks = blocks + 3;
    pool_.block_size = p.block_size;
    pool_.max_sequences = kSlots;
    SalsStorage storage;
    storage.rank = p.rank;
    storage.values = ValueQuantSpec{p.bits, p.group_size};
    storage.sink_tokens = p.sinks;
    storage.recent_tokens = p.recent;
    pool_.format.sals = storage;
    pool_.format.dense_layer = {false};
    basis_.width = width_;
    basis_.rank = p.rank;
    basis_.layers = {RandomBasis(rng_, width_, p.rank)};
    cpu_ = std::make_unique<cpu::CpuKvStore>(config_, pool_, &basis_);

    // Scattered block tables.
    std::vector<int32_t> ids(pool_.num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    table_stride_ = 0;
    for (int len : lens_) {
      table_stride_ = std::max<int64_t>(table_stride_, (len + p.block_size - 1) / p.block_size);
    }
    tables_.assign(kSeqs * table_stride_, 0);
    for (int b = 0, next = 0; b < kSeqs; ++b) {
      for (int j = 0; j < (lens_[b] + p.block_size - 1) / p.block_size; ++j) {
        tables_[b * table_stride_ + j] = ids[next++];
      }
    }

    // Device storage, poisoned so that reads of never-written storage would show.
    const int64_t slots = static_cast<int64_t>(pool_.num_blocks) * p.block_size;
    SalsKvCache c;
    c.num_kv_heads = p.num_kv_heads;
    c.head_dim = p.head_dim;
    c.rank = p.rank;
    c.basis_stride = p.rank;
    c.block_size = p.block_size;
    c.value_bits = p.bits;
    c.value_group_size = p.group_size;
    c.sink_tokens = p.sinks;
    c.recent_tokens = p.recent;
    latent_ = PoisonedBuffer16(slots * p.rank);
    codes_ = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(slots * c.code_bytes()));
    scale_zero_ = ValueOrDie(DeviceBuffer<__half2>::Allocate(std::max(1, c.groups()) * slots));
    exact_k_ = PoisonedBuffer16(static_cast<size_t>(kSlots) * c.exact_rows() * width_);
    exact_v_ = PoisonedBuffer16(static_cast<size_t>(kSlots) * c.exact_rows() * width_);
    std::vector<uint16_t> basis16(basis_.layers[0].size());
    for (size_t i = 0; i < basis16.size(); ++i) {
      basis16[i] = Encode(DType::kF16, basis_.layers[0][i]);
    }
    basis_dev_ = ToDevice(basis16);
    c.latent = reinterpret_cast<__half*>(latent_.get());
    c.value_codes = codes_.get();
    c.value_scale_zero = scale_zero_.get();
    c.exact_k = reinterpret_cast<__half*>(exact_k_.get());
    c.exact_v = reinterpret_cast<__half*>(exact_v_.get());
    c.basis = reinterpret_cast<const __half*>(basis_dev_.get());
    tables_dev_ = ToDevice(tables_);
    lens_dev_ = ToDevice(lens_);
    slots_dev_ = ToDevice(exact_slot_);
    valid_dev_ = ToDevice(valid_from_);
    c.block_tables = tables_dev_.get();
    c.block_table_stride = table_stride_;
    c.kv_lens = lens_dev_.get();
    c.exact_slots = slots_dev_.get();
    c.exact_valid_from = valid_dev_.get();
    cache_ = c;

    // The tokens: one row [k_pre | k_post | v] each, stored by both sides, sequence after
    // sequence, each token of a sequence in order (as one prefill chunk per sequence).
    std::vector<int64_t> token_slots, exact_rows;
    int total = 0;
    for (int len : lens_) total += len;
    const int row = 3 * width_;
    const Tensor16 data = RandomTensor(rng_, p.dtype, static_cast<size_t>(total) * row, -1, 1);
    for (int b = 0, t = 0; b < kSeqs; ++b) {
      const std::span<const int32_t> table(tables_.data() + b * table_stride_, table_stride_);
      for (int pos = 0; pos < lens_[b]; ++pos, ++t) {
        const float* r = data.values.data() + static_cast<int64_t>(t) * row;
        cpu_->WriteSals(0, exact_slot_[b], table, pos, r, r + width_, r + 2 * width_);
        token_slots.push_back(static_cast<int64_t>(table[pos / p.block_size]) * p.block_size +
                              pos % p.block_size);
        const int64_t base = static_cast<int64_t>(exact_slot_[b]) * c.exact_rows();
        exact_rows.push_back(pos < p.sinks                ? base + pos
                             : pos >= lens_[b] - p.recent ? base + p.sinks + pos % p.recent
                                                          : -1);
      }
    }
    const DeviceBuffer<uint16_t> d_data = ToDevice(data.bits);
    const DeviceBuffer<int64_t> d_slots = ToDevice(token_slots);
    const DeviceBuffer<int64_t> d_exact = ToDevice(exact_rows);
    SALS_ASSERT_OK(SalsWriteLatentValues(p.dtype, c, d_data.get(), d_data.get() + 2 * width_, row,
                                         total, d_slots.get(), nullptr));
    SALS_ASSERT_OK(SalsWriteExact(p.dtype, c, d_data.get() + width_, d_data.get() + 2 * width_, row,
                                  total, d_exact.get(), nullptr));
    SALS_CUDA_CHECK(cudaDeviceSynchronize());

    const std::vector<double> inv_freq = RopeInverseFrequencies(config_);
    inv_freq_ = ToDevice(std::vector<float>(inv_freq.begin(), inv_freq.end()));
  }

  // Compares the device rows [first_row, first_row + positions.size()) with ReadSals of
  // `positions` of sequence b, keys rebuilt at `rank`.
  void ExpectRows(const std::vector<uint16_t>& k_rows, const std::vector<uint16_t>& v_rows,
                  int64_t first_row, int b, const std::vector<int64_t>& positions, int rank,
                  const std::string& what) {
    const std::span<const int32_t> table(tables_.data() + b * table_stride_, table_stride_);
    std::vector<float> want_k(positions.size() * width_), want_v(positions.size() * width_);
    for (size_t i = 0; i < positions.size(); ++i) {
      cpu_->ReadSals(0, exact_slot_[b], table, positions[i], lens_[b], valid_from_[b], rank,
                     want_k.data() + i * width_, want_v.data() + i * width_);
    }
    const size_t n = positions.size() * width_;
    const std::vector<float> got_k =
        DecodeAll(DType::kF16, std::span<const uint16_t>(k_rows.data() + first_row * width_, n));
    const std::vector<float> got_v =
        DecodeAll(DType::kF16, std::span<const uint16_t>(v_rows.data() + first_row * width_, n));
    // Keys: the stored latents are fp16 (the reference keeps fp32), then the row is rounded.
    ExpectClose(got_k, want_k, 4e-3f, 4e-3f, what + " keys");
    // Values: the same codes and pairs, dequantized in fp32, rounded once to fp16.
    ExpectClose(got_v, want_v, 1e-6f, 1e-3f, what + " values");
  }

  std::mt19937_64 rng_;
  int width_ = 0;
  ModelConfig config_;
  KvPoolConfig pool_;
  SalsBasis basis_;
  std::unique_ptr<cpu::CpuKvStore> cpu_;
  std::vector<int32_t> lens_, valid_from_, exact_slot_, tables_;
  int64_t table_stride_ = 0;
  DeviceBuffer<uint16_t> latent_, exact_k_, exact_v_, basis_dev_;
  DeviceBuffer<uint8_t> codes_;
  DeviceBuffer<__half2> scale_zero_;
  DeviceBuffer<int32_t> tables_dev_, lens_dev_, slots_dev_, valid_dev_;
  DeviceBuffer<float> inv_freq_;
  SalsKvCache cache_;
};

TEST_P(SalsMaterializeTest, ContextMatchesReadSals) {
  const MaterializeCase& p = GetParam();
  // Per sequence a different rank (all, a multiple of 8 below it, an odd prefix), rows with gaps.
  const std::vector<int32_t> ranks = {p.rank, std::max(1, p.rank / 2), std::max(1, p.rank - 3)};
  std::vector<int32_t> dst(kSeqs);
  int64_t rows = 5;
  for (int b = 0; b < kSeqs; ++b) {
    dst[b] = static_cast<int32_t>(rows);
    rows += lens_[b] + 3;
  }
  DeviceBuffer<uint16_t> k_out = PoisonedBuffer16(rows * width_);
  DeviceBuffer<uint16_t> v_out = PoisonedBuffer16(rows * width_);
  const DeviceBuffer<int32_t> d_ranks = ToDevice(ranks);
  const DeviceBuffer<int32_t> d_dst = ToDevice(dst);
  const int max_cached = *std::max_element(lens_.begin(), lens_.end());
  SALS_ASSERT_OK(SalsMaterializeContext(cache_, kSeqs, max_cached, d_ranks.get(), d_dst.get(),
                                        inv_freq_.get(), reinterpret_cast<__half*>(k_out.get()),
                                        reinterpret_cast<__half*>(v_out.get()), nullptr));
  const std::vector<uint16_t> k_rows = ToHost(k_out), v_rows = ToHost(v_out);
  std::vector<bool> written(rows, false);
  for (int b = 0; b < kSeqs; ++b) {
    std::vector<int64_t> positions(lens_[b]);
    std::iota(positions.begin(), positions.end(), 0);
    ExpectRows(k_rows, v_rows, dst[b], b, positions, ranks[b],
               "sequence " + std::to_string(b) + " rank " + std::to_string(ranks[b]));
    std::fill_n(written.begin() + dst[b], lens_[b], true);
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (written[r]) continue;
    for (int i = 0; i < width_; ++i) {
      ASSERT_EQ(k_rows[r * width_ + i], 0xffff) << "row " << r << " written";
      ASSERT_EQ(v_rows[r * width_ + i], 0xffff) << "row " << r << " written";
    }
  }

  // max_cached below a sequence's length cuts it.
  DeviceBuffer<uint16_t> k_cut = PoisonedBuffer16(rows * width_);
  DeviceBuffer<uint16_t> v_cut = PoisonedBuffer16(rows * width_);
  SALS_ASSERT_OK(SalsMaterializeContext(cache_, kSeqs, 20, d_ranks.get(), d_dst.get(),
                                        inv_freq_.get(), reinterpret_cast<__half*>(k_cut.get()),
                                        reinterpret_cast<__half*>(v_cut.get()), nullptr));
  const std::vector<uint16_t> k_cut_rows = ToHost(k_cut);
  EXPECT_EQ(k_cut_rows[(dst[2] + 19) * int64_t{width_}], k_rows[(dst[2] + 19) * int64_t{width_}]);
  EXPECT_EQ(k_cut_rows[(dst[2] + 20) * int64_t{width_}], 0xffff);
}

TEST_P(SalsMaterializeTest, SelectionMatchesReadSals) {
  const MaterializeCase& p = GetParam();
  SalsSelectionPolicy policy;
  policy.rank = std::max(1, p.rank - 5);  // any prefix, not only multiples of 8
  policy.score_dims = 1;
  policy.topk_fraction = 0.25;
  policy.sink_tokens = std::max(0, p.sinks - 1);
  policy.recent_tokens = std::max(1, p.recent - 2);
  const int max_cached = *std::max_element(lens_.begin(), lens_.end());
  const int max_topk = std::max(1, SalsPlanSelection(policy, max_cached).topk) + 2;
  std::vector<int32_t> selected(kSeqs * max_topk, -7);
  std::vector<std::vector<int64_t>> expected(kSeqs);
  std::vector<int32_t> dst(kSeqs);
  int64_t rows = 2;
  for (int b = 0; b < kSeqs; ++b) {
    const int cached = lens_[b];
    const SalsSelection sel = SalsPlanSelection(policy, cached);
    std::vector<int32_t> middle(sel.middle());
    std::iota(middle.begin(), middle.end(), sel.sink_end);
    std::shuffle(middle.begin(), middle.end(), rng_);
    middle.resize(sel.topk);
    std::sort(middle.begin(), middle.end());
    std::copy(middle.begin(), middle.end(), selected.begin() + b * max_topk);
    for (int j = 0; j < std::min(sel.sink_end, cached); ++j) expected[b].push_back(j);
    expected[b].insert(expected[b].end(), middle.begin(), middle.end());
    for (int j = sel.recent_begin; j < cached; ++j) expected[b].push_back(j);
    ASSERT_EQ(static_cast<int>(expected[b].size()), sel.attended(cached) - 1);
    dst[b] = static_cast<int32_t>(rows);
    rows += expected[b].size() + 1;
  }
  DeviceBuffer<uint16_t> k_out = PoisonedBuffer16(rows * width_);
  DeviceBuffer<uint16_t> v_out = PoisonedBuffer16(rows * width_);
  const DeviceBuffer<int32_t> d_selected = ToDevice(selected);
  const DeviceBuffer<int32_t> d_dst = ToDevice(dst);
  SALS_ASSERT_OK(SalsMaterializeSelection(
      cache_, policy, kSeqs, max_cached, d_selected.get(), max_topk, d_dst.get(), inv_freq_.get(),
      reinterpret_cast<__half*>(k_out.get()), reinterpret_cast<__half*>(v_out.get()), nullptr));
  const std::vector<uint16_t> k_rows = ToHost(k_out), v_rows = ToHost(v_out);
  for (int b = 0; b < kSeqs; ++b) {
    ExpectRows(k_rows, v_rows, dst[b], b, expected[b], policy.rank,
               "selection of sequence " + std::to_string(b));
    // The row after the sequence's (the new token's place) is left alone.
    const int64_t after = dst[b] + static_cast<int64_t>(expected[b].size());
    EXPECT_EQ(k_rows[after * width_], 0xffff) << "sequence " << b;
  }
}

TEST_P(SalsMaterializeTest, RefusesBadArguments) {
  DeviceBuffer<uint16_t> out = PoisonedBuffer16(16 * width_);
  auto* o = reinterpret_cast<__half*>(out.get());
  const DeviceBuffer<int32_t> zeros = ToDevice(std::vector<int32_t>(kSeqs, 0));
  EXPECT_EQ(
      SalsMaterializeContext(cache_, kSeqs, 8, nullptr, zeros.get(), inv_freq_.get(), o, o, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  SalsKvCache no_tables = cache_;
  no_tables.block_tables = nullptr;
  EXPECT_EQ(SalsMaterializeContext(no_tables, kSeqs, 8, zeros.get(), zeros.get(), inv_freq_.get(),
                                   o, o, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  SalsSelectionPolicy policy;
  policy.rank = cache_.rank + 1;
  policy.score_dims = 1;
  EXPECT_EQ(SalsMaterializeSelection(cache_, policy, kSeqs, 8, zeros.get(), 4, zeros.get(),
                                     inv_freq_.get(), o, o, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  policy.rank = 1;
  policy.sink_tokens = 0;
  policy.recent_tokens = 1;
  policy.topk_fraction = 1.0;
  EXPECT_EQ(SalsMaterializeSelection(cache_, policy, kSeqs, 100, zeros.get(), 4, zeros.get(),
                                     inv_freq_.get(), o, o, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument)
      << "max_topk below the plan's top-k";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SalsMaterializeTest,
    ::testing::Values(MaterializeCase{DType::kF16, 2, 64, 32, 4, 32, 4, 16, 7},
                      MaterializeCase{DType::kBF16, 1, 128, 64, 2, 32, 16, 64, 16},
                      MaterializeCase{DType::kF16, 2, 12, 8, 4, 24, 4, 8, 5},
                      MaterializeCase{DType::kF16, 4, 16, 16, 16, 32, 0, 8, 16},
                      MaterializeCase{DType::kF16, 8, 128, 256, 2, 32, 16, 64, 16},
                      MaterializeCase{DType::kBF16, 2, 32, 16, 4, 32, 4, 8, 3}),
    [](const ::testing::TestParamInfo<MaterializeCase>& info) { return CaseName(info.param); });

}  // namespace
}  // namespace sals::kernels::gpu_test
