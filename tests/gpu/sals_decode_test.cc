// Device tests of the SALS decode step (sals_decode.h) against the CPU reference: the selection
// plan against sals::PlanSelection, the top-k against sals::SelectTopK (exact sets, with and
// without ties), the sparse attention against a loop over CpuKvStore::ReadSals' semantics
// (cpu::ApplyRope, sals::DequantizeValues, cpu::AttendRows) on given selections, and the whole
// step (latent query, scores, top-k, attention) on random storage of awkward shapes.
#include "sals/kernels/sals_decode.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "engine/kv/value_quant.h"
#include "engine/sals/policy.h"
#include "engine/sals/selection.h"
#include "tests/gpu/test_util.h"

namespace sals::kernels::gpu_test {
namespace {

constexpr int kStorageSinks = 16;
constexpr int kStorageRecent = 64;

struct Shape {
  DType dtype;
  int num_kv_heads;
  int group;
  int head_dim;
  int rank;
  int bits;
  int group_size;
  int block_size;
  int policy_sinks;
  int policy_recent;
};

std::string ShapeName(const Shape& s) {
  return std::string(DTypeName(s.dtype)) + "_kv" + std::to_string(s.num_kv_heads) + "_g" +
         std::to_string(s.group) + "_d" + std::to_string(s.head_dim) + "_r" +
         std::to_string(s.rank) + "_b" + std::to_string(s.bits) + "_gs" +
         std::to_string(s.group_size) + "_bs" + std::to_string(s.block_size) + "_s" +
         std::to_string(s.policy_sinks) + "_w" + std::to_string(s.policy_recent);
}

SalsSelectionPolicy MakePolicy(const Shape& s) {
  SalsSelectionPolicy p;
  p.rank = s.rank;
  p.score_dims = s.rank / 2;
  p.topk_fraction = 0.125;
  p.sink_tokens = s.policy_sinks;
  p.recent_tokens = s.policy_recent;
  return p;
}

// A sparse layer's storage with random contents (never zeros), blocks handed out in shuffled
// order, table entries past a sequence's last block poisoned.
struct HostSals {
  SalsKvCache shape;  // sizes only
  int64_t num_slots = 0;
  int table_stride = 0;
  std::vector<int32_t> kv_lens;
  std::vector<int32_t> tables;
  std::vector<int32_t> exact_slots;
  std::vector<int32_t> exact_valid_from;
  Tensor16 latent;
  Tensor16 basis;
  Tensor16 exact_k;
  Tensor16 exact_v;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scale_zero;  // (scale, zero) pairs
  std::vector<float> inv_freq;

