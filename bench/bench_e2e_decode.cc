// End-to-end decode throughput of the CUDA backend (dense path), Llama-3.1-8B shape, random
// weights: batch 8 at 4K and 32K context, batch 4 at 64K, against gpt-fast on the same H200
// (GPU-MACHINE.md). The KV cache is filled with random values instead of running the prefills;
// positions and lengths are those of prefilled sequences. Each step is a ForwardGreedy whose
// tokens feed the next (the context grows by one per step); per shape, the median over the timed
// steps of the device time (CUDA events around the step's device work) and of the wall time of
// the call. Short-context runs at each batch size give the weight-streaming time, so that the
// table can split the step into weight reads and KV reads, each against the 4.3 TB/s copy rate.
// Usage: bench_e2e_decode [--json PATH] [--dtype f16|bf16] [--no_graphs] [--steps N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/cuda_loader.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"

namespace sals {
namespace {

constexpr double kPeakGBps = 4300.0;
constexpr int kBlockSize = 16;
constexpr int kWarmup = 5;
constexpr int kShortContext = 128;  // attention negligible: the step streams the weights

struct Shape {
  int batch;
  int context;
  double gpt_fast_tok_s;  // 0: no reference
};

struct Result {
  Shape shape;
  double device_ms, wall_ms;
  double weight_gb, kv_gb;  // bytes read per step
};

template <typename T>
T Check(absl::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s\n", v.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(v);
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
}

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

// Runs warm-up + `steps` greedy decode steps of `shape` and returns the medians.
Result RunShape(CudaBackend& backend, const Shape& shape, int steps, std::mt19937_64& rng) {
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
    batch.seqs.push_back(std::move(s));
    batch.tokens.push_back(static_cast<int32_t>(rng() % c.vocab_size));
  }
  std::vector<double> device_ms, wall_ms;
  double kv_tokens = 0.0;
  for (int step = 0; step < kWarmup + steps; ++step) {
    std::vector<int32_t> next;
    const auto t0 = std::chrono::steady_clock::now();
    Check(backend.ForwardGreedy(batch, &next));
    const auto t1 = std::chrono::steady_clock::now();
    if (step >= kWarmup) {
      device_ms.push_back(Check(backend.LastStepMs()));
      wall_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      for (const SequenceSlice& s : batch.seqs) kv_tokens += s.context_len + 1;
    }
    batch.tokens = next;
    for (SequenceSlice& s : batch.seqs) ++s.context_len;
  }
  const double kv_bytes_per_token = 2.0 * 2.0 * c.num_layers * c.kv_width();  // fp16 K and V
  return Result{shape, Median(device_ms), Median(wall_ms), WeightBytes(c, 2.0) / 1e9,
                kv_tokens / steps * kv_bytes_per_token / 1e9};
}

int Main(int argc, char** argv) {
  const char* json_path = nullptr;
  CudaBackendOptions options;
  options.dtype = DType::kBF16;  // as gpt-fast
  options.time_steps = true;
  int steps = 30;
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
    } else {
      std::fprintf(stderr, "usage: %s [--json PATH] [--dtype f16|bf16] [--no_graphs] [--steps N]\n",
                   argv[0]);
      return 2;
    }
  }
  const ModelConfig config = Check(SyntheticModelConfig("llama-3.1-8b"));
  const std::vector<Shape> shapes = {{8, 4096, 525.0}, {8, 32768, 98.4}, {4, 65536, 45.5}};
  // Per batch size, a short-context run: the weight-streaming time.
  const std::vector<Shape> short_shapes = {{8, kShortContext, 0.0}, {4, kShortContext, 0.0}};
  KvPoolConfig pool;
  pool.block_size = kBlockSize;
  for (const Shape& s : shapes) {
    pool.num_blocks = std::max(
        pool.num_blocks, s.batch * ((s.context + kWarmup + steps + kBlockSize - 1) / kBlockSize));
  }

  const auto load_start = std::chrono::steady_clock::now();
  const std::unique_ptr<WeightSource> weights = MakeRandomWeights(config, 1);
  std::unique_ptr<CudaBackend> backend = Check(LoadCudaBackend(config, *weights, pool, options));
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  Check(backend->FillKvCacheRandom(7));
  const double kv_pool_gb = 4.0 * config.num_layers * config.kv_width() *
                            static_cast<double>(pool.num_blocks) * kBlockSize / 1e9;
  std::printf(
      "llama-3.1-8b shape, random %s weights, fp16 KV pool %.1f GB (%d blocks of %d), "
      "CUDA graphs %s; load %.1f s; %d warm-up + %d timed steps per row\n",
      options.dtype == DType::kF16 ? "f16" : "bf16", kv_pool_gb, pool.num_blocks, kBlockSize,
      options.cuda_graphs ? "on" : "off", load_s, kWarmup, steps);

  std::mt19937_64 rng(11);
  std::vector<Result> short_results, results;
  for (const Shape& s : short_shapes) short_results.push_back(RunShape(*backend, s, steps, rng));
  for (const Shape& s : shapes) results.push_back(RunShape(*backend, s, steps, rng));

  std::printf("\n%5s %7s %9s %9s %9s %9s %7s %8s %7s %8s %8s %9s %8s\n", "batch", "context",
              "device_ms", "wall_ms", "tok/s", "tok/s_wall", "GB/step", "GB/s", "%4.3T", "w_GB/s",
              "kv_GB/s", "gpt-fast", "speedup");
  auto weight_ms = [&](int batch) {
    for (const Result& r : short_results) {
      if (r.shape.batch == batch) return r.device_ms;
    }
    return 0.0;
  };
  std::vector<Result> all = short_results;
  all.insert(all.end(), results.begin(), results.end());
  // A number, or "-" where the row has none.
  auto cell = [](bool has, double v, const char* format) {
    char buf[32] = "-";
    if (has) std::snprintf(buf, sizeof(buf), format, v);
    return std::string(buf);
  };
  for (const Result& r : all) {
    const double gb = r.weight_gb + r.kv_gb;
    const double gbps = gb / (r.device_ms * 1e-3);
    const double w_ms = weight_ms(r.shape.batch);
    const bool long_ctx = r.shape.context > kShortContext;
    const bool has_ref = r.shape.gpt_fast_tok_s > 0;
    const double tok_s = r.shape.batch / (r.device_ms * 1e-3);
    std::printf("%5d %7d %9.2f %9.2f %9.1f %9.1f %7.1f %8.0f %6.1f%% %8.0f %8s %9s %8s\n",
                r.shape.batch, r.shape.context, r.device_ms, r.wall_ms, tok_s,
                r.shape.batch / (r.wall_ms * 1e-3), gb, gbps, 100.0 * gbps / kPeakGBps,
                r.weight_gb / (w_ms * 1e-3),
                cell(long_ctx, r.kv_gb / ((r.device_ms - w_ms) * 1e-3), "%.0f").c_str(),
                cell(has_ref, r.shape.gpt_fast_tok_s, "%.1f").c_str(),
                cell(has_ref, tok_s / r.shape.gpt_fast_tok_s, "%.2fx").c_str());
  }
  std::printf(
      "(w_GB/s: weight bytes over the short-context step of that batch; kv_GB/s: KV bytes "
      "over the rest of the step)\n");

  if (json_path != nullptr) {
    FILE* f = std::fopen(json_path, "w");
    if (f == nullptr) {
      std::perror(json_path);
      return 1;
    }
    std::fprintf(f,
                 "{\"model\": \"llama-3.1-8b\", \"dtype\": \"%s\", \"cuda_graphs\": %s, "
                 "\"peak_gbps\": %.0f, \"block_size\": %d, \"steps\": %d, \"results\": [\n",
                 options.dtype == DType::kF16 ? "f16" : "bf16",
                 options.cuda_graphs ? "true" : "false", kPeakGBps, kBlockSize, steps);
    for (size_t i = 0; i < all.size(); ++i) {
      const Result& r = all[i];
      std::fprintf(f,
                   "  {\"batch\": %d, \"context\": %d, \"device_ms\": %.3f, \"wall_ms\": %.3f, "
                   "\"tok_s\": %.2f, \"tok_s_wall\": %.2f, \"weight_gb\": %.3f, \"kv_gb\": %.3f, "
                   "\"gpt_fast_tok_s\": %.1f}%s\n",
                   r.shape.batch, r.shape.context, r.device_ms, r.wall_ms,
                   r.shape.batch / (r.device_ms * 1e-3), r.shape.batch / (r.wall_ms * 1e-3),
                   r.weight_gb, r.kv_gb, r.shape.gpt_fast_tok_s, i + 1 < all.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) { return sals::Main(argc, argv); }
