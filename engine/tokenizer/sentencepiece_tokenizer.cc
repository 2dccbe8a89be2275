#include "engine/tokenizer/sentencepiece_tokenizer.h"

#include <limits>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/utf8.h"

namespace sals {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"

// The byte of a "<0xHH>" piece, or -1 (HF's ByteFallback decoder test).
int ByteOfPiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(
    const std::filesystem::path& model_file) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(model_file, ec)) {
    return absl::NotFoundError(absl::StrCat("SentencePiece model ", model_file.string(),
                                            " does not exist or is not a file"));
  }
  auto sp = SentencePieceModel::Load(model_file);
  if (!sp.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load SentencePiece model: ", sp.status().message()));
  }
  return std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer(std::move(*sp)));
}

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<SentencePieceModel> sp)
    : sp_(std::move(sp)) {
  bos_id_ = sp_->bos_id();
  if (sp_->eos_id() >= 0) eos_ids_ = {sp_->eos_id()};
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::SetSpecialIds(int32_t bos_id, std::vector<int32_t> eos_ids,
                                           bool add_bos) {
  bos_id_ = bos_id;
  eos_ids_ = std::move(eos_ids);
  add_bos_ = add_bos;
}

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text, bool add_bos) const {
  return EncodeAtMost(text, add_bos, std::numeric_limits<size_t>::max());
}

std::vector<int32_t> SentencePieceTokenizer::EncodeAtMost(std::string_view text, bool add_bos,
                                                          size_t max_tokens) const {
  const bool bos = add_bos && add_bos_ && bos_id_ >= 0;
  const size_t budget = max_tokens > 0 && bos ? max_tokens - 1 : max_tokens;
  const std::vector<int32_t> pieces = budget == std::numeric_limits<size_t>::max()
                                          ? sp_->Encode(text)
                                          : sp_->EncodeAtMost(text, budget);
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 1);
  if (bos) ids.push_back(bos_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  return ids;
}

std::string SentencePieceTokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  if (!skip_special) return DecodeWithSpecial(ids);
  std::vector<int32_t> valid;
  valid.reserve(ids.size());
  const int size = sp_->piece_size();
  for (int32_t id : ids) {
    if (id >= 0 && id < size) valid.push_back(id);  // HF drops unknown ids too
  }
  return sp_->Decode(valid);
}

std::string SentencePieceTokenizer::DecodeWithSpecial(std::span<const int32_t> ids) const {
  // HF's Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)] over the pieces.
  std::string out;
  std::string bytes;  // pending run of byte pieces
  size_t run_length = 0;
  const auto flush_bytes = [&] {
    if (run_length == 0) return;
    if (IsValidUtf8(bytes)) {
      out += bytes;
    } else {
      // HF (String::from_utf8 on the whole run) replaces every byte of an invalid run.
      for (size_t i = 0; i < run_length; ++i) out += kReplacementChar;
    }
    bytes.clear();
    run_length = 0;
  };
  const int size = sp_->piece_size();
  for (int32_t id : ids) {
    if (id < 0 || id >= size) continue;
    const std::string& piece = sp_->IdToPiece(id);
    if (const int byte = ByteOfPiece(piece); byte >= 0) {
      bytes.push_back(static_cast<char>(byte));
      ++run_length;
      continue;
    }
    flush_bytes();
    size_t pos = 0;
    while (pos < piece.size()) {
      const size_t next = piece.find(kSpaceSymbol, pos);
      if (next == std::string::npos) {
        out.append(piece, pos, std::string::npos);
        break;
      }
      out.append(piece, pos, next - pos);
      out.push_back(' ');
      pos = next + kSpaceSymbol.size();
    }
  }
  flush_bytes();
  if (!out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

int SentencePieceTokenizer::vocab_size() const { return sp_->piece_size(); }

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  if (id < 0 || id >= sp_->piece_size()) return false;
  return sp_->IsControl(id) || sp_->IsUnknown(id);
}

std::string SentencePieceTokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= sp_->piece_size()) return "";
  return sp_->IdToPiece(id);
}

int32_t SentencePieceTokenizer::PieceToId(std::string_view piece) const {
  const int32_t id = sp_->PieceToId(piece);
  // PieceToId answers unk_id for unknown pieces; only an exact match counts.
  if (id < 0 || id >= sp_->piece_size() || sp_->IdToPiece(id) != piece) return -1;
  return id;
}

}  // namespace sals
