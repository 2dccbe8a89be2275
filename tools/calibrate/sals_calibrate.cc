// sals-calibrate: the latent bases of SALS for one model. Runs the dense CPU reference over
// calibration text, accumulates each layer's pre-RoPE key covariance, eigen-decomposes it and
// writes the calibration file (format in engine/sals/basis.h). With --check it verifies that an
// existing file fits the model and prints its captured energies.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/model/safetensors.h"
#include "engine/sals/basis.h"
#include "engine/sals/calibration.h"
#include "engine/sals/dense_capture.h"
#include "tools/common/flag_names.h"
#include "tools/common/hf_model.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::vector<std::string>, data, {},
          "calibration text files (comma-separated; further files may follow as arguments)");
ABSL_FLAG(std::vector<std::string>, ranks, std::vector<std::string>({"0.25", "0.125"}),
          "latent ranks to store, as fractions of the joint key width D");
ABSL_FLAG(std::string, out, "",
          "output file (a directory gets sals_calibration.safetensors in it); default: in --model");
ABSL_FLAG(int, seq_len, 2048, "tokens per calibration sequence (BOS included)");
ABSL_FLAG(int, chunk, 256, "prefill chunk in tokens");
ABSL_FLAG(int64_t, max_tokens, 0, "stop after this many tokens (0 = all the data)");
ABSL_FLAG(std::string, check, "", "verify this calibration file against --model instead");

namespace sals {
namespace {

absl::StatusOr<std::vector<double>> ParseFractions(const std::vector<std::string>& items) {
  std::vector<double> fractions;
  for (const std::string& item : items) {
    double f = 0.0;
    if (!absl::SimpleAtod(item, &f)) {
      return absl::InvalidArgumentError(absl::StrCat("--ranks: '", item, "' is not a number"));
    }
    fractions.push_back(f);
  }
  return fractions;
}

// Where the file goes; checked before hours of work, not after.
absl::StatusOr<std::filesystem::path> OutputPath(const std::string& out, const std::string& model) {
  std::filesystem::path path = out.empty() ? model : out;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) path /= kCalibrationFileName;
  const std::filesystem::path parent = path.has_parent_path() ? path.parent_path() : ".";
  if (!std::filesystem::is_directory(parent, ec)) {
    return absl::NotFoundError(
        absl::StrCat("--out: directory ", parent.string(), " does not exist"));
  }
  return path;
}

void PrintEnergies(const std::vector<int>& ranks, const std::vector<std::vector<double>>& energy) {
  std::printf("layer");
  for (int r : ranks) std::printf("  energy@r=%-4d", r);
  std::printf("\n");
  for (size_t l = 0; l < energy.size(); ++l) {
    std::printf("%5zu", l);
    for (double e : energy[l]) std::printf("  %-13.6f", e);
    std::printf("\n");
  }
}

// The token stream cut into sequences that each start with BOS (as text does at inference) and
// hold up to seq_len tokens; at most max_tokens tokens in all (0 = no limit).
std::vector<std::vector<int32_t>> CutSequences(const std::vector<int32_t>& stream, int32_t bos,
                                               int seq_len, int64_t max_tokens) {
  std::vector<std::vector<int32_t>> seqs;
  const int prefix = bos >= 0 ? 1 : 0;
  int64_t total = 0;
  for (size_t begin = 0; begin < stream.size();) {
    int64_t len = std::min<int64_t>(seq_len, prefix + stream.size() - begin);
    if (max_tokens > 0) len = std::min(len, max_tokens - total);
    if (len <= prefix) break;
    std::vector<int32_t>& seq = seqs.emplace_back();
    if (prefix) seq.push_back(bos);
    seq.insert(seq.end(), stream.begin() + begin, stream.begin() + begin + (len - prefix));
    begin += len - prefix;
    total += len;
  }
  return seqs;
}

absl::Status Check(const std::string& model_dir, const std::filesystem::path& path) {
  auto config = LoadModelConfig(model_dir);
  if (!config.ok()) return config.status();
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  const auto& meta = (*file)->metadata();
  const auto ranks_it = meta.find("ranks");
  if (ranks_it == meta.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": no 'ranks' metadata; not written by sals-calibrate"));
  }
  std::vector<int> ranks;
  for (absl::string_view item : absl::StrSplit(ranks_it->second, ',')) {
    int r = 0;
    if (!absl::SimpleAtoi(item, &r)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), ": bad 'ranks' metadata '", ranks_it->second, "'"));
    }
    // Loads every layer's basis: shapes, dtypes and the model match are checked there.
    if (auto basis = LoadSalsBasis(path, *config, r); !basis.ok()) return basis.status();
    ranks.push_back(r);
  }
  std::vector<std::vector<double>> energy(config->num_layers);
  for (int l = 0; l < config->num_layers; ++l) {
    for (int r : ranks) {
      const std::string name = absl::StrCat("layers.", l, ".rank", r, ".energy");
      const TensorView* t = (*file)->Find(name);
      if (t == nullptr || t->dtype_name != "F64" || t->nbytes != sizeof(double)) {
        return absl::InvalidArgumentError(
            absl::StrCat(path.string(), ": tensor '", name, "' missing or not F64 [1]"));
      }
      double e = 0.0;
      std::memcpy(&e, t->data, sizeof(e));  // tensors need not be 8-byte aligned in the file
      energy[l].push_back(e);
    }
  }
  std::printf("%s fits %s: kv_width %d, %d layers, ranks %s, calibrated on %s tokens\n",
              path.string().c_str(), model_dir.c_str(), config->kv_width(), config->num_layers,
              ranks_it->second.c_str(), meta.count("tokens") ? meta.at("tokens").c_str() : "?");
  PrintEnergies(ranks, energy);
  return absl::OkStatus();
}

