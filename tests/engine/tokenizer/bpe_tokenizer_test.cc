// Byte-level BPE features the fixture's tokenizer.json does not use, on variants of that file
// (edited the same way in the test). Expected ids come from HF tokenizers 0.23.3 on the same
// edited files.
#include "engine/tokenizer/bpe_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "engine/tokenizer/utf8.h"
#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace sals {
namespace {

using ::sals::testing::FixtureDir;
using ::sals::testing::Ids;
using ::sals::testing::LoadCases;
using ::sals::testing::ReadFile;
using ::sals::testing::TempDir;
using ::sals::testing::WriteFile;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using json = nlohmann::json;

json FixtureJson() { return json::parse(ReadFile(FixtureDir("llama31-bpe") / "tokenizer.json")); }

// Writes `j` to a temp file and loads it.
absl::StatusOr<std::unique_ptr<BpeTokenizer>> LoadEdited(const TempDir& dir, const json& j) {
  const std::filesystem::path file = dir / "tokenizer.json";
  WriteFile(file, j.dump());
  return BpeTokenizer::Load(file);
}

struct Expected {
  std::string text;
  std::vector<int32_t> ids;      // add_bos=false
  std::vector<int32_t> ids_bos;  // add_bos=true
  std::string decoded;           // Decode(ids, skip_special=true)
};

void CheckExpected(const Tokenizer& tok, const std::vector<Expected>& cases) {
  for (const Expected& e : cases) {
    EXPECT_THAT(tok.Encode(e.text, false), ElementsAreArray(e.ids)) << "\"" << e.text << "\"";
    EXPECT_THAT(tok.Encode(e.text, true), ElementsAreArray(e.ids_bos)) << "\"" << e.text << "\"";
    EXPECT_EQ(tok.Decode(e.ids, true), e.decoded) << "\"" << e.text << "\"";
  }
}

void CheckFixtureCases(const Tokenizer& tok) {
  const json cases = LoadCases("llama31-bpe");
  for (const json& c : cases["cases"]) {
    EXPECT_THAT(tok.Encode(c["text"].get<std::string>(), true), ElementsAreArray(Ids(c["ids"])))
        << c["text"];
  }
}

TEST(BpeTokenizerTest, MergesAsStrings) {
  // Llama-3's own file spells merges "a b"; tokenizers >= 0.20 writes ["a", "b"].
  json j = FixtureJson();
  for (json& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  TempDir dir;
  auto tok = LoadEdited(dir, j);
  ASSERT_TRUE(tok.ok()) << tok.status();
  CheckFixtureCases(**tok);
}

TEST(BpeTokenizerTest, WithoutIgnoreMerges) {
  json j = FixtureJson();
  j["model"]["ignore_merges"] = false;  // HF gives the same ids on every fixture case
  TempDir dir;
  auto tok = LoadEdited(dir, j);
  ASSERT_TRUE(tok.ok()) << tok.status();
  CheckFixtureCases(**tok);
}

TEST(BpeTokenizerTest, Gpt2ByteLevelPreTokenizer) {
  // GPT-2 layout: ByteLevel(add_prefix_space, use_regex) alone, no template (no BOS).
  json j = FixtureJson();
  j["pre_tokenizer"] = {{"type", "ByteLevel"},
                        {"add_prefix_space", true},
                        {"trim_offsets", true},
                        {"use_regex", true}};
  j["post_processor"] = {{"type", "ByteLevel"},
                         {"add_prefix_space", true},
                         {"trim_offsets", false},
                         {"use_regex", true}};
  TempDir dir;
  auto tok = LoadEdited(dir, j);
  ASSERT_TRUE(tok.ok()) << tok.status();
  CheckExpected(**tok, {
                           {"Hello world",
                            {694, 68, 836, 78, 279, 262, 473},
                            {694, 68, 836, 78, 279, 262, 473},
                            " Hello world"},
                           {" leading", {664, 444, 284}, {664, 444, 284}, " leading"},
                           {"it's 2024!\n\nnew   lines",
                            {348, 579, 220, 17, 15, 17, 19, 0, 198, 198, 77, 1228, 256, 1063},
                            {348, 579, 220, 17, 15, 17, 19, 0, 198, 198, 77, 1228, 256, 1063},
                            " it's 2024!\n\nnew   lines"},
                           {"<|eot_id|>after", {2009, 1564}, {2009, 1564}, " after"},
                           {"x<|eot_id|> y", {1514, 2009, 338}, {1514, 2009, 338}, " x y"},
                           {"", {}, {}, ""},
                       });
}

TEST(BpeTokenizerTest, AddedTokenFlags) {
  json j = FixtureJson();
  for (json& t : j["added_tokens"]) {
    const int id = t["id"].get<int>();
    if (id == 2002) t["lstrip"] = true;
    if (id == 2003) t["rstrip"] = true;
    if (id == 2004) t["lstrip"] = t["rstrip"] = true;
    if (id == 2005) t["single_word"] = true;
    if (id == 2010) {
      t["normalized"] = true;
      t["special"] = false;
    }
  }
  const auto added = [](int id, const char* content, bool normalized, bool special) {
    return json{{"id", id},          {"content", content}, {"single_word", false},
                {"lstrip", false},   {"rstrip", false},    {"normalized", normalized},
                {"special", special}};
  };
  j["added_tokens"].push_back(added(2016, "hello world", true, false));
  j["added_tokens"].push_back(added(2017, "<|reserved", false, true));
  TempDir dir;
  auto tok = LoadEdited(dir, j);
  ASSERT_TRUE(tok.ok()) << tok.status();
  CheckExpected(
      **tok,
      {
          {"a <|reserved_special_token_0|> b", {64, 2002, 287}, {2000, 64, 2002, 287}, "a b"},
          {"a  <|reserved_special_token_1|>  b",
           {64, 256, 2003, 65},
           {2000, 64, 256, 2003, 65},
           "a  b"},
          {"x <|finetune_right_pad_id|>\t y", {87, 2004, 88}, {2000, 87, 2004, 88}, "xy"},
          // single_word: not inside a word.
          {"word<|reserved_special_token_2|>word",
           {1151, 27, 91, 408, 263, 1353, 62, 1932, 539, 62, 999, 74, 268, 62, 17, 91, 29, 1151},
           {2000, 1151, 27, 91, 408, 263, 1353, 62, 1932, 539, 62, 999, 74, 268, 62, 17, 91, 29,
            1151},
           "word<|reserved_special_token_2|>word"},
          {"word <|reserved_special_token_2|> word",
           {1151, 220, 2005, 279, 677},
           {2000, 1151, 220, 2005, 279, 677},
           "word  word"},
          // A normalized, non-special added token (with a space in it) survives skip_special.
          {"say hello world twice",
           {82, 575, 220, 2016, 944, 588},
           {2000, 82, 575, 220, 2016, 944, 588},
           "say hello world twice"},
          {"<|python_tag|>code", {2010, 1048}, {2000, 2010, 1048}, "<|python_tag|>code"},
          // Longest match wins; a shorter token matches where the longer one does not.
          {"<|reserved_special_token_3|><|reserved and more",
           {2011, 2017, 305, 989},
           {2000, 2011, 2017, 305, 989},
           " and more"},
          {"\u3000<|reserved_special_token_0|>", {2002}, {2000, 2002}, ""},
      });
  EXPECT_FALSE((*tok)->IsSpecial(2010));
  EXPECT_TRUE((*tok)->IsSpecial(2017));
  EXPECT_EQ((*tok)->vocab_size(), 2018);
}

class FixtureBpeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = BpeTokenizer::Load(FixtureDir("llama31-bpe") / "tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
  }
  std::unique_ptr<BpeTokenizer> tok_;
};

TEST_F(FixtureBpeTest, DecodeReplacesInvalidUtf8LikeFromUtf8Lossy) {
  // 172 253 246 222 = F0 9F 98 80 (U+1F600) in byte-level pieces.
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{172, 253, 246, 222}, true), "\xF0\x9F\x98\x80");
  // A truncated 4-byte character is one U+FFFD, a lone continuation byte another.
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{172, 253, 246}, true), kReplacementChar);
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{253, 64}, true),
            std::string(kReplacementChar).append("a"));
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{2000, 172, 253, 2009, 246, 222}, true),
            "\xF0\x9F\x98\x80");  // skipped specials do not break a character
}

