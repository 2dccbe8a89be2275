#include "engine/tokenizer/sentencepiece_model.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <queue>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"
#include "engine/tokenizer/sentencepiece_model.pb.h"

namespace sals {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the UTF-8 character starting at s[0] (1 for a stray byte), never past the end.
size_t CharLength(std::string_view s) {
  const auto c = static_cast<unsigned char>(s[0]);
  const size_t n = c < 0x80           ? 1
                   : (c >> 5) == 0x6  ? 2
                   : (c >> 4) == 0xe  ? 3
                   : (c >> 3) == 0x1e ? 4
                                      : 1;
  return std::min(n, s.size());
}

// Length of a valid UTF-8 sequence at s[0], or 0 when the bytes there are not one.
size_t ValidCharLength(std::string_view s) {
  const auto c0 = static_cast<unsigned char>(s[0]);
  const size_t n = c0 < 0x80           ? 1
                   : (c0 >> 5) == 0x6  ? 2
                   : (c0 >> 4) == 0xe  ? 3
                   : (c0 >> 3) == 0x1e ? 4
                                       : 0;
  if (n == 0 || n > s.size()) return 0;  // a stray byte, or a character cut short
  for (size_t i = 1; i < n; ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xc0) != 0x80) return 0;
  }
  uint32_t cp = c0 & (0x7f >> n);
  for (size_t i = 1; i < n; ++i) cp = cp << 6 | (static_cast<unsigned char>(s[i]) & 0x3f);
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Load(
    const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", file.string()));
  std::stringstream bytes;
  bytes << in.rdbuf();
  spm::ModelProto proto;
  if (!proto.ParseFromString(bytes.str()) || proto.pieces_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.string(), " is not a SentencePiece model (ModelProto) with pieces"));
  }
  if (proto.trainer_spec().model_type() != spm::TrainerSpec::BPE) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.string(),
                     ": only BPE SentencePiece models are supported (Llama-2, Mistral), got "
                     "model_type ",
                     static_cast<int>(proto.trainer_spec().model_type())));
  }
  const spm::NormalizerSpec& norm = proto.normalizer_spec();
  if (!norm.precompiled_charsmap().empty() || (!norm.name().empty() && norm.name() != "identity")) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.string(), ": normalizer '", norm.name(),
                     "' is not supported (identity only, as Llama-2 and Mistral use)"));
  }
  if (proto.trainer_spec().treat_whitespace_as_suffix()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.string(), ": treat_whitespace_as_suffix is not supported"));
  }
  auto model = std::unique_ptr<SentencePieceModel>(new SentencePieceModel());
  std::fill(std::begin(model->byte_ids_), std::end(model->byte_ids_), -1);
  for (int i = 0; i < proto.pieces_size(); ++i) {
    const auto& p = proto.pieces(i);
    Piece piece{p.piece(), p.score(), static_cast<Type>(p.type())};
    switch (piece.type) {
      case kNormal:
      case kUserDefined:
      case kUnused:
        model->mergeable_.emplace(piece.piece, i);
        if (piece.type == kUserDefined) model->user_defined_.push_back(piece.piece);
        break;
      case kByte: {
        model->reserved_.emplace(piece.piece, i);
        unsigned value = 0;
        if (piece.piece.size() == 6 && std::sscanf(piece.piece.c_str(), "<0x%2X>", &value) == 1) {
          model->byte_ids_[value & 0xff] = i;
          piece.byte = static_cast<int>(value & 0xff);
        }
        break;
      }
      default:
        model->reserved_.emplace(piece.piece, i);
    }
    model->pieces_.push_back(std::move(piece));
  }
  const spm::TrainerSpec& trainer = proto.trainer_spec();
  const auto id_or_none = [&](int id) { return id >= 0 && id < proto.pieces_size() ? id : -1; };
  model->unk_id_ = id_or_none(trainer.unk_id());
  model->bos_id_ = id_or_none(trainer.bos_id());
  model->eos_id_ = id_or_none(trainer.eos_id());
  if (model->unk_id_ < 0) {
    return absl::InvalidArgumentError(absl::StrCat(file.string(), ": unk_id is out of range"));
  }
  model->byte_fallback_ = trainer.byte_fallback();
  if (model->byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      if (model->byte_ids_[b] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.string(), ": byte_fallback is set but the byte piece <0x",
                         absl::Hex(b, absl::kZeroPad2), "> is missing"));
      }
    }
  }
  model->add_dummy_prefix_ = norm.add_dummy_prefix();
  model->remove_extra_whitespaces_ = norm.remove_extra_whitespaces();
  model->escape_whitespaces_ = norm.escape_whitespaces();
  model->unk_surface_ = trainer.unk_surface();
  const std::string_view space = model->escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
  model->word_separable_ =
      std::none_of(model->pieces_.begin(), model->pieces_.end(), [&](const Piece& p) {
        for (size_t at = p.piece.find(space, 1); at != std::string::npos;
             at = p.piece.find(space, at + 1)) {
          if (!std::string_view(p.piece).substr(0, at).ends_with(space)) return true;
        }
        return false;
      });
  return model;
}

