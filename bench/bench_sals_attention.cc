// Benchmark of one layer's SALS decode attention step (sals_decode.h: latent query, scores,
// top-k, the fused sparse-latent attention kernel and its split combine) against our dense paged
// decode kernel (attention.h) and, from a JSON file written by bench/sdpa_reference.py in the
// same device session, torch SDPA with the flash (FlashAttention-2) and cuDNN backends.
//
// Shapes: 32 query heads x 128, fp16, MHA (32 KV heads) and GQA (8 KV heads), batch {1, 8, 16,
// 32, 64} x context {4K, 32K, 128K} up to 2M cached tokens in all. SALS-25%: rank D/4, 4-bit
// values; SALS-12.5%: rank D/8, 2-bit values; both group 32, top 1/8 of the context + 16 sinks + 64
// recent tokens, scores over rank/2 dims. Each step runs as a CUDA graph (the decode path is
// graph-friendly; SDPA is timed as graphs too); times are medians of back-to-back replays between
// CUDA events after a warm-up, on random inputs, rotating over copies of the cache where one copy
// would fit in the L2.
//
// Usage: bench_sals_attention [--sdpa sdpa.json] [--json out.json] [--gpu NAME] [--attn MHA|GQA]
//   [--batches 1,8,...] [--contexts 4096,...]
// The JSON's "results" hold one flat record per row (gpu, batch, context, num_kv_heads, fa2_us,
// cudnn_us, dense_us, sals_25_us, sals_12_5_us); "stages" the per-stage times of each SALS row.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/bench_check.h"
#include "bench/bench_device.h"
#include "nlohmann/json.hpp"
#include "sals/kernels/attention.h"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/sals_decode.h"

