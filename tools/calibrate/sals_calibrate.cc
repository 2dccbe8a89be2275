// sals-calibrate: the latent bases of SALS for one model. Runs the model densely over calibration
// data (text, JSON lines or token ids: calibration_data.h) on the CPU reference (fp32) or the CUDA
// backend (f16/bf16), accumulates each layer's pre-RoPE key covariance, eigen-decomposes it and
// writes the calibration file (format in engine/sals/basis.h). Progress is checkpointed next to
// the output (calibration_checkpoint.h) and resumed with --resume. With --check it verifies that
// an existing file fits the model and prints its captured energies (--energy-report: at every
// rank a multiple of 8, per layer). --layer-rank-budget allocates a latent rank per layer at a
// total budget by captured energy (engine/sals/rank_allocation.h), prints it beside the uniform
// rank and, when calibrating, writes it as the file's "layer_ranks" metadata.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
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
#include "engine/kv/kv_format.h"
#include "engine/model/config.h"
#include "engine/model/safetensors.h"
#include "engine/model/weight_source.h"
#include "engine/sals/basis.h"
#include "engine/sals/calibration.h"
#include "engine/sals/rank_allocation.h"
#include "tools/calibrate/calibration_checkpoint.h"
#include "tools/calibrate/calibration_data.h"
#include "tools/calibrate/key_runners.h"
#include "tools/calibrate/progress.h"
#include "tools/common/flag_names.h"
#include "tools/common/hf_model.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, synthetic, "",
          "instead of --model: a named shape (tiny, llama-2-7b, llama-3.1-8b) with random weights "
          "and random token ids (--max_tokens of them), for timing; needs --out");
ABSL_FLAG(uint64_t, seed, 0, "with --synthetic: the weights' and token ids' seed");
ABSL_FLAG(std::vector<std::string>, data, {},
          "calibration data files (comma-separated; further files may follow as arguments)");
ABSL_FLAG(std::string, data_format, "",
          "text, jsonl ({\"text\": ...} per line) or tokens (little-endian uint32 ids); default: "
          "from each file's extension (.txt/.text/.md, .jsonl, .u32)");
ABSL_FLAG(std::vector<std::string>, ranks, std::vector<std::string>({"0.25", "0.125"}),
          "latent ranks to store, as fractions of the joint key width D");
ABSL_FLAG(std::string, out, "",
          "output file (a directory gets sals_calibration.safetensors in it); default: in --model");
ABSL_FLAG(int, seq_len, 2048, "tokens per calibration sequence (BOS included)");
ABSL_FLAG(int, chunk, 0,
          "tokens per prefill step (0: 256 on the CPU; 8192 on CUDA, where whole sequences "
          "share a step)");
ABSL_FLAG(int64_t, max_tokens, 0, "stop after this many tokens (0 = all the data)");
ABSL_FLAG(std::string, backend, "cpu", "cpu (fp32 reference) or cuda (libsals_backend_cuda.so)");
ABSL_FLAG(std::string, cuda_dtype, "f16", "with --backend cuda: f16 or bf16 weights/activations");
ABSL_FLAG(bool, resume, false,
          "continue from the checkpoint next to the output (OUT.checkpoint) if there is one");
ABSL_FLAG(int, checkpoint_s, 120, "seconds between checkpoints (0 = none)");
ABSL_FLAG(std::string, check, "", "verify this calibration file against --model instead");
ABSL_FLAG(bool, energy_report, false,
          "print the energy each layer's basis captures at every rank a multiple of 8");
ABSL_FLAG(double, layer_rank_budget, 0.0,
          "> 0: mean latent rank of the sparse layers as a fraction of D (0.125 = SALS-12.5%'s "
          "bytes): a rank per layer by captured energy at that total, compared with the uniform "
          "rank, and written as 'layer_ranks' metadata (with its bases) when calibrating");
ABSL_FLAG(std::vector<std::string>, dense_layers, {},
          "with --layer-rank-budget: layers kept dense, which get no rank (default: the first "
          "two and the last, as the SALS presets)");

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

