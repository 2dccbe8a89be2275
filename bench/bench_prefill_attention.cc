// Benchmark of our causal prefill attention kernel (attention.h: PrefillAttention over the paged
// fp16 cache) against torch's scaled_dot_product_attention with the flash (FlashAttention-2) and
// cuDNN backends, read from a JSON file bench/sdpa_prefill_reference.py wrote in the same device
// session.
//
// Shapes: one sequence, 32 query heads x 128, fp16, MHA (32 KV heads) and GQA (8 KV heads), prompt
// lengths 4K, 16K, 32K and 128K, block size 16 (blocks scattered over the pool). Each prompt is
// timed three ways: whole (one causal chunk), and cut into 2K and 8K chunks against the cached
// prefix, as the scheduler feeds it: the last chunk alone (a chunk attending to the full prefix)
// and all chunks back to back (the prompt's total attention time). Times are medians between CUDA
// events after a warm-up, on random inputs drawn per shape.
//
// TFLOP/s count the causal work exactly: a chunk of q tokens after p cached ones does
// 4 * head_dim * num_heads * (q * p + q * (q + 1) / 2) FLOPs (Q K^T and P V, 2 each per
// query-key pair it attends to); SDPA's rows use the same count, so the ratios are time ratios.
//
// Usage: bench_prefill_attention [--sdpa sdpa_prefill.json] [--json out.json] [--gpu NAME]
//   [--contexts 4096,...] [--chunks 2048,8192] [--kv_heads 8,32]
// The JSON's "results" hold one flat record per row: kind "prefill", gpu, context, chunk (the
// chunk length; the context for whole prompts), part ("whole", "last_chunk" or "all_chunks"),
// num_kv_heads, ours_ms, ours_tflops, fa2_tflops, cudnn_tflops (null where SDPA has no figure).
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
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

namespace sals::kernels {
namespace {

constexpr int kHeadDim = 128;
constexpr int kNumHeads = 32;
constexpr int kBlockSize = 16;

using bench::Check;
using bench::FillRandom;
using bench::ParseList;
using bench::Upload;

// FLOPs of one causal chunk of `q` tokens after `prefix` cached ones, all heads.
double CausalFlops(int64_t prefix, int64_t q) {
  return 4.0 * kHeadDim * kNumHeads * (static_cast<double>(q) * prefix + q * (q + 1) / 2.0);
}

// Median milliseconds of `launch()` (which may enqueue several kernels), after `warmup` calls.
template <typename F>
double MedianMs(F&& launch, int warmup, int runs, cudaStream_t stream) {
  for (int i = 0; i < warmup; ++i) launch();
  std::vector<Event> events;
  for (int i = 0; i <= runs; ++i) events.push_back(Check(Event::Create()));
  Check(events[0].Record(stream));
  for (int i = 0; i < runs; ++i) {
    launch();
    Check(events[i + 1].Record(stream));
  }
  std::vector<double> ms(runs);
  for (int i = 0; i < runs; ++i) ms[i] = Check(events[i + 1].ElapsedMsSince(events[i]));
  std::sort(ms.begin(), ms.end());
  return runs % 2 == 1 ? ms[runs / 2] : (ms[runs / 2 - 1] + ms[runs / 2]) / 2;
}

struct Row {
  int kv_heads = 0, context = 0, chunk = 0;
  std::string part;  // "whole", "last_chunk", "all_chunks"
  double flops = 0;
  double ours_ms = 0;
  double fa2_ms = -1, cudnn_ms = -1;  // from the SDPA JSON; -1 when absent or refused
};

double Tflops(double flops, double ms) { return ms > 0 ? flops / (ms * 1e-3) / 1e12 : -1; }

// One prompt of `context` tokens over `kv_heads` KV heads: the whole prompt, and for each chunk
// length its last chunk and all its chunks. Appends the rows.
void RunPrompt(int kv_heads, int context, const std::vector<int>& chunks, std::mt19937_64& rng,
               cudaStream_t stream, std::vector<Row>* rows) {
  const int blocks = (context + kBlockSize - 1) / kBlockSize;
  const size_t pool_halves = static_cast<size_t>(blocks) * kBlockSize * kv_heads * kHeadDim;
  auto k_pool = Check(DeviceBuffer<__half>::Allocate(pool_halves));
  auto v_pool = Check(DeviceBuffer<__half>::Allocate(pool_halves));
  FillRandom(k_pool.get(), k_pool.bytes(), rng, -1.0f, 1.0f);
  FillRandom(v_pool.get(), v_pool.bytes(), rng, -1.0f, 1.0f);
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  auto d_table = Upload(table);
  // q rows as the backend lays them: num_heads x head_dim per token.
  const int64_t q_stride = int64_t{kNumHeads} * kHeadDim;
  auto q = Check(DeviceBuffer<__half>::Allocate(static_cast<size_t>(context) * q_stride));
  auto out = Check(DeviceBuffer<__half>::Allocate(q.size()));
  FillRandom(q.get(), q.bytes(), rng, -2.0f, 2.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));

