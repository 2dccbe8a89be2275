// Benchmark of the paged dense decode attention kernel (flash-decoding + combine): fp16, head_dim
// 128, 32 query heads with 32 (MHA) or 8 (GQA) KV heads, block size 16, batch x context grid.
// Prints per shape the median time over back-to-back launches (CUDA events), the bytes of K+V it
// must read and the achieved bandwidth against the H200's ~4.3 TB/s copy rate; --json PATH also
// writes the rows as JSON.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_check.h"
#include "bench/bench_device.h"
#include "sals/kernels/attention.h"
#include "sals/kernels/cuda_utils.h"

namespace sals::kernels {
namespace {

constexpr double kPeakGBps = 4300.0;
constexpr int kHeadDim = 128;
constexpr int kNumHeads = 32;
constexpr int kBlockSize = 16;
constexpr int kWarmup = 5;
constexpr int kRuns = 30;
// Consecutive runs read different K/V: each shape rotates over enough copies to exceed the L2
// (50 MB) several times over.
constexpr size_t kRotationBytes = size_t{256} << 20;

using bench::Check;
using bench::FillRandom;

struct Result {
  std::string attn;
  int kv_heads, batch, context, splits, tokens_per_split;
  double us, gbps;
};

Result RunShape(const char* attn, int kv_heads, int batch, int context, const __half* k_pool,
                const __half* v_pool, size_t pool_halves, std::mt19937_64& rng,
                cudaStream_t stream) {
  const size_t block_halves = static_cast<size_t>(kBlockSize) * kv_heads * kHeadDim;
  const int blocks_per_seq = context / kBlockSize;
  const size_t kv_bytes = static_cast<size_t>(batch) * context * kv_heads * kHeadDim * 2 * 2;
  const int rotations =
      static_cast<int>(std::clamp<size_t>((kRotationBytes + kv_bytes - 1) / kv_bytes, 1, 8));
  const size_t set_blocks = static_cast<size_t>(batch) * blocks_per_seq;
  if (set_blocks * rotations > pool_halves / block_halves) {
    std::fprintf(stderr, "pool too small for %s batch %d context %d\n", attn, batch, context);
    std::exit(1);
  }
  // Each rotation owns its own range of blocks, scattered over its sequences.
  std::vector<int32_t> tables(set_blocks * rotations);
  for (int r = 0; r < rotations; ++r) {
    auto first = tables.begin() + r * set_blocks;
    std::iota(first, first + set_blocks, static_cast<int32_t>(r * set_blocks));
    std::shuffle(first, first + set_blocks, rng);
  }
  const std::vector<int32_t> kv_lens(batch, context);
  const int q_elems = batch * kNumHeads * kHeadDim;
  std::vector<__half> q(q_elems);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (__half& x : q) x = __float2half_rn(dist(rng));

  auto d_tables = Check(DeviceBuffer<int32_t>::Allocate(tables.size()));
  auto d_lens = Check(DeviceBuffer<int32_t>::Allocate(batch));
  auto d_q = Check(DeviceBuffer<__half>::Allocate(q_elems));
  auto d_out = Check(DeviceBuffer<__half>::Allocate(q_elems));
  Check(d_tables.CopyFrom(tables));
  Check(d_lens.CopyFrom(kv_lens));
  Check(d_q.CopyFrom(q));

  PagedKvCache cache{k_pool,       v_pool,     d_tables.get(), blocks_per_seq,
                     d_lens.get(), kBlockSize, kv_heads,       kHeadDim};
  const DecodeAttentionPlan plan =
      Check(PlanDecodeAttention(DType::kF16, cache, batch, kNumHeads, context));
  auto workspace = Check(DeviceBuffer<uint8_t>::Allocate(
      DecodeAttentionWorkspaceBytes(plan, batch, kNumHeads, kHeadDim)));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  auto launch = [&](int run) {
    cache.block_tables = d_tables.get() + (run % rotations) * set_blocks;
    Check(DecodeAttention(DType::kF16, cache, batch, kNumHeads, d_q.get(), kNumHeads * kHeadDim,
                          scale, plan, workspace.get(), d_out.get(), stream));
  };
  for (int i = 0; i < kWarmup; ++i) launch(i);
  // Launches go back to back, so event i+1 - event i is one step's device time, launch gaps
  // hidden by the queue.
  std::vector<Event> events;
  for (int i = 0; i <= kRuns; ++i) events.push_back(Check(Event::Create()));
  Check(events[0].Record(stream));
  for (int i = 0; i < kRuns; ++i) {
    launch(kWarmup + i);
    Check(events[i + 1].Record(stream));
  }
  std::vector<double> us(kRuns);
  for (int i = 0; i < kRuns; ++i) us[i] = 1e3 * Check(events[i + 1].ElapsedMsSince(events[i]));
  std::sort(us.begin(), us.end());
  const double median = (us[kRuns / 2 - 1] + us[kRuns / 2]) / 2;
  return Result{attn,
                kv_heads,
                batch,
                context,
                plan.num_splits,
                plan.tokens_per_split,
                median,
                kv_bytes / (median * 1e-6) / 1e9};
}

// The device's copy rate (bytes read + written per second) for a 2 GiB device-to-device copy,
// median of 10: the ceiling the table's percentages are read against.
double MeasureCopyGBps(__half* dst, const __half* src, cudaStream_t stream) {
  const size_t bytes = size_t{2} << 30;
  Event start = Check(Event::Create());
  Event stop = Check(Event::Create());
  std::vector<double> gbps;
  for (int i = 0; i < 12; ++i) {
    Check(start.Record(stream));
    SALS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
    Check(stop.Record(stream));
    const float ms = Check(stop.ElapsedMsSince(start));
    if (i >= 2) gbps.push_back(2.0 * bytes / (ms * 1e-3) / 1e9);
  }
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

int Main(int argc, char** argv) {
  const char* json_path = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--json PATH]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop{};
  SALS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);

