// End-to-end decode throughput of the CUDA backend, Llama-3.1-8B shape, random weights: batch 8 at
// 4K and 32K context, batch 4 at 64K, batch 1 at 32K and 128K (one long chat), against gpt-fast's
// method measured in the same device session by bench/gpt_fast_baseline.py (--gpt_fast its
// JSON), for each KV pool format asked for: dense fp16, SALS-25 and SALS-12.5 (the presets: rank
// D/4 with 4-bit values, rank D/8 with 2-bit values, layers 0, 1 and 31 dense, 16 sinks + 64 recent
// tokens, the default policy: top 1/8 of the context scored on rank/2 dims), SALS with a random
// basis (orthonormal columns, Gram-Schmidt on a seeded Gaussian matrix; one basis for every layer).
// The KV cache is filled with random values instead of running the prefills; positions and
// lengths are those of prefilled sequences. Each step is a ForwardGreedy whose tokens feed the
// next (the context grows by one per step); per shape, the median over the timed steps of the
// device time (CUDA events around the step's device work) and of the wall time of the call.
// Short-context runs at each batch size give the weight-streaming time, so that the table can
// split the step into weight reads and KV reads (SALS: the bytes its selection reads: latent
// scores, the selected tokens' latents and value codes, the exact rows), each against the
// 4.3 TB/s copy rate.
// Usage: bench_e2e_decode [--json PATH] [--dtype f16|bf16] [--no_graphs] [--steps N]
//                         [--kv dense,sals-25,sals-12.5] [--gpt_fast PATH] [--gpu NAME]
//                         [--shapes 8x4096,8x32768,...]
// The JSON's "results" hold one flat record per row: kind "e2e", gpu, kv (dense, sals-25,
// sals-12.5 or gpt-fast), batch, context, tok_s, and for our rows the step's details.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_split.h"
#include "bench/bench_check.h"
#include "bench/e2e_backend.h"
#include "engine/backend/cuda_loader.h"
#include "engine/kv/kv_format.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/sals/basis.h"
#include "engine/sals/policy.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

constexpr double kPeakGBps = 4300.0;
constexpr int kBlockSize = 16;
constexpr int kWarmup = 5;
constexpr int kShortContext = 128;  // attention negligible: the step streams the weights

struct Shape {
  int batch;
  int context;
  double gpt_fast_tok_s = 0;  // 0: no reference
};

// gpt_fast_baseline.py's tokens/s by (batch, context).
std::map<std::pair<int, int>, double> ReadGptFast(const char* path) {
  std::map<std::pair<int, int>, double> out;
  if (path == nullptr) return out;
  std::ifstream in(path);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.contains("results")) {
    std::fprintf(stderr, "%s: not gpt_fast_baseline.py results; gpt-fast column left empty\n",
                 path);
    return out;
  }
  for (const auto& r : j["results"]) {
    out[{r["batch"].get<int>(), r["context"].get<int>()}] = r["tok_s"].get<double>();
  }
  return out;
}

struct Result {
  std::string kv;  // pool format
  Shape shape;
  double device_ms, wall_ms;
  double weight_gb, kv_gb;  // bytes read per step
};

using bench::Check;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Weight bytes one decode step reads (f16 and bf16 alike): every projection, the norms and the LM
// head once (the embedding rows it gathers are negligible).
double WeightBytes(const ModelConfig& c, double elem_bytes) {
  const double h = c.hidden_size, inter = c.intermediate_size;
  const double per_layer =
      (c.q_width() + 2.0 * c.kv_width()) * h + h * c.q_width() + 3.0 * inter * h + 2.0 * h;
  return elem_bytes * (c.num_layers * per_layer + h + static_cast<double>(c.vocab_size) * h);
}