int32_t SentencePieceModel::PieceToId(std::string_view piece) const {
  if (auto it = reserved_.find(ToAbsl(piece)); it != reserved_.end()) return it->second;
  if (auto it = mergeable_.find(ToAbsl(piece)); it != mergeable_.end()) return it->second;
  return unk_id_;
}

std::string SentencePieceModel::Normalize(std::string_view text) const {
  if (remove_extra_whitespaces_) {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
    while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  }
  std::string out;
  if (text.empty()) return out;
  const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
  if (add_dummy_prefix_) out += space;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != ' ') {
      out += text[i];
    } else if (!remove_extra_whitespaces_ || text[i - 1] != ' ') {
      out += space;
    }
  }
  return out;
}

void SentencePieceModel::EncodeBpe(std::string_view normalized,
                                   std::vector<std::pair<std::string, int32_t>>* out) const {
  struct Symbol {
    int prev;
    int next;
    std::string_view piece;
    bool frozen;  // a user-defined symbol: never merged
  };
  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < normalized.size();) {
    size_t len = 0;
    bool frozen = false;
    for (const std::string& u : user_defined_) {
      if (u.size() > len && normalized.substr(pos).starts_with(u)) {
        len = u.size();
        frozen = true;
      }
    }
    if (len == 0) len = CharLength(normalized.substr(pos));
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, index + 1, normalized.substr(pos, len), frozen});
    pos += len;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // Candidate merges, best score first, leftmost on ties (libsentencepiece's agenda order).
  struct Pair {
    int left;
    int right;
    float score;
    size_t size;
  };
  auto worse = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
  std::map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  auto maybe_add = [&](int left, int right) {
    if (left < 0 || right < 0 || symbols[left].frozen || symbols[right].frozen) return;
    const std::string_view merged(symbols[left].piece.data(),
                                  symbols[left].piece.size() + symbols[right].piece.size());
    auto it = mergeable_.find(ToAbsl(merged));
    if (it == mergeable_.end()) return;
    agenda.push({left, right, pieces_[it->second].score, merged.size()});
    if (pieces_[it->second].type == kUnused) {
      rev_merge[merged] = {symbols[left].piece, symbols[right].piece};
    }
  };
  for (size_t i = 1; i < symbols.size(); ++i) maybe_add(static_cast<int>(i) - 1, i);
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    // Stale: one side was merged away since this pair was queued.
    if (left.piece.empty() || right.piece.empty() ||
        left.piece.size() + right.piece.size() != top.size) {
      continue;
    }
    left.piece = std::string_view(left.piece.data(), top.size);
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.piece = {};
    maybe_add(left.prev, top.left);
    maybe_add(top.left, left.next);
  }
  // Unused pieces are split back into the pieces they were merged from.
  std::function<void(std::string_view)> resegment = [&](std::string_view piece) {
    const int32_t id = PieceToId(piece);
    if (id != unk_id_ && pieces_[id].type == kUnused) {
      if (auto it = rev_merge.find(piece); it != rev_merge.end()) {
        resegment(it->second.first);
        resegment(it->second.second);
        return;
      }
    }
    out->emplace_back(std::string(piece), id);
  };
  for (int i = 0; i >= 0; i = symbols[i].next) resegment(symbols[i].piece);
}