  // One K and one V pool sized for the largest shape (MHA, batch 32, 32K: 8.6 GB each).
  const size_t pool_halves = size_t{32} * 32768 * kNumHeads * kHeadDim;
  auto k_pool = Check(DeviceBuffer<__half>::Allocate(pool_halves));
  auto v_pool = Check(DeviceBuffer<__half>::Allocate(pool_halves));
  std::mt19937_64 rng(std::random_device{}());
  FillRandom(k_pool.get(), k_pool.bytes(), rng, -1.0f, 1.0f);
  FillRandom(v_pool.get(), v_pool.bytes(), rng, -1.0f, 1.0f);
  Stream stream = Check(Stream::Create());
  std::printf("measured device-to-device copy: %.0f GB/s (read + write)\n",
              MeasureCopyGBps(v_pool.get() + pool_halves / 2, k_pool.get(), stream.get()));

  std::vector<Result> results;
  for (const auto& [attn, kv_heads] : {std::pair{"MHA", 32}, std::pair{"GQA", 8}}) {
    for (int context : {4096, 32768}) {
      for (int batch : {1, 8, 16, 32}) {
        results.push_back(RunShape(attn, kv_heads, batch, context, k_pool.get(), v_pool.get(),
                                   pool_halves, rng, stream.get()));
      }
    }
  }

  std::printf("\n%-4s %8s %6s %8s %7s %10s %9s %7s\n", "attn", "q/kv", "batch", "context", "splits",
              "median_us", "GB/s", "%peak");
  for (const Result& r : results) {
    std::printf("%-4s %5d/%-2d %6d %8d %7d %10.1f %9.0f %6.1f%%\n", r.attn.c_str(), kNumHeads,
                r.kv_heads, r.batch, r.context, r.splits, r.us, r.gbps, 100.0 * r.gbps / kPeakGBps);
  }
  if (json_path != nullptr) {
    FILE* f = std::fopen(json_path, "w");
    if (f == nullptr) {
      std::perror(json_path);
      return 1;
    }
    std::fprintf(f,
                 "{\"device\": \"%s\", \"peak_gbps\": %.0f, \"head_dim\": %d, "
                 "\"num_heads\": %d, \"block_size\": %d, \"runs\": %d, \"results\": [\n",
                 prop.name, kPeakGBps, kHeadDim, kNumHeads, kBlockSize, kRuns);
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::fprintf(f,
                   "  {\"attn\": \"%s\", \"kv_heads\": %d, \"batch\": %d, \"context\": %d, "
                   "\"splits\": %d, \"tokens_per_split\": %d, \"median_us\": %.2f, "
                   "\"gbps\": %.1f, \"pct_peak\": %.2f}%s\n",
                   r.attn.c_str(), r.kv_heads, r.batch, r.context, r.splits, r.tokens_per_split,
                   r.us, r.gbps, 100.0 * r.gbps / kPeakGBps, i + 1 < results.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace sals::kernels

int main(int argc, char** argv) { return sals::kernels::Main(argc, argv); }
