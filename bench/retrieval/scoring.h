// Scoring of a generated continuation against a case's items (the values it must contain).
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace sals {

struct AnswerScore {
  // Exact match. One item: the output, whitespace stripped, starts with it as a whole word ("71432"
  // is not matched by "714325"). Several items (multi-value needles, variable tracking): every one
  // appears in the output's first line as a whole word, in any order.
  bool correct = false;
  // RULER's string match (tools/train/tasks.py's score): the fraction of the items found as whole
  // words in the output's first line.
  double items = 0.0;
};

AnswerScore ScoreAnswer(std::string_view output, std::span<const std::string> items);

}  // namespace sals
