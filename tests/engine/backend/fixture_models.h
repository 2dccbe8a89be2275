// Test helpers: the committed fixture models and their recorded reference streams.
#pragma once

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/config.h"
#include "engine/model/safetensors.h"
#include "engine/model/weight_source.h"
#include "gtest/gtest.h"

namespace sals::testing {

struct FixtureModel {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
};

// A Hugging Face model directory: config.json and its safetensors.
inline FixtureModel LoadModelDir(const std::filesystem::path& dir) {
  FixtureModel m;
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  if (config.ok()) m.config = *config;
  auto weights = OpenSafetensorsWeights(dir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (weights.ok()) m.weights = std::move(*weights);
  return m;
}

// One reference prompt: its token stream (prompt, then the greedy tokens transformers chose)
// and the expected logits row at every stream position.
struct RefSequence {
  std::vector<int32_t> stream;
  int prompt_len = 0;
  std::vector<std::vector<float>> expected;
};

template <typename T>
std::vector<T> TensorData(const SafetensorsFile& file, const std::string& name) {
  const TensorView* t = file.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<T> out(t->nbytes / sizeof(T));
  std::memcpy(out.data(), t->data, t->nbytes);
  return out;
}

// The reference streams of a reference.safetensors (layout: tools/fixtures/README.md).
inline std::vector<RefSequence> LoadReferenceFile(const std::filesystem::path& path, int vocab) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<RefSequence> seqs;
  if (!file.ok()) return seqs;
  for (int i = 0; (*file)->Find(absl::StrCat("prompt", i, ".ids")) != nullptr; ++i) {
    const std::string p = absl::StrCat("prompt", i, ".");
    RefSequence seq;
    seq.stream = TensorData<int32_t>(**file, p + "ids");
    seq.prompt_len = static_cast<int>(seq.stream.size());
    const std::vector<int32_t> decode_ids = TensorData<int32_t>(**file, p + "decode_ids");
    seq.stream.insert(seq.stream.end(), decode_ids.begin(), decode_ids.end());
    for (const char* part : {"prefill_logits", "decode_logits"}) {
      const std::vector<float> rows = TensorData<float>(**file, p + part);
      for (size_t r = 0; (r + 1) * vocab <= rows.size(); ++r) {
        seq.expected.emplace_back(rows.begin() + r * vocab, rows.begin() + (r + 1) * vocab);
      }
    }
    EXPECT_EQ(seq.expected.size(), seq.stream.size());
    seqs.push_back(std::move(seq));
  }
  return seqs;
}

#ifdef SALS_FIXTURES_DIR
inline std::filesystem::path FixtureDir(const std::string& flavour) {
  return std::filesystem::path(SALS_FIXTURES_DIR) / flavour;
}

inline FixtureModel LoadFixtureModel(const std::string& flavour) {
  return LoadModelDir(FixtureDir(flavour));
}

inline std::vector<RefSequence> LoadReferenceStreams(const std::string& flavour, int vocab) {
  return LoadReferenceFile(FixtureDir(flavour) / "reference.safetensors", vocab);
}
#endif  // SALS_FIXTURES_DIR

// max |got - want| / max |want| over one logits row.
inline double RelError(const float* got, const float* want, size_t n) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(got[i]) - want[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
  }
  return max_diff / max_ref;
}

}  // namespace sals::testing
