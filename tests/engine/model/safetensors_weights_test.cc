// OpenSafetensorsWeights: single files, sharded indexes, and Read's checks and conversions.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/safetensors.h"
#include "engine/model/weight_source.h"
#include "tests/engine/model/test_files.h"

namespace sals {
namespace {

using ::sals::testing::Bytes;
using ::sals::testing::TempDir;
using ::sals::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

const std::vector<float> kValues = {1.0f, -2.0f, 0.5f, 3.140625f, -0.15625f, 100.0f};

std::vector<uint16_t> ToHalf(const std::vector<float>& v, DType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = t == DType::kF16 ? F32ToF16(v[i]) : F32ToBf16(v[i]);
  return out;
}

class SingleFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::vector<TensorToWrite> tensors = {
        {"w.f32", DType::kF32, {2, 3}, Bytes(kValues)},
        {"w.f16", DType::kF16, {2, 3}, Bytes(f16_)},
        {"w.bf16", DType::kBF16, {3, 2}, Bytes(bf16_)},
        {"ids", DType::kF32, {6}, Bytes(ids_), "I32"},
    };
    ASSERT_TRUE(WriteSafetensors(dir_ / "model.safetensors", tensors).ok());
    absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir_.path());
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = *std::move(w);
  }

  std::string file() const { return (dir_ / "model.safetensors").string(); }

  TempDir dir_;
  std::vector<uint16_t> f16_ = ToHalf(kValues, DType::kF16);
  std::vector<uint16_t> bf16_ = ToHalf(kValues, DType::kBF16);
  std::vector<int32_t> ids_ = {1, 2, 3, 4, 5, 6};
  std::unique_ptr<WeightSource> weights_;
};

TEST_F(SingleFileTest, HasAndReadF32) {
  EXPECT_TRUE(weights_->Has("w.f32"));
  EXPECT_TRUE(weights_->Has("ids"));
  EXPECT_FALSE(weights_->Has("w"));
  std::vector<float> out(6);
  ASSERT_TRUE(weights_->ReadF32("w.f32", std::vector<int64_t>{2, 3}, out).ok());
  EXPECT_EQ(out, kValues);
  // These values are exact in fp16 and bf16.
  ASSERT_TRUE(weights_->ReadF32("w.f16", std::vector<int64_t>{2, 3}, out).ok());
  EXPECT_EQ(out, kValues);
  ASSERT_TRUE(weights_->ReadF32("w.bf16", std::vector<int64_t>{3, 2}, out).ok());
  EXPECT_EQ(out, kValues);
}

TEST_F(SingleFileTest, ConvertsIntoEveryDType) {
  const std::vector<int64_t> shape = {2, 3};
  for (const char* name : {"w.f32", "w.f16"}) {
    std::vector<uint16_t> half(6);
    ASSERT_TRUE(
        weights_->Read(name, shape, DType::kF16, std::as_writable_bytes(std::span(half))).ok());
    EXPECT_EQ(half, f16_) << name;
    ASSERT_TRUE(
        weights_->Read(name, shape, DType::kBF16, std::as_writable_bytes(std::span(half))).ok());
    EXPECT_EQ(half, bf16_) << name;
  }
}

TEST_F(SingleFileTest, NotFoundNamesTensorAndFile) {
  std::vector<float> out(6);
  absl::Status s =
      weights_->ReadF32("model.layers.3.mlp.up_proj.weight", std::vector<int64_t>{2, 3}, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("tensor 'model.layers.3.mlp.up_proj.weight' not found in"),
                    HasSubstr(file())));
  EXPECT_EQ(weights_->Check("nope", std::vector<int64_t>{1}).code(), absl::StatusCode::kNotFound);
}

TEST_F(SingleFileTest, ShapeMismatchNamesTensorFileAndBothShapes) {
  std::vector<float> out(6);
  for (const std::vector<int64_t>& wrong :
       {std::vector<int64_t>{3, 2}, std::vector<int64_t>{6}, std::vector<int64_t>{2, 3, 1}}) {
    absl::Status s = weights_->ReadF32("w.f32", wrong, out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), AllOf(HasSubstr("'w.f32'"), HasSubstr(file()),
                                   HasSubstr("shape [2, 3]"), HasSubstr("expected [")));
    EXPECT_EQ(weights_->Check("w.f32", wrong).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(weights_->Check("w.f32", std::vector<int64_t>{2, 3}).ok());
}

TEST_F(SingleFileTest, NonFloatDTypeIsRejected) {
  std::vector<float> out(6);
  absl::Status s = weights_->ReadF32("ids", std::vector<int64_t>{6}, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'ids'"), HasSubstr(file()), HasSubstr("I32")));
  EXPECT_EQ(weights_->Check("ids", std::vector<int64_t>{6}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SingleFileTest, DestinationSizeMustMatch) {
  std::vector<float> out(5);
  absl::Status s = weights_->ReadF32("w.f32", std::vector<int64_t>{2, 3}, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'w.f32'"), HasSubstr("destination")));
}

TEST(SafetensorsWeightsTest, EmptyDirectoryIsNotFound) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir.path());
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr(dir.path().string()));
}

TEST(SafetensorsWeightsTest, CorruptSingleFileNamesIt) {
  TempDir dir;
  WriteFile(dir / "model.safetensors", "short");
  absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir.path());
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr((dir / "model.safetensors").string()));
}

class ShardedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(WriteSafetensors(dir_ / kShard1,
                                 std::vector<TensorToWrite>{
                                     {"a", DType::kF32, {2, 3}, Bytes(kValues)},
                                     {"b", DType::kF32, {6}, Bytes(kValues)},
                                 })
                    .ok());
    ASSERT_TRUE(WriteSafetensors(dir_ / kShard2,
                                 std::vector<TensorToWrite>{
                                     {"c", DType::kBF16, {3, 2}, Bytes(bf16_)},
                                     {"unlisted", DType::kF32, {1}, Bytes(one_)},
                                 })
                    .ok());
  }

  void WriteIndex(const std::string& weight_map) {
    WriteFile(dir_ / "model.safetensors.index.json",
              R"({"metadata": {"total_size": 60}, "weight_map": )" + weight_map + "}");
  }

  std::string index() const { return (dir_ / "model.safetensors.index.json").string(); }

  static constexpr char kShard1[] = "model-00001-of-00002.safetensors";
  static constexpr char kShard2[] = "model-00002-of-00002.safetensors";
  TempDir dir_;
  std::vector<uint16_t> bf16_ = ToHalf(kValues, DType::kBF16);
  std::vector<float> one_ = {1.0f};
};

TEST_F(ShardedTest, ReadsTensorsFromEveryShard) {
  WriteIndex(R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                 "c": "model-00002-of-00002.safetensors"})");
  // A stray single file is ignored when an index exists.
  WriteFile(dir_ / "model.safetensors", "garbage");
  absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir_.path());
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<float> out(6);
  ASSERT_TRUE((*w)->ReadF32("a", std::vector<int64_t>{2, 3}, out).ok());
  EXPECT_EQ(out, kValues);
  ASSERT_TRUE((*w)->ReadF32("b", std::vector<int64_t>{6}, out).ok());
  EXPECT_EQ(out, kValues);
  ASSERT_TRUE((*w)->ReadF32("c", std::vector<int64_t>{3, 2}, out).ok());
  EXPECT_EQ(out, kValues);
  // Only what the index lists is visible.
  EXPECT_FALSE((*w)->Has("unlisted"));
  absl::Status s = (*w)->ReadF32("unlisted", std::vector<int64_t>{1}, std::span(out).first(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(index()));
  // Errors about a tensor name the shard it lives in.
  s = (*w)->ReadF32("c", std::vector<int64_t>{2, 3}, out);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'c'"), HasSubstr(kShard2), Not(HasSubstr(kShard1))));
}

TEST_F(ShardedTest, MissingShardFileNamesShardAndIndex) {
  WriteIndex(
      R"({"a": "model-00001-of-00002.safetensors", "x": "model-00003-of-00002.safetensors"})");
  absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir_.path());
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(
      w.status().message(),
      AllOf(HasSubstr(index()), HasSubstr("model-00003-of-00002.safetensors"), HasSubstr("'x'")));
}

TEST_F(ShardedTest, TensorInWrongShardNamesTensorShardAndIndex) {
  WriteIndex(R"({"a": "model-00002-of-00002.safetensors"})");
  absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir_.path());
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr("'a'"), HasSubstr(index()), HasSubstr((dir_ / kShard2).string())));
}

TEST_F(ShardedTest, BadIndexFiles) {
  for (const char* text : {"{", "[]", R"({"metadata": {}})", R"({"weight_map": [1]})",
                           R"({"weight_map": {"a": 3}})"}) {
    WriteFile(dir_ / "model.safetensors.index.json", text);
    absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir_.path());
    ASSERT_FALSE(w.ok()) << text;
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(w.status().message(), HasSubstr(index())) << text;
  }
}

TEST_F(ShardedTest, CorruptShardNamesShardAndIndex) {
  WriteFile(dir_ / kShard2, "tiny");
  WriteIndex(R"({"c": "model-00002-of-00002.safetensors"})");
  absl::StatusOr<std::unique_ptr<WeightSource>> w = OpenSafetensorsWeights(dir_.path());
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr(index()), HasSubstr(kShard2), HasSubstr("too short")));
}

}  // namespace
}  // namespace sals
