// Device tests of the paged decode and prefill attention kernels against cpu::AttendPaged, on
// scattered block tables, odd context lengths, partial last blocks and GQA groups 1/4/8, and
// chunked prefill on shapes that are awkward for tiles (chunk and prefix off tile and block
// boundaries, chunks after a prefix-cache hit).
#include "sals/kernels/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "tests/gpu/test_util.h"

namespace sals::kernels::gpu_test {
namespace {

// A layer's paged cache filled with random f16 K/V (never zeros), blocks handed out to the
// sequences in shuffled order; table entries past a sequence's last block hold a poison id.
struct HostCache {
  int block_size = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int table_stride = 0;
  Tensor16 k;
  Tensor16 v;
  std::vector<int32_t> tables;
  std::vector<int32_t> kv_lens;

  cpu::PagedKvView View() {
    return cpu::PagedKvView{k.values.data(), v.values.data(), block_size, num_kv_heads, head_dim};
  }
  std::span<const int32_t> Table(int b) const {
    return std::span<const int32_t>(tables).subspan(static_cast<size_t>(b) * table_stride,
                                                    table_stride);
  }
};

HostCache MakeCache(std::mt19937_64& rng, const std::vector<int32_t>& kv_lens, int num_kv_heads,
                    int head_dim, int block_size) {
  HostCache c;
  c.block_size = block_size;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = head_dim;
  c.kv_lens = kv_lens;
  int total_blocks = 3;  // a few the tables never name
  int max_blocks = 0;
  for (int32_t len : kv_lens) {
    const int n = (len + block_size - 1) / block_size;
    total_blocks += n;
    max_blocks = std::max(max_blocks, n);
  }
  c.table_stride = max_blocks + 2;
  std::vector<int32_t> ids(total_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  c.tables.assign(kv_lens.size() * c.table_stride, std::numeric_limits<int32_t>::max());
  size_t next = 0;
  for (size_t b = 0; b < kv_lens.size(); ++b) {
    const int n = (kv_lens[b] + block_size - 1) / block_size;
    for (int i = 0; i < n; ++i) c.tables[b * c.table_stride + i] = ids[next++];
  }
  const size_t elems = static_cast<size_t>(total_blocks) * block_size * num_kv_heads * head_dim;
  c.k = RandomTensor(rng, DType::kF16, elems, -1.0f, 1.0f);
  c.v = RandomTensor(rng, DType::kF16, elems, -1.0f, 1.0f);
  return c;
}

struct DeviceCache {
  DeviceBuffer<uint16_t> k;
  DeviceBuffer<uint16_t> v;
  DeviceBuffer<int32_t> tables;
  DeviceBuffer<int32_t> kv_lens;

  explicit DeviceCache(const HostCache& c)
      : k(ToDevice(c.k.bits)),
        v(ToDevice(c.v.bits)),
        tables(ToDevice(c.tables)),
        kv_lens(ToDevice(c.kv_lens)) {}

  PagedKvCache View(const HostCache& c) const {
    return PagedKvCache{reinterpret_cast<const __half*>(k.get()),
                        reinterpret_cast<const __half*>(v.get()),
                        tables.get(),
                        c.table_stride,
                        kv_lens.get(),
                        c.block_size,
                        c.num_kv_heads,
                        c.head_dim};
  }
};

struct AttentionCase {
  DType dtype;
  int head_dim;
  int group;
  int num_kv_heads;
  int block_size;
};

std::string CaseName(const AttentionCase& c) {
  return std::string(DTypeName(c.dtype)) + "_d" + std::to_string(c.head_dim) + "_g" +
         std::to_string(c.group) + "_kv" + std::to_string(c.num_kv_heads) + "_bs" +
         std::to_string(c.block_size);
}

std::vector<AttentionCase> Cases() {
  std::vector<AttentionCase> cases;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    cases.push_back({dtype, 128, 1, 4, 16});
    cases.push_back({dtype, 128, 4, 2, 16});
    cases.push_back({dtype, 128, 8, 1, 32});
    cases.push_back({dtype, 64, 4, 2, 7});
    cases.push_back({dtype, 64, 1, 3, 16});
    cases.push_back({dtype, 32, 2, 2, 1});
    cases.push_back({dtype, 16, 8, 2, 16});
    cases.push_back({dtype, 12, 4, 1, 5});
  }
  return cases;
}

class AttentionTest : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override { RequireDevice(); }
};

TEST_P(AttentionTest, DecodeMatchesReference) {
  const AttentionCase& p = GetParam();
  auto rng = FreshRng();
  const int num_heads = p.num_kv_heads * p.group;
  const int q_stride = (num_heads + 2 * p.num_kv_heads) * p.head_dim;  // q inside fused qkv rows
  const float scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  std::uniform_int_distribution<int32_t> short_len(1, 700);
  // Batch 1 short and long (several splits), and a large batch of odd lengths with an empty
  // context among them.
  std::vector<std::vector<int32_t>> batches = {{1}, {5001}, {}};
  for (int b = 0; b < 37; ++b) batches[2].push_back(short_len(rng));
  batches[2][3] = 0;
  batches[2][5] = 2 * p.block_size;  // ends exactly on a block boundary
  for (const std::vector<int32_t>& kv_lens : batches) {
    const int batch = static_cast<int>(kv_lens.size());
    const int max_len = *std::max_element(kv_lens.begin(), kv_lens.end());
    HostCache cache = MakeCache(rng, kv_lens, p.num_kv_heads, p.head_dim, p.block_size);
    DeviceCache d_cache(cache);
    const Tensor16 q = RandomTensor(rng, p.dtype, static_cast<size_t>(batch) * q_stride, -2, 2);
    auto d_q = ToDevice(q.bits);

    std::vector<float> want(static_cast<size_t>(batch) * num_heads * p.head_dim, 0.0f);
    std::vector<float> scores(max_len + 1);
    const cpu::PagedKvView view = cache.View();
    for (int b = 0; b < batch; ++b) {
      if (kv_lens[b] == 0) continue;
      for (int h = 0; h < num_heads; ++h) {
        cpu::AttendPaged(q.values.data() + static_cast<size_t>(b) * q_stride + h * p.head_dim, view,
                         cache.Table(b), h / p.group, 0, kv_lens[b] - 1, scale, scores.data(),
                         want.data() + (static_cast<size_t>(b) * num_heads + h) * p.head_dim);
      }
    }

    const PagedKvCache kv = d_cache.View(cache);
    const DecodeAttentionPlan planned =
        ValueOrDie(PlanDecodeAttention(p.dtype, kv, batch, num_heads, max_len));
    // The planner's choice, one split for everything, and an odd split whose last piece has to
    // stretch to the end of long contexts.
    for (const DecodeAttentionPlan& plan :
         {planned, DecodeAttentionPlan{1, 1}, DecodeAttentionPlan{7, 33}}) {
      SCOPED_TRACE(::testing::Message()
                   << "batch=" << batch << " max_len=" << max_len << " splits=" << plan.num_splits
                   << " tokens_per_split=" << plan.tokens_per_split);
      const size_t ws_bytes = DecodeAttentionWorkspaceBytes(plan, batch, num_heads, p.head_dim);
      auto workspace = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(ws_bytes));
      auto d_out = PoisonedBuffer16(want.size());
      SALS_ASSERT_OK(DecodeAttention(p.dtype, kv, batch, num_heads, d_q.get(), q_stride, scale,
                                     plan, workspace.get(), d_out.get(), nullptr));
      const std::vector<float> got = DecodeAll(p.dtype, ToHost(d_out));
      ExpectClose(got, want, 2e-5f, Eps(p.dtype), "decode");
    }
  }
}