// --energy-report: per layer, the energy captured at ranks 8, 16, ... D.
void PrintEnergyReport(const std::vector<std::vector<double>>& eigenvalues) {
  if (!absl::GetFlag(FLAGS_energy_report) || eigenvalues.empty()) return;
  const int width = static_cast<int>(eigenvalues[0].size());
  std::printf("energy captured per rank:\nlayer");
  for (int r = kRankStep; r <= width; r += kRankStep) std::printf(" %6d", r);
  std::printf("\n");
  for (size_t l = 0; l < eigenvalues.size(); ++l) {
    std::printf("%5zu", l);
    for (int r = kRankStep; r <= width; r += kRankStep) {
      std::printf(" %6.4f", CapturedEnergy(eigenvalues[l], r));
    }
    std::printf("\n");
  }
}

// --layer-rank-budget: a rank per layer (0 for dense layers) whose sum over the sparse layers is
// the uniform rank's, printed beside the uniform rank's energies. Empty when the flag is 0.
absl::StatusOr<std::vector<int>> AllocateRanks(
    const ModelConfig& config, const std::vector<std::vector<double>>& eigenvalues) {
  const double budget = absl::GetFlag(FLAGS_layer_rank_budget);
  if (budget == 0.0) return std::vector<int>{};
  if (!(budget > 0.0 && budget <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--layer-rank-budget must be in (0, 1], got ", budget));
  }
  auto dense = ParseIntListFlag("dense_layers", absl::GetFlag(FLAGS_dense_layers));
  if (!dense.ok()) return dense.status();
  std::vector<int> sparse;
  if (dense->empty()) {
    auto format = MakeKvCacheFormat(config, "sals-25");
    if (!format.ok()) return format.status();
    for (int l = 0; l < config.num_layers; ++l) {
      if (!format->IsDense(l)) sparse.push_back(l);
    }
  } else {
    for (int l = 0; l < config.num_layers; ++l) {
      if (std::find(dense->begin(), dense->end(), l) == dense->end()) sparse.push_back(l);
    }
  }
  const int width = config.kv_width();
  const int uniform =
      std::clamp(static_cast<int>(std::lround(width * budget / kRankStep)) * kRankStep, kRankStep,
                 width / kRankStep * kRankStep);
  auto ranks = AllocateLayerRanks(eigenvalues, sparse, uniform * static_cast<int>(sparse.size()));
  if (!ranks.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--layer-rank-budget: ", ranks.status().message()));
  }
  std::printf("layer ranks at %d latent dims over %zu sparse layers (uniform rank %d):\n",
              uniform * static_cast<int>(sparse.size()), sparse.size(), uniform);
  std::printf("layer  uniform  energy    adaptive  energy\n");
  double sum_u = 0.0, sum_a = 0.0, min_u = 1.0, min_a = 1.0;
  for (int l : sparse) {
    const double eu = CapturedEnergy(eigenvalues[l], uniform);
    const double ea = CapturedEnergy(eigenvalues[l], (*ranks)[l]);
    std::printf("%5d  %7d  %.4f    %8d  %.4f\n", l, uniform, eu, (*ranks)[l], ea);
    sum_u += eu;
    sum_a += ea;
    min_u = std::min(min_u, eu);
    min_a = std::min(min_a, ea);
  }
  const double n = static_cast<double>(sparse.size());
  std::printf("mean   %7d  %.4f    %8s  %.4f   (min %.4f uniform, %.4f adaptive)\n", uniform,
              sum_u / n, "", sum_a / n, min_u, min_a);
  return ranks;
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
  auto layer_ranks = LoadLayerRanks(path, *config);
  if (!layer_ranks.ok()) return layer_ranks.status();
  std::printf("%s fits %s: kv_width %d, %d layers, ranks %s, calibrated on %s tokens%s%s\n",
              path.string().c_str(), model_dir.c_str(), config->kv_width(), config->num_layers,
              ranks_it->second.c_str(), meta.count("tokens") ? meta.at("tokens").c_str() : "?",
              layer_ranks->empty() ? "" : ", layer ranks ",
              layer_ranks->empty() ? "" : meta.at("layer_ranks").c_str());
  PrintEnergies(ranks, energy);
  std::vector<std::vector<double>> eigenvalues(config->num_layers);
  for (int l = 0; l < config->num_layers; ++l) {
    const std::string name = absl::StrCat("layers.", l, ".eigenvalues");
    const TensorView* t = (*file)->Find(name);
    const size_t bytes = sizeof(double) * config->kv_width();
    if (t == nullptr || t->dtype_name != "F64" || t->nbytes != bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          path.string(), ": tensor '", name, "' missing or not F64 [", config->kv_width(), "]"));
    }
    eigenvalues[l].resize(config->kv_width());
    std::memcpy(eigenvalues[l].data(), t->data, bytes);
  }
  PrintEnergyReport(eigenvalues);
  return AllocateRanks(*config, eigenvalues).status();
}

