// sals-recall: how much true attention mass SALS's token selection keeps on a prompt. Runs the
// dense CPU reference over the prompt, then for each decode position from --start and each layer
// compares the policy's selection (latent scores of a calibrated basis) with exact attention.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/sals/basis.h"
#include "engine/sals/calibration.h"
#include "engine/sals/dense_capture.h"
#include "engine/sals/recall.h"
#include "tools/common/flag_names.h"
#include "tools/common/hf_model.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, calibration, "",
          "calibration file (default: sals_calibration.safetensors in --model)");
ABSL_FLAG(double, rank, 0.25, "latent rank as a fraction of the joint key width D");
ABSL_FLAG(std::string, prompt_file, "", "text the model reads (BOS is prepended)");
ABSL_FLAG(int, max_tokens, 2048, "prompt tokens used at most");
ABSL_FLAG(double, topk, 0.125, "selected middle tokens as a fraction of the context");
ABSL_FLAG(int, token_budget, 0, "> 0: at most this many selected middle tokens");
ABSL_FLAG(int, score_dims, 0, "latent dims that score tokens (0 = rank / 2)");
ABSL_FLAG(std::vector<std::string>, selection, {"shared"},
          "selections compared, each measured on the same dense run: shared, per_kv_head");
ABSL_FLAG(std::vector<std::string>, layer_ranks, {},
          "a latent rank per layer (0 for dense ones; sals-calibrate --layer-rank-budget): each "
          "measured layer scores with rank / 2 dims (--score-dims ignored); the basis of the "
          "largest is loaded");
ABSL_FLAG(int, sinks, 16, "first tokens always attended");
ABSL_FLAG(int, recent, 64, "last tokens always attended");
ABSL_FLAG(int, start, -1, "first decode position measured (-1 = sinks + recent)");
ABSL_FLAG(std::vector<std::string>, layers, {}, "layers measured (default: all)");
ABSL_FLAG(int, chunk, 256, "prefill chunk in tokens");

namespace sals {
namespace {

void PrintRow(const std::string& name, const RecallStats& s) {
  std::printf("%-7s %9lld %8.4f %8.4f %9.4f %9.4f\n", name.c_str(),
              static_cast<long long>(s.samples), s.mean, s.min, s.selected_fraction,
              s.random_recall);
}

absl::Status Recall() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  const std::string prompt_file = absl::GetFlag(FLAGS_prompt_file);
  if (model_dir.empty() || prompt_file.empty()) {
    return absl::InvalidArgumentError("--model and --prompt-file are required");
  }
  auto layers = ParseIntListFlag("layers", absl::GetFlag(FLAGS_layers));
  if (!layers.ok()) return layers.status();
  auto text = ReadTextFile(prompt_file);
  if (!text.ok()) return text.status();
  auto model = LoadHfModel(model_dir);
  if (!model.ok()) return model.status();
  const ModelConfig& config = model->config;

  const double fraction = absl::GetFlag(FLAGS_rank);
  auto ranks = RanksFromFractions(config.kv_width(), std::span(&fraction, 1));
  if (!ranks.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--rank: ", ranks.status().message()));
  }
  std::string calibration = absl::GetFlag(FLAGS_calibration);
  if (calibration.empty()) {
    calibration = (std::filesystem::path(model_dir) / kCalibrationFileName).string();
  }
  auto layer_ranks = ParseIntListFlag("layer_ranks", absl::GetFlag(FLAGS_layer_ranks));
  if (!layer_ranks.ok()) return layer_ranks.status();
  int load_rank = ranks->front();
  std::vector<int> layer_score_dims;
  for (int r : *layer_ranks) {
    load_rank = std::max(load_rank, r);
    layer_score_dims.push_back(r / 2);
  }
  auto basis = LoadSalsBasis(calibration, config, load_rank);
  if (!basis.ok()) return basis.status();