TEST_F(FixtureBpeTest, InvalidUtf8InputIsEncodedAsReplacementChars) {
  EXPECT_THAT(tok_->Encode("\xFF abc", false), ElementsAreArray({171, 123, 121, 684, 66}));
  EXPECT_EQ(tok_->Encode("\xFF abc", false), tok_->Encode("\xEF\xBF\xBD abc", false));
}

TEST_F(FixtureBpeTest, HugeWhitespaceRun) {
  // `\s+(?!\S)` over 100k spaces: deep backtracking (JIT stack, interpreter fallback).
  const std::string text = std::string(100000, ' ') + "x";
  const std::vector<int32_t> ids = tok_->Encode(text, false);
  EXPECT_EQ(ids.size(), 3127u);  // HF
  EXPECT_THAT(std::vector<int32_t>(ids.end() - 3, ids.end()), ElementsAreArray({556, 1005, 1514}));
  EXPECT_EQ(tok_->Decode(ids, true), text);
}

TEST_F(FixtureBpeTest, ConcurrentEncodeAgreesWithSequential) {
  const json cases = LoadCases("llama31-bpe");
  std::vector<std::string> texts;
  for (const json& c : cases["cases"]) texts.push_back(c["text"].get<std::string>());
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& t : texts) expected.push_back(tok_->Encode(t, true));
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          // A fresh suffix per round keeps the word cache growing while others read it.
          std::vector<int32_t> ids = tok_->Encode(texts[i], true);
          if (ids != expected[i]) ++failures[t];
          tok_->Encode(texts[i] + " w" + std::to_string(round * 4 + t), false);
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