void SentencePieceModel::AppendIds(const std::vector<std::pair<std::string, int32_t>>& pieces,
                                   bool* previous_unknown, std::vector<int32_t>* ids) const {
  for (const auto& [piece, id] : pieces) {
    if (id == unk_id_ && byte_fallback_) {
      for (unsigned char b : piece) ids->push_back(byte_ids_[b]);
      continue;
    }
    // Without byte fallback a run of unknown pieces becomes one <unk>.
    if (id == unk_id_ && *previous_unknown) continue;
    *previous_unknown = id == unk_id_;
    ids->push_back(id);
  }
}

std::vector<int32_t> SentencePieceModel::Encode(std::string_view text) const {
  std::vector<std::pair<std::string, int32_t>> pieces;
  EncodeBpe(Normalize(text), &pieces);
  std::vector<int32_t> ids;
  ids.reserve(pieces.size());
  bool previous_unknown = false;
  AppendIds(pieces, &previous_unknown, &ids);
  return ids;
}

std::vector<int32_t> SentencePieceModel::EncodeAtMost(std::string_view text, size_t max_ids) const {
  if (!word_separable_) return Encode(text);
  constexpr size_t kStretchBytes = 4096;  // BPE's cost is per stretch; stop checks between them
  const std::string normalized = Normalize(text);
  const std::string_view all(normalized);
  const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
  std::vector<int32_t> ids;
  std::vector<std::pair<std::string, int32_t>> pieces;
  bool previous_unknown = false;
  for (size_t begin = 0; begin < all.size() && ids.size() <= max_ids;) {
    // The stretch ends at the first word start (a space symbol after another character) past
    // kStretchBytes, or at the end.
    size_t end = all.size();
    for (size_t at = all.find(space, begin + kStretchBytes); at != std::string_view::npos;
         at = all.find(space, at + space.size())) {
      if (!all.substr(0, at).ends_with(space)) {
        end = at;
        break;
      }
    }
    pieces.clear();
    EncodeBpe(all.substr(begin, end - begin), &pieces);
    AppendIds(pieces, &previous_unknown, &ids);
    begin = end;
  }
  return ids;
}

std::string SentencePieceModel::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  std::string bytes;  // a run of byte pieces
  // The first piece that is not a control piece loses its dummy-prefix space.
  bool at_start = true;
  auto flush_bytes = [&] {
    for (size_t pos = 0; pos < bytes.size();) {
      const size_t n = ValidCharLength(std::string_view(bytes).substr(pos));
      if (n == 0) {
        out += kReplacement;
        ++pos;
      } else {
        out.append(bytes, pos, n);
        pos += n;
      }
    }
    bytes.clear();
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= piece_size()) continue;
    const Piece& p = pieces_[id];
    if (p.type == kByte) {
      if (p.byte >= 0) bytes.push_back(static_cast<char>(p.byte));
      at_start = false;
      continue;
    }
    flush_bytes();
    if (p.type == kControl) continue;
    if (p.type == kUnknown) {
      out += unk_surface_;
      at_start = false;
      continue;
    }
    std::string_view piece = p.piece;
    if (at_start && (add_dummy_prefix_ || remove_extra_whitespaces_) &&
        piece.starts_with(kSpaceSymbol)) {
      piece.remove_prefix(kSpaceSymbol.size());
    }
    at_start = false;
    for (size_t pos = 0; pos < piece.size();) {
      if (piece.substr(pos).starts_with(kSpaceSymbol)) {
        out += ' ';
        pos += kSpaceSymbol.size();
      } else {
        out += piece[pos++];
      }
    }
  }
  flush_bytes();
  return out;
}

}  // namespace sals