  std::vector<int32_t> tokens = model->tokenizer->Encode(*text, /*add_bos=*/true);
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens > 0 && static_cast<int>(tokens.size()) > max_tokens) tokens.resize(max_tokens);
  QueryKeyRecorder recorder(config);
  auto capture = DenseCapture::Create(
      config, *model->weights, static_cast<int>(tokens.size()), absl::GetFlag(FLAGS_chunk),
      [&](int layer, std::span<const float> rows, int64_t n) { recorder.Observe(layer, rows, n); });
  if (!capture.ok()) return capture.status();
  if (absl::Status s = (*capture)->Run(tokens); !s.ok()) return s;

  std::vector<SalsSelection> selections;
  for (const std::string& name : absl::GetFlag(FLAGS_selection)) {
    absl::StatusOr<SalsSelection> s = ParseSalsSelection(name);
    if (!s.ok())
      return absl::InvalidArgumentError(absl::StrCat("--selection: ", s.status().message()));
    selections.push_back(*s);
  }
  if (selections.empty()) return absl::InvalidArgumentError("--selection: none given");
  RecallOptions options;
  options.policy.topk_fraction = absl::GetFlag(FLAGS_topk);
  options.policy.token_budget = absl::GetFlag(FLAGS_token_budget);
  options.policy.score_dims = absl::GetFlag(FLAGS_score_dims);
  options.policy.sink_tokens = absl::GetFlag(FLAGS_sinks);
  options.policy.recent_tokens = absl::GetFlag(FLAGS_recent);
  const int start = absl::GetFlag(FLAGS_start);
  options.start = start >= 0 ? start : options.policy.sink_tokens + options.policy.recent_tokens;
  options.layers = *layers;
  options.layer_score_dims = layer_score_dims;

  SalsStorage storage;
  storage.rank = basis->rank;
  const SalsPolicy p = options.policy.Resolved(storage);
  const std::string budget =
      p.token_budget > 0 ? absl::StrCat(" (at most ", p.token_budget, " tokens)") : "";
  std::printf(
      "%s: %zu prompt tokens, positions %lld..%zu; rank %d of %d, score dims %d, top-k %g%s, "
      "%d sinks, %d recent\n",
      model_dir.c_str(), tokens.size(), static_cast<long long>(options.start), tokens.size() - 1,
      p.rank, config.kv_width(), p.score_dims, p.topk_fraction, budget.c_str(), p.sink_tokens,
      p.recent_tokens);
  if (!layer_ranks->empty()) {
    std::printf("layer ranks %s: score dims %s per layer (the rank-%d basis' prefixes)\n",
                absl::StrJoin(*layer_ranks, ",").c_str(),
                absl::StrJoin(layer_score_dims, ",").c_str(), basis->rank);
  }
  for (SalsSelection selection : selections) {
    options.policy.selection = selection;
    auto report = MeasureRecall(config, *basis, recorder, options);
    if (!report.ok()) return report.status();
    std::printf("selection %s\n", std::string(SalsSelectionName(selection)).c_str());
    std::printf("%-7s %9s %8s %8s %9s %9s\n", "layer", "positions", "mean", "min", "attended",
                "random");
    for (const LayerRecall& l : report->layers) PrintRow(absl::StrCat(l.layer), l.stats);
    PrintRow("all", report->overall);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-recall --model DIR --prompt-file FILE [--calibration FILE] [--rank 0.25]\n"
      "    [--topk 0.125] [--token-budget N] [--score-dims N] [--sinks 16] [--recent 64]\n"
      "    [--start P] [--max-tokens 2048] [--layers 2,3] [--selection shared,per_kv_head]\n"
      "    [--layer-ranks 0,0,8,16,24,16,16,0]\n"
      "Columns: mean and min of the attention mass kept (averaged over heads), the share of the\n"
      "context attended, and what a random pick of as many middle tokens would keep.");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = sals::Recall();
  if (!status.ok()) {
    std::fprintf(stderr, "sals-recall: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
