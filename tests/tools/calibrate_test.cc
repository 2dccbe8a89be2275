// sals-calibrate's CPU-testable parts: the data readers (text, JSON lines, token ids) and their
// errors, the format inference, sequence cutting and fingerprints, the checkpoint file, the merge
// of sums accumulated elsewhere (the CUDA path's), the packing of sequences into CUDA steps, the
// progress line, and an interrupted CPU run resumed from its checkpoint giving the same bytes as
// one uninterrupted run.
#include <Eigen/Dense>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "engine/model/safetensors.h"
#include "engine/model/weight_source.h"
#include "engine/sals/calibration.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/temp_dir.h"
#include "tests/engine/backend/fixture_models.h"
#include "tools/calibrate/calibration_checkpoint.h"
#include "tools/calibrate/calibration_data.h"
#include "tools/calibrate/calibration_steps.h"
#include "tools/calibrate/key_runners.h"
#include "tools/calibrate/progress.h"

namespace sals {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::TempDir;

void Write(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string LittleEndianU32(const std::vector<uint32_t>& ids) {
  std::string bytes;
  for (uint32_t id : ids) {
    for (int b = 0; b < 4; ++b) bytes.push_back(static_cast<char>((id >> (8 * b)) & 0xff));
  }
  return bytes;
}

std::string ErrorOf(const absl::Status& s) { return std::string(s.message()); }

TEST(CalibrationDataTest, FormatsFromFlagAndExtension) {
  EXPECT_EQ(*ParseDataFormat("jsonl"), DataFormat::kJsonl);
  EXPECT_EQ(*ParseDataFormat("tokens"), DataFormat::kTokens);
  EXPECT_THAT(ErrorOf(ParseDataFormat("csv").status()), HasSubstr("--data_format: 'csv'"));
  EXPECT_EQ(*InferDataFormat("a/b.TXT"), DataFormat::kText);
  EXPECT_EQ(*InferDataFormat("c4-train.00000.jsonl"), DataFormat::kJsonl);
  EXPECT_EQ(*InferDataFormat("ids.u32"), DataFormat::kTokens);
  for (const char* ambiguous : {"data.json", "data.bin", "corpus"}) {
    const absl::Status s = InferDataFormat(ambiguous).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << ambiguous;
    EXPECT_THAT(ErrorOf(s), HasSubstr(ambiguous));
    EXPECT_THAT(ErrorOf(s), HasSubstr("--data_format"));
  }
}

TEST(CalibrationDataTest, ReadsJsonLinesSkippingBlankLinesAndOtherFields) {
  TempDir dir;
  Write(dir / "d.jsonl",
        "{\"text\": \"first doc\", \"url\": \"x\", \"timestamp\": 1}\n\n"
        "  {\"text\": \"second\\ndoc \\u00e9\"}\r\n");
  auto file = ReadCalibrationFile(dir / "d.jsonl", DataFormat::kJsonl);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT(file->texts, ElementsAre("first doc", "second\ndoc \xc3\xa9"));
  EXPECT_TRUE(file->tokens.empty());
}

TEST(CalibrationDataTest, JsonLineErrorsNameTheLineAndTheField) {
  TempDir dir;
  const std::string ok = "{\"text\": \"fine\"}\n";
  const struct {
    std::string line;
    std::string error;
  } cases[] = {
      {"{\"text\": \"unterminated}", ":3: not valid JSON"},
      {"[\"text\"]", ":3: expected an object with a \"text\" string, got a array"},
      {"{\"content\": \"x\"}", ":3: no \"text\" field"},
      {"{\"tokens\": [1, 2]}", ":3: no \"text\" field (pre-tokenized data is a .u32 file"},
      {"{\"text\": 42}", ":3: \"text\" is a number, not a string"},
      {"{\"text\": null}", ":3: \"text\" is a null, not a string"},
  };
  for (const auto& c : cases) {
    Write(dir / "bad.jsonl", ok + "\n" + c.line + "\n" + ok);
    const absl::Status s = ReadCalibrationFile(dir / "bad.jsonl", DataFormat::kJsonl).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.line;
    EXPECT_THAT(ErrorOf(s), HasSubstr((dir / "bad.jsonl").string() + c.error)) << c.line;
  }
  Write(dir / "empty.jsonl", "{\"text\": \"  \"}\n\n");
  EXPECT_THAT(ErrorOf(ReadCalibrationFile(dir / "empty.jsonl", DataFormat::kJsonl).status()),
              HasSubstr("no text in calibration file"));
}

TEST(CalibrationDataTest, TokenFilesAreLittleEndianAndCheckedAgainstTheVocabulary) {
  TempDir dir;
  Write(dir / "ids.u32", LittleEndianU32({1, 258, 70000, 3}));
  auto file = ReadCalibrationFile(dir / "ids.u32", DataFormat::kTokens);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT(file->tokens, ElementsAre(1, 258, 70000, 3));
  EXPECT_TRUE(CheckTokenIds(*file, 70001).ok());
  const absl::Status s = CheckTokenIds(*file, 70000);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ErrorOf(s), HasSubstr("ids.u32: token 2 (byte offset 8) is 70000, outside the "
                                    "model's vocabulary [0, 70000)"));
  Write(dir / "huge.u32", LittleEndianU32({5, 0xffffffffu}));
  auto huge = ReadCalibrationFile(dir / "huge.u32", DataFormat::kTokens);
  ASSERT_TRUE(huge.ok());
  EXPECT_THAT(ErrorOf(CheckTokenIds(*huge, 100)),
              HasSubstr("token 1 (byte offset 4) is 4294967295"));

  Write(dir / "odd.u32", "abcdefg");
  EXPECT_THAT(ErrorOf(ReadCalibrationFile(dir / "odd.u32", DataFormat::kTokens).status()),
              HasSubstr("7 bytes, not a whole number of little-endian uint32"));
  Write(dir / "none.u32", "");
  EXPECT_THAT(ErrorOf(ReadCalibrationFile(dir / "none.u32", DataFormat::kTokens).status()),
              HasSubstr("no token ids"));
  EXPECT_EQ(ReadCalibrationFile(dir / "missing.txt", DataFormat::kText).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(CalibrationDataTest, SequencesStartWithBosAndStopAtMaxTokens) {
  const std::vector<int32_t> stream = {10, 11, 12, 13, 14, 15, 16};
  EXPECT_THAT(CutSequences(stream, 1, 3, 0),
              ElementsAre(ElementsAre(1, 10, 11), ElementsAre(1, 12, 13), ElementsAre(1, 14, 15),
                          ElementsAre(1, 16)));
  EXPECT_THAT(CutSequences(stream, 1, 3, 5),
              ElementsAre(ElementsAre(1, 10, 11), ElementsAre(1, 12)));
  EXPECT_THAT(CutSequences(stream, -1, 4, 0),
              ElementsAre(ElementsAre(10, 11, 12, 13), ElementsAre(14, 15, 16)));
}

TEST(CalibrationDataTest, FingerprintSeesIdsAndHowTheyAreCut) {
  const std::vector<int32_t> stream = {10, 11, 12, 13, 14, 15, 16};
  const std::string base = SequencesFingerprint(CutSequences(stream, 1, 3, 0));
  EXPECT_EQ(base.size(), 16u);
  EXPECT_EQ(base, SequencesFingerprint(CutSequences(stream, 1, 3, 0)));
  EXPECT_NE(base, SequencesFingerprint(CutSequences(stream, 1, 4, 0)));
  std::vector<int32_t> other = stream;
  other[5] = 17;
  EXPECT_NE(base, SequencesFingerprint(CutSequences(other, 1, 3, 0)));
}

// Two layers of joint key width 64.
ModelConfig SmallConfig() { return *SyntheticModelConfig("tiny"); }

std::vector<float> RandomKeys(int64_t n, int d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> keys(n * d);
  for (int64_t t = 0; t < n; ++t) {
    for (int i = 0; i < d; ++i) keys[t * d + i] = normal(rng) * (1.0f + i);
  }
  return keys;
}

// Full k k^T sums, as the CUDA backend hands them over (both triangles, column-major).
std::vector<double> FullSums(const std::vector<float>& keys, int64_t n, int d) {
  const Eigen::Map<const Eigen::MatrixXf> k(keys.data(), d, n);
  const Eigen::MatrixXd c = k.cast<double>() * k.cast<double>().transpose();
  return std::vector<double>(c.data(), c.data() + c.size());
}

// Sums from elsewhere merge exactly: half the keys added directly and the other half's sums
// added give the covariance (and the file) of all the keys added directly, within rounding.
TEST(CovarianceMergeTest, AddSumsEqualsAddingTheKeys) {
  const ModelConfig config = SmallConfig();
  const int d = config.kv_width();
  const std::vector<float> a = RandomKeys(300, d, 1), b = RandomKeys(200, d, 2);
  KeyCovariance direct(config), merged(config);
  for (int l = 0; l < config.num_layers; ++l) {
    direct.AddKeys(l, a, 300);
    direct.AddKeys(l, b, 200);
    merged.AddKeys(l, a, 300);
    ASSERT_TRUE(merged.AddSums(l, FullSums(b, 200, d), 200).ok());
  }
  EXPECT_EQ(merged.tokens(1), 500);
  for (int l = 0; l < config.num_layers; ++l) {
    for (int j = 0; j < d; ++j) {
      for (int i = 0; i < d; ++i) {
        const double want = direct.sums(l)[j * d + i], got = merged.sums(l)[j * d + i];
        EXPECT_NEAR(got, want, 1e-9 * (1.0 + std::abs(want))) << l << " " << i << " " << j;
        if (i < j) {
          EXPECT_EQ(got, 0.0) << "upper triangle stays empty";
        }
      }
    }
  }
  auto x = direct.Decompose(), y = merged.Decompose();
  ASSERT_TRUE(x.ok() && y.ok());
  for (int r = 1; r <= d; ++r) EXPECT_NEAR(x->layers[0].Energy(r), y->layers[0].Energy(r), 1e-12);
}

TEST(CovarianceMergeTest, AddSumsRejectsWrongShapes) {
  KeyCovariance cov(SmallConfig());
  EXPECT_THAT(ErrorOf(cov.AddSums(0, std::vector<double>(10), 1)), HasSubstr("expected 64 x 64"));
  EXPECT_THAT(ErrorOf(cov.AddSums(2, std::vector<double>(64 * 64), 1)),
              HasSubstr("layer 2 outside"));
  EXPECT_EQ(cov.tokens(0), 0);
}

TEST(CheckpointTest, RoundTripsExactlyAndRefusesOtherModelsOrData) {
  const ModelConfig config = SmallConfig();
  const std::vector<float> keys = RandomKeys(123, config.kv_width(), 3);
  KeyCovariance cov(config);
  for (int l = 0; l < config.num_layers; ++l) cov.AddKeys(l, keys, 123);
  TempDir dir;
  const std::filesystem::path path = CheckpointPath(dir / "out.safetensors");
  EXPECT_EQ(path.filename(), "out.safetensors.checkpoint");
  ASSERT_TRUE(WriteCheckpoint(path, config, cov, "00000000000000aa", 7).ok());

  KeyCovariance back(config);
  auto done = ReadCheckpoint(path, config, "00000000000000aa", &back);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(*done, 7);
  for (int l = 0; l < config.num_layers; ++l) {
    EXPECT_EQ(back.tokens(l), 123);
    EXPECT_TRUE(std::equal(back.sums(l).begin(), back.sums(l).end(), cov.sums(l).begin()));
  }

  KeyCovariance unused(config);
  EXPECT_THAT(ErrorOf(ReadCheckpoint(path, config, "00000000000000bb", &unused).status()),
              HasSubstr("checkpoint of other calibration data"));
  ModelConfig wider = config;
  wider.head_dim = 64;
  KeyCovariance other(wider);
  EXPECT_THAT(ErrorOf(ReadCheckpoint(path, wider, "00000000000000aa", &other).status()),
              HasSubstr("checkpoint of another model (kv_width 64, this model's 128)"));
  EXPECT_EQ(unused.tokens(0), 0);
}

std::vector<std::vector<int64_t>> Shape(const std::vector<CalibrationStep>& steps) {
  std::vector<std::vector<int64_t>> out;
  for (const CalibrationStep& s : steps) {
    std::vector<int64_t>& row = out.emplace_back();
    for (const StepSlice& sl : s.slices) {
      row.insert(row.end(), {sl.seq, sl.begin, sl.len});
    }
    row.push_back(s.sequences_done);
  }
  return out;
}

TEST(CalibrationStepsTest, PacksWholeSequencesAndChunksLongOnes) {
  const std::vector<int64_t> lengths = {100, 100, 50, 300, 100};
  // Per step: (seq, begin, len)..., then sequences_done.
  EXPECT_THAT(
      Shape(PlanCalibrationSteps(lengths, 0, 256)),
      ElementsAre(ElementsAre(0, 0, 100, 1, 0, 100, 2, 0, 50, 3), ElementsAre(3, 0, 256, -1),
                  ElementsAre(3, 256, 44, 4), ElementsAre(4, 0, 100, 5)));
  EXPECT_THAT(Shape(PlanCalibrationSteps(lengths, 3, 300)),
              ElementsAre(ElementsAre(3, 0, 300, 4), ElementsAre(4, 0, 100, 5)));
  EXPECT_TRUE(PlanCalibrationSteps(lengths, 5, 256).empty());

  const std::vector<CalibrationStep> steps = PlanCalibrationSteps(lengths, 0, 256);
  // Step 0 holds 100 + 100 + 50 tokens: 7 + 7 + 4 blocks of 16; the long sequence 19.
  EXPECT_EQ(BlocksNeeded(steps, 16), 19);
  EXPECT_THAT(StepBlockTables(steps[0], 16)[2], ElementsAre(14, 15, 16, 17));
  EXPECT_EQ(StepBlockTables(steps[2], 16)[0].size(), 19u);
  EXPECT_EQ(StepBlockTables(steps[2], 16)[0].front(), 0);
}

TEST(ProgressTest, LineHasRateAndEta) {
  EXPECT_EQ(FormatProgress(1000, 4000, 100.0),
            "[sals-calibrate] 1000/4000 tokens (25.0%), 100 tokens/s, ETA 30s");
  EXPECT_EQ(FormatProgress(4000, 4000, 100.0),
            "[sals-calibrate] 4000/4000 tokens (100.0%), 100 tokens/s");
  EXPECT_THAT(FormatProgress(0, 10, 0.0), ::testing::Not(HasSubstr("ETA")));
  EXPECT_EQ(ShortDuration(absl::Seconds(3723)), "1h02m03s");
  EXPECT_EQ(ShortDuration(absl::Seconds(245)), "4m05s");
}

// An interrupted CPU run (a checkpoint after its first sequences) resumed in a fresh covariance
// writes the same bytes as one uninterrupted run.
TEST(ResumeTest, ResumedRunWritesTheSameFile) {
  const testing::FixtureModel model = testing::LoadFixtureModel("llama31-bpe");
  std::mt19937 rng(5);
  std::vector<int32_t> stream(250);
  for (int32_t& t : stream) t = static_cast<int32_t>(rng() % model.config.vocab_size);
  const std::vector<std::vector<int32_t>> seqs = CutSequences(stream, 1, 64, 0);
  const std::string fingerprint = SequencesFingerprint(seqs);
  ASSERT_EQ(seqs.size(), 4u);
  TempDir dir;
  const std::vector<int> ranks = {4, 16};
  auto run = [&](KeyCovariance* cov, int64_t first, int64_t end) {
    int64_t tokens = 0;
    auto runner = CreateCpuKeyRunner(model.config, *model.weights, &seqs, 64, 24, cov,
                                     [&tokens](int64_t n) { tokens += n; });
    ASSERT_TRUE(runner.ok()) << runner.status();
    for (int64_t next = first; next < end;) {
      auto reached = (*runner)->RunUnit(next);
      ASSERT_TRUE(reached.ok()) << reached.status();
      next = *reached;
    }
    ASSERT_TRUE((*runner)->Flush(cov).ok());
    int64_t want = 0;
    for (int64_t s = first; s < end; ++s) want += static_cast<int64_t>(seqs[s].size());
    EXPECT_EQ(tokens, want);
  };
  KeyCovariance whole(model.config);
  run(&whole, 0, 4);
  ASSERT_TRUE(WriteCalibration(dir / "whole", *whole.Decompose(), ranks).ok());

  KeyCovariance first(model.config);
  run(&first, 0, 2);
  const std::filesystem::path checkpoint = CheckpointPath(dir / "resumed");
  ASSERT_TRUE(WriteCheckpoint(checkpoint, model.config, first, fingerprint, 2).ok());
  KeyCovariance resumed(model.config);
  auto done = ReadCheckpoint(checkpoint, model.config, fingerprint, &resumed);
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(*done, 2);
  run(&resumed, 2, 4);
  ASSERT_TRUE(WriteCalibration(dir / "resumed", *resumed.Decompose(), ranks).ok());
  EXPECT_EQ(ReadBytes(dir / "whole"), ReadBytes(dir / "resumed"));
}

}  // namespace
}  // namespace sals
