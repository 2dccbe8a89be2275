// LoadTokenizer: which file it picks, where BOS / EOS come from, and its errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace sals {
namespace {

using ::sals::testing::FixtureDir;
using ::sals::testing::ReadFile;
using ::sals::testing::TempDir;
using ::sals::testing::WriteFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

void Copy(std::string_view flavour, std::string_view file, const TempDir& dir) {
  fs::copy_file(FixtureDir(flavour) / file, dir / file);
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(TokenizerLoaderTest, MissingDirectory) {
  TempDir dir;
  auto tok = LoadTokenizer(dir / "nope");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(tok.status()), HasSubstr((dir / "nope").string()));
}

TEST(TokenizerLoaderTest, NoTokenizerFiles) {
  TempDir dir;
  Copy("llama2-mha", "config.json", dir);
  auto tok = LoadTokenizer(dir.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(tok.status()), HasSubstr(dir.path().string()));
  EXPECT_THAT(Message(tok.status()), HasSubstr("tokenizer.json or tokenizer.model"));
}

TEST(TokenizerLoaderTest, TokenizerJsonNotJson) {
  TempDir dir;
  WriteFile(dir / "tokenizer.json", "{\"model\": {\"vocab\": ");
  Copy("llama2-mha", "tokenizer.model", dir);  // still an error: the file is there but broken
  auto tok = LoadTokenizer(dir.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(tok.status()), HasSubstr((dir / "tokenizer.json").string()));
}

TEST(TokenizerLoaderTest, TokenizerJsonMissingKey) {
  TempDir dir;
  nlohmann::json j = nlohmann::json::parse(ReadFile(FixtureDir("llama31-bpe") / "tokenizer.json"));
  j["model"].erase("merges");
  WriteFile(dir / "tokenizer.json", j.dump());
  auto tok = LoadTokenizer(dir.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(tok.status()), HasSubstr((dir / "tokenizer.json").string()));
  EXPECT_THAT(Message(tok.status()), HasSubstr("model.merges"));
}

TEST(TokenizerLoaderTest, SentencePieceJsonWithoutModelIsUnsupported) {
  // HF's Metaspace/ByteFallback tokenizer.json of a SentencePiece model, without its
  // tokenizer.model.
  TempDir dir;
  Copy("llama2-mha", "tokenizer.json", dir);
  auto tok = LoadTokenizer(dir.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(tok.status()), HasSubstr((dir / "tokenizer.json").string()));
  EXPECT_THAT(Message(tok.status()), HasSubstr("tokenizer.model"));
}

TEST(TokenizerLoaderTest, CorruptSentencePieceModel) {
  TempDir dir;
  WriteFile(dir / "tokenizer.model", "definitely not a protobuf");
  auto tok = LoadTokenizer(dir.path());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(tok.status()), HasSubstr((dir / "tokenizer.model").string()));
}

TEST(TokenizerLoaderTest, MalformedConfigFiles) {
  for (const char* file : {"config.json", "tokenizer_config.json", "generation_config.json"}) {
    TempDir dir;
    Copy("llama31-bpe", "tokenizer.json", dir);
    WriteFile(dir / file, "{not json");
    auto tok = LoadTokenizer(dir.path());
    ASSERT_FALSE(tok.ok()) << file;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(tok.status()), HasSubstr((dir / file).string()));
  }
}

TEST(TokenizerLoaderTest, WrongTypesInConfigFiles) {
  {
    TempDir dir;
    Copy("llama31-bpe", "tokenizer.json", dir);
    WriteFile(dir / "config.json", R"({"eos_token_id": "</s>"})");
    auto tok = LoadTokenizer(dir.path());
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(tok.status()), HasSubstr((dir / "config.json").string()));
    EXPECT_THAT(Message(tok.status()), HasSubstr("eos_token_id"));
  }
  {
    TempDir dir;
    Copy("llama31-bpe", "tokenizer.json", dir);
    WriteFile(dir / "tokenizer_config.json", R"({"bos_token": 7})");
    auto tok = LoadTokenizer(dir.path());
    ASSERT_FALSE(tok.ok());
    EXPECT_THAT(Message(tok.status()), HasSubstr("tokenizer_config.json"));
    EXPECT_THAT(Message(tok.status()), HasSubstr("bos_token"));
  }
}

TEST(TokenizerLoaderTest, SentencePieceJsonAndModelPicksModel) {
  TempDir dir;
  Copy("mistral-gqa", "tokenizer.json", dir);
  Copy("mistral-gqa", "tokenizer.model", dir);
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_NE(dynamic_cast<SentencePieceTokenizer*>(tok->get()), nullptr);
  // No config files: BOS / EOS from the model itself.
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_THAT((*tok)->eos_ids(), ElementsAre(2));
}

TEST(TokenizerLoaderTest, BpeDefaultsWithoutConfigFiles) {
  TempDir dir;
  Copy("llama31-bpe", "tokenizer.json", dir);
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_NE(dynamic_cast<BpeTokenizer*>(tok->get()), nullptr);
  EXPECT_EQ((*tok)->bos_id(), 2000);  // the template's special token
  EXPECT_TRUE((*tok)->eos_ids().empty());
}

TEST(TokenizerLoaderTest, EosFromAllConfigFiles) {
  TempDir dir;
  Copy("llama31-bpe", "tokenizer.json", dir);
  WriteFile(dir / "tokenizer_config.json",
            R"({"bos_token": {"content": "<|begin_of_text|>", "lstrip": false},
                "eos_token": "<|eom_id|>"})");
  WriteFile(dir / "config.json", R"({"bos_token_id": 5, "eos_token_id": 2001})");
  WriteFile(dir / "generation_config.json", R"({"eos_token_id": [2009, 2001]})");
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 2000);  // tokenizer_config wins over config.json
  EXPECT_THAT((*tok)->eos_ids(), ElementsAre(2001, 2009, 2008));
}

TEST(TokenizerLoaderTest, BosFromConfigWhenTokenizerConfigHasNone) {
  TempDir dir;
  Copy("llama2-mha", "tokenizer.model", dir);
  WriteFile(dir / "config.json", R"({"bos_token_id": 2, "eos_token_id": [1, 2]})");
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 2);
  EXPECT_THAT((*tok)->eos_ids(), ElementsAre(1, 2));
  EXPECT_EQ((*tok)->Encode("a", true).front(), 2);
}

TEST(TokenizerLoaderTest, AddBosTokenFalse) {
  TempDir dir;
  Copy("llama2-mha", "tokenizer.model", dir);
  WriteFile(dir / "tokenizer_config.json", R"({"add_bos_token": false, "bos_token": "<s>"})");
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->Encode("a", true), (*tok)->Encode("a", false));
}

}  // namespace
}  // namespace sals