  // kv_lens per chunk (chunk i ends at min((i + 1) * chunk, context)) and q_starts {0, q_len}.
  struct Chunking {
    int chunk;
    std::vector<int32_t> kv_lens;
    DeviceBuffer<int32_t> d_kv_lens;
    std::vector<DeviceBuffer<int32_t>> q_starts;  // one per chunk: {0, q_len}
  };
  auto make = [&](int chunk) {
    Chunking c;
    c.chunk = chunk;
    for (int end = std::min(chunk, context);; end = std::min(end + chunk, context)) {
      c.kv_lens.push_back(end);
      const int prev = c.kv_lens.size() > 1 ? c.kv_lens[c.kv_lens.size() - 2] : 0;
      c.q_starts.push_back(Upload(std::vector<int32_t>{0, end - prev}));
      if (end == context) break;
    }
    c.d_kv_lens = Upload(c.kv_lens);
    return c;
  };
  auto launch_chunk = [&](const Chunking& c, size_t i) {
    const int q_len = c.kv_lens[i] - (i > 0 ? c.kv_lens[i - 1] : 0);
    const PagedKvCache cache{k_pool.get(),          v_pool.get(), d_table.get(), blocks,
                             c.d_kv_lens.get() + i, kBlockSize,   kv_heads,      kHeadDim};
    Check(PrefillAttention(DType::kF16, cache, 1, kNumHeads, q.get(), q_stride, c.q_starts[i].get(),
                           q_len, scale, out.get(), stream));
  };

