#include "engine/tokenizer/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"
#include "engine/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

using json = nlohmann::json;

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex=true).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Rust regex's Unicode \w (HF's single_word test), as PCRE2 classes.
constexpr std::string_view kWordCharPattern =
    R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])";
// Words longer than this are not cached (rare, and they would bloat the cache).
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 17;
// Ids beyond this are rejected as malformed (guards the id-indexed tables).
constexpr int64_t kMaxTokenId = 1 << 24;

// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order, so every byte is a visible character.
std::array<char32_t, 256> ByteToCodePoint() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// Inverse of ByteToCodePoint over U+0000..U+0143; -1 for characters outside the table.
int CodePointToByte(char32_t cp) {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    const std::array<char32_t, 256> forward = ByteToCodePoint();
    for (int b = 0; b < 256; ++b) t[forward[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

// The raw bytes a byte-level piece stands for; false when a character is outside the table.
bool PieceToBytes(std::string_view piece, std::string* bytes) {
  bytes->clear();
  size_t pos = 0;
  while (pos < piece.size()) {
    const int b = CodePointToByte(NextCodePoint(piece, &pos));
    if (b < 0) return false;
    bytes->push_back(static_cast<char>(b));
  }
  return true;
}

// Unicode White_Space (Rust's char::is_whitespace, HF's lstrip/rstrip).
bool IsWhiteSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Start of the code point that ends at s.size() (s non-empty, valid UTF-8).
size_t LastCharStart(std::string_view s) {
  size_t pos = s.size() - 1;
  while (pos > 0 && (static_cast<uint8_t>(s[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

// Start of the trailing whitespace of `s` (HF's space_leftmost_at_end).
size_t TrailingSpaceStart(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = LastCharStart(s.substr(0, end));
    size_t pos = start;
    if (!IsWhiteSpace(NextCodePoint(s, &pos))) break;
    end = start;
  }
  return end;
}

// Length of the leading whitespace of `s` (HF's space_rightmost_at_start).
size_t LeadingSpaceLength(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!IsWhiteSpace(NextCodePoint(s, &next))) break;
    pos = next;
  }
  return pos;
}

// HF compiles tokenizer.json regexes with Oniguruma, whose Unicode \s is White_Space and \w is
// Letter | Mark | Decimal_Number | Connector_Punctuation. PCRE2's UCP \s also takes U+180E and
// its \w takes all of \p{N} but no marks, so those escapes are spelled out as Oniguruma's sets.
std::string OnigurumaClasses(std::string_view pattern) {
  constexpr std::string_view kSpace = R"(\t\n\x0B\f\r\x20\x85\xA0\x{1680}\x{2000}-\x{200A})"
                                      R"(\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
  constexpr std::string_view kWord = R"(\p{L}\p{M}\p{Nd}\p{Pc})";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      const bool space = e == 's' || e == 'S';
      const bool word = e == 'w' || e == 'W';
      const std::string_view set = space ? kSpace : kWord;
      if ((space || word) && in_class && (e == 's' || e == 'w')) {
        out += set;  // a union inside the enclosing class
      } else if ((space || word) && !in_class) {
        absl::StrAppend(&out, (e == 's' || e == 'w') ? "[" : "[^", ToAbsl(set), "]");
      } else {
        out += c;  // any other escape (or a negated one inside a class) stays as it is
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // literal ]
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t close = pattern.find(":]", i + 2);  // POSIX class [:alpha:]
      if (close != std::string_view::npos) {
        out.append(pattern.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

// A compiled PCRE2 pattern (UTF + UCP, JIT when available).
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    uint32_t options = PCRE2_UTF | PCRE2_UCP;
    std::string translated;
    if (literal) {
      options |= PCRE2_LITERAL;
    } else {
      translated = OnigurumaClasses(pattern);
      pattern = translated;
    }
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &error, &offset, nullptr);
    if (code == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      return absl::InvalidArgumentError(absl::StrCat("regex does not compile at offset ", offset,
                                                     ": ",
                                                     reinterpret_cast<char*>(message.data())));
    }
    // JIT is an optimisation: without it pcre2_match interprets the same pattern.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  const pcre2_code* code() const { return code_; }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// Per-thread PCRE2 match state (match data and JIT stack cannot be shared while matching).
class MatchScratch {
 public:
  static MatchScratch& ForThisThread() {
    thread_local MatchScratch scratch;
    return scratch;
  }
  ~MatchScratch() {
    pcre2_match_data_free(data_);
    pcre2_match_context_free(context_);
    pcre2_jit_stack_free(jit_stack_);
  }

  // First match of `re` in `subject` at or after `start` (a character boundary of valid UTF-8).
  bool Find(const Regex& re, std::string_view subject, size_t start, size_t* begin, size_t* end) {
    if (start >= subject.size()) return false;
    const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
    int rc =
        pcre2_match(re.code(), text, subject.size(), start, PCRE2_NO_UTF_CHECK, data_, context_);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // JIT stack exhausted (huge whitespace runs): the interpreter works on the heap.
      rc = pcre2_match(re.code(), text, subject.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       data_, context_);
    }
    if (rc < 0) return false;
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data_);
    *begin = ovector[0];
    *end = ovector[1];
    return true;
  }

 private:
  MatchScratch()
      : data_(pcre2_match_data_create(1, nullptr)),  // the whole match is all we read
        context_(pcre2_match_context_create(nullptr)),
        jit_stack_(pcre2_jit_stack_create(32 << 10, 16 << 20, nullptr)) {
    if (context_ != nullptr && jit_stack_ != nullptr) {
      pcre2_jit_stack_assign(context_, nullptr, jit_stack_);
    }
  }

  pcre2_match_data* data_;
  pcre2_match_context* context_;
  pcre2_jit_stack* jit_stack_;
};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// Byte trie over added-token contents, for leftmost-longest matching (HF's aho-corasick with
// MatchKind::LeftmostLongest).
class TokenTrie {
 public:
  void Insert(std::string_view s, int32_t value) {
    if (s.empty()) return;
    first_[static_cast<uint8_t>(s[0])] = true;
    int32_t node = 0;
    for (char c : s) {
      const auto byte = static_cast<uint8_t>(c);
      int32_t child = -1;
      for (const auto& [b, n] : nodes_[node].next) {
        if (b == byte) child = n;
      }
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].next.emplace_back(byte, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[node].value < 0) nodes_[node].value = value;
  }

  bool empty() const { return nodes_.size() == 1; }

  // Leftmost-longest match at or after `from`: sets *begin/*end and returns its value, or -1.
  int32_t Find(std::string_view text, size_t from, size_t* begin, size_t* end) const {
    for (size_t pos = from; pos < text.size(); ++pos) {
      if (!first_[static_cast<uint8_t>(text[pos])]) continue;
      int32_t node = 0, best = -1;
      for (size_t i = pos; i < text.size(); ++i) {
        const auto byte = static_cast<uint8_t>(text[i]);
        int32_t child = -1;
        for (const auto& [b, n] : nodes_[node].next) {
          if (b == byte) {
            child = n;
            break;
          }
        }
        if (child < 0) break;
        node = child;
        if (nodes_[node].value >= 0) {
          best = nodes_[node].value;
          *end = i + 1;
        }
      }
      if (best >= 0) {
        *begin = pos;
        return best;
      }
    }
    return -1;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;
    int32_t value = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
};

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel };
  Kind kind = Kind::kSplit;
  std::unique_ptr<Regex> regex;  // kSplit: its pattern; kByteLevel: GPT-2's when use_regex
  bool remove_matches = false;   // Split behavior "Removed" (else "Isolated")
  bool invert = false;
  bool add_prefix_space = false;
};

struct TemplateItem {
  bool is_sequence = false;  // $A
  std::vector<int32_t> ids;  // a special token's ids
};

struct Merge {
  int32_t rank;
  int32_t new_id;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

struct BpeTokenizer::Impl {
  // Model.
  absl::flat_hash_map<std::string, int32_t> vocab;        // piece -> id
  absl::flat_hash_map<std::string, int32_t> bytes_vocab;  // raw bytes of a piece -> id
  std::array<int32_t, 256> byte_ids{};                    // single-byte pieces
  absl::flat_hash_map<uint64_t, Merge> merges;
  bool ignore_merges = false;
  bool fuse_unk = false;
  int32_t unk_id = -1;

  // Added tokens.
  std::vector<AddedToken> added;
  absl::flat_hash_map<std::string, int32_t> added_ids;  // content -> id
  TokenTrie raw_trie;                // normalized=false tokens, matched first on the raw text
  TokenTrie normalized_trie;         // normalized=true tokens, matched in what is left
  std::unique_ptr<Regex> word_char;  // only when some token is single_word

  std::vector<PreTokenizerStep> steps;  // ends with exactly one ByteLevel
  std::vector<TemplateItem> single_template;

  // Per id (vocab and added tokens): piece text, decoded bytes, special flag.
  std::vector<std::string> pieces;
  std::vector<std::string> piece_bytes;
  std::vector<uint8_t> special;
  std::vector<uint8_t> known;

  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;

  // Word -> ids for repeated pre-tokens; shared by concurrent Encode calls.
  mutable std::shared_mutex cache_mu;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache;  // guarded by cache_mu

  struct Segment {
    size_t begin, end;
    int32_t added_index;  // -1: plain text
  };

  bool IsWordChar(std::string_view s, size_t char_start) const {
    size_t end = char_start;
    NextCodePoint(s, &end);
    size_t b, e;
    return MatchScratch::ForThisThread().Find(*word_char, s.substr(char_start, end - char_start), 0,
                                              &b, &e);
  }

  // HF's AddedVocabulary::find_matches: splits `text` into plain and added-token segments.
  void FindAdded(std::string_view text, const TokenTrie& trie, std::vector<Segment>* out) const {
    size_t start_offset = 0, from = 0, begin = 0, end = 0;
    while (from < text.size()) {
      const int32_t index = trie.Find(text, from, &begin, &end);
      if (index < 0) break;
      from = end;
      const AddedToken& token = added[index];
      if (token.single_word) {
        const bool start_space =
            begin == 0 || !IsWordChar(text, LastCharStart(text.substr(0, begin)));
        const bool stop_space = end == text.size() || !IsWordChar(text, end);
        if (!start_space || !stop_space) continue;
      }
      size_t start = begin, stop = end;
      if (token.lstrip) start = std::max(TrailingSpaceStart(text.substr(0, start)), start_offset);
      if (token.rstrip) stop += LeadingSpaceLength(text.substr(stop));
      start = std::max(start, start_offset);  // never overlap the previous token
      if (start_offset < start) out->push_back({start_offset, start, -1});
      out->push_back({start, stop, index});
      start_offset = stop;
    }
    if (start_offset < text.size()) out->push_back({start_offset, text.size(), -1});
  }

  // Pre-tokenizes and merges `piece`; once `ids` holds more than `limit` ids, the rest is
  // skipped.
  void RunSteps(std::string_view piece, size_t step, std::vector<int32_t>* ids,
                size_t limit) const {
    if (piece.empty() || ids->size() > limit) return;
    const PreTokenizerStep& s = steps[step];
    if (s.kind == PreTokenizerStep::Kind::kByteLevel) {
      std::string prefixed;
      if (s.add_prefix_space && piece[0] != ' ') {
        prefixed = absl::StrCat(" ", ToAbsl(piece));
        piece = prefixed;
      }
      if (s.regex == nullptr) {
        Word(piece, ids);
        return;
      }
      ForEachSplit(*s.regex, piece, /*invert=*/false, /*remove=*/false, [&](std::string_view w) {
        if (ids->size() <= limit) Word(w, ids);
      });
      return;
    }
    ForEachSplit(*s.regex, piece, s.invert, s.remove_matches,
                 [&](std::string_view p) { RunSteps(p, step + 1, ids, limit); });
  }

  // HF's Split with behavior Isolated (each match and each gap is a piece) or Removed (gaps
  // only); `invert` swaps matches and gaps.
  template <typename Fn>
  static void ForEachSplit(const Regex& re, std::string_view text, bool invert, bool remove,
                           Fn&& fn) {
    MatchScratch& scratch = MatchScratch::ForThisThread();
    const auto emit = [&](size_t b, size_t e, bool is_match) {
      if (b == e) return;
      if (remove && (is_match != invert)) return;
      fn(text.substr(b, e - b));
    };
    size_t prev = 0, from = 0, begin = 0, end = 0;
    while (scratch.Find(re, text, from, &begin, &end)) {
      if (end == begin) {  // empty match: HF drops empty pieces; step over one character
        from = begin;
        NextCodePoint(text, &from);
        continue;
      }
      emit(prev, begin, false);
      emit(begin, end, true);
      prev = from = end;
    }
    emit(prev, text.size(), false);
  }

  // BPE of one pre-token (raw bytes), appended to ids.
  void Word(std::string_view word, std::vector<int32_t>* ids) const {
    if (ignore_merges) {
      if (auto it = bytes_vocab.find(ToAbsl(word)); it != bytes_vocab.end()) {
        ids->push_back(it->second);
        return;
      }
    }
    const bool cacheable = word.size() <= kMaxCachedWordBytes;
    if (cacheable) {
      std::shared_lock lock(cache_mu);
      if (auto it = cache.find(ToAbsl(word)); it != cache.end()) {
        ids->insert(ids->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> result = MergeWord(word);
    ids->insert(ids->end(), result.begin(), result.end());
    if (cacheable) {
      std::unique_lock lock(cache_mu);
      if (cache.size() < kMaxCacheEntries) cache.emplace(std::string(word), std::move(result));
    }
  }

  // HF's Word::merge_all: repeatedly applies the lowest-ranked merge (leftmost on ties).
  std::vector<int32_t> MergeWord(std::string_view word) const {
    struct Symbol {
      int32_t id;
      int32_t prev, next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    bool last_was_unk = false;
    for (char c : word) {
      int32_t id = byte_ids[static_cast<uint8_t>(c)];
      if (id < 0) {  // incomplete alphabet: <unk> (fused when asked) or dropped, as HF does
        if (unk_id < 0 || (fuse_unk && last_was_unk)) continue;
        id = unk_id;
        last_was_unk = true;
      } else {
        last_was_unk = false;
      }
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, n - 1, n + 1, true});
    }
    if (symbols.empty()) return {};
    symbols.back().next = -1;

    struct Candidate {
      int32_t rank, pos, new_id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    const auto push = [&](int32_t pos) {
      const int32_t next = symbols[pos].next;
      if (next < 0) return;
      auto it = merges.find(PairKey(symbols[pos].id, symbols[next].id));
      if (it != merges.end()) queue.push({it->second.rank, pos, it->second.new_id});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push(i);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      auto it = merges.find(PairKey(left.id, right.id));
      if (it == merges.end() || it->second.new_id != top.new_id) continue;  // stale
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (left.next >= 0) symbols[left.next].prev = top.pos;
      if (left.prev >= 0) push(left.prev);
      push(top.pos);
    }
    std::vector<int32_t> out;
    for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
    return out;
  }

  // Parses `j` into this; errors name `source` and the key.
  absl::Status Parse(const json& j, std::string_view source);
  absl::Status ParseModel(const json& model, std::string_view source);
  absl::Status ParseAddedTokens(const json& tokens, std::string_view source);
  absl::Status ParsePreTokenizer(const json& pre, std::string_view source, std::string key);
  absl::Status ParsePostProcessor(const json& post, std::string_view source, std::string key);
  absl::Status FinishTables(std::string_view source);
};

namespace {

absl::Status Malformed(std::string_view source, std::string_view key, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(source), ": ", ToAbsl(key), ": ", ToAbsl(what)));
}

absl::Status Unsupported(std::string_view source, std::string_view key, std::string_view what) {
  return absl::UnimplementedError(absl::StrCat(ToAbsl(source), ": ", ToAbsl(key), ": ",
                                               ToAbsl(what),
                                               " (byte-level BPE supports only "
                                               "what Llama-3 / GPT-2 tokenizer.json files use)"));
}

bool GetBool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? fallback : it->get<bool>();
}

std::string TypeOf(const json& j) {
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

absl::Status BpeTokenizer::Impl::ParseModel(const json& model, std::string_view source) {
  if (!model.is_object()) return Malformed(source, "model", "must be an object");
  const std::string type = TypeOf(model);
  if (!type.empty() && type != "BPE") {
    return Unsupported(source, "model.type", absl::StrCat("model type \"", type, "\""));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix", "dropout"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() &&
        !(it->is_string() && it->get<std::string>().empty())) {
      return Unsupported(source, absl::StrCat("model.", key), "set");
    }
  }
  ignore_merges = GetBool(model, "ignore_merges", false);
  fuse_unk = GetBool(model, "fuse_unk", false);

  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return Malformed(source, "model.vocab", "missing or not an object of piece -> id");
  }
  vocab.reserve(vocab_it->size());
  for (const auto& [piece, id_json] : vocab_it->items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 ||
        id_json.get<int64_t>() >= kMaxTokenId) {
      return Malformed(source, absl::StrCat("model.vocab[\"", piece, "\"]"),
                       "id must be an integer in [0, 2^24)");
    }
    vocab[piece] = id_json.get<int32_t>();
  }

  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    return Malformed(source, "model.merges", "missing or not an array");
  }
  merges.reserve(merges_it->size());
  int32_t rank = 0;
  for (const json& m : *merges_it) {
    std::string a, b;
    if (m.is_string()) {  // "a b" (Llama-3's files)
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Malformed(source, absl::StrCat("model.merges[", rank, "]"),
                         absl::StrCat("\"", s, "\" is not two pieces separated by one space"));
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();  // ["a", "b"] (tokenizers >= 0.20)
      b = m[1].get<std::string>();
    } else {
      return Malformed(source, absl::StrCat("model.merges[", rank, "]"),
                       "must be \"a b\" or [\"a\", \"b\"]");
    }
    auto ia = vocab.find(a), ib = vocab.find(b), inew = vocab.find(a + b);
    if (ia == vocab.end() || ib == vocab.end() || inew == vocab.end()) {
      return Malformed(source, absl::StrCat("model.merges[", rank, "]"),
                       absl::StrCat("merge \"", a, "\" + \"", b, "\" uses a piece not in vocab"));
    }
    merges[PairKey(ia->second, ib->second)] = {rank, inew->second};  // later duplicates win, as HF
    ++rank;
  }

  auto unk_it = model.find("unk_token");
  if (unk_it != model.end() && unk_it->is_string()) {
    auto it = vocab.find(unk_it->get<std::string>());
    if (it == vocab.end()) return Malformed(source, "model.unk_token", "not in model.vocab");
    unk_id = it->second;
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Impl::ParseAddedTokens(const json& tokens, std::string_view source) {
  if (tokens.is_null()) return absl::OkStatus();
  if (!tokens.is_array()) return Malformed(source, "added_tokens", "must be an array");
  size_t i = 0;
  for (const json& t : tokens) {
    const std::string key = absl::StrCat("added_tokens[", i++, "]");
    if (!t.is_object() || !t.contains("id") || !t.contains("content") ||
        !t["id"].is_number_integer() || !t["content"].is_string()) {
      return Malformed(source, key, "needs an integer \"id\" and a string \"content\"");
    }
    AddedToken token;
    const int64_t id = t["id"].get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) return Malformed(source, key, "id out of range");
    token.id = static_cast<int32_t>(id);
    token.content = t["content"].get<std::string>();
    token.single_word = GetBool(t, "single_word", false);
    token.lstrip = GetBool(t, "lstrip", false);
    token.rstrip = GetBool(t, "rstrip", false);
    token.special = GetBool(t, "special", false);
    token.normalized = GetBool(t, "normalized", !token.special);
    if (token.content.empty()) continue;  // HF ignores empty tokens
    if (!IsValidUtf8(token.content)) return Malformed(source, key, "content is not UTF-8");
    added_ids[token.content] = token.id;
    added.push_back(std::move(token));
  }
  for (size_t k = 0; k < added.size(); ++k) {
    (added[k].normalized ? normalized_trie : raw_trie)
        .Insert(added[k].content, static_cast<int32_t>(k));
    if (added[k].single_word && word_char == nullptr) {
      auto re = Regex::Compile(kWordCharPattern, false);
      if (!re.ok()) return re.status();
      word_char = *std::move(re);
    }
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Impl::ParsePreTokenizer(const json& pre, std::string_view source,
                                                   std::string key) {
  if (!pre.is_object()) return Malformed(source, key, "must be an object");
  const std::string type = TypeOf(pre);
  if (type == "Sequence") {
    auto it = pre.find("pretokenizers");
    if (it == pre.end() || !it->is_array()) {
      return Malformed(source, key + ".pretokenizers", "missing or not an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      absl::Status s =
          ParsePreTokenizer((*it)[i], source, absl::StrCat(key, ".pretokenizers[", i, "]"));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (!steps.empty() && steps.back().kind == PreTokenizerStep::Kind::kByteLevel) {
    return Unsupported(source, key, "a pre-tokenizer after ByteLevel");
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = GetBool(pre, "add_prefix_space", true);
    if (GetBool(pre, "use_regex", true)) {
      auto re = Regex::Compile(kGpt2Pattern, false);
      if (!re.ok()) return re.status();
      step.regex = *std::move(re);
    }
  } else if (type == "Split") {
    auto pattern = pre.find("pattern");
    if (pattern == pre.end() || !pattern->is_object()) {
      return Malformed(source, key + ".pattern", "missing or not {\"Regex\"|\"String\": ...}");
    }
    const bool literal = pattern->contains("String");
    const char* pattern_key = literal ? "String" : "Regex";
    if (!pattern->contains(pattern_key) || !(*pattern)[pattern_key].is_string()) {
      return Malformed(source, key + ".pattern", "needs a string \"Regex\" or \"String\"");
    }
    auto re = Regex::Compile((*pattern)[pattern_key].get<std::string>(), literal);
    if (!re.ok()) return Malformed(source, key + ".pattern", std::string(re.status().message()));
    step.regex = *std::move(re);
    const std::string behavior = pre.value("behavior", "Isolated");
    if (behavior == "Removed") {
      step.remove_matches = true;
    } else if (behavior != "Isolated") {
      return Unsupported(source, key + ".behavior", absl::StrCat("\"", behavior, "\""));
    }
    step.invert = GetBool(pre, "invert", false);
  } else {
    return Unsupported(source, key + ".type", absl::StrCat("pre-tokenizer \"", type, "\""));
  }
  steps.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Impl::ParsePostProcessor(const json& post, std::string_view source,
                                                    std::string key) {
  if (post.is_null()) return absl::OkStatus();
  if (!post.is_object()) return Malformed(source, key, "must be an object");
  const std::string type = TypeOf(post);
  if (type == "ByteLevel") return absl::OkStatus();  // only moves offsets
  if (type == "Sequence") {
    auto it = post.find("processors");
    if (it == post.end() || !it->is_array()) {
      return Malformed(source, key + ".processors", "missing or not an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      absl::Status s =
          ParsePostProcessor((*it)[i], source, absl::StrCat(key, ".processors[", i, "]"));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type != "TemplateProcessing") {
    return Unsupported(source, key + ".type", absl::StrCat("post-processor \"", type, "\""));
  }
  if (!single_template.empty()) return Unsupported(source, key, "two TemplateProcessing");
  auto single = post.find("single");
  auto specials = post.find("special_tokens");
  if (single == post.end() || !single->is_array()) {
    return Malformed(source, key + ".single", "missing or not an array");
  }
  bool has_sequence = false;
  for (size_t i = 0; i < single->size(); ++i) {
    const json& item = (*single)[i];
    const std::string item_key = absl::StrCat(key, ".single[", i, "]");
    TemplateItem parsed;
    if (item.contains("Sequence")) {
      if (item["Sequence"].value("id", "A") != "A") {
        return Malformed(source, item_key, "a single-sequence template may only use $A");
      }
      parsed.is_sequence = true;
      has_sequence = true;
    } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) {
      const std::string name = item["SpecialToken"]["id"].get<std::string>();
      if (specials == post.end() || !specials->contains(name) ||
          !(*specials)[name].contains("ids") || !(*specials)[name]["ids"].is_array()) {
        return Malformed(source, item_key,
                         absl::StrCat("special token \"", name, "\" has no ids in special_tokens"));
      }
      for (const json& id : (*specials)[name]["ids"]) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxTokenId) {
          return Malformed(source, absl::StrCat(key, ".special_tokens[\"", name, "\"].ids"),
                           "ids must be integers in [0, 2^24)");
        }
        parsed.ids.push_back(id.get<int32_t>());
      }
    } else {
      return Malformed(source, item_key, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
    single_template.push_back(std::move(parsed));
  }
  if (!has_sequence) return Malformed(source, key + ".single", "has no $A");
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Impl::FinishTables(std::string_view source) {
  int32_t max_id = -1;
  for (const auto& [piece, id] : vocab) max_id = std::max(max_id, id);
  for (const AddedToken& t : added) max_id = std::max(max_id, t.id);
  const size_t n = static_cast<size_t>(max_id + 1);
  pieces.assign(n, "");
  piece_bytes.assign(n, "");
  special.assign(n, 0);
  known.assign(n, 0);
  std::string bytes;
  for (const auto& [piece, id] : vocab) {
    pieces[id] = piece;
    known[id] = 1;
    // ByteLevel decoder: characters through the byte table, or the raw text when one is outside.
    if (PieceToBytes(piece, &bytes)) {
      piece_bytes[id] = bytes;
      bytes_vocab.emplace(bytes, id);
    } else {
      piece_bytes[id] = piece;
    }
  }
  for (const AddedToken& t : added) {
    pieces[t.id] = t.content;
    known[t.id] = 1;
    special[t.id] = t.special ? 1 : 0;
    piece_bytes[t.id] = PieceToBytes(t.content, &bytes) ? bytes : t.content;
  }
  const std::array<char32_t, 256> byte_chars = ByteToCodePoint();
  for (int b = 0; b < 256; ++b) {
    std::string piece;
    AppendUtf8(byte_chars[b], &piece);
    auto it = vocab.find(piece);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
  }
  if (vocab.empty()) return Malformed(source, "model.vocab", "is empty");
  return absl::OkStatus();
}

absl::Status BpeTokenizer::Impl::Parse(const json& j, std::string_view source) {
  if (!j.is_object()) return Malformed(source, "(top level)", "must be a JSON object");
  auto normalizer = j.find("normalizer");
  if (normalizer != j.end() && !normalizer->is_null()) {
    return Unsupported(source, "normalizer",
                       absl::StrCat("normalizer \"", TypeOf(*normalizer), "\""));
  }
  auto model = j.find("model");
  if (model == j.end()) return Malformed(source, "model", "missing");
  absl::Status s = ParseModel(*model, source);
  if (!s.ok()) return s;
  if (auto it = j.find("added_tokens"); it != j.end()) {
    s = ParseAddedTokens(*it, source);
    if (!s.ok()) return s;
  }
  auto pre = j.find("pre_tokenizer");
  if (pre == j.end() || pre->is_null()) {
    return Unsupported(source, "pre_tokenizer", "missing (a byte-level BPE needs ByteLevel)");
  }
  s = ParsePreTokenizer(*pre, source, "pre_tokenizer");
  if (!s.ok()) return s;
  if (steps.empty() || steps.back().kind != PreTokenizerStep::Kind::kByteLevel) {
    return Unsupported(source, "pre_tokenizer", "does not end with ByteLevel");
  }
  auto decoder = j.find("decoder");
  if (decoder == j.end() || !decoder->is_object() || TypeOf(*decoder) != "ByteLevel") {
    return Unsupported(source, "decoder",
                       absl::StrCat("decoder \"", decoder == j.end() ? "" : TypeOf(*decoder),
                                    "\" (not ByteLevel)"));
  }
  if (auto it = j.find("post_processor"); it != j.end()) {
    s = ParsePostProcessor(*it, source, "post_processor");
    if (!s.ok()) return s;
  }
  s = FinishTables(source);
  if (!s.ok()) return s;
  for (const TemplateItem& item : single_template) {
    if (!item.is_sequence && !item.ids.empty()) {
      bos_id = item.ids.front();
      break;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Load(
    const std::filesystem::path& json_file) {
  std::ifstream in(json_file, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", json_file.string()));
  }
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(json_file.string(), ": not valid JSON"));
  }
  return FromJson(j, json_file.string());
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromJson(const json& j,
                                                                     std::string_view source) {
  auto impl = std::make_unique<Impl>();
  try {
    absl::Status s = impl->Parse(j, source);
    if (!s.ok()) return s;
  } catch (const std::exception& e) {  // type mismatches deep inside the file
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(source), ": ", e.what()));
  }
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(impl)));
}

bool BpeTokenizer::IsByteLevelBpe(const json& j) {
  if (!j.is_object()) return false;
  auto model = j.find("model");
  auto decoder = j.find("decoder");
  if (model == j.end() || !model->is_object() || decoder == j.end() || !decoder->is_object()) {
    return false;
  }
  const std::string type = TypeOf(*model);
  return (type.empty() || type == "BPE") && TypeOf(*decoder) == "ByteLevel";
}

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;

void BpeTokenizer::SetSpecialIds(int32_t bos_id, std::vector<int32_t> eos_ids) {
  impl_->bos_id = bos_id;
  impl_->eos_ids = std::move(eos_ids);
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text, bool add_bos) const {
  return EncodeAtMost(text, add_bos, std::numeric_limits<size_t>::max());
}

std::vector<int32_t> BpeTokenizer::EncodeAtMost(std::string_view text, bool add_bos,
                                                size_t max_tokens) const {
  const Impl& m = *impl_;
  std::string repaired;
  if (!IsValidUtf8(text)) {  // HF only sees Unicode strings; PCRE2 needs valid UTF-8
    repaired = Utf8Lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Impl::Segment> outer, inner;
  m.FindAdded(text, m.raw_trie, &outer);
  for (const Impl::Segment& seg : outer) {
    if (ids.size() > max_tokens) break;
    if (seg.added_index >= 0) {
      ids.push_back(m.added[seg.added_index].id);
      continue;
    }
    // No normalizer: the normalized tokens match on the same text, in what is left.
    const std::string_view rest = text.substr(seg.begin, seg.end - seg.begin);
    inner.clear();
    m.FindAdded(rest, m.normalized_trie, &inner);
    for (const Impl::Segment& sub : inner) {
      if (sub.added_index >= 0) {
        ids.push_back(m.added[sub.added_index].id);
      } else {
        m.RunSteps(rest.substr(sub.begin, sub.end - sub.begin), 0, &ids, max_tokens);
      }
    }
  }
  if (!add_bos || m.single_template.empty()) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const TemplateItem& item : m.single_template) {
    if (item.is_sequence) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
  }
  return out;
}

std::string BpeTokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= m.pieces.size() || !m.known[id]) continue;
    if (skip_special && m.special[id]) continue;
    bytes += m.piece_bytes[id];
  }
  return Utf8Lossy(bytes);
}

int BpeTokenizer::vocab_size() const { return static_cast<int>(impl_->pieces.size()); }
int32_t BpeTokenizer::bos_id() const { return impl_->bos_id; }
std::vector<int32_t> BpeTokenizer::eos_ids() const { return impl_->eos_ids; }

bool BpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id];
}

std::string BpeTokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->pieces.size()) return "";
  return impl_->pieces[id];
}

int32_t BpeTokenizer::PieceToId(std::string_view piece) const {
  if (auto it = impl_->added_ids.find(ToAbsl(piece)); it != impl_->added_ids.end()) {
    return it->second;
  }
  if (auto it = impl_->vocab.find(ToAbsl(piece)); it != impl_->vocab.end()) return it->second;
  return -1;
}

}  // namespace sals
