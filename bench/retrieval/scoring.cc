#include "bench/retrieval/scoring.h"

namespace sals {
namespace {

std::string_view Strip(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

// A byte of a word (Python's \w on ASCII; other UTF-8 bytes count as word bytes too).
bool IsWordByte(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  return u >= 0x80 || (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') ||
         u == '_';
}

bool WholeWordAt(std::string_view text, size_t pos, size_t len) {
  return (pos == 0 || !IsWordByte(text[pos - 1])) &&
         (pos + len == text.size() || !IsWordByte(text[pos + len]));
}

bool ContainsWord(std::string_view text, std::string_view word) {
  for (size_t pos = text.find(word); pos != std::string_view::npos;
       pos = text.find(word, pos + 1)) {
    if (WholeWordAt(text, pos, word.size())) return true;
  }
  return false;
}

}  // namespace

AnswerScore ScoreAnswer(std::string_view output, std::span<const std::string> items) {
  AnswerScore score;
  if (items.empty()) return score;
  const std::string_view text = Strip(output);
  const std::string_view first_line = text.substr(0, text.find('\n'));
  int found = 0;
  for (const std::string& item : items) {
    if (!item.empty() && ContainsWord(first_line, item)) ++found;
  }
  score.items = static_cast<double>(found) / static_cast<double>(items.size());
  if (items.size() == 1) {
    const std::string_view item = items[0];
    score.correct = !item.empty() && text.starts_with(item) && WholeWordAt(text, 0, item.size());
  } else {
    score.correct = found == static_cast<int>(items.size());
  }
  return score;
}

}  // namespace sals
