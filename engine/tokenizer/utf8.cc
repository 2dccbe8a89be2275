#include "engine/tokenizer/utf8.h"

#include <cstdint>

namespace sals {
namespace {

bool IsContinuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// Length of the valid UTF-8 character at s[pos], or 0 when invalid. On 0, *invalid_len is the
// length of the maximal invalid subsequence there (Rust's Utf8Chunks rule: the lead byte plus the
// continuation bytes that were still acceptable before the sequence broke off).
size_t ValidCharLength(std::string_view s, size_t pos, size_t* invalid_len) {
  const auto byte = [&](size_t i) -> int {
    return pos + i < s.size() ? static_cast<uint8_t>(s[pos + i]) : -1;
  };
  const int first = byte(0);
  *invalid_len = 1;
  if (first < 0x80) return 1;
  int width;
  int lo = 0x80, hi = 0xBF;  // accepted range of the second byte
  if (first >= 0xC2 && first <= 0xDF) {
    width = 2;
  } else if (first >= 0xE0 && first <= 0xEF) {
    width = 3;
    if (first == 0xE0) lo = 0xA0;  // no overlongs
    if (first == 0xED) hi = 0x9F;  // no surrogates
  } else if (first >= 0xF0 && first <= 0xF4) {
    width = 4;
    if (first == 0xF0) lo = 0x90;  // no overlongs
    if (first == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return 0;
  }
  const int second = byte(1);
  if (second < lo || second > hi) return 0;
  for (int i = 2; i < width; ++i) {
    const int b = byte(i);
    if (b < 0 || !IsContinuation(static_cast<uint8_t>(b))) {
      *invalid_len = i;
      return 0;
    }
  }
  return width;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t invalid_len;
    const size_t len = ValidCharLength(s, pos, &invalid_len);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

std::string Utf8Lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    while (pos < s.size() && static_cast<uint8_t>(s[pos]) < 0x80) ++pos;  // ASCII run
    out.append(s.data() + start, pos - start);
    if (pos == s.size()) break;
    size_t invalid_len;
    const size_t len = ValidCharLength(s, pos, &invalid_len);
    if (len > 0) {
      out.append(s.data() + pos, len);
      pos += len;
    } else {
      out.append(kReplacementChar);
      pos += invalid_len;
    }
  }
  return out;
}

char32_t NextCodePoint(std::string_view s, size_t* pos) {
  size_t invalid_len;
  const size_t len = ValidCharLength(s, *pos, &invalid_len);
  if (len == 0) {
    *pos += 1;
    return 0xFFFD;
  }
  const auto* p = reinterpret_cast<const uint8_t*>(s.data() + *pos);
  *pos += len;
  switch (len) {
    case 1:
      return p[0];
    case 2:
      return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3:
      return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    default:
      return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) |
             (p[3] & 0x3Fu);
  }
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace sals
