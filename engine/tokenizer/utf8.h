// UTF-8 helpers shared by the tokenizers and the incremental detokenizer.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace sals {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool IsValidUtf8(std::string_view s);

// `s` with each maximal invalid subsequence replaced by one U+FFFD, exactly as Rust's
// String::from_utf8_lossy (which HF tokenizers use) does: a truncated 4-byte character gives one
// U+FFFD, a lone continuation byte gives one U+FFFD.
std::string Utf8Lossy(std::string_view s);

// Decodes the code point at s[*pos] and advances *pos past it; an invalid byte decodes as
// U+FFFD and advances by one. Requires *pos < s.size().
char32_t NextCodePoint(std::string_view s, size_t* pos);

void AppendUtf8(char32_t cp, std::string* out);

// True when `s` ends with U+FFFD (what a decode shows for an incomplete trailing character).
inline bool EndsWithReplacementChar(std::string_view s) {
  return s.size() >= kReplacementChar.size() &&
         s.substr(s.size() - kReplacementChar.size()) == kReplacementChar;
}

}  // namespace sals