  // Long launches time steadily: fewer runs for more work.
  const double whole_flops = CausalFlops(0, context);
  const int runs = whole_flops > 2e13 ? 5 : whole_flops > 2e12 ? 11 : 21;
  {
    const Chunking whole = make(context);
    Row r{kv_heads, context, context, "whole", whole_flops};
    r.ours_ms = MedianMs([&] { launch_chunk(whole, 0); }, 2, runs, stream);
    rows->push_back(r);
    // The output must be numbers (a kernel that skips work can be fast).
    std::vector<__half> host(out.size());
    SALS_CUDA_CHECK(cudaStreamSynchronize(stream));
    Check(out.CopyTo(host));
    for (size_t i = 0; i < host.size(); i += 997) {
      if (!std::isfinite(__half2float(host[i]))) {
        std::fprintf(stderr, "non-finite output at kv_heads %d context %d\n", kv_heads, context);
        std::exit(1);
      }
    }
  }
  for (const int chunk : chunks) {
    if (chunk >= context) continue;
    const Chunking c = make(chunk);
    const size_t last = c.kv_lens.size() - 1;
    const int last_q = c.kv_lens[last] - c.kv_lens[last - 1];
    Row r{kv_heads, context, chunk, "last_chunk", CausalFlops(c.kv_lens[last - 1], last_q)};
    r.ours_ms = MedianMs([&] { launch_chunk(c, last); }, 3, std::max(runs, 11), stream);
    rows->push_back(r);
    Row all{kv_heads, context, chunk, "all_chunks", 0};
    for (size_t i = 0; i < c.kv_lens.size(); ++i) {
      const int prefix = i > 0 ? c.kv_lens[i - 1] : 0;
      all.flops += CausalFlops(prefix, c.kv_lens[i] - prefix);
    }
    all.ours_ms = MedianMs(
        [&] {
          for (size_t i = 0; i < c.kv_lens.size(); ++i) launch_chunk(c, i);
        },
        1, runs, stream);
    rows->push_back(all);
  }
}

// SDPA times keyed by (kv_heads, context, chunk, part): (flash ms, cuDNN ms), -1 where absent.
using SdpaTimes = std::map<std::tuple<int, int, int, std::string>, std::pair<double, double>>;

SdpaTimes ReadSdpa(const char* path) {
  SdpaTimes times;
  for (const auto& r : bench::ReadReferenceResults(path)) {
    times[{r["kv_heads"].get<int>(), r["context"].get<int>(), r["chunk"].get<int>(),
           r["part"].get<std::string>()}] = {bench::NumberOr(r, "flash_ms"),
                                             bench::NumberOr(r, "cudnn_ms")};
  }
  return times;
}

std::string Fixed(double v, const char* format) {
  if (v <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

int Main(int argc, char** argv) {
  const char* json_path = nullptr;
  const char* sdpa_path = nullptr;
  std::string gpu_name;
  std::vector<int> contexts = {4096, 16384, 32768, 131072};
  std::vector<int> chunks = {2048, 8192};
  std::vector<int> kv_heads_list = {8, 32};
  bool ok = true;
  for (int i = 1; i < argc && ok; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--sdpa") == 0 && i + 1 < argc) {
      sdpa_path = argv[++i];
    } else if (std::strcmp(argv[i], "--gpu") == 0 && i + 1 < argc) {
      gpu_name = argv[++i];
    } else if (std::strcmp(argv[i], "--contexts") == 0 && i + 1 < argc) {
      contexts = ParseList(argv[++i]);
      ok = !contexts.empty();
    } else if (std::strcmp(argv[i], "--chunks") == 0 && i + 1 < argc) {
      chunks = ParseList(argv[++i]);
      ok = !chunks.empty();
    } else if (std::strcmp(argv[i], "--kv_heads") == 0 && i + 1 < argc) {
      kv_heads_list = ParseList(argv[++i]);
      ok = !kv_heads_list.empty() &&
           std::all_of(kv_heads_list.begin(), kv_heads_list.end(),
                       [](int h) { return kNumHeads % h == 0 && kNumHeads / h <= 8; });
    } else {
      ok = false;
    }
  }
  if (!ok) {
    std::fprintf(stderr,
                 "usage: %s [--sdpa sdpa_prefill.json] [--json out.json] [--gpu NAME] "
                 "[--contexts 4096,...] [--chunks 2048,8192] [--kv_heads 8,32]\n",
                 argv[0]);
    return 2;
  }
  cudaDeviceProp prop{};
  SALS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (gpu_name.empty()) gpu_name = prop.name;
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const SdpaTimes sdpa = ReadSdpa(sdpa_path);
  std::mt19937_64 rng(std::random_device{}());
  Stream stream = Check(Stream::Create());
  std::vector<Row> rows;
  for (const int kv_heads : kv_heads_list) {
    for (const int context : contexts) {
      const size_t first = rows.size();
      RunPrompt(kv_heads, context, chunks, rng, stream.get(), &rows);
      for (size_t i = first; i < rows.size(); ++i) {
        Row& r = rows[i];
        if (auto it = sdpa.find({r.kv_heads, r.context, r.chunk, r.part}); it != sdpa.end()) {
          std::tie(r.fa2_ms, r.cudnn_ms) = it->second;
        }
        std::fprintf(stderr, "kv_heads %d context %d chunk %d %s: %.3f ms, %.0f TFLOP/s\n",
                     r.kv_heads, r.context, r.chunk, r.part.c_str(), r.ours_ms,
                     Tflops(r.flops, r.ours_ms));
      }
    }
  }

  std::printf(
      "\nCausal prefill attention, one sequence, 32 query heads x 128, fp16; TFLOP/s (causal "
      "FLOPs)\n");
  std::printf("%8s %7s %6s %-10s %9s %7s %7s %7s %8s %8s\n", "kv_heads", "context", "chunk", "part",
              "ours_ms", "ours", "FA2", "cuDNN", "ours/FA2", "ours/cuDNN");
  for (const Row& r : rows) {
    const double ours = Tflops(r.flops, r.ours_ms);
    const double fa2 = Tflops(r.flops, r.fa2_ms);
    const double cudnn = Tflops(r.flops, r.cudnn_ms);
    std::printf("%8d %7d %6d %-10s %9.3f %7.0f %7s %7s %8s %8s\n", r.kv_heads, r.context, r.chunk,
                r.part.c_str(), r.ours_ms, ours, Fixed(fa2, "%.0f").c_str(),
                Fixed(cudnn, "%.0f").c_str(), Fixed(fa2 > 0 ? ours / fa2 : -1, "%.2fx").c_str(),
                Fixed(cudnn > 0 ? ours / cudnn : -1, "%.2fx").c_str());
  }
  if (json_path != nullptr) {
    nlohmann::json j;
    j["device"] = prop.name;
    j["head_dim"] = kHeadDim;
    j["num_heads"] = kNumHeads;
    j["block_size"] = kBlockSize;
    j["results"] = nlohmann::json::array();
    auto or_null = [](double v) { return v > 0 ? nlohmann::json(v) : nlohmann::json(); };
    for (const Row& r : rows) {
      j["results"].push_back({{"kind", "prefill"},
                              {"gpu", gpu_name},
                              {"context", r.context},
                              {"chunk", r.chunk},
                              {"part", r.part},
                              {"num_kv_heads", r.kv_heads},
                              {"flops", r.flops},
                              {"ours_ms", r.ours_ms},
                              {"ours_tflops", Tflops(r.flops, r.ours_ms)},
                              {"fa2_tflops", or_null(Tflops(r.flops, r.fa2_ms))},
                              {"cudnn_tflops", or_null(Tflops(r.flops, r.cudnn_ms))}});
    }
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace sals::kernels

int main(int argc, char** argv) { return sals::kernels::Main(argc, argv); }
