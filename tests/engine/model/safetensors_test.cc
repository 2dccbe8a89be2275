#include "engine/model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "tests/engine/model/test_files.h"

namespace sals {
namespace {

using ::sals::testing::Bytes;
using ::sals::testing::RawSafetensors;
using ::sals::testing::TempDir;
using ::sals::testing::WriteFile;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

template <typename T>
std::vector<T> Data(const TensorView& t) {
  std::vector<T> out(t.nbytes / sizeof(T));
  std::memcpy(out.data(), t.data, t.nbytes);
  return out;
}

TEST(SafetensorsTest, WriteReadRoundTrip) {
  TempDir dir;
  const std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 0.0f, 1e-20f, 7.0f};
  const std::vector<uint16_t> f16 = {F32ToF16(0.5f), F32ToF16(-1.0f), F32ToF16(65504.0f)};
  const std::vector<uint16_t> bf16 = {F32ToBf16(3.0f), F32ToBf16(-1e30f)};
  const std::vector<int32_t> i32 = {1, -2, 2147483647, 0, 5};
  const std::vector<TensorToWrite> tensors = {
      {"z.f32", DType::kF32, {2, 3}, Bytes(f32)},
      {"a.f16", DType::kF16, {3}, Bytes(f16)},
      {"m.bf16", DType::kBF16, {1, 2}, Bytes(bf16)},
      {"ids", DType::kF32, {5}, Bytes(i32), "I32"},
      {"empty", DType::kF32, {0, 4}, {}},
  };
  const std::filesystem::path path = dir / "t.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"note", "x"}}).ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "t.safetensors.tmp"));

  // The header is padded to a multiple of 8 so the data region is aligned.
  const std::string raw = ReadAll(path);
  uint64_t header_size = 0;
  std::memcpy(&header_size, raw.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x");

  const TensorView* t = f.Find("z.f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->name, "z.f32");
  EXPECT_EQ(t->dtype_name, "F32");
  EXPECT_EQ(t->dtype, DType::kF32);
  EXPECT_THAT(t->shape, ElementsAre(2, 3));
  EXPECT_EQ(Data<float>(*t), f32);

  t = f.Find("a.f16");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF16);
  EXPECT_EQ(Data<uint16_t>(*t), f16);

  t = f.Find("m.bf16");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kBF16);
  EXPECT_THAT(t->shape, ElementsAre(1, 2));
  EXPECT_EQ(Data<uint16_t>(*t), bf16);

  t = f.Find("ids");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype_name, "I32");
  EXPECT_FALSE(t->dtype.has_value());  // readable as raw bytes only
  EXPECT_EQ(Data<int32_t>(*t), i32);

  t = f.Find("empty");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->nbytes, 0u);
  EXPECT_THAT(t->shape, ElementsAre(0, 4));

  EXPECT_EQ(f.Find("missing"), nullptr);
}