// Malformed or unsupported files: the error names the file and the key.
struct BadFile {
  std::string name;
  std::function<void(json&)> edit;
  absl::StatusCode code;
  std::string key;
};

void PrintTo(const BadFile& f, std::ostream* os) { *os << f.name; }

class BadTokenizerJsonTest : public ::testing::TestWithParam<BadFile> {};

TEST_P(BadTokenizerJsonTest, ErrorNamesFileAndKey) {
  json j = FixtureJson();
  GetParam().edit(j);
  TempDir dir;
  auto tok = LoadEdited(dir, j);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), GetParam().code) << tok.status();
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr((dir / "tokenizer.json").string()));
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr(GetParam().key));
}

INSTANTIATE_TEST_SUITE_P(
    Files, BadTokenizerJsonTest,
    ::testing::Values(
        BadFile{"NoVocab", [](json& j) { j["model"].erase("vocab"); },
                absl::StatusCode::kInvalidArgument, "model.vocab"},
        BadFile{"VocabIdNotNumber", [](json& j) { j["model"]["vocab"]["a"] = "x"; },
                absl::StatusCode::kInvalidArgument, "model.vocab[\"a\"]"},
        BadFile{"MergeNotPair", [](json& j) { j["model"]["merges"][3] = json::array({"a"}); },
                absl::StatusCode::kInvalidArgument, "model.merges[3]"},
        BadFile{"MergeStringWithoutSpace", [](json& j) { j["model"]["merges"][5] = "ab"; },
                absl::StatusCode::kInvalidArgument, "model.merges[5]"},
        BadFile{"MergeOutOfVocab",
                [](json& j) {
                  j["model"]["merges"][0] = json::array({"zz_missing", "q"});
                },
                absl::StatusCode::kInvalidArgument, "model.merges[0]"},
        BadFile{"AddedTokenWithoutId", [](json& j) { j["added_tokens"][1].erase("id"); },
                absl::StatusCode::kInvalidArgument, "added_tokens[1]"},
        BadFile{"Normalizer",
                [](json& j) {
                  j["normalizer"] = {{"type", "NFKC"}};
                },
                absl::StatusCode::kUnimplemented, "normalizer"},
        BadFile{"PreTokenizerType",
                [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["type"] = "Digits"; },
                absl::StatusCode::kUnimplemented, "pre_tokenizer.pretokenizers[0].type"},
        BadFile{"BadRegex",
                [](json& j) {
                  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
                },
                absl::StatusCode::kInvalidArgument, "pre_tokenizer.pretokenizers[0].pattern"},
        BadFile{"Decoder",
                [](json& j) {
                  j["decoder"] = {{"type", "WordPiece"}};
                },
                absl::StatusCode::kUnimplemented, "decoder"},
        BadFile{"TemplateUnknownSpecial",
                [](json& j) {
                  j["post_processor"]["processors"][1]["special_tokens"] = json::object();
                },
                absl::StatusCode::kInvalidArgument, "post_processor.processors[1].single[0]"},
        BadFile{"ModelType", [](json& j) { j["model"]["type"] = "Unigram"; },
                absl::StatusCode::kUnimplemented, "model.type"}),
    [](const auto& info) { return info.param.name; });

TEST(BpeTokenizerLoadTest, NotJsonAndMissingFile) {
  TempDir dir;
  WriteFile(dir / "tokenizer.json", "{\"model\": ");
  auto tok = BpeTokenizer::Load(dir / "tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("tokenizer.json"));
  auto missing = BpeTokenizer::Load(dir / "nope.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sals