namespace sals::kernels {
namespace {

constexpr int kHeadDim = 128;
constexpr int kNumHeads = 32;
constexpr int kBlockSize = 16;
constexpr int kSinks = 16;
constexpr int kRecent = 64;
constexpr int kGroupSize = 32;
constexpr int64_t kMaxTokens = int64_t{64} * 32768;  // batch x context of the largest row
constexpr int kMaxBatch = 64;
constexpr int kMaxRotations = 8;
constexpr int kWarmup = 5;
constexpr int kRuns = 30;
// Consecutive steps read different caches until one step's bytes times the rotation count
// exceed the L2 (50 MB) several times.
constexpr double kRotationBytes = 256.0 * (1 << 20);

using bench::Check;
using bench::FillRandom;
using bench::ParseList;
using bench::Upload;

// Owns an instantiated CUDA graph captured from a stream.
class Graph {
 public:
  Graph() = default;
  ~Graph() {
    if (exec_ != nullptr) static_cast<void>(cudaGraphExecDestroy(exec_));
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  Graph(Graph&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}

  // Captures what `enqueue` puts on `stream` (which must be idle).
  template <typename F>
  static Graph Capture(cudaStream_t stream, F&& enqueue) {
    SALS_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    enqueue();
    cudaGraph_t graph = nullptr;
    SALS_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    Graph g;
    const cudaError_t err = cudaGraphInstantiate(&g.exec_, graph, 0);
    SALS_CUDA_CHECK(cudaGraphDestroy(graph));
    SALS_CUDA_CHECK(err);
    return g;
  }

  void Launch(cudaStream_t stream) const { SALS_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Median microseconds of one replay, graphs[i % size] back to back.
double TimeGraphs(const std::vector<Graph>& graphs, cudaStream_t stream) {
  for (int i = 0; i < kWarmup; ++i) graphs[i % graphs.size()].Launch(stream);
  std::vector<Event> events;
  for (int i = 0; i <= kRuns; ++i) events.push_back(Check(Event::Create()));
  Check(events[0].Record(stream));
  for (int i = 0; i < kRuns; ++i) {
    graphs[(kWarmup + i) % graphs.size()].Launch(stream);
    Check(events[i + 1].Record(stream));
  }
  std::vector<double> us(kRuns);
  for (int i = 0; i < kRuns; ++i) us[i] = 1e3 * Check(events[i + 1].ElapsedMsSince(events[i]));
  std::sort(us.begin(), us.end());
  return (us[kRuns / 2 - 1] + us[kRuns / 2]) / 2;
}

int Rotations(double step_bytes, int batch, int context) {
  const int fit = static_cast<int>(kMaxTokens / (static_cast<int64_t>(batch) * context));
  const int want = static_cast<int>(std::ceil(kRotationBytes / step_bytes));
  return std::clamp(std::min(want, fit), 1, kMaxRotations);
}

// Block tables of `rotations` disjoint copies of a batch: copy r owns blocks
// [r * set, (r + 1) * set), shuffled over its sequences.
std::vector<int32_t> RotatedTables(int rotations, int batch, int blocks_per_seq,
                                   std::mt19937_64& rng) {
  const size_t set = static_cast<size_t>(batch) * blocks_per_seq;
  std::vector<int32_t> tables(set * rotations);
  for (int r = 0; r < rotations; ++r) {
    auto first = tables.begin() + r * set;
    std::iota(first, first + set, static_cast<int32_t>(r * set));
    std::shuffle(first, first + set, rng);
  }
  return tables;
}

struct SalsConfig {
  const char* name;
  int rank_divisor;
  int bits;
};
constexpr SalsConfig kConfigs[] = {{"SALS-25%", 4, 4}, {"SALS-12.5%", 8, 2}};

struct SalsTiming {
  double total_us = 0;
  double mma_us = 0;     // the same step with the rebuild on mma.sync (where wgmma is the default)
  double path_diff = 0;  // max |wgmma - mma.sync| output over max |output|
  double query_us = 0, score_us = 0, topk_us = 0, attention_us = 0;
  int score_block_tokens = 0;
  int heads_per_block = 0, warpgroups = 0, buffers = 0, splits = 0, selected = 0;
  bool stream_u = false;
  bool wgmma = false;
  double rebuild_tflops = 0;  // 2 * batch * selected * rank * D over the attention stage
};

// One layer's SALS storage sized for the largest shape, filled with random values.
struct SalsPool {
  int kv_heads = 0, rank = 0, bits = 0;
  DeviceBuffer<__half> latent, basis, exact_k, exact_v, scale_zero;
  DeviceBuffer<uint8_t> codes;

  SalsPool(int kv_heads_, const SalsConfig& config, std::mt19937_64& rng)
      : kv_heads(kv_heads_), bits(config.bits) {
    const int width = kv_heads * kHeadDim;
    rank = width / config.rank_divisor;
    const size_t slots = kMaxTokens;
    const size_t sequences = size_t{kMaxBatch} * kMaxRotations;
    latent = Check(DeviceBuffer<__half>::Allocate(slots * rank));
    codes = Check(DeviceBuffer<uint8_t>::Allocate(slots * width * bits / 8));
    scale_zero = Check(DeviceBuffer<__half>::Allocate(slots * width / kGroupSize * 2));
    exact_k = Check(DeviceBuffer<__half>::Allocate(sequences * (kSinks + kRecent) * width));
    exact_v = Check(DeviceBuffer<__half>::Allocate(sequences * (kSinks + kRecent) * width));
    basis = Check(DeviceBuffer<__half>::Allocate(size_t{1} * width * rank));
    FillRandom(latent.get(), latent.bytes(), rng, -1.0f, 1.0f);
    FillRandom(codes.get(), codes.bytes(), rng, -1.0f, 1.0f);  // any bit pattern is a code
    FillRandom(exact_k.get(), exact_k.bytes(), rng, -1.0f, 1.0f);
    FillRandom(exact_v.get(), exact_v.bytes(), rng, -1.0f, 1.0f);
    const float u = 2.0f / std::sqrt(static_cast<float>(rank));
    FillRandom(basis.get(), basis.bytes(), rng, -u, u);
    // (scale, zero) pairs: scales in [0.02, 0.2), zeros in [-1, -0.1).
    std::vector<__half> pairs(2 << 20);
    std::uniform_real_distribution<float> scale(0.02f, 0.2f), zero(-1.0f, -0.1f);
    for (size_t i = 0; i < pairs.size(); i += 2) {
      pairs[i] = __float2half_rn(scale(rng));
      pairs[i + 1] = __float2half_rn(zero(rng));
    }
    SALS_CUDA_CHECK(cudaMemcpy(scale_zero.get(), pairs.data(), pairs.size() * sizeof(__half),
                               cudaMemcpyHostToDevice));
    for (size_t off = pairs.size(); off < scale_zero.size(); off += pairs.size()) {
      SALS_CUDA_CHECK(cudaMemcpy(scale_zero.get() + off, scale_zero.get(),
                                 std::min(pairs.size(), scale_zero.size() - off) * sizeof(__half),
                                 cudaMemcpyDeviceToDevice));
    }
  }

  SalsKvCache View() const {
    SalsKvCache c;
    c.latent = latent.get();
    c.value_codes = codes.get();
    c.value_scale_zero = reinterpret_cast<__half2*>(scale_zero.get());
    c.exact_k = exact_k.get();
    c.exact_v = exact_v.get();
    c.basis = basis.get();
    c.basis_stride = rank;
    c.block_size = kBlockSize;
    c.num_kv_heads = kv_heads;
    c.head_dim = kHeadDim;
    c.rank = rank;
    c.value_bits = bits;
    c.value_group_size = kGroupSize;
    c.sink_tokens = kSinks;
    c.recent_tokens = kRecent;
    return c;
  }
};

SalsTiming RunSals(const SalsPool& pool, int batch, int context, std::mt19937_64& rng,
                   cudaStream_t stream) {
  const int width = pool.kv_heads * kHeadDim;
  const int cached = context - 1;  // plus the new token: `context` keys, as SDPA and dense
  SalsSelectionPolicy policy;
  policy.rank = pool.rank;
  policy.score_dims = pool.rank / 2;
  policy.topk_fraction = 0.125;
  policy.sink_tokens = kSinks;
  policy.recent_tokens = kRecent;
  const SalsSelection sel = SalsPlanSelection(policy, cached);
  const double step_bytes =
      static_cast<double>(batch) * (static_cast<double>(sel.middle()) * policy.score_dims * 2 +
                                    sel.topk * (pool.rank * 2.0 + width * pool.bits / 8.0));
  const int rotations = Rotations(step_bytes, batch, context);
  const int blocks_per_seq = (cached + kBlockSize - 1) / kBlockSize;
  const std::vector<int32_t> tables = RotatedTables(rotations, batch, blocks_per_seq, rng);
  std::vector<int32_t> exact_slots(static_cast<size_t>(batch) * rotations);
  std::iota(exact_slots.begin(), exact_slots.end(), 0);
  std::shuffle(exact_slots.begin(), exact_slots.end(), rng);
  auto d_tables = Upload(tables);
  auto d_exact = Upload(exact_slots);
  auto d_lens = Upload(std::vector<int32_t>(batch, cached));
  const int64_t row = static_cast<int64_t>(kNumHeads + 2 * pool.kv_heads) * kHeadDim;
  auto qkv = Check(DeviceBuffer<__half>::Allocate(batch * row));
  auto q_pre = Check(DeviceBuffer<__half>::Allocate(batch * row));
  FillRandom(qkv.get(), qkv.bytes(), rng, -2.0f, 2.0f);
  FillRandom(q_pre.get(), q_pre.bytes(), rng, -2.0f, 2.0f);
  std::vector<float> inv_freq(kHeadDim / 2);
  for (int i = 0; i < kHeadDim / 2; ++i) {
    inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / kHeadDim));
  }
  auto d_inv_freq = Upload(inv_freq);
  auto out = Check(DeviceBuffer<__half>::Allocate(size_t{1} * batch * kNumHeads * kHeadDim));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));