TEST(SafetensorsTest, NoMetadataAndNoTensors) {
  TempDir dir;
  ASSERT_TRUE(WriteSafetensors(dir / "e.safetensors", {}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir / "e.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  TempDir dir;
  const std::vector<float> three = {1, 2, 3};
  struct Case {
    std::vector<TensorToWrite> tensors;
    std::string want;
  };
  const std::vector<Case> cases = {
      {{{"w", DType::kF32, {2, 2}, Bytes(three)}}, "tensor 'w'"},
      {{{"w", DType::kF16, {3}, Bytes(three)}}, "tensor 'w'"},
      {{{"w", DType::kF32, {3}, Bytes(three)}, {"w", DType::kF32, {3}, Bytes(three)}},
       "'w' is given twice"},
      {{{"w", DType::kF32, {3}, Bytes(three), "Q4_K"}}, "Q4_K"},
      {{{"w", DType::kF32, {-3}, Bytes(three)}}, "negative"},
      {{{"__metadata__", DType::kF32, {3}, Bytes(three)}}, "__metadata__"},
      {{{"bad\xff", DType::kF32, {3}, Bytes(three)}}, "cannot encode"},
  };
  const std::filesystem::path path = dir / "bad.safetensors";
  for (const Case& c : cases) {
    absl::Status s = WriteSafetensors(path, c.tensors);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.want;
    EXPECT_THAT(s.message(), AllOf(HasSubstr(path.string()), HasSubstr(c.want)));
    EXPECT_FALSE(std::filesystem::exists(path));
  }
  absl::Status s = WriteSafetensors(dir / "no_such_dir" / "x.safetensors", {});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("no_such_dir"));
}

// Opens a file with the given raw bytes and returns the error (which must be InvalidArgument
// and name the file).
std::string OpenError(const TempDir& dir, std::string_view bytes) {
  const std::filesystem::path path = dir / "bad.safetensors";
  WriteFile(path, bytes);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  EXPECT_FALSE(file.ok());
  if (file.ok()) return "";
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(file.status().message(), HasSubstr(path.string()));
  return std::string(file.status().message());
}

TEST(SafetensorsTest, MalformedHeaders) {
  TempDir dir;
  const std::string data(24, '\0');
  EXPECT_THAT(OpenError(dir, ""), HasSubstr("too short"));
  EXPECT_THAT(OpenError(dir, "abcde"), HasSubstr("too short"));
  EXPECT_THAT(OpenError(dir, RawSafetensors("{}", "", 1000)), HasSubstr("past the end"));
  EXPECT_THAT(OpenError(dir, RawSafetensors("{}", "", ~uint64_t{0})), HasSubstr("past the end"));
  // A header length that cuts the JSON short.
  EXPECT_THAT(OpenError(dir, RawSafetensors("{\"a\": 1}  ", "", 4)), HasSubstr("valid JSON"));
  EXPECT_THAT(OpenError(dir, RawSafetensors("{\"a\": ", data)), HasSubstr("valid JSON"));
  EXPECT_THAT(OpenError(dir, RawSafetensors("not json", data)), HasSubstr("valid JSON"));
  EXPECT_THAT(OpenError(dir, RawSafetensors("[1, 2]", data)), HasSubstr("JSON object"));
  EXPECT_THAT(OpenError(dir, RawSafetensors(R"({"__metadata__": [1]})", data)),
              HasSubstr("__metadata__"));
  EXPECT_THAT(OpenError(dir, RawSafetensors(R"({"__metadata__": {"k": 1}})", data)),
              AllOf(HasSubstr("__metadata__"), HasSubstr("'k'")));
}

TEST(SafetensorsTest, MalformedTensorEntriesNameTheTensor) {
  TempDir dir;
  const std::string data(24, '\0');
  struct Case {
    const char* header;
    const char* want;
  };
  const Case cases[] = {
      {R"({"w": 5})", "entry must be an object"},
      {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", "'dtype'"},
      {R"({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", "'dtype'"},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", "'shape'"},
      {R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", "'shape'"},
      {R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", "'shape'"},
      {R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", "'shape'"},
      {R"({"w": {"dtype": "F32", "shape": [2]}})", "'data_offsets'"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", "'data_offsets'"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}})", "'data_offsets'"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", "'data_offsets'"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", "end before"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [20, 28]}})", "past the data"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "holds 4 bytes"},
      {R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", "needs 3 x 4"},
      {R"({"w": {"dtype": "I32", "shape": [2, 2], "data_offsets": [0, 8]}})", "needs 4 x 4"},
      {R"({"w": {"dtype": "BF16", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})",
       "overflows"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(OpenError(dir, RawSafetensors(c.header, data)),
                AllOf(HasSubstr("tensor 'w'"), HasSubstr(c.want)))
        << c.header;
  }
}

TEST(SafetensorsTest, OtherDtypesAreListedWithoutDType) {
  TempDir dir;
  const std::filesystem::path path = dir / "d.safetensors";
  // I64 is size-checked (known width); an unknown name is kept as raw bytes unchecked.
  WriteFile(path, RawSafetensors(R"({"a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]},
                                     "b": {"dtype": "U8", "shape": [3], "data_offsets": [16, 19]},
                                     "c": {"dtype": "XQ9", "shape": [7], "data_offsets": [19, 24]}})",
                                 std::string(24, '\x01')));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  for (const char* name : {"a", "b", "c"}) {
    const TensorView* t = (*file)->Find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_FALSE(t->dtype.has_value()) << name;
  }
  EXPECT_EQ((*file)->Find("a")->nbytes, 16u);
  EXPECT_EQ((*file)->Find("b")->dtype_name, "U8");
  EXPECT_EQ((*file)->Find("c")->nbytes, 5u);
}

// Random damage to a valid file (truncation, bytes overwritten in the header or anywhere, a
// wrong header length) is refused with a message naming the file, or, where the result still
// parses, every tensor it lists lies inside the file: reading all of its bytes is safe.
TEST(SafetensorsTest, DamagedFilesAreRefusedOrReadSafely) {
  TempDir dir;
  const std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 0.0f, 1e-20f, 7.0f};
  const std::vector<uint16_t> f16 = {F32ToF16(0.5f), F32ToF16(-1.0f), F32ToF16(65504.0f)};
  const std::filesystem::path good = dir / "good.safetensors";
  const std::vector<TensorToWrite> tensors = {{"z.f32", DType::kF32, {2, 3}, Bytes(f32)},
                                              {"a.f16", DType::kF16, {3}, Bytes(f16)}};
  ASSERT_TRUE(WriteSafetensors(good, tensors, {{"format", "pt"}}).ok());
  const std::string original = ReadAll(good);
  uint64_t header_size = 0;
  std::memcpy(&header_size, original.data(), 8);
  std::mt19937 rng(20261129);
  const std::string header_chars = "{}[]\":,0123456789-eE.\\ aFBI";
  int refused = 0;
  int opened = 0;
  for (int i = 0; i < 400; ++i) {
    std::string bytes = original;
    switch (i % 4) {
      case 0:  // truncated
        bytes.resize(rng() % bytes.size());
        break;
      case 1:  // header bytes replaced by JSON-ish characters
        for (int k = 1 + static_cast<int>(rng() % 3); k > 0; --k) {
          bytes[8 + rng() % header_size] = header_chars[rng() % header_chars.size()];
        }
        break;
      case 2:  // any byte replaced by any byte
        bytes[rng() % bytes.size()] = static_cast<char>(rng());
        break;
      default: {  // a wrong header length
        const uint64_t wrong = rng() % (2 * bytes.size());
        std::memcpy(bytes.data(), &wrong, 8);
      }
    }
    const std::filesystem::path path = dir / ("damaged" + std::to_string(i) + ".safetensors");
    WriteFile(path, bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    if (!file.ok()) {
      ++refused;
      EXPECT_THAT(file.status().message(), HasSubstr(path.filename().string())) << i;
      continue;
    }
    ++opened;
    for (const auto& [name, t] : (*file)->tensors()) {
      // What a parse lets through is consistent: a known dtype's bytes match the shape.
      if (t.dtype.has_value()) {
        size_t elements = 1;
        for (int64_t d : t.shape) elements *= static_cast<size_t>(d);
        EXPECT_EQ(t.nbytes, elements * DTypeSize(*t.dtype)) << i << " " << name;
      }
      // Every byte is readable (ASan, or a fault past the mapping, would stop the test).
      volatile unsigned sum = 0;
      for (size_t b = 0; b < t.nbytes; ++b) sum = sum + static_cast<unsigned>(t.data[b]);
    }
  }
  std::printf("%d damaged files refused, %d still parse\n", refused, opened);
  EXPECT_GT(refused, 100);  // the damage mostly breaks the file,
  EXPECT_GT(opened, 10);    // and now and then leaves one that still parses
}

TEST(SafetensorsTest, OpenMissingFileOrDirectory) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir / "nope.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("nope.safetensors"));

  file = SafetensorsFile::Open(dir.path());
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
}

}  // namespace
}  // namespace sals