// KV bytes one decode step of a sequence with `context` cached tokens reads: every dense layer's
// K and V; per SALS layer the latent scores of the middle tokens (score_dims each), the selected
// tokens' latents, value codes and (scale, zero) pairs, and the exact sink and recent rows.
double KvBytesPerStep(const ModelConfig& c, const KvCacheFormat& format, int context) {
  const double width = c.kv_width();
  const int sparse = format.NumSparseLayers();
  double bytes = 4.0 * width * context * (c.num_layers - sparse);
  if (sparse > 0) {
    const SalsStorage& s = *format.sals;
    const SalsPolicy policy = SalsPolicy{}.Resolved(s);
    const SelectionPlan plan = PlanSelection(policy, context);
    const double groups = s.values.bits == 16 ? 0.0 : width / s.values.group_size;
    const double value_bytes = width * s.values.bits / 8.0 + 4.0 * groups;
    const double middle = static_cast<double>(plan.recent_begin - plan.sink_end);
    const double exact = static_cast<double>(plan.sink_end + context - plan.recent_begin);
    bytes += sparse *
             (middle * policy.score_dims * 2.0 +
              static_cast<double>(plan.topk) * (2.0 * s.rank + value_bytes) + exact * 4.0 * width);
  }
  return bytes;
}

// Runs warm-up + `steps` greedy decode steps of `shape` and returns the medians.
Result RunShape(CudaBackend& backend, const std::string& kv, const Shape& shape, int steps,
                std::mt19937_64& rng) {
  const ModelConfig& c = backend.config();
  const int total = shape.context + kWarmup + steps;
  const int blocks_per_seq = (total + kBlockSize - 1) / kBlockSize;
  std::vector<int32_t> ids(backend.kv_pool().num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  ForwardBatch batch;
  for (int b = 0; b < shape.batch; ++b) {
    SequenceSlice s;
    s.num_tokens = 1;
    s.context_len = shape.context - 1;  // the first step attends to `context` tokens
    s.block_table.assign(ids.begin() + b * blocks_per_seq, ids.begin() + (b + 1) * blocks_per_seq);
    s.exact_slot = b;  // SALS pools: the sequence's exact rows (the default policy)
    batch.seqs.push_back(std::move(s));
    batch.tokens.push_back(static_cast<int32_t>(rng() % c.vocab_size));
  }
  std::vector<double> device_ms, wall_ms;
  double kv_bytes = 0.0;
  for (int step = 0; step < kWarmup + steps; ++step) {
    std::vector<int32_t> next;
    const auto t0 = std::chrono::steady_clock::now();
    Check(backend.ForwardGreedy(batch, &next));
    const auto t1 = std::chrono::steady_clock::now();
    if (step >= kWarmup) {
      device_ms.push_back(Check(backend.LastStepMs()));
      wall_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      for (const SequenceSlice& s : batch.seqs) {
        kv_bytes += KvBytesPerStep(c, backend.kv_pool().format, s.context_len);
      }
    }
    batch.tokens = next;
    for (SequenceSlice& s : batch.seqs) ++s.context_len;
  }
  return Result{kv,
                shape,
                Median(device_ms),
                Median(wall_ms),
                WeightBytes(c, 2.0) / 1e9,
                kv_bytes / steps / 1e9};
}

int Main(int argc, char** argv) {
  const char* json_path = nullptr;
  CudaBackendOptions options;
  options.dtype = DType::kBF16;  // as gpt-fast
  options.time_steps = true;
  int steps = 30;
  std::vector<std::string> kv_formats = {"dense"};
  const char* gpt_fast_path = nullptr;
  std::string gpu_name = "unknown";
  std::vector<Shape> shapes = {{8, 4096}, {8, 32768}, {4, 65536}, {1, 32768}, {1, 131072}};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      const std::string d = argv[++i];
      if (d != "f16" && d != "bf16") {
        std::fprintf(stderr, "--dtype: f16 or bf16\n");
        return 2;
      }
      options.dtype = d == "f16" ? DType::kF16 : DType::kBF16;
    } else if (std::strcmp(argv[i], "--no_graphs") == 0) {
      options.cuda_graphs = false;
    } else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
      steps = std::max(20, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--kv") == 0 && i + 1 < argc) {
      kv_formats = absl::StrSplit(argv[++i], ',', absl::SkipEmpty());
    } else if (std::strcmp(argv[i], "--gpt_fast") == 0 && i + 1 < argc) {
      gpt_fast_path = argv[++i];
    } else if (std::strcmp(argv[i], "--gpu") == 0 && i + 1 < argc) {
      gpu_name = argv[++i];
    } else if (std::strcmp(argv[i], "--shapes") == 0 && i + 1 < argc) {
      shapes.clear();
      for (absl::string_view item : absl::StrSplit(argv[++i], ',', absl::SkipEmpty())) {
        const std::vector<std::string> parts = absl::StrSplit(item, 'x');
        const int batch = parts.size() == 2 ? std::atoi(parts[0].c_str()) : 0;
        const int context = parts.size() == 2 ? std::atoi(parts[1].c_str()) : 0;
        if (batch <= 0 || context <= kShortContext) {
          std::fprintf(stderr, "--shapes: BATCHxCONTEXT items, context above %d\n", kShortContext);
          return 2;
        }
        shapes.push_back({batch, context});
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--json PATH] [--dtype f16|bf16] [--no_graphs] [--steps N] "
                   "[--kv dense,sals-25,sals-12.5] [--gpt_fast PATH] [--gpu NAME] "
                   "[--shapes 8x4096,...]\n",
                   argv[0]);
      return 2;
    }
  }
  const ModelConfig config = Check(SyntheticModelConfig("llama-3.1-8b"));
  const auto gpt_fast = ReadGptFast(gpt_fast_path);
  for (Shape& s : shapes) {
    if (auto it = gpt_fast.find({s.batch, s.context}); it != gpt_fast.end()) {
      s.gpt_fast_tok_s = it->second;
    }
  }
  // Per batch size, a short-context run: the weight-streaming time.
  std::vector<Shape> short_shapes;
  for (const Shape& s : shapes) {
    if (std::none_of(short_shapes.begin(), short_shapes.end(),
                     [&](const Shape& x) { return x.batch == s.batch; })) {
      short_shapes.push_back({s.batch, kShortContext});
    }
  }
  int num_blocks = 0;
  for (const Shape& s : shapes) {
    num_blocks = std::max(num_blocks,
                          s.batch * ((s.context + kWarmup + steps + kBlockSize - 1) / kBlockSize));
  }
  int max_batch = 0;
  for (const Shape& s : shapes) max_batch = std::max(max_batch, s.batch);
  const std::unique_ptr<WeightSource> weights = MakeRandomWeights(config, 1);
  std::printf(
      "llama-3.1-8b shape, random %s weights, CUDA graphs %s; %d warm-up + %d timed steps "
      "per row; pools of %d blocks of %d tokens\n",
      options.dtype == DType::kF16 ? "f16" : "bf16", options.cuda_graphs ? "on" : "off", kWarmup,
      steps, num_blocks, kBlockSize);

  // Per format: the short-context steps (the weight-streaming time per batch size), then the
  // shapes.
  std::vector<Result> all;
  for (const std::string& kv : kv_formats) {
    const auto load_start = std::chrono::steady_clock::now();
    std::unique_ptr<CudaBackend> backend = Check(
        bench::LoadE2eBackend(config, *weights, kv, kBlockSize, num_blocks, max_batch, options));
    const double load_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    const KvPoolConfig& pool = backend->kv_pool();
    const KvBytes bytes = ComputeKvBytes(config, pool.format, kBlockSize);
    Check(backend->FillKvCacheRandom(7));
    std::printf("%s: KV pool %.1f GB (%.0f bytes per token, exact rows %.1f MB); load %.1f s\n",
                kv.c_str(),
                (static_cast<double>(bytes.per_block) * num_blocks +
                 static_cast<double>(bytes.exact_per_sequence) * pool.max_sequences) /
                    1e9,
                static_cast<double>(bytes.per_token),
                static_cast<double>(bytes.exact_per_sequence) * pool.max_sequences / 1e6, load_s);
    std::mt19937_64 rng(11);
    for (const Shape& s : short_shapes) all.push_back(RunShape(*backend, kv, s, steps, rng));
    for (const Shape& s : shapes) all.push_back(RunShape(*backend, kv, s, steps, rng));
  }

  std::printf("\n%-9s %5s %7s %9s %9s %9s %9s %7s %8s %7s %8s %8s %9s %8s %8s\n", "kv", "batch",
              "context", "device_ms", "wall_ms", "tok/s", "tok/s_wall", "GB/step", "GB/s", "%4.3T",
              "w_GB/s", "kv_GB/s", "gpt-fast", "speedup", "vs_dense");
  auto find = [&](const std::string& kv, int batch, int context) -> const Result* {
    for (const Result& r : all) {
      if (r.kv == kv && r.shape.batch == batch && r.shape.context == context) return &r;
    }
    return nullptr;
  };
  // A number, or "-" where the row has none.
  auto cell = [](bool has, double v, const char* format) {
    char buf[32] = "-";
    if (has) std::snprintf(buf, sizeof(buf), format, v);
    return std::string(buf);
  };
  for (const Result& r : all) {
    const double gb = r.weight_gb + r.kv_gb;
    const double gbps = gb / (r.device_ms * 1e-3);
    const Result* short_run = find(r.kv, r.shape.batch, kShortContext);
    const double w_ms = short_run != nullptr ? short_run->device_ms : 0.0;
    const bool long_ctx = r.shape.context > kShortContext;
    const bool has_ref = r.shape.gpt_fast_tok_s > 0;
    const double tok_s = r.shape.batch / (r.device_ms * 1e-3);
    const Result* dense = find("dense", r.shape.batch, r.shape.context);
    std::printf(
        "%-9s %5d %7d %9.2f %9.2f %9.1f %9.1f %7.2f %8.0f %6.1f%% %8.0f %8s %9s %8s %8s\n",
        r.kv.c_str(), r.shape.batch, r.shape.context, r.device_ms, r.wall_ms, tok_s,
        r.shape.batch / (r.wall_ms * 1e-3), gb, gbps, 100.0 * gbps / kPeakGBps,
        r.weight_gb / (w_ms * 1e-3),
        cell(long_ctx, r.kv_gb / ((r.device_ms - w_ms) * 1e-3), "%.0f").c_str(),
        cell(has_ref, r.shape.gpt_fast_tok_s, "%.1f").c_str(),
        cell(has_ref, tok_s / r.shape.gpt_fast_tok_s, "%.2fx").c_str(),
        cell(dense != nullptr, dense != nullptr ? dense->device_ms / r.device_ms : 0.0, "%.2fx")
            .c_str());
  }
  std::printf(
      "(w_GB/s: weight bytes over the short-context step of that format and batch; kv_GB/s: KV "
      "bytes read over the rest of the step; vs_dense: device time of the dense row over this "
      "one)\n");

  if (json_path != nullptr) {
    nlohmann::json j;
    j["model"] = "llama-3.1-8b";
    j["dtype"] = options.dtype == DType::kF16 ? "f16" : "bf16";
    j["cuda_graphs"] = options.cuda_graphs;
    j["peak_gbps"] = kPeakGBps;
    j["block_size"] = kBlockSize;
    j["steps"] = steps;
    j["results"] = nlohmann::json::array();
    for (const Result& r : all) {
      j["results"].push_back({{"kind", "e2e"},
                              {"gpu", gpu_name},
                              {"kv", r.kv},
                              {"batch", r.shape.batch},
                              {"context", r.shape.context},
                              {"tok_s", r.shape.batch / (r.device_ms * 1e-3)},
                              {"tok_s_wall", r.shape.batch / (r.wall_ms * 1e-3)},
                              {"device_ms", r.device_ms},
                              {"wall_ms", r.wall_ms},
                              {"weight_gb", r.weight_gb},
                              {"kv_gb", r.kv_gb}});
    }
    for (const auto& [shape, tok_s] : gpt_fast) {
      j["results"].push_back({{"kind", "e2e"},
                              {"gpu", gpu_name},
                              {"kv", "gpt-fast"},
                              {"batch", shape.first},
                              {"context", shape.second},
                              {"tok_s", tok_s}});
    }
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) { return sals::Main(argc, argv); }