// The model calibrated and the sequences it runs over.
struct CalibrationInput {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  std::vector<std::vector<int32_t>> seqs;
};

// --synthetic: a named shape with random weights, over random token ids.
absl::StatusOr<CalibrationInput> SyntheticInput(const std::string& name, uint64_t seed, int seq_len,
                                                int64_t max_tokens) {
  if (max_tokens <= 0) {
    return absl::InvalidArgumentError("--synthetic needs --max_tokens (the random tokens to run)");
  }
  auto config = SyntheticModelConfig(name);
  if (!config.ok()) return config.status();
  CalibrationInput in;
  in.config = *config;
  in.weights = MakeRandomWeights(in.config, seed);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, in.config.vocab_size - 1);
  std::vector<int32_t> stream(max_tokens);
  for (int32_t& t : stream) t = id(rng);
  in.seqs = CutSequences(stream, /*bos=*/-1, seq_len, max_tokens);
  return in;
}

// --model with --data: every data file is read and checked before the weights load, so that a
// typo or a malformed line fails at once.
absl::StatusOr<CalibrationInput> ModelInput(const std::string& model_dir,
                                            const std::vector<std::string>& data_files,
                                            const std::string& format_flag, int seq_len,
                                            int64_t max_tokens) {
  if (data_files.empty()) return absl::InvalidArgumentError("--data: no calibration data given");
  std::optional<DataFormat> forced;
  if (!format_flag.empty()) {
    auto f = ParseDataFormat(format_flag);
    if (!f.ok()) return f.status();
    forced = *f;
  }
  std::vector<CalibrationFile> files;
  for (const std::string& path : data_files) {
    absl::StatusOr<DataFormat> format = forced ? *forced : InferDataFormat(path);
    if (!format.ok()) return format.status();
    auto file = ReadCalibrationFile(path, *format);
    if (!file.ok()) return file.status();
    files.push_back(std::move(*file));
  }
  auto config = LoadModelConfig(model_dir);
  if (!config.ok()) return config.status();
  for (const CalibrationFile& f : files) {
    if (absl::Status s = CheckTokenIds(f, config->vocab_size); !s.ok()) return s;
  }
  auto model = LoadHfModel(model_dir);
  if (!model.ok()) return model.status();
  std::vector<int32_t> stream;
  for (const CalibrationFile& f : files) {
    stream.insert(stream.end(), f.tokens.begin(), f.tokens.end());
    for (const std::string& text : f.texts) {
      const std::vector<int32_t> ids = model->tokenizer->Encode(text, /*add_bos=*/false);
      stream.insert(stream.end(), ids.begin(), ids.end());
    }
  }
  CalibrationInput in;
  in.config = model->config;
  in.weights = std::move(model->weights);
  in.seqs = CutSequences(stream, model->tokenizer->bos_id(), seq_len, max_tokens);
  std::fprintf(stderr, "[sals-calibrate] %zu files, %zu data tokens -> %zu sequences\n",
               files.size(), stream.size(), in.seqs.size());
  return in;
}

absl::StatusOr<DType> CudaDType(const std::string& name) {
  if (name == "f16") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("--cuda_dtype must be f16 or bf16, got '", name, "'"));
}

