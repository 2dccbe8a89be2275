// Every case of every fixture flavour's tokenizer_cases.json (transformers / libsentencepiece
// reference): encode with and without BOS, decode with and without special tokens.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace sals {
namespace {

using ::sals::testing::FixtureDir;
using ::sals::testing::Ids;
using ::sals::testing::LoadCases;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

class TokenizerFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(FixtureDir(GetParam()));
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = *std::move(tok);
    cases_ = LoadCases(GetParam());
    ASSERT_TRUE(cases_.is_object()) << "tokenizer_cases.json of " << GetParam() << " is not JSON";
    ASSERT_GT(cases_["cases"].size(), 0u);
    ASSERT_GT(cases_["decode_cases"].size(), 0u);
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  nlohmann::json cases_;
};

TEST_P(TokenizerFixtureTest, PicksTheRightImplementation) {
  if (GetParam() == "llama31-bpe") {
    EXPECT_NE(dynamic_cast<BpeTokenizer*>(tokenizer_.get()), nullptr);
  } else {
    // These directories also hold HF's converted tokenizer.json; tokenizer.model wins.
    EXPECT_NE(dynamic_cast<SentencePieceTokenizer*>(tokenizer_.get()), nullptr);
  }
}

TEST_P(TokenizerFixtureTest, SpecialIds) {
  if (GetParam() == "llama31-bpe") {
    EXPECT_EQ(tokenizer_->vocab_size(), 2016);
    EXPECT_EQ(tokenizer_->bos_id(), 2000);
    EXPECT_THAT(tokenizer_->eos_ids(), ElementsAre(2001, 2009));  // config.json's list
    EXPECT_TRUE(tokenizer_->IsSpecial(2000));
    EXPECT_TRUE(tokenizer_->IsSpecial(2015));
    EXPECT_FALSE(tokenizer_->IsSpecial(220));
    EXPECT_EQ(tokenizer_->IdToPiece(2009), "<|eot_id|>");
    EXPECT_EQ(tokenizer_->IdToPiece(220), "\xC4\xA0");  // "Ġ"
    EXPECT_EQ(tokenizer_->PieceToId("<|eot_id|>"), 2009);
    EXPECT_EQ(tokenizer_->PieceToId("\xC4\xA0"), 220);
  } else {
    EXPECT_EQ(tokenizer_->vocab_size(), GetParam() == "llama2-mha" ? 1000 : 1500);
    EXPECT_EQ(tokenizer_->bos_id(), 1);
    EXPECT_THAT(tokenizer_->eos_ids(), ElementsAre(2));
    EXPECT_TRUE(tokenizer_->IsSpecial(0));
    EXPECT_TRUE(tokenizer_->IsSpecial(1));
    EXPECT_TRUE(tokenizer_->IsSpecial(2));
    EXPECT_FALSE(tokenizer_->IsSpecial(3));
    EXPECT_EQ(tokenizer_->IdToPiece(1), "<s>");
    EXPECT_EQ(tokenizer_->IdToPiece(3 + 0x0A), "<0x0A>");
    EXPECT_EQ(tokenizer_->PieceToId("</s>"), 2);
    EXPECT_EQ(tokenizer_->PieceToId("no such piece"), -1);
  }
  EXPECT_EQ(tokenizer_->IdToPiece(-1), "");
  EXPECT_EQ(tokenizer_->IdToPiece(tokenizer_->vocab_size()), "");
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    const std::string piece = tokenizer_->IdToPiece(id);
    if (!piece.empty()) {
      EXPECT_EQ(tokenizer_->PieceToId(piece), id) << piece;
    }
  }
}

