// End-to-end prefill throughput of the CUDA backend, Llama-3.1-8B shape, random weights: one
// prompt of 32K and one of 128K tokens, fed as the scheduler feeds it (chunks of --chunks tokens,
// each attending to the prompt's cached prefix), into each KV pool format asked for: dense fp16,
// SALS-25 and SALS-12.5 (prefill attention stays dense; SALS layers also write each chunk's
// latents and quantized values, a cost that shows against the dense rows). SALS pools get a
// random basis (bench/e2e_backend.h). Per row: prompt tokens per second over the prompt's wall
// time (the sum of each chunk's ForwardGreedy call: the time to first token of that prompt alone
// on an idle server, as sals-generate --prompt_len measures it) and over its device time (the
// sum of each chunk's CUDA-event time); the median of --repeats prompts, after a warm-up prompt of
// 4K tokens per format.
// Usage: bench_e2e_prefill [--json PATH] [--dtype f16|bf16] [--kv dense,sals-25,sals-12.5]
//                          [--contexts 32768,131072] [--chunks 2048,8192] [--repeats N]
//                          [--gpu NAME]
// The JSON's "results" hold one flat record per row: kind "e2e_prefill", gpu, kv, context, chunk,
// tok_s (wall time), tok_s_device, wall_ms, device_ms.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/bench_check.h"
#include "bench/e2e_backend.h"
#include "engine/backend/cuda_loader.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

constexpr int kBlockSize = 16;
constexpr int kWarmupContext = 4096;

using bench::Check;

struct Result {
  std::string kv;
  int context = 0, chunk = 0;
  double device_ms = 0, wall_ms = 0;  // the whole prompt
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Prefills one prompt of `context` random tokens in chunks of `chunk` into freshly shuffled
// blocks; returns {device ms, wall ms} summed over its chunks.
std::pair<double, double> Prefill(CudaBackend& backend, int context, int chunk,
                                  std::mt19937_64& rng) {
  const ModelConfig& c = backend.config();
  std::vector<int32_t> ids(backend.kv_pool().num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int blocks = (context + kBlockSize - 1) / kBlockSize;
  std::vector<int32_t> prompt(context);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % c.vocab_size);
  ForwardBatch batch;
  batch.seqs.resize(1);
  SequenceSlice& s = batch.seqs[0];
  s.block_table.assign(ids.begin(), ids.begin() + blocks);
  s.exact_slot = 0;  // SALS pools: the sequence's exact rows
  double device_ms = 0, wall_ms = 0;
  std::vector<int32_t> next;
  for (int begin = 0; begin < context; begin += chunk) {
    const int n = std::min(chunk, context - begin);
    batch.tokens.assign(prompt.begin() + begin, prompt.begin() + begin + n);
    s.num_tokens = n;
    s.context_len = begin;
    const auto t0 = std::chrono::steady_clock::now();
    Check(backend.ForwardGreedy(batch, &next));
    const auto t1 = std::chrono::steady_clock::now();
    device_ms += Check(backend.LastStepMs());
    wall_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
  }
  return {device_ms, wall_ms};
}

std::vector<int> ParseInts(const char* text) {
  std::vector<int> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const int v = std::atoi(std::string(item).c_str());
    if (v <= 0) return {};
    out.push_back(v);
  }
  return out;
}