// One PrefillAttention launch over a batch whose sequence b computes q_lens[b] new tokens after
// cached[b] cached ones, against cpu::AttendPaged row by row.
void CheckPrefill(const AttentionCase& p, std::mt19937_64& rng, const std::vector<int32_t>& q_lens,
                  const std::vector<int32_t>& cached) {
  const int num_heads = p.num_kv_heads * p.group;
  const int q_stride = (num_heads + 2 * p.num_kv_heads) * p.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  const int batch = static_cast<int>(q_lens.size());
  std::vector<int32_t> kv_lens(batch);
  std::vector<int32_t> q_starts(batch + 1, 0);
  for (int b = 0; b < batch; ++b) {
    kv_lens[b] = cached[b] + q_lens[b];
    q_starts[b + 1] = q_starts[b] + q_lens[b];
  }
  const int total_q = q_starts[batch];
  const int max_q_len = *std::max_element(q_lens.begin(), q_lens.end());
  ::testing::Message chunks;
  chunks << "chunks (new tokens @ cached ones):";
  for (int b = 0; b < batch; ++b) chunks << " " << q_lens[b] << "@" << cached[b];
  SCOPED_TRACE(chunks.GetString());
  HostCache cache = MakeCache(rng, kv_lens, p.num_kv_heads, p.head_dim, p.block_size);
  DeviceCache d_cache(cache);
  const Tensor16 q = RandomTensor(rng, p.dtype, static_cast<size_t>(total_q) * q_stride, -2, 2);
  auto d_q = ToDevice(q.bits);
  auto d_q_starts = ToDevice(q_starts);

  std::vector<float> want(static_cast<size_t>(total_q) * num_heads * p.head_dim);
  std::vector<float> scores(*std::max_element(kv_lens.begin(), kv_lens.end()));
  const cpu::PagedKvView view = cache.View();
  for (int b = 0; b < batch; ++b) {
    for (int i = 0; i < q_lens[b]; ++i) {
      const int row = q_starts[b] + i;
      for (int h = 0; h < num_heads; ++h) {
        cpu::AttendPaged(q.values.data() + static_cast<size_t>(row) * q_stride + h * p.head_dim,
                         view, cache.Table(b), h / p.group, 0, cached[b] + i, scale, scores.data(),
                         want.data() + (static_cast<size_t>(row) * num_heads + h) * p.head_dim);
      }
    }
  }

  auto d_out = PoisonedBuffer16(want.size());
  SALS_ASSERT_OK(PrefillAttention(p.dtype, d_cache.View(cache), batch, num_heads, d_q.get(),
                                  q_stride, d_q_starts.get(), max_q_len, scale, d_out.get(),
                                  nullptr));
  const std::vector<float> got = DecodeAll(p.dtype, ToHost(d_out));
  // Q (scaled) and P enter the tensor cores as f16: about 2^-11 relative error on each.
  ExpectClose(got, want, 4e-3f, Eps(p.dtype), "prefill");
  EXPECT_LT(RelativeL2(got, want), p.dtype == DType::kF16 ? 3e-3 : 1e-2);
}