TEST_P(TokenizerFixtureTest, EncodeCases) {
  int checked = 0;
  for (const nlohmann::json& c : cases_["cases"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_THAT(tokenizer_->Encode(text, /*add_bos=*/true), ElementsAreArray(Ids(c["ids"])))
        << "text: \"" << text << "\"";
    EXPECT_THAT(tokenizer_->Encode(text, /*add_bos=*/false), ElementsAreArray(Ids(c["ids_no_bos"])))
        << "text: \"" << text << "\"";
    ++checked;
  }
  EXPECT_GE(checked, 40);
}

TEST_P(TokenizerFixtureTest, DecodeCases) {
  int checked = 0;
  for (const char* list : {"cases", "decode_cases"}) {
    for (const nlohmann::json& c : cases_[list]) {
      const std::vector<int32_t> ids = Ids(c["ids"]);
      const std::string decoded = tokenizer_->Decode(ids, /*skip_special=*/true);
      const std::string with_special = tokenizer_->Decode(ids, /*skip_special=*/false);
      EXPECT_EQ(decoded, c["decoded"].get<std::string>()) << list << " ids: " << c["ids"].dump();
      EXPECT_EQ(with_special, c["decoded_with_special"].get<std::string>())
          << list << " ids: " << c["ids"].dump();
      EXPECT_TRUE(IsValidUtf8(decoded));
      EXPECT_TRUE(IsValidUtf8(with_special));
      ++checked;
    }
  }
  EXPECT_GE(checked, 52);
}

TEST_P(TokenizerFixtureTest, RoundTripsText) {
  // Decode(Encode(text)) is the text itself except where the reference says otherwise (e.g.
  // SentencePiece's "▁" in the text reads back as a space).
  int identical = 0;
  for (const nlohmann::json& c : cases_["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const std::string back = tokenizer_->Decode(tokenizer_->Encode(text, true), true);
    EXPECT_EQ(back, c["decoded"].get<std::string>());
    identical += back == text;
  }
  EXPECT_GE(identical, 38);
}

TEST_P(TokenizerFixtureTest, IgnoresOutOfRangeIds) {
  const std::vector<int32_t> ids = {-5, tokenizer_->vocab_size(), 1 << 30};
  EXPECT_EQ(tokenizer_->Decode(ids, true), "");
  EXPECT_EQ(tokenizer_->Decode(ids, false), "");
}

// Micro benchmark: encode ~100 KB of text (the fixture texts, repeated with a counter so the
// word cache does not see only repeats) and print the rate. What it times must be right too:
// every round gives the ids of the first (a warm cache changes nothing), their count is what the
// text's bytes allow, and they decode to text holding every line's counter.
TEST_P(TokenizerFixtureTest, EncodeThroughput) {
  std::string text;
  std::vector<std::string> counters;
  for (int round = 0; text.size() < 100 * 1024; ++round) {
    counters.push_back(std::to_string(round * 7919 % 100003));
    for (const nlohmann::json& c : cases_["cases"]) {
      text += c["text"].get<std::string>();
      text.push_back(' ');
      text.append(counters.back());
      text.push_back('\n');
    }
  }
  size_t longest_piece = 1;
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    longest_piece = std::max(longest_piece, tokenizer_->Decode({&id, 1}, false).size());
  }
  const auto start = std::chrono::steady_clock::now();
  constexpr int kRounds = 3;
  std::vector<std::vector<int32_t>> rounds;
  for (int i = 0; i < kRounds; ++i) rounds.push_back(tokenizer_->Encode(text, false));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const size_t tokens = rounds[0].size();
  std::printf("[ bench    ] %s: encode %zu bytes x %d: %.0f tokens/s, %.1f MB/s\n",
              GetParam().c_str(), text.size(), kRounds, kRounds * tokens / seconds,
              kRounds * text.size() / seconds / 1e6);
  for (int i = 1; i < kRounds; ++i) EXPECT_EQ(rounds[i], rounds[0]) << "round " << i;
  EXPECT_GE(tokens * longest_piece, text.size()) << "fewer tokens than the bytes need";
  EXPECT_LE(tokens, text.size()) << "more tokens than bytes";
  const std::string decoded = tokenizer_->Decode(rounds[0], false);
  for (const std::string& counter : counters) {
    EXPECT_NE(decoded.find(" " + counter + "\n"), std::string::npos) << counter;
  }
}

// EncodeAtMost: a result within the limit is Encode's (for SentencePiece, the text then goes
// through BPE in stretches of words, which must change nothing); past it, a prefix of Encode's,
// and every flavour stops early instead of merging the whole text.
TEST_P(TokenizerFixtureTest, EncodeAtMostStopsPastTheLimit) {
  std::string text;
  for (int round = 0; round < 200; ++round) {
    for (const nlohmann::json& c : cases_["cases"]) text += c["text"].get<std::string>() + "\n";
  }
  const std::vector<int32_t> full = tokenizer_->Encode(text, true);
  ASSERT_GT(full.size(), 1000u);
  EXPECT_EQ(tokenizer_->EncodeAtMost(text, true, full.size()), full);
  const std::vector<int32_t> cut = tokenizer_->EncodeAtMost(text, true, 100);
  ASSERT_GT(cut.size(), 100u);
  ASSERT_LE(cut.size(), full.size());
  EXPECT_TRUE(std::equal(cut.begin(), cut.end(), full.begin()));
  EXPECT_LT(cut.size(), full.size() / 4);
}

// Runs of spaces merge into multi-space pieces ("▁▁▁▁" is in the SentencePiece fixtures'
// vocabularies): stretches of words end only where a word starts, never inside a run.
TEST_P(TokenizerFixtureTest, EncodeAtMostKeepsRunsOfSpacesWhole) {
  std::string text;
  for (int i = 0; i < 5000; ++i) text += std::string("ab") + std::string(1 + i % 37, ' ');
  const std::vector<int32_t> full = tokenizer_->Encode(text, true);
  EXPECT_EQ(tokenizer_->EncodeAtMost(text, true, full.size()), full);
}

INSTANTIATE_TEST_SUITE_P(Flavours, TokenizerFixtureTest,
                         ::testing::ValuesIn(::sals::testing::TokenizerFlavours()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace sals
