// Benchmark of on-device sampling (SampleRows) against what it replaces: copying the logits to
// the host and sampling there (engine/sampling's SampleRow, one thread). Vocab 128256 (Llama 3)
// and 32000 (Llama 2 / Mistral), a batch grid, and five parameter mixes. Device: median of CUDA
// event times over runs on fresh logits (a pristine copy is restored, untimed, before each run);
// host: median wall time of the copy (pinned memory) plus the per-row sampling.
// --json PATH also writes the rows as JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_check.h"
#include "engine/backend/cuda/device_sampling.h"
#include "engine/sampling/logits_processors.h"
#include "engine/sampling/sampler.h"
#include "nlohmann/json.hpp"
#include "sals/kernels/cuda_utils.h"
#include "sals/kernels/sampling.h"

namespace sals::kernels {
namespace {

using bench::Check;
constexpr int kWarmup = 3;
constexpr int kRuns = 20;
constexpr int kLogitSets = 4;  // distinct random logit sets, rotated over the runs

struct Mix {
  const char* name;
  RowSampling sampling;
};

std::vector<Mix> Mixes(std::mt19937_64& rng) {
  std::vector<Mix> mixes;
  RowSampling s;
  mixes.push_back({"greedy", s});
  s.temperature = 0.8f;
  mixes.push_back({"T=0.8", s});
  s.top_p = 0.95f;
  mixes.push_back({"T=0.8 top_p=0.95", s});
  s.top_k = 50;
  mixes.push_back({"T=0.8 top_k=50 top_p=0.95", s});
  // Everything: filters, penalties over a 2000-token context, logprobs.
  s.min_p = 0.05f;
  s.repetition_penalty = 1.1f;
  s.frequency_penalty = 0.2f;
  s.presence_penalty = 0.1f;
  s.logprobs = 5;
  std::vector<int32_t> prompt(1500), output(500);
  std::uniform_int_distribution<int32_t> id(0, 31999);
  for (int32_t& t : prompt) t = id(rng);
  for (int32_t& t : output) t = id(rng);
  s.penalties = CollectPenaltyTokens(prompt, output, true);
  mixes.push_back({"all+penalties+logprobs", s});
  return mixes;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::string mix;
  int vocab, batch;
  double device_us, host_us, copy_us;
};

Row Run(const Mix& mix, int vocab, int batch, std::mt19937_64& rng) {
  const size_t n = static_cast<size_t>(batch) * vocab;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<std::vector<float>> sets(kLogitSets, std::vector<float>(n));
  for (auto& set : sets) {
    for (float& l : set) l = normal(rng);
  }
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  auto params_for_run = [&](std::vector<SampleRowParams>* params,
                            std::vector<PenaltyEntry>* penalties) {
    params->clear();
    penalties->clear();
    for (int r = 0; r < batch; ++r) {
      RowSampling s = mix.sampling;
      s.uniform = uniform(rng);
      AppendSampleRow(s, r, params, penalties);
    }
  };
  std::vector<SampleRowParams> params;
  std::vector<PenaltyEntry> penalties;
  params_for_run(&params, &penalties);

  auto pristine = Check(DeviceBuffer<float>::Allocate(n * kLogitSets));
  for (int s = 0; s < kLogitSets; ++s) {
    SALS_CUDA_CHECK(cudaMemcpy(pristine.get() + s * n, sets[s].data(), n * sizeof(float),
                               cudaMemcpyHostToDevice));
  }
  auto logits = Check(DeviceBuffer<float>::Allocate(n));
  auto d_params = Check(DeviceBuffer<SampleRowParams>::Allocate(batch));
  auto d_penalties =
      Check(DeviceBuffer<PenaltyEntry>::Allocate(std::max<size_t>(1, penalties.size())));
  const size_t ws_bytes = SampleRowsWorkspaceBytes(batch, static_cast<int64_t>(penalties.size()));
  auto ws = Check(DeviceBuffer<uint8_t>::Allocate(ws_bytes));
  auto results = Check(DeviceBuffer<SampleRowResult>::Allocate(batch));
  auto stream = Check(Stream::Create());
  auto start = Check(Event::Create());
  auto stop = Check(Event::Create());

  std::vector<double> device_us;
  for (int run = 0; run < kWarmup + kRuns; ++run) {
    params_for_run(&params, &penalties);
    SALS_CUDA_CHECK(cudaMemcpyAsync(d_params.get(), params.data(), batch * sizeof(SampleRowParams),
                                    cudaMemcpyHostToDevice, stream.get()));
    if (!penalties.empty()) {
      SALS_CUDA_CHECK(cudaMemcpyAsync(d_penalties.get(), penalties.data(),
                                      penalties.size() * sizeof(PenaltyEntry),
                                      cudaMemcpyHostToDevice, stream.get()));
    }
    SALS_CUDA_CHECK(cudaMemcpyAsync(logits.get(), pristine.get() + (run % kLogitSets) * n,
                                    n * sizeof(float), cudaMemcpyDeviceToDevice, stream.get()));
    SALS_CUDA_CHECK(cudaEventRecord(start.get(), stream.get()));
    Check(SampleRows(logits.get(), vocab, d_params.get(), batch, d_penalties.get(),
                     static_cast<int64_t>(penalties.size()), ws.get(), ws_bytes, results.get(),
                     stream.get()));
    SALS_CUDA_CHECK(cudaEventRecord(stop.get(), stream.get()));
    SALS_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0.0f;
    SALS_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    if (run >= kWarmup) device_us.push_back(ms * 1e3);
  }

  // The host path: pinned copy of the logits, then SampleRow per row.
  void* pinned_raw = nullptr;
  SALS_CUDA_CHECK(cudaMallocHost(&pinned_raw, n * sizeof(float)));
  const std::unique_ptr<void, decltype(&cudaFreeHost)> pinned_owner(pinned_raw, &cudaFreeHost);
  float* pinned = static_cast<float*>(pinned_raw);
  std::vector<double> host_us, copy_us;
  for (int run = 0; run < kWarmup + kRuns / 2; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    SALS_CUDA_CHECK(cudaMemcpyAsync(pinned, pristine.get() + (run % kLogitSets) * n,
                                    n * sizeof(float), cudaMemcpyDeviceToHost, stream.get()));
    SALS_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const auto t1 = std::chrono::steady_clock::now();
    for (int r = 0; r < batch; ++r) {
      RowSampling s = mix.sampling;
      s.uniform = uniform(rng);
      SampleRow(std::span<float>(pinned + static_cast<size_t>(r) * vocab, vocab), s);
    }
    const auto t2 = std::chrono::steady_clock::now();
    if (run >= kWarmup) {
      copy_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      host_us.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
    }
  }
  return Row{mix.name, vocab, batch, Median(device_us), Median(host_us), Median(copy_us)};
}

int Main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--json PATH]\n", argv[0]);
      return 2;
    }
  }
  std::mt19937_64 rng(std::random_device{}());
  const std::vector<Mix> mixes = Mixes(rng);
  std::vector<Row> rows;
  std::printf("On-device sampling vs logits copy + host sampling (one thread); microseconds\n");
  std::printf("%-28s %6s %5s %10s %10s %10s %8s\n", "mix", "vocab", "batch", "device", "host",
              "(copy)", "speedup");
  for (int vocab : {128256, 32000}) {
    for (int batch : {1, 8, 32, 128, 256}) {
      for (const Mix& mix : mixes) {
        const Row r = Run(mix, vocab, batch, rng);
        std::printf("%-28s %6d %5d %10.1f %10.1f %10.1f %7.1fx\n", r.mix.c_str(), r.vocab, r.batch,
                    r.device_us, r.host_us, r.copy_us, r.host_us / r.device_us);
        std::fflush(stdout);
        rows.push_back(r);
      }
    }
  }
  if (!json_path.empty()) {
    nlohmann::json out = nlohmann::json::array();
    for (const Row& r : rows) {
      out.push_back({{"mix", r.mix},
                     {"vocab", r.vocab},
                     {"batch", r.batch},
                     {"device_us", r.device_us},
                     {"host_us", r.host_us},
                     {"copy_us", r.copy_us}});
    }
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::fprintf(f, "%s\n", out.dump(1).c_str());
    std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace sals::kernels

int main(int argc, char** argv) { return sals::kernels::Main(argc, argv); }
