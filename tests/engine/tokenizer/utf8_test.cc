// UTF-8 validation and from_utf8_lossy replacement (expected values: Python's
// bytes.decode("utf-8", "replace"), which follows the same maximal-subpart rule as Rust).
#include "engine/tokenizer/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace sals {
namespace {

std::string Fffd(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += kReplacementChar;
  return out;
}

TEST(Utf8Test, Validity) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xF0\x9F\x98\x80 caf\xC3\xA9 \xE4\xBD\xA0"));
  EXPECT_TRUE(IsValidUtf8("\xF4\x8F\xBF\xBF"));   // U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xF0\x9F\x98"));      // truncated
  EXPECT_FALSE(IsValidUtf8("\x80"));              // lone continuation
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\x80"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xFF"));
}

TEST(Utf8Test, LossyReplacesMaximalInvalidSubsequences) {
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), Fffd(1));
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"
                      "A"),
            Fffd(1) + "A");
  EXPECT_EQ(Utf8Lossy("\xE0\x80"), Fffd(2));
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), Fffd(3));
  EXPECT_EQ(Utf8Lossy("\xC0\xAF"), Fffd(2));
  EXPECT_EQ(Utf8Lossy("\xF4\x90\x80\x80"), Fffd(4));
  EXPECT_EQ(Utf8Lossy("\x80\x80"), Fffd(2));
  EXPECT_EQ(Utf8Lossy("\xE4\xBD"), Fffd(1));
  EXPECT_EQ(Utf8Lossy("a\xFF"
                      "b"),
            std::string("a").append(Fffd(1)).append("b"));
  EXPECT_EQ(Utf8Lossy("\xF1\x80\x80"), Fffd(1));
  EXPECT_EQ(Utf8Lossy("\xF5\x80"), Fffd(2));
  for (const char* valid : {"", "abc", "\xF0\x9F\x98\x80", "\xEF\xBF\xBD", "\xE0\xA0\x80"}) {
    EXPECT_EQ(Utf8Lossy(valid), valid);
  }
}

TEST(Utf8Test, CodePoints) {
  const std::string s = "a\xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80\xFF";
  size_t pos = 0;
  EXPECT_EQ(NextCodePoint(s, &pos), U'a');
  EXPECT_EQ(NextCodePoint(s, &pos), U'\u00E9');
  EXPECT_EQ(NextCodePoint(s, &pos), U'\u4F60');
  EXPECT_EQ(NextCodePoint(s, &pos), U'\U0001F600');
  EXPECT_EQ(NextCodePoint(s, &pos), U'\uFFFD');
  EXPECT_EQ(pos, s.size());
  std::string out;
  for (char32_t cp : {U'a', U'\u00E9', U'\u4F60', U'\U0001F600'}) AppendUtf8(cp, &out);
  EXPECT_EQ(out, s.substr(0, s.size() - 1));
  EXPECT_TRUE(EndsWithReplacementChar("x\xEF\xBF\xBD"));
  EXPECT_FALSE(EndsWithReplacementChar("x"));
}

}  // namespace
}  // namespace sals
