// What the kernel benchmarks share: random device buffers, uploads, the --batches/--contexts list
// parser, and reading the results of a reference script (torch SDPA) run in the same session.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <vector>

#include "bench/bench_check.h"
#include "nlohmann/json.hpp"
#include "sals/kernels/cuda_utils.h"

namespace sals::bench {

// Fills `bytes` of device memory with a repeated 64 MiB block of random fp16 values drawn from
// [lo, hi): random, never all zero, cheap to lay over many GB.
inline void FillRandom(void* dst, size_t bytes, std::mt19937_64& rng, float lo, float hi) {
  const size_t halves = bytes / 2;
  const size_t chunk = std::min(halves, size_t{32} << 20);
  std::vector<__half> host(chunk);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (__half& h : host) h = __float2half_rn(dist(rng));
  auto* d = static_cast<__half*>(dst);
  SALS_CUDA_CHECK(cudaMemcpy(d, host.data(), chunk * sizeof(__half), cudaMemcpyHostToDevice));
  for (size_t off = chunk; off < halves; off += chunk) {
    SALS_CUDA_CHECK(cudaMemcpy(d + off, d, std::min(chunk, halves - off) * sizeof(__half),
                               cudaMemcpyDeviceToDevice));
  }
}

template <typename T>
kernels::DeviceBuffer<T> Upload(const std::vector<T>& host) {
  auto d = Check(kernels::DeviceBuffer<T>::Allocate(host.size()));
  Check(d.CopyFrom(host));
  return d;
}

// "4096,32768" -> {4096, 32768}; empty on anything but positive integers separated by commas.
inline std::vector<int> ParseList(const char* text) {
  std::vector<int> out;
  for (const char* p = text; *p != '\0';) {
    char* end = nullptr;
    out.push_back(static_cast<int>(std::strtol(p, &end, 10)));
    if (end == p || out.back() <= 0) return {};
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

// The "results" array of a reference script's JSON (empty, with a note on stderr, when `path` is
// null, unreadable or not such a file: the reference columns are then left empty).
inline nlohmann::json ReadReferenceResults(const char* path) {
  if (path == nullptr) return nlohmann::json::array();
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cannot read %s; reference columns left empty\n", path);
    return nlohmann::json::array();
  }
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.contains("results") || !j["results"].is_array()) {
    std::fprintf(stderr, "%s holds no results array; reference columns left empty\n", path);
    return nlohmann::json::array();
  }
  return j["results"];
}

// A record's number under `key`, or -1 where it is absent or null (a backend that did not run).
inline double NumberOr(const nlohmann::json& record, const char* key) {
  return record.contains(key) && record[key].is_number() ? record[key].get<double>() : -1.0;
}

}  // namespace sals::bench