TEST_P(AttentionTest, PrefillMatchesReference) {
  const AttentionCase& p = GetParam();
  auto rng = FreshRng();
  struct Batch {
    std::vector<int32_t> q_lens;
    std::vector<int32_t> cached;  // tokens cached before the chunk
  };
  for (const Batch& batch : {Batch{{1}, {0}}, Batch{{130}, {0}}, Batch{{7, 64, 1}, {333, 5, 0}},
                             Batch{{200, 3}, {1000, 17}}}) {
    CheckPrefill(p, rng, batch.q_lens, batch.cached);
  }
}

// Chunked prefill as the scheduler cuts prompts, on shapes a tiled kernel finds awkward: chunks
// that are no multiple of a 64- or 128-row tile, prefixes that end inside a KV block and inside
// a KV tile, a chunk after a prefix-cache hit (the prefix a whole number of blocks), a prompt's
// consecutive chunks in one batch's worth of sequences, and a decode row beside chunks. Head dim
// 128 (the Llama shapes); PrefillMatchesReference covers the other dims.
TEST_P(AttentionTest, ChunkedPrefillMatchesReferenceOnAwkwardShapes) {
  const AttentionCase& p = GetParam();
  if (p.head_dim != 128) GTEST_SKIP() << "head_dim 128 only";
  auto rng = FreshRng();
  const int bs = p.block_size;
  // Chunk not a tile multiple, prefix inside a block and a tile.
  CheckPrefill(p, rng, {193}, {1000});
  // After a prefix-cache hit: the prefix whole blocks, the chunk starting a block.
  CheckPrefill(p, rng, {129}, {16 * bs});
  // Several rows of q tiles and KV tiles, the diagonal crossing tiles off their corners.
  CheckPrefill(p, rng, {300}, {700});
  // A prompt's chunks of 96 (then its remainder) side by side, a decode row, a chunk after a
  // cache hit, and a one-token chunk after an odd prefix.
  CheckPrefill(p, rng, {96, 96, 61, 1, 77, 1}, {0, 96, 192, 513, 4 * bs, 129});
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return CaseName(info.param); });

TEST(AttentionDispatchTest, RejectsUnsupportedShapesLoudly) {
  // Dispatch fails before anything touches these (dummy, never dereferenced) pointers.
  const auto* dummy = reinterpret_cast<const __half*>(uintptr_t{256});
  PagedKvCache cache{dummy,
                     dummy,
                     reinterpret_cast<const int32_t*>(dummy),
                     4,
                     reinterpret_cast<const int32_t*>(dummy),
                     16,
                     2,
                     96};
  const absl::Status bad_dim = DecodeAttention(DType::kF16, cache, 1, 8, dummy, 8 * 96, 1.0f,
                                               DecodeAttentionPlan{}, nullptr, nullptr, nullptr);
  EXPECT_EQ(bad_dim.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_dim.message().find("head_dim 96"), std::string::npos) << bad_dim;
  cache.head_dim = 128;
  const absl::Status bad_group = PrefillAttention(DType::kBF16, cache, 1, 6, dummy, 6 * 128,
                                                  cache.kv_lens, 4, 1.0f, nullptr, nullptr);
  EXPECT_EQ(bad_group.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_group.message().find("GQA group 3"), std::string::npos) << bad_group;
}

}  // namespace
}  // namespace sals::kernels::gpu_test