absl::Status Calibrate(const std::vector<std::string>& data_files) {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  const std::string synthetic = absl::GetFlag(FLAGS_synthetic);
  if (!absl::GetFlag(FLAGS_check).empty()) {
    if (model_dir.empty()) return absl::InvalidArgumentError("--check needs --model");
    return Check(model_dir, absl::GetFlag(FLAGS_check));
  }
  if (model_dir.empty() == synthetic.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model and --synthetic");
  }
  if (!synthetic.empty() && (!data_files.empty() || absl::GetFlag(FLAGS_out).empty())) {
    return absl::InvalidArgumentError(
        "--synthetic runs on random token ids: it takes no --data and needs --out");
  }
  auto fractions = ParseFractions(absl::GetFlag(FLAGS_ranks));
  if (!fractions.ok()) return fractions.status();
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "cpu" && backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be cpu or cuda, got '", backend, "'"));
  }
  auto dtype = CudaDType(absl::GetFlag(FLAGS_cuda_dtype));
  if (!dtype.ok()) return dtype.status();
  const int seq_len = absl::GetFlag(FLAGS_seq_len);
  const int64_t max_tokens = absl::GetFlag(FLAGS_max_tokens);
  const int checkpoint_s = absl::GetFlag(FLAGS_checkpoint_s);
  int chunk = absl::GetFlag(FLAGS_chunk);
  if (seq_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat("--seq-len must be >= 2, got ", seq_len));
  }
  if (chunk < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--chunk must be >= 0, got ", chunk));
  }
  if (chunk == 0) chunk = backend == "cuda" ? 8192 : 256;
  if (max_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max-tokens must be >= 0, got ", max_tokens));
  }
  if (checkpoint_s < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--checkpoint-s must be >= 0, got ", checkpoint_s));
  }
  auto out = OutputPath(absl::GetFlag(FLAGS_out), model_dir);
  if (!out.ok()) return out.status();
  const std::filesystem::path checkpoint = CheckpointPath(*out);
  std::error_code ec;
  if (!absl::GetFlag(FLAGS_resume) && std::filesystem::exists(checkpoint, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(checkpoint.string(),
                     " exists (an interrupted run): pass --resume to continue it, or "
                     "delete it to start over"));
  }

  const absl::Time load_start = absl::Now();
  absl::StatusOr<CalibrationInput> input =
      synthetic.empty()
          ? ModelInput(model_dir, data_files, absl::GetFlag(FLAGS_data_format), seq_len, max_tokens)
          : SyntheticInput(synthetic, absl::GetFlag(FLAGS_seed), seq_len, max_tokens);
  if (!input.ok()) return input.status();
  const ModelConfig& config = input->config;
  const std::vector<std::vector<int32_t>>& seqs = input->seqs;
  if (seqs.empty()) return absl::InvalidArgumentError("--data: no tokens to calibrate on");
  if (seq_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--seq-len ", seq_len, " exceeds the model's ",
                                                   config.max_position_embeddings,
                                                   " positions (max_position_embeddings)"));
  }
  auto ranks = RanksFromFractions(config.kv_width(), *fractions);
  if (!ranks.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--ranks: ", ranks.status().message()));
  }
  // prefix[i]: tokens in sequences [0, i).
  std::vector<int64_t> prefix(seqs.size() + 1, 0);
  for (size_t i = 0; i < seqs.size(); ++i) prefix[i + 1] = prefix[i] + seqs[i].size();
  const int64_t total = prefix.back();
  const std::string fingerprint = SequencesFingerprint(seqs);

  KeyCovariance covariance(config);
  int64_t next = 0;
  if (absl::GetFlag(FLAGS_resume) && std::filesystem::exists(checkpoint, ec)) {
    auto done = ReadCheckpoint(checkpoint, config, fingerprint, &covariance);
    if (!done.ok()) return done.status();
    if (*done > static_cast<int64_t>(seqs.size()) || covariance.tokens(0) != prefix[*done]) {
      return absl::FailedPreconditionError(absl::StrCat(
          checkpoint.string(), ": covers ", *done, " sequences and ", covariance.tokens(0),
          " tokens, which this run's ", seqs.size(), " sequences do not match; delete it"));
    }
    next = *done;
    std::fprintf(stderr, "[sals-calibrate] resuming from %s: %lld of %zu sequences done\n",
                 checkpoint.string().c_str(), static_cast<long long>(next), seqs.size());
  }
  std::fprintf(stderr,
               "[sals-calibrate] %zu sequences of up to %d tokens, %lld tokens, backend %s\n",
               seqs.size(), seq_len, static_cast<long long>(total), backend.c_str());

  const int64_t resumed_tokens = prefix[next];
  int64_t done_tokens = resumed_tokens;
  Progress progress(total, done_tokens);
  TokensDone tokens_done = [&](int64_t tokens) {
    done_tokens += tokens;
    progress.Update(done_tokens);
  };
  absl::StatusOr<std::unique_ptr<KeyRunner>> runner =
      backend == "cuda"
          ? CreateCudaKeyRunner(config, *input->weights, &seqs, next, chunk, *dtype, tokens_done)
          : CreateCpuKeyRunner(config, *input->weights, &seqs, seq_len, chunk, &covariance,
                               tokens_done);
  if (!runner.ok()) return runner.status();
  const double load_s = absl::ToDoubleSeconds(absl::Now() - load_start);

  const absl::Time run_start = absl::Now();
  absl::Time last_checkpoint = run_start;
  while (next < static_cast<int64_t>(seqs.size())) {
    auto reached = (*runner)->RunUnit(next);
    if (!reached.ok()) return reached.status();
    next = *reached;
    done_tokens = prefix[next];
    if (checkpoint_s > 0 && next < static_cast<int64_t>(seqs.size()) &&
        absl::Now() - last_checkpoint >= absl::Seconds(checkpoint_s)) {
      if (absl::Status s = (*runner)->Flush(&covariance); !s.ok()) return s;
      if (absl::Status s = WriteCheckpoint(checkpoint, config, covariance, fingerprint, next);
          !s.ok()) {
        return s;
      }
      last_checkpoint = absl::Now();
    }
  }
  if (absl::Status s = (*runner)->Flush(&covariance); !s.ok()) return s;
  progress.Finish(done_tokens);
  const double run_s = absl::ToDoubleSeconds(absl::Now() - run_start);

  const absl::Time decompose_start = absl::Now();
  auto spectra = covariance.Decompose();
  if (!spectra.ok()) return spectra.status();
  const double decompose_s = absl::ToDoubleSeconds(absl::Now() - decompose_start);
  std::vector<std::vector<double>> eigenvalues;
  for (const LayerSpectrum& l : spectra->layers) eigenvalues.push_back(l.eigenvalues);
  auto layer_ranks = AllocateRanks(config, eigenvalues);
  if (!layer_ranks.ok()) return layer_ranks.status();
  // The allocation's largest rank is stored too: every layer's basis is a prefix of it.
  std::vector<int> stored = *ranks;
  if (!layer_ranks->empty()) {
    stored.push_back(*std::max_element(layer_ranks->begin(), layer_ranks->end()));
    std::sort(stored.begin(), stored.end());
    stored.erase(std::unique(stored.begin(), stored.end()), stored.end());
  }
  if (absl::Status s = WriteCalibration(*out, *spectra, stored, *layer_ranks); !s.ok()) return s;
  std::filesystem::remove(checkpoint, ec);
  std::printf("wrote %s: %d layers, kv_width %d, %lld tokens\n", out->string().c_str(),
              config.num_layers, config.kv_width(), static_cast<long long>(spectra->tokens));
  std::printf(
      "times: load %.1f s, keys %.1f s (%lld tokens this run, %.0f tokens/s, backend %s), "
      "eigen-decomposition %.1f s\n",
      load_s, run_s, static_cast<long long>(total - resumed_tokens),
      (total - resumed_tokens) / std::max(1e-9, run_s), backend.c_str(), decompose_s);
  std::vector<std::vector<double>> energy(config.num_layers);
  for (int l = 0; l < config.num_layers; ++l) {
    for (int r : *ranks) energy[l].push_back(spectra->layers[l].Energy(r));
  }
  PrintEnergies(*ranks, energy);
  PrintEnergyReport(eigenvalues);
  return absl::OkStatus();
}
}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-calibrate --model DIR --data FILE[,FILE...] [FILE...] [--data-format "
      "text|jsonl|tokens]\n"
      "    [--backend cpu|cuda] [--cuda-dtype f16|bf16] [--ranks 0.25,0.125] [--out FILE]\n"
      "    [--seq-len 2048] [--chunk N] [--max-tokens N] [--resume] [--checkpoint-s 120]\n"
      "  or: sals-calibrate --synthetic llama-3.1-8b --max-tokens N --out FILE [--backend cuda]\n"
      "  or: sals-calibrate --model DIR --check FILE [--energy-report]\n"
      "  either with [--layer-rank-budget 0.125 [--dense-layers 0,1,31]]");
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
