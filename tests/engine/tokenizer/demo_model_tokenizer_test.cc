// The default demo model's tokenizer (models/sals-tiny-retrieval/tokenizer.model, trained by
// tools/train/prepare.py) against libsentencepiece: tests/fixtures/sals-tiny-retrieval/
// tokenizer_cases.json (tools/train/make_tokenizer_cases.py) holds its encodings and decodings.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace sals {
namespace {

using ::sals::testing::FixtureDir;
using ::sals::testing::Ids;
using ::sals::testing::LoadCases;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

constexpr char kModel[] = "sals-tiny-retrieval";

std::filesystem::path ModelDir() {
  // SALS_FIXTURES_DIR is <repo>/tests/fixtures; the model lives in <repo>/models.
  return FixtureDir("").parent_path().parent_path().parent_path() / "models" / kModel;
}

class DemoModelTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(ModelDir());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = *std::move(tok);
    cases_ = LoadCases(kModel);
    ASSERT_TRUE(cases_.is_object());
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  nlohmann::json cases_;
};

TEST_F(DemoModelTokenizerTest, IsSentencePieceWithLlamaSpecialIds) {
  EXPECT_NE(dynamic_cast<SentencePieceTokenizer*>(tokenizer_.get()), nullptr);
  EXPECT_EQ(tokenizer_->vocab_size(), 4096);
  EXPECT_EQ(tokenizer_->bos_id(), 1);
  EXPECT_THAT(tokenizer_->eos_ids(), ElementsAre(2));
  EXPECT_EQ(tokenizer_->IdToPiece(0), "<unk>");
  EXPECT_EQ(tokenizer_->IdToPiece(3 + 0x0A), "<0x0A>");
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    const std::string piece = tokenizer_->IdToPiece(id);
    EXPECT_EQ(tokenizer_->PieceToId(piece), id) << piece;
  }
}

TEST_F(DemoModelTokenizerTest, EncodesAsLibsentencepiece) {
  int checked = 0;
  for (const nlohmann::json& c : cases_["cases"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_THAT(tokenizer_->Encode(text, /*add_bos=*/true), ElementsAreArray(Ids(c["ids"])))
        << "text: \"" << text << "\"";
    EXPECT_THAT(tokenizer_->Encode(text, /*add_bos=*/false), ElementsAreArray(Ids(c["ids_no_bos"])))
        << "text: \"" << text << "\"";
    ++checked;
  }
  EXPECT_GE(checked, 40);  // including one prompt of each retrieval task
}

TEST_F(DemoModelTokenizerTest, DecodesAsLibsentencepieceAndHf) {
  int checked = 0;
  for (const char* list : {"cases", "decode_cases"}) {
    for (const nlohmann::json& c : cases_[list]) {
      const std::vector<int32_t> ids = Ids(c["ids"]);
      EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special=*/true), c["decoded"].get<std::string>())
          << list << " ids: " << c["ids"].dump();
      if (c.contains("decoded_with_special")) {
        EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special=*/false),
                  c["decoded_with_special"].get<std::string>())
            << list << " ids: " << c["ids"].dump();
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, 48);
}

// A number after the prompt is "▁" then one piece per digit (split_digits), so the answer's
// tokens are the same whether it is encoded with the prompt or generated after it.
TEST_F(DemoModelTokenizerTest, AnswerFollowsThePromptsTokens) {
  const std::string prompt = "What is the pass key? The pass key is";
  const std::vector<int32_t> p = tokenizer_->Encode(prompt, false);
  const std::vector<int32_t> full = tokenizer_->Encode(prompt + " 71432", false);
  ASSERT_EQ(full.size(), p.size() + 6);
  EXPECT_TRUE(std::equal(p.begin(), p.end(), full.begin()));
  EXPECT_EQ(tokenizer_->IdToPiece(full[p.size()]), "\xE2\x96\x81");  // "▁"
  EXPECT_EQ(tokenizer_->IdToPiece(full[p.size() + 1]), "7");
}

}  // namespace
}  // namespace sals