int Main(int argc, char** argv) {
  const char* json_path = nullptr;
  CudaBackendOptions options;
  options.dtype = DType::kBF16;
  options.time_steps = true;
  std::vector<std::string> kv_formats = {"dense"};
  std::vector<int> contexts = {32768, 131072};
  std::vector<int> chunks = {2048, 8192};
  int repeats = 1;
  std::string gpu_name = "unknown";
  bool ok = true;
  for (int i = 1; i < argc && ok; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      const std::string d = argv[++i];
      ok = d == "f16" || d == "bf16";
      options.dtype = d == "f16" ? DType::kF16 : DType::kBF16;
    } else if (std::strcmp(argv[i], "--kv") == 0 && i + 1 < argc) {
      kv_formats = absl::StrSplit(argv[++i], ',', absl::SkipEmpty());
      ok = !kv_formats.empty();
    } else if (std::strcmp(argv[i], "--contexts") == 0 && i + 1 < argc) {
      contexts = ParseInts(argv[++i]);
      ok = !contexts.empty();
    } else if (std::strcmp(argv[i], "--chunks") == 0 && i + 1 < argc) {
      chunks = ParseInts(argv[++i]);
      ok = !chunks.empty();
    } else if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::atoi(argv[++i]);
      ok = repeats >= 1;
    } else if (std::strcmp(argv[i], "--gpu") == 0 && i + 1 < argc) {
      gpu_name = argv[++i];
    } else {
      ok = false;
    }
  }
  if (!ok) {
    std::fprintf(stderr,
                 "usage: %s [--json PATH] [--dtype f16|bf16] [--kv dense,sals-25,sals-12.5] "
                 "[--contexts 32768,131072] [--chunks 2048,8192] [--repeats N] [--gpu NAME]\n",
                 argv[0]);
    return 2;
  }
  const ModelConfig config = Check(SyntheticModelConfig("llama-3.1-8b"));
  const int max_context = *std::max_element(contexts.begin(), contexts.end());
  const int num_blocks = (std::max(max_context, kWarmupContext) + kBlockSize - 1) / kBlockSize;
  const std::unique_ptr<WeightSource> weights = MakeRandomWeights(config, 1);
  std::printf(
      "llama-3.1-8b shape, random %s weights; one prompt at a time, chunked; %d prompt(s) per "
      "row after a %d-token warm-up; pools of %d blocks of %d tokens\n",
      options.dtype == DType::kF16 ? "f16" : "bf16", repeats, kWarmupContext, num_blocks,
      kBlockSize);

  std::vector<Result> all;
  for (const std::string& kv : kv_formats) {
    std::unique_ptr<CudaBackend> backend =
        Check(bench::LoadE2eBackend(config, *weights, kv, kBlockSize, num_blocks, 1, options));
    std::mt19937_64 rng(11);
    Prefill(*backend, kWarmupContext, chunks.front(), rng);
    for (const int context : contexts) {
      for (const int chunk : chunks) {
        std::vector<double> device_ms, wall_ms;
        for (int r = 0; r < repeats; ++r) {
          const auto [d, w] = Prefill(*backend, context, chunk, rng);
          device_ms.push_back(d);
          wall_ms.push_back(w);
        }
        all.push_back({kv, context, chunk, Median(device_ms), Median(wall_ms)});
        std::fprintf(stderr, "%s context %d chunk %d: %.0f ms device, %.0f ms wall\n", kv.c_str(),
                     context, chunk, all.back().device_ms, all.back().wall_ms);
      }
    }
  }

  std::printf("\n%-10s %7s %6s %10s %10s %9s %12s %9s\n", "kv", "context", "chunk", "wall_ms",
              "device_ms", "tok/s", "tok/s_device", "vs_dense");
  for (const Result& r : all) {
    const Result* dense = nullptr;
    for (const Result& d : all) {
      if (d.kv == "dense" && d.context == r.context && d.chunk == r.chunk) dense = &d;
    }
    char vs_dense[32] = "-";
    if (dense != nullptr) {
      std::snprintf(vs_dense, sizeof(vs_dense), "%.3f", r.wall_ms / dense->wall_ms);
    }
    std::printf("%-10s %7d %6d %10.1f %10.1f %9.0f %12.0f %9s\n", r.kv.c_str(), r.context, r.chunk,
                r.wall_ms, r.device_ms, r.context / (r.wall_ms * 1e-3),
                r.context / (r.device_ms * 1e-3), vs_dense);
  }
  std::printf("(vs_dense: this row's wall time over the dense row's; the target is <= 1.05)\n");

  if (json_path != nullptr) {
    nlohmann::json j;
    j["model"] = "llama-3.1-8b";
    j["dtype"] = options.dtype == DType::kF16 ? "f16" : "bf16";
    j["block_size"] = kBlockSize;
    j["repeats"] = repeats;
    j["results"] = nlohmann::json::array();
    for (const Result& r : all) {
      j["results"].push_back({{"kind", "e2e_prefill"},
                              {"gpu", gpu_name},
                              {"kv", r.kv},
                              {"context", r.context},
                              {"chunk", r.chunk},
                              {"tok_s", r.context / (r.wall_ms * 1e-3)},
                              {"tok_s_device", r.context / (r.device_ms * 1e-3)},
                              {"wall_ms", r.wall_ms},
                              {"device_ms", r.device_ms}});
    }
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) { return sals::Main(argc, argv); }