  int width() const { return shape.width(); }
};

HostSals MakeHostSals(std::mt19937_64& rng, const Shape& s, const std::vector<int32_t>& kv_lens) {
  HostSals h;
  SalsKvCache& c = h.shape;
  c.num_kv_heads = s.num_kv_heads;
  c.head_dim = s.head_dim;
  c.rank = s.rank;
  c.basis_stride = s.rank + 16;
  c.value_bits = s.bits;
  c.value_group_size = s.group_size;
  c.block_size = s.block_size;
  c.sink_tokens = kStorageSinks;
  c.recent_tokens = kStorageRecent;
  h.kv_lens = kv_lens;
  const int batch = static_cast<int>(kv_lens.size());
  int total_blocks = 3;
  int max_blocks = 1;
  for (int32_t len : kv_lens) {
    const int n = (len + s.block_size - 1) / s.block_size;
    total_blocks += n;
    max_blocks = std::max(max_blocks, n);
  }
  h.table_stride = max_blocks + 1;
  std::vector<int32_t> ids(total_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  h.tables.assign(static_cast<size_t>(batch) * h.table_stride, std::numeric_limits<int32_t>::max());
  size_t next = 0;
  for (int b = 0; b < batch; ++b) {
    const int n = (kv_lens[b] + s.block_size - 1) / s.block_size;
    for (int i = 0; i < n; ++i) h.tables[b * h.table_stride + i] = ids[next++];
  }
  h.exact_slots.resize(batch);
  std::vector<int32_t> seq_slots(batch + 2);
  std::iota(seq_slots.begin(), seq_slots.end(), 0);
  std::shuffle(seq_slots.begin(), seq_slots.end(), rng);
  std::copy_n(seq_slots.begin(), batch, h.exact_slots.begin());
  // Every third sequence came partly from the prefix cache: its oldest recent tokens have
  // latents only.
  h.exact_valid_from.resize(batch);
  for (int b = 0; b < batch; ++b) {
    h.exact_valid_from[b] = b % 3 == 1 ? std::max(0, kv_lens[b] - 20) : 0;
  }

  const int width = c.width();
  h.num_slots = static_cast<int64_t>(total_blocks) * s.block_size;
  h.latent = RandomTensor(rng, DType::kF16, h.num_slots * s.rank, -1.0f, 1.0f);
  const float u = 1.0f / std::sqrt(static_cast<float>(s.rank));
  h.basis = RandomTensor(rng, DType::kF16, width * c.basis_stride, -2 * u, 2 * u);
  const size_t exact = static_cast<size_t>(batch + 2) * c.exact_rows() * width;
  h.exact_k = RandomTensor(rng, DType::kF16, exact, -1.0f, 1.0f);
  h.exact_v = RandomTensor(rng, DType::kF16, exact, -1.0f, 1.0f);
  h.codes.resize(h.num_slots * c.code_bytes());
  if (s.bits == 16) {
    const Tensor16 values = RandomTensor(rng, DType::kF16, h.num_slots * width, -1.0f, 1.0f);
    std::memcpy(h.codes.data(), values.bits.data(), h.codes.size());
  } else {
    std::uniform_int_distribution<int> byte(0, 255);
    for (uint8_t& x : h.codes) x = static_cast<uint8_t>(byte(rng));
    std::uniform_real_distribution<float> scale(0.02f, 0.2f);
    std::uniform_real_distribution<float> zero(-1.0f, -0.1f);
    h.scale_zero.resize(2 * h.num_slots * c.groups());
    for (size_t i = 0; i < h.scale_zero.size(); i += 2) {
      h.scale_zero[i] = Encode(DType::kF16, scale(rng));
      h.scale_zero[i + 1] = Encode(DType::kF16, zero(rng));
    }
  }
  // Llama's frequencies rounded to 11 significant bits, so that float(pos) * inv_freq is exact
  // in fp32 for positions below 2^13: device and reference then rotate by the same angle.
  h.inv_freq.resize(s.head_dim / 2);
  for (int i = 0; i < s.head_dim / 2; ++i) {
    const double f = std::pow(10000.0, -2.0 * i / s.head_dim);
    int e = 0;
    const double m = std::frexp(f, &e);
    h.inv_freq[i] = static_cast<float>(std::ldexp(std::round(m * 2048.0) / 2048.0, e));
  }
  return h;
}

struct DeviceSals {
  DeviceBuffer<uint16_t> latent, basis, exact_k, exact_v, scale_zero;
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<int32_t> tables, kv_lens, exact_slots, exact_valid_from;
  DeviceBuffer<float> inv_freq;

  explicit DeviceSals(const HostSals& h)
      : latent(ToDevice(h.latent.bits)),
        basis(ToDevice(h.basis.bits)),
        exact_k(ToDevice(h.exact_k.bits)),
        exact_v(ToDevice(h.exact_v.bits)),
        scale_zero(ToDevice(h.scale_zero.empty() ? std::vector<uint16_t>{0, 0} : h.scale_zero)),
        codes(ToDevice(h.codes)),
        tables(ToDevice(h.tables)),
        kv_lens(ToDevice(h.kv_lens)),
        exact_slots(ToDevice(h.exact_slots)),
        exact_valid_from(ToDevice(h.exact_valid_from)),
        inv_freq(ToDevice(h.inv_freq)) {}

  SalsKvCache View(const HostSals& h) const {
    SalsKvCache c = h.shape;
    c.latent = reinterpret_cast<__half*>(latent.get());
    c.value_codes = codes.get();
    c.value_scale_zero = reinterpret_cast<__half2*>(scale_zero.get());
    c.exact_k = reinterpret_cast<__half*>(exact_k.get());
    c.exact_v = reinterpret_cast<__half*>(exact_v.get());
    c.basis = reinterpret_cast<const __half*>(basis.get());
    c.block_tables = tables.get();
    c.block_table_stride = h.table_stride;
    c.kv_lens = kv_lens.get();
    c.exact_slots = exact_slots.get();
    c.exact_valid_from = exact_valid_from.get();
    return c;
  }
};

// Post-RoPE key and value of cached token `pos` of sequence b, as CpuKvStore::ReadSals: exact
// where the store keeps it, else U[:, :rank] latent rotated at pos, and dequantized values.
void ReadToken(const HostSals& h, int b, int pos, int rank, float* k, float* v) {
  const SalsKvCache& c = h.shape;
  const int width = c.width();
  const int cached = h.kv_lens[b];
  if (pos < c.sink_tokens || (pos >= cached - c.recent_tokens && pos >= h.exact_valid_from[b])) {
    const int64_t row = static_cast<int64_t>(h.exact_slots[b]) * c.exact_rows() +
                        (pos < c.sink_tokens ? pos : c.sink_tokens + pos % c.recent_tokens);
    std::copy_n(h.exact_k.values.data() + row * width, width, k);
    std::copy_n(h.exact_v.values.data() + row * width, width, v);
    return;
  }
  const int64_t slot =
      static_cast<int64_t>(h.tables[b * h.table_stride + pos / c.block_size]) * c.block_size +
      pos % c.block_size;
  const float* latent = h.latent.values.data() + slot * c.rank;
  for (int i = 0; i < width; ++i) {
    double acc = 0.0;
    for (int j = 0; j < rank; ++j) {
      acc += static_cast<double>(h.basis.values[i * c.basis_stride + j]) * latent[j];
    }
    k[i] = static_cast<float>(acc);
  }
  const std::vector<double> inv_freq(h.inv_freq.begin(), h.inv_freq.end());
  cpu::ApplyRope(k, c.num_kv_heads, c.head_dim, inv_freq, pos);
  if (c.value_bits == 16) {
    for (int i = 0; i < width; ++i) {
      uint16_t bits = 0;
      std::memcpy(&bits, h.codes.data() + slot * c.code_bytes() + 2 * i, 2);
      v[i] = Decode(DType::kF16, bits);
    }
    return;
  }
  const int groups = c.groups();
  std::vector<uint16_t> scales(groups), zeros(groups);
  for (int g = 0; g < groups; ++g) {
    scales[g] = h.scale_zero[2 * (slot * groups + g)];
    zeros[g] = h.scale_zero[2 * (slot * groups + g) + 1];
  }
  DequantizeValues(h.codes.data() + slot * c.code_bytes(), scales.data(), zeros.data(), width,
                   ValueQuantSpec{c.value_bits, c.value_group_size}, v);
}

// The new token of each sequence and its queries in fused rows [q | k | v] (post-RoPE), plus
// pre-RoPE queries with the same row layout.
struct StepInputs {
  int num_heads = 0;
  int64_t row_stride = 0;
  Tensor16 qkv;
  Tensor16 q_pre;
};

StepInputs MakeStepInputs(std::mt19937_64& rng, const Shape& s, int batch) {
  StepInputs in;
  in.num_heads = s.num_kv_heads * s.group;
  in.row_stride = static_cast<int64_t>(in.num_heads + 2 * s.num_kv_heads) * s.head_dim;
  in.qkv = RandomTensor(rng, s.dtype, batch * in.row_stride, -2.0f, 2.0f);
  in.q_pre = RandomTensor(rng, s.dtype, batch * in.row_stride, -2.0f, 2.0f);
  return in;
}

// Reference output [num_heads x head_dim] of sequence b attending to the cached `positions`
// and its new token.
std::vector<float> ReferenceAttention(const HostSals& h, const StepInputs& in, int b,
                                      const std::vector<int>& positions, int rank) {
  const SalsKvCache& c = h.shape;
  const int width = c.width();
  const int64_t m = static_cast<int64_t>(positions.size());
  std::vector<float> keys((m + 1) * width), values((m + 1) * width);
  for (int64_t j = 0; j < m; ++j) {
    ReadToken(h, b, positions[j], rank, keys.data() + j * width, values.data() + j * width);
  }
  const float* row = in.qkv.values.data() + b * in.row_stride;
  const int q_width = in.num_heads * c.head_dim;
  std::copy_n(row + q_width, width, keys.data() + m * width);
  std::copy_n(row + q_width + width, width, values.data() + m * width);
  const int group = in.num_heads / c.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<float> out(q_width), scores(m + 1);
  for (int head = 0; head < in.num_heads; ++head) {
    const int64_t kv_off = static_cast<int64_t>(head / group) * c.head_dim;
    cpu::AttendRows(row + head * c.head_dim, keys.data() + kv_off, values.data() + kv_off, width,
                    m + 1, c.head_dim, scale, scores.data(), out.data() + head * c.head_dim);
  }
  return out;
}

// Cached positions sequence b attends to, given the middle tokens selected.
std::vector<int> AttendedPositions(const SalsSelection& sel, int cached,
                                   const std::vector<int>& selected) {
  std::vector<int> positions;
  for (int j = 0; j < std::min(sel.sink_end, cached); ++j) positions.push_back(j);
  positions.insert(positions.end(), selected.begin(), selected.end());
  for (int j = sel.recent_begin; j < cached; ++j) positions.push_back(j);
  return positions;
}

std::vector<int32_t> Contexts(std::mt19937_64& rng, int which) {
  switch (which) {
    case 0:
      return {3001};
    case 1:
      return {0};
    default: {
      // Odd lengths around the sink and recent windows, and a long one among short ones.
      std::vector<int32_t> lens = {1, 5, 15, 16, 17, 50, 79, 80, 81, 82, 145, 1000, 6007};
      std::uniform_int_distribution<int32_t> len(1, 700);
      while (lens.size() < 37) lens.push_back(len(rng));
      std::shuffle(lens.begin(), lens.end(), rng);
      return lens;
    }
  }
}

// ---- The selection plan.

TEST(SalsSelectionPlan, MatchesPolicyReference) {
  for (int sinks : {0, 4, 16}) {
    for (int recent : {1, 8, 64}) {
      for (double fraction : {0.0, 0.125, 0.5, 1.0}) {
        for (int budget : {0, 7}) {
          for (bool all : {false, true}) {
            if (!all && fraction == 0.0 && budget == 0) continue;
            SalsPolicy ref;
            ref.select_all = all;
            ref.topk_fraction = fraction;
            ref.token_budget = budget;
            ref.sink_tokens = sinks;
            ref.recent_tokens = recent;
            SalsSelectionPolicy p;
            p.select_all = all;
            p.topk_fraction = fraction;
            p.token_budget = budget;
            p.sink_tokens = sinks;
            p.recent_tokens = recent;
            for (int cached = 0; cached < 300; ++cached) {
              const SelectionPlan want = PlanSelection(ref, cached);
              const SalsSelection got = SalsPlanSelection(p, cached);
              ASSERT_EQ(got.sink_end, want.sink_end) << cached;
              ASSERT_EQ(got.recent_begin, want.recent_begin) << cached;
              ASSERT_EQ(got.topk, want.topk) << cached;
            }
          }
        }
      }
    }
  }
}

// ---- Top-k.

class SalsTopKTest : public ::testing::Test {
 protected:
  void SetUp() override { RequireDevice(); }

  // Runs SalsTopK on `scores` (one row per sequence, the sequence's middle tokens) with a policy
  // whose middle is the whole context (no sinks, recent window = the new token) and checks the
  // selection against sals::SelectTopK.
  void Check(const std::vector<std::vector<float>>& scores, double fraction, int budget,
             bool select_all) {
    const int batch = static_cast<int>(scores.size());
    std::vector<int32_t> kv_lens(batch);
    for (int b = 0; b < batch; ++b) kv_lens[b] = static_cast<int32_t>(scores[b].size());
    const Shape shape{DType::kF16, 1, 1, 64, 16, 4, 32, 16, 0, 1};
    std::mt19937_64 rng(1);
    const HostSals h = MakeHostSals(rng, shape, {1});
    const DeviceSals d(h);
    auto d_lens = ToDevice(kv_lens);
    SalsKvCache cache = d.View(h);
    cache.kv_lens = d_lens.get();
    SalsSelectionPolicy policy = MakePolicy(shape);
    policy.topk_fraction = fraction;
    policy.token_budget = budget;
    policy.select_all = select_all;
    const int max_cached = *std::max_element(kv_lens.begin(), kv_lens.end());
    const SalsDecodePlan planned = ValueOrDie(PlanSalsDecode(cache, policy, batch, 1, max_cached));
    // The planned cluster of blocks per sequence, one block, and an odd cluster.
    for (int parts : {planned.topk_cluster, 1, 3}) {
      SCOPED_TRACE(::testing::Message() << "topk_cluster=" << parts);
      SalsDecodePlan plan = planned;
      plan.topk_cluster = parts;
      CheckPlan(scores, cache, policy, plan, kv_lens);
    }
  }

  void CheckPlan(const std::vector<std::vector<float>>& scores, const SalsKvCache& cache,
                 const SalsSelectionPolicy& policy, const SalsDecodePlan& plan,
                 const std::vector<int32_t>& kv_lens) {
    const int batch = static_cast<int>(scores.size());
    std::vector<float> flat(static_cast<size_t>(batch) * plan.max_middle, 0.0f);
    for (int b = 0; b < batch; ++b) {
      std::copy(scores[b].begin(), scores[b].end(), flat.begin() + b * plan.max_middle);
    }
    auto d_scores = ToDevice(flat);
    auto d_selected = ValueOrDie(DeviceBuffer<int32_t>::Allocate(batch * plan.max_topk));
    SALS_CUDA_CHECK(cudaMemset(d_selected.get(), 0xff, d_selected.bytes()));
    SALS_ASSERT_OK(SalsTopK(cache, policy, plan, d_scores.get(), d_selected.get(), nullptr));
    const std::vector<int32_t> got = ToHost(d_selected);
    for (int b = 0; b < batch; ++b) {
      const SalsSelection sel = SalsPlanSelection(policy, kv_lens[b]);
      ASSERT_EQ(sel.sink_end, 0);
      ASSERT_EQ(sel.middle(), kv_lens[b]);
      const std::vector<int64_t> want = SelectTopK(scores[b], sel.topk);
      ASSERT_EQ(static_cast<int>(want.size()), sel.topk);
      for (int i = 0; i < sel.topk; ++i) {
        ASSERT_EQ(got[b * plan.max_topk + i], want[i])
            << "sequence " << b << " (n=" << kv_lens[b] << ", k=" << sel.topk << ") rank " << i;
      }
    }
  }
};

TEST_F(SalsTopKTest, DistinctScoresLargeContext) {
  auto rng = FreshRng();
  // Distinct fp16 values, shuffled: one exact answer.
  std::vector<float> s(40000);
  std::vector<uint16_t> bits(0x7bff);
  std::iota(bits.begin(), bits.end(), 1);
  std::shuffle(bits.begin(), bits.end(), rng);
  for (size_t i = 0; i < s.size(); ++i) {
    const uint16_t b = bits[i % bits.size()] | (i >= bits.size() ? 0x8000 : 0);
    s[i] = Decode(DType::kF16, b);
  }
  Check({s}, 0.0, 5001, false);
  Check({s}, 0.125, 0, false);
  // More keys than shared memory holds: every pass reads the scores again.
  std::vector<float> longer(60000);
  for (size_t i = 0; i < longer.size(); ++i) {
    longer[i] = Decode(DType::kF16, bits[i % bits.size()] | (i >= bits.size() ? 0x8000 : 0));
  }
  Check({longer}, 0.125, 0, false);
}

TEST_F(SalsTopKTest, BatchOfOddSizes) {
  auto rng = FreshRng();
  std::uniform_int_distribution<int> len(1, 3000);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<std::vector<float>> scores(37);
  for (auto& s : scores) {
    s.resize(len(rng));
    for (float& x : s) x = Decode(DType::kF16, Encode(DType::kF16, dist(rng)));
  }
  scores[5].resize(1);
  Check(scores, 0.3, 0, false);
  Check(scores, 0.0, 1, false);
  Check(scores, 0.0, 0, true);  // select_all: every middle token
}

TEST_F(SalsTopKTest, TiesNansAndSignedZeros) {
  auto rng = FreshRng();
  const float pool[] = {1.0f, 0.5f, 0.0f, -0.0f, -1.0f, INFINITY, -INFINITY, NAN, 0.25f};
  std::uniform_int_distribution<int> pick(0, 8);
  std::vector<std::vector<float>> scores(9);
  for (size_t b = 0; b < scores.size(); ++b) {
    scores[b].resize(700 + 613 * b);
    for (float& x : scores[b]) x = pool[pick(rng)];
  }
  for (double fraction : {0.01, 0.125, 0.5, 0.9}) Check(scores, fraction, 0, false);
  // All equal: the smallest positions win.
  Check({std::vector<float>(5000, 2.0f)}, 0.1, 0, false);
}

// ---- The sparse attention and the whole step.

class SalsDecodeTest : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override { RequireDevice(); }
};

// Middle tokens to attend for each sequence: a random sorted subset of the size the plan asks,
// always including the oldest token the ring still holds and (when the policy has fewer sinks
// than the store) a token in the stored sink window, both read exactly.
std::vector<std::vector<int>> RandomSelections(std::mt19937_64& rng, const HostSals& h,
                                               const SalsSelectionPolicy& policy) {
  std::vector<std::vector<int>> out(h.kv_lens.size());
  for (size_t b = 0; b < out.size(); ++b) {
    const int cached = h.kv_lens[b];
    const SalsSelection sel = SalsPlanSelection(policy, cached);
    std::vector<int> middle(sel.middle());
    std::iota(middle.begin(), middle.end(), sel.sink_end);
    std::vector<int> chosen;
    for (int must : {cached - kStorageRecent, kStorageSinks - 1}) {
      auto it = std::find(middle.begin(), middle.end(), must);
      if (it != middle.end() && static_cast<int>(chosen.size()) < sel.topk) {
        chosen.push_back(must);
        middle.erase(it);
      }
    }
    std::shuffle(middle.begin(), middle.end(), rng);
    chosen.insert(chosen.end(), middle.begin(), middle.begin() + (sel.topk - chosen.size()));
    std::sort(chosen.begin(), chosen.end());
    out[b] = chosen;
  }
  return out;
}

// The planned attention and every smaller layout of the kernel: one KV head per block, one
// warpgroup, one buffer, U streamed per tile, one tile per split (most splits), one split (the
// output written without the combine), and the mma.sync rebuild where wgmma is the default.
std::vector<SalsDecodePlan> PlansToTry(const SalsKvCache& cache, const SalsSelectionPolicy& policy,
                                       int batch, int num_heads, int max_cached) {
  const SalsDecodePlan planned =
      ValueOrDie(PlanSalsDecode(cache, policy, batch, num_heads, max_cached));
  const int tiles =
      static_cast<int>((SalsPlanSelection(policy, max_cached).attended(max_cached) + 63) / 64);
  std::vector<SalsDecodePlan> plans = {planned};
  SalsDecodePlan one_head = planned;
  one_head.heads_per_block = 1;
  plans.push_back(one_head);
  SalsDecodePlan small = one_head;
  small.warpgroups = 1;
  small.buffers = 1;
  small.tiles_per_split = 1;
  small.max_splits = tiles;
  plans.push_back(small);
  SalsDecodePlan streamed = small;
  streamed.stream_u = true;
  streamed.tiles_per_split = tiles;
  streamed.max_splits = 1;
  plans.push_back(streamed);
  SalsDecodePlan whole = planned;
  whole.tiles_per_split = tiles;
  whole.max_splits = 1;
  plans.push_back(whole);
  if (planned.wgmma) {
    for (size_t i = 0, n = plans.size(); i < n; ++i) {
      SalsDecodePlan mma = plans[i];
      mma.wgmma = false;
      plans.push_back(mma);
    }
  }
  return plans;
}

// The plan's attention layout, for failure messages.
std::string PlanName(const SalsDecodePlan& plan) {
  return "heads=" + std::to_string(plan.heads_per_block) +
         " warpgroups=" + std::to_string(plan.warpgroups) +
         " buffers=" + std::to_string(plan.buffers) + " stream_u=" + std::to_string(plan.stream_u) +
         " tiles_per_split=" + std::to_string(plan.tiles_per_split) +
         " splits=" + std::to_string(plan.max_splits) + " wgmma=" + std::to_string(plan.wgmma);
}

TEST_P(SalsDecodeTest, SparseAttentionMatchesReference) {
  const Shape& s = GetParam();
  auto rng = FreshRng();
  const SalsSelectionPolicy policy = MakePolicy(s);
  for (int which = 0; which < 3; ++which) {
    const std::vector<int32_t> kv_lens = Contexts(rng, which);
    const int batch = static_cast<int>(kv_lens.size());
    const int max_cached = *std::max_element(kv_lens.begin(), kv_lens.end());
    const HostSals h = MakeHostSals(rng, s, kv_lens);
    const DeviceSals d(h);
    const SalsKvCache cache = d.View(h);
    const StepInputs in = MakeStepInputs(rng, s, batch);
    auto d_qkv = ToDevice(in.qkv.bits);
    const std::vector<std::vector<int>> selections = RandomSelections(rng, h, policy);

    std::vector<float> want;
    for (int b = 0; b < batch; ++b) {
      const SalsSelection sel = SalsPlanSelection(policy, kv_lens[b]);
      const std::vector<float> o =
          ReferenceAttention(h, in, b, AttendedPositions(sel, kv_lens[b], selections[b]), s.rank);
      want.insert(want.end(), o.begin(), o.end());
    }
    for (const SalsDecodePlan& plan : PlansToTry(cache, policy, batch, in.num_heads, max_cached)) {
      SCOPED_TRACE(::testing::Message()
                   << "batch=" << batch << " max_cached=" << max_cached << " " << PlanName(plan));
      std::vector<int32_t> selected(static_cast<size_t>(batch) * plan.max_topk, -1);
      for (int b = 0; b < batch; ++b) {
        std::copy(selections[b].begin(), selections[b].end(), selected.begin() + b * plan.max_topk);
      }
      auto d_selected = ToDevice(selected);
      auto workspace =
          ValueOrDie(DeviceBuffer<uint8_t>::Allocate(SalsDecodeWorkspace(cache, plan).bytes));
      auto d_out = PoisonedBuffer16(want.size());
      const uint16_t* qkv = d_qkv.get();
      const int q_width = in.num_heads * s.head_dim;
      SALS_ASSERT_OK(SalsSparseAttention(s.dtype, cache, policy, plan, qkv, in.row_stride,
                                         qkv + q_width, qkv + q_width + h.width(), in.row_stride,
                                         d.inv_freq.get(),
                                         1.0f / std::sqrt(static_cast<float>(s.head_dim)),
                                         d_selected.get(), workspace.get(), d_out.get(), nullptr));
      const std::vector<float> got = DecodeAll(s.dtype, ToHost(d_out));
      ExpectClose(got, want, 2e-4f, 2 * Eps(s.dtype), "sparse attention");
    }
  }
}

// Tiling edges of the attention kernel: attended counts around the 64-row tile (one row: the new
// token alone), one selected row, and every middle row selected.
TEST_P(SalsDecodeTest, TilingEdgesMatchReference) {
  const Shape& s = GetParam();
  auto rng = FreshRng();
  const std::vector<int32_t> kv_lens = {0, 1, 62, 63, 64, 65, 127, 128, 129, 200, 1000};
  const int batch = static_cast<int>(kv_lens.size());
  const int max_cached = *std::max_element(kv_lens.begin(), kv_lens.end());
  const HostSals h = MakeHostSals(rng, s, kv_lens);
  const DeviceSals d(h);
  const SalsKvCache cache = d.View(h);
  const StepInputs in = MakeStepInputs(rng, s, batch);
  auto d_qkv = ToDevice(in.qkv.bits);
  SalsSelectionPolicy one = MakePolicy(s);
  one.topk_fraction = 0.0;
  one.token_budget = 1;
  SalsSelectionPolicy all = MakePolicy(s);
  all.select_all = true;
  for (const SalsSelectionPolicy& policy : {one, all}) {
    SCOPED_TRACE(::testing::Message() << "select_all=" << policy.select_all);
    const std::vector<std::vector<int>> selections = RandomSelections(rng, h, policy);
    std::vector<float> want;
    for (int b = 0; b < batch; ++b) {
      const SalsSelection sel = SalsPlanSelection(policy, kv_lens[b]);
      const std::vector<float> o =
          ReferenceAttention(h, in, b, AttendedPositions(sel, kv_lens[b], selections[b]), s.rank);
      want.insert(want.end(), o.begin(), o.end());
    }
    for (const SalsDecodePlan& plan : PlansToTry(cache, policy, batch, in.num_heads, max_cached)) {
      SCOPED_TRACE(PlanName(plan));
      std::vector<int32_t> selected(static_cast<size_t>(batch) * plan.max_topk, -1);
      for (int b = 0; b < batch; ++b) {
        std::copy(selections[b].begin(), selections[b].end(), selected.begin() + b * plan.max_topk);
      }
      auto d_selected = ToDevice(selected);
      auto workspace =
          ValueOrDie(DeviceBuffer<uint8_t>::Allocate(SalsDecodeWorkspace(cache, plan).bytes));
      auto d_out = PoisonedBuffer16(want.size());
      const uint16_t* qkv = d_qkv.get();
      const int q_width = in.num_heads * s.head_dim;
      SALS_ASSERT_OK(SalsSparseAttention(s.dtype, cache, policy, plan, qkv, in.row_stride,
                                         qkv + q_width, qkv + q_width + h.width(), in.row_stride,
                                         d.inv_freq.get(),
                                         1.0f / std::sqrt(static_cast<float>(s.head_dim)),
                                         d_selected.get(), workspace.get(), d_out.get(), nullptr));
      const std::vector<float> got = DecodeAll(s.dtype, ToHost(d_out));
      ExpectClose(got, want, 2e-4f, 2 * Eps(s.dtype), "sparse attention");
    }
  }
}

TEST_P(SalsDecodeTest, WholeStepMatchesReference) {
  const Shape& s = GetParam();
  auto rng = FreshRng();
  const SalsSelectionPolicy policy = MakePolicy(s);
  const std::vector<int32_t> kv_lens = Contexts(rng, 2);
  const int batch = static_cast<int>(kv_lens.size());
  const int max_cached = *std::max_element(kv_lens.begin(), kv_lens.end());
  const HostSals h = MakeHostSals(rng, s, kv_lens);
  const DeviceSals d(h);
  const SalsKvCache cache = d.View(h);
  const StepInputs in = MakeStepInputs(rng, s, batch);
  auto d_qkv = ToDevice(in.qkv.bits);
  auto d_q_pre = ToDevice(in.q_pre.bits);
  // The planned step, and one with the other scoring block size and the smallest attention
  // layout.
  const SalsDecodePlan planned =
      ValueOrDie(PlanSalsDecode(cache, policy, batch, in.num_heads, max_cached));
  SalsDecodePlan variant = PlansToTry(cache, policy, batch, in.num_heads, max_cached)[2];
  variant.score_block_tokens = planned.score_block_tokens == 64 ? 512 : 64;
  for (const SalsDecodePlan& plan : {planned, variant}) {
    SCOPED_TRACE(::testing::Message()
                 << "score_block_tokens=" << plan.score_block_tokens << " " << PlanName(plan));
    const SalsWorkspaceLayout layout = SalsDecodeWorkspace(cache, plan);
    auto workspace = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(layout.bytes));
    auto d_out = PoisonedBuffer16(static_cast<size_t>(batch) * in.num_heads * s.head_dim);
    const uint16_t* qkv = d_qkv.get();
    const int q_width = in.num_heads * s.head_dim;
    SALS_ASSERT_OK(SalsDecodeAttention(
        s.dtype, cache, policy, plan, d_q_pre.get(), qkv, in.row_stride, qkv + q_width,
        qkv + q_width + h.width(), in.row_stride, d.inv_freq.get(),
        1.0f / std::sqrt(static_cast<float>(s.head_dim)), workspace.get(), d_out.get(), nullptr));
    const std::vector<uint8_t> ws = ToHost(workspace);
    auto read_floats = [&](size_t offset, size_t n) {
      std::vector<float> v(n);
      std::memcpy(v.data(), ws.data() + offset, n * sizeof(float));
      return v;
    };
    const std::vector<float> q_latent =
        read_floats(layout.q_latent, static_cast<size_t>(batch) * plan.score_stride);
    const std::vector<float> scores =
        read_floats(layout.scores, static_cast<size_t>(batch) * plan.max_middle);
    std::vector<int32_t> selected(static_cast<size_t>(batch) * plan.max_topk);
    std::memcpy(selected.data(), ws.data() + layout.selected, selected.size() * sizeof(int32_t));

    const SalsKvCache& c = h.shape;
    const int width = c.width();
    std::vector<float> want_out;
    for (int b = 0; b < batch; ++b) {
      SCOPED_TRACE(::testing::Message() << "sequence " << b << " cached " << kv_lens[b]);
      // Latent query: the group sums of the pre-RoPE query heads, projected by U[:, :score_dims].
      std::vector<double> q_sum(width, 0.0);
      for (int head = 0; head < in.num_heads; ++head) {
        for (int i = 0; i < s.head_dim; ++i) {
          q_sum[(head / s.group) * s.head_dim + i] +=
              in.q_pre.values[b * in.row_stride + head * s.head_dim + i];
        }
      }
      for (int j = 0; j < plan.score_stride; ++j) {
        double want = 0.0;
        double magnitude = 0.0;
        for (int i = 0; j < policy.score_dims && i < width; ++i) {
          const double term = h.basis.values[i * c.basis_stride + j] * q_sum[i];
          want += term;
          magnitude += std::fabs(term);
        }
        ASSERT_NEAR(q_latent[b * plan.score_stride + j], want, 1e-5 * magnitude + 1e-6) << j;
      }
      // Scores of the middle tokens.
      const SalsSelection sel = SalsPlanSelection(policy, kv_lens[b]);
      for (int m = 0; m < sel.middle(); ++m) {
        const int pos = sel.sink_end + m;
        const int64_t slot =
            static_cast<int64_t>(h.tables[b * h.table_stride + pos / c.block_size]) * c.block_size +
            pos % c.block_size;
        double want = 0.0;
        double magnitude = 0.0;
        for (int j = 0; j < policy.score_dims; ++j) {
          const double term = static_cast<double>(q_latent[b * plan.score_stride + j]) *
                              h.latent.values[slot * c.rank + j];
          want += term;
          magnitude += std::fabs(term);
        }
        ASSERT_NEAR(scores[b * plan.max_middle + m], want, 1e-5 * magnitude + 1e-6) << pos;
      }
      // Top-k: exactly sals::SelectTopK of the device's own scores.
      const std::vector<int64_t> top =
          SelectTopK(std::span<const float>(scores).subspan(
                         static_cast<size_t>(b) * plan.max_middle, sel.middle()),
                     sel.topk);
      std::vector<int> chosen;
      for (int i = 0; i < sel.topk; ++i) {
        ASSERT_EQ(selected[b * plan.max_topk + i], sel.sink_end + top[i]) << i;
        chosen.push_back(sel.sink_end + static_cast<int>(top[i]));
      }
      const std::vector<float> o =
          ReferenceAttention(h, in, b, AttendedPositions(sel, kv_lens[b], chosen), s.rank);
      want_out.insert(want_out.end(), o.begin(), o.end());
    }
    const std::vector<float> got = DecodeAll(s.dtype, ToHost(d_out));
    ExpectClose(got, want_out, 2e-4f, 2 * Eps(s.dtype), "decode step");
  }
}

// Short contexts whose top-k covers the whole middle: the plan skips scoring and selection
// (attend_all) and the step attends every cached token; the same step through the selection
// stages gives the same output.
TEST_P(SalsDecodeTest, ShortContextsAttendEverything) {
  const Shape& s = GetParam();
  auto rng = FreshRng();
  const SalsSelectionPolicy policy = MakePolicy(s);
  std::vector<int32_t> kv_lens;  // every 7th length that keeps its whole middle, and the longest
  int longest = 0;
  for (int cached = 0; cached < 400; ++cached) {
    const SalsSelection sel = SalsPlanSelection(policy, cached);
    if (sel.topk < sel.middle()) break;
    longest = cached;
    if (cached % 7 == 0) kv_lens.push_back(cached);
  }
  if (kv_lens.back() != longest) kv_lens.push_back(longest);
  const int batch = static_cast<int>(kv_lens.size());
  const int max_cached = kv_lens.back();
  const HostSals h = MakeHostSals(rng, s, kv_lens);
  const DeviceSals d(h);
  const SalsKvCache cache = d.View(h);
  const StepInputs in = MakeStepInputs(rng, s, batch);
  auto d_qkv = ToDevice(in.qkv.bits);
  auto d_q_pre = ToDevice(in.q_pre.bits);
  std::vector<float> want;
  for (int b = 0; b < batch; ++b) {
    const SalsSelection sel = SalsPlanSelection(policy, kv_lens[b]);
    std::vector<int> middle(sel.middle());
    std::iota(middle.begin(), middle.end(), sel.sink_end);
    const std::vector<float> o =
        ReferenceAttention(h, in, b, AttendedPositions(sel, kv_lens[b], middle), s.rank);
    want.insert(want.end(), o.begin(), o.end());
  }
  const SalsDecodePlan planned =
      ValueOrDie(PlanSalsDecode(cache, policy, batch, in.num_heads, max_cached));
  ASSERT_TRUE(planned.attend_all) << "max_cached " << max_cached;
  SalsDecodePlan selecting = planned;
  selecting.attend_all = false;
  for (const SalsDecodePlan& plan : {planned, selecting}) {
    SCOPED_TRACE(::testing::Message() << "attend_all=" << plan.attend_all);
    auto workspace =
        ValueOrDie(DeviceBuffer<uint8_t>::Allocate(SalsDecodeWorkspace(cache, plan).bytes));
    auto d_out = PoisonedBuffer16(want.size());
    const uint16_t* qkv = d_qkv.get();
    const int q_width = in.num_heads * s.head_dim;
    SALS_ASSERT_OK(SalsDecodeAttention(
        s.dtype, cache, policy, plan, d_q_pre.get(), qkv, in.row_stride, qkv + q_width,
        qkv + q_width + h.width(), in.row_stride, d.inv_freq.get(),
        1.0f / std::sqrt(static_cast<float>(s.head_dim)), workspace.get(), d_out.get(), nullptr));
    const std::vector<float> got = DecodeAll(s.dtype, ToHost(d_out));
    ExpectClose(got, want, 2e-4f, 2 * Eps(s.dtype), "short-context step");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SalsDecodeTest,
    ::testing::Values(
        // MHA, ranks D/4 and D/8, 4- and 2-bit values; policy windows smaller than the store's.
        Shape{DType::kF16, 4, 1, 128, 128, 4, 32, 16, 16, 64},
        Shape{DType::kBF16, 4, 1, 128, 64, 2, 32, 16, 4, 32},
        // GQA 4 and 8, 16-bit and 2-bit values, a group as wide as a head, odd block size.
        Shape{DType::kF16, 2, 4, 128, 64, 16, 32, 7, 16, 64},
        Shape{DType::kBF16, 1, 8, 128, 16, 2, 128, 16, 16, 64},
        // head_dim 64, GQA 2 and 4, groups of 16 and 64 values.
        Shape{DType::kF16, 3, 2, 64, 48, 4, 16, 16, 8, 64},
        Shape{DType::kBF16, 8, 4, 64, 64, 2, 64, 5, 16, 1},
        // Ranks that need the 64-token tile: 1024 with 4-bit values, 512 with 16-bit values.
        Shape{DType::kF16, 8, 1, 128, 1024, 4, 32, 16, 16, 64},
        Shape{DType::kF16, 8, 1, 128, 512, 16, 32, 16, 16, 64}),
    [](const auto& info) { return ShapeName(info.param); });

TEST(SalsDecodeValidation, RefusesUnsupportedShapes) {
  const Shape shape{DType::kF16, 2, 1, 128, 64, 4, 32, 16, 16, 64};
  std::mt19937_64 rng(2);
  const HostSals h = MakeHostSals(rng, shape, {10});
  const DeviceSals d(h);
  SalsKvCache cache = d.View(h);
  SalsSelectionPolicy policy = MakePolicy(shape);
  EXPECT_TRUE(PlanSalsDecode(cache, policy, 1, 2, 10).ok());
  EXPECT_FALSE(PlanSalsDecode(cache, policy, 1, 6, 10).ok());  // GQA group 3
  policy.rank = 72;                                            // above the stored rank
  EXPECT_FALSE(PlanSalsDecode(cache, policy, 1, 2, 10).ok());
  policy = MakePolicy(shape);
  policy.sink_tokens = kStorageSinks + 1;  // beyond the exact store
  EXPECT_FALSE(PlanSalsDecode(cache, policy, 1, 2, 10).ok());
  cache.head_dim = 96;
  cache.num_kv_heads = 2;
  EXPECT_FALSE(PlanSalsDecode(cache, MakePolicy(shape), 1, 2, 10).ok());
}

}  // namespace
}  // namespace sals::kernels::gpu_test