  auto cache_for = [&](int r) {
    SalsKvCache c = pool.View();
    c.block_tables = d_tables.get() + static_cast<size_t>(r) * batch * blocks_per_seq;
    c.block_table_stride = blocks_per_seq;
    c.kv_lens = d_lens.get();
    c.exact_slots = d_exact.get() + r * batch;
    return c;
  };
  const SalsDecodePlan plan = Check(PlanSalsDecode(cache_for(0), policy, batch, kNumHeads, cached));
  const SalsDecodePlan mma_plan =
      Check(PlanSalsDecode(cache_for(0), policy, batch, kNumHeads, cached, /*allow_wgmma=*/false));
  const SalsWorkspaceLayout ws = SalsDecodeWorkspace(pool.View(), plan);
  auto workspace = Check(DeviceBuffer<uint8_t>::Allocate(
      std::max(ws.bytes, SalsDecodeWorkspace(pool.View(), mma_plan).bytes)));
  uint8_t* base = workspace.get();
  float* q_latent = reinterpret_cast<float*>(base + ws.q_latent);
  float* scores = reinterpret_cast<float*>(base + ws.scores);
  int32_t* selected = reinterpret_cast<int32_t*>(base + ws.selected);
  const __half* q = qkv.get();
  const __half* k_new = q + kNumHeads * kHeadDim;
  const __half* v_new = k_new + width;