absl::Status Calibrate(const std::vector<std::string>& data_files) {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (!absl::GetFlag(FLAGS_check).empty()) return Check(model_dir, absl::GetFlag(FLAGS_check));
  if (data_files.empty()) return absl::InvalidArgumentError("--data: no calibration text given");
  auto fractions = ParseFractions(absl::GetFlag(FLAGS_ranks));
  if (!fractions.ok()) return fractions.status();
  const int seq_len = absl::GetFlag(FLAGS_seq_len);
  const int chunk = absl::GetFlag(FLAGS_chunk);
  const int64_t max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (seq_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat("--seq-len must be >= 2, got ", seq_len));
  }
  if (chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--chunk must be >= 1, got ", chunk));
  }
  if (max_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max-tokens must be >= 0, got ", max_tokens));
  }
  auto out = OutputPath(absl::GetFlag(FLAGS_out), model_dir);
  if (!out.ok()) return out.status();
  // Every data file is read before the model loads, so a typo fails at once.
  std::vector<std::string> texts;
  for (const std::string& f : data_files) {
    auto text = ReadTextFile(f);
    if (!text.ok()) return text.status();
    if (text->find_first_not_of(" \t\r\n") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(f, ": no text in calibration file"));
    }
    texts.push_back(std::move(*text));
  }

  auto model_config = LoadModelConfig(model_dir);
  if (!model_config.ok()) return model_config.status();
  auto ranks = RanksFromFractions(model_config->kv_width(), *fractions);
  if (!ranks.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--ranks: ", ranks.status().message()));
  }
  auto model = LoadHfModel(model_dir);
  if (!model.ok()) return model.status();
  const ModelConfig& config = model->config;
  std::vector<int32_t> stream;
  for (const std::string& text : texts) {
    const std::vector<int32_t> ids = model->tokenizer->Encode(text, /*add_bos=*/false);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  const std::vector<std::vector<int32_t>> seqs =
      CutSequences(stream, model->tokenizer->bos_id(), seq_len, max_tokens);
  int64_t total = 0;
  for (const auto& s : seqs) total += static_cast<int64_t>(s.size());
  std::fprintf(stderr,
               "[sals-calibrate] %zu files, %zu text tokens -> %zu sequences, %lld tokens\n",
               texts.size(), stream.size(), seqs.size(), static_cast<long long>(total));

  KeyCovariance covariance(config);
  int64_t done = 0;
  const absl::Time start = absl::Now();
  absl::Time last_report = start;
  auto report = [&](bool force) {
    const absl::Time now = absl::Now();
    if (!force && now - last_report < absl::Seconds(2)) return;
    last_report = now;
    std::fprintf(stderr, "[sals-calibrate] %lld/%lld tokens (%.0f%%), %.0f tokens/s\n",
                 static_cast<long long>(done), static_cast<long long>(total), 100.0 * done / total,
                 done / std::max(1e-9, absl::ToDoubleSeconds(now - start)));
  };
  auto capture = DenseCapture::Create(config, *model->weights, seq_len, chunk,
                                      [&](int layer, std::span<const float> rows, int64_t tokens) {
                                        covariance.AddProjections(layer, rows, tokens);
                                        if (layer == config.num_layers - 1) {
                                          done += tokens;
                                          report(false);
                                        }
                                      });
  if (!capture.ok()) return capture.status();
  for (const std::vector<int32_t>& seq : seqs) {
    if (absl::Status s = (*capture)->Run(seq); !s.ok()) return s;
  }
  report(true);

  auto spectra = covariance.Decompose();
  if (!spectra.ok()) return spectra.status();
  if (absl::Status s = WriteCalibration(*out, *spectra, *ranks); !s.ok()) return s;
  std::printf("wrote %s: %d layers, kv_width %d, %lld tokens\n", out->string().c_str(),
              config.num_layers, config.kv_width(), static_cast<long long>(spectra->tokens));
  std::vector<std::vector<double>> energy(config.num_layers);
  for (int l = 0; l < config.num_layers; ++l) {
    for (int r : *ranks) energy[l].push_back(spectra->layers[l].Energy(r));
  }
  PrintEnergies(*ranks, energy);
  return absl::OkStatus();
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-calibrate --model DIR --data FILE[,FILE...] [FILE...] [--ranks 0.25,0.125]\n"
      "    [--out FILE] [--seq-len 2048] [--chunk 256] [--max-tokens N]\n"
      "  or: sals-calibrate --model DIR --check FILE");
  sals::NormalizeFlagNames(argc, argv);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> data = absl::GetFlag(FLAGS_data);
  data.insert(data.end(), positional.begin() + 1, positional.end());
  const absl::Status status = sals::Calibrate(data);
  if (!status.ok()) {
    std::fprintf(stderr, "sals-calibrate: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