  auto step = [&](const SalsDecodePlan& p, int r) {
    Check(SalsDecodeAttention(DType::kF16, cache_for(r), policy, p, q_pre.get(), q, row, k_new,
                              v_new, row, d_inv_freq.get(), scale, base, out.get(), stream));
  };
  // Graphs per rotation for the step, the step on mma.sync, and each stage alone.
  enum Stage { kStep, kMmaStep, kQuery, kScore, kTopK, kAttention, kNumStages };
  std::vector<std::vector<Graph>> graphs(kNumStages);
  for (int r = 0; r < rotations; ++r) {
    const SalsKvCache c = cache_for(r);
    graphs[kStep].push_back(Graph::Capture(stream, [&] { step(plan, r); }));
    if (plan.wgmma) {
      graphs[kMmaStep].push_back(Graph::Capture(stream, [&] { step(mma_plan, r); }));
    }
    graphs[kQuery].push_back(Graph::Capture(stream, [&] {
      Check(SalsLatentQuery(DType::kF16, c, policy, plan, q_pre.get(), row,
                            reinterpret_cast<float*>(base + ws.q_partial), q_latent, stream));
    }));
    graphs[kScore].push_back(Graph::Capture(
        stream, [&] { Check(SalsLatentScores(c, policy, plan, q_latent, scores, stream)); }));
    graphs[kTopK].push_back(Graph::Capture(
        stream, [&] { Check(SalsTopK(c, policy, plan, scores, selected, stream)); }));
    graphs[kAttention].push_back(Graph::Capture(stream, [&] {
      Check(SalsSparseAttention(DType::kF16, c, policy, plan, q, row, k_new, v_new, row,
                                d_inv_freq.get(), scale, selected, base, out.get(), stream));
    }));
  }
  SalsTiming t;
  t.total_us = TimeGraphs(graphs[kStep], stream);
  t.mma_us = plan.wgmma ? TimeGraphs(graphs[kMmaStep], stream) : t.total_us;
  t.query_us = TimeGraphs(graphs[kQuery], stream);
  t.score_us = TimeGraphs(graphs[kScore], stream);
  t.topk_us = TimeGraphs(graphs[kTopK], stream);
  graphs[kStep][0].Launch(stream);  // the selection the attention stage reads
  t.attention_us = TimeGraphs(graphs[kAttention], stream);
  t.score_block_tokens = plan.score_block_tokens;
  t.heads_per_block = plan.heads_per_block;
  t.warpgroups = plan.warpgroups;
  t.buffers = plan.buffers;
  t.stream_u = plan.stream_u;
  t.splits = plan.max_splits;
  t.wgmma = plan.wgmma;
  t.selected = sel.topk;
  t.rebuild_tflops = 2.0 * batch * sel.topk * pool.rank * width / (t.attention_us * 1e-6) / 1e12;
  // Both rebuild paths on the same inputs: outputs must be numbers and agree.
  auto output_of = [&](const Graph& g) {
    g.Launch(stream);
    std::vector<__half> host(out.size());
    SALS_CUDA_CHECK(cudaStreamSynchronize(stream));
    Check(out.CopyTo(host));
    std::vector<float> f(host.size());
    for (size_t i = 0; i < host.size(); ++i) f[i] = __half2float(host[i]);
    return f;
  };
  const std::vector<float> main_out = output_of(graphs[kStep][0]);
  const std::vector<float> mma_out = plan.wgmma ? output_of(graphs[kMmaStep][0]) : main_out;
  float max_abs = 0.0f;
  float max_diff = 0.0f;
  for (size_t i = 0; i < main_out.size(); ++i) {
    if (!std::isfinite(main_out[i]) || !std::isfinite(mma_out[i])) {
      std::fprintf(stderr, "non-finite SALS output at batch %d context %d\n", batch, context);
      std::exit(1);
    }
    max_abs = std::max(max_abs, std::fabs(main_out[i]));
    max_diff = std::max(max_diff, std::fabs(main_out[i] - mma_out[i]));
  }
  t.path_diff = max_diff / std::max(max_abs, 1e-30f);
  return t;
}

// Our dense paged decode kernel on the same shape (fp16 K/V of `context` tokens per sequence).
double RunDense(int kv_heads, int batch, int context, const __half* k_pool, const __half* v_pool,
                std::mt19937_64& rng, cudaStream_t stream) {
  const double step_bytes = 4.0 * batch * context * kv_heads * kHeadDim;
  const int rotations = Rotations(step_bytes, batch, context);
  const int blocks_per_seq = context / kBlockSize;
  const std::vector<int32_t> tables = RotatedTables(rotations, batch, blocks_per_seq, rng);
  auto d_tables = Upload(tables);
  auto d_lens = Upload(std::vector<int32_t>(batch, context));
  auto q = Check(DeviceBuffer<__half>::Allocate(size_t{1} * batch * kNumHeads * kHeadDim));
  auto out = Check(DeviceBuffer<__half>::Allocate(q.size()));
  FillRandom(q.get(), q.bytes(), rng, -2.0f, 2.0f);
  PagedKvCache cache{k_pool,       v_pool,     d_tables.get(), blocks_per_seq,
                     d_lens.get(), kBlockSize, kv_heads,       kHeadDim};
  const DecodeAttentionPlan plan =
      Check(PlanDecodeAttention(DType::kF16, cache, batch, kNumHeads, context));
  auto workspace = Check(DeviceBuffer<uint8_t>::Allocate(
      DecodeAttentionWorkspaceBytes(plan, batch, kNumHeads, kHeadDim)));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  std::vector<Graph> graphs;
  for (int r = 0; r < rotations; ++r) {
    cache.block_tables = d_tables.get() + static_cast<size_t>(r) * batch * blocks_per_seq;
    graphs.push_back(Graph::Capture(stream, [&] {
      Check(DecodeAttention(DType::kF16, cache, batch, kNumHeads, q.get(), kNumHeads * kHeadDim,
                            scale, plan, workspace.get(), out.get(), stream));
    }));
  }
  return TimeGraphs(graphs, stream);
}

struct Row {
  std::string attn;
  int kv_heads = 0, batch = 0, context = 0;
  double dense_us = 0;
  double fa2_us = -1, cudnn_us = -1;  // from the SDPA JSON; -1 when absent
  SalsTiming sals[2];
};

// SDPA times keyed by (kv_heads, batch, context).
std::map<std::tuple<int, int, int>, std::pair<double, double>> ReadSdpa(const char* path) {
  std::map<std::tuple<int, int, int>, std::pair<double, double>> times;
  for (const auto& r : bench::ReadReferenceResults(path)) {
    times[{r["kv_heads"].get<int>(), r["batch"].get<int>(), r["context"].get<int>()}] = {
        bench::NumberOr(r, "flash_us"), bench::NumberOr(r, "cudnn_us")};
  }
  return times;
}

std::string Ratio(double base, double us) {
  if (base <= 0 || us <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fx", base / us);
  return buf;
}

std::string Us(double us) {
  if (us <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", us);
  return buf;
}

int Main(int argc, char** argv) {
  const char* json_path = nullptr;
  const char* sdpa_path = nullptr;
  std::string gpu_name;
  std::string only_attn;
  std::vector<int> batches = {1, 8, 16, 32, 64};
  std::vector<int> contexts = {4096, 32768, 131072};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--sdpa") == 0 && i + 1 < argc) {
      sdpa_path = argv[++i];
    } else if (std::strcmp(argv[i], "--gpu") == 0 && i + 1 < argc) {
      gpu_name = argv[++i];
    } else if (std::strcmp(argv[i], "--attn") == 0 && i + 1 < argc) {
      only_attn = argv[++i];
    } else if (std::strcmp(argv[i], "--batches") == 0 && i + 1 < argc) {
      batches = ParseList(argv[++i]);
    } else if (std::strcmp(argv[i], "--contexts") == 0 && i + 1 < argc) {
      contexts = ParseList(argv[++i]);
    } else {
      batches.clear();
    }
    if (batches.empty() || contexts.empty()) {
      std::fprintf(stderr,
                   "usage: %s [--sdpa sdpa.json] [--json out.json] [--gpu NAME] [--attn MHA|GQA] "
                   "[--batches 1,8,...] [--contexts 4096,...]\n",
                   argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop{};
  SALS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (gpu_name.empty()) gpu_name = prop.name;
  std::printf("device: %s, %d SMs, L2 %d MB; SALS key rebuild on %s\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20,
              SalsWgmmaAvailable() ? "wgmma" : "mma.sync");
  const auto sdpa = ReadSdpa(sdpa_path);
  std::mt19937_64 rng(std::random_device{}());
  Stream stream = Check(Stream::Create());
  std::vector<Row> rows;
  for (const auto& [attn, kv_heads] : {std::pair{"MHA", 32}, std::pair{"GQA", 8}}) {
    if (!only_attn.empty() && only_attn != attn) continue;
    const size_t first = rows.size();
    for (int context : contexts) {
      for (int batch : batches) {
        if (batch > kMaxBatch || static_cast<int64_t>(batch) * context > kMaxTokens) continue;
        Row r;
        r.attn = attn;
        r.kv_heads = kv_heads;
        r.batch = batch;
        r.context = context;
        if (auto it = sdpa.find({kv_heads, batch, context}); it != sdpa.end()) {
          std::tie(r.fa2_us, r.cudnn_us) = it->second;
        }
        rows.push_back(r);
      }
    }
    {
      const size_t halves = size_t{kMaxTokens} * kv_heads * kHeadDim;
      auto k_pool = Check(DeviceBuffer<__half>::Allocate(halves));
      auto v_pool = Check(DeviceBuffer<__half>::Allocate(halves));
      FillRandom(k_pool.get(), k_pool.bytes(), rng, -1.0f, 1.0f);
      FillRandom(v_pool.get(), v_pool.bytes(), rng, -1.0f, 1.0f);
      for (size_t i = first; i < rows.size(); ++i) {
        rows[i].dense_us = RunDense(kv_heads, rows[i].batch, rows[i].context, k_pool.get(),
                                    v_pool.get(), rng, stream.get());
      }
    }
    for (int c = 0; c < 2; ++c) {
      const SalsPool pool(kv_heads, kConfigs[c], rng);
      for (size_t i = first; i < rows.size(); ++i) {
        rows[i].sals[c] = RunSals(pool, rows[i].batch, rows[i].context, rng, stream.get());
        std::fprintf(stderr, "%s batch %d context %d %s: %.1f us\n", attn, rows[i].batch,
                     rows[i].context, kConfigs[c].name, rows[i].sals[c].total_us);
      }
    }
  }

  std::printf("\nDecode attention, one layer, 32 query heads x 128, fp16; microseconds (median)\n");
  std::printf("%-4s %5s %7s %9s %9s %9s %10s %10s %9s %9s %9s %9s\n", "attn", "batch", "context",
              "dense", "FA2", "cuDNN", "SALS-25%", "SALS-12.5%", "12.5/FA2", "12.5/cuDNN", "25/FA2",
              "25/cuDNN");
  for (const Row& r : rows) {
    std::printf(
        "%-4s %5d %7d %9s %9s %9s %10s %10s %9s %9s %9s %9s\n", r.attn.c_str(), r.batch, r.context,
        Us(r.dense_us).c_str(), Us(r.fa2_us).c_str(), Us(r.cudnn_us).c_str(),
        Us(r.sals[0].total_us).c_str(), Us(r.sals[1].total_us).c_str(),
        Ratio(r.fa2_us, r.sals[1].total_us).c_str(), Ratio(r.cudnn_us, r.sals[1].total_us).c_str(),
        Ratio(r.fa2_us, r.sals[0].total_us).c_str(), Ratio(r.cudnn_us, r.sals[0].total_us).c_str());
  }
  std::printf(
      "\nSALS stages (us: latent query, scores, top-k, attention = the fused kernel + combine),\n"
      "the rebuild's rate (2 batch k rank D / attention stage), the attention's plan (KV heads\n"
      "per block, warpgroups, buffers, U streamed, splits), and the whole step with the rebuild\n"
      "on mma.sync instead of wgmma with its largest output difference\n");
  std::printf("%-4s %5s %7s %-10s %6s %7s %7s %7s %8s %7s %5s %3s %3s %3s %6s %5s %9s %9s\n",
              "attn", "batch", "context", "config", "k", "query", "score", "topk", "attn",
              "TFLOP/s", "heads", "wg", "buf", "str", "splits", "sblk", "mma_step", "path_diff");
  for (const Row& r : rows) {
    for (int c = 0; c < 2; ++c) {
      const SalsTiming& t = r.sals[c];
      std::printf(
          "%-4s %5d %7d %-10s %6d %7.1f %7.1f %7.1f %8.1f %7.0f %5d %3d %3d %3d %6d %5d %9.1f "
          "%9.1e\n",
          r.attn.c_str(), r.batch, r.context, kConfigs[c].name, t.selected, t.query_us, t.score_us,
          t.topk_us, t.attention_us, t.rebuild_tflops, t.heads_per_block, t.warpgroups, t.buffers,
          t.stream_u ? 1 : 0, t.splits, t.score_block_tokens, t.mma_us, t.path_diff);
    }
  }
  if (json_path != nullptr) {
    nlohmann::json j;
    j["device"] = prop.name;
    j["runs"] = kRuns;
    j["head_dim"] = kHeadDim;
    j["num_heads"] = kNumHeads;
    j["block_size"] = kBlockSize;
    j["results"] = nlohmann::json::array();
    j["stages"] = nlohmann::json::array();
    auto or_null = [](double us) { return us > 0 ? nlohmann::json(us) : nlohmann::json(); };
    for (const Row& r : rows) {
      j["results"].push_back({{"kind", "op"},
                              {"gpu", gpu_name},
                              {"batch", r.batch},
                              {"context", r.context},
                              {"num_kv_heads", r.kv_heads},
                              {"fa2_us", or_null(r.fa2_us)},
                              {"cudnn_us", or_null(r.cudnn_us)},
                              {"dense_us", r.dense_us},
                              {"sals_25_us", r.sals[0].total_us},
                              {"sals_12_5_us", r.sals[1].total_us}});
      for (int c = 0; c < 2; ++c) {
        const SalsTiming& t = r.sals[c];
        j["stages"].push_back({{"gpu", gpu_name},
                               {"batch", r.batch},
                               {"context", r.context},
                               {"num_kv_heads", r.kv_heads},
                               {"config", kConfigs[c].name},
                               {"total_us", t.total_us},
                               {"mma_step_us", t.mma_us},
                               {"query_us", t.query_us},
                               {"score_us", t.score_us},
                               {"topk_us", t.topk_us},
                               {"attention_us", t.attention_us},
                               {"selected", t.selected},
                               {"heads_per_block", t.heads_per_block},
                               {"warpgroups", t.warpgroups},
                               {"buffers", t.buffers},
                               {"stream_u", t.stream_u},
                               {"splits", t.splits},
                               {"score_block_tokens", t.score_block_tokens},
                               {"wgmma", t.wgmma},
                               {"path_diff", t.path_diff},
                               {"rebuild_tflops", t.rebuild_tflops}});
      }
    }
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace sals::kernels

int main(int argc, char** argv) { return sals::kernels::Main(argc, argv); }
